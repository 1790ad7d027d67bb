//! One event counts once (README "Event ids and retries", docs/design.md §4 Duplicates):
//! a client that retries a `/v1/track` after a timeout sends the same body (same
//! `messageId`, no `timestamp`) with a new `sentAt`, and the collector gives it a new
//! receipt time, hence a new event time. The retry must not count in `sessions`,
//! `funnel_attempts` or the processor's funnel metrics. And `messageId` is the
//! client's, unique only within its source: the same one from two sources is two
//! events.

use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use serde_json::{json, Value};
use touchstream_collector::message::format_timestamp;
use touchstream_core::Config;
use touchstream_tests::{self as support, CollectorHandle, ProcessorHandle};

/// A two-step funnel with a 5 s window, so an attempt anchored at a retry would drop
/// within seconds of the wall clock (the idle watermark follows it).
const FUNNELS: &str = r#"
[[funnel]]
name = "retry_check"
window_secs = 5
steps = [{ event = "Product Viewed" }, { event = "Product Added" }]
"#;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// A processor and collector on fresh topics (one partition: one watermark for every
/// customer) and database, the funnel above, a watermark that follows the clock after
/// 1 s idle.
struct Run {
    config: Config,
    collector: CollectorHandle,
    processor: ProcessorHandle,
    http: reqwest::Client,
}

impl Run {
    async fn start(test: &str) -> Self {
        support::require_port("Kafka", &support::kafka_brokers());
        let mut config = support::processor_config(test);
        config.kafka.partitions = 1;
        let dir = std::env::temp_dir().join(support::unique(test));
        std::fs::create_dir_all(&dir).expect("tmp");
        let funnels = dir.join("funnels.toml");
        std::fs::write(&funnels, FUNNELS).expect("funnels");
        config.processor.funnels_path = funnels;
        config.processor.allowed_lateness_secs = 1;
        config.processor.idle_watermark_secs = 1;
        support::prepare(&config).await;
        let collector = CollectorHandle::start(config.clone()).await;
        let processor = ProcessorHandle::start(config.clone()).await;
        Self {
            config,
            collector,
            processor,
            http: reqwest::Client::new(),
        }
    }

    /// POST one message to `/v1/<endpoint>` with a source's write key; must be accepted.
    async fn send(&self, key: &str, endpoint: &str, body: &Value) {
        let r = self
            .http
            .post(format!("{}/v1/{endpoint}", self.collector.base))
            .basic_auth(key, Some(""))
            .json(body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{body}");
    }

    fn ch(&self) -> clickhouse::Client {
        touchstream_clickhouse::client(&self.config.clickhouse)
    }

    /// The processor's Prometheus text.
    async fn metrics(&self) -> String {
        self.processor.metrics().await
    }

    async fn stop(self) {
        self.processor.stop().await;
        self.collector.stop().await;
        support::drop_database(&self.config.clickhouse).await;
    }
}

/// Sum of the samples of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .map(|v| v as u64)
        .sum()
}

#[derive(Row, Deserialize, Debug)]
struct Session {
    start_ms: i64,
    end_ms: i64,
    event_count: u32,
}

#[derive(Row, Deserialize, Debug)]
struct Attempt {
    customer_id: String,
    outcome: String,
    step_times_ms: Vec<i64>,
    step_event_ids: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_with_another_sent_at_counts_once() {
    let run = Run::start("dup_retry").await;
    // `anon` views and adds to cart: converted; its view is retried 2 s later. `dropper`
    // views twice and leaves: dropped at the first view's deadline; its second view is
    // retried after that deadline, where a new attempt would start.
    let (anon, dropper, sentinel) = (
        support::unique("a-retry"),
        support::unique("a-dropper"),
        support::unique("a-sentinel"),
    );
    let viewed = |who: &str, id: &str| {
        json!({"anonymousId": who, "event": "Product Viewed", "messageId": id,
               "properties": {"sku": "SKU-1"}, "sentAt": format_timestamp(now_ms())})
    };
    run.send("demo-web-key", "track", &viewed(&anon, "dup-retry-1"))
        .await;
    run.send(
        "demo-web-key",
        "track",
        &json!({"anonymousId": anon, "event": "Product Added", "messageId": "dup-retry-2"}),
    )
    .await;
    run.send("demo-web-key", "track", &viewed(&dropper, "drop-1"))
        .await;
    run.send("demo-web-key", "track", &viewed(&dropper, "drop-2"))
        .await;
    // The clients timed out and retry: same body, new `sentAt` (and receipt time).
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.send("demo-web-key", "track", &viewed(&anon, "dup-retry-1"))
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.send("demo-web-key", "track", &viewed(&dropper, "drop-2"))
        .await;
    // Another customer's attempt anchored after the retries: once it has dropped, an
    // attempt anchored at a retry would have dropped too (same partition, earlier
    // deadline).
    run.send("demo-web-key", "track", &viewed(&sentinel, "sentinel-1"))
        .await;

    let ch = run.ch();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let dropped: u64 = ch
            .query("SELECT count() FROM funnel_attempts FINAL WHERE customer_id = ? AND outcome = 'dropped' AND is_deleted = 0")
            .bind(&sentinel)
            .fetch_one()
            .await
            .expect("sentinel attempt");
        let m = run.metrics().await;
        let counted = sample(
            &m,
            "touchstream_processor_funnel_attempts_total",
            &[("funnel", "retry_check"), ("outcome", "dropped")],
        );
        if dropped == 1 && counted >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sentinel attempt never dropped ({dropped} rows, metric {counted})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Two more batches for anything still on its way.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every expectation is checked and the wrong ones listed together.
    let mut wrong = Vec::new();
    let event_id = "web:dup-retry-1";
    let stored: u64 = ch
        .query("SELECT count() FROM events FINAL WHERE event_id = ?")
        .bind(event_id)
        .fetch_one()
        .await
        .expect("events");
    if stored != 1 {
        wrong.push(format!("{stored} `events` rows for {event_id}, want 1"));
    }

    let sessions: Vec<Session> = ch
        .query("SELECT start_ms, end_ms, event_count FROM sessions FINAL WHERE customer_id = ? AND is_deleted = 0")
        .bind(&anon)
        .fetch_all()
        .await
        .expect("sessions");
    // The Product Added came right after the first copy, the retry 2 s later.
    let one_session =
        matches!(&sessions[..], [s] if s.event_count == 2 && s.end_ms - s.start_ms < 2_000);
    if !one_session {
        wrong.push(format!(
            "sessions {sessions:?}, want one of 2 events ending before the retry's time"
        ));
    }

    let attempts: Vec<Attempt> = ch
        .query("SELECT customer_id, outcome, step_times_ms, step_event_ids FROM funnel_attempts FINAL WHERE is_deleted = 0 ORDER BY customer_id")
        .fetch_all()
        .await
        .expect("funnel_attempts");
    let mine: Vec<&Attempt> = attempts.iter().filter(|a| a.customer_id == anon).collect();
    let converted_once = matches!(&mine[..], [a] if a.outcome == "converted"
        && a.step_event_ids == [event_id, "web:dup-retry-2"]
        && a.step_times_ms[0] <= a.step_times_ms[1]);
    if !converted_once {
        wrong.push(format!(
            "attempts {mine:?}, want one converted, step 1 at the first copy's time"
        ));
    }

    let theirs: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.customer_id == dropper)
        .collect();
    let dropped_once = matches!(&theirs[..], [a] if a.outcome == "dropped"
        && a.step_event_ids == ["web:drop-1"]);
    if !dropped_once {
        wrong.push(format!(
            "attempts {theirs:?}, want one dropped, anchored at the first view"
        ));
    }

    // The funnel metrics: `anon` converted, `dropper` and the sentinel dropped at step 1.
    let m = run.metrics().await;
    let funnel = ("funnel", "retry_check");
    let attempts_total = "touchstream_processor_funnel_attempts_total";
    let step_dropped = "touchstream_processor_funnel_step_dropped_total";
    let step_reached = "touchstream_processor_funnel_step_reached_total";
    for (name, label, want) in [
        (attempts_total, ("outcome", "dropped"), 2),
        (attempts_total, ("outcome", "converted"), 1),
        (step_dropped, ("step", "1"), 2),
        (step_reached, ("step", "1"), 3),
        (step_reached, ("step", "2"), 1),
    ] {
        let got = sample(&m, name, &[funnel, label]);
        if got != want {
            wrong.push(format!("{name}{{{label:?}}} = {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    run.stop().await;
}

#[derive(Row, Deserialize, Debug, PartialEq)]
struct Stored {
    event_id: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    event: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_message_id_from_two_sources_is_two_events() {
    let run = Run::start("dup_sources").await;
    let user = support::unique("u-coll");
    run.send(
        "demo-crm-key",
        "track",
        &json!({"userId": user, "event": "Order Completed", "messageId": "coll-1"}),
    )
    .await;
    run.send(
        "demo-web-key",
        "page",
        &json!({"userId": user, "name": "Home", "messageId": "coll-1"}),
    )
    .await;

    let ch = run.ch();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Both inserts landed (before FINAL merges them, if it would).
    loop {
        let rows: u64 = ch
            .query("SELECT count() FROM events")
            .fetch_one()
            .await
            .expect("events");
        if rows >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows} of 2 events stored");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stored: Vec<Stored> = ch
        .query("SELECT event_id, source, type, event FROM events FINAL ORDER BY event_id")
        .fetch_all()
        .await
        .expect("events FINAL");
    assert_eq!(
        stored,
        vec![
            Stored {
                event_id: "call-center:coll-1".into(),
                source: "call-center".into(),
                kind: "track".into(),
                event: "Order Completed".into(),
            },
            Stored {
                event_id: "web:coll-1".into(),
                source: "web".into(),
                kind: "page".into(),
                event: "Home".into(),
            },
        ]
    );
    run.stop().await;
}
