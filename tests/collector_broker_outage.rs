//! With the broker down the collector answers 503 + Retry-After within its produce
//! timeout, never 200, and recovers by itself when the broker returns.
//!
//! Runs its own tansu (sqlite storage, so topics survive the restart) on a free port, so
//! stopping it does not disturb the other tests' broker. A processor on the same broker
//! checks the other half of the promise: every event answered 200 reaches ClickHouse.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use touchstream_core::config::{Config, SourceConfig};
use touchstream_tests::{self as support, CollectorHandle, ProcessorHandle};

struct Broker {
    child: Child,
}

impl Broker {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(support::tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // tansu resolves the sqlite path against its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu (set TANSU_BIN or run deploy/local/services.sh up once)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn broker_outage_gives_503_never_200_and_recovers() {
    let port = support::free_port();
    let dir = std::env::temp_dir().join(support::unique("tansu-outage"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let broker = Broker::start(port, &dir);

    let mut config = Config {
        kafka: support::kafka_config("outage"),
        ..Config::default()
    };
    config.kafka.brokers = format!("127.0.0.1:{port}");
    config.collector.produce_timeout_ms = 2000;
    config.collector.retry_after_secs = 3;
    config.collector.sources = vec![SourceConfig::new("web", "k", "web")];
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let c = CollectorHandle::start(config.clone()).await;
    // A processor on the same broker, writing to its own database: after the restart,
    // every event answered 200 must reach ClickHouse. It may still be starting when the
    // broker goes away.
    let mut processor = start_processor(&mut config, "outage").await;
    let client = reqwest::Client::new();
    let send = |id: String| {
        client
            .post(format!("{}/v1/track", c.base))
            .basic_auth("k", Some(""))
            .json(&json!({"event": "Order Completed", "userId": "u-1", "messageId": id}))
            .timeout(Duration::from_secs(30))
            .send()
    };
    assert_eq!(send("before".into()).await.expect("req").status(), 200);

    broker.kill();
    let mut refused = 0;
    for i in 0..4 {
        let t = Instant::now();
        let r = send(format!("down-{i}"))
            .await
            .expect("the collector still answers");
        let took = t.elapsed();
        assert_eq!(r.status(), 503, "request {i} while the broker is down");
        assert_eq!(r.headers()["retry-after"], "3");
        // Bounded: produce timeout (2 s) plus scheduling slack, not a hang.
        assert!(took < Duration::from_secs(8), "503 took {took:?}");
        refused += 1;
    }
    let ready = client
        .get(format!("{}/readyz", c.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503, "not ready while the broker is down");

    let _broker = Broker::start(port, &dir);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut recovered = false;
    while Instant::now() < deadline {
        let r = send("after".into()).await.expect("req");
        if r.status() == 200 {
            recovered = true;
            break;
        }
        assert_eq!(r.status(), 503);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        recovered,
        "ingestion resumed without restarting the collector"
    );
    assert_eq!(refused, 4);

    let ids: Vec<String> = support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.raw_topic,
        Duration::from_secs(2),
    )
    .await
    .into_iter()
    .map(|(_, v)| touchstream_core::avro::decode(&v).expect("avro").event_id)
    .collect();
    assert!(
        ids.contains(&"web:before".to_string()) && ids.contains(&"web:after".to_string()),
        "{ids:?}"
    );
    // Every event that got a 200 is in ClickHouse, once. A 503'd request may have partly
    // landed (at-least-once); the 200s must all be there.
    let stored = stored_events(&mut processor, &config, |ids| {
        ids.iter().any(|e| e == "web:before") && ids.iter().any(|e| e == "web:after")
    })
    .await;
    let mut unique = stored.clone();
    unique.dedup();
    assert_eq!(unique, stored, "no duplicates after FINAL");
    processor.stop().await;
    c.stop().await;
    support::drop_database(&config.clickhouse).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A processor started while Kafka is down (a deployment that starts it first) waits for
/// the broker instead of exiting, then processes what arrives. Its start reads the
/// topics' partition counts, which time out after 2 s without a broker and are retried;
/// the broker comes up after several failed reads.
#[tokio::test]
async fn a_processor_started_before_the_broker_waits_for_it() {
    let port = support::free_port();
    let dir = std::env::temp_dir().join(support::unique("tansu-late"));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let mut config = Config {
        kafka: support::kafka_config("late"),
        ..Config::default()
    };
    config.kafka.brokers = format!("127.0.0.1:{port}");
    config.collector.sources = vec![SourceConfig::new("web", "k", "web")];
    config.processor.unhealthy_after_failures = 1;
    let mut processor = start_processor(&mut config, "late").await;

    tokio::time::sleep(Duration::from_secs(12)).await;
    processor.assert_running().await;
    // Waiting is not healthy: /healthz names the start and why.
    let (status, body) = processor.healthz().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("stage start failed") && body.contains("kafka"),
        "{body}"
    );
    let _broker = Broker::start(port, &dir);
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let c = CollectorHandle::start(config.clone()).await;
    let status = reqwest::Client::new()
        .post(format!("{}/v1/track", c.base))
        .basic_auth("k", Some(""))
        .json(&json!({"event": "Order Completed", "userId": "u-1", "messageId": "late"}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("req")
        .status();
    assert_eq!(status, 200);

    stored_events(&mut processor, &config, |ids| ids == ["web:late"]).await;
    // Started: the start no longer counts against its health.
    let (_, body) = processor.healthz().await;
    assert!(!body.contains("stage start"), "{body}");
    processor.stop().await;
    c.stop().await;
    support::drop_database(&config.clickhouse).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A processor in this process on `config`'s broker, with its own ClickHouse database
/// (migrated) and consumer group, set in `config`.
async fn start_processor(config: &mut Config, label: &str) -> ProcessorHandle {
    let repo = support::repo_root();
    config.clickhouse = support::clickhouse_config(label);
    config.processor.group_id = support::unique(&format!("it-{label}"));
    config.processor.funnels_path = repo.join("deploy/funnels.toml");
    config.processor.catalog_path = repo.join("deploy/catalog.toml");
    config.processor.batch_max_ms = 200;
    config.processor.restart_backoff_ms = 500;
    touchstream_clickhouse::migrate(&config.clickhouse)
        .await
        .expect("migrate");
    ProcessorHandle::start(config.clone()).await
}

/// The event ids in `config`'s database (`FINAL`, in order) once `done` holds for them;
/// fails the test if the processor stops by itself or 120 s pass first.
async fn stored_events(
    processor: &mut ProcessorHandle,
    config: &Config,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored: Vec<String> = ch
            .query("SELECT event_id FROM events FINAL ORDER BY event_id")
            .fetch_all()
            .await
            .expect("query events");
        if done(&stored) {
            return stored;
        }
        processor.assert_running().await;
        assert!(
            Instant::now() < deadline,
            "events in ClickHouse: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
