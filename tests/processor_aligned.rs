//! `processor.align_partitions`: a backlog on `touchpoints.raw`, written one partition
//! after another, is read in event-time order across partitions, so the journey stage
//! releases events as the backlog is read instead of holding most of it.
//!
//! Each partition gets `PER_PARTITION` signed-out `Product Viewed` events, one minute
//! apart, the same time span on every partition, produced partition by partition (the
//! layout a broker that fills fetch responses from one partition at a time, tansu, hands
//! over in that order). While the processor reads it, the test scrapes
//! `touchstream_processor_buffered_events` and keeps the largest total. With aligned
//! reading the journey stage holds about the allowed lateness (5 min here) plus one
//! fetch per partition; read partition after partition it would hold nearly every event
//! of the earlier partitions. Every event older than the final watermark minus the
//! lateness must get its journey row.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;
use touchstream_core::config::Config;
use touchstream_core::{avro, Touchpoint};
use touchstream_tests as support;

const PER_PARTITION: i64 = 1500;
const MIN: i64 = 60_000;

fn config() -> Config {
    let mut c = support::processor_config("aligned");
    c.processor.batch_max_ms = 100;
    c.processor.align_partitions = true;
    // Small fetches and queues, so that a few thousand events already span many fetches
    // (the processor's own defaults are sized for production backlogs).
    for (k, v) in [
        ("message.max.bytes", "200000"),
        ("fetch.max.bytes", "200000"),
        ("queued.max.messages.kbytes", "200"),
    ] {
        c.kafka.client_properties.insert(k.into(), v.into());
    }
    c
}

fn touchpoint(event_id: &str, anonymous_id: &str, t: i64) -> Touchpoint {
    // Weight, so a partition's backlog spans several fetches.
    let properties = format!(r#"{{"sku":"SKU-1","note":"{}"}}"#, "x".repeat(300));
    support::product_viewed(event_id, anonymous_id, t, &properties)
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct EventId {
    event_id: String,
}

/// Sum of `touchstream_processor_buffered_events` over partitions, if the page has it.
async fn buffered(http: &reqwest::Client, url: &str) -> Option<f64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("touchstream_processor_buffered_events{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_is_read_in_event_time_order_across_partitions() {
    support::require_port("Kafka", &support::kafka_brokers());
    let config = config();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("metrics port");
    let port = listener.local_addr().expect("addr").port();
    support::prepare(&config).await;
    let producer = touchstream_core::kafka::producer(&config.kafka, 30_000).expect("producer");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let t0 = now - (PER_PARTITION + 60) * MIN;
    let lateness = i64::try_from(config.processor.allowed_lateness_secs).expect("secs") * 1000;

    let mut want = BTreeSet::new();
    // The final watermark: the smallest of the partitions' newest event times.
    let mut final_watermark = i64::MAX;
    for p in 0..config.kafka.partitions {
        let mut acks = Vec::new();
        for i in 0..PER_PARTITION {
            let t = t0 + i * MIN + i64::from(p);
            let id = format!("al-{p}-{i}");
            let anon = format!("anon-{p}-{i}");
            let bytes = avro::encode(&touchpoint(&id, &anon, t)).expect("encode");
            let record = FutureRecord::to(&config.kafka.raw_topic)
                .partition(p)
                .key(anon.as_str())
                .payload(bytes.as_slice());
            acks.push(
                producer
                    .send_result(record)
                    .unwrap_or_else(|(e, _)| panic!("enqueue: {e}")),
            );
            want.insert((id, t));
        }
        final_watermark = final_watermark.min(t0 + (PER_PARTITION - 1) * MIN + i64::from(p));
        for ack in acks {
            ack.await
                .expect("delivery")
                .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        }
    }
    let total = want.len();
    // Released by the final watermark: placed, so they get journey rows.
    let placed: BTreeSet<String> = want
        .iter()
        .filter(|(_, t)| *t < final_watermark - lateness)
        .map(|(id, _)| id.clone())
        .collect();

    let token = CancellationToken::new();
    let task = tokio::spawn(touchstream_processor::run(
        config.clone(),
        Some(listener),
        token.clone(),
    ));
    let http = reqwest::Client::new();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut max_buffered = 0.0f64;
    loop {
        if let Some(b) = buffered(&http, &metrics_url).await {
            max_buffered = max_buffered.max(b);
        }
        let with_journey: BTreeSet<String> = ch
            .query("SELECT DISTINCT event_id FROM touchpoint_journey FINAL WHERE customer_id != ''")
            .fetch_all::<EventId>()
            .await
            .expect("journey rows")
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        if with_journey.is_superset(&placed) {
            break;
        }
        assert!(!task.is_finished(), "the processor stopped");
        assert!(
            Instant::now() < deadline,
            "{} of {} released events have no journey row",
            placed.difference(&with_journey).count(),
            placed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    task.await.expect("join").expect("processor exits cleanly");

    // Read partition after partition, the journey stage would hold every event of the
    // partitions read first (about (partitions - 1) / partitions of the backlog) until the
    // last partition's watermark moved. Aligned, it holds the lateness window and what
    // each partition's lanes fetched ahead.
    assert!(
        max_buffered < total as f64 / 4.0,
        "the journey stage held up to {max_buffered} of {total} events at once"
    );
    eprintln!("largest journey buffer while reading the backlog: {max_buffered} of {total}");
    support::drop_database(&config.clickhouse).await;
}
