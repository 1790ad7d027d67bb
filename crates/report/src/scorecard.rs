//! The touchpoint scorecard section: per touchpoint (catalog event × stage × channel),
//! how many events, how many of its customers went on to a later journey stage or
//! complained within 7 days, how many converted funnel attempts passed through it, and
//! what the answers attributed to it say (NPS, mean CSAT and CES, with response counts).
//! From the `touchpoint_scorecard` view (migration 0010) over the period's days, with the
//! catalog's floors and targets beside each measure: below a floor is marked, at or above
//! a target too.

use clickhouse::Row;
use serde::Deserialize;

use crate::{Period, ReportError};

const SQL: &str = include_str!("../sql/scorecard.sql");

/// A scorecard measure with a floor or target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    /// Net promoter score, points (−100…100).
    Nps,
    /// Mean CSAT (1–5).
    Csat,
    /// Mean customer effort (1–7; lower is better, so its floor is a ceiling).
    Ces,
    /// Share of customers who reached a later journey stage within 7 days (0–1).
    NextStage,
}

impl Measure {
    /// The name used in the catalog and in `data-key`s.
    pub fn name(self) -> &'static str {
        match self {
            Measure::Nps => "nps",
            Measure::Csat => "csat",
            Measure::Ces => "ces",
            Measure::NextStage => "next_stage",
        }
    }

    /// The measure's name for people.
    pub fn label(self) -> &'static str {
        match self {
            Measure::Nps => "NPS",
            Measure::Csat => "CSAT",
            Measure::Ces => "CES (at most)",
            Measure::NextStage => "next stage share",
        }
    }

    /// Read a catalog measure name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Nps, Self::Csat, Self::Ces, Self::NextStage]
            .into_iter()
            .find(|m| m.name() == name)
    }

    /// Lower is better (CES: effort).
    pub fn lower_is_better(self) -> bool {
        self == Measure::Ces
    }
}

/// A touchpoint's floor and target for one measure (from the catalog).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// Catalog event name.
    pub event: String,
    /// The measure.
    pub measure: Measure,
    /// Worse than this is marked (for CES: above it).
    pub floor: Option<f64>,
    /// At least this good is marked as met.
    pub target: Option<f64>,
}

/// Where a value stands against its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Worse than the floor.
    BelowFloor,
    /// Between floor and target, or no threshold.
    Neutral,
    /// At or better than the target.
    MeetsTarget,
}

impl Threshold {
    /// Where `value` stands.
    pub fn standing(&self, value: f64) -> Standing {
        let better = |a: f64, b: f64| {
            if self.measure.lower_is_better() {
                a <= b
            } else {
                a >= b
            }
        };
        if self.floor.is_some_and(|f| !better(value, f)) {
            Standing::BelowFloor
        } else if self.target.is_some_and(|t| better(value, t)) {
            Standing::MeetsTarget
        } else {
            Standing::Neutral
        }
    }
}

/// One touchpoint over the period.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct ScorecardRow {
    /// Catalog event name.
    pub event: String,
    /// Journey stage.
    pub stage: String,
    /// Channel.
    pub channel: String,
    /// Events.
    pub events: u64,
    /// Distinct customers per day, summed over the days.
    pub customer_days: u64,
    /// Of those, customers who reached a later stage within 7 days.
    pub next_stage_customers: u64,
    /// Of those, customers who filed a complaint within 7 days.
    pub complaint_customers: u64,
    /// Converted funnel attempts that passed through it.
    pub converted_attempts: u64,
    /// NPS answers.
    pub nps_n: u64,
    /// NPS promoters (9–10).
    pub promoters: u64,
    /// NPS detractors (0–6).
    pub detractors: u64,
    /// CSAT answers.
    pub csat_n: u64,
    /// Sum of CSAT scores.
    pub csat_sum: f64,
    /// CES answers.
    pub ces_n: u64,
    /// Sum of CES scores.
    pub ces_sum: f64,
}

impl ScorecardRow {
    /// NPS in points, with answers.
    pub fn nps(&self) -> Option<f64> {
        (self.nps_n > 0)
            .then(|| 100.0 * (self.promoters as f64 - self.detractors as f64) / self.nps_n as f64)
    }

    /// Mean CSAT, with answers.
    pub fn csat(&self) -> Option<f64> {
        (self.csat_n > 0).then(|| self.csat_sum / self.csat_n as f64)
    }

    /// Mean CES, with answers.
    pub fn ces(&self) -> Option<f64> {
        (self.ces_n > 0).then(|| self.ces_sum / self.ces_n as f64)
    }

    /// Share of customers (per day) who reached a later stage.
    pub fn next_stage(&self) -> Option<f64> {
        (self.customer_days > 0)
            .then(|| self.next_stage_customers as f64 / self.customer_days as f64)
    }

    /// Share of customers (per day) who complained.
    pub fn complaint_share(&self) -> Option<f64> {
        (self.customer_days > 0)
            .then(|| self.complaint_customers as f64 / self.customer_days as f64)
    }
}

/// The section.
#[derive(Debug, Clone, PartialEq)]
pub struct Scorecard {
    /// Touchpoints, most events first.
    pub rows: Vec<ScorecardRow>,
    /// The catalog's floors and targets.
    pub thresholds: Vec<Threshold>,
    /// First day read (UTC, `YYYY-MM-DD`).
    pub first_day: String,
    /// First day not read.
    pub end_day: String,
}

impl Scorecard {
    /// The days read, for people.
    pub fn describe_days(&self) -> String {
        match (self.first_day.as_str(), self.end_day.as_str()) {
            (FIRST_DAY, LAST_DAY) => "all days".into(),
            (first, LAST_DAY) => format!("days from {first} (UTC)"),
            (first, end) => format!("days {first} to {end} (UTC, {end} excluded)"),
        }
    }

    /// The threshold of `event`'s `measure`, if the catalog sets one.
    pub fn threshold(&self, event: &str, measure: Measure) -> Option<&Threshold> {
        self.thresholds
            .iter()
            .find(|t| t.event == event && t.measure == measure)
    }
}

/// The first day ClickHouse 18.16's `Date` holds.
const FIRST_DAY: &str = "1970-01-01";
/// The last day ClickHouse 18.16's `Date` holds (an end that means "no end").
const LAST_DAY: &str = "2105-12-31";

/// `[first, end)` days (`YYYY-MM-DD`) covering the period: the day of `since` up to the
/// day after the one holding the last instant before `until` (whole UTC days).
pub fn days(period: &Period) -> (String, String) {
    const DAY_MS: i64 = 86_400_000;
    // ClickHouse 18.16's Date covers 1970-01-01 … 2105-12-31.
    const MAX_DAY: i64 = 49_672;
    let first = period.lower().max(0).div_euclid(DAY_MS).min(MAX_DAY);
    let end = if period.upper() == i64::MAX {
        MAX_DAY
    } else {
        (period.upper().max(1) - 1).div_euclid(DAY_MS) + 1
    }
    .min(MAX_DAY);
    (day(first), day(end))
}

fn day(days_since_epoch: i64) -> String {
    let d = time::Date::from_calendar_date(1970, time::Month::January, 1)
        .ok()
        .and_then(|e| e.checked_add(time::Duration::days(days_since_epoch)));
    d.map_or_else(|| "1970-01-01".into(), |d| d.to_string())
}

/// Query the section.
pub async fn query(
    ch: &clickhouse::Client,
    period: &Period,
    thresholds: &[Threshold],
) -> Result<Scorecard, ReportError> {
    let (first_day, end_day) = days(period);
    let rows: Vec<ScorecardRow> = ch
        .query(SQL)
        .bind(&first_day)
        .bind(&end_day)
        .fetch_all()
        .await
        .map_err(|source| ReportError::Query {
            section: "scorecard",
            source,
        })?;
    Ok(Scorecard {
        rows,
        thresholds: thresholds.to_vec(),
        first_day,
        end_day,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_days() {
        let p = Period {
            since_ms: Some(86_400_000 + 5),
            until_ms: Some(3 * 86_400_000),
        };
        assert_eq!(days(&p), ("1970-01-02".into(), "1970-01-04".into()));
        let p = Period {
            since_ms: None,
            until_ms: Some(3 * 86_400_000 + 1),
        };
        assert_eq!(days(&p), ("1970-01-01".into(), "1970-01-05".into()));
        assert_eq!(days(&Period::default()).1, "2105-12-31");
    }

    #[test]
    fn standings() {
        let csat = Threshold {
            event: "x".into(),
            measure: Measure::Csat,
            floor: Some(4.0),
            target: Some(4.5),
        };
        assert_eq!(csat.standing(3.9), Standing::BelowFloor);
        assert_eq!(csat.standing(4.0), Standing::Neutral);
        assert_eq!(csat.standing(4.5), Standing::MeetsTarget);
        let ces = Threshold {
            measure: Measure::Ces,
            floor: Some(3.0),
            target: Some(2.0),
            ..csat
        };
        assert_eq!(ces.standing(3.5), Standing::BelowFloor);
        assert_eq!(ces.standing(2.5), Standing::Neutral);
        assert_eq!(ces.standing(1.5), Standing::MeetsTarget);
    }
}
