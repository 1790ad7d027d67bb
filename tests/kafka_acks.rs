//! Counted acknowledgements (`touchstream_core::kafka::acks`) against the real broker: a
//! group is settled only when every record in it is stored, records land where they were
//! sent, and a broker that never answers fails the group within the message timeout
//! instead of leaving the waiter hanging.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use touchstream_core::kafka::{self, acks::group_producer, acks::AckGroup};
use touchstream_tests as support;

#[tokio::test]
async fn a_group_settles_once_every_record_is_stored() {
    let brokers = support::kafka_brokers();
    support::require_port("Kafka", &brokers);
    let cfg = support::kafka_config("acks");
    kafka::ensure_topics(&cfg, &[])
        .await
        .expect("create topics");
    let producer = group_producer(&cfg, 10_000, 0).expect("producer");

    let group = AckGroup::new();
    for i in 0..500 {
        let key = format!("customer-{}", i % 37);
        let value = format!("record-{i}");
        group
            .send(
                &producer,
                &cfg.raw_topic,
                Some(key.as_bytes()),
                value.as_bytes(),
                None,
            )
            .expect("enqueue");
    }
    // Watermark-style records to an explicit partition are part of the group too.
    group
        .send(&producer, &cfg.raw_topic, None, b"to-partition-0", Some(0))
        .expect("enqueue to a partition");
    tokio::time::timeout(Duration::from_secs(30), group.wait())
        .await
        .expect("settled within 30 s")
        .expect("every record acknowledged");

    // Settled means stored: all 501 are readable right away.
    let got = support::drain_topic(&brokers, &cfg.raw_topic, Duration::from_secs(2)).await;
    let values: BTreeSet<String> = got
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).expect("utf-8"))
        .collect();
    assert_eq!(got.len(), 501, "each record exactly once");
    assert!(values.contains("record-0") && values.contains("record-499"));
    assert!(values.contains("to-partition-0"));

    // An empty group (a request whose messages all went nowhere) settles at once.
    tokio::time::timeout(Duration::from_secs(1), AckGroup::new().wait())
        .await
        .expect("immediate")
        .expect("ok");
}

#[tokio::test]
async fn a_group_fails_within_the_message_timeout_when_no_broker_answers() {
    // Nothing listens on this port: librdkafka keeps retrying until message.timeout.ms.
    let mut cfg = support::kafka_config("acks-down");
    cfg.brokers = format!("127.0.0.1:{}", support::free_port());
    let producer = group_producer(&cfg, 1_500, 0).expect("producer");
    let group = AckGroup::new();
    for i in 0..10 {
        group
            .send(
                &producer,
                "nowhere",
                Some(b"k"),
                format!("v{i}").as_bytes(),
                None,
            )
            .expect("enqueue");
    }
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(20), group.wait())
        .await
        .expect("the group settles (with an error), it does not hang");
    assert_eq!(
        res,
        Err(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        ))
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}
