//! `/readyz` never waits for the broker (README "Collector API"): it answers from the
//! last background check.
//!
//! Against a "broker" that accepts connections and never answers (what a hung broker or
//! a black-holed network looks like), every probe must still be answered at once (503);
//! against the real local broker the collector turns ready within a few seconds, and
//! probes stay just as fast.

use std::time::{Duration, Instant};

use touchstream_core::config::{Config, SourceConfig};
use touchstream_tests::{self as support, CollectorHandle};

fn config(brokers: String) -> Config {
    let mut config = Config {
        kafka: support::kafka_config("readyz"),
        ..Config::default()
    };
    config.kafka.brokers = brokers;
    config.collector.readiness_interval_ms = 500;
    config.collector.sources = vec![SourceConfig::new("web", "readyz-key", "web")];
    config
}

/// One `/readyz`: status and how long it took.
async fn probe(http: &reqwest::Client, base: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = http
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("readyz answers");
    (r.status().as_u16(), t.elapsed())
}

#[tokio::test]
async fn readyz_answers_at_once_while_the_broker_is_silent() {
    // Accepts every connection and holds it without a byte in answer.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let c = CollectorHandle::start(config(addr.to_string())).await;
    let http = reqwest::Client::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let (status, took) = probe(&http, &c.base).await;
        assert_eq!(status, 503, "not ready without a broker");
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        slowest < Duration::from_millis(300),
        "a probe waited {slowest:?} for the silent broker"
    );
    c.stop().await;
    holder.abort();
}

#[tokio::test]
async fn readyz_turns_ready_with_the_real_broker_and_stays_fast() {
    support::require_port("Kafka", &support::kafka_brokers());
    let c = CollectorHandle::start(config(support::kafka_brokers())).await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        let (status, took) = probe(&http, &c.base).await;
        slowest = slowest.max(took);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not ready after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let (status, took) = probe(&http, &c.base).await;
        assert_eq!(status, 200);
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        slowest < Duration::from_millis(300),
        "slowest probe {slowest:?}"
    );
    c.stop().await;
}
