//! The writer: touchpoints to single-object Avro, by hand for the one schema (the
//! collector's per-message hot path; see [`encode`]).

use super::{fingerprint, CodecError, HEADER_LEN, MAX_VARINT_LEN, SINGLE_OBJECT_MAGIC};
use crate::event::{MessageType, Touchpoint};

/// Avro `long`/`int`: zigzag, then little-endian base-128 varint.
#[inline]
fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Avro `string`: byte length as a `long`, then the UTF-8 bytes.
#[inline]
fn put_str(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// `["null", "string"]`: branch index 0 alone, or 1 and the string.
#[inline]
fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(2); // zigzag(1)
            put_str(out, s);
        }
    }
}

/// `["null", timestamp-millis]`: branch index 0 alone, or 1 and the `long`.
#[inline]
fn put_opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(n) => {
            out.push(2); // zigzag(1)
            put_long(out, n);
        }
    }
}

/// A touchpoint's fields, borrowed: what [`encode_ref`] writes. Lets a producer encode
/// without first copying every string into an owned [`Touchpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TouchpointRef<'a> {
    /// See [`Touchpoint::event_id`].
    pub event_id: &'a str,
    /// See [`Touchpoint::message_type`].
    pub message_type: MessageType,
    /// See [`Touchpoint::event`].
    pub event: Option<&'a str>,
    /// See [`Touchpoint::anonymous_id`].
    pub anonymous_id: Option<&'a str>,
    /// See [`Touchpoint::user_id`].
    pub user_id: Option<&'a str>,
    /// See [`Touchpoint::previous_id`].
    pub previous_id: Option<&'a str>,
    /// See [`Touchpoint::event_time_ms`].
    pub event_time_ms: i64,
    /// See [`Touchpoint::timestamp_ms`].
    pub timestamp_ms: Option<i64>,
    /// See [`Touchpoint::sent_at_ms`].
    pub sent_at_ms: Option<i64>,
    /// See [`Touchpoint::received_at_ms`].
    pub received_at_ms: i64,
    /// See [`Touchpoint::source`].
    pub source: &'a str,
    /// See [`Touchpoint::channel`].
    pub channel: &'a str,
    /// See [`Touchpoint::properties`].
    pub properties: &'a str,
    /// See [`Touchpoint::traits`].
    pub traits: &'a str,
    /// See [`Touchpoint::context`].
    pub context: &'a str,
    /// See [`Touchpoint::ip`].
    pub ip: Option<&'a str>,
    /// See [`Touchpoint::user_agent`].
    pub user_agent: Option<&'a str>,
    /// See [`Touchpoint::extra`].
    pub extra: &'a str,
}

impl<'a> From<&'a Touchpoint> for TouchpointRef<'a> {
    fn from(tp: &'a Touchpoint) -> Self {
        TouchpointRef {
            event_id: &tp.event_id,
            message_type: tp.message_type,
            event: tp.event.as_deref(),
            anonymous_id: tp.anonymous_id.as_deref(),
            user_id: tp.user_id.as_deref(),
            previous_id: tp.previous_id.as_deref(),
            event_time_ms: tp.event_time_ms,
            timestamp_ms: tp.timestamp_ms,
            sent_at_ms: tp.sent_at_ms,
            received_at_ms: tp.received_at_ms,
            source: &tp.source,
            channel: &tp.channel,
            properties: &tp.properties,
            traits: &tp.traits,
            context: &tp.context,
            ip: tp.ip.as_deref(),
            user_agent: tp.user_agent.as_deref(),
            extra: &tp.extra,
        }
    }
}

impl TouchpointRef<'_> {
    /// An owned copy.
    pub fn to_touchpoint(&self) -> Touchpoint {
        let own = |s: Option<&str>| s.map(str::to_owned);
        Touchpoint {
            event_id: self.event_id.to_owned(),
            message_type: self.message_type,
            event: own(self.event),
            anonymous_id: own(self.anonymous_id),
            user_id: own(self.user_id),
            previous_id: own(self.previous_id),
            event_time_ms: self.event_time_ms,
            timestamp_ms: self.timestamp_ms,
            sent_at_ms: self.sent_at_ms,
            received_at_ms: self.received_at_ms,
            source: self.source.to_owned(),
            channel: self.channel.to_owned(),
            properties: self.properties.to_owned(),
            traits: self.traits.to_owned(),
            context: self.context.to_owned(),
            ip: own(self.ip),
            user_agent: own(self.user_agent),
            extra: self.extra.to_owned(),
        }
    }

    /// The Kafka key, as [`Touchpoint::identity_key`].
    pub fn identity_key(&self) -> &str {
        self.anonymous_id.or(self.user_id).unwrap_or("")
    }
}

/// Encode a touchpoint as a single-object Avro value.
///
/// Written by hand for the one schema we have (`schemas/touchpoint.avsc`, pinned by the
/// fingerprint): the fields in schema order, straight into one buffer that already holds
/// the header. apache-avro's generic `Value` writer cost ~3 µs a record (a field-name
/// `HashMap` per record, a validation walk, a `Value` tree of cloned strings); this is the
/// per-message hot path of the collector. A test proves the bytes equal apache-avro's for
/// arbitrary touchpoints. Never fails; the `Result` keeps the codec's signature.
pub fn encode(tp: &Touchpoint) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_ref(&TouchpointRef::from(tp), &mut out);
    Ok(out)
}

/// [`encode`] from borrowed fields, appending the value to `out` (which may already hold
/// other values: the collector writes a request's records into one buffer).
pub fn encode_ref(tp: &TouchpointRef<'_>, out: &mut Vec<u8>) {
    let opt_len = |s: Option<&str>| s.map_or(0, str::len);
    // Upper bound: every string's bytes plus a varint per length, long and union index,
    // so the buffer never grows while writing.
    let strings = tp.event_id.len()
        + opt_len(tp.event)
        + opt_len(tp.anonymous_id)
        + opt_len(tp.user_id)
        + opt_len(tp.previous_id)
        + tp.source.len()
        + tp.channel.len()
        + tp.properties.len()
        + tp.traits.len()
        + tp.context.len()
        + opt_len(tp.ip)
        + opt_len(tp.user_agent)
        + tp.extra.len();
    out.reserve(HEADER_LEN + strings + 26 * MAX_VARINT_LEN);
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&fingerprint().to_le_bytes());
    put_str(out, tp.event_id);
    put_long(out, i64::from(tp.message_type.avro_index()));
    put_opt_str(out, tp.event);
    put_opt_str(out, tp.anonymous_id);
    put_opt_str(out, tp.user_id);
    put_opt_str(out, tp.previous_id);
    put_long(out, tp.event_time_ms);
    put_opt_long(out, tp.timestamp_ms);
    put_opt_long(out, tp.sent_at_ms);
    put_long(out, tp.received_at_ms);
    put_str(out, tp.source);
    put_str(out, tp.channel);
    put_str(out, tp.properties);
    put_str(out, tp.traits);
    put_str(out, tp.context);
    put_opt_str(out, tp.ip);
    put_opt_str(out, tp.user_agent);
    put_str(out, tp.extra);
}
