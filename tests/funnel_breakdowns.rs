//! Funnel breakdowns (README "Funnels", Breakdowns) through the real collector, broker,
//! processor and ClickHouse: the repository's funnels (web checkout by entry channel,
//! service recovery by call-centre team) plus an `each_step` funnel by source and store.
//! The `funnel_attempts` rows must carry the hand-worked breakdown values, the analyst
//! query `docs/queries/8_funnel_dropoff_by_breakdown.sql` must group by them, and the
//! processor's funnel counters must carry the bounded `breakdown` label.

use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use serde_json::{json, Value};
use touchstream_collector::message::format_timestamp as iso;
use touchstream_tests::{self as support, CollectorHandle, ProcessorHandle};

const MIN: i64 = 60_000;

const EXTRA_FUNNELS: &str = r#"
[[funnel]]
name = "store_path"
window_secs = 3600
steps = [
  { event = "Store Visited" },
  { event = "Coupon Redeemed", optional = true },
  { event = "Survey Completed" },
]
breakdown = [{ key = "source" }, { key = "properties.store", values = ["leeds"] }]
breakdown_attribution = "each_step"
"#;

/// (customer, [(minute, event, message channel, properties)]).
type Script = (
    &'static str,
    Vec<(i64, &'static str, Option<&'static str>, Value)>,
);

fn scripts() -> Vec<Script> {
    let none = || json!({});
    vec![
        // Entered on the web, left after viewing.
        ("w1", vec![(0, "Product Viewed", Some("web"), none())]),
        // Entered in the app, bought on the web: first_step keeps `app`.
        (
            "a1",
            vec![
                (0, "Product Viewed", Some("app"), none()),
                (1, "Product Added", Some("web"), none()),
                (2, "Checkout Started", Some("web"), none()),
                (3, "Order Completed", Some("web"), none()),
            ],
        ),
        // Entered in the app, abandoned the cart.
        (
            "a2",
            vec![
                (0, "Product Viewed", Some("app"), none()),
                (1, "Product Added", Some("app"), none()),
            ],
        ),
        // Team north followed up, the customer bought again.
        (
            "s1",
            vec![
                (0, "Complaint Filed", None, json!({"team": "north"})),
                (10, "Follow-up Completed", None, none()),
                (30, "Order Completed", None, none()),
            ],
        ),
        // Team east (not allow-listed: `other` in metrics, `east` in rows), no follow-up.
        (
            "s2",
            vec![(0, "Complaint Filed", None, json!({"team": "east"}))],
        ),
        // each_step: the store of each step; step 2 (optional) skipped.
        (
            "p1",
            vec![
                (0, "Store Visited", None, json!({"store": "leeds"})),
                (
                    5,
                    "Survey Completed",
                    None,
                    json!({"store": "york", "scale": "csat", "score": 4}),
                ),
            ],
        ),
    ]
}

#[derive(Row, Deserialize, Debug, PartialEq, Clone)]
struct AttemptRow {
    customer_id: String,
    funnel: String,
    outcome: String,
    reached_step: u8,
    breakdown_keys: Vec<String>,
    breakdown_values: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breakdowns_through_the_pipeline() {
    support::require_port("Kafka", &support::kafka_brokers());
    let funnels_path = support::funnels_with(EXTRA_FUNNELS);
    let mut c = support::processor_config("funnel_breakdowns");
    c.processor.funnels_path = funnels_path.clone();
    c.processor.allowed_lateness_secs = 60;
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
        for (k, (minute, name, channel, props)) in events.into_iter().enumerate() {
            let mut m = json!({
                "type": "track",
                "event": name,
                "userId": customer,
                "properties": props,
                "messageId": format!("{customer}-{k}"),
                "timestamp": iso(t0 + minute * MIN),
            });
            if let Some(channel) = channel {
                m["channel"] = json!(channel);
            }
            batch.push((t0 + minute * MIN, m));
        }
    }
    batch.sort_by_key(|(t, _)| *t);
    let batch: Vec<Value> = batch.into_iter().map(|(_, m)| m).collect();
    support::post_batch(&collector.base, &batch).await;

    let row = |c: &str, f: &str, o: &str, r: u8, keys: &[&str], values: &[&str]| AttemptRow {
        customer_id: c.into(),
        funnel: f.into(),
        outcome: o.into(),
        reached_step: r,
        breakdown_keys: keys.iter().map(|s| s.to_string()).collect(),
        breakdown_values: values.iter().map(|s| s.to_string()).collect(),
    };
    let (wc, sr, sp) = ("web_checkout", "service_recovery", "store_path");
    let want = vec![
        row("a1", wc, "converted", 4, &["channel"], &["app"]),
        row("a2", wc, "dropped", 2, &["channel"], &["app"]),
        row(
            "p1",
            sp,
            "converted",
            3,
            &["source", "properties.store"],
            &["web", "leeds", "", "", "web", "york"],
        ),
        row("s1", sr, "converted", 3, &["properties.team"], &["north"]),
        row("s2", sr, "dropped", 1, &["properties.team"], &["east"]),
        row("w1", wc, "dropped", 1, &["channel"], &["web"]),
    ];
    let ch = touchstream_clickhouse::client(&c.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = loop {
        let got: Vec<AttemptRow> = ch
            .query(
                "SELECT customer_id, funnel, outcome, reached_step, breakdown_keys, \
                 breakdown_values FROM funnel_attempts FINAL WHERE is_deleted = 0 \
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

    // The analyst query groups each step by its attributed values (each_step: the step's).
    let db = &c.clickhouse.database;
    assert_eq!(
        support::analyst_query(&ch, db, "8_funnel_dropoff_by_breakdown.sql").await,
        "service_recovery\teast\t1\t1\t1\t100\n\
         service_recovery\tnorth\t1\t1\t0\t0\n\
         service_recovery\tnorth\t2\t1\t0\t0\n\
         service_recovery\tnorth\t3\t1\t0\t0\n\
         store_path\tweb/leeds\t1\t1\t0\t0\n\
         store_path\tweb/york\t3\t1\t0\t0\n\
         web_checkout\tapp\t1\t2\t0\t0\n\
         web_checkout\tapp\t2\t2\t1\t50\n\
         web_checkout\tapp\t3\t1\t0\t0\n\
         web_checkout\tapp\t4\t1\t0\t0\n\
         web_checkout\tweb\t1\t1\t1\t100"
    );

    // The processor's counters carry the bounded label: allow-listed values or `other`.
    let text = processor.metrics().await;
    let metric = |name: &str, labels: &[&str]| {
        support::metric_sum(&text, &format!("touchstream_processor_{name}"), labels)
    };
    let counted = [
        metric(
            "funnel_step_dropped_total",
            &[
                r#"funnel="service_recovery""#,
                r#"step="1""#,
                r#"breakdown="other""#,
            ],
        ),
        metric(
            "funnel_converted_total",
            &[r#"funnel="service_recovery""#, r#"breakdown="north""#],
        ),
        metric(
            "funnel_step_reached_total",
            &[
                r#"funnel="web_checkout""#,
                r#"step="2""#,
                r#"breakdown="app""#,
            ],
        ),
        metric(
            "funnel_step_dropped_total",
            &[
                r#"funnel="web_checkout""#,
                r#"step="1""#,
                r#"breakdown="web""#,
            ],
        ),
        metric(
            "funnel_attempts_total",
            &[
                r#"funnel="web_checkout""#,
                r#"outcome="converted""#,
                r#"breakdown="app""#,
            ],
        ),
        metric(
            "funnel_step_reached_total",
            &[
                r#"funnel="store_path""#,
                r#"step="1""#,
                r#"breakdown="other/leeds""#,
            ],
        ),
        metric(
            "funnel_step_reached_total",
            &[
                r#"funnel="store_path""#,
                r#"step="3""#,
                r#"breakdown="other/other""#,
            ],
        ),
    ];
    assert_eq!(counted, [1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0], "{text}");

    processor.stop().await;
    collector.stop().await;
    support::drop_database(&c.clickhouse).await;
    let _ = std::fs::remove_file(&funnels_path);
}
