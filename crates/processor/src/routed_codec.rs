//! How values on `touchpoints.by_customer` are written and read.
//!
//! Events — nearly every record on the topic — use a small binary layout; retractions and
//! watermarks stay JSON ([`Routed`]'s serde form). Why: the topic is internal (both ends
//! are this crate), and JSON cost the processor about 16 % of its CPU on a 1M-event run
//! (serializing in the identity stage, parsing in the journey stage: escaping, field-name
//! matching, number text), most of it for the fields every event has. The `properties`
//! object stays JSON text inside the record: it is free-form, and it is the text that
//! came in, passed through unparsed ([`touchstream_journey::Properties`]; the funnel
//! filters parse it when they need a value).
//!
//! A binary event starts with [`EVENT_MAGIC`], which JSON never does (a JSON object
//! starts with `{`), so records written by older processors (all JSON) are still read:
//! [`decode`] tells the two apart by the first byte. Layout (little-endian; a string is
//! a `u32` byte length and UTF-8 bytes, an optional string has length `u32::MAX` when
//! absent): magic `0xE1`, format version `1`, `customer_id`, `event_id`, kind (`u8`:
//! 0 track, 1 page, 2 screen, 3 identify, 4 alias), optional `event`, `anonymous_id`,
//! `user_id`, `previous_id`, `channel`, `event_time_ms` (`i64`), `version` (`u64`),
//! `reattributed` (`u8` 0/1), `properties` (a string holding the JSON object as the
//! collector wrote it, `{}` included; empty for none). Format version `2` (what the
//! identity stage writes) appends the event's [`Origin`]: `source` (`u32`), `position`
//! (`u64`), `index` (`u32`), by which the journey stage recognises a copy an identity partition
//! re-sent after a restart; version `1` records (no origin) are still read. Documented in
//! `schemas/README.md`.
//!
//! Packs (format version `3`, [`Pack`], [`unpack`]): many values for one partition in one
//! record, each exactly as a record of its own would hold it. Why: the per-record costs of
//! the internal topic (building the record, `producev`, the broker thread, the second
//! consumer's receive) were ~20 % of the processor's CPU; the values themselves are still
//! encoded and decoded once each. The identity stage picks the partition itself
//! ([`partition_for`], librdkafka's default for the customer id as key).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use touchstream_journey::{JourneyEvent, MessageType, Origin, Properties, Retract, RoutedEvent};

/// A message on `touchpoints.by_customer` (serde's externally tagged JSON:
/// `{"Event": {...}}` or `{"Retract": {...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Routed {
    /// An event with its customer (format version 1, or JSON from older processors).
    Event(RoutedEvent),
    /// An event with its customer and where it comes from (format version 2; never JSON).
    EventFrom(RoutedEvent, Origin),
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

/// First byte of a binary event record (never the first byte of JSON).
pub const EVENT_MAGIC: u8 = 0xE1;
/// The layout described in the module docs, without an origin.
const FORMAT_VERSION: u8 = 1;
/// The same followed by the event's [`Origin`].
const FORMAT_VERSION_ORIGIN: u8 = 2;
/// Length written for an absent optional string.
const NONE: u32 = u32::MAX;

/// Encode any [`Routed`] value: events in binary, the rest as JSON.
pub fn encode(routed: &Routed) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(routed, &mut out);
    out
}

/// [`encode`], appended to `out`: the identity stage writes each value straight into its
/// pack ([`Pack::push_with`]) instead of into a buffer of its own that is then copied.
pub fn encode_into(routed: &Routed, out: &mut Vec<u8>) {
    match routed {
        Routed::Event(e) => encode_binary(e, None, out),
        Routed::EventFrom(e, origin) => encode_binary(e, Some(origin), out),
        // Serializing our own plain structs cannot fail; an empty value would be caught
        // by the journey stage's decoder and sent to the DLQ rather than lost silently.
        other => {
            let start = out.len();
            if serde_json::to_writer(&mut *out, other).is_err() {
                out.truncate(start);
            }
        }
    }
}

/// The binary record of one routed event (format version 1, no origin).
pub fn encode_event(r: &RoutedEvent) -> Vec<u8> {
    let mut out = Vec::new();
    encode_binary(r, None, &mut out);
    out
}

/// The binary record of one routed event with its origin (format version 2).
pub fn encode_event_from(r: &RoutedEvent, origin: &Origin) -> Vec<u8> {
    let mut out = Vec::new();
    encode_binary(r, Some(origin), &mut out);
    out
}

fn encode_binary(r: &RoutedEvent, origin: Option<&Origin>, out: &mut Vec<u8>) {
    let e = &r.event;
    let optional = [
        &e.event,
        &e.anonymous_id,
        &e.user_id,
        &e.previous_id,
        &e.channel,
    ];
    let text: usize = optional
        .iter()
        .filter_map(|s| s.as_ref())
        .map(String::len)
        .sum();
    let text = text + e.properties.json().len();
    out.reserve(80 + r.customer_id.len() + e.event_id.len() + text);
    out.push(EVENT_MAGIC);
    out.push(if origin.is_some() {
        FORMAT_VERSION_ORIGIN
    } else {
        FORMAT_VERSION
    });
    put_str(out, &r.customer_id);
    put_str(out, &e.event_id);
    out.push(kind_byte(e.kind));
    for s in optional {
        match s {
            Some(s) => put_str(out, s),
            None => out.extend_from_slice(&NONE.to_le_bytes()),
        }
    }
    out.extend_from_slice(&e.event_time_ms.to_le_bytes());
    out.extend_from_slice(&r.version.to_le_bytes());
    out.push(u8::from(r.reattributed));
    // The text as it arrived (empty for none), not re-serialized.
    put_str(out, e.properties.json());
    if let Some(o) = origin {
        out.extend_from_slice(&o.source.to_le_bytes());
        out.extend_from_slice(&o.position.to_le_bytes());
        out.extend_from_slice(&o.index.to_le_bytes());
    }
}

/// Decode a `touchpoints.by_customer` value, binary or JSON.
pub fn decode(payload: &[u8]) -> Result<Routed, String> {
    if payload.first() == Some(&EVENT_MAGIC) {
        decode_event(payload).map(|(e, origin)| match origin {
            Some(origin) => Routed::EventFrom(e, origin),
            None => Routed::Event(e),
        })
    } else {
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    }
}

/// A message type's byte in the layout: its position in the Avro enum (0 track, 1 page,
/// 2 screen, 3 identify, 4 alias), which never changes (readers of old records rely on it).
fn kind_byte(kind: MessageType) -> u8 {
    u8::try_from(kind.avro_index()).unwrap_or(u8::MAX)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings here come from Kafka records (at most a few MB); a longer one could not be
    // produced anyway, and would fail to decode rather than be cut silently.
    let len = u32::try_from(s.len()).unwrap_or(NONE - 1);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over a binary event record.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| format!("routed event cut short reading {what}"))?;
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn len(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn text(&mut self, len: u32, what: &str) -> Result<&'a str, String> {
        let bytes = self.take(len as usize, what)?;
        std::str::from_utf8(bytes).map_err(|e| format!("routed event {what}: {e}"))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.len(what)?;
        if len == NONE {
            return Err(format!("routed event {what} is missing"));
        }
        self.text(len, what).map(str::to_owned)
    }

    fn opt_string(&mut self, what: &str) -> Result<Option<String>, String> {
        match self.len(what)? {
            NONE => Ok(None),
            len => self.text(len, what).map(|s| Some(s.to_owned())),
        }
    }
}

fn decode_event(payload: &[u8]) -> Result<(RoutedEvent, Option<Origin>), String> {
    let mut r = Reader {
        buf: payload,
        at: 1,
    };
    let version = r.u8("format version")?;
    if version != FORMAT_VERSION && version != FORMAT_VERSION_ORIGIN {
        return Err(format!(
            "routed event format version {version} is not {FORMAT_VERSION} or {FORMAT_VERSION_ORIGIN} (written by a newer processor?)"
        ));
    }
    let customer_id = r.string("customer_id")?;
    let event_id = r.string("event_id")?;
    let byte = r.u8("kind")?;
    let kind = MessageType::ALL
        .into_iter()
        .find(|k| kind_byte(*k) == byte)
        .ok_or_else(|| format!("routed event kind {byte} is unknown"))?;
    let event = r.opt_string("event")?;
    let anonymous_id = r.opt_string("anonymous_id")?;
    let user_id = r.opt_string("user_id")?;
    let previous_id = r.opt_string("previous_id")?;
    let channel = r.opt_string("channel")?;
    let event_time_ms = i64::from_le_bytes(r.array("event_time_ms")?);
    let seq = u64::from_le_bytes(r.array("version")?);
    let reattributed = match r.u8("reattributed")? {
        0 => false,
        1 => true,
        other => {
            return Err(format!(
                "routed event reattributed flag {other} is not 0 or 1"
            ))
        }
    };
    let len = r.len("properties")?;
    let text = r.text(len, "properties")?;
    // Not parsed here (only when a funnel filter needs it): checked to be an object's
    // text by its ends, as the identity stage writes it.
    let object = text.starts_with('{') && text.ends_with('}');
    if !(text.is_empty() || object) {
        return Err("routed event properties are not a JSON object".into());
    }
    let properties = Properties::from_json(text);
    let origin = if version == FORMAT_VERSION_ORIGIN {
        Some(Origin {
            source: u32::from_le_bytes(r.array("origin source")?),
            position: u64::from_le_bytes(r.array("origin position")?),
            index: u32::from_le_bytes(r.array("origin index")?),
        })
    } else {
        None
    };
    if r.at != payload.len() {
        return Err(format!(
            "routed event has {} bytes after its end",
            payload.len() - r.at
        ));
    }
    let event = RoutedEvent {
        customer_id,
        event: Arc::new(JourneyEvent {
            event_id,
            kind,
            event,
            anonymous_id,
            user_id,
            previous_id,
            event_time_ms,
            channel,
            properties,
        }),
        version: seq,
        reattributed,
    };
    Ok((event, origin))
}

/// Format version of a pack: many values for one `touchpoints.by_customer` partition in
/// one Kafka record (module docs, "Packs").
pub const PACK_VERSION: u8 = 3;
/// Bytes before a pack's first entry: magic, version, `u32` entry count.
const PACK_HEADER: usize = 6;

/// A pack being filled: the header, then each entry as a `u32` length and its bytes.
#[derive(Debug)]
pub struct Pack {
    buf: Vec<u8>,
    entries: u32,
    /// Where the last entry's length starts, for [`Pack::pop`].
    last: Option<usize>,
}

impl Default for Pack {
    fn default() -> Self {
        Self::with_capacity(16 * 1024)
    }
}

impl Pack {
    /// An empty pack whose buffer holds `bytes` before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(PACK_HEADER));
        buf.extend_from_slice(&[EVENT_MAGIC, PACK_VERSION, 0, 0, 0, 0]);
        Pack {
            buf,
            entries: 0,
            last: None,
        }
    }

    /// Append one value exactly as [`encode`] wrote it.
    pub fn push(&mut self, entry: &[u8]) {
        self.push_with(|buf| buf.extend_from_slice(entry));
    }

    /// Append one value that `write` appends to the pack's buffer (e.g. [`encode_into`]),
    /// so the value is written once, in place.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        write(&mut self.buf);
        let len = u32::try_from(self.buf.len() - at - 4).unwrap_or(u32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.entries += 1;
        self.last = Some(at);
    }

    /// Make room for `total` bytes in all (nothing if there is already that much).
    pub fn reserve_total(&mut self, total: usize) {
        self.buf.reserve_exact(total.saturating_sub(self.buf.len()));
    }

    /// Take the last value back out of the pack (its bytes, without the length).
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let at = self.last?;
        let value = self.buf.split_off(at + 4);
        self.buf.truncate(at);
        self.entries -= 1;
        self.last = None;
        Some(value)
    }

    /// Values so far.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The record value.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[2..PACK_HEADER].copy_from_slice(&self.entries.to_le_bytes());
        self.buf
    }
}

/// A pack read back: its values in order, and where its frame stopped adding up, if it
/// did (what went wrong, and the bytes from there on).
#[derive(Debug, PartialEq, Eq)]
pub struct Unpacked<'a> {
    /// The values before any break.
    pub values: Vec<&'a [u8]>,
    /// A length past the end, a count not reached, bytes left over: why, and the rest.
    pub broken: Option<(String, &'a [u8])>,
}

/// The entries of a pack, or `None` when `payload` is not one (a single value, read by
/// [`decode`]). A frame that stops adding up keeps the values before the break.
pub fn unpack(payload: &[u8]) -> Option<Unpacked<'_>> {
    if payload.len() < 2 || payload[0] != EVENT_MAGIC || payload[1] != PACK_VERSION {
        return None;
    }
    let Some(count) = payload
        .get(2..PACK_HEADER)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
    else {
        return Some(Unpacked {
            values: Vec::new(),
            broken: Some(("pack shorter than its header".into(), payload)),
        });
    };
    let mut values = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut at = PACK_HEADER;
    for k in 0..count {
        let len = payload
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes);
        let end = len.and_then(|len| (at + 4).checked_add(len as usize));
        match (len, end) {
            (Some(_), Some(end)) if end <= payload.len() => {
                values.push(&payload[at + 4..end]);
                at = end;
            }
            _ => {
                let why = format!("pack entry {k} of {count} runs past the end at byte {at}");
                return Some(Unpacked {
                    values,
                    broken: Some((why, &payload[at..])),
                });
            }
        }
    }
    let broken = (at != payload.len()).then(|| {
        let why = format!(
            "pack of {count} entries has {} bytes left over",
            payload.len() - at
        );
        (why, &payload[at..])
    });
    Some(Unpacked { values, broken })
}

/// How many values a record holds: a pack's entry count, else 1.
pub fn values_in(payload: &[u8]) -> usize {
    match payload {
        [EVENT_MAGIC, PACK_VERSION, a, b, c, d, ..] => {
            u32::from_le_bytes([*a, *b, *c, *d]) as usize
        }
        _ => 1,
    }
}

/// The `touchpoints.by_customer` partition of a customer's values: librdkafka's default
/// partitioner for keyed records (`consistent_random`: CRC-32 of the key modulo the
/// partition count), so packs land where the same values produced one record each (by
/// earlier processors, or by tools) do, and a customer's values stay in one partition
/// across an upgrade. Tested against the partitions librdkafka picks
/// (`tests/kafka_topics.rs`).
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    let n = u32::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(crc32fast::hash(key.as_bytes()) % n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    fn sample() -> RoutedEvent {
        let mut properties = Map::new();
        properties.insert("sku".into(), json!("SKU-1"));
        properties.insert("price".into(), json!(19.9));
        properties.insert("tags".into(), json!(["a", {"b": null}]));
        RoutedEvent {
            customer_id: "u-1001".into(),
            event: Arc::new(JourneyEvent {
                event_id: "doc-m-2".into(),
                kind: MessageType::Track,
                event: Some("Product Viewed".into()),
                anonymous_id: Some("a-7f3c".into()),
                user_id: None,
                previous_id: None,
                event_time_ms: 1_795_621_205_000,
                channel: Some("web".into()),
                properties: Properties::from_map(properties),
            }),
            version: 42,
            reattributed: true,
        }
    }

    fn origin() -> Origin {
        Origin {
            source: 5,
            position: 42,
            index: 3,
        }
    }

    #[test]
    fn an_event_with_its_origin_round_trips_and_extends_version_1() {
        let e = sample();
        let bytes = encode(&Routed::EventFrom(e.clone(), origin()));
        assert_eq!(bytes[..2], [EVENT_MAGIC, 2]);
        assert_eq!(
            decode(&bytes).unwrap(),
            Routed::EventFrom(e.clone(), origin())
        );
        // The same record as version 1 plus 16 bytes of origin.
        let v1 = encode_event(&e);
        assert_eq!(bytes.len(), v1.len() + 16);
        assert_eq!(bytes[2..v1.len()], v1[2..]);
    }

    #[test]
    fn kinds_keep_their_bytes() {
        // Fixed by the layout: records already on the topic must still decode.
        let bytes = MessageType::ALL.map(kind_byte);
        assert_eq!(bytes, [0, 1, 2, 3, 4]);
        assert_eq!(
            MessageType::ALL.map(MessageType::as_str),
            ["track", "page", "screen", "identify", "alias"]
        );
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

    #[test]
    fn an_event_round_trips_in_binary() {
        let e = sample();
        let bytes = encode(&Routed::Event(e.clone()));
        assert_eq!(bytes[0], EVENT_MAGIC);
        assert_eq!(decode(&bytes).unwrap(), Routed::Event(e));
    }

    #[test]
    fn properties_pass_through_as_their_text() {
        let text = r#"{"z": 1,  "a":{"k":[true]}}"#;
        let mut e = sample();
        Arc::make_mut(&mut e.event).properties = Properties::from_json(text);
        let Routed::Event(back) = decode(&encode_event(&e)).unwrap() else {
            panic!("an event");
        };
        assert_eq!(back.event.properties.json(), text, "not re-serialized");
        assert_eq!(back.event.properties.get("z"), Some(&json!(1)));
        // Something that is not an object's text is a damaged record.
        let mut bad = e.clone();
        Arc::make_mut(&mut bad.event).properties = Properties::from_json("[1,2]");
        let err = decode(&encode_event(&bad)).unwrap_err();
        assert!(err.contains("not a JSON object"), "{err}");
    }

    #[test]
    fn retractions_and_watermarks_stay_json() {
        for r in [
            Routed::Retract(Retract {
                customer_id: "a-7f3c".into(),
            }),
            Routed::Watermark {
                source_partition: 3,
                watermark_ms: 1_795_621_205_000,
            },
        ] {
            let bytes = encode(&r);
            assert_eq!(bytes[0], b'{');
            assert_eq!(decode(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn json_events_of_older_processors_are_still_read() {
        let e = sample();
        let json = serde_json::to_vec(&Routed::Event(e.clone())).unwrap();
        assert_eq!(decode(&json).unwrap(), Routed::Event(e));
    }

    #[test]
    fn damaged_records_are_errors_that_say_what() {
        let bytes = encode_event(&sample());
        for cut in 1..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(err.contains("routed event"), "{cut}: {err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().contains("after its end"));
        let mut newer = bytes.clone();
        newer[1] = 3;
        assert!(decode(&newer).unwrap_err().contains("format version 3"));
        let from = encode_event_from(&sample(), &origin());
        for cut in 1..from.len() {
            let err = decode(&from[..cut]).unwrap_err();
            assert!(err.contains("routed event"), "{cut}: {err}");
        }
        // kind sits after magic, version and the two length-prefixed ids
        let mut kind = bytes.clone();
        kind[2 + 4 + "u-1001".len() + 4 + "doc-m-2".len()] = 9;
        assert!(decode(&kind).unwrap_err().contains("kind 9"));
        assert!(decode(b"").is_err());
        assert!(decode(b"\xe1").is_err());
    }

    fn opt() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".{0,12}")
    }

    proptest! {
        #[test]
        fn any_event_round_trips(
            customer_id in ".{0,20}",
            event_id in ".{0,20}",
            kind in 0u8..5,
            (event, anonymous_id, user_id, previous_id, channel) in (opt(), opt(), opt(), opt(), opt()),
            event_time_ms in any::<i64>(),
            version in any::<u64>(),
            reattributed in any::<bool>(),
            props in proptest::collection::btree_map(".{0,8}", prop_oneof![
                any::<i64>().prop_map(|n| json!(n)),
                any::<bool>().prop_map(|b| json!(b)),
                ".{0,10}".prop_map(|s| json!(s)),
                Just(Value::Null),
            ], 0..4),
        ) {
            let mut e = sample();
            (e.customer_id, e.version, e.reattributed) = (customer_id, version, reattributed);
            let ev = Arc::make_mut(&mut e.event);
            (ev.event_id, ev.kind, ev.event_time_ms) = (event_id, MessageType::ALL[kind as usize], event_time_ms);
            (ev.event, ev.anonymous_id, ev.user_id, ev.previous_id, ev.channel) =
                (event, anonymous_id, user_id, previous_id, channel);
            ev.properties = Properties::from_map(props.into_iter().collect());
            prop_assert_eq!(decode(&encode_event(&e)).unwrap(), Routed::Event(e));
        }

        #[test]
        fn arbitrary_bytes_after_the_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = vec![EVENT_MAGIC];
            bytes.extend(tail);
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn values_written_in_place_equal_values_written_alone() {
        let watermark = Routed::Watermark {
            source_partition: 3,
            watermark_ms: 17,
        };
        let values = [
            Routed::EventFrom(sample(), origin()),
            Routed::Event(sample()),
            watermark,
        ];
        let mut in_place = Pack::default();
        let mut copied = Pack::default();
        for v in &values {
            in_place.push_with(|buf| encode_into(v, buf));
            copied.push(&encode(v));
        }
        let (a, b) = (in_place.finish(), copied.finish());
        assert_eq!(a, b);
        let back: Vec<Routed> = unpack(&a)
            .expect("a pack")
            .values
            .iter()
            .map(|v| decode(v).expect("decodes"))
            .collect();
        assert_eq!(back, values);
    }

    #[test]
    fn the_last_value_comes_back_out_whole() {
        let mut pack = Pack::default();
        assert_eq!(pack.pop(), None);
        pack.push(b"first");
        let before = pack.len();
        pack.push_with(|buf| buf.extend_from_slice(b"second"));
        assert_eq!(pack.pop().as_deref(), Some(&b"second"[..]));
        assert_eq!((pack.len(), pack.entries()), (before, 1));
        assert_eq!(pack.pop(), None, "only the last value can be taken back");
        assert_eq!(unpack(&pack.finish()).expect("a pack").values, [b"first"]);
    }

    #[test]
    fn a_pack_gives_back_its_entries_and_a_broken_one_is_an_error() {
        let a = encode(&Routed::Watermark {
            source_partition: 1,
            watermark_ms: 5,
        });
        let mut pack = Pack::default();
        assert!(pack.is_empty());
        pack.push(&a);
        pack.push(b"");
        pack.push(&a);
        let bytes = pack.finish();
        assert_eq!(values_in(&bytes), 3);
        assert_eq!(values_in(&a), 1);
        let whole = unpack(&bytes).expect("a pack");
        assert_eq!(whole.values, [&a[..], b"", &a[..]]);
        assert_eq!(whole.broken, None);
        assert!(unpack(&a).is_none(), "a single value is not a pack");
        // Cut inside the third entry: the first two are kept, the rest is broken.
        let cut = unpack(&bytes[..bytes.len() - 1]).expect("a pack");
        assert_eq!(cut.values, [&a[..], b""]);
        let (why, rest) = cut.broken.expect("broken");
        assert!(why.contains("entry 2 of 3"), "{why}");
        assert_eq!(rest.len(), 4 + a.len() - 1);
        let short = unpack(&bytes[..3]).expect("a pack");
        assert!(short.values.is_empty() && short.broken.is_some());
        let mut longer = bytes.clone();
        longer.push(7);
        let extra = unpack(&longer).expect("a pack");
        assert_eq!(extra.values.len(), 3);
        assert_eq!(extra.broken.map(|(_, rest)| rest), Some(&[7u8][..]));
    }

    #[test]
    fn partitions_follow_crc32_of_the_key() {
        // CRC-32 (ISO-HDLC) of "123456789" is 0xCBF43926.
        assert_eq!(
            partition_for("123456789", 1000),
            i32::try_from(0xCBF4_3926_u32 % 1000).unwrap()
        );
        assert!((0..6).contains(&partition_for("u-1", 6)));
    }
}
