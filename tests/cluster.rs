//! Touchstream on a ClickHouse cluster (README "Running on a cluster"): the local cluster
//! `touchstream_local` that `deploy/local/services.sh up --cluster` starts — ZooKeeper and
//! three servers, shard 01 = ch1 + ch2 (two replicas), shard 02 = ch3 (one replica).
//!
//! - migrations create replicated `_local` tables and `Distributed` tables on every
//!   server, resume after a partial run and change nothing when run again; a server
//!   down while they run executes the queued statements when it is back;
//! - the same log through a single-server processor and a cluster processor gives the
//!   same tables and the same answers to the README's analyst queries;
//! - a replica killed during ingestion catches up, nothing lost or doubled;
//! - with a shard's only server down the processor commits no offset and retries, then
//!   lands everything.
//!
//! The tests stop and start the cluster's servers, so they are `#[ignore]`d in the plain
//! `cargo test` run and run one at a time by `tests/run.sh` after it started the cluster:
//! `cargo test --test cluster -- --ignored`. Each holds a lock, so they never overlap.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use touchstream_clickhouse::cluster::{Placement, LOCAL_SUFFIX, PLACEMENT};
use touchstream_clickhouse::migrate::{embedded, migrate_files};
use touchstream_clickhouse::MigrationOutcome;
use touchstream_core::config::ClickHouseConfig;
use touchstream_core::Config;
use touchstream_demo::generator::{plan, GeneratorConfig, PlanSummary, Planned};
use touchstream_demo::report::closed_attempts;
use touchstream_demo::sender::{send, SendConfig};
use touchstream_tests::{self as support, CollectorHandle, ProcessorHandle};

const CLUSTER: &str = "touchstream_local";
/// The cluster's servers: name for services.sh, HTTP URL.
const NODES: [(&str, &str); 3] = [
    ("ch1", "http://127.0.0.1:8131"),
    ("ch2", "http://127.0.0.1:8132"),
    ("ch3", "http://127.0.0.1:8133"),
];

static SERIAL: Mutex<()> = Mutex::new(());

/// Run one test body alone (the tests stop servers the others need).
fn serial(body: impl Future<Output = ()>) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            for (node, _) in NODES {
                services("start-node", node);
            }
            body.await
        });
}

/// `deploy/local/services.sh <cmd> <node>`.
fn services(cmd: &str, node: &str) {
    let out = Command::new(support::repo_path("deploy/local/services.sh"))
        .args([cmd, node])
        .output()
        .expect("run deploy/local/services.sh");
    assert!(
        out.status.success(),
        "services.sh {cmd} {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cluster_config(test: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: NODES[0].1.to_string(),
        database: support::unique(&format!("it_cluster_{test}")),
        cluster: Some(CLUSTER.to_string()),
        ..ClickHouseConfig::default()
    }
}

/// One server of the cluster, no database selected.
fn node(url: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
}

async fn drop_cluster_database(cfg: &ClickHouseConfig) {
    node(&cfg.url)
        .query(&format!(
            "DROP DATABASE IF EXISTS `{}` ON CLUSTER {CLUSTER}",
            cfg.database
        ))
        .execute()
        .await
        .expect("drop the test database on the cluster");
}

#[test]
#[ignore = "needs deploy/local/services.sh up --cluster; tests/run.sh runs it"]
fn migrations_resume_and_run_twice_without_change_on_the_cluster() {
    serial(async {
        let cfg = cluster_config("migrate");
        let all = embedded().expect("migrations");
        // An interrupted first run: only the first three files.
        migrate_files(&cfg, &all[..3]).await.expect("partial run");
        let report = migrate_files(&cfg, &all).await.expect("resumed run");
        let applied: Vec<_> = report
            .files
            .iter()
            .filter(|(_, o)| *o == MigrationOutcome::Applied)
            .map(|(n, _)| n.clone())
            .collect();
        assert!(
            !applied
                .iter()
                .any(|n| all[..3].iter().any(|m| &m.name == n)),
            "the resumed run applies only what the first did not: {applied:?}"
        );
        let schema = |url: &'static str| {
            let db = cfg.database.clone();
            async move {
                support::tsv(
                    &node(url),
                    &format!(
                        "SELECT name, engine, create_table_query FROM system.tables \
                         WHERE database = '{db}' ORDER BY name"
                    ),
                )
                .await
            }
        };
        let before = schema(NODES[0].1).await;
        let again = migrate_files(&cfg, &all).await.expect("second run");
        assert!(
            again
                .files
                .iter()
                .all(|(_, o)| !matches!(o, MigrationOutcome::Applied)),
            "{:?}",
            again.files
        );
        assert_eq!(
            schema(NODES[0].1).await,
            before,
            "second run changed nothing"
        );

        // Every server has every table, replicated `_local` + Distributed, or replicated.
        assert!(PLACEMENT.iter().filter(|(t, _)| created(&all, t)).count() >= 12);
        for (name, url) in NODES {
            let engines: BTreeMap<String, String> = support::tsv(
                &node(url),
                &format!(
                    "SELECT name, engine FROM system.tables WHERE database = '{}'",
                    cfg.database
                ),
            )
            .await
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
            for (table, place) in PLACEMENT {
                if !created(&all, table) {
                    continue; // declared ahead of its migration
                }
                match place {
                    Placement::Sharded(_) => {
                        assert_eq!(
                            engines.get(*table).map(String::as_str),
                            Some("Distributed"),
                            "{name}: {table}"
                        );
                        let local = engines
                            .get(&format!("{table}{LOCAL_SUFFIX}"))
                            .unwrap_or_else(|| panic!("{name}: no {table}{LOCAL_SUFFIX}"));
                        assert!(local.starts_with("Replicated"), "{name}: {table}: {local}");
                    }
                    Placement::EveryServer => {
                        let e = engines
                            .get(*table)
                            .unwrap_or_else(|| panic!("{name}: {table}"));
                        assert!(e.starts_with("Replicated"), "{name}: {table}: {e}");
                    }
                }
            }
            assert!(
                engines["schema_migrations"].starts_with("Replicated"),
                "{name}: schema_migrations"
            );
            assert_eq!(engines.get("touchpoints").map(String::as_str), Some("View"));
        }
        drop_cluster_database(&cfg).await;
    });
}

#[test]
#[ignore = "needs deploy/local/services.sh up --cluster; tests/run.sh runs it"]
fn a_server_down_during_migrate_catches_up() {
    serial(async {
        let cfg = cluster_config("ddl_down");
        services("stop-node", "ch2");
        let run = tokio::spawn({
            let cfg = cfg.clone();
            async move { touchstream_clickhouse::migrate(&cfg).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !run.is_finished(),
            "migrate waits for the server that is down (its DDL queue in ZooKeeper)"
        );
        services("start-node", "ch2");
        let report = run
            .await
            .expect("task")
            .expect("migrate completes once ch2 is back");
        assert!(report
            .files
            .iter()
            .any(|(_, o)| *o == MigrationOutcome::Applied));
        let tables = |url: &'static str| {
            let db = cfg.database.clone();
            async move {
                support::tsv(
                    &node(url),
                    &format!(
                        "SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name"
                    ),
                )
                .await
            }
        };
        let on_ch1 = tables(NODES[0].1).await;
        assert!(on_ch1.lines().count() > 20, "{on_ch1}");
        assert_eq!(tables(NODES[1].1).await, on_ch1, "ch2 ran what it missed");
        let again = touchstream_clickhouse::migrate(&cfg).await.expect("again");
        assert!(again
            .files
            .iter()
            .all(|(_, o)| !matches!(o, MigrationOutcome::Applied)));
        drop_cluster_database(&cfg).await;
    });
}

/// Whether one of the migrations creates `table`.
fn created(migrations: &[touchstream_clickhouse::migrate::Migration], table: &str) -> bool {
    let head = format!("CREATE TABLE IF NOT EXISTS {{db}}.{table}");
    migrations.iter().flat_map(|m| &m.statements).any(|s| {
        s.strip_prefix(&head)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_whitespace() || c == '('))
    })
}

/// A demo log: the messages, what they should produce, and where they start.
fn demo_log(customers: usize, seed: u64) -> (GeneratorConfig, Vec<Planned>, PlanSummary, i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let g = GeneratorConfig {
        customers,
        seed,
        ..GeneratorConfig::new(now)
    };
    let (messages, summary) = plan(&g);
    let start_ms = messages.first().map_or(now, |m| m.time_ms);
    (g, messages, summary, start_ms)
}

fn sender(collector: &CollectorHandle) -> SendConfig {
    SendConfig {
        url: collector.base.clone(),
        web_key: "demo-web-key".into(),
        crm_key: "demo-crm-key".into(),
        rate_per_sec: 0.0,
        batch: 50,
        sent_at: false,
    }
}

/// A pipeline config on fresh topics and group, with ClickHouse as given.
fn pipeline_config(test: &str, clickhouse: ClickHouseConfig) -> Config {
    let repo = support::repo_root();
    let mut config = Config {
        kafka: support::kafka_config(test),
        clickhouse,
        ..Config::default()
    };
    config.processor.group_id = support::unique(&format!("it-{test}"));
    config.processor.funnels_path = repo.join("deploy/funnels.toml");
    config.processor.catalog_path = repo.join("deploy/catalog.toml");
    config.processor.batch_max_ms = 200;
    config.processor.allowed_lateness_secs = 60;
    config.processor.idle_watermark_secs = 5;
    config
}

/// Wait until every event and every planned attempt is in ClickHouse.
async fn wait_landed(
    cfg: &ClickHouseConfig,
    g: &GeneratorConfig,
    summary: &PlanSummary,
    start_ms: i64,
    within: Duration,
) {
    let ch = touchstream_clickhouse::client(cfg);
    let deadline = Instant::now() + within;
    loop {
        let events: u64 = ch
            .query("SELECT count() FROM events FINAL")
            .fetch_one()
            .await
            .unwrap_or(0);
        let closed = closed_attempts(&ch, g, start_ms).await.unwrap_or(0);
        if events == summary.messages as u64 && closed == summary.attempts as u64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {events}/{} events, {closed}/{} attempts",
            cfg.database,
            summary.messages,
            summary.attempts
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The rows analysts see, per table (deduplicated, tombstones left out), in a fixed
/// order and without `version` (derived from each processor's own internal offsets).
const TABLE_DUMPS: [(&str, &str); 8] = [
    (
        "events",
        "SELECT event_id, event_time_ms, received_at_ms, type, event, anonymous_id, user_id, source, \
         properties, kafka_partition, kafka_offset FROM {db}.events FINAL ORDER BY event_id",
    ),
    (
        "touchpoints",
        "SELECT event_id, customer_id, session_id, stage, channel, is_late FROM {db}.touchpoints \
         ORDER BY event_id",
    ),
    (
        "customer_touchpoints",
        "SELECT customer_id, event_time_ms, event_id, stage, channel, session_id FROM \
         {db}.customer_touchpoints FINAL WHERE is_deleted = 0 ORDER BY customer_id, event_time_ms, event_id",
    ),
    (
        "identities",
        "SELECT anonymous_id, user_id, link_event_id, link_type FROM {db}.identities FINAL \
         ORDER BY anonymous_id",
    ),
    (
        "identity_conflicts",
        "SELECT anonymous_id, linked_user_id, conflicting_user_id, event_id FROM \
         {db}.identity_conflicts FINAL ORDER BY anonymous_id, event_id",
    ),
    (
        "sessions",
        "SELECT session_id, customer_id, start_ms, end_ms, event_count, entry_event, exit_event, \
         channels FROM {db}.sessions FINAL WHERE is_deleted = 0 ORDER BY session_id",
    ),
    (
        "funnel_attempts",
        "SELECT attempt_id, funnel, customer_id, start_ms, closed_ms, outcome, reached_step, \
         step_event_ids, breakdown_values FROM {db}.funnel_attempts FINAL WHERE is_deleted = 0 \
         ORDER BY funnel, attempt_id",
    ),
    (
        "touchpoints_by_day",
        "SELECT event_date, customer_id, event_id, stage, channel FROM {db}.touchpoints_by_day \
         FINAL WHERE is_deleted = 0 ORDER BY event_date, customer_id, event_time_ms, event_id",
    ),
];

#[test]
#[ignore = "needs deploy/local/services.sh up --cluster; tests/run.sh runs it"]
fn the_cluster_gives_the_single_server_answers() {
    serial(async {
        support::require_port("Kafka", &support::kafka_brokers());
        // Two pipelines read one raw topic: one writes to the single server, one to the
        // cluster. Internal topics and groups are their own.
        let single = pipeline_config("cl_same", support::clickhouse_config("cl_single"));
        let mut clustered = pipeline_config("cl_same_c", cluster_config("same"));
        clustered.kafka.raw_topic = single.kafka.raw_topic.clone();
        clustered.kafka.dlq_topic = single.kafka.dlq_topic.clone();
        support::prepare(&single).await;
        support::prepare(&clustered).await;
        let collector = CollectorHandle::start(single.clone()).await;
        let p1 = ProcessorHandle::start(single.clone()).await;
        let p2 = ProcessorHandle::start(clustered.clone()).await;

        let (_, messages, summary, _) = demo_log(150, 7);
        // Identifies last, after everything else was written: each links an anonymous
        // id whose events are already stored, so their rows are rewritten under the
        // user (the case a sharding key other than the table's own key gets wrong).
        let (links, rest): (Vec<Planned>, Vec<Planned>) = messages
            .iter()
            .cloned()
            .partition(|m| matches!(m.message["type"].as_str(), Some("identify" | "alias")));
        assert!(!links.is_empty() && !rest.is_empty());
        send(&rest, &sender(&collector), None).await.expect("send");
        wait_landed_events(&single.clickhouse, rest.len() as u64).await;
        // Each side has placed every event under its anonymous customer before the
        // identifies arrive (the idle watermark, 5 s, releases them): a fixed pause
        // here was too short on a loaded box, and then no row moved.
        wait_journey_rows(
            &[&single.clickhouse, &clustered.clickhouse],
            rest.len() as u64,
        )
        .await;
        send(&links, &sender(&collector), None).await.expect("send");
        // The late identifies change attempts the plan's summary assumes in time order,
        // so wait until both sides have every event and stopped changing.
        wait_settled(
            &[&single.clickhouse, &clustered.clickhouse],
            summary.messages as u64,
        )
        .await;
        p1.stop().await;
        p2.stop().await;
        collector.stop().await;

        let one = touchstream_clickhouse::client(&single.clickhouse);
        let many = touchstream_clickhouse::client(&clustered.clickhouse);
        // Counted in `customer_touchpoints`, whose key holds the customer: a moved event
        // leaves its old customer's tombstone there. `touchpoint_journey` is keyed by the
        // event id alone, so a background merge may already have collapsed an event's
        // two rows into one, and counting its raw rows found nothing moved on a busy box.
        let moved: u64 = one
            .query(
                "SELECT count() FROM (SELECT event_id FROM customer_touchpoints FINAL \
                 GROUP BY event_id HAVING uniqExact(customer_id) > 1)",
            )
            .fetch_one()
            .await
            .expect("journey rows");
        assert!(
            moved > 0,
            "no event moved to another customer: the log tests too little"
        );
        let in_db = |sql: &str, db: &str| sql.replace("{db}", &format!("`{db}`"));
        for (table, sql) in TABLE_DUMPS {
            let a = support::tsv(&one, &in_db(sql, &single.clickhouse.database)).await;
            let b = support::tsv(&many, &in_db(sql, &clustered.clickhouse.database)).await;
            // The demo's journeys have no conflicting identifies; the rest must have rows.
            assert!(
                !a.is_empty() || table == "identity_conflicts",
                "{table}: no rows on the single server"
            );
            assert!(
                a == b,
                "{table} differs on the cluster ({} vs {} lines)",
                a.lines().count(),
                b.lines().count()
            );
        }
        // The rows are spread: each shard holds part of every big table.
        for table in [
            "events",
            "customer_touchpoints",
            "sessions",
            "funnel_attempts",
        ] {
            for url in [NODES[0].1, NODES[2].1] {
                let n: u64 = node(url)
                    .query(&format!(
                        "SELECT count() FROM `{}`.{table}{LOCAL_SUFFIX}",
                        clustered.clickhouse.database
                    ))
                    .fetch_one()
                    .await
                    .expect("count");
                assert!(n > 0, "{url}: {table}{LOCAL_SUFFIX} is empty");
            }
        }
        // The README's analyst queries (docs/queries), one customer's journey for a
        // customer who has one.
        let customer = support::tsv(
            &one,
            &format!(
                "SELECT customer_id FROM `{}`.customer_touchpoints FINAL WHERE is_deleted = 0 \
                 ORDER BY customer_id LIMIT 1",
                single.clickhouse.database
            ),
        )
        .await;
        let mut files: Vec<_> = std::fs::read_dir(support::repo_path("docs/queries"))
            .expect("docs/queries")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        assert!(files.len() >= 8);
        for f in files {
            let sql = std::fs::read_to_string(&f).expect("query file");
            let sql = sql.replace("'user-0'", &format!("'{customer}'"));
            let a = support::tsv(
                &one,
                &sql.replace(
                    "touchstream.",
                    &format!("`{}`.", single.clickhouse.database),
                ),
            )
            .await;
            let b = support::tsv(
                &many,
                &sql.replace(
                    "touchstream.",
                    &format!("`{}`.", clustered.clickhouse.database),
                ),
            )
            .await;
            assert!(
                !a.is_empty(),
                "{}: no answer on the single server",
                f.display()
            );
            assert_eq!(a, b, "{} differs on the cluster", f.display());
        }
        support::drop_database(&single.clickhouse).await;
        drop_cluster_database(&clustered.clickhouse).await;
    });
}

/// Wait until every database has `events` rows and all of them hold the same row
/// counts, unchanged over 6 s.
async fn wait_settled(cfgs: &[&ClickHouseConfig], events: u64) {
    const COUNTS: &str = "SELECT (SELECT count() FROM events FINAL), \
        (SELECT count() FROM touchpoint_journey FINAL WHERE customer_id != ''), \
        (SELECT count() FROM sessions FINAL WHERE is_deleted = 0), \
        (SELECT count() FROM funnel_attempts FINAL WHERE is_deleted = 0), \
        (SELECT count() FROM funnel_open_attempts FINAL WHERE is_deleted = 0)";
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = Vec::new();
    loop {
        let mut now = Vec::new();
        for cfg in cfgs {
            let c = touchstream_clickhouse::client(cfg);
            now.push(support::tsv(&c, COUNTS).await);
        }
        let all_events = now
            .iter()
            .all(|n| n.split('\t').next() == Some(events.to_string().as_str()));
        if all_events && now.windows(2).all(|w| w[0] == w[1]) && now == last {
            return;
        }
        assert!(Instant::now() < deadline, "not settled: {now:?}");
        last = now;
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
}

/// Per sharded table, (rows after FINAL, a hash of their keys) on one server's `_local`.
async fn local_content(url: &str, db: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (table, key) in [
        ("events", "event_id, kafka_offset"),
        ("touchpoint_journey", "event_id, version"),
        ("customer_touchpoints", "event_id, version"),
        ("sessions", "session_id, version"),
        ("funnel_attempts", "attempt_id, version"),
    ] {
        let v = support::tsv(
            &node(url),
            &format!(
                "SELECT count(), sum(cityHash64({key})) FROM `{db}`.{table}{LOCAL_SUFFIX} FINAL"
            ),
        )
        .await;
        out.push((table.to_string(), v));
    }
    out
}

/// Every event once and every planned attempt once, seen through the cluster.
async fn assert_exact(cfg: &ClickHouseConfig, summary: &PlanSummary) {
    let ch = touchstream_clickhouse::client(cfg);
    let (rows, ids): (u64, u64) = ch
        .query("SELECT count(), uniqExact(event_id) FROM events FINAL")
        .fetch_one()
        .await
        .expect("events");
    assert_eq!(
        (rows, ids),
        (summary.messages as u64, summary.messages as u64)
    );
    let (rows, ids): (u64, u64) = ch
        .query("SELECT count(), uniqExact(event_id) FROM touchpoint_journey FINAL")
        .fetch_one()
        .await
        .expect("journey");
    assert_eq!(
        (rows, ids),
        (summary.messages as u64, summary.messages as u64)
    );
    let web: u64 = ch
        .query("SELECT count() FROM funnel_attempts FINAL WHERE funnel = 'web_checkout' AND is_deleted = 0")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(web, summary.checkout_reached[0] as u64);
    let converted: u64 = ch
        .query("SELECT count() FROM funnel_attempts FINAL WHERE funnel = 'web_checkout' AND is_deleted = 0 AND outcome = 'converted'")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(converted, summary.checkout_reached[3] as u64);
}

#[test]
#[ignore = "needs deploy/local/services.sh up --cluster; tests/run.sh runs it"]
fn a_replica_killed_during_ingestion_catches_up() {
    serial(async {
        support::require_port("Kafka", &support::kafka_brokers());
        let mut config = pipeline_config("cl_replica", cluster_config("replica"));
        // Longer than the pause while ch2 stops: the log is one run in time order.
        config.processor.idle_watermark_secs = 30;
        support::prepare(&config).await;
        let collector = CollectorHandle::start(config.clone()).await;
        let processor = ProcessorHandle::start(config.clone()).await;
        let (g, messages, summary, start_ms) = demo_log(120, 11);
        let half = messages.len() / 2;
        send(&messages[..half], &sender(&collector), None)
            .await
            .expect("first half");
        let ch = touchstream_clickhouse::client(&config.clickhouse);
        let deadline = Instant::now() + Duration::from_secs(60);
        while ch
            .query("SELECT count() FROM events")
            .fetch_one::<u64>()
            .await
            .unwrap_or(0)
            == 0
        {
            assert!(Instant::now() < deadline, "nothing landed");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // ch2, shard 01's second replica, dies mid-ingestion; ch1 takes the writes.
        services("stop-node", "ch2");
        send(&messages[half..], &sender(&collector), None)
            .await
            .expect("second half");
        wait_landed(
            &config.clickhouse,
            &g,
            &summary,
            start_ms,
            Duration::from_secs(240),
        )
        .await;
        processor.stop().await;
        collector.stop().await;
        assert_exact(&config.clickhouse, &summary).await;

        // Back: it fetches what it missed and ends equal to its twin.
        services("start-node", "ch2");
        let db = &config.clickhouse.database;
        let want = local_content(NODES[0].1, db).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = local_content(NODES[1].1, db).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ch2 did not catch up with ch1: {got:?} vs {want:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        drop_cluster_database(&config.clickhouse).await;
    });
}

/// Committed offsets of the identity stage's group on the raw topic.
fn committed(config: &Config) -> Vec<i64> {
    let consumer: BaseConsumer = touchstream_core::kafka::client_config(&config.kafka)
        .set(
            "group.id",
            format!("{}-identity", config.processor.group_id),
        )
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.kafka.partitions {
        tpl.add_partition(&config.kafka.raw_topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(n) => n,
            _ => -1,
        })
        .collect()
}

async fn metric(url: &str, name: &str) -> f64 {
    reqwest::get(url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
#[ignore = "needs deploy/local/services.sh up --cluster; tests/run.sh runs it"]
fn a_shard_down_holds_offsets_then_lands_everything() {
    serial(async {
        support::require_port("Kafka", &support::kafka_brokers());
        let mut config = pipeline_config("cl_shard", cluster_config("shard"));
        config.processor.idle_watermark_secs = 30;
        support::prepare(&config).await;
        let collector = CollectorHandle::start(config.clone()).await;
        let processor = ProcessorHandle::start(config.clone()).await;
        let (g, messages, summary, start_ms) = demo_log(120, 13);
        let half = messages.len() / 2;
        send(&messages[..half], &sender(&collector), None)
            .await
            .expect("first half");
        wait_landed_events(&config.clickhouse, half as u64).await;

        // ch3, shard 02's only server, dies: no insert can reach every shard.
        services("stop-node", "ch3");
        send(&messages[half..], &sender(&collector), None)
            .await
            .expect("second half is accepted by the collector");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let during = committed(&config);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(
            committed(&config),
            during,
            "no offset committed while a shard cannot be written"
        );
        let failures = metric(
            &processor.metrics_url,
            "touchstream_processor_clickhouse_insert_failures_total",
        )
        .await;
        assert!(failures > 0.0, "insert failures are counted");
        let rejected = metric(
            &processor.metrics_url,
            "touchstream_processor_rejected_rows_total",
        )
        .await;
        assert_eq!(
            rejected, 0.0,
            "a shard down is retried, never blamed on the rows"
        );

        services("start-node", "ch3");
        wait_landed(
            &config.clickhouse,
            &g,
            &summary,
            start_ms,
            Duration::from_secs(240),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let after = committed(&config);
            if after.iter().zip(&during).all(|(a, d)| a >= d) && after != during {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "offsets move again after recovery"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        processor.stop().await;
        collector.stop().await;
        assert_exact(&config.clickhouse, &summary).await;
        drop_cluster_database(&config.clickhouse).await;
    });
}

/// Until every database in `cfgs` holds `touchpoint_journey` rows for `n` events.
async fn wait_journey_rows(cfgs: &[&ClickHouseConfig], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    for cfg in cfgs {
        wait_count(
            cfg,
            "SELECT uniqExact(event_id) FROM touchpoint_journey",
            n,
            "events placed",
            deadline,
        )
        .await;
    }
}

async fn wait_landed_events(cfg: &ClickHouseConfig, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    wait_count(
        cfg,
        "SELECT count() FROM events FINAL",
        n,
        "events landed",
        deadline,
    )
    .await;
}

/// Until `sql` (one count) gives at least `n` in `cfg`'s database; fails at `deadline`.
async fn wait_count(cfg: &ClickHouseConfig, sql: &str, n: u64, what: &str, deadline: Instant) {
    let ch = touchstream_clickhouse::client(cfg);
    loop {
        let count: u64 = ch.query(sql).fetch_one().await.unwrap_or(0);
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {count} of {n} {what}",
            cfg.database
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
