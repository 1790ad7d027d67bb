//! Hostile and broken clients cannot hold the collector (README "Slow clients"), on the
//! real broker with raw TCP clients:
//! - a client that sends half its headers and stalls is disconnected after
//!   `header_read_timeout_ms`;
//! - a kept-alive connection left idle is closed after the same timeout;
//! - a client that announces a body and sends one byte gets `408` after
//!   `body_read_timeout_ms`;
//! - beyond `max_connections` a new connection is not served until one closes;
//! - shutdown returns within `shutdown_grace_ms` even while a client keeps a
//!   connection busy.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use touchstream_core::config::Config;
use touchstream_tests::{self as support, CollectorHandle};

fn config() -> Config {
    let mut config = Config {
        kafka: support::kafka_config("slowclients"),
        ..Config::default()
    };
    config.collector.header_read_timeout_ms = 1_000;
    config.collector.body_read_timeout_ms = 1_000;
    config.collector.max_connections = 4;
    config.collector.shutdown_grace_ms = 1_000;
    config
}

fn addr(c: &CollectorHandle) -> String {
    c.base.trim_start_matches("http://").to_string()
}

/// The collector on `config`, with its topics, and its address (host:port).
async fn start(config: Config) -> (CollectorHandle, String) {
    support::require_port("Kafka", &support::kafka_brokers());
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let c = CollectorHandle::start(config).await;
    let addr = addr(&c);
    (c, addr)
}

/// Read until the peer closes (or `limit` passes); what was read.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

/// Stalled clients in the crowd and shutdown cases: 20 in CI, more by hand with
/// `TOUCHSTREAM_SLOW_CLIENTS=300` (the size of the attack in docs/guarantees.md §4).
fn crowd() -> usize {
    std::env::var("TOUCHSTREAM_SLOW_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

const SLOW_BODY: &str = "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ZGVtby13ZWIta2V5Og==\r\nContent-Type: application/json\r\nContent-Length: 400000\r\n\r\n{";

#[tokio::test]
async fn slow_clients_are_cut_off_and_capped() {
    let config = config();
    let (c, addr) = start(config).await;

    // Half the headers, then nothing: closed after the header timeout.
    let started = Instant::now();
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let got = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(
        got.is_some(),
        "a stalled header read is still open after 10 s"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A kept-alive connection left idle after its answer: closed after the same timeout.
    let started = Instant::now();
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("an idle kept-alive connection is still open after 10 s");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A body that never comes: 408 after the body timeout.
    let started = Instant::now();
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(SLOW_BODY.as_bytes()).await.expect("write");
    let got = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("a stalled body is still open after 10 s");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // max_connections = 4: four stalled connections hold every slot, a fifth is not
    // served until one of them is cut off.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(SLOW_BODY.as_bytes()).await.expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut fifth = TcpStream::connect(&addr).await.expect("connect (backlog)");
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_close(&mut fifth, Duration::from_secs(10))
        .await
        .expect("the fifth connection is served once a slot frees");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "served after {waited:?}: the connection cap did not hold it"
    );
    drop(held);
    c.stop().await;
}

#[tokio::test]
async fn shutdown_is_bounded_with_a_busy_client() {
    let mut config = config();
    // Long timeouts: only the shutdown grace can end these connections.
    config.collector.header_read_timeout_ms = 60_000;
    config.collector.body_read_timeout_ms = 60_000;
    config.collector.max_connections = crowd() + 16;
    let (c, addr) = start(config).await;
    let mut held = Vec::new();
    for _ in 0..crowd() {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(SLOW_BODY.as_bytes()).await.expect("write");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), c.stop())
        .await
        .expect("shutdown did not finish within 15 s with slow clients");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_slow_bodies_all_get_408_and_others_are_served() {
    let n = crowd();
    let mut config = config();
    config.collector.max_connections = n + 16;
    let (c, addr) = start(config).await;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(SLOW_BODY.as_bytes()).await.expect("write");
        held.push(s);
    }
    let started = Instant::now();
    // While they stall, a normal client is served.
    let mut probe = TcpStream::connect(&addr).await.expect("connect probe");
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_close(&mut probe, Duration::from_secs(5))
        .await
        .expect("a normal client is served during the attack");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // Every stalled body is answered 408 and closed within the body timeout (+ margin).
    let answers = futures::future::join_all(
        held.iter_mut()
            .map(|s| read_to_close(s, Duration::from_secs(10))),
    )
    .await;
    let timed_out = answers
        .iter()
        .filter(|a| a.as_deref().is_some_and(|t| t.starts_with("HTTP/1.1 408")))
        .count();
    assert_eq!(
        timed_out,
        n,
        "{n} slow bodies, {timed_out} got 408: {:?}",
        answers
            .iter()
            .find(|a| !a.as_deref().is_some_and(|t| t.starts_with("HTTP/1.1 408")))
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "the crowd was held {took:?}");
    c.stop().await;
}

/// A client that sends a too-large body whole before reading (as most HTTP clients do)
/// gets the 413: the collector reads the rest of the body and throws it away before
/// answering. Answering and closing with the body unread made the kernel reset the
/// connection, so such a client saw "connection reset" or "broken pipe" instead.
#[tokio::test]
async fn a_too_large_body_sent_whole_gets_its_413() {
    let config = config();
    let (_collector, addr) = start(config).await;
    // Over the 512,000-byte limit, by Content-Length and (without it) while reading.
    for declared in [true, false] {
        let body = vec![b' '; 6_000_000];
        let head = if declared {
            format!(
                "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ZGVtby13ZWIta2V5Og==\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
        } else {
            "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ZGVtby13ZWIta2V5Og==\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_string()
        };
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(head.as_bytes()).await.expect("write head");
        let sent = if declared {
            s.write_all(&body).await
        } else {
            let mut chunked = Vec::new();
            for part in body.chunks(64 * 1024) {
                chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                chunked.extend_from_slice(part);
                chunked.extend_from_slice(b"\r\n");
            }
            chunked.extend_from_slice(b"0\r\n\r\n");
            s.write_all(&chunked).await
        };
        sent.unwrap_or_else(|e| panic!("declared {declared}: the body could not be sent: {e}"));
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            matches!(read, Ok(Ok(_))) && text.starts_with("HTTP/1.1 413"),
            "declared {declared}: {read:?}, got {:?}",
            &text[..text.len().min(200)]
        );
    }
}
