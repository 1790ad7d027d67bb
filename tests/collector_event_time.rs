//! The event-time floor and maximum age (README "Time correction"), on the real broker.
//!
//! Live endpoints (`/v1/batch`, `/v1/track`) reject events dated before
//! `collector.event_time_floor` (default 2000-01-01) as `event_time_before_floor` and
//! events older than `collector.max_event_age_days` (default 30) as
//! `event_time_too_old`, like any other per-message validation error: listed by index
//! in the `200`, dead-lettered with the reason, counted by reason, while the rest of the
//! batch is accepted. `/v1/import` accepts history (60 days, 3 years) but not events
//! before the floor. The bound is on the skew-corrected event time, so a device whose
//! clock reset to 1970 but that sends `sentAt` from the same clock is accepted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use touchstream_collector::message::format_timestamp as iso;
use touchstream_core::config::{Config, SourceConfig};
use touchstream_tests::{self as support, CollectorHandle};

const KEY: &str = "evt-key";
const DAY: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn msg(id: &str, timestamp: i64, sent_at: Option<i64>) -> Value {
    let mut m = json!({"type": "track", "event": "Product Viewed", "anonymousId": "a-evt",
                       "messageId": id, "timestamp": iso(timestamp)});
    if let Some(s) = sent_at {
        m["sentAt"] = json!(iso(s));
    }
    m
}

async fn post(base: &str, path: &str, body: &Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .basic_auth(KEY, Some(""))
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the collector answers");
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.expect("json")
}

/// `(index, reason)` of a 200's rejections.
fn rejections(doc: &Value) -> Vec<(u64, String)> {
    doc["rejected"]
        .as_array()
        .expect("rejected list")
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().expect("index"),
                r["reason"].as_str().expect("reason").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn old_events_are_rejected_on_live_endpoints_and_history_goes_to_import() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = Config {
        kafka: support::kafka_config("eventtime"),
        ..Config::default()
    };
    config.collector.sources = vec![SourceConfig::new("web", KEY, "web")];
    assert_eq!(config.collector.event_time_floor, "2000-01-01");
    assert_eq!(config.collector.max_event_age_days, 30);
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let c = CollectorHandle::start(config.clone()).await;
    let now = now_ms();
    let y1999 = 946_684_800_000 - DAY; // 1999-12-31

    // /v1/batch: recent, before the floor, 60 days old, and a reset clock with sentAt.
    let doc = post(
        &c.base,
        "/v1/batch",
        &json!({"batch": [
            msg("b-recent", now - 3_600_000, None),
            msg("b-1999", y1999, None),
            msg("b-60d", now - 60 * DAY, None),
            msg("b-reset-clock", 5_000, Some(10_000)),
        ]}),
    )
    .await;
    assert_eq!(doc["accepted"], 2, "{doc}");
    assert_eq!(
        rejections(&doc),
        vec![
            (1, "event_time_before_floor".to_string()),
            (2, "event_time_too_old".to_string())
        ]
    );
    // /v1/track: one 60-day-old event.
    let doc = post(&c.base, "/v1/track", &msg("t-60d", now - 60 * DAY, None)).await;
    assert_eq!(doc["accepted"], 0);
    assert_eq!(
        rejections(&doc),
        vec![(0, "event_time_too_old".to_string())]
    );
    // /v1/import: history is accepted, the floor still holds.
    let doc = post(
        &c.base,
        "/v1/import",
        &json!({"batch": [
            msg("i-60d", now - 60 * DAY, None),
            msg("i-3y", now - 3 * 365 * DAY, None),
            msg("i-1999", y1999, None),
        ]}),
    )
    .await;
    assert_eq!(doc["accepted"], 2, "{doc}");
    assert_eq!(
        rejections(&doc),
        vec![(2, "event_time_before_floor".to_string())]
    );

    // The raw topic holds exactly the accepted events, the DLQ the rejected ones with
    // their reasons.
    let mut raw: Vec<String> = support::raw_touchpoints(&config)
        .await
        .into_iter()
        .map(|t| t.event_id)
        .collect();
    raw.sort();
    assert_eq!(
        raw,
        ["web:b-recent", "web:b-reset-clock", "web:i-3y", "web:i-60d"]
    );
    let dlq: BTreeMap<String, String> = support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.dlq_topic,
        Duration::from_secs(2),
    )
    .await
    .into_iter()
    .map(|(_, v)| {
        let d: Value = serde_json::from_slice(&v).expect("json");
        (
            d["message"]["messageId"].as_str().expect("id").to_string(),
            d["reason"].as_str().expect("reason").to_string(),
        )
    })
    .collect();
    let want: BTreeMap<String, String> = [
        ("b-1999", "event_time_before_floor"),
        ("b-60d", "event_time_too_old"),
        ("t-60d", "event_time_too_old"),
        ("i-1999", "event_time_before_floor"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(dlq, want);

    let m = reqwest::get(format!("{}/metrics", c.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for (reason, n) in [("event_time_before_floor", 2), ("event_time_too_old", 2)] {
        let line = format!(
            r#"touchstream_collector_events_total{{outcome="rejected",reason="{reason}"}} {n}"#
        );
        assert!(m.contains(&line), "{line} in\n{m}");
    }
    c.stop().await;
}
