//! An Avro touchpoint goes through the real broker and comes back intact.
//!
//! The consumed bytes are also written to `target/test-artifacts/` so that
//! `tests/python/test_avro_fastavro.py` can decode them with a stock Avro library from
//! `schemas/touchpoint.avsc` alone.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use touchstream_core::{avro, kafka, MessageType, Touchpoint};
use touchstream_tests as support;

fn sample() -> Touchpoint {
    Touchpoint {
        event_id: "it-msg-0001".into(),
        message_type: MessageType::Track,
        event: Some("Product Added".into()),
        anonymous_id: Some("anon-7f3a".into()),
        user_id: None,
        previous_id: None,
        event_time_ms: 1_764_000_000_123,
        timestamp_ms: Some(1_764_000_000_000),
        sent_at_ms: Some(1_764_000_000_500),
        received_at_ms: 1_764_000_000_623,
        source: "web".into(),
        channel: "web".into(),
        properties: r#"{"sku":"SKU-1","price":19.99,"currency":"EUR"}"#.into(),
        traits: "{}".into(),
        context: r#"{"page":{"path":"/cart"},"locale":"fr-FR"}"#.into(),
        ip: Some("198.51.100.23".into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
        extra: r#"{"integrations":{"All":true},"_metadata":{"bundled":["Segment.io"]}}"#.into(),
    }
}

#[tokio::test]
async fn avro_touchpoint_round_trips_through_the_broker() {
    let brokers = support::kafka_brokers();
    support::require_port("Kafka", &brokers);
    let cfg = support::kafka_config("roundtrip");

    // Idempotent: a second call creates nothing and does not fail.
    let first = kafka::ensure_topics(&cfg, &[])
        .await
        .expect("create topics");
    assert!(first.iter().all(|t| t.created), "{first:?}");
    let second = kafka::ensure_topics(&cfg, &[])
        .await
        .expect("create topics again");
    assert!(second.iter().all(|t| !t.created), "{second:?}");

    let tp = sample();
    let payload = avro::encode(&tp).expect("encode");
    let producer = kafka::producer(&cfg, 10_000).expect("producer");
    let (partition, offset) = producer
        .send(
            FutureRecord::to(&cfg.raw_topic)
                .key(tp.identity_key())
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| e)
        .expect("delivery");
    assert!(offset >= 0);

    let consumer: StreamConsumer = kafka::client_config(&cfg)
        .set("group.id", support::unique("it-roundtrip"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&cfg.raw_topic]).expect("subscribe");
    let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a message within 30 s")
        .expect("kafka message");
    assert_eq!(msg.partition(), partition);
    assert_eq!(
        msg.key(),
        Some("anon-7f3a".as_bytes()),
        "keyed by anonymousId"
    );
    let bytes = msg.payload().expect("payload").to_vec();
    assert_eq!(bytes, payload);
    let back = avro::decode(&bytes).expect("decode");
    assert_eq!(back, tp);

    let dir = support::artifacts_dir();
    std::fs::write(dir.join("touchpoint_from_kafka.avro"), &bytes).expect("write bytes");
    std::fs::write(
        dir.join("touchpoint_from_kafka.json"),
        serde_json::to_vec_pretty(&tp).expect("json"),
    )
    .expect("write json");
}
