//! One Segment message → a validated [`Touchpoint`] or a rejection with a reason.
//!
//! Pure and synchronous so that every rule of SPEC §2 (validation, ids, time correction)
//! is unit-tested without a server. The HTTP layer hands us each message's raw JSON text
//! (so the 32 KiB limit is measured on what the client sent) plus request metadata.
//!
//! This is the collector's per-message hot path, so the message is read in one pass
//! without a `serde_json::Value` tree: known fields are captured as borrowed strings,
//! numbers or shapes, and the free-form parts (`properties`, `traits`, `context`, the
//! unknown fields for `extra`) are written straight to their canonical text by
//! [`crate::canonical`]. The rules are then applied in the order the original `Value`
//! implementation ([`crate::message_dom`]) applied them, so the first failing rule — and
//! its detail text — is the same; a proptest compares the two on arbitrary messages.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::OffsetDateTime;
use touchstream_core::avro::TouchpointRef;
use touchstream_core::{is_placeholder_id, Channel, MessageType, Touchpoint};

use crate::canonical;
use crate::message_scan::{Field, Fields};

pub use touchstream_core::event::MAX_FUTURE_MS;

/// Message fields with a column of their own (and `writeKey`, a secret never stored);
/// any other top-level field goes to `extra`.
pub(crate) const KNOWN_FIELDS: [&str; 15] = [
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
pub(crate) const MESSAGE_ID_NAMESPACE: uuid::Uuid =
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

pub(crate) fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
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
    pub batch_context: Option<&'a BatchContext>,
}

/// A batch-level `context`, prepared once per request for merging under each message's.
#[derive(Debug, Clone)]
pub struct BatchContext {
    /// As parsed (for the `Value` path).
    map: Map<String, Value>,
    /// `(key, canonical value text)`, sorted by key (the map's order).
    entries: Vec<(String, String)>,
    /// Canonical text of the whole object.
    text: String,
    /// `channel`, when present: the channel its string names (`None`: the default).
    channel: Option<Option<Channel>>,
    /// `userAgent`, when present: its string value.
    user_agent: Option<Option<String>>,
}

impl BatchContext {
    /// Prepare a batch's `context` object.
    pub fn new(map: Map<String, Value>) -> Self {
        let entries = map
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        BatchContext {
            text: Value::Object(map.clone()).to_string(),
            channel: map
                .get("channel")
                .map(|v| v.as_str().and_then(named_channel)),
            user_agent: map.get("userAgent").map(|v| v.as_str().map(String::from)),
            entries,
            map,
        }
    }

    /// The object as parsed.
    pub fn map(&self) -> &Map<String, Value> {
        &self.map
    }
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

/// The event id of a message without `messageId`, into `out` (`seed`: working memory):
/// UUIDv5 of the source name, a NUL and the message's exact text. Deterministic, so a
/// client retrying the same body yields the same id and the duplicate collapses
/// downstream.
fn message_id_into(source: &str, raw: &str, seed: &mut Vec<u8>, out: &mut String) {
    seed.clear();
    seed.reserve(source.len() + raw.len() + 1);
    seed.extend_from_slice(source.as_bytes());
    seed.push(0);
    seed.extend_from_slice(raw.as_bytes());
    let mut text = uuid::Uuid::encode_buffer();
    out.clear();
    out.push_str(
        uuid::Uuid::new_v5(&MESSAGE_ID_NAMESPACE, seed)
            .hyphenated()
            .encode_lower(&mut text),
    );
}

/// Segment's `channel` values (browser, mobile) and our own names; `None` for anything
/// else, which means the source's default.
pub(crate) fn named_channel(s: &str) -> Option<Channel> {
    match s {
        "browser" => Some(Channel::Web),
        "mobile" => Some(Channel::App),
        other => other.parse().ok(),
    }
}

/// Validate one message and build its touchpoint.
///
/// `raw` is the message's JSON text; `implied` is the type of a single-message endpoint
/// (`/v1/track` implies `track`), `None` for batch members, which must carry `type`.
/// The collector itself uses a [`Validator`], which borrows instead of copying.
pub fn to_touchpoint(
    raw: &str,
    implied: Option<MessageType>,
    meta: &RequestMeta<'_>,
) -> Result<Touchpoint, Rejection> {
    Validator::new()
        .validate(raw, implied, meta)
        .map(|tp| tp.to_touchpoint())
}

/// Validates the messages of one request (all borrowed from one body, lifetime `'de`),
/// reusing its working buffers from one message to the next, and hands out each
/// touchpoint as a borrowed [`TouchpointRef`] ready for [`avro::encode_ref`]: no owned
/// copy of any field is made on the way from the JSON text to the Avro bytes.
///
/// [`avro::encode_ref`]: touchstream_core::avro::encode_ref
#[derive(Default)]
pub struct Validator<'de> {
    fields: Fields<'de>,
    bufs: Buffers,
    /// The touchpoint of a message the `Value` path accepted (see [`Validator::validate`]).
    fallback: Option<Touchpoint>,
}

/// Text the touchpoint of the current message borrows that is not in the message.
#[derive(Default)]
struct Buffers {
    /// A generated event id.
    event_id: String,
    /// Name bytes of a generated event id.
    seed: Vec<u8>,
    /// The message context merged over the batch context.
    context: String,
}

impl<'de> Validator<'de> {
    /// A validator with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate one message (see [`to_touchpoint`]); the touchpoint borrows from the
    /// message, `meta` and this validator until the next call.
    pub fn validate<'s>(
        &'s mut self,
        raw: &'de str,
        implied: Option<MessageType>,
        meta: &'s RequestMeta<'_>,
    ) -> Result<TouchpointRef<'s>, Rejection> {
        if self.fields.scan(raw, meta.batch_context.is_some()) {
            return build(&self.fields, &mut self.bufs, raw, implied, meta);
        }
        // Not an object as `serde_json::Value` reads one (invalid JSON, another type, or
        // its raw-value token): the `Value` path answers, with its exact rejection text.
        let tp = crate::message_dom::to_touchpoint(raw, implied, meta)?;
        Ok(TouchpointRef::from(&*self.fallback.insert(tp)))
    }
}

/// Apply the rules to a scanned message, in the order the `Value` implementation applies
/// them, and build the touchpoint.
fn build<'s>(
    f: &'s Fields<'_>,
    bufs: &'s mut Buffers,
    raw: &str,
    implied: Option<MessageType>,
    meta: &'s RequestMeta<'_>,
) -> Result<TouchpointRef<'s>, Rejection> {
    let message_type = match implied {
        Some(t) => t,
        None => match &f.message_type {
            Field::Str(t) => t.parse().map_err(|_| {
                reject(
                    RejectReason::UnknownType,
                    format!("type {t:?} is not one of track, page, screen, identify, alias"),
                )
            })?,
            _ => return Err(reject(RejectReason::UnknownType, "type is missing")),
        },
    };

    let anonymous_id = f.anonymous_id.id("anonymousId")?;
    let user_id = f.user_id.id("userId")?;
    let previous_id = f.previous_id.id("previousId")?;
    for (name, id) in [
        ("anonymousId", anonymous_id),
        ("userId", user_id),
        ("previousId", previous_id),
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
        MessageType::Track => match f.event.string("event")? {
            Some(e) if !e.trim().is_empty() => Some(e),
            _ => {
                return Err(reject(
                    RejectReason::MissingEvent,
                    "track needs a non-empty event",
                ))
            }
        },
        MessageType::Page | MessageType::Screen => f.name.string("name")?,
        MessageType::Identify | MessageType::Alias => None,
    };

    let timestamp_ms = match f.timestamp.timestamp("timestamp")? {
        Some(t) => Some(t),
        None => f.original_timestamp.timestamp("originalTimestamp")?,
    };
    let sent_at_ms = f.sent_at.timestamp("sentAt")?.or(meta.batch_sent_at_ms);

    let properties = f.properties.check("properties")?;
    let traits = f.traits.check("traits")?;
    let own_context = f.context.check("context")?;
    let message_id = match f.message_id.id("messageId")? {
        Some(id) if !id.trim().is_empty() => Some(id),
        _ => None,
    };
    // Past the last rule: the rest cannot fail.

    let batch = meta.batch_context;
    // The merged context's `channel` and `userAgent`: the message's own when its
    // context has the key (whatever the value), else the batch's.
    let (own_channel, own_user_agent) = if own_context {
        let ua = f.context_user_agent;
        let text = f.context_user_agent_text.as_str();
        (f.context_channel, ua.map(|is_str| is_str.then_some(text)))
    } else {
        (None, None)
    };
    let context_channel = own_channel.or_else(|| batch.and_then(|b| b.channel));
    // A top-level `channel` of any value (even `null`) hides the context's.
    let channel = match &f.channel {
        Field::Absent => context_channel.flatten(),
        Field::Str(s) => named_channel(s),
        Field::Null | Field::Num(_) | Field::Other => None,
    }
    .unwrap_or(meta.default_channel);
    let user_agent = match own_user_agent {
        Some(ua) => ua,
        None => batch
            .and_then(|b| b.user_agent.as_ref())
            .and_then(Option::as_deref),
    }
    .or(meta.user_agent.as_deref());

    if message_id.is_none() {
        message_id_into(meta.source, raw, &mut bufs.seed, &mut bufs.event_id);
    }
    if let (Some(b), true) = (batch, own_context) {
        merge_context(b, &f.context_entries, &mut bufs.context);
    }
    let bufs: &'s Buffers = bufs;
    let context = match (batch, own_context) {
        (None, true) => f.context_text.as_str(),
        (None, false) => "{}",
        (Some(b), false) => b.text.as_str(),
        (Some(_), true) => bufs.context.as_str(),
    };
    let object_text = |present: bool, text: &'s str| if present { text } else { "{}" };
    Ok(TouchpointRef {
        event_id: message_id.unwrap_or(&bufs.event_id),
        message_type,
        event,
        anonymous_id,
        user_id,
        previous_id,
        event_time_ms: event_time_ms(meta.received_at_ms, timestamp_ms, sent_at_ms),
        timestamp_ms,
        sent_at_ms,
        received_at_ms: meta.received_at_ms,
        source: meta.source,
        channel: channel.as_str(),
        properties: object_text(properties, &f.properties_text),
        traits: object_text(traits, &f.traits_text),
        context,
        ip: meta.ip.as_deref(),
        user_agent,
        extra: &f.extra,
    })
}

/// The batch context with the message's own entries over it, as canonical text.
fn merge_context(batch: &BatchContext, own: &[(String, String)], out: &mut String) {
    let mut merged: BTreeMap<&str, &str> = batch
        .entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in own {
        merged.insert(k, v);
    }
    out.clear();
    out.push('{');
    for (i, (k, v)) in merged.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        canonical::write_str(out, k);
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
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
        let ctx = BatchContext::new(
            json!({"locale": "de", "page": {"path": "/"}})
                .as_object()
                .unwrap()
                .clone(),
        );
        let m = RequestMeta {
            batch_context: Some(&ctx),
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

    #[test]
    fn canonical_forms_and_context_merge_match_the_value_path() {
        let ctx = BatchContext::new(
            json!({"channel": "mobile", "userAgent": "batch-ua", "z": [1, {"b": 2, "a": 1}]})
                .as_object()
                .unwrap()
                .clone(),
        );
        let batch = RequestMeta {
            batch_context: Some(&ctx),
            ..meta()
        };
        for raw in [
            r#"{"type":"track","event":"E","userId":"u","properties":{"b":1,"a":{"d":1E2,"c":-0},"b":2},"zz":1,"aa":{"y":1,"x":2},"zz":3}"#,
            r#"{"type":"page","userId":"u","context":{"userAgent":7,"locale":"fr","channel":"web"}}"#,
            r#"{"type":"page","userId":"u","context":{"userAgent":"own\u0021"},"channel":null}"#,
            r#"{"type":"page","userId":"u","context":null,"context":{"channel":"store"}}"#,
            r#"{"type":"page","userId":"u","context":{"channel":"store"},"context":null}"#,
            r#"{"type":"page","userId":"u","channel":"email","context":{"channel":"store"}}"#,
            r#"{"type":"page","userId":"u","channel":"nope","context":{"channel":"store"}}"#,
            r#"{"t\u0079pe":"identify","userId":12.50,"messageId":7,"traits":{"\u00e9":"\u00e9","a\nb":"\/"}}"#,
            r#"{"type":"identify","userId":"u","messageId":"  "}"#,
            r#"{"type":"identify","userId":"u","writeKey":"k","integrations":{"All":false}}"#,
            r#"{"$serde_json::private::RawValue":"{\"type\":\"page\",\"userId\":\"u\"}"}"#,
            r#"{"type":"page","userId":"u","properties":{"$serde_json::private::RawValue":"[1]"}}"#,
            r#"{"type":"page","userId":"u","n":1e400}"#,
            r#"{"type":"page","userId":"u"} "#,
            r#"{"type":"page","userId":"u"} x"#,
            r#"["type"]"#,
        ] {
            for m in [&meta(), &batch] {
                let want = crate::message_dom::to_touchpoint(raw, None, m);
                assert_eq!(to_touchpoint(raw, None, m), want, "{raw}");
            }
        }
    }

    mod equivalence {
        use super::*;
        use proptest::prelude::*;

        /// A value for `key`: what clients send there, right or wrong.
        fn value(key: &'static str) -> BoxedStrategy<String> {
            let pool: Vec<&'static str> = match key {
                "type" => vec![
                    r#""track""#,
                    r#""page""#,
                    r#""screen""#,
                    r#""identify""#,
                    r#""alias""#,
                    r#""purchase""#,
                    r#""Track""#,
                    r#""tr\u0061ck""#,
                    "1",
                    "null",
                ],
                "anonymousId" | "userId" | "previousId" | "messageId" => vec![
                    r#""u-1""#,
                    r#""a-\u00e9""#,
                    r#""""#,
                    r#"" ""#,
                    r#""null""#,
                    r#""Anonymous""#,
                    r#""0""#,
                    "0",
                    "42",
                    "-7",
                    "1.5",
                    "1E2",
                    "-0",
                    "18446744073709551616",
                    "null",
                    "true",
                    r#"{"id":1}"#,
                    "[]",
                ],
                "event" | "name" => vec![
                    r#""Order Completed""#,
                    r#""""#,
                    r#"" ""#,
                    "5",
                    "null",
                    "false",
                    "[1]",
                    r#""caf\u00e9""#,
                ],
                "timestamp" | "originalTimestamp" | "sentAt" => vec![
                    r#""2025-11-25T11:59:00Z""#,
                    r#""2025-11-25T11:59:00.123+01:00""#,
                    r#""2025-11-25T11:59:00""#,
                    r#""yesterday""#,
                    r#""""#,
                    "1700000000",
                    "null",
                    "{}",
                ],
                "channel" => vec![
                    r#""browser""#,
                    r#""mobile""#,
                    r#""server""#,
                    r#""store""#,
                    r#""call_center""#,
                    "null",
                    "3",
                ],
                _ => vec![],
            };
            let json = prop_oneof![
                8 => crate::canonical::tests::json_text_with(false),
                1 => crate::canonical::tests::json_text(),
            ];
            if pool.is_empty() {
                prop_oneof![3 => context(), 1 => json].boxed()
            } else {
                prop_oneof![
                    4 => prop::sample::select(pool).prop_map(String::from),
                    1 => json,
                ]
                .boxed()
            }
        }

        /// Context-like objects: `channel`/`userAgent` of any type, repeats, nesting.
        fn context() -> BoxedStrategy<String> {
            let key = prop::sample::select(vec![
                "channel",
                "userAgent",
                "locale",
                "library",
                "ip",
                "a",
                "userAgen\\u0074",
            ]);
            let val = prop_oneof![
                prop::sample::select(vec![
                    r#""browser""#,
                    r#""mobile""#,
                    r#""web""#,
                    r#""store""#,
                    r#""email""#,
                    r#""ua-\"1\"""#,
                    "null",
                    "1",
                    r#"{"name":"analytics.js","version":"1"}"#,
                    "[]",
                    r#""""#,
                ])
                .prop_map(String::from),
                crate::canonical::tests::json_text_with(false),
            ];
            prop::collection::vec((key, val), 0..5)
                .prop_map(|entries| {
                    let body: Vec<String> = entries
                        .iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                })
                .boxed()
        }

        /// Messages that often pass validation (a plausible core in random order) with
        /// any other fields, right or wrong, repeated or not, around it.
        fn message() -> impl Strategy<Value = String> {
            // Every field with a column of its own, plus unknown and escaped ones.
            let keys: Vec<&'static str> = KNOWN_FIELDS
                .iter()
                .copied()
                .chain([
                    "integrations",
                    "_metadata",
                    "zz",
                    "a\\u0062",
                    "\\u0074ype",
                    "",
                ])
                .collect();
            let key = prop::sample::select(keys);
            let entry = |k: &'static str| {
                let unescaped: &'static str = match k {
                    "\\u0074ype" => "type",
                    other => other,
                };
                (Just(k), value(unescaped), " ?")
            };
            let core = (
                prop::sample::select(vec![
                    r#""track""#,
                    r#""page""#,
                    r#""screen""#,
                    r#""identify""#,
                    r#""alias""#,
                ]),
                prop::sample::select(vec![r#""anon-1""#, r#""anon-\u00e9""#, "17"]),
                prop::sample::select(vec![r#""user-1""#, "42"]),
                prop::sample::select(vec![r#""Order Completed""#, r#""Home""#]),
                prop::sample::select(vec![
                    r#""2025-11-25T11:59:00.123Z""#,
                    r#""2025-11-25T11:00:00Z""#,
                ]),
                prop::sample::select(vec![
                    r#""2025-11-25T11:59:01Z""#,
                    r#""2025-11-25T11:00:02Z""#,
                ]),
                context(),
                prop::sample::subsequence(
                    vec![
                        "type",
                        "anonymousId",
                        "userId",
                        "previousId",
                        "event",
                        "name",
                        "timestamp",
                        "sentAt",
                        "context",
                    ],
                    0..=9,
                ),
            )
                .prop_map(|(t, a, u, e, ts, sent, ctx, keep)| {
                    let all = [
                        ("type", t.to_string()),
                        ("anonymousId", a.to_string()),
                        ("userId", u.to_string()),
                        ("previousId", a.to_string()),
                        ("event", e.to_string()),
                        ("name", e.to_string()),
                        ("timestamp", ts.to_string()),
                        ("sentAt", sent.to_string()),
                        ("context", ctx),
                    ];
                    all.into_iter()
                        .filter(|(k, _)| keep.contains(k))
                        .map(|(k, v)| (k, v, String::new()))
                        .collect::<Vec<_>>()
                });
            let others = prop::collection::vec(key.prop_flat_map(entry), 0..5);
            (core, others)
                .prop_flat_map(|(mut core, others)| {
                    core.extend(others);
                    Just(core).prop_shuffle()
                })
                .prop_map(|entries| {
                    let body: Vec<String> = entries
                        .iter()
                        .map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// The one-pass path gives exactly what the `Value` path gives — touchpoint or
            /// rejection with its detail — and declines only what `Value` reads
            /// differently from an object.
            #[test]
            fn fast_path_equals_value_path(
                raw in message(),
                implied in proptest::option::of(proptest::sample::select(MessageType::ALL.to_vec())),
                batch in proptest::option::of(context()),
                batch_sent_at in proptest::option::of(RECEIVED - 5_000..RECEIVED),
                header_ua in proptest::option::of(Just("ua-header".to_string())),
            ) {
                let ctx = batch
                    .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                    .and_then(|v| v.as_object().cloned())
                    .map(BatchContext::new);
                let m = RequestMeta {
                    batch_context: ctx.as_ref(),
                    batch_sent_at_ms: batch_sent_at,
                    user_agent: header_ua,
                    ..meta()
                };
                let want = crate::message_dom::to_touchpoint(&raw, implied, &m);
                let mut v = Validator::new();
                let fast = v
                    .fields
                    .scan(&raw, m.batch_context.is_some())
                    .then(|| build(&v.fields, &mut v.bufs, &raw, implied, &m).map(|t| t.to_touchpoint()));
                match fast {
                    Some(got) => prop_assert_eq!(got, want),
                    None => prop_assert!(
                        !serde_json::from_str::<Value>(&raw).is_ok_and(|v| v.is_object())
                            || raw.contains(crate::canonical::RAW_VALUE_TOKEN),
                        "declined a plain object: {}", raw
                    ),
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// One validator over a request's messages: nothing of a message leaks into
            /// the next (the buffers are reused).
            #[test]
            fn a_reused_validator_equals_the_value_path(
                raws in prop::collection::vec(message(), 1..6),
                batch in proptest::option::of(context()),
            ) {
                let ctx = batch
                    .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                    .and_then(|v| v.as_object().cloned())
                    .map(BatchContext::new);
                let m = RequestMeta {
                    batch_context: ctx.as_ref(),
                    ..meta()
                };
                let mut v = Validator::new();
                for raw in &raws {
                    let got = v.validate(raw, None, &m).map(|t| t.to_touchpoint());
                    prop_assert_eq!(got, crate::message_dom::to_touchpoint(raw, None, &m));
                }
            }
        }
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
