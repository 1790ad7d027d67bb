//! Erasing a person (README, "Privacy"): `touchstream erase --user` deletes every row of
//! theirs from every table and from the processors' saved state, and a replay of the
//! whole Kafka log by a fresh consumer group does not bring them back, while every
//! other customer's rows stay exactly as they were.
//!
//! The person browses anonymously, identifies, visits a store and files a complaint;
//! three other customers do the same. Collector, processor, broker and ClickHouse are
//! real.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use serde_json::{json, Value};
use touchstream_core::Config;
use touchstream_processor::erase::{erase, EraseOptions, Person, Progress};
use touchstream_tests::{self as support, CollectorHandle, ProcessorHandle};

/// Columns through which a row names a person.
const ID_COLUMNS: &[&str] = &[
    "customer_id",
    "anonymous_id",
    "user_id",
    "previous_id",
    "linked_user_id",
    "conflicting_user_id",
];

#[derive(Row, Deserialize)]
struct TableColumn {
    table: String,
    name: String,
}

/// Every stored table of the database with a column naming a person, and the condition
/// matching `{ids}` in any of them: found from the schema, not from the code under test,
/// so a table added later is checked too.
async fn person_tables(ch: &clickhouse::Client, database: &str) -> Vec<(String, String)> {
    let cols = ch
        .query(
            "SELECT c.table AS table, c.name AS name FROM system.columns AS c \
             ANY INNER JOIN (SELECT name AS table FROM system.tables WHERE database = ? AND engine LIKE '%MergeTree') AS t \
             USING table WHERE c.database = ? ORDER BY table, name",
        )
        .bind(database)
        .bind(database)
        .fetch_all::<TableColumn>()
        .await
        .expect("columns");
    let mut tables: Vec<(String, String)> = Vec::new();
    for c in cols
        .into_iter()
        .filter(|c| ID_COLUMNS.contains(&c.name.as_str()))
    {
        let term = format!("has({{ids}}, {})", c.name);
        match tables.last_mut() {
            Some((t, cond)) if *t == c.table => {
                cond.push_str(" OR ");
                cond.push_str(&term);
            }
            _ => tables.push((c.table, term)),
        }
    }
    tables
}

#[derive(Row, Deserialize)]
struct Count {
    n: u64,
}

#[derive(Row, Deserialize, PartialEq, Debug, Clone, Copy)]
struct Digest {
    n: u64,
    h: u64,
}

#[derive(Row, Deserialize)]
struct Snapshot {
    stage: String,
    snapshot: Vec<u8>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn iso(ms: i64) -> String {
    touchstream_collector::message::format_timestamp(ms)
}

fn ids_sql(ids: &BTreeSet<String>) -> String {
    let items: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", items.join(","))
}

/// One customer's journey: anonymous browsing, identify, a store visit, a complaint.
fn journey(anon: &str, user: &str, t0: i64, n: &mut u32) -> Vec<Value> {
    let mut id = || {
        *n += 1;
        format!("m-{n}")
    };
    vec![
        json!({"type": "page", "name": "Home", "anonymousId": anon, "messageId": id(), "timestamp": iso(t0)}),
        json!({"type": "track", "event": "Product Viewed", "anonymousId": anon, "messageId": id(),
               "properties": {"sku": "SKU-1"}, "timestamp": iso(t0 + 1_000)}),
        json!({"type": "identify", "anonymousId": anon, "userId": user, "messageId": id(),
               "traits": {"email": format!("{user}@example.com")}, "timestamp": iso(t0 + 2_000)}),
        json!({"type": "track", "event": "Store Visited", "userId": user, "messageId": id(),
               "properties": {"store_id": "S-1"}, "context": {"channel": "store"}, "timestamp": iso(t0 + 3_000)}),
        json!({"type": "track", "event": "Complaint Filed", "userId": user, "messageId": id(),
               "properties": {"reason": "late"}, "timestamp": iso(t0 + 4_000)}),
    ]
}

async fn count(ch: &clickhouse::Client, sql: &str) -> u64 {
    ch.query(sql)
        .fetch_one::<Count>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// Rows of the person per table (all versions), and saved snapshots naming them.
async fn traces(ch: &clickhouse::Client, db: &str, ids: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    for (table, cond) in person_tables(ch, db).await {
        let cond = cond.replace("{ids}", &ids_sql(ids));
        let n = count(
            ch,
            &format!("SELECT count() AS n FROM {table} WHERE {cond}"),
        )
        .await;
        if n > 0 {
            found.push(format!("{table}: {n} rows"));
        }
    }
    let snapshots = ch
        .query("SELECT stage, snapshot FROM processor_state")
        .fetch_all::<Snapshot>()
        .await
        .expect("snapshots");
    // Whole snapshots and the deltas saved between them (README "Processor state").
    let deltas = ch
        .query("SELECT stage, delta AS snapshot FROM processor_state_delta")
        .fetch_all::<Snapshot>()
        .await
        .expect("deltas");
    let saved = snapshots
        .into_iter()
        .map(|s| ("processor_state", s))
        .chain(deltas.into_iter().map(|s| ("processor_state_delta", s)));
    for (table, s) in saved {
        let json = touchstream_processor::state_codec::decode(&s.snapshot).expect("decode");
        let text = String::from_utf8_lossy(&json);
        for id in ids {
            if text.contains(&format!("\"{id}\"")) {
                found.push(format!("{table} {}: names {id}", s.stage));
            }
        }
    }
    found
}

/// Every other customer's rows per table (FINAL), as a count and a hash.
async fn others(
    ch: &clickhouse::Client,
    db: &str,
    ids: &BTreeSet<String>,
) -> Vec<(String, Digest)> {
    let mut out = Vec::new();
    for (table, cond) in person_tables(ch, db).await {
        let cond = cond.replace("{ids}", &ids_sql(ids));
        let d = ch
            .query(&format!(
                "SELECT count() AS n, sum(cityHash64(*)) AS h FROM {table} FINAL WHERE NOT ({cond})"
            ))
            .fetch_one::<Digest>()
            .await
            .expect("digest");
        out.push((table, d));
    }
    out
}

/// Wait until the processor's identity stage has handled `messages` inputs.
async fn processed(processor: &ProcessorHandle, messages: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = processor.metrics().await;
        let done: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("touchstream_processor_messages_total{")
                    && l.contains("stage=\"identity\"")
                    && l.contains("outcome=\"processed\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if done as u64 >= messages {
            return;
        }
        assert!(Instant::now() < deadline, "processed {done} of {messages}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Wait until every table's digest stops changing for two readings in a row.
async fn settled(
    ch: &clickhouse::Client,
    db: &str,
    ids: &BTreeSet<String>,
) -> Vec<(String, Digest)> {
    let mut last = others(ch, db, ids).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = others(ch, db, ids).await;
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "tables never settled");
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erased_person_is_gone_everywhere_and_a_replay_does_not_bring_them_back() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config: Config = support::processor_config("erase");
    config.processor.allowed_lateness_secs = 1;
    config.processor.idle_watermark_secs = 1;
    config.processor.snapshot_interval_ms = 500;
    // Deltas between whole snapshots however small the state (a few customers here, so
    // one delta would otherwise weigh past the compaction share): the erasure must find
    // the person in them too.
    config.processor.snapshot_compact_delta_share = 1000.0;
    config.processor.suppression_refresh_ms = 300;
    support::prepare(&config).await;
    let collector = CollectorHandle::start(config.clone()).await;
    let processor = ProcessorHandle::start(config.clone()).await;
    let http = reqwest::Client::new();

    let tag = support::unique("er");
    let person_anon = format!("a-{tag}-person");
    let person_user = format!("u-{tag}-person");
    let t0 = now_ms() - 600_000;
    let mut n = 0;
    let mut batch = journey(&person_anon, &person_user, t0, &mut n);
    for i in 0..3 {
        batch.extend(journey(
            &format!("a-{tag}-{i}"),
            &format!("u-{tag}-{i}"),
            t0 + 10_000 * (i + 1),
            &mut n,
        ));
    }
    let r = http
        .post(format!("{}/v1/batch", collector.base))
        .basic_auth("demo-web-key", Some(""))
        .json(&json!({ "batch": batch }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let sent = batch.len() as u64;
    processed(&processor, sent).await;

    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let db = config.clickhouse.database.as_str();
    let ids = BTreeSet::from([person_anon.clone(), person_user.clone()]);
    let checked: Vec<String> = person_tables(&ch, db)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(
        checked.len() >= 9
            && checked.iter().any(|t| t == "events")
            && checked.iter().any(|t| t == "funnel_open_attempts"),
        "tables naming people: {checked:?}"
    );
    let before = settled(&ch, db, &ids).await;
    let person_rows = traces(&ch, db, &ids).await;
    assert!(
        person_rows.iter().any(|t| t.starts_with("sessions"))
            && person_rows.iter().any(|t| t.starts_with("events"))
            && person_rows.iter().any(|t| t.starts_with("identities"))
            && person_rows.iter().any(|t| t.starts_with("processor_state")),
        "the person is stored before the erasure: {person_rows:?}"
    );

    // One more event of theirs after the partitions' first whole snapshots: the saves
    // after it are deltas naming them (README "Processor state"), which the erasure must
    // leave nowhere either.
    let r = http
        .post(format!("{}/v1/batch", collector.base))
        .basic_auth("demo-web-key", Some(""))
        .json(
            &json!({ "batch": [json!({"type": "track", "event": "Home", "userId": person_user,
            "messageId": "m-more", "timestamp": iso(t0 + 5_000)})] }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    processed(&processor, sent + 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !traces(&ch, db, &ids)
        .await
        .iter()
        .any(|t| t.starts_with("processor_state_delta"))
    {
        assert!(Instant::now() < deadline, "no delta named the person");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Erase by user id while the processor runs: the anonymous id is found by the link.
    let messages = std::sync::Mutex::new(Vec::new());
    let progress = |p: Progress| messages.lock().expect("progress").push(format!("{p:?}"));
    let options = EraseOptions {
        requested_by: "privacy-test".into(),
        state_wait: Duration::from_secs(60),
    };
    let report = erase(
        &config,
        &Person::User(person_user.clone()),
        &options,
        &progress,
    )
    .await
    .expect("erase");
    assert_eq!(report.ids, 2, "{report:?}");
    assert_eq!(report.snapshots_pending, 0, "{report:?}");
    assert_eq!(report.rows_deleted.get("events"), Some(&6), "{report:?}");
    let left = traces(&ch, db, &ids).await;
    assert!(left.is_empty(), "after the erasure: {left:?}");
    assert_eq!(
        others(&ch, db, &ids).await,
        before,
        "other customers untouched"
    );
    // The log names no person: counts only.
    let logged = count(
        &ch,
        &format!(
            "SELECT count() AS n FROM erasures WHERE erasure_id = '{}' AND requested_by = 'privacy-test' \
             AND ids = 2 AND position(rows_deleted, '{tag}') = 0",
            report.erasure_id
        ),
    )
    .await;
    assert_eq!(logged, 1, "one erasures row without personal data");

    // Idempotent: a second run finds the same erasure and nothing left to delete.
    let again = erase(
        &config,
        &Person::Anonymous(person_anon.clone()),
        &options,
        &progress,
    )
    .await
    .expect("erase again");
    assert_eq!(again.erasure_id, report.erasure_id);
    assert_eq!(again.ids, 2);
    assert!(again.rows_deleted.values().all(|n| *n == 0), "{again:?}");

    // A late event of theirs is not stored.
    let r = http
        .post(format!("{}/v1/track", collector.base))
        .basic_auth("demo-web-key", Some(""))
        .json(
            &json!({"event": "Product Viewed", "userId": person_user, "messageId": "m-late",
                      "timestamp": iso(t0 + 5_000)}),
        )
        .send()
        .await
        .expect("send late");
    assert_eq!(r.status(), 200);
    processed(&processor, sent + 2).await;
    processor.stop().await;

    // Replay the whole log with a fresh consumer group.
    let mut replay = config.clone();
    replay.processor.group_id = support::unique("it-erase-replay");
    let processor = ProcessorHandle::start(replay.clone()).await;
    processed(&processor, sent + 2).await;
    let after = settled(&ch, db, &ids).await;
    // Let the replay's snapshots land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = traces(&ch, db, &ids).await;
    assert!(left.is_empty(), "after the replay: {left:?}");
    assert_eq!(
        after, before,
        "other customers' rows are the same after the replay"
    );
    let text = processor.metrics().await;
    assert!(
        text.lines()
            .any(|l| l
                .starts_with("touchstream_processor_suppressed_events_total{stage=\"identity\"}")),
        "suppressed events counted:\n{text}"
    );

    processor.stop().await;
    collector.stop().await;
    support::drop_database(&config.clickhouse).await;
}
