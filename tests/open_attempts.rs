//! `funnel_open_attempts` and the overdue gauge against the real broker and ClickHouse
//! (README, "For analysts"; "Processor metrics"): complaints open an attempt each, whose
//! row appears, advances with the follow-up and goes when the attempt converts or drops
//! (its `funnel_attempts` row, same id, appearing then); meanwhile
//! `touchstream_processor_funnel_open_attempts_overdue` counts the ones past half of
//! their time to due, which is what `ComplaintsAwaitingFollowUp` alerts on.
//!
//! The funnel is the repository's `service_recovery` with a 20 s window, so attempts pass
//! 50 % of it and drop within the test.

use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use serde_json::json;
use touchstream_tests::{self as support, CollectorHandle, ProcessorHandle};

/// A live `funnel_open_attempts` row.
#[derive(Row, Deserialize, Debug, Clone, PartialEq)]
struct Open {
    attempt_id: String,
    customer_id: String,
    reached_step: u8,
    start_ms: i64,
    due_ms: i64,
    step_event_ids: Vec<String>,
}

/// A live `funnel_attempts` row.
#[derive(Row, Deserialize, Debug, Clone, PartialEq)]
struct Closed {
    attempt_id: String,
    customer_id: String,
    outcome: String,
    reached_step: u8,
}

const WINDOW_MS: i64 = 20_000;

async fn open_rows(ch: &clickhouse::Client) -> Vec<Open> {
    ch.query(
        "SELECT attempt_id, customer_id, reached_step, start_ms, due_ms, step_event_ids \
         FROM funnel_open_attempts FINAL WHERE is_deleted = 0 ORDER BY customer_id",
    )
    .fetch_all()
    .await
    .expect("open attempts")
}

async fn closed_rows(ch: &clickhouse::Client) -> Vec<Closed> {
    ch.query(
        "SELECT attempt_id, customer_id, outcome, reached_step \
         FROM funnel_attempts FINAL WHERE is_deleted = 0 ORDER BY customer_id",
    )
    .fetch_all()
    .await
    .expect("attempts")
}

/// Poll `check` every 300 ms until it returns `Some`, at most `limit`.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The value of one gauge series in the processor's exposition, if present.
fn gauge(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{{{labels}}} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_attempts_appear_advance_and_vanish_and_the_overdue_gauge_counts_them() {
    support::require_port("Kafka", &support::kafka_brokers());
    let dir = std::env::temp_dir().join(support::unique("open-attempts"));
    std::fs::create_dir_all(&dir).expect("tmp");
    let funnels = dir.join("funnels.toml");
    std::fs::write(
        &funnels,
        format!(
            "[[funnel]]\nname = \"service_recovery\"\nwindow_secs = {}\nsteps = [{{ event = \"Complaint Filed\" }}, {{ event = \"Follow-up Completed\" }}, {{ event = \"Order Completed\" }}]\n",
            WINDOW_MS / 1000
        ),
    )
    .expect("funnels");
    let mut config = support::processor_config("open_attempts");
    config.processor.funnels_path = funnels;
    config.processor.allowed_lateness_secs = 1;
    // The watermark follows the clock when input pauses: attempts age and drop.
    config.processor.idle_watermark_secs = 2;
    support::prepare(&config).await;
    let collector = CollectorHandle::start(config.clone()).await;
    let processor = ProcessorHandle::start(config.clone()).await;
    let metrics_url = processor.metrics_url.clone();
    let http = reqwest::Client::new();
    let send = |user: &str, event: &str, id: &str| {
        let req = http
            .post(format!("{}/v1/track", collector.base))
            .basic_auth("demo-web-key", Some(""))
            .json(&json!({"userId": user, "event": event, "messageId": id}));
        async move {
            let status = req.send().await.expect("send").status();
            assert!(status.is_success(), "{status}");
        }
    };
    let ch = touchstream_clickhouse::client(&config.clickhouse);

    // Two complaints: one open attempt each, at step 1, due one window after they start.
    send("c1", "Complaint Filed", "c1-complaint").await;
    send("c2", "Complaint Filed", "c2-complaint").await;
    let open = until("two open attempts", Duration::from_secs(60), || async {
        Some(open_rows(&ch).await).filter(|r| r.len() == 2)
    })
    .await;
    for (row, who) in open.iter().zip(["c1", "c2"]) {
        assert_eq!(row.customer_id, who);
        assert_eq!(row.reached_step, 1);
        assert_eq!(row.due_ms, row.start_ms + WINDOW_MS);
        // `<source>:<messageId>` (README "Event ids and retries").
        assert_eq!(row.step_event_ids, vec![format!("web:{who}-complaint")]);
    }
    assert!(closed_rows(&ch).await.is_empty(), "nothing closed yet");

    // c1 is followed up: the same row, now at step 2.
    send("c1", "Follow-up Completed", "c1-follow-up").await;
    let c1 = until("c1 at step 2", Duration::from_secs(30), || async {
        open_rows(&ch)
            .await
            .into_iter()
            .find(|r| r.customer_id == "c1" && r.reached_step == 2)
    })
    .await;
    assert_eq!(c1.attempt_id, open[0].attempt_id);

    // Past half of the window (10 s) both are overdue at 0.5, one per step; none at 0.9
    // before 18 s.
    let scrape = || async {
        reqwest::get(&metrics_url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let overdue = "touchstream_processor_funnel_open_attempts_overdue";
    let text = until("overdue at 0.5", Duration::from_secs(40), || async {
        let text = scrape().await;
        let n = |step: &str| {
            gauge(
                &text,
                overdue,
                &format!("funnel=\"service_recovery\",share=\"0.5\",step=\"{step}\""),
            )
        };
        (n("1") == Some(1.0) && n("2") == Some(1.0)).then_some(text)
    })
    .await;
    let open_gauge = |text: &str, step: &str| {
        gauge(
            text,
            "touchstream_processor_funnel_open_attempts",
            &format!("funnel=\"service_recovery\",step=\"{step}\""),
        )
    };
    assert_eq!(open_gauge(&text, "1"), Some(1.0), "{text}");
    assert_eq!(open_gauge(&text, "2"), Some(1.0), "{text}");
    assert!(open_rows(&ch).await.len() == 2, "still open while overdue");

    // c1 converts: its open row goes, its closed row (same id) comes.
    send("c1", "Order Completed", "c1-order").await;
    // c2's window passes: it drops at step 1.
    let closed = until("both closed", Duration::from_secs(60), || async {
        Some(closed_rows(&ch).await).filter(|r| r.len() == 2)
    })
    .await;
    assert_eq!(
        closed,
        vec![
            Closed {
                attempt_id: open[0].attempt_id.clone(),
                customer_id: "c1".into(),
                outcome: "converted".into(),
                reached_step: 3,
            },
            Closed {
                attempt_id: open[1].attempt_id.clone(),
                customer_id: "c2".into(),
                outcome: "dropped".into(),
                reached_step: 1,
            },
        ]
    );
    until("no open attempt left", Duration::from_secs(30), || async {
        open_rows(&ch).await.is_empty().then_some(())
    })
    .await;
    // Tombstoned, not left behind: every open row's newest version is a deletion.
    let tombstones: u64 = ch
        .query("SELECT count() FROM funnel_open_attempts FINAL WHERE is_deleted = 1")
        .fetch_one()
        .await
        .expect("tombstones");
    assert_eq!(tombstones, 2);
    until("gauges back to 0", Duration::from_secs(30), || async {
        let text = scrape().await;
        let zero = ["1", "2"].iter().all(|s| {
            open_gauge(&text, s) == Some(0.0)
                && gauge(
                    &text,
                    overdue,
                    &format!("funnel=\"service_recovery\",share=\"0.5\",step=\"{s}\""),
                ) == Some(0.0)
        });
        zero.then_some(())
    })
    .await;

    processor.stop().await;
    collector.stop().await;
    support::drop_database(&config.clickhouse).await;
}
