//! `collector.suppression`: the collector consults the erased people's ids
//! (`suppressed_ids`, README "Privacy") and, in `reject` mode, refuses their messages with
//! reason `suppressed` (listed in the response, never dead-lettered), or in `drop` mode
//! answers as accepted and writes nothing; ids suppressed while it runs are picked up by
//! the refresh. Real broker and ClickHouse.

use std::time::Duration;

use serde_json::{json, Value};
use touchstream_core::config::SuppressionMode;
use touchstream_tests::{self as support, CollectorHandle};

async fn suppress(ch: &clickhouse::Client, id: &str) {
    ch.query("INSERT INTO suppressed_ids (id, erasure_id, erased_at, version) VALUES (?, 'erasure-test', now(), 1)")
        .bind(id)
        .execute()
        .await
        .expect("suppress");
}

async fn batch(c: &CollectorHandle, users: &[&str]) -> Value {
    let msgs: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"type": "track", "event": "Product Viewed", "userId": u, "messageId": format!("m-{u}-{i}")}))
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/batch", c.base))
        .basic_auth("demo-web-key", Some(""))
        .json(&json!({ "batch": msgs }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

/// User ids of the raw topic's touchpoints.
async fn raw_users(config: &touchstream_core::Config) -> Vec<String> {
    support::raw_touchpoints(config)
        .await
        .into_iter()
        .filter_map(|t| t.user_id)
        .collect()
}

async fn dlq_names(config: &touchstream_core::Config, id: &str) -> bool {
    support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.dlq_topic,
        Duration::from_secs(2),
    )
    .await
    .iter()
    .any(|(_, v)| String::from_utf8_lossy(v).contains(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_refuses_erased_people_and_sees_new_erasures() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = support::processor_config("suppress_reject");
    config.collector.suppression = SuppressionMode::Reject;
    config.collector.suppression_refresh_ms = 200;
    support::prepare(&config).await;
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let tag = support::unique("sup");
    let (gone, kept, later) = (
        format!("u-{tag}-gone"),
        format!("u-{tag}-kept"),
        format!("u-{tag}-later"),
    );
    suppress(&ch, &gone).await;
    let c = CollectorHandle::start(config.clone()).await;

    let r = batch(&c, &[&gone, &kept]).await;
    let rejected = r["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 1, "{r}");
    assert_eq!(rejected[0]["index"], 0);
    assert_eq!(rejected[0]["reason"], "suppressed");

    // Erased while it runs: picked up by the refresh.
    suppress(&ch, &later).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = batch(&c, &[&later]).await;
    assert_eq!(r["rejected"][0]["reason"], "suppressed", "{r}");

    let users = raw_users(&config).await;
    assert_eq!(
        users,
        vec![kept.clone()],
        "only the kept user reaches the raw topic"
    );
    assert!(!dlq_names(&config, &gone).await, "never dead-lettered");
    assert!(!dlq_names(&config, &later).await, "never dead-lettered");
    c.stop().await;
    support::drop_database(&config.clickhouse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mode_answers_accepted_and_writes_nothing() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = support::processor_config("suppress_drop");
    config.collector.suppression = SuppressionMode::Drop;
    support::prepare(&config).await;
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let tag = support::unique("sup");
    let (gone, kept) = (format!("u-{tag}-gone"), format!("u-{tag}-kept"));
    suppress(&ch, &gone).await;
    let c = CollectorHandle::start(config.clone()).await;
    let r = batch(&c, &[&gone, &kept]).await;
    assert_eq!(r["rejected"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(raw_users(&config).await, vec![kept]);
    assert!(!dlq_names(&config, &gone).await);
    c.stop().await;
    support::drop_database(&config.clickhouse).await;
}
