//! Avro codec for `touchpoints.raw` values.
//!
//! Framing is Avro **single-object encoding** (Avro spec 1.12, "Single object encoding"):
//! two marker bytes `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the
//! schema's Parsing Canonical Form, then the Avro binary datum. We chose it over
//! Confluent's registry framing because it needs no schema registry: any stock Avro library
//! (fastavro, avro-java, apache-avro) decodes a value with `schemas/touchpoint.avsc` alone,
//! and the fingerprint lets a consumer refuse bytes written with a schema it does not know.
//! The schema file is embedded at build time, so the binary and the repository can't drift.
//!
//! Encoding (the collector's per-message path) is written by hand for this one schema and
//! proven byte-identical to apache-avro's generic writer by a proptest; decoding (the
//! processor's) uses apache-avro's generic reader, which also checks the datum's shape.

use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::Schema;

use crate::event::{MessageType, Touchpoint};

/// The schema text, the single source of truth for the wire format.
pub const TOUCHPOINT_SCHEMA_JSON: &str = include_str!("../../../schemas/touchpoint.avsc");

/// Marker that opens every single-object-encoded value.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// Length of the single-object header (magic + fingerprint).
pub const HEADER_LEN: usize = 10;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Too short or missing the `C3 01` marker: not single-object Avro.
    #[error("not a single-object Avro value (missing C3 01 header)")]
    NotSingleObject,
    /// Written with a schema whose fingerprint we do not know.
    #[error("unknown schema fingerprint {0:016x}")]
    UnknownFingerprint(u64),
    /// The datum does not match the schema.
    #[error("avro: {0}")]
    Avro(String),
    /// The datum decoded but a field had an unexpected shape.
    #[error("field {field}: {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

struct Codec {
    schema: &'static Schema,
    fingerprint: u64,
    reader: GenericDatumReader<'static>,
}

fn codec() -> &'static Codec {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| {
        // The schema is embedded and covered by tests: failing here is a build defect, not
        // a runtime condition, so these are proven invariants.
        #[allow(clippy::expect_used)]
        let schema = SCHEMA.get_or_init(|| {
            Schema::parse_str(TOUCHPOINT_SCHEMA_JSON).expect("embedded touchpoint.avsc parses")
        });
        #[allow(clippy::expect_used)]
        let json: serde_json::Value =
            serde_json::from_str(TOUCHPOINT_SCHEMA_JSON).expect("embedded touchpoint.avsc is JSON");
        #[allow(clippy::expect_used)]
        Codec {
            fingerprint: crc64_avro(parsing_canonical_form(&json, None).as_bytes()),
            schema,
            reader: GenericDatumReader::builder(schema)
                .build()
                .expect("reader for embedded schema"),
        }
    })
}

/// The parsed touchpoint schema.
pub fn schema() -> &'static Schema {
    codec().schema
}

/// CRC-64-AVRO fingerprint of the schema, as carried (little-endian) in each value's header.
pub fn fingerprint() -> u64 {
    codec().fingerprint
}

/// CRC-64-AVRO (Rabin) fingerprint, exactly as the Avro specification's reference code.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: OnceLock<[u64; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1));
            }
            *slot = fp;
        }
        t
    });
    bytes.iter().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize]
    })
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The schema's Parsing Canonical Form (Avro spec: PRIMITIVES, FULLNAMES, STRIP, ORDER,
/// STRINGS, WHITESPACE). Written here because apache-avro 0.22 keeps
/// `{"type":"long"}` for logical-type fields instead of reducing it to `"long"`, which gives
/// a fingerprint no other Avro library agrees with.
pub fn parsing_canonical_form(schema: &serde_json::Value, namespace: Option<&str>) -> String {
    use serde_json::Value as J;
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let fullname = |name: &str, ns: Option<&str>| match (name.contains('.'), ns) {
        (false, Some(ns)) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    };
    match schema {
        J::String(s) if PRIMITIVES.contains(&s.as_str()) => quote(s),
        J::String(s) => quote(&fullname(s, namespace)),
        J::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| parsing_canonical_form(i, namespace))
                .collect::<Vec<_>>()
                .join(",")
        ),
        J::Object(m) => {
            let ty = m.get("type");
            match ty.and_then(J::as_str) {
                Some(t) if PRIMITIVES.contains(&t) => quote(t),
                Some(t @ ("record" | "error" | "enum" | "fixed")) => {
                    let own_ns = m.get("namespace").and_then(J::as_str).or(namespace);
                    let name = fullname(
                        m.get("name").and_then(J::as_str).unwrap_or_default(),
                        own_ns,
                    );
                    let inner_ns = name.rsplit_once('.').map(|(ns, _)| ns.to_string());
                    let mut out = format!("{{\"name\":{},\"type\":{}", quote(&name), quote(t));
                    match t {
                        "enum" => {
                            let symbols = m.get("symbols").cloned().unwrap_or(J::Array(Vec::new()));
                            out.push_str(&format!(",\"symbols\":{symbols}"));
                        }
                        "fixed" => {
                            let size = m.get("size").cloned().unwrap_or(J::Null);
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            let fields: Vec<String> = m
                                .get("fields")
                                .and_then(J::as_array)
                                .map(|fs| {
                                    fs.iter()
                                        .map(|f| {
                                            format!(
                                                "{{\"name\":{},\"type\":{}}}",
                                                quote(
                                                    f.get("name")
                                                        .and_then(J::as_str)
                                                        .unwrap_or_default()
                                                ),
                                                parsing_canonical_form(
                                                    f.get("type").unwrap_or(&J::Null),
                                                    inner_ns.as_deref()
                                                )
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            out.push_str(&format!(",\"fields\":[{}]", fields.join(",")));
                        }
                    }
                    out.push('}');
                    out
                }
                Some("array") => format!(
                    "{{\"type\":\"array\",\"items\":{}}}",
                    parsing_canonical_form(m.get("items").unwrap_or(&J::Null), namespace)
                ),
                Some("map") => format!(
                    "{{\"type\":\"map\",\"values\":{}}}",
                    parsing_canonical_form(m.get("values").unwrap_or(&J::Null), namespace)
                ),
                Some(named) => quote(&fullname(named, namespace)),
                None => parsing_canonical_form(ty.unwrap_or(&J::Null), namespace),
            }
        }
        other => other.to_string(),
    }
}

/// Bytes a zigzag varint of any `long` can take.
const MAX_VARINT_LEN: usize = 10;

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

/// Decode a single-object Avro value written by [`encode`] (or any Avro writer using the
/// same schema).
///
/// Hand-written, like [`encode_ref`]: the fingerprint pins the schema, so the fields come
/// in one known order and each is read straight into the [`Touchpoint`], without
/// apache-avro's intermediate `Value` tree (the processor decodes every raw record). It
/// accepts exactly what apache-avro's generic reader accepts, with the same values (a
/// proptest in this module compares the two, on valid and on damaged input).
pub fn decode(bytes: &[u8]) -> Result<Touchpoint, CodecError> {
    let mut r = Reader(check_header(bytes)?);
    let tp = Touchpoint {
        event_id: r.string("event_id")?,
        message_type: {
            let i = r.long("type")?;
            usize::try_from(i)
                .ok()
                .and_then(|i| MessageType::ALL.get(i).copied())
                .ok_or_else(|| CodecError::Avro(format!("type: enum index {i} out of range")))?
        },
        event: r.opt("event", Reader::string)?,
        anonymous_id: r.opt("anonymous_id", Reader::string)?,
        user_id: r.opt("user_id", Reader::string)?,
        previous_id: r.opt("previous_id", Reader::string)?,
        event_time_ms: r.long("event_time")?,
        timestamp_ms: r.opt("timestamp", Reader::long)?,
        sent_at_ms: r.opt("sent_at", Reader::long)?,
        received_at_ms: r.long("received_at")?,
        source: r.string("source")?,
        channel: r.string("channel")?,
        properties: r.string("properties")?,
        traits: r.string("traits")?,
        context: r.string("context")?,
        ip: r.opt("ip", Reader::string)?,
        user_agent: r.opt("user_agent", Reader::string)?,
        extra: r.string("extra")?,
    };
    if !r.0.is_empty() {
        return Err(CodecError::Avro(format!(
            "{} trailing bytes after the datum",
            r.0.len()
        )));
    }
    Ok(tp)
}

/// The datum after a valid single-object header with our schema's fingerprint.
fn check_header(bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(CodecError::NotSingleObject);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    let fp = u64::from_le_bytes(fp);
    if fp != codec().fingerprint {
        return Err(CodecError::UnknownFingerprint(fp));
    }
    Ok(&bytes[HEADER_LEN..])
}

/// Reads Avro primitives off the front of a datum.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    /// `long`/`int`: base-128 varint of at most [`MAX_VARINT_LEN`] bytes, then zigzag.
    fn long(&mut self, field: &'static str) -> Result<i64, CodecError> {
        let mut z: u64 = 0;
        for (i, &b) in self.0.iter().enumerate().take(MAX_VARINT_LEN) {
            z |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(CodecError::Avro(if self.0.len() < MAX_VARINT_LEN {
            format!("{field}: datum ends inside a number")
        } else {
            format!("{field}: number longer than {MAX_VARINT_LEN} bytes")
        }))
    }

    /// `string`: a `long` byte length, then that many bytes of UTF-8.
    fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        let len = self.long(field)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.0.len())
            .ok_or_else(|| {
                CodecError::Avro(format!(
                    "{field}: string length {len} with {} bytes left",
                    self.0.len()
                ))
            })?;
        let (text, rest) = self.0.split_at(len);
        let text = std::str::from_utf8(text)
            .map_err(|e| CodecError::Avro(format!("{field}: {e}")))?
            .to_owned();
        self.0 = rest;
        Ok(text)
    }

    /// `["null", T]`: branch 0 is null, branch 1 is a `T`.
    fn opt<T>(
        &mut self,
        field: &'static str,
        read: fn(&mut Self, &'static str) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        match self.long(field)? {
            0 => Ok(None),
            1 => read(self, field).map(Some),
            i => Err(CodecError::Avro(format!(
                "{field}: union branch {i} out of range"
            ))),
        }
    }
}

/// [`decode`] through apache-avro's generic reader: the reference the hand-written
/// decoder is tested against.
pub fn decode_generic(bytes: &[u8]) -> Result<Touchpoint, CodecError> {
    let c = codec();
    let mut body = check_header(bytes)?;
    let value = c
        .reader
        .read_value(&mut body)
        .map_err(|e| CodecError::Avro(e.to_string()))?;
    if !body.is_empty() {
        return Err(CodecError::Avro(format!(
            "{} trailing bytes after the datum",
            body.len()
        )));
    }
    from_value(value)
}

fn field_err(field: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError::Field {
        field,
        reason: reason.into(),
    }
}

fn take_string(field: &'static str, v: Value) -> Result<String, CodecError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(field_err(field, format!("expected string, got {other:?}"))),
    }
}

fn take_ts(field: &'static str, v: Value) -> Result<i64, CodecError> {
    match v {
        Value::TimestampMillis(ms) | Value::Long(ms) => Ok(ms),
        other => Err(field_err(
            field,
            format!("expected timestamp-millis, got {other:?}"),
        )),
    }
}

fn take_opt<T>(
    field: &'static str,
    v: Value,
    inner: fn(&'static str, Value) -> Result<T, CodecError>,
) -> Result<Option<T>, CodecError> {
    match v {
        Value::Union(_, b) => match *b {
            Value::Null => Ok(None),
            other => inner(field, other).map(Some),
        },
        Value::Null => Ok(None),
        other => inner(field, other).map(Some),
    }
}

fn from_value(value: Value) -> Result<Touchpoint, CodecError> {
    let Value::Record(fields) = value else {
        return Err(field_err("<record>", "expected a record"));
    };
    let mut tp = Touchpoint {
        event_id: String::new(),
        message_type: MessageType::Track,
        event: None,
        anonymous_id: None,
        user_id: None,
        previous_id: None,
        event_time_ms: 0,
        timestamp_ms: None,
        sent_at_ms: None,
        received_at_ms: 0,
        source: String::new(),
        channel: String::new(),
        properties: String::new(),
        traits: String::new(),
        context: String::new(),
        ip: None,
        user_agent: None,
        extra: String::new(),
    };
    for (name, v) in fields {
        match name.as_str() {
            "event_id" => tp.event_id = take_string("event_id", v)?,
            "type" => {
                tp.message_type = match v {
                    Value::Enum(_, sym) => sym.parse().map_err(|e: String| field_err("type", e))?,
                    other => {
                        return Err(field_err("type", format!("expected enum, got {other:?}")))
                    }
                }
            }
            "event" => tp.event = take_opt("event", v, take_string)?,
            "anonymous_id" => tp.anonymous_id = take_opt("anonymous_id", v, take_string)?,
            "user_id" => tp.user_id = take_opt("user_id", v, take_string)?,
            "previous_id" => tp.previous_id = take_opt("previous_id", v, take_string)?,
            "event_time" => tp.event_time_ms = take_ts("event_time", v)?,
            "timestamp" => tp.timestamp_ms = take_opt("timestamp", v, take_ts)?,
            "sent_at" => tp.sent_at_ms = take_opt("sent_at", v, take_ts)?,
            "received_at" => tp.received_at_ms = take_ts("received_at", v)?,
            "source" => tp.source = take_string("source", v)?,
            "channel" => tp.channel = take_string("channel", v)?,
            "properties" => tp.properties = take_string("properties", v)?,
            "traits" => tp.traits = take_string("traits", v)?,
            "context" => tp.context = take_string("context", v)?,
            "ip" => tp.ip = take_opt("ip", v, take_string)?,
            "user_agent" => tp.user_agent = take_opt("user_agent", v, take_string)?,
            "extra" => tp.extra = take_string("extra", v)?,
            // A newer schema may add fields; the fingerprint check above already pins the
            // schema, so this only happens if the embedded schema grows without this match.
            _ => {}
        }
    }
    Ok(tp)
}

#[cfg(test)]
mod tests {

    use super::*;

    /// Every field set to a distinctive value, so a swapped or dropped field shows.
    pub(crate) fn full() -> Touchpoint {
        Touchpoint {
            event_id: "msg-1".into(),
            message_type: MessageType::Alias,
            event: Some("Order Completed".into()),
            anonymous_id: Some("anon-ä-1".into()),
            user_id: Some("user-42".into()),
            previous_id: Some("anon-0".into()),
            event_time_ms: 1_700_000_000_123,
            timestamp_ms: Some(1_700_000_000_100),
            sent_at_ms: Some(1_700_000_000_200),
            received_at_ms: 1_700_000_000_300,
            source: "web".into(),
            channel: "call_center".into(),
            properties: r#"{"revenue":12.5}"#.into(),
            traits: r#"{"plan":"pro"}"#.into(),
            context: r#"{"locale":"de-DE"}"#.into(),
            ip: Some("203.0.113.7".into()),
            user_agent: Some("Mozilla/5.0".into()),
            extra: r#"{"integrations":{"All":true}}"#.into(),
        }
    }

    #[test]
    fn round_trips_every_field() {
        let tp = full();
        let bytes = encode(&tp).unwrap();
        assert_eq!(&bytes[..2], &SINGLE_OBJECT_MAGIC);
        assert_eq!(decode(&bytes).unwrap(), tp);
    }

    #[test]
    fn round_trips_all_optionals_absent_and_every_type() {
        for t in MessageType::ALL {
            let tp = Touchpoint {
                message_type: t,
                event: None,
                anonymous_id: None,
                user_id: Some("u".into()),
                previous_id: None,
                timestamp_ms: None,
                sent_at_ms: None,
                ip: None,
                user_agent: None,
                event_time_ms: -5,
                ..full()
            };
            assert_eq!(decode(&encode(&tp).unwrap()).unwrap(), tp);
        }
    }

    #[test]
    fn rejects_foreign_bytes() {
        assert!(matches!(decode(b"{}"), Err(CodecError::NotSingleObject)));
        let mut bytes = encode(&full()).unwrap();
        bytes[2] ^= 0xff;
        assert!(matches!(
            decode(&bytes),
            Err(CodecError::UnknownFingerprint(_))
        ));
        // A valid header over a body that is not a Touchpoint datum (string length -1).
        let mut garbage = encode(&full()).unwrap()[..HEADER_LEN].to_vec();
        garbage.extend_from_slice(&[0x01, 0xff, 0xff]);
        let res = decode(&garbage);
        assert!(res.is_err(), "{res:?}");
    }

    #[test]
    fn crc64_avro_matches_the_spec_vector() {
        // Avro spec / fastavro: fingerprint of "int" is 0x7275d51a3f395c8f.
        assert_eq!(crc64_avro(br#""int""#), 0x7275_d51a_3f39_5c8f);
    }

    #[test]
    fn canonical_form_reduces_logical_types_and_qualifies_names() {
        let json: serde_json::Value = serde_json::from_str(TOUCHPOINT_SCHEMA_JSON).unwrap();
        let pcf = parsing_canonical_form(&json, None);
        assert!(pcf.starts_with(r#"{"name":"io.touchstream.Touchpoint","type":"record","fields":[{"name":"event_id","type":"string"}"#), "{pcf}");
        assert!(pcf.contains(r#"{"name":"event_time","type":"long"}"#));
        assert!(pcf.contains(r#"{"name":"timestamp","type":["null","long"]}"#));
        assert!(pcf.contains(r#""type":{"name":"io.touchstream.MessageType","type":"enum","symbols":["track","page","screen","identify","alias"]}"#));
        assert!(!pcf.contains("doc") && !pcf.contains("default") && !pcf.contains(' '));
        // The value fastavro computes for schemas/touchpoint.avsc (LE bytes c254d4c5c78e604e).
        assert_eq!(
            fingerprint().to_le_bytes(),
            [0xc2, 0x54, 0xd4, 0xc5, 0xc7, 0x8e, 0x60, 0x4e]
        );
    }

    /// The generic apache-avro encoder the collector used before [`encode`] was written by
    /// hand: the reference the hand-written bytes must equal.
    fn apache_encode(tp: &Touchpoint) -> Vec<u8> {
        use apache_avro::writer::datum::GenericDatumWriter;
        let opt_string = |v: &Option<String>| match v {
            Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        let opt_ts = |v: Option<i64>| match v {
            Some(ms) => Value::Union(1, Box::new(Value::TimestampMillis(ms))),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        let record = Value::Record(vec![
            ("event_id".into(), Value::String(tp.event_id.clone())),
            (
                "type".into(),
                Value::Enum(
                    tp.message_type.avro_index(),
                    tp.message_type.as_str().into(),
                ),
            ),
            ("event".into(), opt_string(&tp.event)),
            ("anonymous_id".into(), opt_string(&tp.anonymous_id)),
            ("user_id".into(), opt_string(&tp.user_id)),
            ("previous_id".into(), opt_string(&tp.previous_id)),
            (
                "event_time".into(),
                Value::TimestampMillis(tp.event_time_ms),
            ),
            ("timestamp".into(), opt_ts(tp.timestamp_ms)),
            ("sent_at".into(), opt_ts(tp.sent_at_ms)),
            (
                "received_at".into(),
                Value::TimestampMillis(tp.received_at_ms),
            ),
            ("source".into(), Value::String(tp.source.clone())),
            ("channel".into(), Value::String(tp.channel.clone())),
            ("properties".into(), Value::String(tp.properties.clone())),
            ("traits".into(), Value::String(tp.traits.clone())),
            ("context".into(), Value::String(tp.context.clone())),
            ("ip".into(), opt_string(&tp.ip)),
            ("user_agent".into(), opt_string(&tp.user_agent)),
            ("extra".into(), Value::String(tp.extra.clone())),
        ]);
        let datum = GenericDatumWriter::builder(schema())
            .build()
            .unwrap()
            .write_value_to_vec(record)
            .unwrap();
        let mut out = SINGLE_OBJECT_MAGIC.to_vec();
        out.extend_from_slice(&fingerprint().to_le_bytes());
        out.extend_from_slice(&datum);
        out
    }

    #[test]
    fn hand_written_encoder_matches_apache_avro_on_fixed_cases() {
        let mut cases = vec![full()];
        for t in MessageType::ALL {
            cases.push(Touchpoint {
                message_type: t,
                event: None,
                anonymous_id: None,
                user_id: None,
                previous_id: None,
                timestamp_ms: None,
                sent_at_ms: None,
                ip: None,
                user_agent: None,
                event_id: String::new(),
                source: String::new(),
                properties: "x".repeat(300),
                event_time_ms: i64::MIN,
                received_at_ms: i64::MAX,
                ..full()
            });
        }
        for tp in &cases {
            assert_eq!(encode(tp).unwrap(), apache_encode(tp), "{tp:?}");
            assert_eq!(&decode(&encode(tp).unwrap()).unwrap(), tp);
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Empty, ASCII, any Unicode (controls, astral planes), and long enough for
        /// multi-byte length varints.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                "[a-z0-9 -]{1,20}",
                any::<String>(),
                "\\PC{100,400}",
            ]
        }

        fn long() -> impl Strategy<Value = i64> {
            prop_oneof![
                Just(i64::MIN),
                Just(i64::MAX),
                Just(0),
                Just(-1),
                Just(63),
                Just(64),
                Just(-64),
                Just(-65),
                any::<i64>(),
                -1_000_000_000_000_000i64..4_000_000_000_000_000,
            ]
        }

        fn touchpoint() -> impl Strategy<Value = Touchpoint> {
            let ids = (
                text(),
                proptest::sample::select(MessageType::ALL.to_vec()),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
            );
            let times = (
                long(),
                proptest::option::of(long()),
                proptest::option::of(long()),
                long(),
            );
            let rest = (
                text(),
                text(),
                text(),
                text(),
                text(),
                proptest::option::of(text()),
                proptest::option::of(text()),
                text(),
            );
            (ids, times, rest).prop_map(
                |(
                    (event_id, message_type, event, anonymous_id, user_id, previous_id),
                    (event_time_ms, timestamp_ms, sent_at_ms, received_at_ms),
                    (source, channel, properties, traits, context, ip, user_agent, extra),
                )| Touchpoint {
                    event_id,
                    message_type,
                    event,
                    anonymous_id,
                    user_id,
                    previous_id,
                    event_time_ms,
                    timestamp_ms,
                    sent_at_ms,
                    received_at_ms,
                    source,
                    channel,
                    properties,
                    traits,
                    context,
                    ip,
                    user_agent,
                    extra,
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Byte-identical to apache-avro's generic writer, and decodable back.
            #[test]
            fn encode_equals_apache_avro_and_round_trips(tp in touchpoint()) {
                let bytes = encode(&tp).unwrap();
                prop_assert_eq!(&bytes, &apache_encode(&tp));
                // Appending after other bytes writes the same value.
                let mut appended = b"prefix".to_vec();
                encode_ref(&TouchpointRef::from(&tp), &mut appended);
                prop_assert_eq!(&appended[6..], &bytes[..]);
                prop_assert_eq!(TouchpointRef::from(&tp).to_touchpoint(), tp.clone());
                prop_assert_eq!(decode(&bytes).unwrap(), tp);
            }

            /// The hand-written decoder accepts exactly what apache-avro's generic reader
            /// accepts, with the same value: on valid records and on damaged ones
            /// (truncated, a byte changed, bytes appended).
            #[test]
            fn decode_agrees_with_apache_avro_on_any_damage(
                tp in touchpoint(),
                cut in any::<proptest::sample::Index>(),
                flip in any::<proptest::sample::Index>(),
                byte in any::<u8>(),
                how in 0..4u8,
            ) {
                let mut bytes = encode(&tp).unwrap();
                match how {
                    0 => {}
                    1 => bytes.truncate(cut.index(bytes.len())),
                    2 => {
                        let i = flip.index(bytes.len() - HEADER_LEN) + HEADER_LEN;
                        bytes[i] = byte;
                    }
                    _ => bytes.push(byte),
                }
                let ours = decode(&bytes);
                let theirs = decode_generic(&bytes);
                prop_assert_eq!(ours.as_ref().ok(), theirs.as_ref().ok(), "{:?} / {:?}", ours, theirs);
            }
        }
    }

    #[test]
    fn message_types_are_listed_in_avro_index_order() {
        for (i, t) in MessageType::ALL.iter().enumerate() {
            assert_eq!(t.avro_index() as usize, i);
        }
    }

    #[test]
    fn decode_rejects_damaged_numbers_strings_and_branches() {
        let header = encode(&full()).unwrap()[..HEADER_LEN].to_vec();
        let with = |datum: &[u8]| [header.as_slice(), datum].concat();
        for (datum, why) in [
            (&[0x80u8; 11][..], "number longer than 10 bytes"),
            (&[0x80u8, 0x80][..], "datum ends inside a number"),
            (&[0x01u8][..], "string length -1"),
            (&[0x08u8, b'a'][..], "string length 4 with 1 bytes left"),
            (&[0x04u8, 0xff, 0xfe][..], "invalid utf-8"),
            (&[0x00u8, 0x0a][..], "type: enum index 5 out of range"),
            (
                &[0x00u8, 0x00, 0x04][..],
                "event: union branch 2 out of range",
            ),
        ] {
            let err = decode(&with(datum)).unwrap_err().to_string();
            assert!(err.contains(why), "{datum:?}: {err}");
            assert!(decode_generic(&with(datum)).is_err(), "{datum:?}");
        }
    }

    #[test]
    fn fingerprint_matches_header() {
        let bytes = encode(&full()).unwrap();
        assert_eq!(
            u64::from_le_bytes(bytes[2..10].try_into().unwrap()),
            fingerprint()
        );
    }
}
