//! Changing a funnel safely (README, "Changing funnels"): the first half of a generated
//! log is processed under an older definition of `service_recovery`; the processor
//! stops, the definition changes to the repository's, `touchstream funnels backfill`
//! recomputes the funnel from ClickHouse, a processor with the new definition takes the
//! second half — and `funnel_attempts` ends equal, row by row, to a fresh run that had
//! the new definition all along.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use touchstream_core::Config;
use touchstream_demo::generator::{plan, GeneratorConfig, Planned};
use touchstream_demo::sender::send;
use touchstream_processor::backfill::{backfill, BackfillOptions};
use touchstream_tests::journeys::{sender, settle, tables};
use touchstream_tests::{self as support, CollectorHandle};

/// `service_recovery` as it was before: a one-hour window, follow-up and purchase in the
/// other order (so the old definition closes attempts the new one must replace).
const BEFORE: &str = r#"
[[funnel]]
name = "web_checkout"
window_secs = 3600
steps = [
  { event = "Product Viewed" },
  { event = "Product Added" },
  { event = "Checkout Started" },
  { event = "Order Completed" },
]
# As in deploy/funnels.toml: web_checkout keeps its definition (and fingerprint).
breakdown = [{ key = "channel", values = ["web", "app"] }]

[[funnel]]
name = "service_recovery"
window_secs = 3600
steps = [
  { event = "Complaint Filed" },
  { event = "Order Completed" },
  { event = "Follow-up Completed" },
]
"#;

fn config(test: &str) -> Config {
    let mut c = support::processor_config(test);
    c.processor.allowed_lateness_secs = 60;
    c.processor.idle_watermark_secs = 5;
    c
}

async fn events(c: &Config) -> u64 {
    let ch = touchstream_clickhouse::client(&c.clickhouse);
    ch.query("SELECT count() FROM events FINAL")
        .fetch_one()
        .await
        .unwrap_or(0)
}

/// Events older than the journey stage's release frontier: the raw partitions' oldest
/// newest event time, less the allowed lateness (60 s).
async fn releasable(c: &Config) -> u64 {
    let ch = touchstream_clickhouse::client(&c.clickhouse);
    ch.query(
        "SELECT count() FROM events FINAL WHERE event_time_ms < \
         (SELECT min(newest) FROM (SELECT max(event_time_ms) AS newest FROM events \
          GROUP BY kafka_partition)) - 60000",
    )
    .fetch_one()
    .await
    .unwrap_or(u64::MAX)
}

/// Run a processor over `messages` until `events` holds `expect` rows and the journey
/// tables stop changing, then stop it (it saves its state on the way out).
async fn process(c: &Config, collector: &CollectorHandle, messages: &[Planned], expect: u64) {
    let stop = CancellationToken::new();
    let processor = tokio::spawn(touchstream_processor::run(c.clone(), None, stop.clone()));
    send(messages, &sender(&collector.base, 0.0), None)
        .await
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if events(c).await == expect {
            let t = tables(c).await;
            // Events within the allowed lateness of the journey watermark stay buffered;
            // the rest is placed once the journey stage has caught up. The watermark is
            // the oldest of the raw partitions' newest event times, so a partition whose
            // last event is an hour old holds an hour back.
            let placed = t
                .touchpoints
                .iter()
                .filter(|r| !r.customer_id.is_empty())
                .count() as u64;
            if placed + 20 >= releasable(c).await && last.as_ref() == Some(&t) {
                break;
            }
            last = Some(t);
        }
        assert!(Instant::now() < deadline, "first half not processed");
    }
    stop.cancel();
    processor.await.expect("join").expect("processor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfilled_funnel_equals_a_run_that_always_had_it() {
    support::require_port("Kafka", &support::kafka_brokers());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let g = GeneratorConfig {
        customers: 200,
        seed: 23,
        days: 1,
        ..GeneratorConfig::new(now)
    };
    let (messages, summary) = plan(&g);
    let start_ms = messages.first().map_or(now, |m| m.time_ms);
    let (first, second) = messages.split_at(messages.len() / 2);

    // The run that always had today's definition.
    let c = config("backfill_fresh");
    support::prepare(&c).await;
    let collector = CollectorHandle::start(c.clone()).await;
    let stop = CancellationToken::new();
    let processor = tokio::spawn(touchstream_processor::run(c.clone(), None, stop.clone()));
    send(&messages, &sender(&collector.base, 0.0), None)
        .await
        .expect("send");
    let fresh = settle(&c, &g, start_ms, &summary).await;
    stop.cancel();
    let _ = processor.await;
    collector.stop().await;
    support::drop_database(&c.clickhouse).await;

    // The changed run: first half under the old definition.
    let mut c = config("backfill_changed");
    let before = support::artifacts_dir().join(format!("{}-funnels.toml", c.processor.group_id));
    std::fs::write(&before, BEFORE).expect("write funnels");
    let today = c.processor.funnels_path.clone();
    c.processor.funnels_path = before;
    // No idle watermark yet: the second half, days old, must not meet a frontier the
    // pause between the halves moved to the wall clock (it would be too late to place).
    c.processor.idle_watermark_secs = 0;
    support::prepare(&c).await;
    let collector = CollectorHandle::start(c.clone()).await;
    process(&c, &collector, first, first.len() as u64).await;
    let old = tables(&c).await;
    assert!(
        old.attempts.iter().any(|a| a.funnel == "service_recovery"),
        "the old definition wrote attempts"
    );

    // The definition changes; the backfill recomputes the funnel.
    c.processor.funnels_path = today;
    let report = backfill(
        &c,
        &BackfillOptions {
            funnel: "service_recovery".into(),
            since_ms: i64::MIN,
        },
        &|_| {},
    )
    .await
    .expect("backfill");
    assert!(report.partitions > 0, "{report:?}");
    assert!(report.attempt_rows > 0, "{report:?}");
    assert_eq!(report.missing_events, 0, "{report:?}");

    // The stream goes on under the new definition; once the log ends, the idle
    // watermark closes what is still open, as in the fresh run.
    c.processor.idle_watermark_secs = 5;
    let stop = CancellationToken::new();
    let processor = tokio::spawn(touchstream_processor::run(c.clone(), None, stop.clone()));
    let sent = send(second, &sender(&collector.base, 0.0), None)
        .await
        .expect("send");
    assert_eq!(sent.accepted, second.len(), "second half accepted");
    let changed = settle(&c, &g, start_ms, &summary).await;
    stop.cancel();
    let _ = processor.await;
    collector.stop().await;
    support::drop_database(&c.clickhouse).await;

    let only = |t: &touchstream_tests::journeys::Tables, f: &str| -> Vec<_> {
        t.attempts
            .iter()
            .filter(|a| a.funnel == f)
            .cloned()
            .collect()
    };
    assert_eq!(
        only(&changed, "service_recovery"),
        only(&fresh, "service_recovery"),
        "service_recovery after the backfill"
    );
    assert_eq!(changed.attempts, fresh.attempts, "funnel_attempts");
    assert_eq!(changed.sessions, fresh.sessions, "sessions");
}
