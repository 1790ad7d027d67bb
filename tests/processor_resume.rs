//! A stage resumes exactly at its saved position when that position lies inside a
//! producer batch: snapshots and commits are cut at any record, and tansu serves only the
//! batches that start at or after a fetch offset (Kafka serves the batch containing it),
//! so the runner has to fetch the batch from its start and skip what it already has.
//!
//! The stage here is a recorder: it notes the offsets it is given, nothing else, so the
//! test sees exactly which records the runner handed it. Broker and ClickHouse are real.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use touchstream_core::kafka;
use touchstream_processor::batch::Batch;
use touchstream_processor::metrics::Metrics;
use touchstream_processor::runner::{run_stage, Input, RunCtx, Stage};
use touchstream_processor::store::Store;
use touchstream_processor::tables::processor_state::StateRow;
use touchstream_tests as support;

/// Records every offset handed to it; its state is the count.
struct Recorder {
    topic: String,
    seen: Arc<Mutex<Vec<i64>>>,
}

impl Stage for Recorder {
    type State = u64;
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn topics(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }
    fn new_state(&self) -> u64 {
        0
    }
    fn restore(&self, json: &[u8]) -> Result<u64, serde_json::Error> {
        serde_json::from_slice(json)
    }
    fn snapshot<'a>(&'a self, state: &'a u64) -> impl serde::Serialize + 'a {
        state
    }
    fn handle(&self, state: &mut u64, input: &Input<'_>, _batch: &mut Batch) {
        *state += 1;
        self.seen.lock().expect("seen").push(input.offset);
    }
    fn drain(&self, _state: &mut u64, _partition: i32, _batch: &mut Batch) {}
}

/// Produce `n` records to partition 0 within one linger window (one batch); their offsets.
async fn produce_batch(cfg: &touchstream_core::config::KafkaConfig, n: usize) -> Vec<i64> {
    let producer = kafka::producer_with_linger(cfg, 10_000, 200).expect("producer");
    let mut acks = Vec::new();
    for i in 0..n {
        let payload = format!("record-{i}");
        let rec = FutureRecord::to(&cfg.raw_topic)
            .partition(0)
            .key("k")
            .payload(payload.as_bytes());
        acks.push(
            producer
                .send_result(rec)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    let mut offsets = Vec::new();
    for ack in acks {
        let d = ack
            .await
            .expect("ack")
            .map_err(|(e, _)| e)
            .expect("delivery");
        offsets.push(d.offset);
    }
    offsets
}

/// Save a snapshot at `next` and commit `next` for the group, as a stage that stopped
/// there would have; then run the recorder and return the offsets it handles until it
/// has seen `until` (or 60 s pass).
async fn resume_at(later_batch: bool) {
    support::require_port("Kafka", &support::kafka_brokers());
    let config = support::processor_config("resume");
    support::prepare(&config).await;
    let first = produce_batch(&config.kafka, 40).await;
    let base = first[0];
    assert_eq!(first, (base..base + 40).collect::<Vec<_>>(), "one batch");
    let end = if later_batch {
        // Something after the batch: the consumer's first fetch returns this one, ahead
        // of the saved position.
        let later = produce_batch(&config.kafka, 10).await;
        later[9] + 1
    } else {
        base + 40
    };
    let next = base + 20; // inside the batch

    let group = config.processor.group_id.clone();
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new().expect("metrics");
    let store = Store::new(
        touchstream_clickhouse::client(&config.clickhouse),
        metrics.clone(),
        shutdown.clone(),
        false,
    );
    let offsets = serde_json::json!({ "seq": 20, "next": { &config.kafka.raw_topic: next } });
    let snapshot = touchstream_processor::state_codec::encode(&20u64).expect("snapshot");
    store
        .insert(
            "processor_state",
            &[StateRow {
                stage: format!("{group}/recorder"),
                partition: 0,
                offsets: offsets.to_string(),
                snapshot,
                saved_at_ms: 0,
                version: 20,
            }],
            None,
        )
        .await
        .expect("save state");
    let committer: BaseConsumer = kafka::client_config(&config.kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&config.kafka.raw_topic, 0, Offset::Offset(next))
        .expect("tpl");
    committer.commit(&tpl, CommitMode::Sync).expect("commit");
    drop(committer);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let stage = Recorder {
        topic: config.kafka.raw_topic.clone(),
        seen: seen.clone(),
    };
    let ctx = RunCtx {
        kafka: config.kafka.clone(),
        group_id: group,
        instance_id: None,
        producer: Mutex::new(
            kafka::acks::group_producer(&config.kafka, 10_000, 0).expect("producer"),
        ),
        store,
        metrics,
        batch_max_rows: 1000,
        batch_max: Duration::from_millis(200),
        snapshot_every: Duration::from_secs(5),
        compaction: touchstream_processor::runner::Compaction {
            after_deltas: 24,
            delta_share: 0.5,
        },
        writes_in_flight: 1,
        restart_backoff: Duration::from_millis(500),
        health: Arc::default(),
        shutdown: shutdown.clone(),
    };
    let running = tokio::spawn(run_stage(stage, ctx));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let last = seen.lock().expect("seen").last().copied();
        if last == Some(end - 1) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A moment for anything that should not come.
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.cancel();
    running.await.expect("join").expect("stage");
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        (next..end).collect::<Vec<_>>(),
        "records handed to the stage resuming at offset {next}"
    );
    support::drop_database(&config.clickhouse).await;
}

#[tokio::test]
async fn a_stage_resumes_inside_a_producer_batch_with_nothing_after_it() {
    resume_at(false).await;
}

#[tokio::test]
async fn a_stage_resumes_inside_a_producer_batch_with_input_after_it() {
    resume_at(true).await;
}
