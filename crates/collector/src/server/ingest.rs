//! The ingest pipeline every ingest route runs, one named step per stage, in this order:
//!
//! 1. `admit`: refuse while shutting down;
//! 2. `ip_rate_limit`: the client address (README "Client IP") and its request budget,
//!    before anything else is read;
//! 3. `header_source`: a write key in the `Authorization` header is checked before the
//!    body is read, so strangers cost nothing;
//! 4. `read_body`: read under `max_request_bytes`, then inflate gzip under the same limit
//!    (both under `max_unauthenticated_bytes` when the key is not in the header, so a
//!    request without a known key costs little); every chunk is held against
//!    `max_in_flight_bytes` (`InFlight`) as it arrives or is inflated, not after, until
//!    the request is answered;
//! 5. `split`: the envelope, under the message count and size limits;
//! 6. `authenticate` and `rate_limit`: the source (from the header, else the body's
//!    `writeKey`) and its request budget (the outer fence over all addresses);
//! 7. `encode`: validate each message (its event time within the request's window:
//!    the floor, and on all but `/v1/import` the maximum age); valid ones become Avro
//!    records for the raw topic, rejected ones JSON records for the DLQ topic, both with
//!    the source's privacy options applied first (README "Privacy");
//! 8. `publish`: every record to the sink, acknowledged, or 503;
//! 9. `answer`: `{"success":true,"accepted":N,"rejected":[...]}`.
//!
//! A refused request publishes nothing. Any step's [`ApiError`] is the answer.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use touchstream_core::avro;
use tracing::Instrument as _;

use super::dlq;
use super::endpoint::Endpoint;
use super::envelope::split;
use super::state::AppState;
use crate::auth::{basic_username, Source};
use crate::body;
use crate::error::ApiError;
use crate::message::{
    BatchContext, EventTimeWindow, RejectReason, Rejection, RequestMeta, Validator,
};
use crate::metrics::Metrics;
use crate::privacy::{Privacy, Redacted};
use crate::sink::{Records, Sink};
use touchstream_core::config::SuppressionMode;

/// The handler of every ingest route: the pipeline, then the request metrics.
pub(super) async fn ingest<S: Sink>(
    State(st): State<Arc<AppState<S>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
    ep: Endpoint,
    history: bool,
) -> Response {
    let started = Instant::now();
    // A span per request: counts and reasons only, never bodies or ids.
    let result = pipeline(&st, peer, &headers, body, ep, history)
        .instrument(tracing::debug_span!("ingest", endpoint = ep.label()))
        .await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, ApiError::Unavailable { .. }) {
                tracing::warn!(endpoint = ep.label(), error = %e, "request refused");
            }
            e.into_response()
        }
    };
    st.metrics
        .requests
        .with_label_values(&[ep.label(), resp.status().as_str()])
        .inc();
    st.metrics
        .request_seconds
        .with_label_values(&[ep.label()])
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn pipeline<S: Sink>(
    st: &AppState<S>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
    ep: Endpoint,
    history: bool,
) -> Result<Response, ApiError> {
    let received_at_ms = now_ms();
    admit(st)?;
    let client = st.client_addr.resolve(headers, peer.ip());
    ip_rate_limit(st, client)?;
    let header_source = header_source(st, headers)?;
    let mut reserved = InFlight::new(st);
    let text = read_body(st, body, headers, header_source.is_some(), &mut reserved).await?;
    let text =
        std::str::from_utf8(&text).map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;
    let (messages, batch_sent_at_ms, batch_context, body_key) = split(text, ep, &st.cfg)?;
    let source = authenticate(st, header_source, body_key.as_deref())?;
    rate_limit(st, &source)?;
    let batch_context = batch_context.map(BatchContext::new);
    let meta = RequestMeta {
        source: &source.name,
        default_channel: source.default_channel,
        received_at_ms,
        ip: Some(client.to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        batch_sent_at_ms,
        batch_context: batch_context.as_ref(),
    };
    let window = EventTimeWindow {
        floor_ms: st.event_time_floor_ms,
        oldest_ms: (!history && st.cfg.max_event_age_days > 0).then(|| {
            received_at_ms.saturating_sub(i64::from(st.cfg.max_event_age_days) * 86_400_000)
        }),
    };
    let encoded = encode(
        st,
        &messages,
        text.len(),
        ep,
        &meta,
        &window,
        source.privacy.as_ref(),
    );
    publish(st, &encoded.records).await?;
    Ok(answer(st, &encoded))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The answer to a request that comes in once shutdown has begun: retry elsewhere.
fn admit<S>(st: &AppState<S>) -> Result<(), ApiError> {
    if st.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable {
            reason: "collector is shutting down".into(),
            retry_after_secs: st.cfg.retry_after_secs,
        });
    }
    Ok(())
}

/// The source of a key in the `Authorization` header: `None` without one, 401 for an
/// unknown one.
fn header_source<S>(
    st: &AppState<S>,
    headers: &HeaderMap,
) -> Result<Option<Arc<Source>>, ApiError> {
    match basic_username(headers) {
        Some(key) => Ok(Some(st.sources.lookup(&key).ok_or(ApiError::Unauthorized)?)),
        None => Ok(None),
    }
}

/// The body, read and inflated within `max_request_bytes` (413 beyond; within
/// `max_unauthenticated_bytes` when the write key is not in the header), received
/// within `body_read_timeout_ms` (408 beyond), every chunk held in `reserved` before it
/// is kept.
async fn read_body<S>(
    st: &AppState<S>,
    body: Body,
    headers: &HeaderMap,
    key_in_header: bool,
    reserved: &mut InFlight<'_>,
) -> Result<Bytes, ApiError> {
    let cfg = &st.cfg;
    let (limit, too_large_raw, too_large_inflated): (usize, String, String) = if key_in_header {
        let limit = cfg.max_request_bytes;
        (
            limit,
            format!("request body over {limit} bytes"),
            format!("request body over {limit} bytes after gzip inflation"),
        )
    } else {
        // The key is in the body (or nowhere): bound what a stranger can make us read,
        // inflate and parse before we know.
        let limit = cfg.max_unauthenticated_bytes.min(cfg.max_request_bytes);
        let text = format!(
            "a request without its write key in the Authorization header may send at most \
             {limit} body bytes (after gzip inflation); send the key as the HTTP Basic username"
        );
        (limit, text.clone(), text)
    };
    let raw = body::read_limited(
        body,
        headers,
        limit,
        std::time::Duration::from_millis(cfg.body_read_timeout_ms),
        || ApiError::TooLarge(too_large_raw.clone()),
        |n| reserved.grow(n),
    )
    .await?;
    st.metrics.bytes.inc_by(raw.len() as u64);
    let raw_len = raw.len();
    let decoded = body::decode(
        raw.clone(),
        headers,
        limit,
        || ApiError::TooLarge(too_large_inflated.clone()),
        |n| reserved.grow(n),
    )?;
    if decoded.as_ptr() != raw.as_ptr() {
        // Inflated: the compressed copy is gone once this returns.
        drop(raw);
        reserved.shrink(raw_len);
    }
    Ok(decoded)
}

/// Bytes of one request held against `max_in_flight_bytes` until it is answered; grows
/// while the body arrives.
struct InFlight<'a> {
    semaphore: &'a tokio::sync::Semaphore,
    metrics: &'a Metrics,
    retry_after_secs: u64,
    held: u32,
}

impl<'a> InFlight<'a> {
    fn new<S>(st: &'a AppState<S>) -> Self {
        Self {
            semaphore: &st.in_flight,
            metrics: &st.metrics,
            retry_after_secs: st.cfg.retry_after_secs,
            held: 0,
        }
    }

    /// Hold `n` more bytes, or 503: bounded memory under overload, refuse rather than
    /// queue without end.
    fn grow(&mut self, n: usize) -> Result<(), ApiError> {
        let refuse = || {
            self.metrics
                .throttled
                .with_label_values(&["in_flight_bytes"])
                .inc();
            ApiError::Unavailable {
                reason: "collector is at its in-flight byte limit".into(),
                retry_after_secs: self.retry_after_secs,
            }
        };
        let n = u32::try_from(n).map_err(|_| refuse())?;
        if n == 0 {
            return Ok(());
        }
        self.semaphore
            .try_acquire_many(n)
            .map_err(|_| refuse())?
            .forget();
        self.held += n;
        self.metrics.in_flight_bytes.add(i64::from(n));
        Ok(())
    }

    /// Give back `n` held bytes (at most what is held).
    fn shrink(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(self.held);
        self.semaphore.add_permits(n as usize);
        self.held -= n;
        self.metrics.in_flight_bytes.sub(i64::from(n));
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shrink(self.held as usize);
    }
}

/// The request's source: the header's, else the body `writeKey`'s; 401 without either.
fn authenticate<S>(
    st: &AppState<S>,
    header_source: Option<Arc<Source>>,
    body_key: Option<&str>,
) -> Result<Arc<Source>, ApiError> {
    match header_source {
        Some(s) => Ok(s),
        None => body_key
            .and_then(|k| st.sources.lookup(k))
            .ok_or(ApiError::Unauthorized),
    }
}

/// 429 with the wait when the client address is over `rate_limit_per_ip`.
fn ip_rate_limit<S>(st: &AppState<S>, client: std::net::IpAddr) -> Result<(), ApiError> {
    let Some(limiter) = &st.ip_limiter else {
        return Ok(());
    };
    limiter.check(client, Instant::now()).map_err(|wait| {
        st.metrics
            .throttled
            .with_label_values(&["rate_limit_ip"])
            .inc();
        ApiError::RateLimited {
            scope: "client address",
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    })
}

/// 429 with the wait when the source is over `rate_limit_per_key`.
fn rate_limit<S>(st: &AppState<S>, source: &Source) -> Result<(), ApiError> {
    let Some(limiter) = &st.limiter else {
        return Ok(());
    };
    limiter.check_key(&source.name).map_err(|not_until| {
        st.metrics
            .throttled
            .with_label_values(&["rate_limit_key"])
            .inc();
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        ApiError::RateLimited {
            scope: "write key",
            retry_after_secs: wait.as_secs().max(1),
        }
    })
}

/// A request's records and what its answer lists.
struct Encoded<'t> {
    records: Records<'t>,
    accepted: usize,
    rejected: Vec<Rejected>,
}

/// A rejected message, as the answer lists it.
struct Rejected {
    index: usize,
    message_id: Value,
    rejection: Rejection,
}

/// Validate every message: valid ones as Avro to the raw topic (keyed by identity),
/// rejected ones as DLQ records; `privacy` (the source's, `None` when it keeps
/// everything) is applied to both before they are encoded.
fn encode<'t, S>(
    st: &'t AppState<S>,
    messages: &[&str],
    text_len: usize,
    ep: Endpoint,
    meta: &RequestMeta<'_>,
    window: &EventTimeWindow,
    privacy: Option<&Privacy>,
) -> Encoded<'t> {
    // Avro values are about as long as the message text plus the request's strings
    // (a hint: the buffer grows if it is short; a long User-Agent does not inflate the
    // up-front reservation by thousands of copies).
    let per_message = meta.source.len()
        + meta.ip.as_ref().map_or(0, String::len)
        + meta.user_agent.as_ref().map_or(0, |ua| ua.len().min(256))
        + 96;
    let mut records =
        Records::with_capacity(messages.len(), text_len + messages.len() * per_message);
    let mut validator = Validator::new();
    let mut rejected = Vec::new();
    let mut redacted = Redacted::default();
    for (index, raw) in messages.iter().enumerate() {
        let checked = validator
            .validate(raw, ep.implied_type(), meta)
            .and_then(|tp| window.check(tp.event_time_ms).map(|()| tp))
            .and_then(|tp| check_properties(st.catalog.as_ref(), &tp).map(|()| tp));
        match checked {
            Ok(tp)
                if st.cfg.suppression != SuppressionMode::Off
                    && st
                        .suppression
                        .any([tp.anonymous_id, tp.user_id, tp.previous_id]) =>
            {
                // An erased person: never dead-lettered (that would store them again).
                let action = if st.cfg.suppression == SuppressionMode::Reject {
                    rejected.push(Rejected {
                        index,
                        message_id: message_id_of(raw),
                        rejection: Rejection {
                            reason: RejectReason::Suppressed,
                            detail: "an id of this message belongs to an erased person".into(),
                        },
                    });
                    "rejected"
                } else {
                    "dropped"
                };
                st.metrics.suppressed.with_label_values(&[action]).inc();
            }
            Ok(tp) => {
                let tp = match privacy {
                    None => tp,
                    Some(p) => p.apply(tp, &mut redacted),
                };
                records.push(&st.raw_topic, Some(tp.identity_key()), |out| {
                    avro::encode_ref(&tp, out)
                })
            }
            Err(rejection) => {
                dlq::push_record(
                    &mut records,
                    &st.dlq_topic,
                    raw,
                    &rejection,
                    meta,
                    ep,
                    privacy,
                );
                rejected.push(Rejected {
                    index,
                    message_id: message_id_of(raw),
                    rejection,
                });
            }
        }
    }
    Encoded {
        accepted: messages.len() - rejected.len(),
        records,
        rejected,
    }
}

/// A track event's properties against its catalog entry's schema (README "Feedback and
/// stores"); only events that have one are parsed.
fn check_properties(
    catalog: Option<&touchstream_journey::Catalog>,
    tp: &touchstream_core::avro::TouchpointRef<'_>,
) -> Result<(), Rejection> {
    let (Some(catalog), Some(event)) = (catalog, tp.event) else {
        return Ok(());
    };
    if tp.message_type != touchstream_core::MessageType::Track {
        return Ok(());
    }
    catalog
        .check_properties(event, || {
            serde_json::from_str(tp.properties).unwrap_or_default()
        })
        .map_err(|v| Rejection {
            reason: RejectReason::InvalidProperty,
            detail: v.to_string(),
        })
}

/// The `messageId` of a message, if it has one (`null` otherwise).
fn message_id_of(raw: &str) -> Value {
    serde_json::from_str::<Value>(raw)
        .ok()
        .and_then(|v| v.get("messageId").cloned())
        .unwrap_or(Value::Null)
}

/// Every record to the sink; 503 with `Retry-After` unless all are acknowledged.
async fn publish<S: Sink>(st: &AppState<S>, records: &Records<'_>) -> Result<(), ApiError> {
    st.sink
        .publish(records)
        .await
        .map_err(|e| ApiError::Unavailable {
            reason: e.to_string(),
            retry_after_secs: st.cfg.retry_after_secs,
        })
}

/// 200 with the accepted count and every rejection; counted in the events metric.
fn answer<S>(st: &AppState<S>, encoded: &Encoded<'_>) -> Response {
    st.metrics
        .events
        .with_label_values(&["accepted", "ok"])
        .inc_by(encoded.accepted as u64);
    for r in &encoded.rejected {
        st.metrics
            .events
            .with_label_values(&["rejected", r.rejection.reason.label()])
            .inc();
    }
    let rejected: Vec<Value> = encoded
        .rejected
        .iter()
        .map(|r| {
            json!({
                "index": r.index,
                "messageId": r.message_id,
                "reason": r.rejection.reason.label(),
                "detail": r.rejection.detail,
            })
        })
        .collect();
    Json(json!({"success": true, "accepted": encoded.accepted, "rejected": rejected}))
        .into_response()
}
