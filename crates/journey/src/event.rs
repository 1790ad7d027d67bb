//! The event shape the journey logic works on, and the records passed between stages.
//!
//! Decoupled from the wire format (Avro, `touchstream-core`) on purpose: the I/O layer
//! converts a decoded message into a [`JourneyEvent`], and everything here stays pure and
//! testable without a broker. All types are serde so the I/O layer can put
//! [`RoutedEvent`] and [`Retract`] on the internal repartition topic keyed by
//! `customer_id`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Segment message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `track`: a named action.
    Track,
    /// `page`: a web page view.
    Page,
    /// `screen`: an app screen view.
    Screen,
    /// `identify`: ties the anonymous id to a user id (and carries traits).
    Identify,
    /// `alias`: ties `previousId` to `userId`.
    Alias,
}

impl Kind {
    /// The Segment `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Track => "track",
            Kind::Page => "page",
            Kind::Screen => "screen",
            Kind::Identify => "identify",
            Kind::Alias => "alias",
        }
    }
}

/// One accepted touchpoint, as far as journeys care.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyEvent {
    /// Segment `messageId`; unique per event, the touchpoint row key.
    pub event_id: String,
    /// Message type.
    pub kind: Kind,
    /// Track event name, or page/screen name; `None` for identify/alias and unnamed pages.
    pub event: Option<String>,
    /// Device/browser id before login.
    pub anonymous_id: Option<String>,
    /// Canonical user id.
    pub user_id: Option<String>,
    /// Alias source id (treated as an anonymous id).
    pub previous_id: Option<String>,
    /// Corrected event time (SPEC §2 "Time"), UTC epoch ms.
    pub event_time_ms: i64,
    /// Message `channel`, overrides the catalog's channel when recognised.
    pub channel: Option<String>,
    /// Message `properties`, matched by funnel step filters.
    pub properties: Map<String, Value>,
}

impl JourneyEvent {
    /// Name shown as a session's entry/exit event and matched by the catalog: the event
    /// or page name, else the message type (`identify`, `page`, ...).
    pub fn display_name(&self) -> &str {
        self.event.as_deref().unwrap_or(self.kind.as_str())
    }
}

/// An event with the customer it belongs to: stage 1's output, stage 2's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutedEvent {
    /// The journey this event belongs to: linked user id, else own user id, else the
    /// anonymous id. Stage 2 is partitioned by it.
    pub customer_id: String,
    /// The event itself; shared, because stage 1 keeps each not-yet-linked anonymous
    /// event to re-send it under the user, and stage 2 only reads it.
    pub event: Arc<JourneyEvent>,
    /// Stage-1 `seq` that produced this routing. A re-attribution carries the link's
    /// (higher) seq, so its touchpoint row replaces the one written under the anonymous id
    /// even though the two were written by different stage-2 partitions.
    pub version: u64,
    /// True when this is an earlier event re-sent under a newly linked user. Stage 2 then
    /// places it in the customer's history regardless of the watermark.
    pub reattributed: bool,
}

/// Stage 1 tells stage 2 that a customer id (an anonymous id that just got linked) no
/// longer exists: its sessions and funnel attempts are to be deleted, since its events
/// are re-sent under the user. Keyed by `customer_id`, so it follows that id's events in
/// the same partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retract {
    /// The anonymous id whose rows go away.
    pub customer_id: String,
}
