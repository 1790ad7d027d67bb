//! The HTTP API over a [`MemorySink`], without a broker: auth, limits, validation, the
//! answers and what is published for each. The broker tests in `tests/` prove the same
//! answers against Kafka, and durability.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use touchstream_core::config::SourceConfig;
use touchstream_core::{avro, Config, MessageType};
use tower::ServiceExt as _;

use super::{Collector, CollectorError};
use crate::metrics::Metrics;
use crate::sink::{MemorySink, PublishedRecord, SinkError};

const KEY: &str = "ut-web-key";
const CRM_KEY: &str = "ut-crm-key";

struct Harness {
    collector: Collector<MemorySink>,
    app: Router,
    sink: MemorySink,
    config: Config,
}

/// A collector over a fresh [`MemorySink`], with two sources, a CORS origin and an alias.
fn harness(adjust: impl FnOnce(&mut Config)) -> Harness {
    let mut config = Config::default();
    config.collector.sources = vec![
        SourceConfig::new("web", KEY, "web"),
        SourceConfig::new("crm", CRM_KEY, "call_center"),
    ];
    config.collector.cors_origins = vec!["https://shop.example".into()];
    config.collector.route_aliases = [("/t/b".to_string(), "/v1/batch".to_string())].into();
    adjust(&mut config);
    let sink = MemorySink::new();
    let metrics = Arc::new(Metrics::new().unwrap());
    let collector = Collector::new(&config, sink.clone(), metrics).unwrap();
    let app = collector
        .router()
        .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    Harness {
        collector,
        app,
        sink,
        config,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Harness {
    /// `/readyz` until it answers `status` (the background check catches up), at most 5 s.
    async fn readyz_until(&self, status: StatusCode) -> Answer {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let a = self.get("/readyz").await;
            if a.status == status || std::time::Instant::now() > deadline {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn call(&self, req: Request<Body>) -> Answer {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, path: &str, key: Option<&str>, body: impl Into<Body>) -> Answer {
        self.call(post(path, key).body(body.into()).unwrap()).await
    }

    /// One valid event to `/v1/batch` with the web key.
    async fn post_one(&self) -> Answer {
        self.post("/v1/batch", Some(KEY), one_event().to_string())
            .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    fn raw(&self) -> Vec<PublishedRecord> {
        self.sink.records_in(&self.config.kafka.raw_topic)
    }

    fn dlq(&self) -> Vec<Value> {
        self.sink
            .records_in(&self.config.kafka.dlq_topic)
            .iter()
            .map(|r| serde_json::from_slice(&r.payload).unwrap())
            .collect()
    }
}

fn post(path: &str, key: Option<&str>) -> axum::http::request::Builder {
    let b = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    match key {
        Some(k) => b.header(header::AUTHORIZATION, basic(k)),
        None => b,
    }
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn one_event() -> Value {
    json!({"batch": [{"type": "track", "event": "E", "anonymousId": "a", "messageId": "e-1"}]})
}

/// A retryable 503 with this error and `Retry-After`.
fn unavailable(a: &Answer, error: &str, retry_after: &str) {
    refused(a, 503, error, true);
    assert_eq!(a.headers[header::RETRY_AFTER], retry_after);
}

fn refused(a: &Answer, status: u16, error: &str, retryable: bool) {
    assert_eq!(a.status.as_u16(), status, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"success": false, "error": error, "retryable": retryable})
    );
}

#[tokio::test]
async fn mixed_batch_publishes_valid_to_raw_and_invalid_to_dlq() {
    let h = harness(|_| {});
    let body = json!({
        "sentAt": "2026-01-01T10:00:05.000Z",
        "batch": [
            {"type": "track", "event": "Product Viewed", "messageId": "m-1", "anonymousId": "anon-1",
             "timestamp": "2026-01-01T10:00:00.000Z"},
            {"type": "track", "messageId": "m-bad-1", "anonymousId": "anon-1"},
            {"type": "page", "name": "Checkout", "messageId": "m-2", "userId": "user-7"},
            {"type": "identify", "messageId": "m-bad-2", "userId": "undefined"},
            {"type": "identify", "messageId": "m-3", "anonymousId": "anon-1", "userId": "user-7"}
        ]
    });
    let req = post("/v1/batch", Some(KEY))
        .header(header::USER_AGENT, "ut-agent")
        .body(Body::from(body.to_string()))
        .unwrap();
    let a = h.call(req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["success"], true);
    assert_eq!(a.body["accepted"], 3);
    let rejected = a.body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[0]["messageId"], "m-bad-1");
    assert_eq!(rejected[0]["reason"], "missing_event");
    assert!(rejected[0]["detail"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    assert_eq!(rejected[1]["index"], 3);
    assert_eq!(rejected[1]["messageId"], "m-bad-2");
    assert_eq!(rejected[1]["reason"], "placeholder_id");

    let raw = h.raw();
    let keyed: Vec<(String, String)> = raw
        .iter()
        .map(|r| {
            let tp = avro::decode(&r.payload).unwrap();
            (
                String::from_utf8(r.key.clone().unwrap()).unwrap(),
                tp.event_id,
            )
        })
        .collect();
    assert_eq!(
        keyed,
        [
            ("anon-1".to_string(), "web:m-1".to_string()),
            ("user-7".to_string(), "web:m-2".to_string()),
            ("anon-1".to_string(), "web:m-3".to_string()),
        ]
    );
    let t1 = avro::decode(&raw[0].payload).unwrap();
    assert_eq!(t1.message_type, MessageType::Track);
    assert_eq!(t1.source, "web");
    assert_eq!(t1.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(t1.user_agent.as_deref(), Some("ut-agent"));
    assert_eq!(
        t1.event_time_ms,
        t1.received_at_ms - 5_000,
        "skew corrected"
    );

    let dlq_records = h.sink.records_in(&h.config.kafka.dlq_topic);
    assert!(
        dlq_records.iter().all(|r| r.key.is_none()),
        "DLQ is unkeyed"
    );
    let dlq = h.dlq();
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0]["reason"], "missing_event");
    assert_eq!(dlq[0]["source"], "web");
    assert_eq!(dlq[0]["endpoint"], "batch");
    assert_eq!(dlq[0]["message"], body["batch"][1], "original message kept");
    assert_eq!(dlq[0]["detail"], rejected[0]["detail"]);
    assert_eq!(dlq[0]["received_at_ms"], t1.received_at_ms);
    assert!(dlq[0]["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(dlq[1]["reason"], "placeholder_id");
    assert_eq!(dlq[1]["message"], body["batch"][3]);
}

#[tokio::test]
async fn properties_breaking_the_catalog_schema_are_invalid_property() {
    let catalog =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/catalog.toml");
    let h = harness(|c| {
        c.collector.catalog_path = Some(catalog);
        c.collector.max_event_age_days = 0;
    });
    let t = "2026-01-01T10:00:00.000Z";
    let body = json!({"batch": [
        {"type": "track", "event": "NPS Submitted", "messageId": "n1", "userId": "u", "timestamp": t,
         "properties": {"score": 9, "about_event": "Order Delivered"}},
        {"type": "track", "event": "Survey Completed", "messageId": "n2", "userId": "u", "timestamp": t,
         "properties": {"scale": "csat", "score": 6}},
        {"type": "track", "event": "Footfall Counted", "messageId": "n3", "anonymousId": "counter", "timestamp": t,
         "properties": {"store_id": "s", "count": 4, "period_start": t, "period_secs": 3600}},
        {"type": "track", "event": "Footfall Counted", "messageId": "n4", "anonymousId": "counter", "timestamp": t,
         "properties": {"store_id": "s", "count": -4, "period_start": t, "period_secs": 3600}},
        // Not a track event: the schemas are for track events only.
        {"type": "page", "name": "Survey Completed", "messageId": "n5", "userId": "u", "timestamp": t}
    ]});
    let a = h.post("/v1/batch", Some(KEY), body.to_string()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["accepted"], 3, "{}", a.body);
    let rejected = a.body["rejected"].as_array().unwrap();
    let got: Vec<(i64, &str, &str)> = rejected
        .iter()
        .map(|r| {
            (
                r["index"].as_i64().unwrap(),
                r["reason"].as_str().unwrap(),
                r["detail"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                1,
                "invalid_property",
                "properties.score must be between 1 and 5 on the csat scale"
            ),
            (3, "invalid_property", "properties.count must be at least 0"),
        ]
    );
    let dlq = h.dlq();
    assert_eq!(dlq.len(), 2);
    assert!(dlq.iter().all(|d| d["reason"] == "invalid_property"));
    assert_eq!(dlq[1]["message"], body["batch"][3]);
    // Without a catalog nothing is checked.
    let plain = harness(|c| c.collector.max_event_age_days = 0);
    let a = plain.post("/v1/batch", Some(KEY), body.to_string()).await;
    assert_eq!(a.body["accepted"], 5, "{}", a.body);
}

#[tokio::test]
async fn write_key_in_header_or_body_else_401() {
    let h = harness(|_| {});
    let unauthorized = "missing or unknown write key";
    refused(
        &h.post("/v1/batch", None, one_event().to_string()).await,
        401,
        unauthorized,
        false,
    );
    refused(
        &h.post("/v1/batch", Some("wrong"), one_event().to_string())
            .await,
        401,
        unauthorized,
        false,
    );
    let wrong_in_body = json!({"writeKey": "wrong", "batch": one_event()["batch"]});
    refused(
        &h.post("/v1/batch", None, wrong_in_body.to_string()).await,
        401,
        unauthorized,
        false,
    );
    // A wrong header key is refused before the body is read: an oversized body is 401.
    let huge = "x".repeat(600 * 1024);
    refused(
        &h.post("/v1/batch", Some("wrong"), huge).await,
        401,
        unauthorized,
        false,
    );
    assert!(
        h.sink.records().is_empty(),
        "a refused request publishes nothing"
    );

    // sendBeacon: text/plain, the key in the body, on a first-party alias.
    let beacon = json!({"writeKey": KEY, "batch": one_event()["batch"]});
    let req = Request::post("/t/b")
        .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8")
        .body(Body::from(beacon.to_string()))
        .unwrap();
    assert_eq!(h.call(req).await.status, StatusCode::OK);
    // A single-message endpoint with the other source's key: its default channel applies.
    let a = h
        .post(
            "/v1/track",
            Some(CRM_KEY),
            json!({"event": "Complaint Filed", "userId": "u-1", "messageId": "c-1"}).to_string(),
        )
        .await;
    assert_eq!(
        a.body,
        json!({"success": true, "accepted": 1, "rejected": []})
    );
    let tps: Vec<_> = h
        .raw()
        .iter()
        .map(|r| avro::decode(&r.payload).unwrap())
        .collect();
    assert_eq!(tps.len(), 2);
    assert_eq!(
        (tps[0].source.as_str(), tps[0].channel.as_str()),
        ("web", "web")
    );
    assert_eq!(
        (
            tps[1].source.as_str(),
            tps[1].channel.as_str(),
            tps[1].message_type
        ),
        ("crm", "call_center", MessageType::Track)
    );
}

#[tokio::test]
async fn limits_answer_413_400_415_and_publish_nothing() {
    let h = harness(|_| {});
    let huge = format!(
        r#"{{"batch":[{{"type":"track","event":"E","anonymousId":"a","properties":{{"x":"{}"}}}}]}}"#,
        "y".repeat(600 * 1024)
    );
    let a = h.post("/v1/batch", Some(KEY), huge.clone()).await;
    refused(&a, 413, "request body over 512000 bytes", false);
    assert_eq!(a.headers[header::CONNECTION], "close");

    let bomb = gzip(huge.as_bytes());
    let req = post("/v1/batch", Some(KEY))
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(bomb))
        .unwrap();
    refused(
        &h.call(req).await,
        413,
        "request body over 512000 bytes after gzip inflation",
        false,
    );

    let big_msg = json!({"batch": [{"type": "track", "event": "E", "anonymousId": "a", "properties": {"x": "z".repeat(33 * 1024)}}]});
    let a = h.post("/v1/batch", Some(KEY), big_msg.to_string()).await;
    refused(&a, 413, "message 0 is over 32768 bytes", false);

    let many: Vec<Value> = (0..2501)
        .map(|_| json!({"type": "page", "anonymousId": "a"}))
        .collect();
    let a = h
        .post("/v1/batch", Some(KEY), json!({"batch": many}).to_string())
        .await;
    refused(
        &a,
        413,
        "2501 messages in one batch; the limit is 2500",
        false,
    );

    let a = h.post("/v1/batch", Some(KEY), "{oops").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["success"], false);
    assert!(a.body["error"]
        .as_str()
        .unwrap()
        .starts_with("body must be {\"batch\": [...]}: "));

    let a = h.post("/v1/track", Some(KEY), vec![0xff, 0xfe]).await;
    refused(&a, 400, "body is not UTF-8", false);

    let req = post("/v1/batch", Some(KEY))
        .header(header::CONTENT_ENCODING, "br")
        .body(Body::from(one_event().to_string()))
        .unwrap();
    refused(
        &h.call(req).await,
        415,
        "unsupported content encoding \"br\"; send gzip or none",
        false,
    );
    assert!(
        h.sink.records().is_empty(),
        "refused requests publish nothing"
    );

    let metrics = h.get("/metrics").await.body;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains(r#"touchstream_collector_requests_total{endpoint="batch",status="413"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"touchstream_collector_requests_total{endpoint="track",status="400"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn gzip_body_is_inflated() {
    let h = harness(|_| {});
    let req = post("/v1/batch", Some(KEY))
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(gzip(one_event().to_string().as_bytes())))
        .unwrap();
    let a = h.call(req).await;
    assert_eq!(
        a.body,
        json!({"success": true, "accepted": 1, "rejected": []})
    );
    let raw = h.raw();
    assert_eq!(raw.len(), 1);
    assert_eq!(avro::decode(&raw[0].payload).unwrap().event_id, "web:e-1");
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_and_publishes_nothing() {
    // 1 request/s, burst 2: the third request in a row is over.
    let h = harness(|c| c.collector.rate_limit_per_key = 1);
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(h.post_one().await);
    }
    assert_eq!(answers[0].status, StatusCode::OK);
    assert_eq!(answers[1].status, StatusCode::OK);
    let a = &answers[2];
    refused(a, 429, "rate limit exceeded for this write key", true);
    let retry: u64 = a.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(h.raw().len(), 2, "the 429'd request published nothing");
    // Another key has its own budget.
    let other = h
        .post("/v1/batch", Some(CRM_KEY), one_event().to_string())
        .await;
    assert_eq!(other.status, StatusCode::OK);
}

#[tokio::test]
async fn a_failing_sink_gives_503_with_retry_after() {
    let h = harness(|c| c.collector.retry_after_secs = 3);
    h.sink
        .fail_with(Some(SinkError::Timeout(Duration::from_millis(2000))));
    let a = h.post_one().await;
    unavailable(&a, "kafka did not acknowledge within 2s; retry later", "3");
    h.sink.fail_with(Some(SinkError::QueueFull));
    let a = h
        .post(
            "/v1/track",
            Some(KEY),
            json!({"event": "E", "userId": "u"}).to_string(),
        )
        .await;
    unavailable(&a, "kafka producer queue is full; retry later", "3");
    assert!(h.sink.records().is_empty());

    h.sink.fail_with(None);
    let a = h.post_one().await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.raw().len(), 1);
}

#[tokio::test]
async fn in_flight_byte_cap_gives_503() {
    let h = harness(|c| c.collector.max_in_flight_bytes = 16);
    let a = h.post_one().await;
    unavailable(
        &a,
        "collector is at its in-flight byte limit; retry later",
        "5",
    );
    assert!(h.sink.records().is_empty());
    let small = h.post("/v1/batch", Some(KEY), r#"{"batch":[]}"#).await;
    assert_eq!(
        small.body,
        json!({"success": true, "accepted": 0, "rejected": []})
    );
}

#[tokio::test]
async fn readyz_follows_the_sink_and_shutdown() {
    let h = harness(|c| c.collector.readiness_interval_ms = 20);
    let healthz = h.get("/healthz").await;
    assert_eq!(healthz.body, json!({"status": "ok"}));
    // The first probe starts the first check and does not wait for it.
    let a = h.get("/readyz").await;
    assert_eq!(
        (a.status, a.body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "reason": "kafka not checked yet"})
        )
    );
    let a = h.readyz_until(StatusCode::OK).await;
    assert_eq!(a.body, json!({"ready": true}));
    h.sink.set_ready(false);
    let a = h.readyz_until(StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        a.body,
        json!({"ready": false, "reason": "kafka unreachable"})
    );
    h.sink.set_ready(true);
    h.collector.shut_down();
    let a = h.get("/readyz").await;
    assert_eq!(
        (a.status, a.body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "reason": "shutting down"})
        )
    );
    let a = h.post_one().await;
    unavailable(&a, "collector is shutting down; retry later", "5");
    assert!(h.sink.records().is_empty());
}

#[tokio::test]
async fn cors_preflight_for_allowed_origins_only() {
    let h = harness(|_| {});
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/batch")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
            .body(Body::empty())
            .unwrap()
    };
    let a = h.call(preflight("https://shop.example")).await;
    assert!(a.status.is_success());
    assert_eq!(
        a.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://shop.example"
    );
    let a = h.call(preflight("https://evil.example")).await;
    assert!(a.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[test]
fn an_alias_to_an_unknown_route_is_refused() {
    let mut config = Config::default();
    config.collector.allow_demo_keys = true;
    config.collector.route_aliases = [("/x".to_string(), "/v1/nope".to_string())].into();
    let metrics = Arc::new(Metrics::new().unwrap());
    let err = Collector::new(&config, MemorySink::new(), metrics)
        .err()
        .expect("unknown target");
    assert!(matches!(err, CollectorError::Alias(_)), "{err}");
}

#[test]
fn the_demo_keys_are_refused_unless_allowed() {
    let metrics = Arc::new(Metrics::new().unwrap());
    let mut config = Config::default();
    let err = Collector::new(&config, MemorySink::new(), metrics.clone())
        .err()
        .expect("the default config holds the demo keys");
    assert!(matches!(err, CollectorError::DemoKeys(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("--allow-demo-keys") && text.contains("web, call-center"),
        "{text}"
    );
    // One demo key among real ones is enough to refuse.
    config.collector.sources[0].write_key = "a-real-key".into();
    assert!(Collector::new(&config, MemorySink::new(), metrics.clone()).is_err());
    config.collector.allow_demo_keys = true;
    assert!(Collector::new(&config, MemorySink::new(), metrics).is_ok());
}

#[test]
fn a_source_that_hashes_without_a_key_is_refused() {
    let metrics = Arc::new(Metrics::new().unwrap());
    let mut config = Config::default();
    let mut source = SourceConfig::new("web", KEY, "web");
    source.ip = touchstream_core::config::IpMode::Hash;
    config.collector.sources = vec![source];
    let err = Collector::new(&config, MemorySink::new(), metrics.clone())
        .err()
        .expect("hash without a key");
    assert!(matches!(err, CollectorError::Privacy(_)), "{err}");
    assert!(err.to_string().contains("privacy_hash_key"), "{err}");
    config.collector.privacy_hash_key = "0123456789abcdef0123".into();
    assert!(Collector::new(&config, MemorySink::new(), metrics).is_ok());
}

#[tokio::test]
async fn a_sources_privacy_options_apply_before_publishing() {
    use touchstream_core::config::{IpMode, UserAgentMode};
    let h = harness(|c| {
        let web = &mut c.collector.sources[0];
        web.ip = IpMode::Truncate;
        web.user_agent = UserAgentMode::Drop;
        web.pii_keys = vec!["email".into()];
        c.collector.privacy_hash_key = "0123456789abcdef0123".into();
    });
    let body = json!({"batch": [
        {"type": "identify", "messageId": "m-1", "anonymousId": "a", "traits": {"email": "a@b.example"},
         "context": {"ip": "198.51.100.7", "userAgent": "ctx-agent"}},
        {"type": "track", "messageId": "m-2", "anonymousId": "a", "properties": {"email": "a@b.example"}}
    ]});
    let req = post("/v1/batch", Some(KEY))
        .header(header::USER_AGENT, "ut-agent")
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(h.call(req).await.status, StatusCode::OK);
    let raw = h.raw();
    assert_eq!(raw.len(), 1);
    let tp = avro::decode(&raw[0].payload).unwrap();
    assert_eq!(tp.ip.as_deref(), Some("127.0.0.0"));
    assert_eq!(tp.user_agent, None);
    let traits: Value = serde_json::from_str(&tp.traits).unwrap();
    let email = traits["email"].as_str().unwrap();
    assert_eq!(email.len(), 64, "{traits}");
    let context: Value = serde_json::from_str(&tp.context).unwrap();
    assert_eq!(context, json!({"ip": "198.51.100.0"}));
    let dlq = h.dlq();
    assert_eq!(dlq[0]["message"]["properties"]["email"], email, "same hash");
    // The other source keeps everything.
    let req = post("/v1/batch", Some(CRM_KEY))
        .header(header::USER_AGENT, "ut-agent")
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(h.call(req).await.status, StatusCode::OK);
    let tp = avro::decode(&h.raw()[1].payload).unwrap();
    assert_eq!(tp.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(tp.user_agent.as_deref(), Some("ctx-agent"));
    assert!(tp.traits.contains("a@b.example"));
}
