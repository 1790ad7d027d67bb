//! Per-write-key rate limiting (`collector.rate_limit_per_key`), on the real broker.
//!
//! With a limit of 2 requests/s (burst 4), a burst of requests with one key gets some
//! `429` with `Retry-After` and a JSON error body, while another key is unaffected; a
//! `429`'d request produces nothing (neither its valid message to the raw topic nor its
//! invalid one to the DLQ), so the topics hold exactly what the `200`s accepted; after
//! waiting `Retry-After` the throttled key is served again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use touchstream_core::config::{Config, SourceConfig};
use touchstream_tests::{self as support, CollectorHandle};

const HOT_KEY: &str = "rl-hot-key";
const CALM_KEY: &str = "rl-calm-key";
const BURST: usize = 20;

/// One request: a valid message with this id plus an invalid one (to the DLQ if served).
async fn send(http: &reqwest::Client, base: &str, key: &str, id: &str) -> reqwest::Response {
    http.post(format!("{base}/v1/batch"))
        .basic_auth(key, Some(""))
        .json(&json!({"batch": [
            {"type": "track", "event": "Product Viewed", "anonymousId": "a-rl", "messageId": id},
            {"type": "track", "anonymousId": "a-rl", "messageId": format!("{id}-invalid")},
        ]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the collector answers")
}

#[tokio::test]
async fn one_key_over_its_rate_gets_429_and_produces_nothing() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = Config {
        kafka: support::kafka_config("ratelimit"),
        ..Config::default()
    };
    config.collector.rate_limit_per_key = 2;
    config.collector.sources = vec![
        SourceConfig::new("hot", HOT_KEY, "web"),
        SourceConfig::new("calm", CALM_KEY, "web"),
    ];
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let c = CollectorHandle::start(config.clone()).await;
    let http = reqwest::Client::new();

    // A burst with one key, as fast as the collector answers.
    let started = Instant::now();
    let mut served = BTreeSet::new();
    let mut throttled = 0;
    let mut retry_after_secs = 0;
    for i in 0..BURST {
        let id = format!("hot-{i}");
        let r = send(&http, &c.base, HOT_KEY, &id).await;
        match r.status().as_u16() {
            200 => {
                let body: Value = r.json().await.expect("json");
                assert_eq!(body["accepted"], 1, "{body}");
                served.insert(id);
            }
            429 => {
                let retry: u64 = r
                    .headers()
                    .get("retry-after")
                    .expect("429 carries Retry-After")
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("Retry-After in seconds");
                assert!(retry >= 1, "Retry-After {retry}");
                retry_after_secs = retry_after_secs.max(retry);
                let body: Value = r.json().await.expect("429 has a JSON body");
                assert_eq!(body["success"], false, "{body}");
                assert_eq!(body["retryable"], true, "{body}");
                assert!(body["error"].as_str().is_some(), "{body}");
                throttled += 1;
            }
            other => panic!("request {i}: unexpected status {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Burst of 4, then 2 per second.
    let allowed = 4 + (elapsed * 2.0).ceil() as usize;
    assert!(
        !served.is_empty() && served.len() <= allowed,
        "{} served in {elapsed:.2}s, at most {allowed} allowed",
        served.len()
    );
    assert!(throttled > 0, "no 429 in a burst of {BURST}");
    assert_eq!(served.len() + throttled, BURST);

    // Another key has its own budget.
    for i in 0..3 {
        let id = format!("calm-{i}");
        let r = send(&http, &c.base, CALM_KEY, &id).await;
        assert_eq!(r.status(), 200, "the other key is not throttled");
        served.insert(id);
    }

    // After Retry-After the hot key is served again.
    tokio::time::sleep(Duration::from_secs(retry_after_secs)).await;
    let r = send(&http, &c.base, HOT_KEY, "hot-after-wait").await;
    assert_eq!(r.status(), 200, "served again after Retry-After");
    served.insert("hot-after-wait".into());

    // The topics hold exactly what the 200s accepted: nothing from a 429.
    let raw: BTreeSet<String> = support::raw_touchpoints(&config)
        .await
        .into_iter()
        .map(|t| {
            // The event id is the source and the messageId (README "Event ids and retries").
            let prefix = format!("{}:", t.source);
            t.event_id
                .strip_prefix(&prefix)
                .expect("scoped id")
                .to_string()
        })
        .collect();
    assert_eq!(raw, served, "raw records are exactly the served requests'");
    let dlq: BTreeSet<String> = support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.dlq_topic,
        Duration::from_secs(2),
    )
    .await
    .into_iter()
    .map(|(_, v)| {
        let doc: Value = serde_json::from_slice(&v).expect("json");
        doc["message"]["messageId"]
            .as_str()
            .expect("messageId")
            .trim_end_matches("-invalid")
            .to_string()
    })
    .collect();
    assert_eq!(dlq, served, "DLQ records are exactly the served requests'");

    let m = http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains(&format!(
            r#"touchstream_collector_requests_total{{endpoint="batch",status="429"}} {throttled}"#
        )),
        "{m}"
    );
    c.stop().await;
}
