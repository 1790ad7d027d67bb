//! The request envelope: a body split into raw messages under the count and size limits,
//! with the batch-level `sentAt`, `context` and `writeKey`.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use touchstream_core::config::CollectorConfig;

use super::endpoint::Endpoint;
use crate::error::ApiError;
use crate::message::parse_timestamp;

/// The envelope of `/v1/batch`: messages stay raw so each is measured and parsed alone.
#[derive(Deserialize)]
struct BatchEnvelope<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(rename = "writeKey", default)]
    write_key: Option<String>,
}

#[derive(Deserialize)]
struct KeyOnly {
    #[serde(rename = "writeKey", default)]
    write_key: Option<String>,
}

/// A split body: the raw messages, the batch `sentAt` (epoch ms), the batch `context` and
/// the body's `writeKey`.
type Split<'a> = (
    Vec<&'a str>,
    Option<i64>,
    Option<Map<String, Value>>,
    Option<String>,
);

/// Split a body into raw messages, enforcing count and per-message size limits.
///
/// Public only so `benches/ingest.rs` can measure the real per-request path.
#[doc(hidden)]
pub fn split<'a>(
    text: &'a str,
    ep: Endpoint,
    cfg: &CollectorConfig,
) -> Result<Split<'a>, ApiError> {
    let too_big = |i: usize| {
        ApiError::TooLarge(format!(
            "message {i} is over {} bytes",
            cfg.max_message_bytes
        ))
    };
    match ep {
        Endpoint::Batch => {
            let env: BatchEnvelope<'a> = serde_json::from_str(text).map_err(|e| {
                ApiError::BadRequest(format!("body must be {{\"batch\": [...]}}: {e}"))
            })?;
            if env.batch.len() > cfg.max_batch_messages {
                return Err(ApiError::TooLarge(format!(
                    "{} messages in one batch; the limit is {}",
                    env.batch.len(),
                    cfg.max_batch_messages
                )));
            }
            let messages: Vec<&str> = env.batch.iter().map(|r| r.get()).collect();
            if let Some(i) = messages
                .iter()
                .position(|m| m.len() > cfg.max_message_bytes)
            {
                return Err(too_big(i));
            }
            let sent_at = match env.sent_at {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(parse_timestamp(&s).ok_or_else(|| {
                    ApiError::BadRequest(format!("batch sentAt {s:?} is not an ISO-8601 timestamp"))
                })?),
                Some(_) => {
                    return Err(ApiError::BadRequest(
                        "batch sentAt must be an ISO-8601 string".into(),
                    ))
                }
            };
            let context = match env.context {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some(m),
                Some(_) => {
                    return Err(ApiError::BadRequest(
                        "batch context must be an object".into(),
                    ))
                }
            };
            Ok((messages, sent_at, context, env.write_key))
        }
        Endpoint::Single(_) => {
            if text.len() > cfg.max_message_bytes {
                return Err(too_big(0));
            }
            let key: KeyOnly = serde_json::from_str(text).map_err(|e| {
                ApiError::BadRequest(format!("body must be one JSON message object: {e}"))
            })?;
            Ok((vec![text], None, None, key.write_key))
        }
    }
}

#[cfg(test)]
mod tests {
    use touchstream_core::MessageType;

    use super::*;

    #[test]
    fn split_enforces_limits() {
        let cfg = CollectorConfig {
            max_batch_messages: 2,
            max_message_bytes: 40,
            ..CollectorConfig::default()
        };
        let ok = split(
            r#"{"batch":[{"a":1},{"b":2}],"sentAt":"2025-01-01T00:00:00Z"}"#,
            Endpoint::Batch,
            &cfg,
        )
        .unwrap();
        assert_eq!(ok.0, vec![r#"{"a":1}"#, r#"{"b":2}"#]);
        assert!(ok.1.is_some());
        let three = r#"{"batch":[1,2,3]}"#;
        assert_eq!(
            split(three, Endpoint::Batch, &cfg).unwrap_err().status(),
            413
        );
        let big = format!(r#"{{"batch":[{{"x":"{}"}}]}}"#, "y".repeat(50));
        assert_eq!(
            split(&big, Endpoint::Batch, &cfg).unwrap_err().status(),
            413
        );
        assert_eq!(
            split("[1]", Endpoint::Batch, &cfg).unwrap_err().status(),
            400
        );
        assert_eq!(
            split(r#"{"batch":[],"sentAt":"x"}"#, Endpoint::Batch, &cfg)
                .unwrap_err()
                .status(),
            400
        );
        let single = split(
            r#"{"writeKey":"k","event":"E"}"#,
            Endpoint::Single(MessageType::Track),
            &cfg,
        )
        .unwrap();
        assert_eq!(single.3.as_deref(), Some("k"));
    }
}
