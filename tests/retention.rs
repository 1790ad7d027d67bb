//! `touchstream retention` against the real local ClickHouse (README "Privacy"): monthly
//! partitions whose whole month is older than a table's `retention_days` are dropped,
//! the month holding the cutoff and later ones are kept, tables without retention are
//! untouched, a dry run drops nothing, and a second run finds nothing to drop.

use std::collections::BTreeMap;
use std::sync::Mutex;

use time::macros::date;
use touchstream_clickhouse::retention::{self, Expired, Progress};
use touchstream_tests as support;

/// Rows per (table, month) of the test database.
async fn months(ch: &clickhouse::Client, db: &str) -> BTreeMap<(String, String), u64> {
    ch.query(
        "SELECT table, partition, sum(rows) FROM system.parts \
         WHERE database = ? AND active GROUP BY table, partition",
    )
    .bind(db)
    .fetch_all::<(String, String, u64)>()
    .await
    .expect("parts")
    .into_iter()
    .map(|(t, p, n)| ((t, p), n))
    .collect()
}

#[tokio::test]
async fn expired_months_are_dropped_once_and_the_rest_kept() {
    support::require_port("ClickHouse", "127.0.0.1:8123");
    let mut cfg = support::clickhouse_config("retention");
    touchstream_clickhouse::migrate(&cfg)
        .await
        .expect("migrate");
    let ch = touchstream_clickhouse::client(&cfg);
    // Old rows inserted directly, in months on both sides of the cutoff.
    for stmt in [
        "INSERT INTO events (event_id, event_date) VALUES \
         ('e-2020', '2020-12-31'), ('e-sep-1', '2025-09-01'), ('e-sep-2', '2025-09-30'), \
         ('e-oct', '2025-10-01'), ('e-now', '2026-12-01')",
        "INSERT INTO sessions (session_id, started_at) VALUES \
         ('s-old', '2026-09-15 10:00:00'), ('s-oct', '2026-10-31 23:59:59'), ('s-nov', '2026-11-02 00:00:00')",
        "INSERT INTO funnel_attempts (attempt_id, closed_at) VALUES ('a-2020', '2020-01-01 00:00:00')",
    ] {
        ch.query(stmt).execute().await.expect(stmt);
    }
    let before = months(&ch, &cfg.database).await;
    let m = |t: &str, p: &str| (t.to_string(), p.to_string());
    assert_eq!(before.get(&m("events", "202509")), Some(&2), "{before:?}");

    // On 2026-12-03: events keep 400 days (cutoff 2025-10-29: October 2025 stays),
    // sessions 35 (cutoff 2026-10-29: October 2026 stays); funnel_attempts has none.
    cfg.retention_days = [("events".to_string(), 400), ("sessions".to_string(), 35)].into();
    let today = date!(2026 - 12 - 03);
    let heard = Mutex::new(Vec::new());
    let progress = |p: Progress<'_>| {
        if let Progress::Partition(e) = p {
            heard.lock().unwrap().push((e.table.clone(), e.partition));
        }
    };
    let want = vec![
        Expired {
            table: "events".into(),
            partition: 202012,
            rows: 1,
        },
        Expired {
            table: "events".into(),
            partition: 202509,
            rows: 2,
        },
        Expired {
            table: "sessions".into(),
            partition: 202609,
            rows: 1,
        },
    ];

    let dry = retention::run(&cfg, today, true, &progress)
        .await
        .expect("dry run");
    assert_eq!(dry.expired, want);
    assert!(!dry.dropped);
    assert_eq!(
        months(&ch, &cfg.database).await,
        before,
        "a dry run drops nothing"
    );
    assert_eq!(
        heard.lock().unwrap().len(),
        3,
        "progress for each partition"
    );

    let done = retention::run(&cfg, today, false, &progress)
        .await
        .expect("run");
    assert_eq!(done.expired, want);
    let after = months(&ch, &cfg.database).await;
    let mut expected = before.clone();
    for e in &want {
        expected.remove(&(e.table.clone(), e.partition.to_string()));
    }
    assert_eq!(after, expected);
    for kept in [
        m("events", "202510"),
        m("events", "202612"),
        m("sessions", "202610"),
        m("sessions", "202611"),
        m("funnel_attempts", "202001"),
    ] {
        assert!(after.contains_key(&kept), "{kept:?} kept: {after:?}");
    }
    let ids: Vec<String> = ch
        .query("SELECT event_id FROM events ORDER BY event_id")
        .fetch_all()
        .await
        .expect("events");
    assert_eq!(ids, ["e-now", "e-oct"]);

    let again = retention::run(&cfg, today, false, &progress)
        .await
        .expect("second run");
    assert!(again.expired.is_empty(), "idempotent: {again:?}");
    assert_eq!(months(&ch, &cfg.database).await, expected);

    support::drop_database(&cfg).await;
}
