//! Helpers for integration tests that run against the real local services started by
//! `deploy/local/services.sh up` (tansu on 127.0.0.1:9092, ClickHouse 18.16 on :8123).
//!
//! Each test gets its own topic and database names so tests can run in parallel and
//! leave no state that another test could read.

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
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
