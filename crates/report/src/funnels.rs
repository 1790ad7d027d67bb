//! The funnels section: per funnel of the funnels file, its attempts by outcome, per step
//! how many reached it and dropped there, and the same per breakdown segment where the
//! funnel declares a breakdown (README "Funnels", Breakdowns). Attempts count by the time
//! they closed (SPEC §5), excluded attempts and skipped optional steps nowhere, as in
//! docs/queries/1 and 8, whose SQL `sql/funnel_*.sql` repeats with the period added.

use clickhouse::Row;
use serde::Deserialize;
use touchstream_journey::Funnel;

use crate::{Period, ReportError};

const STEPS_SQL: &str = include_str!("../sql/funnel_steps.sql");
const BREAKDOWN_SQL: &str = include_str!("../sql/funnel_breakdown_steps.sql");
const OUTCOMES_SQL: &str = include_str!("../sql/funnel_outcomes.sql");

/// One step's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCount {
    /// Attempts that reached the step.
    pub reached: u64,
    /// Of those, attempts that dropped at it (reached it, not the next).
    pub dropped: u64,
}

impl StepCount {
    /// Drop-off at the step: dropped ÷ reached (`None` when none reached it).
    pub fn dropoff(&self) -> Option<f64> {
        (self.reached > 0).then(|| self.dropped as f64 / self.reached as f64)
    }
}

/// A funnel's closed attempts by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Closed attempts.
    pub attempts: u64,
    /// Converted (reached the last step).
    pub converted: u64,
    /// Dropped.
    pub dropped: u64,
    /// Excluded (left the funnel by an exclusion; counted in no step).
    pub excluded: u64,
}

/// One breakdown segment (a tuple of values, joined by `/` in key order).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The values, e.g. `web` or `north`; `''` for attempts stored without breakdown
    /// values (written before the funnel declared one).
    pub value: String,
    /// One entry per step of the funnel.
    pub steps: Vec<StepCount>,
}

/// One funnel over the period.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelReport {
    /// Name, as in the funnels file.
    pub name: String,
    /// Step labels (event names, with their property conditions).
    pub step_labels: Vec<String>,
    /// Window, seconds.
    pub window_secs: i64,
    /// Closed attempts by outcome.
    pub outcomes: Outcomes,
    /// One entry per step.
    pub steps: Vec<StepCount>,
    /// Breakdown keys the funnel declares (empty: not broken down).
    pub breakdown_keys: Vec<String>,
    /// Segments, by value.
    pub segments: Vec<Segment>,
}

#[derive(Row, Deserialize)]
struct StepRow {
    funnel: String,
    step: u8,
    reached: u64,
    dropped: u64,
}

#[derive(Row, Deserialize)]
struct BreakdownRow {
    funnel: String,
    breakdown: String,
    step: u8,
    reached: u64,
    dropped: u64,
}

#[derive(Row, Deserialize)]
struct OutcomeRow {
    funnel: String,
    attempts: u64,
    converted: u64,
    dropped: u64,
    excluded: u64,
}

fn label(step: &touchstream_journey::Step) -> String {
    let mut s = step.event.clone();
    if !step.filters.is_empty() {
        let names: Vec<&str> = step.filters.iter().map(|(k, _)| k.as_str()).collect();
        s.push_str(&format!(" ({})", names.join(", ")));
    }
    if step.optional {
        s.push_str(" [optional]");
    }
    s
}

fn put(steps: &mut [StepCount], step: u8, reached: u64, dropped: u64) {
    if let Some(s) = usize::from(step)
        .checked_sub(1)
        .and_then(|i| steps.get_mut(i))
    {
        *s = StepCount { reached, dropped };
    }
}

/// Query the section for `funnels` (the chosen ones, in file order).
pub async fn query(
    ch: &clickhouse::Client,
    funnels: &[&Funnel],
    period: &Period,
) -> Result<Vec<FunnelReport>, ReportError> {
    let mut out: Vec<FunnelReport> = funnels
        .iter()
        .map(|f| FunnelReport {
            name: f.name.clone(),
            step_labels: f.steps.iter().map(label).collect(),
            window_secs: f.window_ms / 1000,
            outcomes: Outcomes::default(),
            steps: vec![StepCount::default(); f.steps.len()],
            breakdown_keys: f.breakdown.iter().map(|b| b.key.clone()).collect(),
            segments: Vec::new(),
        })
        .collect();
    if out.is_empty() {
        return Ok(out);
    }
    let names: Vec<String> = out.iter().map(|f| f.name.clone()).collect();
    let err = |source| ReportError::Query {
        section: "funnels",
        source,
    };
    let outcomes: Vec<OutcomeRow> = ch
        .query(OUTCOMES_SQL)
        .bind(period.lower())
        .bind(period.upper())
        .bind(&names)
        .fetch_all()
        .await
        .map_err(err)?;
    for r in outcomes {
        if let Some(f) = out.iter_mut().find(|f| f.name == r.funnel) {
            f.outcomes = Outcomes {
                attempts: r.attempts,
                converted: r.converted,
                dropped: r.dropped,
                excluded: r.excluded,
            };
        }
    }
    let steps: Vec<StepRow> = ch
        .query(STEPS_SQL)
        .bind(period.lower())
        .bind(period.upper())
        .bind(&names)
        .fetch_all()
        .await
        .map_err(err)?;
    for r in steps {
        if let Some(f) = out.iter_mut().find(|f| f.name == r.funnel) {
            put(&mut f.steps, r.step, r.reached, r.dropped);
        }
    }
    let broken_down: Vec<String> = out
        .iter()
        .filter(|f| !f.breakdown_keys.is_empty())
        .map(|f| f.name.clone())
        .collect();
    if !broken_down.is_empty() {
        let rows: Vec<BreakdownRow> = ch
            .query(BREAKDOWN_SQL)
            .bind(period.lower())
            .bind(period.upper())
            .bind(&broken_down)
            .fetch_all()
            .await
            .map_err(err)?;
        for r in rows {
            let Some(f) = out.iter_mut().find(|f| f.name == r.funnel) else {
                continue;
            };
            let n = f.steps.len();
            let at = match f.segments.iter().position(|s| s.value == r.breakdown) {
                Some(i) => i,
                None => {
                    f.segments.push(Segment {
                        value: r.breakdown.clone(),
                        steps: vec![StepCount::default(); n],
                    });
                    f.segments.len() - 1
                }
            };
            put(&mut f.segments[at].steps, r.step, r.reached, r.dropped);
        }
    }
    Ok(out)
}
