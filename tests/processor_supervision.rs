//! A panic in a stage does not leave the processor half alive: the run is caught,
//! counted (`touchstream_processor_stage_restarts_total{cause="panic"}`) and restarted
//! from the last saved state, and a stage that keeps failing turns the processor's health
//! to failing instead of dying silently while the other stage runs on.
//!
//! The stage here panics on a record whose value is `boom` (once, or every time). Broker
//! and ClickHouse are real. Before supervision the panic ended the stage's task for good:
//! nothing after the poison record was ever handed to it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;
use touchstream_core::kafka;
use touchstream_processor::batch::Batch;
use touchstream_processor::metrics::Metrics;
use touchstream_processor::runner::{run_stage, Health, Input, RunCtx, Stage};
use touchstream_processor::store::Store;
use touchstream_tests as support;

/// Notes the offsets it handles; panics on `boom` (the first time only, if `once`).
struct Boomer {
    topic: String,
    seen: Arc<Mutex<BTreeSet<i64>>>,
    once: bool,
    fired: AtomicBool,
}

impl Stage for Boomer {
    type State = u64;
    fn name(&self) -> &'static str {
        "boomer"
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
        if input.payload == b"boom" && !(self.once && self.fired.swap(true, Ordering::SeqCst)) {
            panic!("boom at offset {}", input.offset);
        }
        *state += 1;
        self.seen.lock().expect("seen").insert(input.offset);
    }
    fn drain(&self, _state: &mut u64, _partition: i32, _batch: &mut Batch) {}
}

struct Run {
    seen: Arc<Mutex<BTreeSet<i64>>>,
    offsets: Vec<i64>,
    boom: i64,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), touchstream_processor::ProcessorError>>,
    config: touchstream_core::Config,
}

/// Produce `r0..r4, boom, r6..r9` to partition 0 and start the stage on them.
async fn start(test: &str, once: bool, unhealthy_after: u32) -> Run {
    support::require_port("Kafka", &support::kafka_brokers());
    let config = support::processor_config(test);
    support::prepare(&config).await;
    let producer = kafka::producer(&config.kafka, 10_000).expect("producer");
    let mut offsets = Vec::new();
    for i in 0..10 {
        let value = if i == 5 {
            "boom".to_string()
        } else {
            format!("r{i}")
        };
        let delivery = producer
            .send(
                FutureRecord::<str, str>::to(&config.kafka.raw_topic)
                    .partition(0)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        offsets.push(delivery.offset);
    }
    let boom = offsets[5];
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new().expect("metrics");
    let store = Store::new(
        touchstream_clickhouse::client(&config.clickhouse),
        metrics.clone(),
        shutdown.clone(),
        false,
    );
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let stage = Boomer {
        topic: config.kafka.raw_topic.clone(),
        seen: seen.clone(),
        once,
        fired: AtomicBool::new(false),
    };
    let health = Health::new(unhealthy_after);
    let ctx = RunCtx {
        kafka: config.kafka.clone(),
        group_id: config.processor.group_id.clone(),
        instance_id: None,
        producer: Mutex::new(
            kafka::acks::group_producer(&config.kafka, 10_000, 0).expect("producer"),
        ),
        store,
        metrics: metrics.clone(),
        batch_max_rows: 1000,
        batch_max: Duration::from_millis(100),
        snapshot_every: Duration::from_millis(200),
        compaction: touchstream_processor::runner::Compaction {
            after_deltas: 24,
            delta_share: 0.5,
        },
        writes_in_flight: 1,
        restart_backoff: Duration::from_millis(100),
        health: health.stage("boomer"),
        shutdown: shutdown.clone(),
    };
    let task = tokio::spawn(run_stage(stage, ctx));
    Run {
        seen,
        offsets,
        boom,
        metrics,
        health,
        shutdown,
        task,
        config,
    }
}

fn restarts(metrics: &Metrics, cause: &str) -> u64 {
    metrics
        .stage_restarts
        .with_label_values(&["boomer", cause])
        .get()
}

async fn stop(run: Run) {
    run.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), run.task)
        .await
        .expect("the stage stops in time")
        .expect("join")
        .expect("a supervised stage ends cleanly on shutdown");
    support::drop_database(&run.config.clickhouse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_panics_once_is_restarted_and_handles_everything() {
    let run = start("supervise-once", true, 3).await;
    let want: BTreeSet<i64> = run.offsets.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = run.seen.lock().expect("seen").clone();
        if seen == want {
            break;
        }
        assert!(
            !run.task.is_finished(),
            "the stage's task ended after the panic"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "records never handled after the panic at {}: {:?}",
            run.boom,
            want.difference(&seen).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(restarts(&run.metrics, "panic"), 1, "the panic is counted");
    // The restarted run stores a batch (its snapshot): healthy again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !run.health.failing().is_empty() || run.health.stage("boomer").consecutive_failures() > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still failing: {:?}",
            run.health.failing()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_keeps_panicking_makes_the_processor_unhealthy() {
    let run = start("supervise-always", false, 3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let failing = loop {
        let failing = run.health.failing();
        if !failing.is_empty() {
            break failing;
        }
        assert!(
            !run.task.is_finished(),
            "the stage's task ended after the panic"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reported failing; restarts so far: {}",
            restarts(&run.metrics, "panic")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failing.len(), 1);
    let (stage, in_a_row, last) = &failing[0];
    assert_eq!(*stage, "boomer");
    assert!(*in_a_row >= 3, "{failing:?}");
    assert!(
        last.contains(&format!("boom at offset {}", run.boom)),
        "the last error names the panic: {last}"
    );
    assert!(restarts(&run.metrics, "panic") >= 3);
    // Everything before the poison record was handled, nothing after it.
    let seen = run.seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        run.offsets[..5].iter().copied().collect::<BTreeSet<_>>()
    );
    stop(run).await;
}
