//! Helpers for integration tests that run against the real local services started by
//! `deploy/local/services.sh up` (tansu on 127.0.0.1:9092, ClickHouse 18.16 on :8123).
//!
//! Each test gets its own topic and database names so tests can run in parallel and
//! leave no state that another test could read.

pub mod journeys;

use std::path::PathBuf;
use std::time::Duration;

use touchstream_core::config::{ClickHouseConfig, KafkaConfig};

/// Kafka bootstrap servers for tests (`TS_TEST_KAFKA_BROKERS`, default `127.0.0.1:9092`).
pub fn kafka_brokers() -> String {
    std::env::var("TS_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// ClickHouse URL for tests (`TS_TEST_CLICKHOUSE_URL`, default `http://127.0.0.1:8123`).
pub fn clickhouse_url() -> String {
    std::env::var("TS_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// A short unique suffix for names.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..12)
            .unwrap_or("x")
    )
}

/// Kafka config with fresh, test-owned topic names.
pub fn kafka_config(test: &str) -> KafkaConfig {
    let id = unique(test);
    KafkaConfig {
        brokers: kafka_brokers(),
        raw_topic: format!("it.{id}.raw"),
        dlq_topic: format!("it.{id}.dlq"),
        aliases_topic: format!("it.{id}.aliases"),
        routed_topic: format!("it.{id}.routed"),
        partitions: 3,
        ..KafkaConfig::default()
    }
}

/// ClickHouse config with a fresh, test-owned database name.
pub fn clickhouse_config(test: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: clickhouse_url(),
        database: unique(&format!("it_{test}")),
        ..ClickHouseConfig::default()
    }
}

/// Fail fast with a helpful message when the services are not running.
pub fn require_port(what: &str, addr: &str) {
    let ok = addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some();
    assert!(
        ok,
        "{what} is not reachable at {addr}; start the local services with `deploy/local/services.sh up` (tests/run.sh does)"
    );
}

/// Folder where tests leave files for the Python tests of the same run.
pub fn artifacts_dir() -> PathBuf {
    let dir = repo_path("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// A collector running in-process on an ephemeral port, stopped on drop.
pub struct CollectorHandle {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Cancels the collector.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The server task.
    pub task: Option<tokio::task::JoinHandle<Result<(), touchstream_collector::CollectorError>>>,
}

impl CollectorHandle {
    /// Start a collector with this config on 127.0.0.1:0. Tests use the demo write
    /// keys, so `collector.allow_demo_keys` is set.
    pub async fn start(mut config: touchstream_core::Config) -> Self {
        config.collector.allow_demo_keys = true;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(touchstream_collector::run(
            config,
            listener,
            shutdown.clone(),
        ));
        Self {
            base,
            shutdown,
            task: Some(task),
        }
    }

    /// Stop and wait for a clean exit.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await
                .expect("collector task")
                .expect("collector exits cleanly");
        }
    }
}

impl Drop for CollectorHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Read every record of `topic` until `idle` passes without a new one.
pub async fn drain_topic(
    brokers: &str,
    topic: &str,
    idle: Duration,
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("it-drain"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    // The first record may take a while (group join); later ones arrive quickly.
    let mut wait = Duration::from_secs(15).max(idle);
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(wait, async { Some(consumer.recv().await) }).await
    {
        out.push((
            m.key().map(<[u8]>::to_vec),
            m.payload().unwrap_or_default().to_vec(),
        ));
        wait = idle;
    }
    out
}

/// Every touchpoint on the config's raw topic, decoded (Avro), in topic order per
/// partition.
pub async fn raw_touchpoints(
    config: &touchstream_core::Config,
) -> Vec<touchstream_core::Touchpoint> {
    drain_topic(
        &config.kafka.brokers,
        &config.kafka.raw_topic,
        Duration::from_secs(2),
    )
    .await
    .into_iter()
    .map(|(_, v)| {
        touchstream_core::avro::decode(&v).expect("raw topic records are Avro touchpoints")
    })
    .collect()
}

/// The config's DLQ records (JSON) with `reason`, in topic order per partition: the
/// topic is read again until at least `at_least` are there or `within` has passed
/// (the records of the last read).
pub async fn dlq_records(
    config: &touchstream_core::Config,
    reason: &str,
    at_least: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let docs: Vec<serde_json::Value> = drain_topic(
            &config.kafka.brokers,
            &config.kafka.dlq_topic,
            Duration::from_secs(3),
        )
        .await
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).expect("DLQ records are JSON"))
        .filter(|doc: &serde_json::Value| doc["reason"] == reason)
        .collect();
        if docs.len() >= at_least || std::time::Instant::now() > deadline {
            return docs;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Where the tansu binary is: `TANSU_BIN`, else PATH, else `~/.cargo/bin/tansu`.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu")
}

/// A free TCP port on loopback (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Drop a test's own database at the end of the test.
pub async fn drop_database(cfg: &ClickHouseConfig) {
    touchstream_clickhouse::server_client(cfg)
        .query(&format!("DROP DATABASE IF EXISTS `{}`", cfg.database))
        .execute()
        .await
        .unwrap_or_else(|e| panic!("dropping test database {}: {e}", cfg.database));
}

/// The repository's root folder (the tests' package is the root package).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path in the repository (`deploy/funnels.toml`, ...).
pub fn repo_path(path: &str) -> PathBuf {
    repo_root().join(path)
}

/// An in-process processor (`touchstream_processor::run`) with its metrics endpoint on a
/// free loopback port.
pub struct ProcessorHandle {
    /// `http://127.0.0.1:PORT/metrics`.
    pub metrics_url: String,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), touchstream_processor::ProcessorError>>,
}

impl ProcessorHandle {
    /// Start a processor with `config`.
    pub async fn start(config: touchstream_core::Config) -> Self {
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let metrics_url = format!("http://{}/metrics", metrics.local_addr().expect("addr"));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(touchstream_processor::run(
            config,
            Some(metrics),
            stop.clone(),
        ));
        Self {
            metrics_url,
            stop,
            task,
        }
    }

    /// Its Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(&self.metrics_url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// `/healthz`: status and body.
    pub async fn healthz(&self) -> (u16, String) {
        let url = self.metrics_url.replace("/metrics", "/healthz");
        let r = reqwest::get(url).await.expect("healthz");
        (r.status().as_u16(), r.text().await.expect("healthz text"))
    }

    /// Fails the test with the processor's own result if it has stopped by itself.
    pub async fn assert_running(&mut self) {
        if self.task.is_finished() {
            let result = (&mut self.task).await;
            panic!("the processor stopped by itself: {result:?}");
        }
    }

    /// Stop it (it writes, snapshots and commits what it holds) and wait.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A processor config on fresh topics, database and group, with the repository's funnels
/// and catalog, 200 ms batches and no idle watermark (tests decide when input ends).
pub fn processor_config(test: &str) -> touchstream_core::Config {
    let mut c = touchstream_core::Config {
        kafka: kafka_config(test),
        clickhouse: clickhouse_config(test),
        ..touchstream_core::Config::default()
    };
    c.processor.group_id = unique(&format!("it-{test}"));
    c.processor.funnels_path = repo_path("deploy/funnels.toml");
    c.processor.catalog_path = repo_path("deploy/catalog.toml");
    c.processor.batch_max_ms = 200;
    c.processor.idle_watermark_secs = 0;
    c
}

/// A signed-out web `Product Viewed` touchpoint at `t` (epoch ms), as the collector
/// would encode it, with `properties` as given.
pub fn product_viewed(
    event_id: &str,
    anonymous_id: &str,
    t: i64,
    properties: &str,
) -> touchstream_core::Touchpoint {
    touchstream_core::Touchpoint {
        event_id: event_id.to_string(),
        message_type: touchstream_core::MessageType::Track,
        event: Some("Product Viewed".into()),
        anonymous_id: Some(anonymous_id.to_string()),
        user_id: None,
        previous_id: None,
        event_time_ms: t,
        timestamp_ms: Some(t),
        sent_at_ms: None,
        received_at_ms: t,
        source: "web".into(),
        channel: "web".into(),
        properties: properties.into(),
        traits: "{}".into(),
        context: "{}".into(),
        ip: None,
        user_agent: None,
        extra: "{}".into(),
    }
}

/// Migrate the test's database and create its topics.
pub async fn prepare(config: &touchstream_core::Config) {
    touchstream_clickhouse::migrate(&config.clickhouse)
        .await
        .expect("migrate");
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
}

/// A funnels file for one test: the repository's `deploy/funnels.toml` followed by
/// `extra` (more `[[funnel]]` tables), written under [`artifacts_dir`].
pub fn funnels_with(extra: &str) -> PathBuf {
    let path = artifacts_dir().join(format!("{}.toml", unique("funnels")));
    let repo = std::fs::read_to_string(repo_path("deploy/funnels.toml")).expect("funnels");
    std::fs::write(&path, format!("{repo}\n{extra}")).expect("write funnels");
    path
}

/// POST `messages` as one `/v1/batch` with the demo web key; the collector must accept
/// all of them. Returns its response body.
pub async fn post_batch(base: &str, messages: &[serde_json::Value]) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/batch"))
        .basic_auth("demo-web-key", Some(""))
        .json(&serde_json::json!({ "batch": messages }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["rejected"], serde_json::json!([]), "{body}");
    body
}

/// Run one of the README's analyst queries (`docs/queries/FILE`) against `database`
/// (its `touchstream.` prefix replaced) and return the result as trimmed TSV.
pub async fn analyst_query(ch: &clickhouse::Client, database: &str, file: &str) -> String {
    let sql = std::fs::read_to_string(repo_path(&format!("docs/queries/{file}")))
        .expect("query file")
        .replace("touchstream.", &format!("`{database}`."));
    tsv(ch, &sql).await
}

/// The rows of `sql` as TSV text, without the last newline (leading tabs stay: a row may
/// start with an empty value).
pub async fn tsv(ch: &clickhouse::Client, sql: &str) -> String {
    let bytes = ch
        .query(&format!("{sql} FORMAT TSV"))
        .fetch_bytes("TSV")
        .expect("query")
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\n')
        .to_string()
}

/// The sum of the samples of metric `name` in Prometheus text whose labels include all of
/// `labels` (each written `key="value"`), whatever their other labels.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split_once("} "))
        .filter(|(got, _)| {
            let got: Vec<&str> = got.split(',').collect();
            labels.iter().all(|want| got.contains(want))
        })
        .map(|(_, v)| v.trim().parse::<f64>().expect("a number"))
        .sum()
}
