//! The collector's dead-letter records: a rejected message with why, where and when, as
//! JSON to the DLQ topic (the processor's own DLQ records are built in the processor).

use serde_json::{json, Value};

use super::endpoint::Endpoint;
use crate::message::{Rejection, RequestMeta};
use crate::privacy::Privacy;
use crate::sink::Records;

/// Deepest message embedded as JSON (not as text) in a DLQ record.
const MAX_EMBEDDED_DEPTH: usize = 100;

/// Nesting depth of a JSON value (a scalar is 0). Bounded by the parser's limit.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Add the DLQ record of the message `raw`, rejected for `rej`, to `records`, with the
/// source's `privacy` options applied to the message (README "Privacy").
pub(super) fn push_record<'t>(
    records: &mut Records<'t>,
    topic: &'t str,
    raw: &str,
    rej: &Rejection,
    meta: &RequestMeta<'_>,
    ep: Endpoint,
    privacy: Option<&Privacy>,
) {
    // The message is embedded as JSON, one level deeper than it was; a message nested
    // close to serde_json's limit (128) would make the record unreadable to readers using
    // the default limit, so such a message (and unparsable text) is kept as a string.
    let mut original = serde_json::from_str::<Value>(raw)
        .ok()
        .filter(|v| depth(v) <= MAX_EMBEDDED_DEPTH)
        .unwrap_or_else(|| Value::String(raw.to_string()));
    // The write key is a credential: the DLQ is read by more people than the collector's
    // config, so a message's own `writeKey` is not copied (README "Validation and DLQ").
    if let Value::Object(o) = &mut original {
        o.remove("writeKey");
    }
    // Same options as the main path: the DLQ is a topic like the others, replayed and
    // read. Text that cannot be read as an object cannot be treated and is withheld.
    if let Some(p) = privacy {
        p.apply_to_message(&mut original);
    }
    let received_at = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(meta.received_at_ms) * 1_000_000,
    )
    .ok()
    .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    let doc = json!({
        "reason": rej.reason.label(),
        "detail": rej.detail,
        "source": meta.source,
        "endpoint": ep.label(),
        "received_at": received_at,
        "received_at_ms": meta.received_at_ms,
        "message": original,
    });
    records.push(topic, None, |out| {
        // A `Value` always serialises; writing to a `Vec` cannot fail.
        let _ = serde_json::to_writer(out, &doc);
    });
}

#[cfg(test)]
mod tests {
    use touchstream_core::Channel;

    use super::*;
    use crate::message::RejectReason;

    fn dlq_doc(raw: &str) -> Value {
        let meta = RequestMeta {
            source: "web",
            default_channel: Channel::Web,
            received_at_ms: 1_767_261_600_000,
            ip: None,
            user_agent: None,
            batch_sent_at_ms: None,
            batch_context: None,
        };
        let rej = Rejection {
            reason: RejectReason::Malformed,
            detail: "d".into(),
        };
        let mut records = Records::with_capacity(1, 0);
        push_record(&mut records, "dlq", raw, &rej, &meta, Endpoint::Batch, None);
        let record = records.iter().next().unwrap();
        assert_eq!((record.topic, record.key), ("dlq", None));
        serde_json::from_slice(record.payload).unwrap()
    }

    #[test]
    fn the_sources_privacy_options_apply_to_the_record() {
        let mut source = touchstream_core::config::SourceConfig::new("web", "k", "web");
        source.ip = touchstream_core::config::IpMode::Truncate;
        source.user_agent = touchstream_core::config::UserAgentMode::Drop;
        source.pii_keys = vec!["email".into()];
        source.pii = touchstream_core::config::PiiMode::Drop;
        let privacy = Privacy::for_source(&source, "").unwrap();
        let meta = RequestMeta {
            source: "web",
            default_channel: Channel::Web,
            received_at_ms: 0,
            ip: Some("203.0.113.9".into()),
            user_agent: Some("UA".into()),
            batch_sent_at_ms: None,
            batch_context: None,
        };
        let rej = Rejection {
            reason: RejectReason::MissingEvent,
            detail: "d".into(),
        };
        let raw = r#"{"type":"track","traits":{"email":"a@b.example","plan":"x"},"context":{"ip":"198.51.100.7","userAgent":"UA"}}"#;
        let mut records = Records::with_capacity(1, 0);
        push_record(
            &mut records,
            "dlq",
            raw,
            &rej,
            &meta,
            Endpoint::Batch,
            privacy.as_ref(),
        );
        let doc: Value = serde_json::from_slice(records.iter().next().unwrap().payload).unwrap();
        assert_eq!(
            doc["message"],
            json!({"type": "track", "traits": {"plan": "x"}, "context": {"ip": "198.51.100.0"}})
        );
        let mut records = Records::with_capacity(1, 0);
        push_record(
            &mut records,
            "dlq",
            "{oops a@b.example",
            &rej,
            &meta,
            Endpoint::Batch,
            privacy.as_ref(),
        );
        let doc: Value = serde_json::from_slice(records.iter().next().unwrap().payload).unwrap();
        assert_eq!(doc["message"], Value::Null, "unreadable text is withheld");
    }

    #[test]
    fn the_write_key_is_not_copied() {
        let doc = dlq_doc(r#"{"type":"track","writeKey":"secret-key","messageId":"m"}"#);
        assert_eq!(doc["message"]["messageId"], "m");
        assert!(doc["message"].get("writeKey").is_none(), "{doc}");
        assert!(!doc.to_string().contains("secret-key"), "{doc}");
    }

    #[test]
    fn record_embeds_the_message_unless_too_deep_or_unparsable() {
        let doc = dlq_doc(r#"{"a":[1]}"#);
        assert_eq!(
            doc,
            json!({
                "reason": "malformed", "detail": "d", "source": "web", "endpoint": "batch",
                "received_at": "2026-01-01T10:00:00Z", "received_at_ms": 1_767_261_600_000_i64,
                "message": {"a": [1]},
            })
        );
        assert_eq!(dlq_doc("{oops")["message"], "{oops");
        let at_limit = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(dlq_doc(&at_limit)["message"].is_array());
        let too_deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert_eq!(dlq_doc(&too_deep)["message"], too_deep.as_str());
    }
}
