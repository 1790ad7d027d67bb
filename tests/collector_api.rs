//! The collector's HTTP API against the real local broker: what lands in
//! `touchpoints.raw` and `touchpoints.dlq`, auth, limits, encodings and CORS.

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use touchstream_core::config::{Config, SourceConfig};
use touchstream_core::{avro, MessageType, Touchpoint};
use touchstream_tests::{self as support, CollectorHandle};

const KEY: &str = "it-web-key";
const CRM_KEY: &str = "it-crm-key";

async fn collector(test: &str) -> (CollectorHandle, Config) {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = Config {
        kafka: support::kafka_config(test),
        ..Config::default()
    };
    config.collector.sources = vec![
        SourceConfig::new("web", KEY, "web"),
        SourceConfig::new("crm", CRM_KEY, "call_center"),
    ];
    config.collector.cors_origins = vec!["https://shop.example".into()];
    config.collector.route_aliases = [("/t/b".to_string(), "/v1/batch".to_string())].into();
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    (CollectorHandle::start(config.clone()).await, config)
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

async fn raw_touchpoints(config: &Config) -> Vec<(String, Touchpoint)> {
    support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.raw_topic,
        Duration::from_secs(2),
    )
    .await
    .into_iter()
    .map(|(k, v)| {
        (
            String::from_utf8(k.expect("raw records are keyed")).expect("utf8 key"),
            avro::decode(&v).expect("decodable Avro"),
        )
    })
    .collect()
}

#[tokio::test]
async fn mixed_batch_lands_valid_in_raw_and_invalid_in_dlq() {
    let (c, config) = collector("mixed").await;
    let body = json!({
        "sentAt": "2026-01-01T10:00:05.000Z",
        "context": {"library": {"name": "analytics-node", "version": "2.1.0"}},
        "batch": [
            {"type": "track", "event": "Product Viewed", "messageId": "m-1", "anonymousId": "anon-1",
             "integrations": {"All": true}, "writeKey": "must-not-be-stored",
             "timestamp": "2026-01-01T10:00:00.000Z", "properties": {"sku": "SKU-9", "price": 12.5}},
            {"type": "track", "messageId": "m-bad-1", "anonymousId": "anon-1"},
            {"type": "page", "name": "Checkout", "messageId": "m-2", "userId": "user-7",
             "channel": "browser", "context": {"userAgent": "Mozilla/5.0 test"}},
            {"type": "identify", "messageId": "m-bad-2", "userId": "undefined"},
            {"type": "identify", "messageId": "m-3", "anonymousId": "anon-1", "userId": "user-7",
             "traits": {"email_domain": "example.com"}}
        ]
    });
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let resp = http()
        .post(format!("{}/v1/batch", c.base))
        .header("authorization", basic(KEY))
        .header("user-agent", "it-agent")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.expect("json");
    assert_eq!(r["accepted"], 3);
    let rejected = r["rejected"].as_array().expect("rejected list");
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[0]["reason"], "missing_event");
    assert_eq!(rejected[1]["index"], 3);
    assert_eq!(rejected[1]["reason"], "placeholder_id");

    let mut raw = raw_touchpoints(&config).await;
    raw.sort_by(|a, b| a.1.event_id.cmp(&b.1.event_id));
    assert_eq!(raw.len(), 3, "{raw:?}");
    let (k1, t1) = &raw[0];
    assert_eq!(k1, "anon-1");
    assert_eq!(t1.event_id, "web:m-1");
    assert_eq!(t1.message_type, MessageType::Track);
    assert_eq!(t1.event.as_deref(), Some("Product Viewed"));
    assert_eq!(t1.anonymous_id.as_deref(), Some("anon-1"));
    assert_eq!(t1.user_id, None);
    assert_eq!(t1.source, "web");
    assert_eq!(t1.channel, "web");
    assert_eq!(t1.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(t1.user_agent.as_deref(), Some("it-agent"));
    let props: Value = serde_json::from_str(&t1.properties).expect("props json");
    assert_eq!(props, json!({"sku": "SKU-9", "price": 12.5}));
    let ctx: Value = serde_json::from_str(&t1.context).expect("ctx json");
    assert_eq!(
        ctx["library"]["name"], "analytics-node",
        "batch context merged"
    );
    // Skew correction: sent 5 s after the event, so the event is 5 s before receipt.
    assert_eq!(t1.timestamp_ms, Some(1_767_261_600_000));
    assert_eq!(t1.sent_at_ms, Some(1_767_261_605_000));
    assert_eq!(t1.event_time_ms, t1.received_at_ms - 5_000);
    assert!(t1.received_at_ms >= started);
    assert_eq!(
        t1.extra, r#"{"integrations":{"All":true}}"#,
        "unknown fields kept, writeKey not"
    );

    let (k2, t2) = &raw[1];
    assert_eq!(k2, "user-7", "no anonymousId: keyed by userId");
    assert_eq!(
        (t2.message_type, t2.event.as_deref()),
        (MessageType::Page, Some("Checkout"))
    );
    assert_eq!(t2.channel, "web", "Segment's browser channel maps to web");
    assert_eq!(t2.user_agent.as_deref(), Some("Mozilla/5.0 test"));
    assert_eq!(
        t2.event_time_ms, t2.received_at_ms,
        "no timestamp: receipt time"
    );

    let (k3, t3) = &raw[2];
    assert_eq!(k3, "anon-1");
    assert_eq!(t3.message_type, MessageType::Identify);
    assert_eq!(t3.user_id.as_deref(), Some("user-7"));
    assert_eq!(t3.traits, r#"{"email_domain":"example.com"}"#);

    let dlq = support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.dlq_topic,
        Duration::from_secs(2),
    )
    .await;
    let mut dlq: Vec<Value> = dlq
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).expect("dlq json"))
        .collect();
    dlq.sort_by_key(|d| {
        d["message"]["messageId"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0]["reason"], "missing_event");
    assert_eq!(dlq[0]["source"], "web");
    assert_eq!(dlq[0]["message"], body["batch"][1], "original message kept");
    assert!(dlq[0]["received_at"]
        .as_str()
        .expect("received_at")
        .ends_with('Z'));
    assert_eq!(dlq[1]["reason"], "placeholder_id");
    assert_eq!(dlq[1]["message"], body["batch"][3]);
    c.stop().await;
}

#[tokio::test]
async fn gzip_and_sendbeacon_text_plain_bodies_are_accepted() {
    let (c, config) = collector("encodings").await;
    let batch = json!({"batch": [{"type": "track", "event": "Cart Viewed", "messageId": "g-1", "anonymousId": "a-g"}]});
    let resp = http()
        .post(format!("{}/v1/batch", c.base))
        .header("authorization", basic(KEY))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(batch.to_string().as_bytes()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    // navigator.sendBeacon on page unload: text/plain, write key in the body, first-party alias.
    let beacon = json!({"writeKey": KEY, "batch": [{"type": "track", "event": "Cart Abandoned", "messageId": "b-1", "anonymousId": "a-g"}]});
    let resp = http()
        .post(format!("{}/t/b", c.base))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(beacon.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    // Single-message endpoint with the CRM source's key: its default channel applies.
    let resp = http()
        .post(format!("{}/v1/track", c.base))
        .header("authorization", basic(CRM_KEY))
        .json(&json!({"event": "Complaint Filed", "userId": "user-1", "messageId": "c-1"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);

    let mut got: Vec<(String, String, String)> = raw_touchpoints(&config)
        .await
        .into_iter()
        .map(|(_, t)| (t.event_id, t.event.unwrap_or_default(), t.channel))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "crm:c-1".into(),
                "Complaint Filed".into(),
                "call_center".into()
            ),
            ("web:b-1".into(), "Cart Abandoned".into(), "web".into()),
            ("web:g-1".into(), "Cart Viewed".into(), "web".into()),
        ]
    );
    c.stop().await;
}

#[tokio::test]
async fn auth_limits_and_cors() {
    let (c, config) = collector("limits").await;
    let one = json!({"batch": [{"type": "track", "event": "E", "anonymousId": "a"}]});
    let post = |path: &str| http().post(format!("{}{path}", c.base));

    let r = post("/v1/batch").json(&one).send().await.expect("req");
    assert_eq!(r.status(), 401, "no key");
    let e: Value = r.json().await.expect("json error body");
    assert_eq!(e["success"], false);
    let r = post("/v1/batch")
        .header("authorization", basic("wrong"))
        .json(&one)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401, "unknown key");
    let r = post("/v1/batch")
        .json(&json!({"writeKey": "wrong", "batch": one["batch"]}))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401, "unknown key in body");

    // Over 500 KiB on the wire.
    let huge = format!(
        r#"{{"batch":[{{"type":"track","event":"E","anonymousId":"a","properties":{{"x":"{}"}}}}]}}"#,
        "y".repeat(600 * 1024)
    );
    let r = post("/v1/batch")
        .header("authorization", basic(KEY))
        .body(huge.clone())
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 413);
    // The body may be left unread: the connection ends, and the answer says so.
    assert_eq!(
        r.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    // Small on the wire, over 500 KiB once inflated.
    let bomb = gzip(huge.as_bytes());
    assert!(bomb.len() < 10 * 1024);
    let r = post("/v1/batch")
        .header("authorization", basic(KEY))
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 413);
    // One message over 32 KiB.
    let big_msg = json!({"batch": [{"type": "track", "event": "E", "anonymousId": "a", "properties": {"x": "z".repeat(33 * 1024)}}]});
    let r = post("/v1/batch")
        .header("authorization", basic(KEY))
        .json(&big_msg)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 413);
    // More than 2,500 messages.
    let many: Vec<Value> = (0..2501)
        .map(|_| json!({"type": "page", "anonymousId": "a"}))
        .collect();
    let r = post("/v1/batch")
        .header("authorization", basic(KEY))
        .json(&json!({"batch": many}))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 413);
    // Malformed JSON.
    let r = post("/v1/batch")
        .header("authorization", basic(KEY))
        .body("{oops")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 400);

    // CORS preflight: allowed origin answered, others not.
    let r = http()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/batch", c.base))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let r = http()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/batch", c.base))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // None of the refused requests produced anything.
    let raw = support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.raw_topic,
        Duration::from_secs(1),
    )
    .await;
    assert!(
        raw.is_empty(),
        "refused requests produced {} records",
        raw.len()
    );
    let dlq = support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.dlq_topic,
        Duration::from_secs(1),
    )
    .await;
    assert!(dlq.is_empty());

    let h = http()
        .get(format!("{}/healthz", c.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(h.status(), 200);
    let ready = http()
        .get(format!("{}/readyz", c.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let m = http()
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains(r#"touchstream_collector_requests_total{endpoint="batch",status="401"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"touchstream_collector_requests_total{endpoint="batch",status="413"} 4"#),
        "{m}"
    );
    c.stop().await;
}
