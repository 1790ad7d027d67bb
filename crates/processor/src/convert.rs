//! Wire formats at the processor's edges: Avro touchpoints in, routed JSON between the
//! stages, ClickHouse rows out.
//!
//! The journey crate works on [`JourneyEvent`]s and emits journey-shaped rows; this module
//! is the only place that knows both those types and the table columns, so a schema
//! change touches one file.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use touchstream_core::{MessageType, Touchpoint};
use touchstream_journey::{
    Conflict, FunnelAttemptRow, JourneyEvent, Kind, Link, Properties, Retract, RoutedEvent,
    SessionRow, TouchpointRow,
};

/// A message on `touchpoints.by_customer` (serde's externally tagged JSON:
/// `{"Event": {...}}` or `{"Retract": {...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Routed {
    /// An event with its customer.
    Event(RoutedEvent),
    /// Delete an anonymous customer's journey (its events are re-sent under a user).
    Retract(Retract),
    /// An identity-stage partition's event-time watermark, sent to every journey
    /// partition: a journey partition's watermark is the minimum over all of them.
    Watermark {
        /// Identity-stage (raw topic) partition.
        source_partition: i32,
        /// Newest event time that partition has routed, ms.
        watermark_ms: i64,
    },
}

/// The journey view of a touchpoint.
pub fn journey_event(tp: &Touchpoint) -> JourneyEvent {
    // Passed on as text: parsed only if a funnel filter needs it (journey::Properties).
    let properties = Properties::from_json(&tp.properties);
    JourneyEvent {
        event_id: tp.event_id.clone(),
        kind: match tp.message_type {
            MessageType::Track => Kind::Track,
            MessageType::Page => Kind::Page,
            MessageType::Screen => Kind::Screen,
            MessageType::Identify => Kind::Identify,
            MessageType::Alias => Kind::Alias,
        },
        event: tp.event.clone(),
        anonymous_id: tp.anonymous_id.clone(),
        user_id: tp.user_id.clone(),
        previous_id: tp.previous_id.clone(),
        event_time_ms: tp.event_time_ms,
        // The collector fills the message's channel or the source's default; a source whose
        // default is `other` leaves the choice to the touchpoint catalog.
        channel: (tp.channel != "other").then(|| tp.channel.clone()),
        properties,
    }
}

/// ClickHouse `Date`: days since the epoch (UTC).
pub fn days(ms: i64) -> u16 {
    u16::try_from(ms.div_euclid(86_400_000).max(0)).unwrap_or(u16::MAX)
}

/// ClickHouse `DateTime`: seconds since the epoch.
pub fn secs(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000).max(0)).unwrap_or(u32::MAX)
}

/// One `events` row: the touchpoint as received.
#[derive(Debug, Clone, Row, Serialize)]
#[allow(missing_docs)]
pub struct EventRow {
    pub event_id: String,
    pub event_date: u16,
    pub event_time: u32,
    pub event_time_ms: i64,
    pub received_at_ms: i64,
    #[serde(rename = "type")]
    pub message_type: String,
    pub event: String,
    pub anonymous_id: String,
    pub user_id: String,
    pub previous_id: String,
    pub source: String,
    pub message_channel: String,
    pub properties: String,
    pub traits: String,
    pub context: String,
    pub ip: String,
    pub user_agent: String,
    pub extra: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

impl EventRow {
    /// Row for a touchpoint read at `partition`/`offset`. Takes the touchpoint: its
    /// strings (the JSON texts are most of a row's bytes) move into the row uncopied.
    pub fn new(tp: Touchpoint, partition: i32, offset: i64) -> Self {
        Self {
            event_id: tp.event_id,
            event_date: days(tp.event_time_ms),
            event_time: secs(tp.event_time_ms),
            event_time_ms: tp.event_time_ms,
            received_at_ms: tp.received_at_ms,
            message_type: tp.message_type.as_str().into(),
            event: tp.event.unwrap_or_default(),
            anonymous_id: tp.anonymous_id.unwrap_or_default(),
            user_id: tp.user_id.unwrap_or_default(),
            previous_id: tp.previous_id.unwrap_or_default(),
            source: tp.source,
            message_channel: tp.channel,
            properties: tp.properties,
            traits: tp.traits,
            context: tp.context,
            ip: tp.ip.unwrap_or_default(),
            user_agent: tp.user_agent.unwrap_or_default(),
            extra: tp.extra,
            kafka_partition: partition,
            kafka_offset: offset,
        }
    }
}

/// One `touchpoint_journey` row.
#[derive(Debug, Clone, Row, Serialize)]
#[allow(missing_docs)]
pub struct JourneyRow {
    pub event_id: String,
    pub event_date: u16,
    pub customer_id: String,
    pub session_id: String,
    pub stage: String,
    pub channel: String,
    pub is_late: u8,
    pub version: u64,
}

impl From<TouchpointRow> for JourneyRow {
    fn from(r: TouchpointRow) -> Self {
        Self {
            event_date: days(r.event_time_ms),
            event_id: r.event_id,
            customer_id: r.customer_id,
            session_id: r.session_id,
            stage: r.stage.as_str().into(),
            channel: r.channel.as_str().into(),
            is_late: u8::from(r.is_late),
            version: r.version,
        }
    }
}

/// One `sessions` row.
#[derive(Debug, Clone, Row, Serialize)]
#[allow(missing_docs)]
pub struct SessionDbRow {
    pub session_id: String,
    pub customer_id: String,
    pub started_at: u32,
    pub start_ms: i64,
    pub end_ms: i64,
    pub event_count: u32,
    pub first_event_id: String,
    pub entry_event: String,
    pub exit_event: String,
    pub channels: Vec<String>,
    pub is_deleted: u8,
    pub version: u64,
}

impl From<SessionRow> for SessionDbRow {
    fn from(r: SessionRow) -> Self {
        Self {
            started_at: secs(r.start_ms),
            session_id: r.session_id,
            customer_id: r.customer_id,
            start_ms: r.start_ms,
            end_ms: r.end_ms,
            event_count: r.event_count,
            first_event_id: r.first_event_id,
            entry_event: r.entry_event,
            exit_event: r.exit_event,
            channels: r.channels.iter().map(|c| c.as_str().to_string()).collect(),
            is_deleted: u8::from(r.is_deleted),
            version: r.version,
        }
    }
}

/// One `funnel_attempts` row.
#[derive(Debug, Clone, Row, Serialize)]
#[allow(missing_docs)]
pub struct AttemptDbRow {
    pub attempt_id: String,
    pub funnel: String,
    pub customer_id: String,
    pub started_at: u32,
    pub start_ms: i64,
    pub closed_at: u32,
    pub closed_ms: i64,
    pub outcome: String,
    pub reached_step: u8,
    pub total_steps: u8,
    pub step_times_ms: Vec<i64>,
    pub step_event_ids: Vec<String>,
    pub is_deleted: u8,
    pub version: u64,
}

impl From<&FunnelAttemptRow> for AttemptDbRow {
    fn from(r: &FunnelAttemptRow) -> Self {
        Self {
            attempt_id: r.attempt_id.clone(),
            funnel: r.funnel.clone(),
            customer_id: r.customer_id.clone(),
            started_at: secs(r.start_ms),
            start_ms: r.start_ms,
            closed_at: secs(r.closed_ms),
            closed_ms: r.closed_ms,
            outcome: r.outcome.as_str().into(),
            reached_step: r.reached_step,
            total_steps: r.total_steps,
            step_times_ms: r.step_times_ms.clone(),
            step_event_ids: r.step_event_ids.clone(),
            is_deleted: u8::from(r.is_deleted),
            version: r.version,
        }
    }
}

/// One `identities` row.
#[derive(Debug, Clone, Row, Serialize)]
#[allow(missing_docs)]
pub struct IdentityRow {
    pub anonymous_id: String,
    pub user_id: String,
    pub linked_at_ms: i64,
    pub link_event_id: String,
    pub link_type: String,
    pub version: u64,
}

impl From<Link> for IdentityRow {
    fn from(l: Link) -> Self {
        Self {
            anonymous_id: l.anonymous_id,
            user_id: l.user_id,
            linked_at_ms: l.linked_at_ms,
            link_event_id: l.link_event_id,
            link_type: l.link_type.as_str().into(),
            version: l.version,
        }
    }
}

/// One `identity_conflicts` row.
#[derive(Debug, Clone, Row, Serialize)]
#[allow(missing_docs)]
pub struct ConflictRow {
    pub anonymous_id: String,
    pub linked_user_id: String,
    pub conflicting_user_id: String,
    pub event_id: String,
    pub event_time_ms: i64,
    pub version: u64,
}

impl From<Conflict> for ConflictRow {
    fn from(c: Conflict) -> Self {
        Self {
            anonymous_id: c.anonymous_id,
            linked_user_id: c.linked_user_id,
            conflicting_user_id: c.conflicting_user_id,
            event_id: c.event_id,
            event_time_ms: c.event_time_ms,
            version: c.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times() {
        assert_eq!(days(0), 0);
        assert_eq!(days(86_400_000 * 3 + 5), 3);
        assert_eq!(secs(1_999), 1);
        assert_eq!(days(-5), 0);
    }

    #[test]
    fn routed_json_shape_is_documented_one() {
        let r = Routed::Retract(Retract {
            customer_id: "a".into(),
        });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Retract":{"customer_id":"a"}}"#
        );
    }
}
