//! The `serde_json::Value` implementation of [`crate::message::to_touchpoint`], as the
//! collector ran it before the DOM-free path: parse the message into a `Value` tree, read
//! fields from it, serialise the JSON parts back to text.
//!
//! It stays for two reasons: it is the reference the fast path is tested against (a
//! proptest compares both on arbitrary messages), and the fast path hands it every message
//! it declines (invalid JSON, a non-object, serde_json's raw-value token), so that those
//! answers — serde_json's error text included — are exactly what they always were.

use serde_json::{Map, Value};
use touchstream_core::{is_placeholder_id, Channel, MessageType, Touchpoint};

use crate::message::{
    event_time_ms, parse_timestamp, reject, RejectReason, Rejection, RequestMeta, KNOWN_FIELDS,
    MESSAGE_ID_NAMESPACE,
};

/// An id field: a string, or a number (some SDKs send numeric user ids) as its text.
fn id_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Rejection> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(reject(
            RejectReason::InvalidField,
            format!("{key} must be a string"),
        )),
    }
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Rejection> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(reject(
            RejectReason::InvalidField,
            format!("{key} must be a string"),
        )),
    }
}

fn object_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, Rejection> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(reject(
            RejectReason::InvalidField,
            format!("{key} must be an object"),
        )),
    }
}

fn timestamp_field(obj: &Map<String, Value>, key: &str) -> Result<Option<i64>, Rejection> {
    match string_field(obj, key) {
        Ok(None) => Ok(None),
        Ok(Some(s)) => parse_timestamp(&s).map(Some).ok_or_else(|| {
            reject(
                RejectReason::InvalidTimestamp,
                format!("{key} {s:?} is not an ISO-8601 timestamp"),
            )
        }),
        Err(_) => Err(reject(
            RejectReason::InvalidTimestamp,
            format!("{key} must be an ISO-8601 string"),
        )),
    }
}

/// Map Segment's `channel` values (browser, mobile, server) and our own names to a
/// channel; anything else falls back to the source's default.
fn channel_of(obj: &Map<String, Value>, context: &Map<String, Value>, default: Channel) -> Channel {
    let named = obj
        .get("channel")
        .or_else(|| context.get("channel"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match named {
        "browser" => Channel::Web,
        "mobile" => Channel::App,
        other => other.parse().unwrap_or(default),
    }
}

/// Validate one message and build its touchpoint, through a `Value` tree.
pub(crate) fn to_touchpoint(
    raw: &str,
    implied: Option<MessageType>,
    meta: &RequestMeta<'_>,
) -> Result<Touchpoint, Rejection> {
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| reject(RejectReason::Malformed, format!("invalid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(reject(
            RejectReason::Malformed,
            "a message must be a JSON object",
        ));
    };
    let message_type = match implied {
        Some(t) => t,
        None => match obj.get("type").and_then(Value::as_str) {
            Some(t) => t.parse().map_err(|_| {
                reject(
                    RejectReason::UnknownType,
                    format!("type {t:?} is not one of track, page, screen, identify, alias"),
                )
            })?,
            None => return Err(reject(RejectReason::UnknownType, "type is missing")),
        },
    };

    let anonymous_id = id_field(&obj, "anonymousId")?;
    let user_id = id_field(&obj, "userId")?;
    let previous_id = id_field(&obj, "previousId")?;
    for (name, id) in [
        ("anonymousId", &anonymous_id),
        ("userId", &user_id),
        ("previousId", &previous_id),
    ] {
        if let Some(id) = id {
            if is_placeholder_id(id) {
                return Err(reject(
                    RejectReason::PlaceholderId,
                    format!("{name} {id:?} is a placeholder, not an identity"),
                ));
            }
        }
    }
    if message_type == MessageType::Alias {
        if previous_id.is_none() || user_id.is_none() {
            return Err(reject(
                RejectReason::MissingAliasIds,
                "alias needs previousId and userId",
            ));
        }
    } else if anonymous_id.is_none() && user_id.is_none() {
        return Err(reject(
            RejectReason::MissingIdentity,
            "a message needs anonymousId or userId",
        ));
    }

    let event = match message_type {
        MessageType::Track => match string_field(&obj, "event")? {
            Some(e) if !e.trim().is_empty() => Some(e),
            _ => {
                return Err(reject(
                    RejectReason::MissingEvent,
                    "track needs a non-empty event",
                ))
            }
        },
        MessageType::Page | MessageType::Screen => string_field(&obj, "name")?,
        MessageType::Identify | MessageType::Alias => None,
    };

    let timestamp_ms = match timestamp_field(&obj, "timestamp")? {
        Some(t) => Some(t),
        None => timestamp_field(&obj, "originalTimestamp")?,
    };
    let sent_at_ms = timestamp_field(&obj, "sentAt")?.or(meta.batch_sent_at_ms);

    let properties = object_field(&obj, "properties")?;
    let traits = object_field(&obj, "traits")?;
    let mut context = meta
        .batch_context
        .map(|b| b.map().clone())
        .unwrap_or_default();
    if let Some(own) = object_field(&obj, "context")? {
        context.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let channel = channel_of(&obj, &context, meta.default_channel);
    let user_agent = context
        .get("userAgent")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| meta.user_agent.clone());

    let event_id = match id_field(&obj, "messageId")? {
        Some(id) if !id.trim().is_empty() => id,
        // Deterministic, so a client retrying the same body yields the same id and the
        // duplicate collapses downstream.
        _ => {
            let mut seed = Vec::with_capacity(meta.source.len() + raw.len() + 1);
            seed.extend_from_slice(meta.source.as_bytes());
            seed.push(0);
            seed.extend_from_slice(raw.as_bytes());
            uuid::Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &seed).to_string()
        }
    };

    // Everything else the client sent is kept, except the secret write key.
    let extra: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !KNOWN_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let json = |m: Option<&Map<String, Value>>| {
        m.map_or_else(
            || "{}".to_string(),
            |m| Value::Object(m.clone()).to_string(),
        )
    };
    Ok(Touchpoint {
        event_id,
        message_type,
        event,
        anonymous_id,
        user_id,
        previous_id,
        event_time_ms: event_time_ms(meta.received_at_ms, timestamp_ms, sent_at_ms),
        timestamp_ms,
        sent_at_ms,
        received_at_ms: meta.received_at_ms,
        source: meta.source.to_string(),
        channel: channel.as_str().to_string(),
        properties: json(properties),
        traits: json(traits),
        context: Value::Object(context).to_string(),
        ip: meta.ip.clone(),
        user_agent,
        extra: Value::Object(extra).to_string(),
    })
}
