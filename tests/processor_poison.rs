//! Poison input on `touchpoints.raw`: records the processor cannot decode go to the DLQ
//! with where they came from, and never stop the stream.
//!
//! Valid Avro touchpoints, then on every partition garbage bytes, a JSON text, a value
//! with the right `C3 01` marker but an unknown schema fingerprint, a truncated Avro value
//! and an empty value, then more valid touchpoints, all produced straight to the raw topic
//! (as a broken producer other than the collector could), plus valid touchpoints with
//! extreme event times (epoch 0, year 0, `i64::MIN`, `i64::MAX`). Every valid event must
//! reach ClickHouse `events`; each undecodable record must appear once in the DLQ as JSON
//! with `reason = "undecodable"` and the topic, partition and offset its delivery report
//! gave; the processor must still run and store the events that came after the poison, and
//! place them in their journeys (the far-future time did not move the watermark).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use touchstream_core::config::Config;
use touchstream_core::{avro, Touchpoint};
use touchstream_tests as support;

/// Valid events per partition before the poison, and again after it.
const VALID_PER_PARTITION: usize = 5;

fn config() -> Config {
    support::processor_config("poison")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn touchpoint(event_id: &str, anonymous_id: &str, t: i64) -> Touchpoint {
    support::product_viewed(event_id, anonymous_id, t, r#"{"sku":"SKU-1"}"#)
}

/// Produce one record to an explicit partition; returns the (partition, offset) of its
/// delivery report.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&str>,
    payload: Option<&[u8]>,
) -> (i32, i64) {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).partition(partition);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}/{partition}: {e}"));
    assert_eq!(delivery.partition, partition);
    (delivery.partition, delivery.offset)
}

/// The undecodable values produced to each partition, by name.
fn poison_values() -> Vec<(&'static str, Option<Vec<u8>>)> {
    let valid = avro::encode(&touchpoint("poison-template", "anon-x", now_ms())).expect("encode");
    let mut wrong_fingerprint = valid.clone();
    let other = (avro::fingerprint() ^ 0xdead_beef).to_le_bytes();
    wrong_fingerprint[2..avro::HEADER_LEN].copy_from_slice(&other);
    let truncated = valid[..valid.len() / 2].to_vec();
    vec![
        (
            "garbage",
            Some(
                (0u16..300)
                    .map(|i| (i.wrapping_mul(37) ^ 0xa5) as u8)
                    .collect(),
            ),
        ),
        (
            "json",
            Some(br#"{"type":"track","event":"Product Viewed","userId":"u-1"}"#.to_vec()),
        ),
        ("wrong fingerprint", Some(wrong_fingerprint)),
        ("truncated avro", Some(truncated)),
        ("empty value", None),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct EventId {
    event_id: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Placed {
    event_id: String,
    is_late: u8,
}

async fn stored_event_ids(ch: &clickhouse::Client) -> BTreeSet<String> {
    ch.query("SELECT DISTINCT event_id FROM events")
        .fetch_all::<EventId>()
        .await
        .expect("events")
        .into_iter()
        .map(|r| r.event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_records_go_to_the_dlq_and_the_stream_goes_on() {
    support::require_port("Kafka", &support::kafka_brokers());
    let config = config();
    support::prepare(&config).await;
    let topic = config.kafka.raw_topic.clone();
    let producer = touchstream_core::kafka::producer(&config.kafka, 10_000).expect("producer");
    let t0 = now_ms() - 60_000;

    // Each anonymous id stays in one partition, as its identity key would keep it.
    let mut before = BTreeSet::new();
    let mut after = BTreeSet::new();
    let mut tail = BTreeSet::new();
    let mut n = 0i64;
    let mut send_valid = |phase: &'static str, p: i32| {
        let mut batch = Vec::new();
        for i in 0..VALID_PER_PARTITION {
            n += 1;
            let id = format!("{phase}-{p}-{i}");
            let anon = format!("anon-{p}-{i}");
            batch.push((
                id.clone(),
                anon.clone(),
                touchpoint(&id, &anon, t0 + n * 10),
            ));
        }
        batch
    };

    let mut poison: BTreeMap<(i32, i64), (&'static str, Vec<u8>)> = BTreeMap::new();
    for p in 0..config.kafka.partitions {
        for (id, anon, tp) in send_valid("before", p) {
            let bytes = avro::encode(&tp).expect("encode");
            produce(&producer, &topic, p, Some(&anon), Some(&bytes)).await;
            before.insert(id);
        }
        // Decodable but extreme: event times a direct producer could write (the collector
        // clamps future times, but not the past), received now. The far-future one must not
        // drag the partition's watermark along: the identity stage caps a record's
        // contribution at its receipt plus the collector's clamp (docs/guarantees.md §3).
        for (i, t) in [0, -62_167_219_200_000, i64::MIN, i64::MAX]
            .into_iter()
            .enumerate()
        {
            let id = format!("extreme-{p}-{i}");
            let anon = format!("anon-{p}-extreme");
            let mut tp = touchpoint(&id, &anon, t);
            tp.received_at_ms = t0;
            let bytes = avro::encode(&tp).expect("encode");
            produce(&producer, &topic, p, Some(&anon), Some(&bytes)).await;
            before.insert(id);
        }
        for (name, value) in poison_values() {
            let at = produce(&producer, &topic, p, Some("anon-poison"), value.as_deref()).await;
            poison.insert(at, (name, value.unwrap_or_default()));
        }
    }

    let token = CancellationToken::new();
    let task = tokio::spawn(touchstream_processor::run(
        config.clone(),
        None,
        token.clone(),
    ));

    // The events after the poison are produced once the processor has read all of the
    // above, so its watermarks (the far-future record's included) are already downstream
    // when they arrive.
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !stored_event_ids(&ch).await.is_superset(&before) {
        assert!(
            Instant::now() < deadline,
            "the events before the poison did not reach ClickHouse"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for p in 0..config.kafka.partitions {
        for (id, anon, tp) in send_valid("after", p) {
            let bytes = avro::encode(&tp).expect("encode");
            produce(&producer, &topic, p, Some(&anon), Some(&bytes)).await;
            after.insert(id);
        }
        // A last event 9 minutes ahead of its receipt (inside the collector's clamp) moves
        // the watermark far enough to release the events above, so their journey rows are
        // written: placed, unless the far-future record dragged the watermark along.
        let id = format!("tail-{p}");
        let anon = format!("anon-{p}-tail");
        let mut tp = touchpoint(&id, &anon, t0 + 60_000 + 9 * 60_000);
        tp.received_at_ms = t0 + 60_000;
        let bytes = avro::encode(&tp).expect("encode");
        produce(&producer, &topic, p, Some(&anon), Some(&bytes)).await;
        tail.insert(id);
    }

    // Every valid event, including those behind the poison, reaches ClickHouse.
    let want: BTreeSet<String> = before.union(&after).chain(&tail).cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let stored = loop {
        let stored = stored_event_ids(&ch).await;
        if stored.is_superset(&want) {
            break stored;
        }
        assert!(
            !task.is_finished(),
            "the processor stopped on poison input: {:?}",
            tokio::time::timeout(Duration::from_secs(5), task).await
        );
        assert!(
            Instant::now() < deadline,
            "events missing from ClickHouse: {:?}",
            want.difference(&stored).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(stored, want, "only the valid events are stored");

    // The events behind the far-future record are placed in their journeys, not stored as
    // late: its event time did not move the watermark past its receipt time.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = ch
            .query(
                "SELECT event_id, toUInt8(argMax(is_late, version)) AS is_late \
                 FROM touchpoint_journey WHERE event_id LIKE 'after-%' GROUP BY event_id",
            )
            .fetch_all::<Placed>()
            .await
            .expect("touchpoint_journey");
        let late: Vec<&str> = rows
            .iter()
            .filter(|r| r.is_late != 0)
            .map(|r| r.event_id.as_str())
            .collect();
        assert!(
            late.is_empty(),
            "events after a far-future record were stored as late: {late:?}"
        );
        if rows.len() == after.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events behind the far-future record have journey rows",
            rows.len(),
            after.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Each undecodable record is in the DLQ once, with where it was read from.
    let mut dead: BTreeMap<(i32, i64), Value> = BTreeMap::new();
    for doc in support::dlq_records(
        &config,
        "undecodable",
        poison.len(),
        Duration::from_secs(60),
    )
    .await
    {
        let at = (
            doc["kafka_partition"].as_i64().expect("kafka_partition") as i32,
            doc["kafka_offset"].as_i64().expect("kafka_offset"),
        );
        assert!(
            dead.insert(at, doc).is_none(),
            "record at {at:?} dead-lettered twice"
        );
    }
    assert_eq!(
        dead.keys().collect::<Vec<_>>(),
        poison.keys().collect::<Vec<_>>(),
        "one DLQ record per undecodable record, at the partition/offset it was produced to"
    );
    for (at, (name, bytes)) in &poison {
        let doc = &dead[at];
        assert_eq!(doc["kafka_topic"], topic.as_str(), "{name} at {at:?}");
        assert_eq!(doc["source"], "processor", "{name} at {at:?}");
        assert_eq!(doc["payload_hex"], hex(bytes), "{name} at {at:?}: payload");
        assert!(
            doc["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name} at {at:?}: a detail says why: {doc}"
        );
    }
    let wrong_fp = poison
        .iter()
        .find(|(_, (name, _))| *name == "wrong fingerprint")
        .map(|(at, _)| &dead[at])
        .expect("wrong fingerprint record");
    assert!(
        wrong_fp["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("fingerprint"),
        "{wrong_fp}"
    );

    // Still running: it did not exit or crash on the poison, and it stops cleanly.
    assert!(!task.is_finished(), "the processor is still running");
    token.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("processor stops in time")
        .expect("join")
        .expect("processor exits cleanly");

    support::drop_database(&config.clickhouse).await;
}
