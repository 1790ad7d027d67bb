//! The client address and the per-address rate limit (README "Client IP", "Rate limit"),
//! on the real broker, with clients on distinct loopback addresses (127.0.0.2, .3, ...).
//!
//! - `rate_limit_per_ip`: one address bursting with the public web key gets `429` with
//!   `Retry-After`, while another address with the same key is served; writing a
//!   different `X-Forwarded-For` on each request does not help a client that is not
//!   behind a trusted proxy; the `429`s are counted by cause and produce nothing.
//! - `trusted_proxies`: the header is read only from a trusted peer, and then its
//!   right-most untrusted address is the client (stored as the event's `ip`); clients
//!   behind one proxy get a bucket each.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use touchstream_core::config::{Config, SourceConfig};
use touchstream_tests::{self as support, CollectorHandle};

const KEY: &str = "cip-web-key";

fn config(test: &str) -> Config {
    let mut config = Config {
        kafka: support::kafka_config(test),
        ..Config::default()
    };
    config.collector.sources = vec![SourceConfig::new("web", KEY, "web")];
    config
}

/// A client whose connections come from `local` (a loopback address).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().expect("address"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn track(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut req = http
        .post(format!("{base}/v1/track"))
        .basic_auth(KEY, Some(""))
        .json(&json!({"event": "Product Viewed", "anonymousId": "a-cip", "messageId": id}));
    if let Some(v) = forwarded_for {
        req = req.header("x-forwarded-for", v);
    }
    req.send().await.expect("the collector answers")
}

/// messageId → stored `ip` of every record on the raw topic.
async fn stored_ips(config: &Config) -> BTreeMap<String, Option<String>> {
    support::raw_touchpoints(config)
        .await
        .into_iter()
        .map(|t| {
            let id = t
                .event_id
                .strip_prefix("web:")
                .expect("scoped id")
                .to_string();
            (id, t.ip)
        })
        .collect()
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn one_address_over_its_rate_gets_429_others_with_the_same_key_do_not() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = config("cip-rate");
    config.collector.rate_limit_per_ip = 2; // burst 4
    config.collector.rate_limit_per_key = 0;
    // A proxy header is configured, but the abuser is not a trusted proxy: whatever it
    // writes there is ignored.
    config.collector.trusted_proxy_header = Some("x-forwarded-for".into());
    config.collector.trusted_proxies = vec!["127.0.0.250/32".into()];
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let c = CollectorHandle::start(config.clone()).await;
    let abuser = client_from("127.0.0.2");
    let user = client_from("127.0.0.3");

    let burst = 20;
    let mut limited = 0;
    let mut served = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..burst {
        let id = format!("abuse-{i}");
        let spoof = format!("198.51.100.{i}");
        let r = track(&abuser, &c.base, &id, Some(&spoof)).await;
        match r.status().as_u16() {
            200 => served.push(id),
            429 => {
                limited += 1;
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(wait >= 1, "Retry-After {wait}");
                let body: Value = r.json().await.expect("json error body");
                assert_eq!(body["retryable"], true);
                assert!(
                    body["error"].as_str().unwrap().contains("client address"),
                    "{body}"
                );
            }
            s => panic!("unexpected status {s}"),
        }
    }
    // Burst 4, then 2 per second (one more for rounding at the edges).
    let allowed = 4 + (2.0 * started.elapsed().as_secs_f64()).ceil() as usize + 1;
    assert!(
        limited > 0 && burst - limited <= allowed,
        "a burst of {burst} from one address: {} served, at most {allowed} allowed",
        burst - limited
    );
    // The same public key from another address is served.
    for i in 0..3 {
        let id = format!("user-{i}");
        let r = track(&user, &c.base, &id, None).await;
        assert_eq!(r.status(), 200, "another address is not limited");
        served.push(id);
    }

    let stored = stored_ips(&config).await;
    let mut ids: Vec<&String> = stored.keys().collect();
    ids.sort();
    let mut want: Vec<&String> = served.iter().collect();
    want.sort();
    assert_eq!(ids, want, "a 429 produces nothing");
    for (id, ip) in &stored {
        let expect = if id.starts_with("abuse") {
            "127.0.0.2"
        } else {
            "127.0.0.3"
        };
        assert_eq!(
            ip.as_deref(),
            Some(expect),
            "{id}: the spoofed header is ignored"
        );
    }
    let m = metrics(&c.base).await;
    assert!(
        m.contains(&format!(
            r#"touchstream_collector_throttled_requests_total{{cause="rate_limit_ip"}} {limited}"#
        )),
        "{m}"
    );
    c.stop().await;
}

#[tokio::test]
async fn the_proxy_header_is_read_from_trusted_proxies_only_right_to_left() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = config("cip-proxy");
    config.collector.trusted_proxy_header = Some("x-forwarded-for".into());
    config.collector.trusted_proxies = vec!["127.0.0.2/32".into(), "10.0.0.0/8".into()];
    config.collector.rate_limit_per_ip = 1; // burst 2
    touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .expect("topics");
    let c = CollectorHandle::start(config.clone()).await;
    let proxy = client_from("127.0.0.2");
    let direct = client_from("127.0.0.3");

    // Through our proxies: the client wrote 1.1.1.1 itself; our edge proxy saw
    // 203.0.113.7 and our inner proxy 10.1.2.3. It sends until its bucket (burst 2,
    // 1/s) is empty.
    let chain = "1.1.1.1, 203.0.113.7, 10.1.2.3";
    let mut first_429 = None;
    for i in 0..20 {
        let r = track(&proxy, &c.base, &format!("proxied-{i}"), Some(chain)).await;
        if r.status() == 429 {
            first_429 = Some(i);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let first_429 = first_429.expect("the client behind the proxy is limited");
    assert!(first_429 >= 2, "its burst of 2 is served first");
    // Whatever it writes on the left does not give it a new bucket: of 5 quick requests
    // (well under a second, one token at most) at most one is served.
    let mut spoof_served = 0;
    for i in 0..5 {
        let spoofed = format!("9.9.9.{i}, {chain}");
        let r = track(&proxy, &c.base, &format!("spoof-{i}"), Some(&spoofed)).await;
        if r.status() == 200 {
            spoof_served += 1;
        }
    }
    assert!(
        spoof_served <= 1,
        "{spoof_served} of 5 spoofed requests served"
    );
    // Another client behind the same proxy has its own bucket.
    let r = track(&proxy, &c.base, "other-client", Some("203.0.113.8")).await;
    assert_eq!(r.status(), 200);
    // A client talking to us directly cannot name an address.
    let r = track(&direct, &c.base, "direct", Some("203.0.113.9")).await;
    assert_eq!(r.status(), 200);

    let stored = stored_ips(&config).await;
    let ip = |id: &str| stored.get(id).cloned().flatten();
    for i in 0..first_429 {
        assert_eq!(ip(&format!("proxied-{i}")).as_deref(), Some("203.0.113.7"));
    }
    assert!(!stored.contains_key(&format!("proxied-{first_429}")));
    for (id, addr) in &stored {
        if id.starts_with("spoof-") {
            assert_eq!(addr.as_deref(), Some("203.0.113.7"), "{id}");
        }
    }
    assert_eq!(ip("other-client").as_deref(), Some("203.0.113.8"));
    assert_eq!(ip("direct").as_deref(), Some("127.0.0.3"));
    c.stop().await;
}
