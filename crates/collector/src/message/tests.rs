//! What the collector makes of single messages: the API's behaviour, through
//! [`to_touchpoint`].

use serde_json::{json, Value};
use touchstream_core::{Channel, MessageType, Touchpoint};

use super::{to_touchpoint, BatchContext, RejectReason, RequestMeta};

pub(super) const RECEIVED: i64 = 1_764_072_000_000; // 2025-11-25T12:00:00Z

pub(super) fn meta() -> RequestMeta<'static> {
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

/// A batch-level `context`.
pub(super) fn batch_context(v: Value) -> BatchContext {
    BatchContext::new(v.as_object().expect("an object").clone())
}

fn ok(v: Value) -> Touchpoint {
    to_touchpoint(&v.to_string(), None, &meta()).unwrap()
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
    assert_eq!(tp.event_id, "web:m-1");
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
    let ctx = batch_context(json!({"locale": "de", "page": {"path": "/"}}));
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
fn the_event_id_is_the_message_id_scoped_by_the_source() {
    let v = json!({"type":"track","event":"E","userId":"u","messageId":"coll-1"});
    let web = ok(v.clone());
    assert_eq!(web.event_id, "web:coll-1");
    // A retry: another `sentAt` and receipt time, the same id.
    let retry = RequestMeta {
        received_at_ms: RECEIVED + 2_000,
        batch_sent_at_ms: Some(RECEIVED + 1_900),
        ..meta()
    };
    let again = to_touchpoint(&v.to_string(), None, &retry).unwrap();
    assert_eq!(again.event_id, web.event_id);
    assert_ne!(again.event_time_ms, web.event_time_ms);
    // The same `messageId` from another source is another event.
    let crm = RequestMeta {
        source: "call-center",
        ..meta()
    };
    let other = to_touchpoint(&v.to_string(), None, &crm).unwrap();
    assert_eq!(other.event_id, "call-center:coll-1");
    // A generated id is scoped the same way.
    let generated = ok(json!({"type":"track","event":"E","userId":"u"}));
    let (source, id) = generated.event_id.split_once(':').unwrap();
    assert_eq!(source, "web");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
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
    use RejectReason::*;
    for (reason, message) in [
        (Malformed, "[1]"),
        (Malformed, "{not json"),
        (UnknownType, r#"{"userId":"u"}"#),
        (UnknownType, r#"{"type":"purchase","userId":"u"}"#),
        (MissingIdentity, r#"{"type":"track","event":"E"}"#),
        (MissingEvent, r#"{"type":"track","userId":"u"}"#),
        (MissingEvent, r#"{"type":"track","userId":"u","event":" "}"#),
        (MissingAliasIds, r#"{"type":"alias","userId":"u"}"#),
        (MissingAliasIds, r#"{"type":"alias","previousId":"a"}"#),
        (
            PlaceholderId,
            r#"{"type":"page","anonymousId":"undefined"}"#,
        ),
        (PlaceholderId, r#"{"type":"page","userId":"0"}"#),
        (InvalidField, r#"{"type":"page","userId":{"id":1}}"#),
        (
            InvalidField,
            r#"{"type":"page","userId":"u","properties":[1]}"#,
        ),
        (
            InvalidTimestamp,
            r#"{"type":"page","userId":"u","timestamp":"yesterday"}"#,
        ),
        (
            InvalidTimestamp,
            r#"{"type":"page","userId":"u","timestamp":1700000000}"#,
        ),
    ] {
        let got = to_touchpoint(message, None, &meta()).map_err(|r| r.reason);
        assert_eq!(got, Err(reason), "{message}");
    }
}

#[test]
fn alias_is_valid_without_anonymous_id() {
    let tp = ok(json!({"type": "alias", "previousId": "anon-1", "userId": "u-1"}));
    assert_eq!(tp.previous_id.as_deref(), Some("anon-1"));
    assert_eq!(tp.identity_key(), "u-1");
}

/// A message's channel is named by `Channel::from_message`, the workspace's one alias
/// rule: Segment's `browser`/`mobile`, device and desk names (`ios`, `android`, `pos`,
/// `phone`, ...) in any case, with spaces or hyphens. Anything else, `server` included,
/// leaves the source's default.
#[test]
fn channel_names_and_aliases_else_the_source_default() {
    let crm = RequestMeta {
        default_channel: Channel::CallCenter,
        ..meta()
    };
    let channel_of = |message: Value| {
        to_touchpoint(&message.to_string(), None, &crm)
            .unwrap()
            .channel
    };
    for (named, want) in [
        ("web", "web"),
        ("browser", "web"),
        ("mobile", "app"),
        ("ios", "app"),
        ("Android", "app"),
        ("pos", "store"),
        (" Store ", "store"),
        ("phone", "call_center"),
        ("Call-Center", "call_center"),
        ("email", "email"),
        ("server", "call_center"),
        ("fax", "call_center"),
        ("", "call_center"),
    ] {
        let top = json!({"type": "page", "userId": "u", "channel": named});
        assert_eq!(channel_of(top), want, "channel {named:?}");
        let ctx = json!({"type": "page", "userId": "u", "context": {"channel": named}});
        assert_eq!(channel_of(ctx), want, "context.channel {named:?}");
    }
    // A top-level `channel` of any value hides the context's, even one it cannot name.
    let hidden =
        json!({"type": "page", "userId": "u", "channel": "fax", "context": {"channel": "ios"}});
    assert_eq!(channel_of(hidden), "call_center");
    let hidden =
        json!({"type": "page", "userId": "u", "channel": null, "context": {"channel": "ios"}});
    assert_eq!(channel_of(hidden), "call_center");
    // A batch context's channel applies under a message context without one.
    let ctx = batch_context(json!({"channel": "POS"}));
    let batch = RequestMeta {
        batch_context: Some(&ctx),
        ..crm.clone()
    };
    let v = json!({"type": "page", "userId": "u", "context": {"locale": "fr"}});
    let tp = to_touchpoint(&v.to_string(), None, &batch).unwrap();
    assert_eq!(tp.channel, "store");
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
