//! Every funnel option (README "Funnels") through the real collector, broker, processor
//! and ClickHouse: hand-written journeys on the repository's funnels (whose
//! `service_recovery` excludes refunds) plus a strict funnel with an optional step, a
//! `within_secs` step and numeric / `exists` filters, and an any-order funnel with `in` /
//! `not` filters. The `funnel_attempts` rows must be the hand-worked ones, and the
//! analyst queries must leave excluded attempts and skipped steps out: the drop-off view
//! (`docs/queries/1_funnel_dropoff_by_step.sql`) and the exclusion query
//! (`docs/queries/6_service_recovery_exclusions.sql`), and so must the processor's funnel
//! counters.

use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use serde_json::{json, Value};
use touchstream_collector::message::format_timestamp as iso;
use touchstream_tests::{self as support, CollectorHandle, ProcessorHandle};

const MIN: i64 = 60_000;

const EXTRA_FUNNELS: &str = r#"
[[funnel]]
name = "strict_checkout"
order = "strict"
window_secs = 3600
steps = [
  { event = "Product Viewed" },
  { event = "Product Added", optional = true },
  { event = "Checkout Started", within_secs = 600 },
  { event = "Order Completed", where = { total = { ">" = 20 }, coupon = { exists = false } } },
]

[[funnel]]
name = "any_survey"
order = "any"
window_secs = 3600
steps = [
  { event = "Survey Answered", where = { tier = { in = ["gold", "silver"] } } },
  { event = "Coupon Redeemed", where = { tier = { not = "bronze" } } },
]
"#;

/// (customer, minutes after t0, event, properties); message ids are `customer-k`.
type Script = (&'static str, Vec<(i64, &'static str, Value)>);

fn scripts() -> Vec<Script> {
    let none = || json!({});
    vec![
        // service_recovery: refund between follow-up and order → excluded at the refund.
        (
            "refund",
            vec![
                (0, "Complaint Filed", none()),
                (10, "Follow-up Completed", none()),
                (20, "Order Refunded", none()),
                (30, "Order Completed", none()),
            ],
        ),
        (
            "recovered",
            vec![
                (0, "Complaint Filed", none()),
                (10, "Follow-up Completed", none()),
                (30, "Order Completed", none()),
            ],
        ),
        (
            "lost",
            vec![
                (0, "Complaint Filed", none()),
                (10, "Follow-up Completed", none()),
            ],
        ),
        // strict: another event after step 1 drops it there (web_checkout converts).
        (
            "strict",
            vec![
                (0, "Product Viewed", none()),
                (1, "Banner Clicked", none()),
                (2, "Product Added", none()),
                (3, "Checkout Started", none()),
                (4, "Order Completed", json!({"total": 50})),
            ],
        ),
        // strict: optional step skipped, converted.
        (
            "skip",
            vec![
                (0, "Product Viewed", none()),
                (1, "Checkout Started", none()),
                (2, "Order Completed", json!({"total": "50"})),
            ],
        ),
        // strict: checkout 11 min after the add is past within_secs = 600.
        (
            "slow",
            vec![
                (0, "Product Viewed", none()),
                (1, "Product Added", none()),
                (12, "Checkout Started", none()),
            ],
        ),
        // strict: an order of 10 is not step 4, so it interrupts.
        (
            "small",
            vec![
                (0, "Product Viewed", none()),
                (1, "Checkout Started", none()),
                (2, "Order Completed", json!({"total": 10})),
            ],
        ),
        // any: step 2 before step 1.
        (
            "any",
            vec![
                (0, "Coupon Redeemed", json!({"tier": "gold"})),
                (5, "Survey Answered", json!({"tier": "silver"})),
            ],
        ),
        // any: a bronze survey is no step; a bronze coupon neither.
        (
            "bronze",
            vec![
                (0, "Survey Answered", json!({"tier": "bronze"})),
                (1, "Survey Answered", json!({"tier": "gold"})),
                (2, "Coupon Redeemed", json!({"tier": "bronze"})),
            ],
        ),
    ]
}

/// (customer, funnel, outcome, reached_step, step_event_ids, closed minute after t0).
type Want = (
    &'static str,
    &'static str,
    &'static str,
    u8,
    Vec<&'static str>,
    i64,
);

fn expected() -> Vec<Want> {
    const WEEK: i64 = 7 * 24 * 60;
    vec![
        (
            "any",
            "any_survey",
            "converted",
            2,
            vec!["any-0", "any-1"],
            5,
        ),
        ("bronze", "any_survey", "dropped", 1, vec!["bronze-1"], 61),
        (
            "lost",
            "service_recovery",
            "dropped",
            2,
            vec!["lost-0", "lost-1"],
            WEEK,
        ),
        (
            "recovered",
            "service_recovery",
            "converted",
            3,
            vec!["recovered-0", "recovered-1", "recovered-2"],
            30,
        ),
        (
            "refund",
            "service_recovery",
            "excluded",
            2,
            vec!["refund-0", "refund-1"],
            20,
        ),
        (
            "skip",
            "strict_checkout",
            "converted",
            4,
            vec!["skip-0", "", "skip-1", "skip-2"],
            2,
        ),
        ("skip", "web_checkout", "dropped", 1, vec!["skip-0"], 60),
        (
            "slow",
            "strict_checkout",
            "dropped",
            2,
            vec!["slow-0", "slow-1"],
            11,
        ),
        (
            "slow",
            "web_checkout",
            "dropped",
            3,
            vec!["slow-0", "slow-1", "slow-2"],
            60,
        ),
        (
            "small",
            "strict_checkout",
            "dropped",
            3,
            vec!["small-0", "", "small-1"],
            2,
        ),
        ("small", "web_checkout", "dropped", 1, vec!["small-0"], 60),
        (
            "strict",
            "strict_checkout",
            "dropped",
            1,
            vec!["strict-0"],
            1,
        ),
        (
            "strict",
            "web_checkout",
            "converted",
            4,
            vec!["strict-0", "strict-2", "strict-3", "strict-4"],
            4,
        ),
    ]
}

#[derive(Row, Deserialize, Debug, PartialEq, Clone)]
struct AttemptRow {
    customer_id: String,
    funnel: String,
    outcome: String,
    reached_step: u8,
    step_event_ids: Vec<String>,
    closed_ms: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_funnel_option_through_the_pipeline() {
    support::require_port("Kafka", &support::kafka_brokers());
    let funnels_path = support::funnels_with(EXTRA_FUNNELS);
    let mut c = support::processor_config("funnel_options");
    c.processor.funnels_path = funnels_path.clone();
    c.processor.allowed_lateness_secs = 60;
    // Attempts still open when the log ends close once the watermark follows the clock.
    c.processor.idle_watermark_secs = 5;
    support::prepare(&c).await;
    let collector = CollectorHandle::start(c.clone()).await;
    let processor = ProcessorHandle::start(c.clone()).await;

    // Nine days ago: the 7-day service_recovery window has passed too.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let t0 = (now - 9 * 24 * 60 * MIN) / MIN * MIN;
    let mut batch = Vec::new();
    for (customer, events) in scripts() {
        for (k, (minute, name, props)) in events.into_iter().enumerate() {
            batch.push((
                t0 + minute * MIN,
                json!({
                    "type": "track",
                    "event": name,
                    "userId": customer,
                    "properties": props,
                    "messageId": format!("{customer}-{k}"),
                    "timestamp": iso(t0 + minute * MIN),
                }),
            ));
        }
    }
    batch.sort_by_key(|(t, _)| *t);
    let batch: Vec<Value> = batch.into_iter().map(|(_, m)| m).collect();
    support::post_batch(&collector.base, &batch).await;

    let want: Vec<AttemptRow> = expected()
        .into_iter()
        .map(|(c, f, o, r, ids, m)| AttemptRow {
            customer_id: c.into(),
            funnel: f.into(),
            outcome: o.into(),
            reached_step: r,
            // Event ids are `<source>:<messageId>` (README "Event ids and retries"); a
            // skipped optional step stays empty.
            step_event_ids: ids
                .into_iter()
                .map(|id| match id {
                    "" => String::new(),
                    id => format!("web:{id}"),
                })
                .collect(),
            closed_ms: t0 + m * MIN,
        })
        .collect();
    let ch = touchstream_clickhouse::client(&c.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = loop {
        let got: Vec<AttemptRow> = ch
            .query(
                "SELECT customer_id, funnel, outcome, reached_step, step_event_ids, closed_ms \
                 FROM funnel_attempts FINAL WHERE is_deleted = 0 \
                 ORDER BY customer_id, funnel, start_ms",
            )
            .fetch_all()
            .await
            .expect("attempts");
        if got.len() >= want.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(got, want);

    let db = &c.clickhouse.database;
    let run = |file: &'static str| support::analyst_query(&ch, db, file);
    // Refunded complaints are out: one recovered of two.
    assert_eq!(
        run("6_service_recovery_exclusions.sql").await,
        "1\t1\t1\t50"
    );
    // The drop-off query leaves out the excluded attempt (service_recovery step 1: the
    // recovered and the lost one) and skipped optional steps (strict_checkout step 2:
    // only `slow` reached it; `skip` and `small` skipped it).
    let dropoff = run("1_funnel_dropoff_by_step.sql").await;
    let of = |funnel: &str| {
        dropoff
            .lines()
            .filter(|l| l.starts_with(&format!("{funnel}\t")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        of("service_recovery"),
        "service_recovery\t1\t2\t0\t0\nservice_recovery\t2\t2\t1\t50\nservice_recovery\t3\t1\t0\t0"
    );
    assert_eq!(
        of("strict_checkout"),
        "strict_checkout\t1\t4\t1\t25\nstrict_checkout\t2\t1\t1\t100\n\
         strict_checkout\t3\t2\t1\t50\nstrict_checkout\t4\t1\t0\t0"
    );

    // The processor's counters: the excluded attempt only under outcome="excluded", in no
    // step counter; skipped optional steps are not reached (README "Processor metrics").
    let text = processor.metrics().await;
    // Summed over the series carrying `labels`, whatever their `breakdown` (the
    // repository's funnels break down by channel and team, the extra ones do not).
    let metric = |name: &str, labels: &str| {
        let labels: Vec<&str> = labels.split(',').collect();
        support::metric_sum(&text, &format!("touchstream_processor_{name}"), &labels)
    };
    let sr = "funnel=\"service_recovery\"";
    let sc = "funnel=\"strict_checkout\"";
    let counted = [
        metric(
            "funnel_attempts_total",
            &format!("{sr},outcome=\"excluded\""),
        ),
        metric(
            "funnel_attempts_total",
            &format!("{sr},outcome=\"dropped\""),
        ),
        metric("funnel_step_reached_total", &format!("{sr},step=\"1\"")),
        metric("funnel_step_reached_total", &format!("{sr},step=\"2\"")),
        metric("funnel_step_dropped_total", &format!("{sr},step=\"2\"")),
        metric("funnel_step_reached_total", &format!("{sc},step=\"1\"")),
        metric("funnel_step_reached_total", &format!("{sc},step=\"2\"")),
        metric("funnel_step_reached_total", &format!("{sc},step=\"3\"")),
    ];
    assert_eq!(counted, [1.0, 1.0, 2.0, 2.0, 1.0, 4.0, 1.0, 2.0], "{text}");

    processor.stop().await;
    collector.stop().await;
    support::drop_database(&c.clickhouse).await;
    let _ = std::fs::remove_file(&funnels_path);
}
