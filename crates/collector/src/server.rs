//! HTTP routes, shared state, the ingest handler and graceful shutdown.
//!
//! Every ingest route (and its configured first-party aliases) runs [`ingest`]: auth →
//! bounded read → gzip → split → validate → produce → answer. Health routes report
//! liveness, broker readiness and metrics.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rdkafka::producer::Producer;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use touchstream_core::config::{CollectorConfig, KafkaConfig};
use touchstream_core::kafka::acks::{group_producer, GroupProducer};
use touchstream_core::{avro, Config, MessageType};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument as _;

use crate::auth::{basic_username, Source, Sources};
use crate::body;
use crate::error::ApiError;
use crate::message::{parse_timestamp, BatchContext, Rejection, RequestMeta, Validator};
use crate::metrics::Metrics;
use crate::sink::{produce_all, Records};

/// Why the collector could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Kafka client could not be created.
    #[error(transparent)]
    Kafka(#[from] touchstream_core::kafka::KafkaSetupError),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A route alias names an unknown route.
    #[error("collector.route_aliases: {0}")]
    Alias(String),
    /// The server failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// Which Segment endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/batch` and `/v1/import`.
    Batch,
    /// A single-message endpoint of this type.
    Single(MessageType),
}

/// Canonical ingest routes.
pub const ROUTES: [(&str, Endpoint); 7] = [
    ("/v1/batch", Endpoint::Batch),
    ("/v1/import", Endpoint::Batch),
    ("/v1/track", Endpoint::Single(MessageType::Track)),
    ("/v1/page", Endpoint::Single(MessageType::Page)),
    ("/v1/screen", Endpoint::Single(MessageType::Screen)),
    ("/v1/identify", Endpoint::Single(MessageType::Identify)),
    ("/v1/alias", Endpoint::Single(MessageType::Alias)),
];

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Batch => "batch",
            Endpoint::Single(t) => t.as_str(),
        }
    }
}

struct AppState {
    cfg: CollectorConfig,
    kafka: KafkaConfig,
    sources: Sources,
    producer: ProducerCell,
    metrics: Metrics,
    in_flight: Semaphore,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    shutting_down: AtomicBool,
    /// Epoch ms of the last successful broker metadata fetch (readiness cache).
    broker_ok_at_ms: AtomicI64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Serve the collector on `listener` until `shutdown` is cancelled, then drain in-flight
/// requests and flush the producer.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), CollectorError> {
    let cfg = config.collector.clone();
    let producer = ProducerCell::new(&config.kafka, cfg.produce_timeout_ms)?;
    let limiter = NonZeroU32::new(cfg.rate_limit_per_key).map(|rate| {
        let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
    });
    let permits = cfg.max_in_flight_bytes.min(Semaphore::MAX_PERMITS);
    let state = Arc::new(AppState {
        sources: Sources::new(&cfg.sources),
        kafka: config.kafka.clone(),
        producer,
        metrics: Metrics::new()?,
        in_flight: Semaphore::new(permits),
        limiter,
        shutting_down: AtomicBool::new(false),
        broker_ok_at_ms: AtomicI64::new(0),
        cfg,
    });
    let app = router(state.clone())?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, sources = state.cfg.sources.len(), "collector listening");

    let token = shutdown.clone();
    let st = state.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        token.cancelled().await;
        st.shutting_down.store(true, Ordering::SeqCst);
        tracing::info!("collector shutting down: draining requests");
    })
    .await?;

    // Every request has been answered; flush whatever librdkafka still holds (DLQ
    // records of answered requests are already acked, so this is normally instant).
    let producer = state.producer.get();
    match tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing producer at shutdown"),
        Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
    }
    tracing::info!("collector stopped");
    Ok(())
}

fn router(state: Arc<AppState>) -> Result<Router, CollectorError> {
    let mut app = Router::new();
    let add = |app: Router<Arc<AppState>>, path: &str, ep: Endpoint| {
        app.route(
            path,
            post(
                move |st: State<Arc<AppState>>,
                      ci: ConnectInfo<SocketAddr>,
                      h: HeaderMap,
                      b: Body| async move { ingest(st, ci, h, b, ep).await },
            ),
        )
    };
    for (path, ep) in ROUTES {
        app = add(app, path, ep);
    }
    for (alias, target) in &state.cfg.route_aliases {
        if let Some((_, ep)) = ROUTES.iter().find(|(p, _)| p == target) {
            app = add(app, alias, *ep);
        } else {
            return Err(CollectorError::Alias(format!(
                "{alias:?} points at unknown route {target:?}"
            )));
        }
    }
    app = app
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if let Some(cors) = cors_layer(&state.cfg.cors_origins) {
        app = app.layer(cors);
    }
    Ok(app.with_state(state))
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::CONTENT_ENCODING,
            ])
            .max_age(Duration::from_secs(86_400)),
    )
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

/// Ready when not shutting down and the broker answered a metadata request recently.
async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.shutting_down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "shutting down"})),
        )
            .into_response();
    }
    let fresh = now_ms() - st.broker_ok_at_ms.load(Ordering::Relaxed) < 2000;
    let ok = fresh || {
        let producer = st.producer.get();
        let reachable = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_millis(1500))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if reachable {
            st.broker_ok_at_ms.store(now_ms(), Ordering::Relaxed);
        }
        reachable
    };
    if ok {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "kafka unreachable"})),
        )
            .into_response()
    }
}

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

async fn ingest(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
    ep: Endpoint,
) -> Response {
    let started = Instant::now();
    // A span per request: counts and reasons only, never bodies or ids.
    let result = ingest_inner(&st, peer, &headers, body, ep)
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

async fn ingest_inner(
    st: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
    ep: Endpoint,
) -> Result<Response, ApiError> {
    let received_at_ms = now_ms();
    let retry_after_secs = st.cfg.retry_after_secs;
    if st.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable {
            reason: "collector is shutting down".into(),
            retry_after_secs,
        });
    }
    // A key in the header is checked before reading the body: strangers cost nothing.
    let header_source = match basic_username(headers) {
        Some(key) => Some(st.sources.lookup(&key).ok_or(ApiError::Unauthorized)?),
        None => None,
    };

    let raw = body::read_limited(body, headers, st.cfg.max_request_bytes).await?;
    st.metrics.bytes.inc_by(raw.len() as u64);
    let text = body::decode(raw, headers, st.cfg.max_request_bytes)?;

    // Bounded memory under overload: refuse rather than queue without end.
    let cost = u32::try_from(text.len().max(1)).unwrap_or(u32::MAX);
    let _permit = st.in_flight.try_acquire_many(cost).map_err(|_| {
        st.metrics
            .throttled
            .with_label_values(&["in_flight_bytes"])
            .inc();
        ApiError::Unavailable {
            reason: "collector is at its in-flight byte limit".into(),
            retry_after_secs,
        }
    })?;
    st.metrics.in_flight_bytes.add(i64::from(cost));
    let _gauge = GaugeGuard(&st.metrics, i64::from(cost));

    let text =
        std::str::from_utf8(&text).map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;
    let (messages, batch_sent_at_ms, batch_context, body_key) = split(text, ep, &st.cfg)?;
    let source: Arc<Source> = match header_source {
        Some(s) => s,
        None => body_key
            .as_deref()
            .and_then(|k| st.sources.lookup(k))
            .ok_or(ApiError::Unauthorized)?,
    };
    if let Some(limiter) = &st.limiter {
        if let Err(not_until) = limiter.check_key(&source.name) {
            st.metrics
                .throttled
                .with_label_values(&["rate_limit"])
                .inc();
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(ApiError::RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
    }

    let ip = client_ip(headers, peer, st.cfg.trusted_proxy_header.as_deref());
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let batch_context = batch_context.map(BatchContext::new);
    let meta = RequestMeta {
        source: &source.name,
        default_channel: source.default_channel,
        received_at_ms,
        ip,
        user_agent,
        batch_sent_at_ms,
        batch_context: batch_context.as_ref(),
    };
    let implied = match ep {
        Endpoint::Batch => None,
        Endpoint::Single(t) => Some(t),
    };

    // Avro values are about as long as the message text plus the request's strings
    // (a hint: the buffer grows if it is short; a long User-Agent does not inflate the
    // up-front reservation by thousands of copies).
    let per_message = source.name.len()
        + meta.ip.as_ref().map_or(0, String::len)
        + meta.user_agent.as_ref().map_or(0, |ua| ua.len().min(256))
        + 96;
    let mut records =
        Records::with_capacity(messages.len(), text.len() + messages.len() * per_message);
    let mut validator = Validator::new();
    let mut rejected = Vec::new();
    for (index, raw) in messages.iter().enumerate() {
        match validator.validate(raw, implied, &meta) {
            Ok(tp) => records.push(&st.kafka.raw_topic, Some(tp.identity_key()), |out| {
                avro::encode_ref(&tp, out)
            }),
            Err(rej) => {
                dlq_record(&mut records, &st.kafka.dlq_topic, raw, &rej, &meta, ep);
                rejected.push((index, message_id_of(raw), rej));
            }
        }
    }
    let accepted = messages.len() - rejected.len();

    let produced = produce_all(
        &st.producer.get(),
        &records,
        Duration::from_millis(st.cfg.produce_timeout_ms),
        &st.metrics,
    )
    .await;
    st.producer.observe(&produced);
    produced.map_err(|e| ApiError::Unavailable {
        reason: e.to_string(),
        retry_after_secs,
    })?;

    st.metrics
        .events
        .with_label_values(&["accepted", "ok"])
        .inc_by(accepted as u64);
    for (_, _, rej) in &rejected {
        st.metrics
            .events
            .with_label_values(&["rejected", rej.reason.label()])
            .inc();
    }
    let rejected_json: Vec<Value> = rejected
        .iter()
        .map(|(index, id, rej)| json!({"index": index, "messageId": id, "reason": rej.reason.label(), "detail": rej.detail}))
        .collect();
    Ok(
        Json(json!({"success": true, "accepted": accepted, "rejected": rejected_json}))
            .into_response(),
    )
}

/// The producer, replaced by a fresh one after repeated delivery failures.
///
/// An idempotent producer can end up permanently failing after a broker restart (its
/// producer id/sequence state no longer matches the broker's, or librdkafka raised a fatal
/// error); librdkafka's documented remedy is a new producer instance. Without this, the
/// collector would answer 503 until restarted by hand.
struct ProducerCell {
    current: std::sync::RwLock<GroupProducer>,
    consecutive_failures: std::sync::atomic::AtomicU32,
    kafka: KafkaConfig,
    timeout_ms: u64,
}

/// Delivery failures in a row after which the producer is recreated.
const RECREATE_AFTER_FAILURES: u32 = 3;

impl ProducerCell {
    fn new(kafka: &KafkaConfig, timeout_ms: u64) -> Result<Self, CollectorError> {
        Ok(Self {
            current: std::sync::RwLock::new(group_producer(kafka, timeout_ms, 0)?),
            consecutive_failures: std::sync::atomic::AtomicU32::new(0),
            kafka: kafka.clone(),
            timeout_ms,
        })
    }

    fn get(&self) -> GroupProducer {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn observe(&self, result: &Result<(), crate::sink::SinkError>) {
        let Err(e) = result else {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        };
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let fatal = self.get().client().fatal_error().is_some();
        if !fatal && failures < RECREATE_AFTER_FAILURES {
            return;
        }
        match group_producer(&self.kafka, self.timeout_ms, 0) {
            Ok(fresh) => {
                tracing::warn!(error = %e, failures, fatal, "recreating the kafka producer after delivery failures");
                let mut guard = match self.current.write() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *guard = fresh;
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(error = %err, "recreating the kafka producer failed"),
        }
    }
}

struct GaugeGuard<'a>(&'a Metrics, i64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight_bytes.sub(self.1);
    }
}

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

fn message_id_of(raw: &str) -> Value {
    serde_json::from_str::<Value>(raw)
        .ok()
        .and_then(|v| v.get("messageId").cloned())
        .unwrap_or(Value::Null)
}

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

fn dlq_record<'t>(
    records: &mut Records<'t>,
    topic: &'t str,
    raw: &str,
    rej: &Rejection,
    meta: &RequestMeta<'_>,
    ep: Endpoint,
) {
    // The message is embedded as JSON, one level deeper than it was; a message nested
    // close to serde_json's limit (128) would make the record unreadable to readers using
    // the default limit, so such a message (and unparsable text) is kept as a string.
    let original = serde_json::from_str::<Value>(raw)
        .ok()
        .filter(|v| depth(v) <= MAX_EMBEDDED_DEPTH)
        .unwrap_or_else(|| Value::String(raw.to_string()));
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

fn client_ip(headers: &HeaderMap, peer: SocketAddr, trusted: Option<&str>) -> Option<String> {
    trusted
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
        .or_else(|| Some(peer.ip().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_honours_only_the_trusted_header() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        assert_eq!(
            client_ip(&h, peer, Some("x-forwarded-for")).unwrap(),
            "203.0.113.9"
        );
        assert_eq!(client_ip(&h, peer, None).unwrap(), "10.0.0.1");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(
            client_ip(&h, peer, Some("x-forwarded-for")).unwrap(),
            "10.0.0.1"
        );
    }

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
