//! Processors die and come back, and a second one joins and leaves, while a generated log
//! streams through: the deduplicated tables must equal those of an uninterrupted run.
//!
//! The uninterrupted run uses an in-process processor; the faulty runs use the real
//! `touchstream processor` binary (target/debug/touchstream) as child processes: one is
//! SIGKILLed mid-stream twice and restarted, the other
//! has a second member join (rebalance) and later leave with SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use touchstream_core::Config;
use touchstream_demo::generator::{plan, GeneratorConfig};
use touchstream_demo::sender::send;
use touchstream_tests::journeys::{customer_after_customer, sender, settle};
use touchstream_tests::{self as support, CollectorHandle};

fn config(test: &str) -> Config {
    let mut c = Config {
        kafka: support::kafka_config(test),
        clickhouse: support::clickhouse_config(test),
        ..Config::default()
    };
    c.processor.group_id = support::unique(&format!("it-{test}"));
    c.processor.funnels_path = support::repo_root().join("deploy/funnels.toml");
    c.processor.catalog_path = support::repo_root().join("deploy/catalog.toml");
    c.processor.batch_max_ms = 200;
    c.processor.allowed_lateness_secs = 60;
    c.processor.idle_watermark_secs = 5;
    c
}

/// The same config as environment overrides for a child `touchstream processor`.
fn env_of(c: &Config) -> Vec<(String, String)> {
    let k = &c.kafka;
    let p = &c.processor;
    [
        ("KAFKA__BROKERS", k.brokers.clone()),
        ("KAFKA__RAW_TOPIC", k.raw_topic.clone()),
        ("KAFKA__DLQ_TOPIC", k.dlq_topic.clone()),
        ("KAFKA__ALIASES_TOPIC", k.aliases_topic.clone()),
        ("KAFKA__ROUTED_TOPIC", k.routed_topic.clone()),
        ("CLICKHOUSE__URL", c.clickhouse.url.clone()),
        ("CLICKHOUSE__DATABASE", c.clickhouse.database.clone()),
        ("PROCESSOR__GROUP_ID", p.group_id.clone()),
        (
            "PROCESSOR__FUNNELS_PATH",
            p.funnels_path.display().to_string(),
        ),
        (
            "PROCESSOR__CATALOG_PATH",
            p.catalog_path.display().to_string(),
        ),
    ]
    .into_iter()
    // Quoted: strings stay strings even when they look like numbers.
    .map(|(k, v)| (format!("TOUCHSTREAM__{k}"), format!("\"{v}\"")))
    .chain([
        (
            "TOUCHSTREAM__PROCESSOR__BATCH_MAX_MS".to_string(),
            p.batch_max_ms.to_string(),
        ),
        (
            "TOUCHSTREAM__PROCESSOR__ALLOWED_LATENESS_SECS".to_string(),
            p.allowed_lateness_secs.to_string(),
        ),
        (
            "TOUCHSTREAM__PROCESSOR__IDLE_WATERMARK_SECS".to_string(),
            p.idle_watermark_secs.to_string(),
        ),
        (
            "TOUCHSTREAM__PROCESSOR__SNAPSHOT_INTERVAL_MS".to_string(),
            p.snapshot_interval_ms.to_string(),
        ),
        (
            "TOUCHSTREAM__PROCESSOR__SNAPSHOT_COMPACT_AFTER_DELTAS".to_string(),
            p.snapshot_compact_after_deltas.to_string(),
        ),
    ])
    .collect()
}

/// A child processor (and its log file), killed if the test ends early (a panic must not
/// leave it running).
struct Proc(Child, std::path::PathBuf);

impl Proc {
    fn sigkill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `instance`: static group membership name (`processor.instance_id`), if any.
fn start_child(c: &Config, instance: Option<&str>) -> Proc {
    let bin = support::repo_root().join("target/debug/touchstream");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p touchstream` (tests/run.sh does)",
        bin.display()
    );
    let log_path = std::env::temp_dir().join(format!(
        "{}-{}.log",
        c.processor.group_id,
        support::unique("p")
    ));
    let log = std::fs::File::create(&log_path).expect("log file");
    Proc(
        Command::new(bin)
            .args(["processor", "--metrics-listen", "127.0.0.1:0"])
            .envs(env_of(c))
            .envs(instance.map(|i| ("TOUCHSTREAM__PROCESSOR__INSTANCE_ID", format!("\"{i}\""))))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start touchstream processor"),
        log_path,
    )
}

/// SIGTERM, then wait (at most 30 s) for the exit; how long the exit took.
fn sigterm(proc: &mut Proc) -> Duration {
    let child = &mut proc.0;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() {
        assert!(
            Instant::now() < deadline,
            "processor did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sent.elapsed()
}

async fn prepare(c: &Config) -> CollectorHandle {
    touchstream_clickhouse::migrate(&c.clickhouse)
        .await
        .expect("migrate");
    touchstream_core::kafka::ensure_topics(&c.kafka, &[])
        .await
        .expect("topics");
    CollectorHandle::start(c.clone()).await
}

/// The faulty run's schedule.
#[derive(Clone, Copy)]
enum Faults {
    /// The only processor is SIGKILLed twice at varying points and restarted.
    Kills,
    /// A backfill (the log customer after customer, hours apart in event time): the only
    /// processor is SIGKILLed before its first snapshot
    /// (snapshots every 5 s), restarted, and SIGKILLed again right after.
    BackfillKills,
    /// As `Kills`, restarted without `processor.instance_id` (dynamic membership).
    DynamicKills,
    /// A second processor joins mid-stream (rebalance) and later leaves (SIGTERM).
    JoinLeave,
    /// A backfill (as `BackfillKills`) read by two processors in one group over
    /// multi-partition topics, started once a backlog has built up; one of them is
    /// SIGKILLed mid-backlog and restarted under its name.
    PairKill,
}

async fn compare_with_uninterrupted(faults: Faults, name: &str) {
    support::require_port("Kafka", &support::kafka_brokers());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let g = GeneratorConfig {
        customers: 200,
        seed: 99,
        ..GeneratorConfig::new(now)
    };
    let (messages, summary) = plan(&g);
    let start_ms = messages.first().map_or(now, |m| m.time_ms);

    // Uninterrupted reference run.
    let a = config(&format!("{name}_ref"));
    let collector_a = prepare(&a).await;
    let stop = CancellationToken::new();
    let p = tokio::spawn(touchstream_processor::run(a.clone(), None, stop.clone()));
    send(&messages, &sender(&collector_a.base, 0.0), None)
        .await
        .expect("send");
    let reference = settle(&a, &g, start_ms, &summary).await;
    stop.cancel();
    let _ = p.await;
    collector_a.stop().await;
    assert_eq!(reference.attempts.len(), summary.attempts);
    assert!(reference.touchpoints.iter().all(|t| t.is_late == 0));

    // The same log, with faults, ~10 s of traffic so they land mid-stream.
    let mut b = config(&format!("{name}_faults"));
    if matches!(faults, Faults::Kills) {
        // Frequent saves, a whole snapshot after every 3 deltas: the kills land between
        // deltas and compactions (README "Processor state"), and restores read chains.
        b.processor.snapshot_interval_ms = 700;
        b.processor.snapshot_compact_after_deltas = 3;
    }
    let collector_b = prepare(&b).await;
    let base = collector_b.base.clone();
    let msgs = match faults {
        Faults::BackfillKills | Faults::PairKill => customer_after_customer(&messages),
        _ => messages.clone(),
    };
    let rate = (summary.messages as f64 / 10.0).max(50.0);
    let sending = tokio::spawn(async move { send(&msgs, &sender(&base, rate), None).await });
    // Fault points vary run to run (seed printed, to replay a failure by eye).
    let seed = now as u64;
    let pause = |k: u32| Duration::from_millis(1000 + (seed.rotate_left(k * 7) % 3000));
    println!("fault schedule seed {seed}");
    let mut p1;
    let mut p2: Option<Proc> = None;
    match faults {
        Faults::Kills => {
            // Static membership: the restarted replica takes its partitions back under
            // the same name instead of waiting for the dead member's session to expire.
            let replica = Some("replica-1");
            p1 = start_child(&b, replica);
            tokio::time::sleep(pause(1)).await;
            p1.sigkill(); // mid-stream: no chance to flush, snapshot or commit
            p1 = start_child(&b, replica);
            tokio::time::sleep(pause(2)).await;
            p1.sigkill();
            p1 = start_child(&b, replica);
        }
        Faults::DynamicKills => {
            p1 = start_child(&b, None);
            tokio::time::sleep(pause(1)).await;
            p1.sigkill();
            p1 = start_child(&b, None);
            tokio::time::sleep(pause(2)).await;
            p1.sigkill();
            p1 = start_child(&b, None);
        }
        Faults::BackfillKills => {
            // Static membership, as for `Kills`: on tansu a restarted dynamic member
            // waited for the dead one's group membership for minutes (docs/ops.md).
            let replica = Some("replica-1");
            p1 = start_child(&b, replica);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            p1.sigkill(); // before the first snapshot: nothing saved, nothing committed
            p1 = start_child(&b, replica);
            tokio::time::sleep(pause(1)).await;
            p1.sigkill();
            p1 = start_child(&b, replica);
        }
        Faults::JoinLeave => {
            p1 = start_child(&b, None);
            tokio::time::sleep(pause(1)).await;
            let mut p2 = start_child(&b, None); // joins: rebalance
            tokio::time::sleep(pause(2) + pause(3)).await;
            sigterm(&mut p2); // leaves: rebalance
        }
        Faults::PairKill => {
            // A backlog first, then two replicas share the partitions (static
            // membership, as for `Kills`).
            tokio::time::sleep(Duration::from_secs(3)).await;
            p1 = start_child(&b, Some("replica-1"));
            let second = start_child(&b, Some("replica-2"));
            tokio::time::sleep(pause(1)).await;
            second.sigkill(); // mid-backlog: its partitions' unsaved work is lost
            tokio::time::sleep(Duration::from_secs(1)).await;
            p2 = Some(start_child(&b, Some("replica-2")));
        }
    }
    sending.await.expect("join").expect("send");
    let faulty = settle(&b, &g, start_ms, &summary).await;
    sigterm(&mut p1);
    if let Some(p2) = p2.as_mut() {
        sigterm(p2);
    }
    collector_b.stop().await;

    assert_eq!(
        faulty.events, reference.events,
        "events: none lost, none doubled"
    );
    assert_eq!(faulty.links, reference.links, "identities");
    assert_eq!(faulty.attempts, reference.attempts, "funnel attempts");
    assert_eq!(faulty.sessions, reference.sessions, "sessions");
    assert_eq!(faulty.touchpoints, reference.touchpoints, "touchpoints");
    if matches!(faults, Faults::Kills) {
        let ch = touchstream_clickhouse::client(&b.clickhouse);
        let deltas: u64 = ch
            .query("SELECT count() FROM processor_state_delta WHERE slot >= 1")
            .fetch_one()
            .await
            .expect("deltas");
        assert!(deltas > 0, "the journey partitions saved deltas");
    }

    for c in [&a, &b] {
        support::drop_database(&c.clickhouse).await;
    }
}

/// SIGKILL twice at varying points, restarting under the same static membership name
/// (`processor.instance_id`). Without it, tansu sometimes never completed the rebalance
/// that should drop the dead member (3 of 6 runs stalled), so the setting is also what
/// docs/ops.md recommends for crash-restarting replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_and_restarted_processors_lose_and_duplicate_nothing() {
    compare_with_uninterrupted(Faults::Kills, "crash_kill").await;
}

/// A second member joins (partitions move to it) and later leaves (they move back). Each
/// revocation makes a member drop its in-memory partition states and reload them from
/// the snapshots, which the other member may have moved on in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_joining_and_leaving_mid_stream_changes_nothing() {
    compare_with_uninterrupted(Faults::JoinLeave, "crash_rebalance").await;
}

/// A backfill sent customer after customer, the processor killed before its first
/// snapshot and again soon after: the restarted stages re-read
/// events that the first process had already routed behind a watermark it moved on. The
/// tables must still equal the time-ordered uninterrupted run, with no event late.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_killed_before_its_first_snapshot_gives_the_time_ordered_answer() {
    compare_with_uninterrupted(Faults::BackfillKills, "crash_backfill").await;
}

/// Two processors share a backlog (the backfill above) over 3-partition topics; one is
/// SIGKILLed mid-backlog and restarted under its name: its identity partitions re-send
/// what they had routed since their last snapshots, interleaved with the other
/// processor's partitions. The tables must equal the uninterrupted time-ordered run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_processors_killed_mid_backlog_changes_nothing() {
    compare_with_uninterrupted(Faults::PairKill, "crash_pair").await;
}

/// As the SIGKILL test, restarted as dynamic members (no `processor.instance_id`): the
/// dead member stays in the group until its session (10 s) expires. Ignored by default:
/// see docs/ops.md "Running processor replicas" for what tansu does then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "dynamic membership after SIGKILL on tansu: docs/ops.md"]
async fn sigkilled_dynamic_members_lose_and_duplicate_nothing() {
    compare_with_uninterrupted(Faults::DynamicKills, "crash_dynamic").await;
}

/// SIGTERM while the processor waits for Kafka at its start (no broker on its address)
/// ends the process within a few seconds. Each read of the topics' metadata runs on a
/// blocking thread that the exiting runtime waits for, so a read with a 10 s timeout held
/// the exit for up to that long after SIGTERM.
#[tokio::test]
async fn sigterm_while_waiting_for_the_broker_exits_promptly() {
    let mut c = config("crash_wait");
    // A "broker" that accepts connections and never answers, held for the whole test:
    // every metadata read waits its full timeout, and no other test can take the port.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    c.kafka.brokers = silent.local_addr().expect("addr").to_string();
    touchstream_clickhouse::migrate(&c.clickhouse)
        .await
        .expect("migrate");
    let mut p = start_child(&c, None);
    // The first failed read is logged once its timeout passed; the next one follows after
    // the start wait's first backoff (200 ms, `retry_at_start` in the processor), so
    // SIGTERM 800 ms after the log line arrives while that read waits on the silent broker.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&p.1)
        .unwrap_or_default()
        .contains("reading the topics' partition counts failed")
    {
        assert!(p.0.try_wait().ok().flatten().is_none(), "processor exited");
        assert!(Instant::now() < deadline, "no failed read logged in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let took = sigterm(&mut p);
    assert!(
        took < Duration::from_secs(5),
        "the exit took {took:?} after SIGTERM"
    );
    drop(silent);
    support::drop_database(&c.clickhouse).await;
}
