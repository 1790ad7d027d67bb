//! `touchstream topics` creates topics with the configured partitions, replication
//! (at most the brokers there are, said so) and `min.insync.replicas`, and checks topics
//! that already exist against the configuration, warning on a mismatch instead of
//! accepting it silently. Real broker (one local broker).

use touchstream_core::kafka;
use touchstream_tests as support;

#[tokio::test]
async fn existing_topics_are_checked_against_the_configuration() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut cfg = support::kafka_config("topics");
    cfg.partitions = 3;
    cfg.replication_factor = 3;
    cfg.min_insync_replicas = 2;
    let first = kafka::ensure_topics(&cfg, &[]).await.expect("create");
    assert_eq!(first.len(), 4);
    for t in &first {
        assert!(t.created, "{t:?}");
        assert_eq!(t.partitions, 3, "{t:?}");
        assert_eq!(t.replication, 1, "one broker: one replica ({t:?})");
        assert!(
            t.warnings
                .iter()
                .any(|w| w.contains("created with 1 replica")),
            "fewer replicas than configured is said: {t:?}"
        );
    }
    // Same settings again: nothing created, no partition warning.
    let again = kafka::ensure_topics(&cfg, &[]).await.expect("again");
    assert!(
        again.iter().all(|t| !t.created && t.warnings.is_empty()),
        "{again:?}"
    );
    // The configuration now asks for more partitions than the topics have.
    cfg.partitions = 6;
    let changed = kafka::ensure_topics(&cfg, &[]).await.expect("check");
    for t in &changed {
        assert!(!t.created);
        assert_eq!(t.partitions, 3, "existing topics are never changed");
        assert!(
            t.warnings
                .iter()
                .any(|w| w.contains("has 3 partitions, kafka.partitions is 6")),
            "{t:?}"
        );
    }
}

#[test]
fn fewer_replicas_than_configured_is_a_warning() {
    let w = kafka::topic_mismatches("t", 6, 1, 6, 3);
    assert_eq!(w.len(), 1);
    assert!(
        w[0].contains("has 1 replica(s), kafka.replication_factor asks 3"),
        "{w:?}"
    );
    assert!(kafka::topic_mismatches("t", 6, 3, 6, 3).is_empty());
}

/// The processor packs a customer's `touchpoints.by_customer` values into records for an
/// explicit partition (README "Processor state", packed routed records); it must be the
/// partition librdkafka picks for the customer id as key, where earlier processors and
/// tools put those values one record each, or a customer's values would be split between
/// two journey partitions across an upgrade.
#[tokio::test]
async fn packed_routed_records_go_where_librdkafka_puts_the_key() {
    use rdkafka::producer::FutureRecord;
    support::require_port("Kafka", &support::kafka_brokers());
    let mut cfg = support::kafka_config("partitioner");
    cfg.partitions = 6;
    kafka::ensure_topics(&cfg, &[]).await.expect("create");
    let producer = kafka::producer(&cfg, 10_000).expect("producer");
    for i in 0..200 {
        let key = format!("u-{i}-{}", i * 7919);
        let delivered = producer
            .send(
                FutureRecord::to(&cfg.routed_topic).key(&key).payload("x"),
                std::time::Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        assert_eq!(
            touchstream_processor::routed_codec::partition_for(&key, 6),
            delivered.partition,
            "key {key}"
        );
    }
}
