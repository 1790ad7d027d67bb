//! `touchstream bench`: how fast the pipeline is on this box, against what the box
//! itself allows.
//!
//! Why a bench of its own: throughput and latency figures mean little in isolation (a
//! laptop and a CI runner differ tenfold), so each run first measures the **baselines**
//! — raw Kafka produce and consume, raw ClickHouse insert of the same data — and reports
//! the pipeline's figures as ratios to them. The runs use the local services
//! (`deploy/local/services.sh up`) and the real binaries:
//!
//! | phase | measures | module |
//! |---|---|---|
//! | baseline | raw produce msg/s, raw consume msg/s, raw insert ev/s | [`baseline`] |
//! | collector | HTTP ev/s accepted, CPU per 100k events | [`collector`] |
//! | processor | ev/s from the raw topic to rows visible | [`processor`] |
//! | cpu | CPU per event of collector and processor vs the bare clients, alternating, `reps` times | [`cpu`] |
//! | latency | receive → visible p50/p99 at a fixed rate | [`latency`] |
//! | memory | processor bytes per active customer, worst of `reps` | [`memory`] |
//! | analyst | README queries at 10M events, cold and warm; funnel vs `windowFunnel` | [`analyst`] |
//!
//! The collector and processor under test run as child processes of the same binary
//! ([`procs`]), so their CPU time and RSS are their own. Each phase uses fresh topics, a
//! fresh database and a fresh consumer group (named after the run id), so a bench can run
//! beside the test suite on the same services; everything is dropped at the end. Data
//! comes from the demo's journey generator ([`payload`]). The result is a [`Report`]:
//! printed as a table and written as JSON so runs can be compared.

pub mod analyst;
pub mod baseline;
pub mod collector;
pub mod config;
pub mod cpu;
pub mod ctx;
pub mod error;
pub mod kafka_io;
pub mod latency;
pub mod memory;
pub mod payload;
pub mod processor;
pub mod procs;
pub mod report;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use touchstream_core::Config;

pub use config::{BenchOptions, Phase, Size};
pub use error::BenchError;
pub use report::{Figure, Report, Target};

use crate::ctx::Ctx;

/// Topics on the broker at start above which the report warns that it is not fresh (a
/// fresh local broker has none; one bench run leaves none behind).
const STALE_BROKER_TOPICS: usize = 40;

/// The data of the baseline, collector and processor phases, prepared before any clock
/// runs.
pub struct Workload {
    /// `/v1/batch` bodies and their message counts.
    pub bodies: Vec<(Bytes, usize)>,
    /// The same messages as the collector writes them to Kafka: (key, Avro value).
    pub records: Vec<(String, Vec<u8>)>,
}

impl Workload {
    /// Generate `opts.events` messages and derive bodies and records.
    pub fn prepare(
        opts: &BenchOptions,
        now_ms: i64,
    ) -> Result<(Self, serde_json::Map<String, serde_json::Value>), BenchError> {
        let messages = payload::journey_messages(opts.events, opts.seed, now_ms);
        let json_bytes: usize = messages.iter().map(|m| m.to_string().len()).sum();
        let bodies = payload::batch_bodies(&messages, opts.batch_messages, now_ms);
        let records = messages
            .iter()
            .map(|m| payload::touchpoint(m, now_ms).and_then(|tp| payload::record(&tp)))
            .collect::<Result<Vec<_>, _>>()?;
        let n = messages.len().max(1) as f64;
        let avro_bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
        let body_bytes: usize = bodies.iter().map(|(b, _)| b.len()).sum();
        let mut facts = serde_json::Map::new();
        facts.insert("events".into(), messages.len().into());
        facts.insert(
            "avg_message_json_bytes".into(),
            (json_bytes as f64 / n).round().into(),
        );
        facts.insert(
            "avg_avro_value_bytes".into(),
            (avro_bytes as f64 / n).round().into(),
        );
        facts.insert(
            "avg_request_body_bytes".into(),
            (body_bytes as f64 / bodies.len().max(1) as f64)
                .round()
                .into(),
        );
        facts.insert("requests".into(), bodies.len().into());
        Ok((Self { bodies, records }, facts))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `YYYYMMDDhhmmss_xxxx`: sortable, unique enough, valid in topic and database names.
fn run_id() -> String {
    let t = time::OffsetDateTime::now_utc();
    let rnd = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}_{}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        rnd.get(..4).unwrap_or("0000")
    )
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// Run the selected phases against the services `config` names. A failed phase is
/// recorded in the report and the others still run; `shutdown` stops the run early
/// (children are killed, the run's databases and topics dropped). Fails only when the run
/// cannot start (bad options, ClickHouse unreachable).
pub async fn run(
    config: Config,
    opts: BenchOptions,
    shutdown: CancellationToken,
) -> Result<Report, BenchError> {
    opts.validate().map_err(BenchError::Options)?;
    let clock = Instant::now();
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let ch_version = touchstream_clickhouse::server_version(
        &touchstream_clickhouse::server_client(&config.clickhouse),
    )
    .await?;
    let run_id = run_id();
    let work_dir = std::env::temp_dir().join(format!("touchstream-bench-{run_id}"));
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| BenchError::io(format!("creating {}", work_dir.display()), e))?;
    let exe = std::env::current_exe().map_err(|e| BenchError::io("locating this binary", e))?;
    let machine = procs::machine(ch_version.to_string(), config.kafka.brokers.clone());
    let ctx = Ctx {
        base: config,
        opts: opts.clone(),
        run_id: run_id.clone(),
        work_dir,
        exe,
        topics: Mutex::new(Vec::new()),
        databases: Mutex::new(Vec::new()),
        prefilled: Mutex::new(None),
        diagnostics: Mutex::new(serde_json::Map::new()),
        notes: Mutex::new(Vec::new()),
    };
    let mut report = Report {
        format: 2,
        run_id,
        started_at,
        duration_secs: 0.0,
        machine,
        options: opts.clone(),
        workload: serde_json::Map::new(),
        diagnostics: serde_json::Map::new(),
        figures: Vec::new(),
        errors: Vec::new(),
        notes: Vec::new(),
    };
    if !report.machine.release_build {
        report
            .notes
            .push("debug build: figures are far below a release build's".into());
    }
    ctx.say(&format!(
        "touchstream bench {} (run {}): Kafka {}, ClickHouse {} at {}",
        opts.size, report.run_id, ctx.base.kafka.brokers, ch_version, ctx.base.clickhouse.url
    ));

    // tansu (memory mode) keeps every topic of earlier runs and tests and slows down as
    // they pile up: say so, since the figures then are not comparable.
    let kafka = ctx.base.kafka.clone();
    if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || kafka_io::topic_count(&kafka)).await {
        ctx.diagnose("broker_topics_at_start", serde_json::json!(n));
        if n > STALE_BROKER_TOPICS {
            let line = format!(
                "the broker already holds {n} topics from earlier runs or tests; tansu slows \
                 down as they accumulate (collector phase 55k instead of 188k ev/s seen): \
                 restart the services (deploy/local/services.sh down && up) for figures to keep"
            );
            ctx.say(&format!("note: {line}"));
            report.notes.push(line);
        }
    }

    let needs_workload = [
        Phase::Baseline,
        Phase::Collector,
        Phase::Processor,
        Phase::Cpu,
    ]
    .iter()
    .any(|p| opts.runs(*p));
    let workload = if needs_workload {
        ctx.say(&format!("generating {} events", opts.events));
        let (w, facts) = Workload::prepare(&opts, now_ms())?;
        report.workload = facts;
        Some(w)
    } else {
        None
    };

    for phase in Phase::ALL.into_iter().filter(|p| opts.runs(*p)) {
        ctx.say(&format!("== {phase}"));
        let work = async {
            match (phase, &workload) {
                (Phase::Baseline, Some(w)) => baseline::run(&ctx, w).await,
                (Phase::Collector, Some(w)) => collector::run(&ctx, w).await,
                (Phase::Processor, Some(w)) => processor::run(&ctx, w).await,
                (Phase::Cpu, Some(w)) => cpu::run(&ctx, w).await,
                (Phase::Latency, _) => latency::run(&ctx).await,
                (Phase::Memory, _) => memory::run(&ctx).await,
                (Phase::Analyst, _) => analyst::run(&ctx).await,
                (_, None) => Err(BenchError::Task("workload missing".into())),
            }
        };
        let result = tokio::select! {
            r = work => r,
            _ = shutdown.cancelled() => Err(BenchError::Cancelled),
        };
        match result {
            Ok(figures) => report.figures.extend(figures),
            Err(e) => {
                let cancelled = matches!(e, BenchError::Cancelled);
                ctx.say(&format!("{phase} failed: {}", chain(&e)));
                report.errors.push(report::PhaseError {
                    phase,
                    error: chain(&e),
                });
                if cancelled {
                    break;
                }
            }
        }
    }

    if let Ok(mut d) = ctx.diagnostics.lock() {
        report.diagnostics.append(&mut d);
    }
    if let Ok(mut n) = ctx.notes.lock() {
        report.notes.append(&mut n);
    }
    report.derive_core_budgets();
    cleanup(&ctx, &mut report).await;
    report.duration_secs = clock.elapsed().as_secs_f64();
    report.finish();
    Ok(report)
}

/// Drop what the run created, unless asked to keep it; a failed run keeps its work
/// folder (child logs) and says where.
async fn cleanup(ctx: &Ctx, report: &mut Report) {
    if ctx.opts.keep {
        report.notes.push(format!(
            "kept: databases touchstream_bench_{}_*, topics bench.{}.*, work folder {}",
            ctx.run_id,
            ctx.run_id,
            ctx.work_dir.display()
        ));
        return;
    }
    let server = touchstream_clickhouse::server_client(&ctx.base.clickhouse);
    let dbs = ctx.databases.lock().map(|d| d.clone()).unwrap_or_default();
    for db in dbs {
        if let Err(e) = server
            .query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .execute()
            .await
        {
            report
                .notes
                .push(format!("could not drop database {db}: {e}"));
        }
    }
    let topics = ctx.topics.lock().map(|t| t.clone()).unwrap_or_default();
    if let Err(e) = kafka_io::delete_topics(&ctx.base.kafka, &topics).await {
        report.notes.push(format!(
            "could not delete the run's topics bench.{}.*: {e}",
            ctx.run_id
        ));
    }
    if report.errors.is_empty() {
        let _ = std::fs::remove_dir_all(&ctx.work_dir);
    } else {
        report.notes.push(format!(
            "child configs and logs kept in {}",
            ctx.work_dir.display()
        ));
    }
}

/// Write the report as pretty JSON, creating parent folders.
pub fn write_json(report: &Report, path: &Path) -> Result<(), BenchError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
    }
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| BenchError::io("serializing the report", std::io::Error::other(e)))?;
    std::fs::write(path, text).map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
}

/// Where the JSON goes by default: `target/bench/bench-<run id>.json`.
pub fn default_json_path(report: &Report) -> PathBuf {
    PathBuf::from("target/bench").join(format!("bench-{}.json", report.run_id))
}
