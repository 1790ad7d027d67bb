//! Pre-authentication work is bounded (README "Auth", "Limits"), on the real broker.
//!
//! - A body's bytes count against `max_in_flight_bytes` while it arrives: a client that
//!   sent 80 KB of a 90 KB body and stalls holds 80 KB of the budget, so with a 100 KB
//!   budget another 30 KB request gets `503`; once the stalled client leaves it is served.
//! - A request without its key in the `Authorization` header (the key in the body, or
//!   none) is read and inflated only up to `max_unauthenticated_bytes`: a small gzip body
//!   that inflates to 300 KB, and a chunked 100 KB body, both carrying a valid body
//!   `writeKey`, get `413` and produce nothing; a beacon-sized body-key request is served.
//! - A wrong key in the header is refused before the body is read.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use touchstream_core::config::{Config, SourceConfig};
use touchstream_tests::{self as support, CollectorHandle};

const KEY: &str = "preauth-key";

fn config(test: &str) -> Config {
    let mut config = Config {
        kafka: support::kafka_config(test),
        ..Config::default()
    };
    config.collector.sources = vec![SourceConfig::new("web", KEY, "web")];
    config
}

fn basic(key: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

/// A batch of one valid message padded with a property of `pad` bytes.
fn batch(id: &str, pad: usize, body_key: Option<&str>) -> Vec<u8> {
    let mut doc = json!({"batch": [{
        "type": "track", "event": "Product Viewed", "anonymousId": "a-pre", "messageId": id,
    }]});
    if pad > 0 {
        // Padding outside the message keeps it under the 32 KiB message limit.
        doc["context"] = json!({"pad": "x".repeat(pad)});
    }
    if let Some(k) = body_key {
        doc["writeKey"] = json!(k);
    }
    serde_json::to_vec(&doc).expect("json")
}

async fn in_flight_bytes(base: &str) -> i64 {
    let m = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    m.lines()
        .find_map(|l| l.strip_prefix("touchstream_collector_in_flight_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Poll the in-flight gauge until `pred` holds (at most 5 s); its last value.
async fn in_flight_until(base: &str, pred: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = in_flight_bytes(base).await;
        if pred(v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(base: &str, body: Vec<u8>, key: Option<&str>, gzip: bool) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/batch"))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(30));
    if let Some(k) = key {
        req = req.header("authorization", basic(k));
    }
    if gzip {
        req = req.header("content-encoding", "gzip");
    }
    req.body(body).send().await.expect("the collector answers")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

async fn raw_ids(config: &Config) -> Vec<String> {
    let mut ids: Vec<String> = support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.raw_topic,
        Duration::from_secs(2),
    )
    .await
    .into_iter()
    .map(|(_, v)| touchstream_core::avro::decode(&v).expect("avro").event_id)
    .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn body_bytes_count_against_the_in_flight_budget_while_they_arrive() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = config("preauth-inflight");
    config.collector.max_in_flight_bytes = 100_000;
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let c = CollectorHandle::start(config.clone()).await;
    let addr = c.base.trim_start_matches("http://").to_string();

    // 80 KB of a declared 90 KB body, then silence.
    let mut stalled = TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 90000\r\n\r\n",
        basic(KEY)
    );
    stalled.write_all(head.as_bytes()).await.expect("head");
    stalled
        .write_all(&vec![b' '; 80_000])
        .await
        .expect("partial body");
    let held = in_flight_until(&c.base, |v| v >= 80_000).await;
    assert!(
        held >= 80_000,
        "a stalled 80 KB body holds {held} bytes of the budget"
    );

    // 30 KB more does not fit in the 100 KB budget.
    let r = post(&c.base, batch("while-held", 30_000, None), Some(KEY), false).await;
    assert_eq!(
        r.status(),
        503,
        "over the in-flight budget while a body arrives"
    );
    assert!(r.headers().get("retry-after").is_some());

    // The stalled client leaves: its bytes are released and the request is served.
    drop(stalled);
    let left = in_flight_until(&c.base, |v| v == 0).await;
    assert_eq!(left, 0, "released when the stalled request ends");
    let r = post(
        &c.base,
        batch("after-release", 30_000, None),
        Some(KEY),
        false,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        raw_ids(&config).await,
        vec!["web:after-release".to_string()]
    );
    c.stop().await;
}

#[tokio::test]
async fn a_request_without_a_header_key_costs_little() {
    support::require_port("Kafka", &support::kafka_brokers());
    let config = config("preauth-cap");
    assert_eq!(config.collector.max_unauthenticated_bytes, 65_536);
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let c = CollectorHandle::start(config.clone()).await;
    let addr = c.base.trim_start_matches("http://").to_string();

    // 300 KB inflated from a small gzip body, valid key in the body: refused.
    let big = batch("gzip-300k", 300_000, Some(KEY));
    let packed = gzip(&big);
    assert!(packed.len() < 10_000, "{} bytes compressed", packed.len());
    let r = post(&c.base, packed, None, true).await;
    assert_eq!(r.status(), 413);
    let doc: Value = r.json().await.expect("json");
    assert!(
        doc["error"].as_str().unwrap().contains("Authorization"),
        "{doc}"
    );

    // 100 KB sent chunked (no Content-Length), valid key in the body: cut off at 64 KiB.
    let body = batch("chunked-100k", 100_000, Some(KEY));
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("head");
    for part in body.chunks(8192) {
        let chunk = [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat();
        if s.write_all(&chunk).await.is_err() {
            break; // the collector answered and closed: fine
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A beacon-sized request with its key in the body is served.
    let r = post(&c.base, batch("beacon", 2_000, Some(KEY)), None, false).await;
    assert_eq!(r.status(), 200);

    // A wrong key in the header is refused before the body: no body byte is ever sent.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 400000\r\n\r\n",
        basic("wrong-key")
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered without the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    assert_eq!(raw_ids(&config).await, vec!["web:beacon".to_string()]);
    c.stop().await;
}
