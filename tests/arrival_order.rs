//! Arrival order does not change the answer (docs/design.md §4, Lateness): the same
//! generated journeys sent in time order, and customer after customer (as a backfill, a
//! server-side import or a mobile app's offline queue sends them, hours apart in event
//! time), end in equal `touchpoints`, `sessions`, `funnel_attempts` and `identities`, and
//! no event is stored as late.
//!
//! The customer-after-customer send is spread over a few seconds so the processor writes
//! many batches in between: every later customer's events then arrive behind a watermark
//! the earlier customers moved on.

use tokio_util::sync::CancellationToken;
use touchstream_core::Config;
use touchstream_demo::generator::{plan, GeneratorConfig, Planned};
use touchstream_demo::sender::send;
use touchstream_tests::journeys::{customer_after_customer, sender, settle, Tables};
use touchstream_tests::{self as support, CollectorHandle};

fn config(test: &str) -> Config {
    let mut c = support::processor_config(test);
    c.processor.allowed_lateness_secs = 60;
    // Attempts still open when the log ends close once the watermark follows the clock.
    c.processor.idle_watermark_secs = 5;
    c
}

/// One run: a fresh collector, processor, topics and database; `messages` sent in the
/// order given at `rate` events/s (0: as fast as the collector answers).
async fn run(
    name: &str,
    messages: &[Planned],
    rate: f64,
    g: &GeneratorConfig,
    start_ms: i64,
    summary: &touchstream_demo::generator::PlanSummary,
) -> Tables {
    let c = config(name);
    support::prepare(&c).await;
    let collector = CollectorHandle::start(c.clone()).await;
    let stop = CancellationToken::new();
    let processor = tokio::spawn(touchstream_processor::run(c.clone(), None, stop.clone()));
    send(messages, &sender(&collector.base, rate), None)
        .await
        .expect("send");
    let tables = settle(&c, g, start_ms, summary).await;
    stop.cancel();
    let _ = processor.await;
    collector.stop().await;
    support::drop_database(&c.clickhouse).await;
    tables
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customer_after_customer_gives_the_time_ordered_answer() {
    support::require_port("Kafka", &support::kafka_brokers());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let g = GeneratorConfig {
        customers: 150,
        seed: 17,
        // One day of journey starts: every customer's events stay well inside the
        // correction horizon of the repository's funnels (7 days and the session gap).
        days: 1,
        ..GeneratorConfig::new(now)
    };
    let (messages, summary) = plan(&g);
    let start_ms = messages.first().map_or(now, |m| m.time_ms);

    let reordered = customer_after_customer(&messages);
    assert_ne!(reordered, messages, "the log must really be reordered");

    let in_time_order = run("arrival_time", &messages, 0.0, &g, start_ms, &summary).await;
    assert!(in_time_order.touchpoints.iter().all(|t| t.is_late == 0));
    // ~6 s of traffic: many batches, so later customers meet an advanced watermark.
    let rate = (summary.messages as f64 / 6.0).max(50.0);
    let by_customer = run("arrival_customer", &reordered, rate, &g, start_ms, &summary).await;

    let late = by_customer
        .touchpoints
        .iter()
        .filter(|t| t.is_late != 0)
        .count();
    assert_eq!(late, 0, "events stored as late");
    assert_eq!(by_customer.events, in_time_order.events, "events");
    assert_eq!(by_customer.links, in_time_order.links, "identities");
    assert_eq!(by_customer.sessions, in_time_order.sessions, "sessions");
    assert_eq!(
        by_customer.attempts, in_time_order.attempts,
        "funnel attempts"
    );
    assert_eq!(
        by_customer.touchpoints, in_time_order.touchpoints,
        "touchpoints"
    );
}
