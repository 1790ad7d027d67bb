//! Decoding through apache-avro's generic reader: slower than the hand-written
//! [`decode`](super::decode()), and kept as the reference it is tested against (and
//! benchmarked beside).

use apache_avro::types::Value;

use super::{check_header, codec, CodecError};
use crate::event::{MessageType, Touchpoint};

/// [`decode`](super::decode()) through apache-avro's generic reader: the reference the hand-written
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
