//! IP, user agent and PII handling per source (README "Privacy"), end to end: five
//! sources with different options send the same identify, track and rejected message
//! through a real collector, broker and processor; the `events` table and the DLQ topic
//! hold only what each source keeps (`ip`, `user_agent`, `properties`, `traits`,
//! `context`, and the DLQ record's message).

use std::time::{Duration, Instant};

use clickhouse::Row;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use touchstream_core::config::{IpMode, PiiMode, SourceConfig, UserAgentMode};
use touchstream_tests::{self as support, CollectorHandle, ProcessorHandle};

const HASH_KEY: &str = "it-privacy-hash-key-0123456789";

/// HMAC-SHA256 under the test key, hex, computed here independently of the collector.
fn hmac_hex(text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(HASH_KEY.as_bytes()).expect("any key length");
    mac.update(text.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The sources: name, write key, what it keeps.
fn sources() -> Vec<SourceConfig> {
    let source = |name: &str, f: &dyn Fn(&mut SourceConfig)| {
        let mut s = SourceConfig::new(name, &format!("key-{name}"), "web");
        f(&mut s);
        s
    };
    vec![
        source("keep", &|_| {}),
        source("trunc", &|s| {
            s.ip = IpMode::Truncate;
            s.user_agent = UserAgentMode::Drop;
        }),
        source("trunc6", &|s| s.ip = IpMode::Truncate),
        source("hash", &|s| {
            s.ip = IpMode::Hash;
            s.pii_keys = vec!["email".into(), "phone".into()];
        }),
        source("drop", &|s| {
            s.ip = IpMode::Drop;
            s.user_agent = UserAgentMode::Drop;
            s.pii_keys = vec!["email".into(), "phone".into()];
            s.pii = PiiMode::Drop;
        }),
    ]
}

#[derive(Row, Deserialize, Debug)]
struct Stored {
    source: String,
    #[serde(rename = "type")]
    message_type: String,
    ip: String,
    user_agent: String,
    properties: String,
    traits: String,
    context: String,
}

fn obj(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_sources_ip_user_agent_and_pii_options_reach_events_and_the_dlq() {
    support::require_port("Kafka", &support::kafka_brokers());
    let mut config = support::processor_config("privacy_collector");
    config.kafka.partitions = 1;
    config.collector.sources = sources();
    config.collector.privacy_hash_key = HASH_KEY.into();
    // The client address comes from X-Forwarded-For, so each source can send its own
    // (an IPv6 one for `trunc6`).
    config.collector.trusted_proxy_header = Some("x-forwarded-for".into());
    config.collector.trusted_proxies = vec!["127.0.0.1".into()];
    support::prepare(&config).await;
    let collector = CollectorHandle::start(config.clone()).await;
    let processor = ProcessorHandle::start(config.clone()).await;
    let http = reqwest::Client::new();

    let client_ip = |source: &str| {
        if source == "trunc6" {
            "2001:db8:abcd:12:34::1"
        } else {
            "203.0.113.77"
        }
    };
    for s in sources() {
        let name = s.name.as_str();
        let body = json!({"batch": [
            {"type": "identify", "messageId": format!("{name}-identify"), "anonymousId": format!("anon-{name}"),
             "userId": format!("user-{name}"),
             "traits": {"email": "ann@shop.example", "phone": 4_155_550_100_u64, "plan": "pro"},
             "context": {"ip": "198.51.100.23", "userAgent": "ctx-agent/1.0", "locale": "en-GB",
                         "traits": {"email": "ann@shop.example"}}},
            {"type": "track", "messageId": format!("{name}-track"), "anonymousId": format!("anon-{name}"),
             "event": "Product Viewed", "properties": {"email": "ann@shop.example", "sku": "SKU-1"}},
            {"type": "track", "messageId": format!("{name}-rejected"), "anonymousId": format!("anon-{name}"),
             "properties": {"email": "ann@shop.example"},
             "context": {"ip": "198.51.100.23", "userAgent": "ctx-agent/1.0"}}
        ]});
        let r = http
            .post(format!("{}/v1/batch", collector.base))
            .basic_auth(&s.write_key, Some(""))
            .header("user-agent", "header-agent/2.0")
            .header("x-forwarded-for", client_ip(name))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{name}");
        let answer: Value = r.json().await.expect("answer");
        assert_eq!(answer["accepted"], 2, "{name}: {answer}");
    }

    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows: Vec<Stored> = loop {
        let rows: Vec<Stored> = ch
            .query(
                "SELECT source, type, ip, user_agent, properties, traits, context \
                 FROM events FINAL ORDER BY source, type",
            )
            .fetch_all()
            .await
            .expect("events");
        if rows.len() >= 10 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "only {} events stored",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(rows.len(), 10, "{rows:#?}");
    let row = |source: &str, t: &str| {
        rows.iter()
            .find(|r| r.source == source && r.message_type == t)
            .unwrap_or_else(|| panic!("no {t} of {source}"))
    };
    let email = hmac_hex("ann@shop.example");
    let phone = hmac_hex("4155550100");
    let mut wrong = Vec::new();
    let mut check = |what: String, got: Value, want: Value| {
        if got != want {
            wrong.push(format!("{what}: got {got}, want {want}"));
        }
    };

    // keep: everything as sent.
    let (i, t) = (row("keep", "identify"), row("keep", "track"));
    check("keep ip".into(), json!(i.ip), json!("203.0.113.77"));
    check(
        "keep ua".into(),
        json!(i.user_agent),
        json!("ctx-agent/1.0"),
    );
    check(
        "keep track ua".into(),
        json!(t.user_agent),
        json!("header-agent/2.0"),
    );
    check(
        "keep traits".into(),
        obj(&i.traits),
        json!({"email": "ann@shop.example", "phone": 4_155_550_100_u64, "plan": "pro"}),
    );
    check(
        "keep context".into(),
        obj(&i.context),
        json!({"ip": "198.51.100.23", "userAgent": "ctx-agent/1.0", "locale": "en-GB",
               "traits": {"email": "ann@shop.example"}}),
    );
    check(
        "keep properties".into(),
        obj(&t.properties),
        json!({"email": "ann@shop.example", "sku": "SKU-1"}),
    );

    // trunc: IPv4 to /24, user agent dropped (column and context), PII kept.
    let (i, t) = (row("trunc", "identify"), row("trunc", "track"));
    check("trunc ip".into(), json!(i.ip), json!("203.0.113.0"));
    check("trunc track ip".into(), json!(t.ip), json!("203.0.113.0"));
    check("trunc ua".into(), json!(i.user_agent), json!(""));
    check("trunc track ua".into(), json!(t.user_agent), json!(""));
    check(
        "trunc context".into(),
        obj(&i.context),
        json!({"ip": "198.51.100.0", "locale": "en-GB", "traits": {"email": "ann@shop.example"}}),
    );
    check(
        "trunc traits".into(),
        obj(&i.traits)["email"].clone(),
        json!("ann@shop.example"),
    );

    // trunc6: IPv6 to /48.
    let i = row("trunc6", "identify");
    check("trunc6 ip".into(), json!(i.ip), json!("2001:db8:abcd::"));
    check(
        "trunc6 ua".into(),
        json!(i.user_agent),
        json!("ctx-agent/1.0"),
    );

    // hash: keyed HMAC of the IP (column and context) and of the PII keys.
    let (i, t) = (row("hash", "identify"), row("hash", "track"));
    check(
        "hash ip".into(),
        json!(i.ip),
        json!(hmac_hex("203.0.113.77")),
    );
    check(
        "hash ua".into(),
        json!(i.user_agent),
        json!("ctx-agent/1.0"),
    );
    check(
        "hash traits".into(),
        obj(&i.traits),
        json!({"email": email, "phone": phone, "plan": "pro"}),
    );
    check(
        "hash context".into(),
        obj(&i.context),
        json!({"ip": hmac_hex("198.51.100.23"), "userAgent": "ctx-agent/1.0", "locale": "en-GB",
               "traits": {"email": email}}),
    );
    check(
        "hash properties".into(),
        obj(&t.properties),
        json!({"email": email, "sku": "SKU-1"}),
    );

    // drop: nothing of the IP, user agent or PII keys.
    let (i, t) = (row("drop", "identify"), row("drop", "track"));
    check("drop ip".into(), json!(i.ip), json!(""));
    check("drop ua".into(), json!(i.user_agent), json!(""));
    check("drop traits".into(), obj(&i.traits), json!({"plan": "pro"}));
    check(
        "drop context".into(),
        obj(&i.context),
        json!({"locale": "en-GB", "traits": {}}),
    );
    check(
        "drop properties".into(),
        obj(&t.properties),
        json!({"sku": "SKU-1"}),
    );

    // The DLQ records: the same options on the rejected message.
    let dlq = support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.dlq_topic,
        Duration::from_secs(2),
    )
    .await;
    let dlq: Vec<Value> = dlq
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).expect("dlq json"))
        .collect();
    let record = |source: &str| {
        dlq.iter()
            .find(|d| d["source"] == source)
            .map(|d| d["message"].clone())
            .unwrap_or_else(|| panic!("no DLQ record of {source}: {dlq:?}"))
    };
    check("dlq count".into(), json!(dlq.len()), json!(5));
    check(
        "keep dlq".into(),
        record("keep"),
        json!({"type": "track", "messageId": "keep-rejected", "anonymousId": "anon-keep",
               "properties": {"email": "ann@shop.example"},
               "context": {"ip": "198.51.100.23", "userAgent": "ctx-agent/1.0"}}),
    );
    check(
        "trunc dlq context".into(),
        record("trunc")["context"].clone(),
        json!({"ip": "198.51.100.0"}),
    );
    check(
        "hash dlq".into(),
        record("hash")["properties"].clone(),
        json!({"email": email}),
    );
    check(
        "hash dlq context".into(),
        record("hash")["context"].clone(),
        json!({"ip": hmac_hex("198.51.100.23"), "userAgent": "ctx-agent/1.0"}),
    );
    check(
        "drop dlq".into(),
        record("drop"),
        json!({"type": "track", "messageId": "drop-rejected", "anonymousId": "anon-drop",
               "properties": {}, "context": {}}),
    );
    // Nothing of what `hash` and `drop` hide is anywhere in their rows or records.
    for source in ["hash", "drop"] {
        let texts: Vec<String> = rows
            .iter()
            .filter(|r| r.source == source)
            .map(|r| {
                format!(
                    "{} {} {} {} {}",
                    r.ip, r.user_agent, r.properties, r.traits, r.context
                )
            })
            .chain(std::iter::once(record(source).to_string()))
            .collect();
        for secret in [
            "ann@shop.example",
            "4155550100",
            "203.0.113.77",
            "198.51.100.23",
        ] {
            if texts.iter().any(|t| t.contains(secret)) {
                wrong.push(format!("{source} still holds {secret}: {texts:?}"));
            }
        }
    }

    processor.stop().await;
    collector.stop().await;
    support::drop_database(&config.clickhouse).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_source_that_hashes_without_a_key_does_not_start() {
    let mut config = support::processor_config("privacy_nokey");
    config.collector.allow_demo_keys = true;
    let mut s = SourceConfig::new("web", "k", "web");
    s.pii_keys = vec!["email".into()];
    config.collector.sources = vec![s];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = touchstream_collector::run(config, listener, Default::default())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("privacy_hash_key"), "{err}");
}
