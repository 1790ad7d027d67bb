//! `events`: every accepted touchpoint as the collector sent it, written once by the
//! identity stage (the raw columns of the `touchpoints` view).

use clickhouse::Row;
use serde::Serialize;
use touchstream_core::Touchpoint;
use touchstream_journey::columns::{days, secs};

use super::Table;

/// The `events` table.
pub struct Events;

impl Table for Events {
    const NAME: &'static str = "events";
    type Row = EventRow;
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
