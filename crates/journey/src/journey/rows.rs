//! Rows stage 2 emits, one struct per ClickHouse table (`deploy/clickhouse/0001_init.sql`).
//!
//! Only the columns journeys decide are here; the I/O layer adds the rest (raw payload
//! columns of `touchpoints`, `DateTime` partition columns derived from the `_ms` fields).
//! Every table is a `ReplacingMergeTree(version)`: a later row with the same key and a
//! higher `version` replaces an earlier one, and `is_deleted = 1` rows mark keys that no
//! longer exist (same key and same partition time as the row they delete).

use serde::{Deserialize, Serialize};

use crate::journey::catalog::{Channel, Stage};
use crate::journey::funnel::Outcome;

/// Journey columns of one `touchpoints` row (key `event_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TouchpointRow {
    /// Segment `messageId`.
    pub event_id: String,
    /// The journey the event belongs to.
    pub customer_id: String,
    /// Its session; empty for late events (not placed in any session).
    pub session_id: String,
    /// Event time, ms (partition column `event_date` derives from it).
    pub event_time_ms: i64,
    /// Catalog stage.
    pub stage: Stage,
    /// Message channel if recognised, else the catalog's.
    pub channel: Channel,
    /// Arrived too late to be placed in order (or re-attributed beyond the horizon).
    pub is_late: bool,
    /// `stage-1 version × 65536 + emissions of this event in this partition`: grows when a
    /// re-attribution (higher stage-1 version) or a session change re-emits the row.
    pub version: u64,
}

/// One `sessions` row (key `session_id`, partition by `start_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRow {
    /// Hex hash of customer id and first event id.
    pub session_id: String,
    /// Owner.
    pub customer_id: String,
    /// First event time, ms.
    pub start_ms: i64,
    /// Last event time, ms.
    pub end_ms: i64,
    /// Events in the session.
    pub event_count: u32,
    /// First event's id.
    pub first_event_id: String,
    /// First event's name (or message type).
    pub entry_event: String,
    /// Last event's name (or message type).
    pub exit_event: String,
    /// Distinct channels, in [`Channel`] declaration order.
    pub channels: Vec<Channel>,
    /// Tombstone: the session no longer exists (re-attribution reshaped it).
    pub is_deleted: bool,
    /// Stage-2 seq × 2^20 + emission counter: strictly increasing per partition.
    pub version: u64,
}

/// One `funnel_attempts` row (key `(funnel, attempt_id)`, partition by `closed_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FunnelAttemptRow {
    /// Hex hash of funnel, customer id and step-1 event id.
    pub attempt_id: String,
    /// Funnel name.
    pub funnel: String,
    /// Owner.
    pub customer_id: String,
    /// Step-1 event time, ms.
    pub start_ms: i64,
    /// Conversion time, or start + window for drops, ms.
    pub closed_ms: i64,
    /// Converted or dropped.
    pub outcome: Outcome,
    /// Last step reached, 1-based.
    pub reached_step: u8,
    /// Steps in the funnel.
    pub total_steps: u8,
    /// Time each reached step happened, ms.
    pub step_times_ms: Vec<i64>,
    /// Event id of each reached step.
    pub step_event_ids: Vec<String>,
    /// Tombstone: the attempt no longer exists, or moved to another `closed_ms`.
    pub is_deleted: bool,
    /// Stage-2 seq × 2^20 + emission counter: strictly increasing per partition.
    pub version: u64,
}

/// Rows produced since the last [`crate::JourneyStage::take_output`], each list sorted by
/// version and holding only the newest row per key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyOutput {
    /// `touchpoints` journey columns.
    pub touchpoints: Vec<TouchpointRow>,
    /// `sessions` rows.
    pub sessions: Vec<SessionRow>,
    /// `funnel_attempts` rows.
    pub attempts: Vec<FunnelAttemptRow>,
}

impl JourneyOutput {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.touchpoints.is_empty() && self.sessions.is_empty() && self.attempts.is_empty()
    }
}
