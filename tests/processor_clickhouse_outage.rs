//! ClickHouse goes away for 60 s while events keep arriving: the processor retries with
//! backoff, counts the failures, commits no offset while rows cannot be written, and once
//! ClickHouse is back every event and every funnel attempt lands, none twice.
//!
//! Runs its own ClickHouse 18.16 server (Debian's `clickhouse-server`) on free ports, so
//! stopping it does not disturb the other tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use touchstream_core::Config;
use touchstream_demo::generator::{plan, GeneratorConfig};
use touchstream_demo::report::closed_attempts;
use touchstream_demo::sender::{send, SendConfig};
use touchstream_tests::{self as support, CollectorHandle, ProcessorHandle};

struct ClickHouse {
    child: Child,
}

impl ClickHouse {
    fn start(dir: &Path, http: u16, tcp: u16) -> Self {
        let data = dir.join("data");
        for d in ["tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(data.join(d)).expect("data dir");
        }
        std::fs::write(
            dir.join("config.xml"),
            format!(
                "<?xml version=\"1.0\"?><yandex><logger><level>warning</level><log>{d}/ch.log</log><errorlog>{d}/ch.err.log</errorlog></logger>\
                 <http_port>{http}</http_port><tcp_port>{tcp}</tcp_port><listen_host>127.0.0.1</listen_host>\
                 <max_concurrent_queries>100</max_concurrent_queries><uncompressed_cache_size>67108864</uncompressed_cache_size>\
                 <mark_cache_size>67108864</mark_cache_size><path>{p}/</path><tmp_path>{p}/tmp/</tmp_path>\
                 <user_files_path>{p}/user_files/</user_files_path><format_schema_path>{p}/format_schemas/</format_schema_path>\
                 <users_config>users.xml</users_config><default_profile>default</default_profile><default_database>default</default_database>\
                 <timezone>UTC</timezone><mlock_executable>false</mlock_executable></yandex>",
                d = dir.display(),
                p = data.display()
            ),
        )
        .expect("config");
        std::fs::write(
            dir.join("users.xml"),
            "<?xml version=\"1.0\"?><yandex><profiles><default></default></profiles>\
             <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>\
             <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas></yandex>",
        )
        .expect("users");
        let child = Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                dir.join("config.xml").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server (deploy/local/services.sh up installs it)");
        Self { child }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/?query=SELECT%201")).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "private ClickHouse did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Committed offsets of the identity stage's group on the raw topic.
fn committed(config: &Config, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = touchstream_core::kafka::client_config(&config.kafka)
        .set(
            "group.id",
            format!("{}-identity", config.processor.group_id),
        )
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
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
    let text = reqwest::get(url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sum of the identity stage's consumer lag gauges.
async fn identity_lag(url: &str) -> f64 {
    let text = reqwest::get(url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| {
            l.starts_with("touchstream_processor_consumer_lag{") && l.contains("stage=\"identity\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clickhouse_outage_delays_but_loses_and_duplicates_nothing() {
    support::require_port("Kafka", &support::kafka_brokers());
    let dir = std::env::temp_dir().join(support::unique("ch-outage"));
    std::fs::create_dir_all(&dir).expect("tmp");
    let (http, tcp) = (support::free_port(), support::free_port());
    let ch_url = format!("http://127.0.0.1:{http}");
    let server = ClickHouse::start(&dir, http, tcp);
    wait_ready(&ch_url).await;

    let repo = support::repo_root();
    let mut config = Config {
        kafka: support::kafka_config("ch_outage"),
        ..Config::default()
    };
    config.clickhouse.url = ch_url.clone();
    config.processor.group_id = support::unique("it-ch-outage");
    config.processor.funnels_path = repo.join("deploy/funnels.toml");
    config.processor.catalog_path = repo.join("deploy/catalog.toml");
    config.processor.batch_max_ms = 200;
    config.processor.allowed_lateness_secs = 60;
    config.processor.idle_watermark_secs = 5;
    support::prepare(&config).await;
    let collector = CollectorHandle::start(config.clone()).await;
    let processor = ProcessorHandle::start(config.clone()).await;
    let metrics_url = processor.metrics_url.clone();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let g = GeneratorConfig {
        customers: 120,
        seed: 31,
        ..GeneratorConfig::new(now)
    };
    let (messages, summary) = plan(&g);
    let start_ms = messages.first().map_or(now, |m| m.time_ms);
    let half = messages.len() / 2;
    let sender = SendConfig {
        url: collector.base.clone(),
        web_key: "demo-web-key".into(),
        crm_key: "demo-crm-key".into(),
        rate_per_sec: 0.0,
        batch: 50,
        sent_at: false,
    };
    send(&messages[..half], &sender, None)
        .await
        .expect("first half");
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ch
        .query("SELECT count() FROM events")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
        < half as u64
    {
        assert!(Instant::now() < deadline, "first half did not land");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Outage: ClickHouse dies; the second half arrives meanwhile.
    server.kill();
    send(&messages[half..], &sender, None)
        .await
        .expect("second half is accepted by the collector");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = committed(&config, config.kafka.partitions);
    let failures_early = metric(
        &metrics_url,
        "touchstream_processor_clickhouse_insert_failures_total",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(
        committed(&config, config.kafka.partitions),
        during,
        "no offset committed while rows cannot be written"
    );
    let failures = metric(
        &metrics_url,
        "touchstream_processor_clickhouse_insert_failures_total",
    )
    .await;
    assert!(failures > 0.0, "insert failures are counted");
    // The backlog is reported while the flush is stuck retrying.
    let lag = identity_lag(&metrics_url).await;
    assert!(lag > 0.0, "consumer lag reported during the outage");
    // Backoff: a retry every ≤ 10 s, not a hot loop (about 5–10 retries per table in 50 s).
    assert!(
        failures - failures_early < 200.0,
        "{failures_early} → {failures} failures: no backoff?"
    );

    // Recovery: same data directory, everything lands.
    let _server = ClickHouse::start(&dir, http, tcp);
    wait_ready(&ch_url).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let events: u64 = ch
            .query("SELECT count() FROM events FINAL")
            .fetch_one()
            .await
            .unwrap_or(0);
        let closed = closed_attempts(&ch, &g, start_ms).await.unwrap_or(0);
        if events == summary.messages as u64 && closed == summary.attempts as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after recovery: {events}/{} events, {closed}/{} attempts",
            summary.messages,
            summary.attempts
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = committed(&config, config.kafka.partitions);
    let deadline = Instant::now() + Duration::from_secs(30);
    while identity_lag(&metrics_url).await > 0.0 {
        assert!(Instant::now() < deadline, "lag back to 0 after recovery");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        after.iter().zip(&during).all(|(a, d)| a >= d) && after != during,
        "offsets move again after recovery"
    );
    // Exactly the planned outcomes: nothing lost, nothing doubled.
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

    processor.stop().await;
    collector.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A processor deployed before `touchstream migrate` ran: it waits instead of exiting,
/// and `/healthz` answers 503 naming its start and why, first while the database does not
/// exist, then while it lacks migrations (one applied of all); once every migration ran
/// it starts and stores what arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_started_before_the_migrations_waits_and_is_unhealthy() {
    let mut config = support::processor_config("before_migrate");
    config.processor.unhealthy_after_failures = 1;
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let mut processor = ProcessorHandle::start(config.clone()).await;
    let body = unhealthy_until(&mut processor, |b| b.contains("doesn't exist")).await;
    assert!(body.contains("stage start failed"), "{body}");

    let migrations = touchstream_clickhouse::migrate::embedded().expect("migrations");
    touchstream_clickhouse::migrate::migrate_files(&config.clickhouse, &migrations[..1])
        .await
        .expect("first migration");
    // The missing ones, from the second on (a file needing a newer server than this one
    // is not waited for: `migrate` skips it there). A start attempt that looked while the
    // first file was still being applied saw all of them missing, and its answer stands
    // until the next attempt: wait for one made after it.
    let first = migrations[0].name.clone();
    let body = unhealthy_until(&mut processor, |b| {
        b.contains("migration(s), first ") && !b.contains(&first)
    })
    .await;
    assert!(body.contains("run `touchstream migrate`"), "{body}");

    touchstream_clickhouse::migrate(&config.clickhouse)
        .await
        .expect("migrate");
    let c = CollectorHandle::start(config.clone()).await;
    support::post_batch(
        &c.base,
        &[serde_json::json!({"type": "track", "event": "Order Completed", "userId": "u-1", "messageId": "after-migrate"})],
    )
    .await;
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        processor.assert_running().await;
        let ids: Vec<String> = ch
            .query("SELECT event_id FROM events FINAL")
            .fetch_all()
            .await
            .expect("query events");
        if !ids.is_empty() {
            assert_eq!(ids, ["web:after-migrate"]);
            break;
        }
        assert!(Instant::now() < deadline, "the event was not stored");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, body) = processor.healthz().await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    processor.stop().await;
    c.stop().await;
    support::drop_database(&config.clickhouse).await;
}

/// `/healthz`'s body once it answers 503 with a body `until` accepts (at most 30 s; the
/// processor must keep running meanwhile).
async fn unhealthy_until(processor: &mut ProcessorHandle, until: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        processor.assert_running().await;
        let (status, body) = processor.healthz().await;
        if status == 503 && until(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still answers {status} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
