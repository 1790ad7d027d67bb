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
use touchstream_tests::{self as support, CollectorHandle};

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
    // every event answered 200 must reach ClickHouse.
    let repo = support::repo_root();
    config.clickhouse = support::clickhouse_config("outage");
    config.processor.group_id = support::unique("it-outage");
    config.processor.funnels_path = repo.join("deploy/funnels.toml");
    config.processor.catalog_path = repo.join("deploy/catalog.toml");
    config.processor.batch_max_ms = 200;
    config.processor.restart_backoff_ms = 500;
    touchstream_clickhouse::migrate(&config.clickhouse)
        .await
        .expect("migrate");
    let stop = tokio_util::sync::CancellationToken::new();
    let processor = tokio::spawn(touchstream_processor::run(
        config.clone(),
        None,
        stop.clone(),
    ));
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
    // Every event that got a 200 is in ClickHouse, once.
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored: Vec<String> = ch
            .query("SELECT event_id FROM events FINAL ORDER BY event_id")
            .fetch_all()
            .await
            .unwrap_or_default();
        // A 503'd request may have partly landed (at-least-once); the 200s must all be there.
        if stored.iter().any(|e| e == "web:before") && stored.iter().any(|e| e == "web:after") {
            let mut unique = stored.clone();
            unique.dedup();
            assert_eq!(unique, stored, "no duplicates after FINAL");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events in ClickHouse after the broker restart: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    let _ = processor.await;
    c.stop().await;
    support::drop_database(&config.clickhouse).await;
    let _ = std::fs::remove_dir_all(&dir);
}
