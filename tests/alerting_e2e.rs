//! Ops learn of a broken checkout: real Prometheus (Debian package) scrapes a real
//! collector and processor; customers flow through a checkout funnel at a normal
//! drop-off, then one step breaks (90 % drop-off); `FunnelStepDropoffSpike` fires in
//! Prometheus, reaches Alertmanager and is delivered to a webhook this test runs; when the
//! step heals the alert resolves and the resolution is delivered too.
//!
//! The rules are `deploy/prometheus/rules/touchstream.yml` with every window shortened
//! (10m → 30s, 6h → 3m, ...) as the file's header describes; the funnel has a 10 s window.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use touchstream_core::config::{Config, SourceConfig};
use touchstream_tests::{self as support, CollectorHandle};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &str, args: &[String]) -> Daemon {
    Daemon(
        Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {bin} ({e}); deploy/local/services.sh up installs it")
            }),
    )
}

async fn wait_http(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(url)
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "{url} did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The rules with test-sized windows.
fn shortened_rules() -> String {
    let repo = support::repo_root();
    std::fs::read_to_string(repo.join("deploy/prometheus/rules/touchstream.yml"))
        .expect("rules file")
        .replace("[10m]", "[30s]")
        .replace("[6h]", "[3m]")
        .replace("[1h]", "[2m]")
        .replace("[5m]", "[20s]")
        .replace("for: 5m", "for: 5s")
        .replace("for: 10m", "for: 10s")
}

/// Alerts the webhook received for `name`, as (status, labels).
fn received(log: &Mutex<Vec<Value>>, name: &str) -> Vec<(String, Value)> {
    log.lock()
        .map(|l| {
            l.iter()
                .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
                .filter(|a| a["labels"]["alertname"] == name)
                .map(|a| {
                    (
                        a["status"].as_str().unwrap_or_default().to_string(),
                        a["labels"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropoff_spike_fires_reaches_alertmanager_and_resolves() {
    support::require_port("Kafka", &support::kafka_brokers());
    let dir = std::env::temp_dir().join(support::unique("alerting"));
    std::fs::create_dir_all(&dir).expect("tmp");
    let repo = support::repo_root();

    // Pipeline with a fast funnel.
    let funnels = dir.join("funnels.toml");
    std::fs::write(
        &funnels,
        "[[funnel]]\nname = \"e2e_checkout\"\nwindow_secs = 10\nsteps = [{ event = \"Product Viewed\" }, { event = \"Product Added\" }, { event = \"Order Completed\" }]\n",
    )
    .expect("funnels");
    let mut config = Config {
        kafka: support::kafka_config("alerting"),
        clickhouse: support::clickhouse_config("alerting"),
        ..Config::default()
    };
    config.collector.sources = vec![SourceConfig::new("web", "e2e", "web")];
    config.processor.group_id = support::unique("it-alerting");
    config.processor.funnels_path = funnels;
    config.processor.catalog_path = repo.join("deploy/catalog.toml");
    config.processor.batch_max_ms = 200;
    config.processor.allowed_lateness_secs = 1;
    config.processor.idle_watermark_secs = 2;
    support::prepare(&config).await;
    let collector = CollectorHandle::start(config.clone()).await;
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let processor_addr = metrics.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let processor = tokio::spawn(touchstream_processor::run(
        config.clone(),
        Some(metrics),
        stop.clone(),
    ));

    // Webhook receiver.
    let log: Arc<Mutex<Vec<Value>>> = Arc::default();
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_addr: SocketAddr = hook.local_addr().expect("addr");
    let l = log.clone();
    tokio::spawn(async move {
        let app = Router::new().route(
            "/alerts",
            post(move |Json(v): Json<Value>| {
                let l = l.clone();
                async move {
                    if let Ok(mut g) = l.lock() {
                        g.push(v);
                    }
                    "ok"
                }
            }),
        );
        let _ = axum::serve(hook, app).await;
    });

    // Alertmanager and Prometheus, on free ports, with files of this test.
    let am_port = support::free_port();
    std::fs::write(
        dir.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname, funnel, step]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{hook_addr}/alerts\n        send_resolved: true\n"
        ),
    )
    .expect("am config");
    let _am = spawn(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("am").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".into(),
        ],
    );
    wait_http(&format!("http://127.0.0.1:{am_port}/-/ready")).await;
    std::fs::write(dir.join("rules.yml"), shortened_rules()).expect("rules");
    let prom_port = support::free_port();
    let collector_target = collector.base.trim_start_matches("http://").to_string();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\n\
             scrape_configs:\n  - job_name: touchstream-collector\n    static_configs:\n      - targets: [\"{collector_target}\"]\n\
             \x20 - job_name: touchstream-processor\n    static_configs:\n      - targets: [\"{processor_addr}\"]\n",
            dir.join("rules.yml").display()
        ),
    )
    .expect("prom config");
    let _prom = spawn(
        "prometheus",
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
    );
    wait_http(&format!("http://127.0.0.1:{prom_port}/-/ready")).await;

    // Traffic: 4 customers a second; every customer views and adds a product; the share
    // that then leaves without ordering is the drop-off at step 2 (in tenths).
    let dropoff_tenths = Arc::new(AtomicU32::new(2));
    let customers = Arc::new(AtomicU64::new(0));
    let traffic_stop = CancellationToken::new();
    let (d, n, ts, base) = (
        dropoff_tenths.clone(),
        customers.clone(),
        traffic_stop.clone(),
        collector.base.clone(),
    );
    let traffic = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while !ts.is_cancelled() {
            tick.tick().await;
            let k = n.fetch_add(1, Ordering::Relaxed);
            let anon = format!("e2e-{k}");
            let mut batch = vec![
                json!({"type": "track", "event": "Product Viewed", "anonymousId": anon, "messageId": format!("{anon}-1")}),
                json!({"type": "track", "event": "Product Added", "anonymousId": anon, "messageId": format!("{anon}-2")}),
            ];
            if (k % 10) as u32 >= d.load(Ordering::Relaxed) {
                batch.push(json!({"type": "track", "event": "Order Completed", "anonymousId": anon, "messageId": format!("{anon}-3")}));
            }
            let _ = http
                .post(format!("{base}/v1/batch"))
                .basic_auth("e2e", Some(""))
                .json(&json!({"batch": batch}))
                .send()
                .await;
        }
    });

    let wait_for = |status: &'static str, limit: Duration| {
        let log = log.clone();
        async move {
            let deadline = Instant::now() + limit;
            loop {
                let got = received(&log, "FunnelStepDropoffSpike");
                if let Some((_, labels)) = got.iter().find(|(s, _)| s == status) {
                    return Some(labels.clone());
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };

    // Normal traffic long enough to fill the 30 s window and build a baseline: no alert.
    assert!(
        wait_for("firing", Duration::from_secs(75)).await.is_none(),
        "no spike at a steady 20 % drop-off"
    );
    // Break step 2.
    dropoff_tenths.store(9, Ordering::Relaxed);
    let labels = wait_for("firing", Duration::from_secs(150))
        .await
        .expect("FunnelStepDropoffSpike delivered to the webhook while the step is broken");
    assert_eq!(labels["funnel"], "e2e_checkout");
    assert_eq!(labels["step"], "2");
    assert_eq!(labels["severity"], "warning");
    let firing: Value = reqwest::get(format!("http://127.0.0.1:{prom_port}/api/v1/alerts"))
        .await
        .expect("prometheus alerts")
        .json()
        .await
        .expect("json");
    assert!(
        firing.to_string().contains("FunnelStepDropoffSpike"),
        "{firing}"
    );
    // Heal it.
    dropoff_tenths.store(2, Ordering::Relaxed);
    let resolved = wait_for("resolved", Duration::from_secs(180))
        .await
        .expect("the resolution is delivered once the step heals");
    assert_eq!(resolved["step"], "2");

    traffic_stop.cancel();
    let _ = traffic.await;
    stop.cancel();
    let _ = processor.await;
    collector.stop().await;
    support::drop_database(&config.clickhouse).await;
    let _ = std::fs::remove_dir_all(&dir);
}
