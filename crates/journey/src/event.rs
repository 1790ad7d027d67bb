//! The event shape the journey logic works on, and the records passed between stages.
//!
//! Decoupled from the wire format (Avro) on purpose: the I/O layer converts a decoded
//! touchpoint into a [`JourneyEvent`] (`From<&Touchpoint>`: only what journeys use, the
//! properties left unparsed), and everything here stays pure and testable without a
//! broker. The message type is the event model's own ([`MessageType`], re-exported). All types are serde so the I/O layer can put
//! [`RoutedEvent`] and [`Retract`] on the internal repartition topic keyed by
//! `customer_id`.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
pub use touchstream_core::MessageType;
use touchstream_core::Touchpoint;

/// One accepted touchpoint, as far as journeys care.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyEvent {
    /// Segment `messageId`; unique per event, the touchpoint row key.
    pub event_id: String,
    /// Message type.
    pub kind: MessageType,
    /// Track event name, or page/screen name; `None` for identify/alias and unnamed pages.
    pub event: Option<String>,
    /// Device/browser id before login.
    pub anonymous_id: Option<String>,
    /// Canonical user id.
    pub user_id: Option<String>,
    /// Alias source id (treated as an anonymous id).
    pub previous_id: Option<String>,
    /// Corrected event time (docs/design.md §2 "Time"), UTC epoch ms.
    pub event_time_ms: i64,
    /// Message `channel`, overrides the catalog's channel when recognised.
    pub channel: Option<String>,
    /// Message `properties`, matched by funnel step filters.
    pub properties: Properties,
}

/// A message's `properties`: the JSON object's text as it arrived, parsed only when a
/// funnel step filter asks for a value (then once). Most events never need it parsed —
/// the default funnels filter on no property — and the text passes through stage 1, the
/// internal topic and stage 2 as it is: parsing it into a map in stage 1, writing it out
/// again for the internal topic and parsing it once more in stage 2 took about 5 % of
/// the processor's CPU.
///
/// The text is trusted to be a JSON object (the collector writes it, canonical); text
/// that is not reads as no properties. Serialized (state snapshots, the JSON form of
/// routed events) as the object itself.
#[derive(Default, Clone)]
pub struct Properties {
    /// The object's JSON text; empty for none.
    text: Box<str>,
    parsed: OnceLock<Map<String, Value>>,
}

impl Properties {
    /// From a JSON object's text.
    pub fn from_json(text: &str) -> Self {
        Self {
            text: text.into(),
            parsed: OnceLock::new(),
        }
    }

    /// From a map (tests, generated events).
    pub fn from_map(map: Map<String, Value>) -> Self {
        let text = if map.is_empty() {
            String::new()
        } else {
            Value::Object(map.clone()).to_string()
        };
        Self {
            text: text.into(),
            parsed: OnceLock::from(map),
        }
    }

    /// The JSON text as it arrived; empty for none.
    pub fn json(&self) -> &str {
        &self.text
    }

    /// One top-level property.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map().get(key)
    }

    /// All of them, parsed on first use.
    pub fn map(&self) -> &Map<String, Value> {
        self.parsed.get_or_init(|| {
            if self.text.is_empty() {
                return Map::new();
            }
            match serde_json::from_str::<Value>(&self.text) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            }
        })
    }
}

impl PartialEq for Properties {
    /// Equal when they hold the same properties, whatever the text's spacing or order.
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text || self.map() == other.map()
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Properties").field(&self.json()).finish()
    }
}

impl Serialize for Properties {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The text as it is when it is JSON (no map built), else what it reads as.
        match serde_json::from_str::<&serde_json::value::RawValue>(&self.text) {
            Ok(raw) if self.text.starts_with('{') => raw.serialize(serializer),
            _ => self.map().serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Kept as text, like a decoded event's (a restored state holds no parsed maps).
        let map = Map::<String, Value>::deserialize(deserializer)?;
        if map.is_empty() {
            return Ok(Self::default());
        }
        Ok(Self::from_json(&Value::Object(map).to_string()))
    }
}

impl From<&Touchpoint> for JourneyEvent {
    fn from(tp: &Touchpoint) -> Self {
        JourneyEvent {
            event_id: tp.event_id.clone(),
            kind: tp.message_type,
            event: tp.event.clone(),
            anonymous_id: tp.anonymous_id.clone(),
            user_id: tp.user_id.clone(),
            previous_id: tp.previous_id.clone(),
            event_time_ms: tp.event_time_ms,
            // The collector fills the message's channel or the source's default; a source
            // whose default is `other` leaves the choice to the touchpoint catalog.
            channel: (tp.channel != "other").then(|| tp.channel.clone()),
            // Passed on as text: parsed only if a funnel filter needs it.
            properties: Properties::from_json(&tp.properties),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn properties_stay_text_until_asked_and_serialize_as_the_object() {
        let p = Properties::from_json(r#"{"plan": "pro", "n": 2}"#);
        assert!(p.parsed.get().is_none(), "not parsed by construction");
        // Serializing writes the text as it is and parses nothing.
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"plan": "pro", "n": 2}"#);
        assert!(p.parsed.get().is_none());
        assert_eq!(p.get("plan"), Some(&json!("pro")));
        assert_eq!(p.get("missing"), None);

        // Read back (a snapshot, an older JSON routed event): the same properties.
        let back: Properties = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!(back, Properties::from_json(r#"{"n":2,"plan":"pro"}"#));
        assert_ne!(back, Properties::from_json(r#"{"plan":"free","n":2}"#));

        // None at all, and text that is not an object, read as no properties.
        assert_eq!(serde_json::to_string(&Properties::default()).unwrap(), "{}");
        for bad in ["", "[1]", "{oops", "7"] {
            let b = Properties::from_json(bad);
            assert!(b.map().is_empty(), "{bad}");
            assert_eq!(serde_json::to_string(&b).unwrap(), "{}", "{bad}");
        }
        let m = Properties::from_map(Map::from_iter([("a".to_string(), json!(1))]));
        assert_eq!(m.json(), r#"{"a":1}"#);
        assert_eq!(Properties::from_map(Map::new()).json(), "");
    }
}
