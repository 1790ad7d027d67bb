//! The stores section: per store over the period, people counted at the door (footfall)
//! → identified visits (signed-in customers with a `Store Visited`) → purchases, the
//! conversion (purchases ÷ footfall), and the audits done there (count, mean and lowest
//! score, checklist items passed). From `store_hourly` and `store_audits` (migration
//! 0010); footfall counts by the hour its period starts.

use clickhouse::Row;
use serde::Deserialize;

use crate::{Period, ReportError};

const SQL: &str = include_str!("../sql/stores.sql");
const AUDITS_SQL: &str = include_str!("../sql/store_audits.sql");
const HOURS_SQL: &str = include_str!("../sql/store_hours.sql");

/// One store over the period.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct StoreRow {
    /// `properties.store_id`.
    pub store_id: String,
    /// People counted.
    pub footfall: u64,
    /// Distinct signed-in visitors per hour, summed.
    pub identified_visits: u64,
    /// `Order Completed` events with the store's id.
    pub purchases: u64,
}

impl StoreRow {
    /// Purchases ÷ footfall.
    pub fn conversion(&self) -> Option<f64> {
        (self.footfall > 0).then(|| self.purchases as f64 / self.footfall as f64)
    }

    /// Identified visits ÷ footfall.
    pub fn identified_share(&self) -> Option<f64> {
        (self.footfall > 0).then(|| self.identified_visits as f64 / self.footfall as f64)
    }
}

/// A store's audits over the period.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct AuditRow {
    /// `properties.store_id`.
    pub store_id: String,
    /// Audits.
    pub audits: u64,
    /// Mean score (0–100).
    pub mean_score: f64,
    /// Lowest score.
    pub min_score: f64,
    /// Checklist items passed.
    pub items_passed: u64,
    /// Checklist items checked.
    pub items_checked: u64,
}

/// All stores in one hour of the day (UTC) over the period.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct HourRow {
    /// 0–23.
    pub hour_of_day: u8,
    /// People counted.
    pub footfall: u64,
    /// Distinct signed-in visitors per hour, summed.
    pub identified_visits: u64,
    /// Purchases.
    pub purchases: u64,
}

/// The section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stores {
    /// Stores with footfall, visits or purchases, by id.
    pub stores: Vec<StoreRow>,
    /// Stores with audits, by id.
    pub audits: Vec<AuditRow>,
    /// All stores by hour of the day, hours with anything only.
    pub hours: Vec<HourRow>,
}

impl Stores {
    /// Every store id of either list, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .stores
            .iter()
            .map(|s| s.store_id.clone())
            .chain(self.audits.iter().map(|a| a.store_id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// The period in epoch seconds, as ClickHouse 18.16's `DateTime` holds them (unsigned
/// 32 bits).
pub fn seconds(period: &Period) -> (u32, u32) {
    let clamp = |ms: i64| {
        u32::try_from(ms.div_euclid(1000).clamp(0, i64::from(u32::MAX))).unwrap_or(u32::MAX)
    };
    (clamp(period.lower()), clamp(period.upper()))
}

/// Query the section.
pub async fn query(ch: &clickhouse::Client, period: &Period) -> Result<Stores, ReportError> {
    let err = |source| ReportError::Query {
        section: "stores",
        source,
    };
    let (since, until) = seconds(period);
    let stores: Vec<StoreRow> = ch
        .query(SQL)
        .bind(since)
        .bind(until)
        .fetch_all()
        .await
        .map_err(err)?;
    let audits: Vec<AuditRow> = ch
        .query(AUDITS_SQL)
        .bind(since)
        .bind(until)
        .fetch_all()
        .await
        .map_err(err)?;
    let hours: Vec<HourRow> = ch
        .query(HOURS_SQL)
        .bind(since)
        .bind(until)
        .fetch_all()
        .await
        .map_err(err)?;
    Ok(Stores {
        hours,
        // Rows the outer join produced without a store (events with an empty id) are
        // no store's.
        stores: stores
            .into_iter()
            .filter(|s| !s.store_id.is_empty())
            .collect(),
        audits: audits
            .into_iter()
            .filter(|a| !a.store_id.is_empty())
            .collect(),
    })
}
