//! Rows ClickHouse refuses for good do not stall the stream: the processor splits the
//! batch, stores every other row, and sends the refused ones to the dead-letter topic
//! with the server's reason and the input offsets they came from.
//!
//! The refusal is the server's own: the test gives `events` a MATERIALIZED column whose
//! `throwIf` rejects any row of the event `Poison Pill`, as a modern server rejects a
//! value it cannot store or too many partitions in one block. Before the processor
//! classified insert errors it retried such a batch forever, and no event behind it was
//! ever stored.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use serde_json::Value;
use touchstream_core::avro;
use touchstream_tests as support;

const VALID: usize = 40;
const POISON_EVERY: usize = 13;

#[derive(clickhouse::Row, serde::Deserialize)]
struct EventId {
    event_id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_rows_go_to_the_dlq_and_the_rest_is_stored() {
    support::require_port("Kafka", &support::kafka_brokers());
    let config = support::processor_config("rejected");
    support::prepare(&config).await;
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    ch.query(
        "ALTER TABLE events ADD COLUMN refuse UInt8 MATERIALIZED throwIf(event = 'Poison Pill')",
    )
    .execute()
    .await
    .expect("add the refusing column");

    // Valid events with a poison one every few, all in one partition's batches.
    let producer = touchstream_core::kafka::producer(&config.kafka, 10_000).expect("producer");
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 60_000;
    let mut valid = BTreeSet::new();
    let mut poison: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    for i in 0..VALID {
        let id = format!("web:m-{i}");
        let anon = format!("anon-{}", i % 7);
        let mut tp = support::product_viewed(&id, &anon, t0 + i as i64 * 100, r#"{"sku":"A"}"#);
        let is_poison = i % POISON_EVERY == 5;
        if is_poison {
            tp.event = Some("Poison Pill".into());
        }
        let bytes = avro::encode(&tp).expect("encode");
        let delivery = producer
            .send(
                FutureRecord::to(&config.kafka.raw_topic)
                    .key(anon.as_str())
                    .payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        let (partition, offset) = (delivery.partition, delivery.offset);
        if is_poison {
            poison.insert(id, (partition, offset));
        } else {
            valid.insert(id);
        }
    }
    assert!(poison.len() >= 3, "the log has poison rows");

    let processor = support::ProcessorHandle::start(config.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let stored = loop {
        let stored: BTreeSet<String> = ch
            .query("SELECT DISTINCT event_id FROM events")
            .fetch_all::<EventId>()
            .await
            .expect("events")
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        if stored.is_superset(&valid) {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "valid events never stored behind the refused rows: {} of {} stored",
            stored.len(),
            valid.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(stored, valid, "every valid event stored, no refused one");

    // Each refused row is in the dead-letter topic with the reason and its input range.
    let dead: BTreeMap<String, Value> = support::dlq_records(
        &config,
        "insert_rejected",
        poison.len(),
        Duration::from_secs(60),
    )
    .await
    .into_iter()
    .map(|doc| {
        let id = doc["row"]["event_id"]
            .as_str()
            .expect("row.event_id")
            .to_string();
        (id, doc)
    })
    .collect();
    assert_eq!(
        dead.keys().collect::<Vec<_>>(),
        poison.keys().collect::<Vec<_>>(),
        "one dead-letter record per refused row"
    );
    for (id, (partition, offset)) in &poison {
        let doc = &dead[id];
        assert_eq!(doc["table"], "events", "{doc}");
        assert_eq!(doc["source"], "processor", "{doc}");
        assert!(
            doc["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("throwIf"),
            "the server's reason: {doc}"
        );
        let covered = doc["inputs"].as_array().expect("inputs").iter().any(|r| {
            r["kafka_topic"] == config.kafka.raw_topic.as_str()
                && r["kafka_partition"].as_i64() == Some(i64::from(*partition))
                && r["first_offset"].as_i64().is_some_and(|a| a <= *offset)
                && r["last_offset"].as_i64().is_some_and(|b| b >= *offset)
        });
        assert!(
            covered,
            "{id} at {partition}/{offset} within the record's inputs: {doc}"
        );
    }

    let metrics = processor.metrics().await;
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("touchstream_processor_rejected_rows_total{table=\"events\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        refused >= poison.len() as f64,
        "rejected rows counted ({refused}):\n{metrics}"
    );

    processor.stop().await;
    support::drop_database(&config.clickhouse).await;
}
