//! End to end on the real broker and ClickHouse: a generated multi-channel log goes
//! through the collector and two processor instances; `touchpoints`, `identities`,
//! `identity_conflicts`, `sessions` and `funnel_attempts` must match what the log was
//! generated to produce. A replay of the same offsets by a fresh consumer group must leave
//! the deduplicated tables unchanged. The README's five analyst queries run on the result.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use touchstream_core::config::{Config, SourceConfig};
use touchstream_tests::{self as support, CollectorHandle};

const CUSTOMERS: usize = 40;
const MIN: i64 = 60_000;

/// One message of the generated log, with what it should become.
struct Planned {
    source_key: &'static str,
    msg: Value,
    time_ms: i64,
    /// Expected customer_id of this event.
    customer: String,
}

impl Planned {
    /// Its event id: the source (named as its key here) and the messageId (README "Event
    /// ids and retries").
    fn event_id(&self) -> String {
        let id = self.msg["messageId"].as_str().expect("messageId");
        format!("{}:{id}", self.source_key)
    }
}

use touchstream_collector::message::format_timestamp as iso;

/// The scripted journeys (`i % 4` picks the script); see the test's expectations.
fn generate(t0: i64) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut ticks = Vec::new();
    let mut n = 0;
    let mut plan =
        |out: &mut Vec<Planned>, key: &'static str, mut msg: Value, t: i64, customer: &str| {
            n += 1;
            msg["messageId"] = json!(format!("pl-{n}"));
            msg["timestamp"] = json!(iso(t));
            out.push(Planned {
                source_key: key,
                msg,
                time_ms: t,
                customer: customer.to_string(),
            });
        };
    for i in 0..CUSTOMERS {
        let t = t0 + i as i64 * 7 * MIN;
        let (anon, user) = (format!("anon-{i}"), format!("user-{i}"));
        match i % 4 {
            // Anonymous browsing, identify, checkout as the user: converted web checkout.
            0 => {
                plan(
                    &mut out,
                    "web",
                    json!({"type": "track", "event": "Product Viewed", "anonymousId": anon}),
                    t,
                    &user,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "track", "event": "Product Added", "anonymousId": anon}),
                    t + 2 * MIN,
                    &user,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "identify", "anonymousId": anon, "userId": user}),
                    t + 3 * MIN,
                    &user,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "track", "event": "Checkout Started", "anonymousId": anon, "userId": user}),
                    t + 5 * MIN,
                    &user,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "track", "event": "Order Completed", "userId": user}),
                    t + 6 * MIN,
                    &user,
                );
            }
            // Cart abandonment, never identified: dropped after Product Added.
            1 => {
                plan(
                    &mut out,
                    "web",
                    json!({"type": "track", "event": "Product Viewed", "anonymousId": anon}),
                    t,
                    &anon,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "track", "event": "Product Added", "anonymousId": anon}),
                    t + 2 * MIN,
                    &anon,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "track", "event": "Cart Abandoned", "anonymousId": anon}),
                    t + 10 * MIN,
                    &anon,
                );
            }
            // A page view, a server-side alias (no anonymousId), then a complaint, a staff
            // follow-up from the call centre and a repurchase: converted service recovery.
            2 => {
                plan(
                    &mut out,
                    "web",
                    json!({"type": "page", "name": "Help", "anonymousId": anon}),
                    t,
                    &user,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "alias", "previousId": anon, "userId": user}),
                    t + MIN,
                    &user,
                );
                plan(
                    &mut out,
                    "crm",
                    json!({"type": "track", "event": "Complaint Filed", "userId": user}),
                    t + 2 * MIN,
                    &user,
                );
                plan(
                    &mut out,
                    "crm",
                    json!({"type": "track", "event": "Follow-up Completed", "userId": user}),
                    t + 120 * MIN,
                    &user,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "track", "event": "Order Completed", "userId": user}),
                    t + 26 * 60 * MIN,
                    &user,
                );
            }
            // First link wins; a later conflicting identify is recorded, not applied.
            _ => {
                plan(
                    &mut out,
                    "web",
                    json!({"type": "identify", "anonymousId": anon, "userId": user}),
                    t,
                    &user,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "track", "event": "Product Viewed", "anonymousId": anon}),
                    t + MIN,
                    &user,
                );
                plan(
                    &mut out,
                    "web",
                    json!({"type": "identify", "anonymousId": anon, "userId": "user-x"}),
                    t + 2 * MIN,
                    "user-x",
                );
            }
        }
    }
    out.sort_by_key(|p| p.time_ms);
    // Ticks: page views "now" from many anonymous visitors, so every partition's
    // watermark passes every funnel window (none of them starts a funnel).
    let now = t0 + 2 * 24 * 60 * MIN;
    for k in 0..TICKS {
        let anon = format!("tick-{k}");
        plan(
            &mut ticks,
            "web",
            json!({"type": "page", "name": "Home", "anonymousId": anon}),
            now,
            &anon,
        );
    }
    out.extend(ticks);
    out
}

/// Visitors whose page views close the log; 64 of them reach every one of 3 partitions
/// with overwhelming probability.
const TICKS: usize = 64;

fn config(test: &str) -> Config {
    let mut c = Config {
        kafka: support::kafka_config(test),
        clickhouse: support::clickhouse_config(test),
        ..Config::default()
    };
    c.collector.sources = vec![
        SourceConfig::new("web", "pl-web", "web"),
        SourceConfig::new("crm", "pl-crm", "call_center"),
    ];
    c.processor.group_id = support::unique("it-pipeline");
    c.processor.funnels_path = support::repo_path("deploy/funnels.toml");
    c.processor.catalog_path = support::repo_path("deploy/catalog.toml");
    c.processor.batch_max_ms = 200;
    // Event time only: the log ends with "tick" page views at the current time, which
    // move every partition's watermark past all windows (wall-clock idle advance would
    // race with consumer-group rebalances on this days-old data).
    c.processor.idle_watermark_secs = 0;
    c
}

fn start_processor(
    config: &Config,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), touchstream_processor::ProcessorError>>,
) {
    let token = CancellationToken::new();
    let task = tokio::spawn(touchstream_processor::run(
        config.clone(),
        None,
        token.clone(),
    ));
    (token, task)
}

#[derive(Row, Deserialize, Debug, PartialEq, Clone)]
struct TpRow {
    event_id: String,
    customer_id: String,
    session_id: String,
    stage: String,
    channel: String,
    is_late: u8,
}

#[derive(Row, Deserialize, Debug, PartialEq, Clone)]
struct SessionOut {
    session_id: String,
    customer_id: String,
    event_count: u32,
    entry_event: String,
    exit_event: String,
}

#[derive(Row, Deserialize, Debug, PartialEq, Clone)]
struct AttemptOut {
    attempt_id: String,
    funnel: String,
    customer_id: String,
    outcome: String,
    reached_step: u8,
}

#[derive(Row, Deserialize, Debug, PartialEq, Clone)]
struct LinkOut {
    anonymous_id: String,
    user_id: String,
    link_type: String,
}

#[derive(Row, Deserialize, Debug, PartialEq, Clone)]
struct ConflictOut {
    anonymous_id: String,
    linked_user_id: String,
    conflicting_user_id: String,
}

#[derive(Debug, PartialEq, Clone)]
struct Snapshot {
    touchpoints: Vec<TpRow>,
    /// `customer_touchpoints` without tombstones, in the same columns and order.
    by_customer: Vec<TpRow>,
    sessions: Vec<SessionOut>,
    attempts: Vec<AttemptOut>,
    links: Vec<LinkOut>,
    conflicts: Vec<ConflictOut>,
}

/// The rows of each table that only one of two snapshots has, one per line.
fn snapshot_diff(a: &Snapshot, b: &Snapshot) -> String {
    fn rows<T: std::fmt::Debug + PartialEq>(name: &str, a: &[T], b: &[T], out: &mut String) {
        for r in a.iter().filter(|r| !b.contains(r)) {
            out.push_str(&format!("- {name} {r:?}\n"));
        }
        for r in b.iter().filter(|r| !a.contains(r)) {
            out.push_str(&format!("+ {name} {r:?}\n"));
        }
    }
    let mut out = String::new();
    rows("touchpoint", &a.touchpoints, &b.touchpoints, &mut out);
    rows(
        "customer touchpoint",
        &a.by_customer,
        &b.by_customer,
        &mut out,
    );
    rows("session", &a.sessions, &b.sessions, &mut out);
    rows("attempt", &a.attempts, &b.attempts, &mut out);
    rows("link", &a.links, &b.links, &mut out);
    rows("conflict", &a.conflicts, &b.conflicts, &mut out);
    out
}

async fn read_tables(ch: &clickhouse::Client) -> Snapshot {
    Snapshot {
        touchpoints: ch
            .query("SELECT event_id, customer_id, session_id, stage, channel, is_late FROM touchpoints ORDER BY event_id")
            .fetch_all()
            .await
            .expect("touchpoints"),
        by_customer: ch
            .query("SELECT event_id, customer_id, session_id, stage, channel, is_late FROM customer_touchpoints FINAL WHERE is_deleted = 0 ORDER BY event_id")
            .fetch_all()
            .await
            .expect("customer_touchpoints"),
        sessions: ch
            .query("SELECT session_id, customer_id, event_count, entry_event, exit_event FROM sessions FINAL WHERE is_deleted = 0 ORDER BY session_id")
            .fetch_all()
            .await
            .expect("sessions"),
        attempts: ch
            .query("SELECT attempt_id, funnel, customer_id, outcome, reached_step FROM funnel_attempts FINAL WHERE is_deleted = 0 ORDER BY attempt_id")
            .fetch_all()
            .await
            .expect("attempts"),
        links: ch
            .query("SELECT anonymous_id, user_id, link_type FROM identities FINAL ORDER BY anonymous_id")
            .fetch_all()
            .await
            .expect("identities"),
        conflicts: ch
            .query("SELECT anonymous_id, linked_user_id, conflicting_user_id FROM identity_conflicts FINAL ORDER BY anonymous_id")
            .fetch_all()
            .await
            .expect("conflicts"),
    }
}

/// Wait until the tables stop changing, hold `attempts` closed attempts and every event
/// of `placed` has its journey row.
async fn settle(
    ch: &clickhouse::Client,
    attempts: usize,
    events: usize,
    placed: &std::collections::HashSet<String>,
) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last: Option<Snapshot> = None;
    loop {
        let snap = read_tables(ch).await;
        let complete = snap.attempts.len() >= attempts
            && snap.touchpoints.len() >= events
            && snap
                .touchpoints
                .iter()
                .all(|t| !t.customer_id.is_empty() || !placed.contains(&t.event_id));
        if complete && last.as_ref() == Some(&snap) {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "pipeline did not settle: {} attempts, {} touchpoints ({} without journey)",
            snap.attempts.len(),
            snap.touchpoints.len(),
            snap.touchpoints
                .iter()
                .filter(|t| t.customer_id.is_empty())
                .count()
        );
        last = Some(snap);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_log_through_collector_and_two_processors() {
    support::require_port("Kafka", &support::kafka_brokers());
    let config = config("pipeline");
    support::prepare(&config).await;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let t0 = (now - 2 * 24 * 60 * MIN) / MIN * MIN;
    let plan = generate(t0);

    let collector = CollectorHandle::start(config.clone()).await;
    let (tok1, p1) = start_processor(&config);
    let (tok2, p2) = start_processor(&config);

    // Send in event-time order, in batches per source, as frontends would.
    let http = reqwest::Client::new();
    let mut i = 0;
    while i < plan.len() {
        let key = plan[i].source_key;
        let mut batch = Vec::new();
        while i < plan.len() && plan[i].source_key == key && batch.len() < 50 {
            batch.push(plan[i].msg.clone());
            i += 1;
        }
        let write_key = if key == "web" { "pl-web" } else { "pl-crm" };
        let r = http
            .post(format!("{}/v1/batch", collector.base))
            .basic_auth(write_key, Some(""))
            .json(&json!({"batch": batch}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["rejected"], json!([]), "{body}");
    }

    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let expected_attempts = CUSTOMERS; // one closed attempt per customer (see scripts)
                                       // The closing ticks stay within the lateness of the final watermark: not placed.
    let placed: std::collections::HashSet<String> = plan
        .iter()
        .filter(|p| !p.customer.starts_with("tick-"))
        .map(Planned::event_id)
        .collect();
    let snap = settle(&ch, expected_attempts, plan.len(), &placed).await;

    // customer_touchpoints (the analyst fast path) shows what the view shows for every
    // event with a journey: each once, under the customer it ended with; the rows written
    // under an anonymous id before its link are tombstoned
    // (deploy/clickhouse/0007_customer_touchpoints.sql). Events the journey stage never
    // saw (no customer in the view) have no row there.
    let with_journey: Vec<TpRow> = snap
        .touchpoints
        .iter()
        .filter(|t| !t.customer_id.is_empty())
        .cloned()
        .collect();
    assert!(with_journey.len() > 100, "{}", with_journey.len());
    assert_eq!(
        snap.by_customer, with_journey,
        "customer_touchpoints FINAL equals the touchpoints view"
    );

    // touchpoints: every event, with the customer its script says, placed in a session.
    assert_eq!(snap.touchpoints.len(), plan.len());
    let by_id: BTreeMap<&str, &TpRow> = snap
        .touchpoints
        .iter()
        .map(|t| (t.event_id.as_str(), t))
        .collect();
    for p in plan.iter().filter(|p| !p.customer.starts_with("tick-")) {
        let id = p.event_id();
        let row = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(row.customer_id, p.customer, "customer of {id} ({})", p.msg);
        assert_eq!(row.is_late, 0, "{id} late");
        assert!(!row.session_id.is_empty(), "{id} has no session");
    }
    let complaint = snap
        .touchpoints
        .iter()
        .find(|t| {
            by_id.contains_key(t.event_id.as_str())
                && plan
                    .iter()
                    .any(|p| p.event_id() == t.event_id && p.msg["event"] == "Complaint Filed")
        })
        .expect("a complaint");
    assert_eq!(
        (complaint.stage.as_str(), complaint.channel.as_str()),
        ("service", "call_center")
    );

    // identities: scripts 0 and 3 identify, script 2 aliases; first link wins.
    let mut want_links = Vec::new();
    let mut want_conflicts = Vec::new();
    for i in 0..CUSTOMERS {
        match i % 4 {
            0 | 3 => want_links.push((
                format!("anon-{i}"),
                format!("user-{i}"),
                "identify".to_string(),
            )),
            2 => want_links.push((
                format!("anon-{i}"),
                format!("user-{i}"),
                "alias".to_string(),
            )),
            _ => {}
        }
        if i % 4 == 3 {
            want_conflicts.push((
                format!("anon-{i}"),
                format!("user-{i}"),
                "user-x".to_string(),
            ));
        }
    }
    want_links.sort();
    want_conflicts.sort();
    let links: Vec<(String, String, String)> = snap
        .links
        .iter()
        .map(|l| {
            (
                l.anonymous_id.clone(),
                l.user_id.clone(),
                l.link_type.clone(),
            )
        })
        .collect();
    assert_eq!(links, want_links);
    let conflicts: Vec<(String, String, String)> = snap
        .conflicts
        .iter()
        .map(|c| {
            (
                c.anonymous_id.clone(),
                c.linked_user_id.clone(),
                c.conflicting_user_id.clone(),
            )
        })
        .collect();
    assert_eq!(conflicts, want_conflicts);

    // sessions per customer: (count, events in each, by start).
    let mut sessions: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for s in &snap.sessions {
        sessions
            .entry(s.customer_id.clone())
            .or_default()
            .push(s.event_count);
    }
    for v in sessions.values_mut() {
        v.sort();
    }
    for i in 0..CUSTOMERS {
        let (who, want): (String, Vec<u32>) = match i % 4 {
            0 => (format!("user-{i}"), vec![5]),
            1 => (format!("anon-{i}"), vec![3]),
            2 => (format!("user-{i}"), vec![1, 1, 3]),
            _ => (format!("user-{i}"), vec![2]),
        };
        assert_eq!(sessions.get(&who), Some(&want), "sessions of {who}");
        if i % 4 != 1 {
            assert!(
                !sessions.contains_key(&format!("anon-{i}")),
                "anon-{i} journey retracted"
            );
        }
    }
    assert_eq!(
        sessions.get("user-x"),
        Some(&vec![CUSTOMERS as u32 / 4]),
        "user-x: one session per conflicting identify, all apart"
    );

    // funnel attempts.
    let mut attempts: BTreeMap<String, Vec<(String, String, u8)>> = BTreeMap::new();
    for a in &snap.attempts {
        attempts.entry(a.customer_id.clone()).or_default().push((
            a.funnel.clone(),
            a.outcome.clone(),
            a.reached_step,
        ));
    }
    assert_eq!(snap.attempts.len(), expected_attempts);
    for i in 0..CUSTOMERS {
        let (who, want) = match i % 4 {
            0 => (format!("user-{i}"), ("web_checkout", "converted", 4)),
            1 => (format!("anon-{i}"), ("web_checkout", "dropped", 2)),
            2 => (format!("user-{i}"), ("service_recovery", "converted", 3)),
            _ => (format!("user-{i}"), ("web_checkout", "dropped", 1)),
        };
        assert_eq!(
            attempts.get(&who),
            Some(&vec![(want.0.to_string(), want.1.to_string(), want.2)]),
            "attempts of {who}"
        );
    }

    // The README's analyst queries, on this database.
    let db = &config.clickhouse.database;
    let run = |file: &'static str| support::analyst_query(&ch, db, file);
    let dropoff = run("1_funnel_dropoff_by_step.sql").await;
    let n = CUSTOMERS / 4;
    assert_eq!(
        dropoff,
        format!(
            "service_recovery\t1\t{n}\t0\t0\nservice_recovery\t2\t{n}\t0\t0\nservice_recovery\t3\t{n}\t0\t0\n\
             web_checkout\t1\t{}\t{n}\t33.3\nweb_checkout\t2\t{}\t{n}\t50\nweb_checkout\t3\t{n}\t0\t0\nweb_checkout\t4\t{n}\t0\t0",
            3 * n,
            2 * n
        )
    );
    assert_eq!(
        run("2_cart_abandonment_rate.sql").await,
        format!("{n}\t{}\t50", 2 * n)
    );
    assert_eq!(
        run("3_complaint_followup_delay.sql").await,
        format!("{n}\t118\t118")
    );
    // Entry cohorts: the same attempts by the day they started. Summed over the days
    // (the log may cross midnight) they match the close-time numbers; none is open.
    let cohorts = run("7_funnel_entry_cohort.sql").await;
    let mut by_step: BTreeMap<(String, u32), [u64; 4]> = BTreeMap::new();
    for line in cohorts.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 8, "{line}");
        let sums = by_step
            .entry((f[0].to_string(), f[2].parse().expect("step")))
            .or_default();
        for (sum, v) in sums.iter_mut().zip(&f[3..7]) {
            *sum += v.parse::<u64>().expect("count");
        }
    }
    let n = n as u64;
    let want: BTreeMap<(String, u32), [u64; 4]> = [
        ("service_recovery", 1, [n, 0, n, 0]),
        ("service_recovery", 2, [n, 0, n, 0]),
        ("service_recovery", 3, [n, 0, n, 0]),
        ("web_checkout", 1, [3 * n, n, n, 0]),
        ("web_checkout", 2, [2 * n, n, n, 0]),
        ("web_checkout", 3, [n, 0, n, 0]),
        ("web_checkout", 4, [n, 0, n, 0]),
    ]
    .into_iter()
    .map(|(f, s, v)| ((f.to_string(), s), v))
    .collect();
    assert_eq!(by_step, want, "{cohorts}");
    let journey = run("4_customer_journey.sql").await;
    let events: Vec<&str> = journey
        .lines()
        .map(|l| l.split('\t').nth(2).unwrap_or(""))
        .collect();
    assert_eq!(
        events,
        vec![
            "Product Viewed",
            "Product Added",
            "",
            "Checkout Started",
            "Order Completed"
        ]
    );
    let by_stage = run("5_touchpoints_by_stage_channel.sql").await;
    let total: usize = by_stage
        .lines()
        .map(|l| {
            l.split('\t')
                .nth(3)
                .unwrap_or("0")
                .parse::<usize>()
                .unwrap_or(0)
        })
        .sum();
    // Every event the journey stage has placed (the closing ticks are still held back by
    // the allowed lateness: no journey row, so no stage, yet).
    assert_eq!(total, with_journey.len());
    assert!(by_stage.contains("service\tcall_center\t"), "{by_stage}");

    tok1.cancel();
    tok2.cancel();
    p1.await.expect("join").expect("processor 1 exits cleanly");
    p2.await.expect("join").expect("processor 2 exits cleanly");

    // Replay the same offsets with a fresh group and no saved state: nothing changes.
    let mut replay = config.clone();
    replay.processor.group_id = support::unique("it-pipeline-replay");
    let (tok3, p3) = start_processor(&replay);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = settle(&ch, expected_attempts, plan.len(), &placed).await;
    assert!(
        again == snap,
        "a replay of the same offsets leaves the deduplicated tables unchanged; differences \
         (- first run, + replay):\n{}",
        snapshot_diff(&snap, &again)
    );
    tok3.cancel();
    p3.await
        .expect("join")
        .expect("replay processor exits cleanly");
    collector.stop().await;

    support::drop_database(&config.clickhouse).await;
}
