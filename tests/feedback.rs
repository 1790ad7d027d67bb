//! Feedback, stores and the scorecard (README "Feedback and stores") through the real
//! collector, broker, processor and ClickHouse: survey answers rated by event id, by name,
//! by stage and channel and not at all; a touchpoint sent after its answer was written,
//! which must re-attribute it; audits and people-counter totals (one sent twice); and
//! messages breaking the catalog's property schemas, refused as `invalid_property` and
//! dead-lettered. The `feedback` rows, the `store_hourly` view and the
//! `touchpoint_scorecard` view are compared with values computed here.

use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use touchstream_collector::message::format_timestamp as iso;
use touchstream_tests::{self as support, CollectorHandle};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

#[derive(Row, Deserialize, Debug, PartialEq, Clone)]
struct FeedbackRow {
    event_id: String,
    customer_id: String,
    scale: String,
    score: f64,
    attribution: String,
    about_event_id: String,
    about_event: String,
    about_store_id: String,
    delay_ms: i64,
}

fn track(id: &str, user: &str, event: &str, t: i64, properties: Value) -> Value {
    json!({"type": "track", "event": event, "userId": user, "messageId": id,
           "timestamp": iso(t), "properties": properties})
}

async fn post(base: &str, batch: &[Value]) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/batch"))
        .basic_auth("demo-web-key", Some(""))
        .json(&json!({ "batch": batch }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

/// `SELECT` until `done` holds for the rows or 90 s have passed; the last rows.
async fn poll<T, F>(ch: &clickhouse::Client, sql: &str, done: F) -> Vec<T>
where
    T: clickhouse::RowOwned + clickhouse::RowRead,
    F: Fn(&[T]) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows: Vec<T> = ch.query(sql).fetch_all().await.expect(sql);
        if done(&rows) || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feedback_stores_and_scorecard() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut c = support::processor_config("feedback");
    c.processor.allowed_lateness_secs = 60;
    c.processor.idle_watermark_secs = 2;
    support::prepare(&c).await;
    let collector = CollectorHandle::start(c.clone()).await;
    let stop = CancellationToken::new();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let metrics_addr = metrics.local_addr().expect("addr");
    let processor = tokio::spawn(touchstream_processor::run(
        c.clone(),
        Some(metrics),
        stop.clone(),
    ));

    // Two days ago, on the hour (the store view's hour).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let t0 = (now - 48 * HOUR) / HOUR * HOUR;
    let store = json!({"store_id": "s-1"});
    let mut batch = vec![
        // fb-1: bought in store s-1 (seen by the counter), delivery rated by id, the
        // purchase rated by stage and channel.
        track(
            "v1",
            "fb-1",
            "Store Visited",
            t0 - 5 * MIN,
            json!({"store_id": "s-1"}),
        ),
        json!({"type": "track", "event": "Order Completed", "userId": "fb-1", "messageId": "m1",
               "timestamp": iso(t0), "channel": "store", "properties": store}),
        track("m2", "fb-1", "Order Delivered", t0 + 10 * MIN, json!({})),
        track(
            "a1",
            "fb-1",
            "NPS Submitted",
            t0 + 30 * MIN,
            json!({"score": 9, "about_event_id": "m2"}),
        ),
        track(
            "a2",
            "fb-1",
            "Survey Completed",
            t0 + 40 * MIN,
            json!({"scale": "csat", "score": 4, "about_stage": "purchase", "about_channel": "store"}),
        ),
        // fb-2: a follow-up rated by name, and a CES answer naming an event the customer
        // never had: the catalog's rates_stage (service) finds the follow-up.
        track("f1", "fb-2", "Follow-up Completed", t0 + 5 * MIN, json!({})),
        track(
            "a3",
            "fb-2",
            "CSAT Submitted",
            t0 + 20 * MIN,
            json!({"score": 5, "about_event": "Follow-up Completed"}),
        ),
        track(
            "a4",
            "fb-2",
            "Survey Completed",
            t0 + 25 * MIN,
            json!({"scale": "ces", "score": 2, "about_event": "Complaint Filed"}),
        ),
        // fb-3: nothing to rate.
        track(
            "a5",
            "fb-3",
            "Survey Completed",
            t0 + 50 * MIN,
            json!({"scale": "csat", "score": 1}),
        ),
        // fb-4: an answer whose follow-up comes later (below).
        track(
            "a6",
            "fb-4",
            "CSAT Submitted",
            t0 + 60 * MIN,
            json!({"score": 3, "about_event": "Follow-up Completed"}),
        ),
        // Store s-1: people counter for the hour (sent again with a corrected count: the
        // later one counts), and an audit.
        json!({"type": "track", "event": "Footfall Counted", "anonymousId": "counter-s-1", "messageId": "c1",
               "timestamp": iso(t0 + HOUR - 1000),
               "properties": {"store_id": "s-1", "count": 40, "period_start": iso(t0), "period_secs": 3600}}),
        json!({"type": "track", "event": "Footfall Counted", "anonymousId": "counter-s-1", "messageId": "c2",
               "timestamp": iso(t0 + HOUR + 1000),
               "properties": {"store_id": "s-1", "count": 50, "period_start": iso(t0), "period_secs": 3600}}),
        json!({"type": "track", "event": "Audit Completed", "anonymousId": "auditor-1", "messageId": "au1",
               "timestamp": iso(t0 + 2 * HOUR),
               "properties": {"store_id": "s-1", "score": 80, "items_checked": 10, "items_passed": 8}}),
    ];
    // Breaking the catalog's property schemas: index 13, 14, 15.
    let invalid = [
        (
            track("x1", "fb-5", "NPS Submitted", t0, json!({"score": 11})),
            "score",
        ),
        (
            json!({"type": "track", "event": "Footfall Counted", "anonymousId": "counter-s-1", "messageId": "x2",
                   "timestamp": iso(t0), "properties": {"store_id": "s-1", "period_start": iso(t0), "period_secs": 3600}}),
            "count",
        ),
        (
            json!({"type": "track", "event": "Audit Completed", "anonymousId": "auditor-1", "messageId": "x3",
                   "timestamp": iso(t0), "properties": {"store_id": "s-1", "score": "high"}}),
            "score",
        ),
    ];
    batch.extend(invalid.iter().map(|(m, _)| m.clone()));
    let body = post(&collector.base, &batch).await;
    let rejected = body["rejected"].as_array().expect("rejected").clone();
    assert_eq!(rejected.len(), 3, "{body}");
    for (r, (k, (_, property))) in rejected.iter().zip(invalid.iter().enumerate()) {
        assert_eq!(r["index"], json!(13 + k), "{r}");
        assert_eq!(r["reason"], "invalid_property", "{r}");
        let detail = r["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(&format!("properties.{property}")),
            "{detail}"
        );
    }
    let dlq = support::dlq_records(&c, "invalid_property", 3, Duration::from_secs(30)).await;
    assert_eq!(dlq.len(), 3, "{dlq:?}");

    let ch = touchstream_clickhouse::client(&c.clickhouse);
    let fb_sql = "SELECT event_id, customer_id, scale, score, attribution, about_event_id, \
                  about_event, about_store_id, delay_ms FROM feedback FINAL ORDER BY event_id";
    // fb-4's answer first goes out unattributed: no follow-up yet.
    let first: Vec<FeedbackRow> = poll(&ch, fb_sql, |r: &[FeedbackRow]| r.len() >= 6).await;
    assert_eq!(first.len(), 6, "{first:?}");
    let a6 = first.iter().find(|r| r.event_id == "web:a6").expect("a6");
    assert_eq!(a6.attribution, "none", "{a6:?}");

    // The follow-up arrives after the answer was written: placed (inside the horizon),
    // and the answer re-attributed to it.
    let body = post(
        &collector.base,
        &[track(
            "f2",
            "fb-4",
            "Follow-up Completed",
            t0 + 55 * MIN,
            json!({}),
        )],
    )
    .await;
    assert_eq!(body["rejected"], json!([]), "{body}");
    let got: Vec<FeedbackRow> = poll(&ch, fb_sql, |r: &[FeedbackRow]| {
        r.iter()
            .any(|x| x.event_id == "web:a6" && x.attribution == "event")
    })
    .await;
    let row = |id: &str,
               c: &str,
               scale: &str,
               score: f64,
               rule: &str,
               about: &str,
               name: &str,
               store: &str,
               delay: i64| FeedbackRow {
        event_id: format!("web:{id}"),
        customer_id: c.into(),
        scale: scale.into(),
        score,
        attribution: rule.into(),
        about_event_id: if about.is_empty() {
            String::new()
        } else {
            format!("web:{about}")
        },
        about_event: name.into(),
        about_store_id: store.into(),
        delay_ms: delay,
    };
    let want = vec![
        row(
            "a1",
            "fb-1",
            "nps",
            9.0,
            "event_id",
            "m2",
            "Order Delivered",
            "",
            20 * MIN,
        ),
        row(
            "a2",
            "fb-1",
            "csat",
            4.0,
            "stage",
            "m1",
            "Order Completed",
            "s-1",
            40 * MIN,
        ),
        row(
            "a3",
            "fb-2",
            "csat",
            5.0,
            "event",
            "f1",
            "Follow-up Completed",
            "",
            15 * MIN,
        ),
        row(
            "a4",
            "fb-2",
            "ces",
            2.0,
            "stage",
            "f1",
            "Follow-up Completed",
            "",
            20 * MIN,
        ),
        row("a5", "fb-3", "csat", 1.0, "none", "", "", "", 0),
        row(
            "a6",
            "fb-4",
            "csat",
            3.0,
            "event",
            "f2",
            "Follow-up Completed",
            "",
            5 * MIN,
        ),
    ];
    assert_eq!(got, want);

    // The store view: the corrected count, one identified visit, one purchase, the audit.
    #[derive(Row, Deserialize, Debug, PartialEq)]
    struct StoreHour {
        store_id: String,
        hour: u32,
        footfall: u64,
        identified_visits: u64,
        purchases: u64,
        conversion: Option<f64>,
        audits_day: u64,
        audit_score_day: Option<f64>,
    }
    let hours: Vec<StoreHour> = poll(
        &ch,
        "SELECT store_id, hour, footfall, identified_visits, purchases, conversion, audits_day, \
         audit_score_day FROM store_hourly ORDER BY store_id, hour",
        |r: &[StoreHour]| r.len() >= 2,
    )
    .await;
    let h0 = (t0 / 1000) as u32;
    let same_day_audits = |h: i64| {
        if (h / (24 * HOUR)) == ((t0 + 2 * HOUR) / (24 * HOUR)) {
            (1, Some(80.0))
        } else {
            (0, None)
        }
    };
    let (a_before, s_before) = same_day_audits(t0 - HOUR);
    let (a_at, s_at) = same_day_audits(t0);
    assert_eq!(
        hours,
        vec![
            // The visit five minutes before the hour: an hour of its own, no count.
            StoreHour {
                store_id: "s-1".into(),
                hour: h0 - 3600,
                footfall: 0,
                identified_visits: 1,
                purchases: 0,
                conversion: None,
                audits_day: a_before,
                audit_score_day: s_before
            },
            StoreHour {
                store_id: "s-1".into(),
                hour: h0,
                footfall: 50,
                identified_visits: 0,
                purchases: 1,
                conversion: Some(0.02),
                audits_day: a_at,
                audit_score_day: s_at
            },
        ]
    );

    // The scorecard: per touchpoint of that day, counts and the answers rating it. (The
    // web source's default channel, web, is each message's channel unless it names one.)
    #[derive(Row, Deserialize, Debug, PartialEq)]
    struct Card {
        event: String,
        stage: String,
        channel: String,
        store_id: String,
        events: u64,
        customers: u64,
        next_stage_customers: u64,
        nps_responses: u64,
        nps: Option<f64>,
        csat_responses: u64,
        csat_mean: Option<f64>,
        ces_responses: u64,
        ces_mean: Option<f64>,
    }
    let cards: Vec<Card> = poll(
        &ch,
        "SELECT event, stage, channel, store_id, events, customers, next_stage_customers, \
         nps_responses, nps, csat_responses, csat_mean, ces_responses, ces_mean \
         FROM touchpoint_scorecard \
         WHERE event IN ('Order Delivered', 'Order Completed', 'Follow-up Completed') \
         ORDER BY event, store_id",
        |r: &[Card]| r.iter().map(|c| c.csat_responses).sum::<u64>() >= 3,
    )
    .await;
    let card = |event: &str, stage: &str, channel: &str, store: &str| Card {
        event: event.into(),
        stage: stage.into(),
        channel: channel.into(),
        store_id: store.into(),
        events: 1,
        customers: 1,
        // Every customer answered afterwards (the feedback stage is later).
        next_stage_customers: 1,
        nps_responses: 0,
        nps: None,
        csat_responses: 0,
        csat_mean: None,
        ces_responses: 0,
        ces_mean: None,
    };
    assert_eq!(
        cards,
        vec![
            Card {
                events: 2,
                customers: 2,
                next_stage_customers: 2,
                csat_responses: 2,
                csat_mean: Some(4.0),
                ces_responses: 1,
                ces_mean: Some(2.0),
                ..card("Follow-up Completed", "service", "web", "")
            },
            Card {
                csat_responses: 1,
                csat_mean: Some(4.0),
                ..card("Order Completed", "purchase", "store", "s-1")
            },
            Card {
                nps_responses: 1,
                nps: Some(100.0),
                ..card("Order Delivered", "purchase", "web", "")
            },
        ]
    );

    // Metrics: answers by touchpoint and scale when first written (fb-4's as
    // unattributed, then re-attributed), and the catalog floors.
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    // One series: the name and exactly these labels, in any order.
    let metric = |name: &str, labels: &[&str]| -> Option<f64> {
        let prefix = format!("touchstream_processor_{name}{{");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|l| l.split_once("} "))
            .find(|(got, _)| {
                let got: Vec<&str> = got.split(',').collect();
                got.len() == labels.len() && labels.iter().all(|want| got.contains(want))
            })
            .and_then(|(_, v)| v.trim().parse().ok())
    };
    let follow_up = r#"touchpoint="Follow-up Completed""#;
    assert_eq!(
        metric("feedback_responses_total", &[follow_up, r#"scale="csat""#]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            "feedback_promoters_total",
            &[r#"touchpoint="Order Delivered""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric("feedback_attribution_total", &[r#"outcome="unattributed""#]),
        Some(2.0)
    );
    assert_eq!(
        metric("feedback_attribution_total", &[r#"outcome="reattributed""#]),
        Some(1.0)
    );
    assert_eq!(
        metric("touchpoint_floor", &[follow_up, r#"measure="csat""#]),
        Some(4.0)
    );

    stop.cancel();
    let _ = processor.await;
    collector.stop().await;
    support::drop_database(&c.clickhouse).await;
}
