//! Rows stage 2 emits, one struct per ClickHouse table (`deploy/clickhouse/0001_init.sql`).
//!
//! Each struct is its table's row, column for column in insert order: the processor
//! writes it as it is (see [`crate::columns`] for how enums, flags and times are stored),
//! so a table's columns are declared here and nowhere else. The `touchpoints` view adds
//! the raw payload columns from `events`, which the identity stage writes.
//!
//! The per-event and per-session rows ([`TouchpointRow`], [`CustomerTouchpointRow`],
//! [`SessionRow`]) share their strings
//! (`Arc<str>`) with the stage's state and with each other instead of copying them: two
//! rows per event, each with its ids, were the most short-lived allocations of a backlog
//! (docs/performance.md).
//!
//! Every table is a `ReplacingMergeTree(version)`: a later row with the same key and a
//! higher `version` replaces an earlier one, and `is_deleted = 1` rows mark keys that no
//! longer exist (same key and same partition time as the row they delete).

use std::sync::{Arc, LazyLock};

use serde::Serialize;

use crate::columns::{flag, name, names};
use crate::journey::catalog::{Channel, Stage};
use crate::journey::funnel::Outcome;

/// The empty string of the rows' shared strings ([`TouchpointRow`],
/// [`CustomerTouchpointRow`], [`SessionRow`]; also for a caller building such rows): a
/// clone of one allocation instead of one per row.
pub fn no_text() -> Arc<str> {
    static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
    Arc::clone(&EMPTY)
}

/// One `touchpoint_journey` row (key `event_id`): what stage 2 decided for an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct TouchpointRow {
    /// Segment `messageId`.
    pub event_id: Arc<str>,
    /// Event time's day ([`crate::columns::days`]), the partition column.
    pub event_date: u16,
    /// The journey the event belongs to.
    pub customer_id: Arc<str>,
    /// Its session; empty for late events (not placed in any session).
    pub session_id: Arc<str>,
    /// Catalog stage.
    #[serde(serialize_with = "name")]
    pub stage: Stage,
    /// Message channel if recognised, else the catalog's.
    #[serde(serialize_with = "name")]
    pub channel: Channel,
    /// Arrived too late to be placed in order (or re-attributed beyond the horizon).
    #[serde(serialize_with = "flag")]
    pub is_late: bool,
    /// `stage-1 version × 65536 + emissions of this event in this partition`: grows when a
    /// re-attribution (higher stage-1 version) or a session change re-emits the row.
    pub version: u64,
}

/// One `customer_touchpoints` row (key `(customer_id, event_time_ms, event_id)`,
/// partition by `event_date`): the event as an analyst reads a journey, written with its
/// [`TouchpointRow`] so that one customer's journey is a primary-key range read instead of
/// the `touchpoints` view's join of two whole tables (`deploy/clickhouse/0007_customer_touchpoints.sql`).
///
/// The key holds the customer, so a re-attribution, which moves the event to another
/// customer, also writes a tombstone (`is_deleted = 1`) under the old customer's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct CustomerTouchpointRow {
    /// The journey the event belongs to (first key column).
    pub customer_id: Arc<str>,
    /// Event time's day ([`crate::columns::days`]), the partition column.
    pub event_date: u16,
    /// Event time, ms (second key column: the journey's order).
    pub event_time_ms: i64,
    /// Segment `messageId` (source-scoped), last key column.
    pub event_id: Arc<str>,
    /// `event_time_ms` as a `DateTime` ([`crate::columns::secs`]).
    pub event_time: u32,
    /// Message type (`track`, `page`, ...); empty on tombstones.
    #[serde(rename = "type")]
    pub message_type: &'static str,
    /// Track event name, or page/screen name; empty when the message has none.
    pub event: Arc<str>,
    /// Catalog stage.
    #[serde(serialize_with = "name")]
    pub stage: Stage,
    /// Message channel if recognised, else the catalog's.
    #[serde(serialize_with = "name")]
    pub channel: Channel,
    /// Its session; empty for events in no session.
    pub session_id: Arc<str>,
    /// `properties.store_id` (the store it happened in), empty when none
    /// (`deploy/clickhouse/0010_feedback.sql`).
    pub store_id: Arc<str>,
    /// As in [`TouchpointRow::is_late`].
    #[serde(serialize_with = "flag")]
    pub is_late: bool,
    /// Tombstone: the event moved to another customer (re-attribution).
    #[serde(serialize_with = "flag")]
    pub is_deleted: bool,
    /// The [`TouchpointRow::version`] it was written with; a tombstone's beats every row
    /// the old customer's partition wrote for the event.
    pub version: u64,
}

/// One `sessions` row (key `session_id`, partition by `started_at`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct SessionRow {
    /// Hex hash of customer id and first event id.
    pub session_id: Arc<str>,
    /// Owner.
    pub customer_id: Arc<str>,
    /// `start_ms` as a `DateTime` ([`crate::columns::secs`]), the partition column.
    pub started_at: u32,
    /// First event time, ms.
    pub start_ms: i64,
    /// Last event time, ms.
    pub end_ms: i64,
    /// Events in the session.
    pub event_count: u32,
    /// First event's id.
    pub first_event_id: Arc<str>,
    /// First event's name (or message type).
    pub entry_event: Arc<str>,
    /// Last event's name (or message type).
    pub exit_event: Arc<str>,
    /// Distinct channels, in [`Channel`] declaration order.
    #[serde(serialize_with = "names")]
    pub channels: Vec<Channel>,
    /// Tombstone: the session no longer exists (re-attribution reshaped it).
    #[serde(serialize_with = "flag")]
    pub is_deleted: bool,
    /// Stage-2 seq × 2^20 + emission counter: strictly increasing per partition.
    pub version: u64,
}

/// One `funnel_attempts` row (key `(funnel, attempt_id)`, partition by `closed_at`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct FunnelAttemptRow {
    /// Hex hash of funnel, customer id and step-1 event id.
    pub attempt_id: String,
    /// Funnel name.
    pub funnel: String,
    /// Owner.
    pub customer_id: String,
    /// `start_ms` as a `DateTime`.
    pub started_at: u32,
    /// Step-1 event time, ms.
    pub start_ms: i64,
    /// `closed_ms` as a `DateTime`, the partition column.
    pub closed_at: u32,
    /// Conversion time, or start + window for drops, ms.
    pub closed_ms: i64,
    /// Converted or dropped.
    #[serde(serialize_with = "name")]
    pub outcome: Outcome,
    /// Last step reached, 1-based.
    pub reached_step: u8,
    /// Steps in the funnel.
    pub total_steps: u8,
    /// Time each reached step happened, ms.
    pub step_times_ms: Vec<i64>,
    /// Event id of each reached step.
    pub step_event_ids: Vec<String>,
    /// Breakdown dimensions (`channel`, `source`, `properties.<name>`), empty without
    /// breakdown (README "Funnels", Breakdowns).
    pub breakdown_keys: Vec<String>,
    /// One value per key (`first_step`, `last_step`), or one per key for each reached
    /// step, step-major (`each_step`: `reached_step × keys`, `""` for a skipped step).
    pub breakdown_values: Vec<String>,
    /// Tombstone: the attempt no longer exists, or moved to another `closed_ms`.
    #[serde(serialize_with = "flag")]
    pub is_deleted: bool,
    /// Stage-2 seq × 2^20 + emission counter: strictly increasing per partition.
    pub version: u64,
}

/// One `funnel_open_attempts` row (key `(funnel, attempt_id)`, partition by
/// `started_at`): an attempt still open at the release frontier. Rewritten when it
/// advances; tombstoned (`is_deleted = 1`, same key and `started_at`) when it closes —
/// its `funnel_attempts` row, same `attempt_id`, appears then — or when a correction or
/// re-attribution removes it. `FINAL WHERE is_deleted = 0` is the open attempts now.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct FunnelOpenAttemptRow {
    /// Hex hash of funnel, customer id and step-1 event id (as in `funnel_attempts`).
    pub attempt_id: String,
    /// Funnel name.
    pub funnel: String,
    /// Owner.
    pub customer_id: String,
    /// `start_ms` as a `DateTime`, the partition column.
    pub started_at: u32,
    /// Step-1 event time, ms.
    pub start_ms: i64,
    /// Last step reached so far, 1-based.
    pub reached_step: u8,
    /// Steps in the funnel.
    pub total_steps: u8,
    /// Time the last reached step happened, ms.
    pub reached_ms: i64,
    /// `due_ms` as a `DateTime`.
    pub due_at: u32,
    /// When the attempt drops unless it advances first, ms: start + window, or the
    /// step's own deadline where the funnel sets one.
    pub due_ms: i64,
    /// Time each reached step happened, ms.
    pub step_times_ms: Vec<i64>,
    /// Event id of each reached step.
    pub step_event_ids: Vec<String>,
    /// Breakdown dimensions (`channel`, `source`, `properties.<name>`), empty without
    /// breakdown (README "Funnels", Breakdowns).
    pub breakdown_keys: Vec<String>,
    /// One value per key (`first_step`, `last_step`), or one per key for each reached
    /// step, step-major (`each_step`: `reached_step × keys`, `""` for a skipped step).
    pub breakdown_values: Vec<String>,
    /// Tombstone: the attempt closed or no longer exists.
    #[serde(serialize_with = "flag")]
    pub is_deleted: bool,
    /// Stage-2 seq × 2^20 + emission counter: strictly increasing per partition.
    pub version: u64,
}

/// One `feedback` row (key `event_id`, partition by `event_date`): a survey answer and
/// the touchpoint it rates (README "Feedback attribution",
/// `deploy/clickhouse/0010_feedback.sql`). Written again, with a higher version, when a
/// late touchpoint or a re-attribution changes what it rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct FeedbackRow {
    /// The answer's event id.
    pub event_id: String,
    /// The answer's day ([`crate::columns::days`]), the partition column.
    pub event_date: u16,
    /// The answer's time as a `DateTime`.
    pub answered_at: u32,
    /// The answer's time, ms.
    pub answered_ms: i64,
    /// The journey the answer belongs to.
    pub customer_id: String,
    /// The answer's event name (`Survey Completed`, `NPS Submitted`, ...).
    pub event: String,
    /// `nps`, `csat` or `ces`.
    pub scale: String,
    /// The answer's score on its scale.
    pub score: f64,
    /// Which rule found the touchpoint: `event_id`, `event`, `stage`, or `none`.
    pub attribution: String,
    /// The rated touchpoint's event id; empty when unattributed (as are the other
    /// `about_` columns, `about_date` = 0 and `delay_ms` = 0).
    pub about_event_id: String,
    /// Its event name (or message type).
    pub about_event: String,
    /// Its stage.
    pub about_stage: String,
    /// Its channel.
    pub about_channel: String,
    /// Its `properties.store_id`, if any.
    pub about_store_id: String,
    /// Its day.
    pub about_date: u16,
    /// Its time, ms.
    pub about_time_ms: i64,
    /// Answer time − touchpoint time, ms.
    pub delay_ms: i64,
    /// The answer arrived too late to be placed (not attributed).
    #[serde(serialize_with = "flag")]
    pub is_late: bool,
    /// `stage-1 version × 65536 + n`, like [`TouchpointRow::version`]: `n` is 0 for a
    /// late answer's row, else the rows written for the answer so far (from 1).
    pub version: u64,
}

/// Rows produced since the last [`crate::JourneyStage::take_output`], each list sorted by
/// version and holding only the newest row per key.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JourneyOutput {
    /// `touchpoint_journey` rows.
    pub touchpoints: Vec<TouchpointRow>,
    /// `customer_touchpoints` rows: one per `touchpoints` row, plus the tombstones of
    /// re-attributed events under their former customer.
    pub customer_touchpoints: Vec<CustomerTouchpointRow>,
    /// `sessions` rows.
    pub sessions: Vec<SessionRow>,
    /// `funnel_attempts` rows.
    pub attempts: Vec<FunnelAttemptRow>,
    /// `funnel_open_attempts` rows.
    pub open_attempts: Vec<FunnelOpenAttemptRow>,
    /// `feedback` rows.
    pub feedback: Vec<FeedbackRow>,
}

impl JourneyOutput {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.touchpoints.is_empty()
            && self.customer_touchpoints.is_empty()
            && self.sessions.is_empty()
            && self.attempts.is_empty()
            && self.open_attempts.is_empty()
            && self.feedback.is_empty()
    }
}
