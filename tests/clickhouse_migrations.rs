//! Migrations on the real ClickHouse 18.16: create every table, record them, and do
//! nothing the second time. (`tests/python/test_migrations_chdb.py` applies the same
//! statements on a current engine via chDB.)

use clickhouse::Row;
use serde::Deserialize;
use touchstream_clickhouse::{migrate, MigrationOutcome};
use touchstream_tests as support;

#[derive(Row, Deserialize)]
struct Name {
    name: String,
}

const TABLES: [&str; 11] = [
    "events",
    "funnel_attempts",
    "funnel_step_minute",
    "identities",
    "identity_conflicts",
    "processor_state",
    "schema_migrations",
    "sessions",
    "touchpoint_journey",
    "touchpoints",
    "touchpoints_daily",
];

#[tokio::test]
async fn migrations_create_tables_and_are_idempotent() {
    let url = support::clickhouse_url();
    support::require_port("ClickHouse", url.trim_start_matches("http://"));
    let cfg = support::clickhouse_config("migrate");

    let first = migrate(&cfg).await.expect("first migrate");
    assert!(
        first
            .files
            .iter()
            .any(|(f, o)| f == "0001_init.sql" && *o == MigrationOutcome::Applied),
        "{first:?}"
    );

    let client = touchstream_clickhouse::client(&cfg);
    let mut tables: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&cfg.database)
        .fetch_all::<Name>()
        .await
        .expect("list tables")
        .into_iter()
        .map(|n| n.name)
        .collect();
    tables.sort();
    assert_eq!(tables, TABLES);

    let second = migrate(&cfg).await.expect("second migrate");
    for (file, outcome) in &second.files {
        assert!(
            matches!(
                outcome,
                MigrationOutcome::AlreadyApplied | MigrationOutcome::Skipped { .. }
            ),
            "{file} ran again: {outcome:?}"
        );
    }
    let recorded: u64 = client
        .query("SELECT count() FROM schema_migrations")
        .fetch_one()
        .await
        .expect("count");
    let applied = first
        .files
        .iter()
        .filter(|(_, o)| *o == MigrationOutcome::Applied)
        .count() as u64;
    assert_eq!(recorded, applied, "each applied file recorded once");

    // Raw event plus two journey versions: the touchpoints view shows the newest.
    client
        .query(
            "INSERT INTO events (event_id, event_date, event_time, event_time_ms, event) \
             VALUES ('e1', '2026-11-25', '2026-11-25 10:00:00', 1795600800000, 'Order Completed')",
        )
        .execute()
        .await
        .expect("insert event");
    client
        .query(
            "INSERT INTO touchpoint_journey (event_id, event_date, customer_id, version) \
             VALUES ('e1', '2026-11-25', 'c1', 1), ('e1', '2026-11-25', 'c2', 2)",
        )
        .execute()
        .await
        .expect("insert journey");
    let customer: String = client
        .query("SELECT customer_id FROM touchpoints FINAL WHERE event_id = 'e1'")
        .fetch_one()
        .await
        .expect("final");
    assert_eq!(
        customer, "c2",
        "ReplacingMergeTree keeps the highest version"
    );

    support::drop_database(&cfg).await;
}
