//! Identity links do not stay in memory forever: one unused for
//! `processor.identity_link_ttl_days` (of event time) leaves the identity stage, and when
//! its anonymous id comes back the link is looked up in `identities` again, so it still
//! routes to its user and the first link still wins over a later, conflicting one.
//!
//! Touchpoints are produced straight to the raw topic (one partition) with event times
//! days apart; broker, processor and ClickHouse are real. Before links expired, the
//! evicted-links counter never moved and the link count only grew.

use std::time::{Duration, Instant};

use clickhouse::Row;
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use touchstream_core::avro;
use touchstream_tests::{self as support, ProcessorHandle};

const DAY: i64 = 24 * 3600 * 1000;

#[derive(Row, Deserialize, Debug)]
struct Customer {
    customer_id: String,
}

#[derive(Row, Deserialize, Debug)]
struct ConflictRow {
    linked_user_id: String,
    conflicting_user_id: String,
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_link_is_looked_up_again_and_the_first_link_still_wins() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = support::processor_config("link_ttl");
    config.kafka.partitions = 1;
    config.processor.identity_link_ttl_days = 2;
    config.processor.identity_link_sweep_secs = 1;
    config.processor.idle_watermark_secs = 1;
    config.processor.allowed_lateness_secs = 1;
    support::prepare(&config).await;
    let producer = touchstream_core::kafka::producer(&config.kafka, 10_000).expect("producer");
    let send = |id: &str, anon: &str, user: Option<&str>, t: i64| {
        let mut tp = support::product_viewed(id, anon, t, "{}");
        tp.user_id = user.map(String::from);
        let bytes = avro::encode(&tp).expect("encode");
        let producer = producer.clone();
        let topic = config.kafka.raw_topic.clone();
        let key = anon.to_string();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&bytes),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        }
    };
    let tag = support::unique("lt");
    let (a, u1, u2, b) = (
        format!("a-{tag}"),
        format!("u1-{tag}"),
        format!("u2-{tag}"),
        format!("b-{tag}"),
    );
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 10 * DAY;

    let processor = ProcessorHandle::start(config.clone()).await;
    // a links to u1; three days later only b is active.
    send("web:e1", &a, Some(&u1), t0).await;
    send("web:e2", &b, None, t0 + 3 * DAY).await;
    // Two sweeps a second apart find a's link unused: it leaves memory.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = processor.metrics().await;
        if sample(&text, "touchstream_processor_identity_links_evicted_total") >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unused link never left memory:\n{}",
            text.lines()
                .filter(|l| l.contains("identity_links"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // a comes back alone, then with another user.
    send("web:e3", &a, None, t0 + 3 * DAY + 60_000).await;
    send("web:e4", &a, Some(&u2), t0 + 3 * DAY + 120_000).await;

    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (customer, conflicts) = loop {
        let customer = ch
            .query("SELECT customer_id FROM touchpoint_journey FINAL WHERE event_id = 'web:e3'")
            .fetch_optional::<Customer>()
            .await
            .expect("journey");
        let conflicts = ch
            .query("SELECT linked_user_id, conflicting_user_id FROM identity_conflicts FINAL WHERE anonymous_id = ?")
            .bind(&a)
            .fetch_all::<ConflictRow>()
            .await
            .expect("conflicts");
        if customer.is_some() && !conflicts.is_empty() {
            break (customer, conflicts);
        }
        assert!(
            Instant::now() < deadline,
            "e3 customer {customer:?}, conflicts {conflicts:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        customer.map(|c| c.customer_id).as_deref(),
        Some(u1.as_str()),
        "the returning anonymous id routes to its first user"
    );
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].linked_user_id, u1, "the first link wins");
    assert_eq!(conflicts[0].conflicting_user_id, u2);
    let text = processor.metrics().await;
    assert!(sample(&text, "touchstream_processor_identity_links_restored_total") >= 1.0);

    processor.stop().await;
    support::drop_database(&config.clickhouse).await;
}
