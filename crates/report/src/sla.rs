//! The complaint → follow-up section: of the complaints (attempts of the SLA funnel,
//! `service_recovery` by default, closed in the period), how long staff took to follow
//! up (step 1 → step 2), as a distribution over delay buckets, the median and p90 of
//! docs/queries/3, the share within the target, those never followed up, and the ones
//! still waiting (open at step 1). Per segment of the funnel's first breakdown key
//! (deploy/funnels.toml: the call-centre team) when it declares one.

use clickhouse::Row;
use serde::Deserialize;
use touchstream_journey::Funnel;

use crate::{ReportError, ReportOptions};

const SUMMARY_SQL: &str = include_str!("../sql/sla_summary.sql");
const HISTOGRAM_SQL: &str = include_str!("../sql/sla_histogram.sql");
const WAITING_SQL: &str = include_str!("../sql/sla_waiting.sql");

/// Upper edges of the delay buckets, minutes (the last bucket is open-ended): 15 min,
/// 30 min, 1 h, 2 h, 4 h, 8 h, 1 d, 2 d, 7 d.
pub const BUCKET_EDGES_MINUTES: [u64; 9] = [15, 30, 60, 120, 240, 480, 1440, 2880, 10080];

/// Complaints of one segment (or all).
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct SlaRow {
    /// 0: every complaint; 1: one segment.
    pub by_segment: u8,
    /// The segment's value (`''` for all, or for attempts without breakdown values).
    pub segment: String,
    /// Closed, not excluded attempts: complaints whose outcome is known.
    pub complaints: u64,
    /// Reached step 2 (followed up).
    pub followed_up: u64,
    /// Dropped at step 1: never followed up within the window.
    pub never: u64,
    /// Followed up within the target.
    pub within_target: u64,
    /// Median delay of the follow-ups, minutes (0 without follow-ups).
    pub median_minutes: f64,
    /// 90th percentile delay, minutes (0 without follow-ups).
    pub p90_minutes: f64,
}

/// Follow-ups of one delay bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaBucket {
    /// Lower edge, minutes.
    pub from_minutes: u64,
    /// Upper edge, minutes (`None`: open-ended).
    pub to_minutes: Option<u64>,
    /// Follow-ups whose delay is in `[from, to)`.
    pub followed_up: u64,
}

/// The section.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaReport {
    /// The funnel read.
    pub funnel: String,
    /// Step 1 and 2 event names (complaint, follow-up).
    pub step_names: (String, String),
    /// The target, minutes.
    pub target_minutes: f64,
    /// The breakdown key of the segments (`None`: the funnel has none).
    pub segment_key: Option<String>,
    /// Every complaint.
    pub all: SlaRow,
    /// Per segment, by value.
    pub segments: Vec<SlaRow>,
    /// The distribution, in bucket order.
    pub buckets: Vec<SlaBucket>,
    /// Complaints still open at step 1 that started in the period.
    pub waiting: u64,
    /// Of those, already waiting longer than the target.
    pub waiting_past_target: u64,
}

#[derive(Row, Deserialize)]
struct BucketRow {
    bucket: u32,
    followed_up: u64,
}

#[derive(Row, Deserialize)]
struct WaitingRow {
    waiting: u64,
    past_target: u64,
}

/// Query the section for `funnel`.
pub async fn query(
    ch: &clickhouse::Client,
    funnel: &Funnel,
    options: &ReportOptions,
) -> Result<SlaReport, ReportError> {
    let err = |source| ReportError::Query {
        section: "complaint follow-up",
        source,
    };
    let p = &options.period;
    let rows: Vec<SlaRow> = ch
        .query(SUMMARY_SQL)
        .bind(options.sla_target_minutes)
        .bind(&funnel.name)
        .bind(p.lower())
        .bind(p.upper())
        .fetch_all()
        .await
        .map_err(err)?;
    let (all, segments): (Vec<SlaRow>, Vec<SlaRow>) =
        rows.into_iter().partition(|r| r.by_segment == 0);
    let all = all.into_iter().next().unwrap_or(SlaRow {
        by_segment: 0,
        segment: String::new(),
        complaints: 0,
        followed_up: 0,
        never: 0,
        within_target: 0,
        median_minutes: 0.0,
        p90_minutes: 0.0,
    });
    let counts: Vec<BucketRow> = ch
        .query(HISTOGRAM_SQL)
        .bind(BUCKET_EDGES_MINUTES.to_vec())
        .bind(&funnel.name)
        .bind(p.lower())
        .bind(p.upper())
        .fetch_all()
        .await
        .map_err(err)?;
    let mut buckets: Vec<SlaBucket> = (0..=BUCKET_EDGES_MINUTES.len())
        .map(|i| SlaBucket {
            from_minutes: if i == 0 {
                0
            } else {
                BUCKET_EDGES_MINUTES[i - 1]
            },
            to_minutes: BUCKET_EDGES_MINUTES.get(i).copied(),
            followed_up: 0,
        })
        .collect();
    for c in counts {
        // 1-based index of the first edge above the delay; 0: past the last edge.
        let i = if c.bucket == 0 {
            BUCKET_EDGES_MINUTES.len()
        } else {
            c.bucket as usize - 1
        };
        if let Some(b) = buckets.get_mut(i) {
            b.followed_up += c.followed_up;
        }
    }
    let w: WaitingRow = ch
        .query(WAITING_SQL)
        .bind(options.now_ms)
        .bind(options.sla_target_minutes)
        .bind(&funnel.name)
        .bind(p.lower())
        .bind(p.upper())
        .fetch_one()
        .await
        .map_err(err)?;
    let name = |i: usize| {
        funnel
            .steps
            .get(i)
            .map_or("", |s| s.event.as_str())
            .to_string()
    };
    Ok(SlaReport {
        funnel: funnel.name.clone(),
        step_names: (name(0), name(1)),
        target_minutes: options.sla_target_minutes,
        segment_key: funnel.breakdown.first().map(|b| b.key.clone()),
        all,
        segments: if funnel.breakdown.is_empty() {
            Vec::new()
        } else {
            segments
        },
        buckets,
        waiting: w.waiting,
        waiting_past_target: w.past_target,
    })
}
