//! Collector phase: how many events per second a `touchstream collector` process accepts
//! over HTTP keep-alive, and what they cost it in CPU.
//!
//! `clients` concurrent tasks, each with its own keep-alive connection, post the
//! workload's `/v1/batch` bodies (prepared beforehand, so the load generator only moves
//! bytes) with the web source's write key. Only events of 200-answered requests count; a
//! 503 (backpressure) is retried and counted. One request per client is sent first to
//! open the connections and is not timed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use touchstream_core::Config;

use crate::config::Phase;
use crate::ctx::Ctx;
use crate::error::BenchError;
use crate::procs::{self, ChildProc};
use crate::report::{Figure, Target};
use crate::Workload;

#[derive(Deserialize)]
struct Answer {
    accepted: u64,
}

/// The web source's write key in `config`.
pub fn write_key(config: &Config) -> Result<String, BenchError> {
    config
        .collector
        .sources
        .iter()
        .find(|s| s.default_channel == "web")
        .or_else(|| config.collector.sources.first())
        .map(|s| s.write_key.clone())
        .ok_or_else(|| BenchError::Options("collector.sources is empty: no write key".into()))
}

/// Start a collector child on a free port and wait for `/readyz` (broker reachable).
pub async fn start(
    ctx: &Ctx,
    tag: &str,
    config: &Config,
) -> Result<(ChildProc, String), BenchError> {
    let addr = format!("127.0.0.1:{}", procs::free_port()?);
    let mut child = ctx.spawn(
        tag,
        config,
        &["collector", "--listen", &addr, "--allow-demo-keys"],
    )?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let limit = Duration::from_secs(60);
    loop {
        child.check_alive()?;
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok((child, base));
            }
        }
        if started.elapsed() > limit {
            return Err(BenchError::Timeout {
                what: format!("the collector's /readyz at {base}"),
                after: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Post one body until it is answered 200 (503s are retried after a short pause).
/// Returns the accepted events and the 503s met.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Bytes,
) -> Result<(u64, u64), BenchError> {
    let mut unavailable = 0;
    loop {
        let resp = client
            .post(url)
            .basic_auth(key, Some(""))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        match status {
            200 => {
                let a: Answer =
                    serde_json::from_slice(&bytes).map_err(|e| BenchError::Refused {
                        status,
                        body: format!("unreadable answer: {e}"),
                    })?;
                return Ok((a.accepted, unavailable));
            }
            503 if unavailable < 100 => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                return Err(BenchError::Refused {
                    status,
                    body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                })
            }
        }
    }
}

/// What posting the workload to a running collector measured.
pub struct Load {
    /// Events of 200-answered timed requests.
    pub accepted: f64,
    /// Events of the timed requests (the workload minus one warm-up request per client).
    pub total: u64,
    /// 503 answers met (retried).
    pub unavailable: u64,
    /// Wall time of the timed requests, seconds.
    pub secs: f64,
    /// The collector child's CPU seconds (every thread) over them.
    pub cpu: f64,
    /// This process's (the load generator's) CPU seconds over them.
    pub self_cpu: f64,
    /// The local services' CPU seconds over them.
    pub services: std::collections::BTreeMap<&'static str, f64>,
    /// The collector's CPU seconds per thread name over them.
    pub threads: std::collections::BTreeMap<String, f64>,
}

/// Post the workload's bodies to the collector `child` at `base` from `clients`
/// keep-alive clients: one request per client first, untimed (opens the connections),
/// then the rest, timed. Fails when the collector did not accept every timed event.
pub async fn load(
    ctx: &Ctx,
    child: &mut ChildProc,
    base: &str,
    key: &str,
    w: &Workload,
) -> Result<Load, BenchError> {
    let url = format!("{base}/v1/batch");
    let clients = ctx.opts.clients;

    // One request per client opens its connection; not timed.
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(60))
            .build()?;
        post(&c, &url, key, &w.bodies[i].0).await?;
        conns.push(c);
    }
    let bodies = Arc::new(w.bodies[clients..].to_vec());
    let total: u64 = bodies.iter().map(|(_, n)| *n as u64).sum();

    let bar = ctx.bar(total, "events posted");
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let cpu0 = child.cpu_secs()?;
    let threads0 = child.thread_cpu_secs();
    let services0 = procs::service_cpu_secs();
    let self0 = procs::self_cpu_secs()?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client in conns {
        let (bodies, next, accepted, url, key, bar) = (
            bodies.clone(),
            next.clone(),
            accepted.clone(),
            url.clone(),
            key.to_string(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut unavailable = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, n)) = bodies.get(i) else {
                    return Ok::<u64, BenchError>(unavailable);
                };
                let (ok, u) = post(&client, &url, &key, body).await?;
                unavailable += u;
                accepted.fetch_add(ok, Ordering::Relaxed);
                bar.inc(*n as u64);
            }
        }));
    }
    let mut unavailable = 0;
    for t in tasks {
        unavailable += t.await.map_err(|e| BenchError::Task(e.to_string()))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = child.cpu_secs()? - cpu0;
    let self_cpu = procs::self_cpu_secs()? - self0;
    let mut services = std::collections::BTreeMap::new();
    procs::add_service_cpu(&mut services, &services0, &procs::service_cpu_secs());
    let threads = procs::thread_cpu_diff(&threads0, &child.thread_cpu_secs());
    bar.finish();
    child.check_alive()?;
    let acc = accepted.load(Ordering::Relaxed) as f64;
    if acc < total as f64 {
        return Err(BenchError::Workload(format!(
            "the collector accepted {acc} of {total} events (the rest went to the DLQ)"
        )));
    }
    Ok(Load {
        accepted: acc,
        total,
        unavailable,
        secs,
        cpu,
        self_cpu,
        services,
        threads,
    })
}

/// Run the collector phase.
pub async fn run(ctx: &Ctx, w: &Workload) -> Result<Vec<Figure>, BenchError> {
    let cfg = ctx.phase_config("collector");
    ctx.prepare(&cfg, false).await?;
    let key = write_key(&cfg)?;
    let (mut child, base) = start(ctx, "collector", &cfg).await?;
    let clients = ctx.opts.clients;
    let Load {
        accepted: acc,
        unavailable,
        secs,
        cpu,
        self_cpu,
        mut services,
        ..
    } = load(ctx, &mut child, &base, &key, w).await?;
    services.retain(|name, _| *name == "broker");
    let rss = child.rss_bytes()?;
    child.stop(Duration::from_secs(10)).await;

    let per_100k = |cpu: f64| cpu / acc * 100_000.0;
    let mut figures = vec![
        Figure::info(
            Phase::Collector,
            "collector_events_per_sec",
            &format!(
                "collector accepted ({clients} clients, batches of {})",
                ctx.opts.batch_messages
            ),
            acc / secs,
            "ev/s",
        )
        .against(&["raw_produce_msgs_per_sec"])
        .target(Target::RatioAtLeast(0.5))
        .target(Target::AtLeast(50_000.0)),
        Figure::info(
            Phase::Collector,
            "collector_cpu_secs_per_100k_events",
            "collector CPU per 100k events",
            per_100k(cpu),
            "cpu-s",
        ),
        Figure::info(
            Phase::Collector,
            "collector_rss_bytes",
            "collector RSS after the run",
            rss as f64,
            "bytes",
        ),
        Figure::info(
            Phase::Collector,
            "collector_503_answers",
            "503 answers (retried)",
            unavailable as f64,
            "requests",
        ),
        Figure::info(
            Phase::Collector,
            "load_generator_cpu_secs_per_100k_events",
            "load generator CPU per 100k events (same box)",
            per_100k(self_cpu),
            "cpu-s",
        ),
    ];
    figures.extend(Figure::service_cpu(
        Phase::Collector,
        "collector",
        "collector phase",
        &services,
        acc,
    ));
    if let Some(broker) = services.get("broker") {
        figures.push(Figure::info(
            Phase::Collector,
            "collector_box_cpu_secs_per_100k_events",
            "collector + broker + load generator CPU per 100k events",
            per_100k(cpu + broker + self_cpu),
            "cpu-s",
        ));
    }
    Ok(figures)
}
