//! Migrations on the real ClickHouse 18.16: create every table, record them, and do
//! nothing the second time. (`tests/python/test_migrations_chdb.py` applies the same
//! statements on a current engine via chDB.)

use clickhouse::Row;
use serde::Deserialize;
use touchstream_clickhouse::migrate::migrate_files;
use touchstream_clickhouse::{migrate, MigrationOutcome};
use touchstream_core::config::ClickHouseConfig;
use touchstream_tests as support;

#[derive(Row, Deserialize)]
struct Name {
    name: String,
}

const TABLES: [&str; 26] = [
    "customer_touchpoints",
    "erasures",
    "events",
    "feedback",
    "funnel_attempts",
    "funnel_entry_cohort_day",
    "funnel_entry_cohort_hour",
    "funnel_open_attempts",
    "funnel_step_minute",
    "funnel_step_minute_by_breakdown",
    "identities",
    "identity_conflicts",
    "processor_state",
    "processor_state_delta",
    "schema_migrations",
    "sessions",
    "store_audits",
    "store_footfall",
    "store_hourly",
    "suppressed_ids",
    "touchpoint_journey",
    "touchpoint_scorecard",
    "touchpoints",
    "touchpoints_by_day",
    "touchpoints_by_day_mv",
    "touchpoints_daily",
];

/// Apply a migration's text once more, recorded under another name: what a run that
/// stopped after its statements but before recording it does when it starts again.
async fn migrate_again(cfg: &ClickHouseConfig, text: &str, what: &str) {
    let again = touchstream_clickhouse::migrate::parse("0099_again.sql", text).expect("parse");
    migrate_files(cfg, &[again]).await.expect(what);
}

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

    // A run interrupted after 0008 added its columns but before it was recorded repeats
    // safely: 18.16 has no ADD COLUMN IF NOT EXISTS, the migrator counts them as added.
    migrate_again(
        &cfg,
        include_str!("../deploy/clickhouse/0008_funnel_breakdowns.sql"),
        "0008 repeats after a half-finished run",
    )
    .await;

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

    // Entry cohorts: closed attempts by the day they started, plus the open ones; an
    // open attempt's newest row being a tombstone takes it out, and an excluded attempt
    // is left out (as in funnel_step_minute).
    client
        .query(
            "INSERT INTO funnel_attempts (attempt_id, funnel, started_at, closed_at, outcome, \
             reached_step, total_steps, step_event_ids, version) VALUES \
             ('a1', 'f', '2026-11-25 10:00:00', '2026-11-26 09:00:00', 'dropped', 2, 3, ['e1', 'e2'], 1), \
             ('a2', 'f', '2026-11-25 11:00:00', '2026-11-25 11:30:00', 'converted', 3, 3, ['e3', 'e4', 'e5'], 1), \
             ('a5', 'f', '2026-11-25 11:00:00', '2026-11-25 11:40:00', 'excluded', 2, 3, ['e6', 'e7'], 1)",
        )
        .execute()
        .await
        .expect("insert attempts");
    client
        .query(
            "INSERT INTO funnel_open_attempts (attempt_id, funnel, started_at, reached_step, \
             total_steps, step_event_ids, is_deleted, version) VALUES \
             ('a3', 'f', '2026-11-25 12:00:00', 1, 3, ['e8'], 0, 1), \
             ('a4', 'f', '2026-11-25 12:00:00', 2, 3, ['e9', 'e10'], 0, 1), \
             ('a4', 'f', '2026-11-25 12:00:00', 0, 3, [], 1, 2)",
        )
        .execute()
        .await
        .expect("insert open attempts");
    let cohorts = support::tsv(
        &client,
        "SELECT step, reached, dropped, converted, open FROM funnel_entry_cohort_day \
         WHERE day = '2026-11-25' ORDER BY step",
    )
    .await;
    assert_eq!(cohorts, "1\t3\t0\t1\t1\n2\t2\t1\t1\t0\n3\t1\t0\t1\t0");
    let hours: u64 = client
        .query("SELECT count() FROM funnel_entry_cohort_hour WHERE step = 1")
        .fetch_one()
        .await
        .expect("hours");
    assert_eq!(hours, 3, "one row per start hour");

    support::drop_database(&cfg).await;
}

/// `funnel_attempts.steps_hit` (0012): a bit per step an event reached (bit i - 1 for
/// step i), computed from `step_event_ids` both for rows written without it and for
/// parts written before the migration; query 1 (docs/queries) counts from it, a skipped
/// optional step nowhere.
#[tokio::test]
async fn funnel_steps_hit_is_computed_for_new_rows_and_older_parts() {
    let url = support::clickhouse_url();
    support::require_port("ClickHouse", url.trim_start_matches("http://"));
    let cfg = support::clickhouse_config("steps_hit");
    migrate(&cfg).await.expect("migrate");
    let client = touchstream_clickhouse::client(&cfg);
    let insert = |rows: &'static str| {
        let client = client.clone();
        async move {
            client
                .query(&format!(
                    "INSERT INTO funnel_attempts (attempt_id, funnel, outcome, reached_step, \
                     total_steps, step_event_ids, version) VALUES {rows}"
                ))
                .execute()
                .await
                .expect("insert attempts");
        }
    };
    // A part from before 0012: without the column, then 0012 run again over it.
    client
        .query("ALTER TABLE funnel_attempts DROP COLUMN steps_hit")
        .execute()
        .await
        .expect("drop the column");
    insert("('old', 'f', 'dropped', 3, 4, ['e1', '', 'e3'], 1)").await;
    migrate_again(
        &cfg,
        include_str!("../deploy/clickhouse/0012_funnel_steps_hit.sql"),
        "0012 over a table with older parts",
    )
    .await;
    insert("('new', 'f', 'converted', 4, 4, ['e4', 'e5', '', 'e7'], 1), ('none', 'f', 'dropped', 0, 4, [], 1)").await;

    let hits = support::tsv(
        &client,
        "SELECT attempt_id, steps_hit FROM funnel_attempts ORDER BY attempt_id",
    )
    .await;
    assert_eq!(hits, "new\t11\nnone\t0\nold\t5");

    // Step 2 of `old` and step 3 of `new` were skipped: each step counts the attempts
    // with an event there; `old` dropped at its reached step 3.
    let dropoff =
        support::analyst_query(&client, &cfg.database, "1_funnel_dropoff_by_step.sql").await;
    assert_eq!(
        dropoff,
        "f\t1\t2\t0\t0\nf\t2\t1\t0\t0\nf\t3\t1\t1\t100\nf\t4\t1\t0\t0"
    );

    support::drop_database(&cfg).await;
}

/// The funnel views and docs/queries/8 count from `steps_hit` (0013) and give what they
/// gave from `step_event_ids`: skipped optional steps, excluded and tombstoned attempts
/// (closed and open) count nowhere; breakdowns per step (`each_step`) and per attempt
/// (`last_step`, two keys); open attempts, a part from before 0013 included, in the entry
/// cohorts. Twins (a2 and a6, o1 and o3) fall into one group before the steps are
/// spread: the counts must be of attempts, not of groups.
#[tokio::test]
async fn funnel_views_count_from_steps_hit() {
    let url = support::clickhouse_url();
    support::require_port("ClickHouse", url.trim_start_matches("http://"));
    let cfg = support::clickhouse_config("funnel_views");
    migrate(&cfg).await.expect("migrate");
    let client = touchstream_clickhouse::client(&cfg);
    let run = |sql: String| {
        let client = client.clone();
        async move { client.query(&sql).execute().await.expect("statement") }
    };
    let open_attempts = |rows: &'static str| {
        run(format!(
            "INSERT INTO funnel_open_attempts (attempt_id, funnel, started_at, reached_step, \
             total_steps, step_event_ids, is_deleted, version) VALUES {rows}"
        ))
    };

    // An open attempt in a part from before 0013, then 0013 run again over it.
    run("ALTER TABLE funnel_open_attempts DROP COLUMN steps_hit".into()).await;
    open_attempts("('o1', 'f', '2026-11-25 09:30:00', 3, 4, ['e9', '', 'e10'], 0, 1)").await;
    migrate_again(
        &cfg,
        include_str!("../deploy/clickhouse/0013_funnel_views_steps_hit.sql"),
        "0013 over a table with older parts",
    )
    .await;
    // o3 is o1's twin in a newer part; o2 closed (its newest row a tombstone).
    open_attempts(
        "('o3', 'f', '2026-11-25 09:35:00', 3, 4, ['e19', '', 'e20'], 0, 1), \
         ('o2', 'f', '2026-11-25 09:40:00', 2, 4, ['e11', 'e12'], 0, 1), \
         ('o2', 'f', '2026-11-25 09:40:00', 2, 4, ['e11', 'e12'], 1, 2)",
    )
    .await;
    assert_eq!(
        support::tsv(
            &client,
            "SELECT attempt_id, steps_hit FROM funnel_open_attempts ORDER BY attempt_id, version"
        )
        .await,
        "o1\t5\no2\t3\no2\t3\no3\t5"
    );

    // Step 2 of a1 was skipped; a6 is a2's twin; a3 left the funnel; a4's newest row is
    // a tombstone. Funnel f breaks down by channel for each step, g by channel and source
    // of its last step.
    run(
        "INSERT INTO funnel_attempts (attempt_id, funnel, started_at, closed_at, outcome, \
         reached_step, total_steps, step_event_ids, breakdown_keys, breakdown_values, \
         is_deleted, version) VALUES \
         ('a1', 'f', '2026-11-25 09:00:00', '2026-11-25 10:00:10', 'dropped', 3, 4, \
          ['e1', '', 'e3'], ['channel'], ['web', '', 'app'], 0, 1), \
         ('a2', 'f', '2026-11-25 09:10:00', '2026-11-25 10:00:20', 'converted', 4, 4, \
          ['e4', 'e5', 'e6', 'e7'], ['channel'], ['web', 'web', 'web', 'web'], 0, 1), \
         ('a6', 'f', '2026-11-25 09:15:00', '2026-11-25 10:00:25', 'converted', 4, 4, \
          ['e15', 'e16', 'e17', 'e18'], ['channel'], ['web', 'web', 'web', 'web'], 0, 1), \
         ('a3', 'f', '2026-11-25 09:20:00', '2026-11-25 10:00:30', 'excluded', 2, 4, \
          ['e8', 'e13'], ['channel'], ['web', 'web'], 0, 1), \
         ('a4', 'f', '2026-11-25 09:25:00', '2026-11-25 10:00:40', 'dropped', 1, 4, \
          ['e14'], ['channel'], ['app'], 0, 1), \
         ('a4', 'f', '2026-11-25 09:25:00', '2026-11-25 10:00:40', 'dropped', 1, 4, \
          ['e14'], ['channel'], ['app'], 1, 2), \
         ('g1', 'g', '2026-11-25 09:50:00', '2026-11-25 10:00:50', 'dropped', 3, 4, \
          ['x1', 'x2', 'x3'], ['channel', 'source'], ['app', 'crm'], 0, 1)"
            .into(),
    )
    .await;

    assert_eq!(
        support::tsv(
            &client,
            "SELECT funnel, minute, step, reached, dropped, converted FROM funnel_step_minute \
             ORDER BY funnel, minute, step"
        )
        .await,
        "f\t2026-11-25 10:00:00\t1\t3\t0\t2\n\
         f\t2026-11-25 10:00:00\t2\t2\t0\t2\n\
         f\t2026-11-25 10:00:00\t3\t3\t1\t2\n\
         f\t2026-11-25 10:00:00\t4\t2\t0\t2\n\
         g\t2026-11-25 10:00:00\t1\t1\t0\t0\n\
         g\t2026-11-25 10:00:00\t2\t1\t0\t0\n\
         g\t2026-11-25 10:00:00\t3\t1\t1\t0"
    );
    assert_eq!(
        support::tsv(
            &client,
            "SELECT funnel, step, breakdown, reached, dropped, converted \
             FROM funnel_step_minute_by_breakdown ORDER BY funnel, step, breakdown"
        )
        .await,
        "f\t1\tweb\t3\t0\t2\nf\t2\tweb\t2\t0\t2\nf\t3\tapp\t1\t1\t0\nf\t3\tweb\t2\t0\t2\n\
         f\t4\tweb\t2\t0\t2\n\
         g\t1\tapp/crm\t1\t0\t0\ng\t2\tapp/crm\t1\t0\t0\ng\t3\tapp/crm\t1\t1\t0"
    );
    let by_breakdown =
        support::analyst_query(&client, &cfg.database, "8_funnel_dropoff_by_breakdown.sql").await;
    assert_eq!(
        by_breakdown,
        "f\tapp\t3\t1\t1\t100\nf\tweb\t1\t3\t0\t0\nf\tweb\t2\t2\t0\t0\n\
         f\tweb\t3\t2\t0\t0\nf\tweb\t4\t2\t0\t0\n\
         g\tapp/crm\t1\t1\t0\t0\ng\tapp/crm\t2\t1\t0\t0\ng\tapp/crm\t3\t1\t1\t100"
    );
    // Entry cohorts of f: a1, a2 and a6 closed, o1 and o3 open (their step 2 skipped).
    let cohorts = "step, reached, dropped, converted, open";
    assert_eq!(
        support::tsv(
            &client,
            "SELECT step, reached, dropped, converted, open FROM funnel_entry_cohort_day \
             WHERE funnel = 'f' AND day = '2026-11-25' ORDER BY step"
        )
        .await,
        "1\t5\t0\t2\t2\n2\t2\t0\t2\t0\n3\t5\t1\t2\t2\n4\t2\t0\t2\t0",
        "{cohorts} by day"
    );
    assert_eq!(
        support::tsv(
            &client,
            "SELECT hour, step, reached, dropped, converted, open FROM funnel_entry_cohort_hour \
             WHERE funnel = 'f' ORDER BY hour, step"
        )
        .await,
        "2026-11-25 09:00:00\t1\t5\t0\t2\t2\n2026-11-25 09:00:00\t2\t2\t0\t2\t0\n\
         2026-11-25 09:00:00\t3\t5\t1\t2\t2\n2026-11-25 09:00:00\t4\t2\t0\t2\t0",
        "{cohorts} by hour"
    );

    support::drop_database(&cfg).await;
}
