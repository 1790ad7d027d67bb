//! One Segment message → a validated [`Touchpoint`] or a rejection with a reason.
//!
//! Pure and synchronous so that every rule of SPEC §2 (validation, ids, time correction)
//! is unit-tested without a server. The HTTP layer hands us each message's raw JSON text
//! (so the 32 KiB limit is measured on what the client sent) plus request metadata.

use serde_json::{Map, Value};
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::OffsetDateTime;
use touchstream_core::{is_placeholder_id, Channel, MessageType, Touchpoint};

pub use touchstream_core::event::MAX_FUTURE_MS;

/// Message fields with a column of their own (and `writeKey`, a secret never stored);
/// any other top-level field goes to `extra`.
const KNOWN_FIELDS: [&str; 15] = [
    "type",
    "messageId",
    "anonymousId",
    "userId",
    "previousId",
    "event",
    "name",
    "properties",
    "traits",
    "context",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "channel",
    "writeKey",
];

/// Namespace of deterministic ids for messages without `messageId`.
const MESSAGE_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x7c1c_9a5e_0f3b_4e8e_9d51_5e7a_11d0_c0de);

/// Why a message was rejected. The label is a bounded metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Not valid JSON or not an object.
    Malformed,
    /// `type` missing or not one of track|page|screen|identify|alias.
    UnknownType,
    /// Neither `anonymousId` nor `userId`.
    MissingIdentity,
    /// An id is a placeholder (`null`, `undefined`, `0`, ...).
    PlaceholderId,
    /// `track` without `event`.
    MissingEvent,
    /// `alias` without `previousId` and `userId`.
    MissingAliasIds,
    /// A timestamp is not ISO-8601.
    InvalidTimestamp,
    /// A field has the wrong JSON type.
    InvalidField,
}

impl RejectReason {
    /// Metric label and stable machine-readable code.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingIdentity => "missing_identity",
            RejectReason::PlaceholderId => "placeholder_id",
            RejectReason::MissingEvent => "missing_event",
            RejectReason::MissingAliasIds => "missing_alias_ids",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::InvalidField => "invalid_field",
        }
    }
}

/// A rejected message: the reason code and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Code.
    pub reason: RejectReason,
    /// Explanation naming the field.
    pub detail: String,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// What the request contributes to every message in it.
#[derive(Debug, Clone)]
pub struct RequestMeta<'a> {
    /// Source name of the write key.
    pub source: &'a str,
    /// The source's default channel.
    pub default_channel: Channel,
    /// Collector clock at receipt, epoch ms.
    pub received_at_ms: i64,
    /// Client IP.
    pub ip: Option<String>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// Batch-level `sentAt`, already parsed.
    pub batch_sent_at_ms: Option<i64>,
    /// Batch-level `context`, merged under each message's own.
    pub batch_context: Option<&'a Map<String, Value>>,
}

/// Parse an ISO-8601 timestamp to epoch ms.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let dt = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(s, &Iso8601::DEFAULT))
        .ok()?;
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()
}

/// SPEC §2 time correction: skew-correct with `sentAt` when both are present, else the
/// client timestamp, else receipt time; never more than 10 minutes in the future.
pub fn event_time_ms(
    received_at_ms: i64,
    timestamp_ms: Option<i64>,
    sent_at_ms: Option<i64>,
) -> i64 {
    let t = match (timestamp_ms, sent_at_ms) {
        (Some(ts), Some(sent)) => received_at_ms.saturating_sub(sent.saturating_sub(ts)),
        (Some(ts), None) => ts,
        _ => received_at_ms,
    };
    if t > received_at_ms.saturating_add(MAX_FUTURE_MS) {
        received_at_ms
    } else {
        t
    }
}

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

/// Validate one message and build its touchpoint.
///
/// `raw` is the message's JSON text; `implied` is the type of a single-message endpoint
/// (`/v1/track` implies `track`), `None` for batch members, which must carry `type`.
pub fn to_touchpoint(
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
    let mut context = meta.batch_context.cloned().unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RECEIVED: i64 = 1_764_072_000_000; // 2025-11-25T12:00:00Z

    fn meta() -> RequestMeta<'static> {
        RequestMeta {
            source: "web",
            default_channel: Channel::Web,
            received_at_ms: RECEIVED,
            ip: Some("192.0.2.1".into()),
            user_agent: Some("ua-header".into()),
            batch_sent_at_ms: None,
            batch_context: None,
        }
    }

    fn ok(v: Value) -> Touchpoint {
        to_touchpoint(&v.to_string(), None, &meta()).unwrap()
    }

    fn err(v: Value) -> RejectReason {
        to_touchpoint(&v.to_string(), None, &meta())
            .unwrap_err()
            .reason
    }

    #[test]
    fn worked_time_examples() {
        // Client clock 1 h behind: event 2 s before sending, so 2 s before receipt.
        assert_eq!(
            event_time_ms(
                RECEIVED,
                parse_timestamp("2025-11-25T11:00:00.000Z"),
                parse_timestamp("2025-11-25T11:00:02.000Z")
            ),
            RECEIVED - 2000
        );
        // No sentAt: the timestamp as sent.
        assert_eq!(
            event_time_ms(RECEIVED, Some(RECEIVED - 5000), None),
            RECEIVED - 5000
        );
        // Nothing: receipt time.
        assert_eq!(event_time_ms(RECEIVED, None, Some(RECEIVED)), RECEIVED);
        // 10 min ahead is kept, 10 min + 1 ms is clamped.
        assert_eq!(
            event_time_ms(RECEIVED, Some(RECEIVED + MAX_FUTURE_MS), None),
            RECEIVED + MAX_FUTURE_MS
        );
        assert_eq!(
            event_time_ms(RECEIVED, Some(RECEIVED + MAX_FUTURE_MS + 1), None),
            RECEIVED
        );
        // Skew correction can also land in the future (timestamp after sentAt): clamped.
        assert_eq!(
            event_time_ms(RECEIVED, Some(RECEIVED + 3_600_000), Some(RECEIVED)),
            RECEIVED
        );
        // Offsets other than Z are honoured.
        assert_eq!(parse_timestamp("2025-11-25T13:00:00+01:00"), Some(RECEIVED));
        assert_eq!(
            parse_timestamp("2025-11-25T12:00:00.123Z"),
            Some(RECEIVED + 123)
        );
    }

    #[test]
    fn batch_sent_at_applies_when_message_has_none() {
        let m = RequestMeta {
            batch_sent_at_ms: Some(RECEIVED - 3_600_000 + 10_000),
            ..meta()
        };
        let v = json!({"type":"track","event":"E","userId":"u","timestamp":"2025-11-25T11:00:00Z"});
        let tp = to_touchpoint(&v.to_string(), None, &m).unwrap();
        assert_eq!(tp.event_time_ms, RECEIVED - 10_000);
        assert_eq!(tp.sent_at_ms, Some(RECEIVED - 3_590_000));
    }

    #[test]
    fn a_full_track_message_keeps_every_field() {
        let tp = ok(json!({
            "type": "track", "event": "Product Added", "messageId": "m-1",
            "anonymousId": "a-1", "userId": 42, "properties": {"sku": "X"},
            "context": {"userAgent": "ua-ctx", "channel": "mobile"},
            "timestamp": "2025-11-25T11:59:00Z"
        }));
        assert_eq!(tp.event_id, "m-1");
        assert_eq!(tp.user_id.as_deref(), Some("42"));
        assert_eq!(tp.event.as_deref(), Some("Product Added"));
        assert_eq!(tp.channel, "app");
        assert_eq!(tp.user_agent.as_deref(), Some("ua-ctx"));
        assert_eq!(tp.event_time_ms, RECEIVED - 60_000);
        assert_eq!(tp.properties, r#"{"sku":"X"}"#);
        assert_eq!(tp.ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(tp.identity_key(), "a-1");
        assert_eq!(tp.extra, "{}");
    }

    #[test]
    fn unknown_fields_are_kept_but_not_the_write_key() {
        let tp = ok(
            json!({"type": "page", "anonymousId": "a", "writeKey": "secret",
                           "integrations": {"All": false}, "_metadata": {"bundled": []}}),
        );
        let extra: Value = serde_json::from_str(&tp.extra).unwrap();
        assert_eq!(
            extra,
            json!({"integrations": {"All": false}, "_metadata": {"bundled": []}})
        );
    }

    #[test]
    fn page_name_and_batch_context_merge() {
        let ctx = json!({"locale": "de", "page": {"path": "/"}});
        let m = RequestMeta {
            batch_context: ctx.as_object(),
            ..meta()
        };
        let v = json!({"name": "Home", "anonymousId": "a", "context": {"locale": "fr"}});
        let tp = to_touchpoint(&v.to_string(), Some(MessageType::Page), &m).unwrap();
        assert_eq!(tp.message_type, MessageType::Page);
        assert_eq!(tp.event.as_deref(), Some("Home"));
        let c: Value = serde_json::from_str(&tp.context).unwrap();
        assert_eq!(c, json!({"locale": "fr", "page": {"path": "/"}}));
    }

    #[test]
    fn missing_message_id_is_deterministic() {
        let v = json!({"type":"identify","userId":"u","traits":{"plan":"pro"}});
        let a = ok(v.clone());
        let b = ok(v);
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(
            a.event_id,
            ok(json!({"type":"identify","userId":"u2"})).event_id
        );
    }

    #[test]
    fn rejections_name_their_reason() {
        assert_eq!(err(json!([1])), RejectReason::Malformed);
        assert_eq!(err(json!({"userId": "u"})), RejectReason::UnknownType);
        assert_eq!(
            err(json!({"type": "purchase", "userId": "u"})),
            RejectReason::UnknownType
        );
        assert_eq!(
            err(json!({"type": "track", "event": "E"})),
            RejectReason::MissingIdentity
        );
        assert_eq!(
            err(json!({"type": "track", "userId": "u"})),
            RejectReason::MissingEvent
        );
        assert_eq!(
            err(json!({"type": "track", "userId": "u", "event": " "})),
            RejectReason::MissingEvent
        );
        assert_eq!(
            err(json!({"type": "alias", "userId": "u"})),
            RejectReason::MissingAliasIds
        );
        assert_eq!(
            err(json!({"type": "alias", "previousId": "a"})),
            RejectReason::MissingAliasIds
        );
        assert_eq!(
            err(json!({"type": "page", "anonymousId": "undefined"})),
            RejectReason::PlaceholderId
        );
        assert_eq!(
            err(json!({"type": "page", "userId": "0"})),
            RejectReason::PlaceholderId
        );
        assert_eq!(
            err(json!({"type": "page", "userId": {"id": 1}})),
            RejectReason::InvalidField
        );
        assert_eq!(
            err(json!({"type": "page", "userId": "u", "properties": [1]})),
            RejectReason::InvalidField
        );
        assert_eq!(
            err(json!({"type": "page", "userId": "u", "timestamp": "yesterday"})),
            RejectReason::InvalidTimestamp
        );
        assert_eq!(
            err(json!({"type": "page", "userId": "u", "timestamp": 1700000000})),
            RejectReason::InvalidTimestamp
        );
        assert!(to_touchpoint("{not json", None, &meta()).is_err());
    }

    #[test]
    fn alias_is_valid_without_anonymous_id() {
        let tp = ok(json!({"type": "alias", "previousId": "anon-1", "userId": "u-1"}));
        assert_eq!(tp.previous_id.as_deref(), Some("anon-1"));
        assert_eq!(tp.identity_key(), "u-1");
    }

    proptest::proptest! {
        /// Arbitrary text never panics: it is either a touchpoint or a rejection.
        #[test]
        fn never_panics_on_arbitrary_text(s in ".{0,200}") {
            let _ = to_touchpoint(&s, None, &meta());
        }

        /// Arbitrary JSON-ish objects never panic either.
        #[test]
        fn never_panics_on_arbitrary_objects(
            t in proptest::option::of("(track|page|screen|identify|alias|x)"),
            a in proptest::option::of(".{0,8}"),
            u in proptest::option::of(".{0,8}"),
            ts in proptest::option::of(".{0,30}"),
            n in proptest::num::i64::ANY,
        ) {
            let v = json!({"type": t, "anonymousId": a, "userId": u, "timestamp": ts, "event": n, "properties": {"n": n}});
            let _ = to_touchpoint(&v.to_string(), None, &meta());
        }
    }
}
