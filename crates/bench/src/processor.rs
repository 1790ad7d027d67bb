//! Processor phase: events per second from `touchpoints.raw` to enriched rows in
//! ClickHouse, with identity stitching, sessions and funnels on (the default
//! `deploy/funnels.toml` and catalog).
//!
//! The raw topic already holds the workload (written by the produce baseline, or here
//! when the baseline did not run). A `touchstream processor` child with a fresh consumer
//! group then reads it from the start; the clock stops when every event has a
//! `touchpoint_journey` row (the journey stage's output, joined into `touchpoints`).
//!
//! The rate is taken from the first visible rows to the last, so the one-off start-up
//! (ClickHouse version check, group join, state load) is reported on its own rather than
//! diluting the throughput of small runs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use serde_json::json;
use touchstream_core::Config;

use crate::config::Phase;
use crate::ctx::{wait_journey_rows, Ctx};
use crate::error::BenchError;
use crate::report::{Figure, Target};
use crate::Workload;

/// Run the processor phase.
pub async fn run(ctx: &Ctx, w: &Workload) -> Result<Vec<Figure>, BenchError> {
    let mut cfg = ctx.phase_config("processor");
    cfg.processor.idle_watermark_secs = ctx.opts.idle_watermark_secs;
    let prefilled = ctx.prefilled.lock().ok().and_then(|p| p.clone());
    if let Some(topic) = &prefilled {
        cfg.kafka.raw_topic = topic.clone();
    }
    ctx.prepare(&cfg, true).await?;
    let n = w.records.len() as u64;
    if prefilled.is_none() {
        let bar = ctx.bar(n, "filling the raw topic");
        crate::kafka_io::produce(
            &cfg.kafka,
            &cfg.kafka.raw_topic,
            w.records
                .iter()
                .map(|(k, v)| Ok((k.as_str(), v.as_slice()))),
            crate::kafka_io::Shape::BULK,
            &bar,
        )
        .await?;
        bar.finish();
    }

    let bar = ctx.bar(n, "events processed");
    let services_at_start = crate::procs::service_cpu_secs();
    let started = Instant::now();
    let (mut child, metrics) = ctx.spawn_processor("processor", &cfg)?;
    let seen = wait_journey_rows(&cfg, &mut child, n, &bar).await?;
    bar.finish();
    let peak = child.peak_rss_bytes()?;
    where_time_went(ctx, &cfg, &metrics).await;
    if let Some((at, _)) = seen.first {
        busy_threads(
            ctx,
            &seen.threads,
            seen.done.duration_since(at).as_secs_f64(),
        );
    }
    child.stop(Duration::from_secs(30)).await;

    let total_secs = seen.done.duration_since(started).as_secs_f64();
    // Steady state: from the first rows to the last. A run so small that it landed in
    // one flush has no such window; its rate then includes start-up.
    // The local services' CPU over the same window (over the whole run when there is no
    // window: then it includes their start-up work for the processor too).
    let (rate, cpu, startup, events, services_from) = match seen.first {
        Some((at, rows)) if seen.done > at && rows < n => (
            (n - rows) as f64 / seen.done.duration_since(at).as_secs_f64(),
            (seen.done_cpu - seen.first_cpu) / (n - rows) as f64,
            at.duration_since(started).as_secs_f64(),
            (n - rows) as f64,
            &seen.services.0,
        ),
        _ => (
            n as f64 / total_secs,
            seen.done_cpu / n as f64,
            0.0,
            n as f64,
            &services_at_start,
        ),
    };
    let mut services = BTreeMap::new();
    crate::procs::add_service_cpu(&mut services, services_from, &seen.services.1);
    let mut figures = vec![
        Figure::info(
            Phase::Processor,
            "processor_events_per_sec",
            "processor raw topic → rows visible (identity, sessions, funnels)",
            rate,
            "ev/s",
        )
        .against(&["raw_consume_msgs_per_sec", "raw_insert_events_per_sec"])
        .target(Target::RatioAtLeast(0.5))
        .target(Target::AtLeast(50_000.0)),
        Figure::info(
            Phase::Processor,
            "processor_cpu_secs_per_100k_events",
            "processor CPU per 100k events",
            cpu * 100_000.0,
            "cpu-s",
        ),
        Figure::info(
            Phase::Processor,
            "processor_startup_secs",
            "processor start to first rows visible",
            startup,
            "s",
        ),
        Figure::info(
            Phase::Processor,
            "processor_total_secs",
            "processor start to all rows visible",
            total_secs,
            "s",
        ),
        Figure::info(
            Phase::Processor,
            "processor_peak_rss_bytes",
            "processor peak RSS",
            peak as f64,
            "bytes",
        ),
    ];
    figures.extend(Figure::service_cpu(
        Phase::Processor,
        "processor",
        "processor phase",
        &services,
        events,
    ));
    if crate::procs::SERVICES
        .iter()
        .all(|(name, _, _)| services.contains_key(name))
    {
        figures.push(Figure::info(
            Phase::Processor,
            "processor_box_cpu_secs_per_100k_events",
            "processor + ClickHouse + broker CPU per 100k events",
            (cpu + services.values().sum::<f64>() / events) * 100_000.0,
            "cpu-s",
        ));
    }
    Ok(figures)
}

/// Per table: ClickHouse insert seconds, inserts and rows, from the processor's
/// `/metrics` (`clickhouse_insert_duration_seconds`, `batch_rows`).
fn parse_insert_breakdown(text: &str) -> BTreeMap<String, [f64; 3]> {
    const FAMILIES: [&str; 3] = [
        "touchstream_processor_clickhouse_insert_duration_seconds_sum{",
        "touchstream_processor_clickhouse_insert_duration_seconds_count{",
        "touchstream_processor_batch_rows_sum{",
    ];
    let mut out: BTreeMap<String, [f64; 3]> = BTreeMap::new();
    for line in text.lines() {
        for (i, family) in FAMILIES.iter().enumerate() {
            let Some(rest) = line.strip_prefix(family) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let table = labels
                .split(',')
                .find_map(|l| l.strip_prefix("table=\""))
                .map(|t| t.trim_end_matches('"'));
            if let (Some(table), Ok(v)) = (table, value.trim().parse::<f64>()) {
                out.entry(table.to_string()).or_default()[i] = v;
            }
        }
    }
    out
}

#[derive(Row, Deserialize)]
struct TableSize {
    table: String,
    rows: u64,
    bytes: u64,
}

/// Record where the processor's ClickHouse time and bytes went (diagnostics and a note):
/// the throughput figure says how fast, this says what to look at first. Best effort.
async fn where_time_went(ctx: &Ctx, cfg: &Config, metrics: &str) {
    let breakdown = match reqwest::get(format!("{metrics}/metrics")).await {
        Ok(r) => parse_insert_breakdown(&r.text().await.unwrap_or_default()),
        Err(_) => BTreeMap::new(),
    };
    let sizes: Vec<TableSize> = touchstream_clickhouse::server_client(&cfg.clickhouse)
        .query(
            "SELECT table, sum(rows) AS rows, sum(data_uncompressed_bytes) AS bytes \
             FROM system.parts WHERE database = ? AND active GROUP BY table ORDER BY bytes DESC",
        )
        .bind(&cfg.clickhouse.database)
        .fetch_all()
        .await
        .unwrap_or_default();
    let mut tables = serde_json::Map::new();
    let mut line = Vec::new();
    for s in &sizes {
        let [secs, inserts, rows] = breakdown.get(&s.table).copied().unwrap_or_default();
        tables.insert(
            s.table.clone(),
            json!({"insert_secs": secs, "inserts": inserts, "rows_inserted": rows,
                   "rows_stored": s.rows, "uncompressed_bytes": s.bytes}),
        );
        if inserts > 0.0 {
            line.push(format!(
                "{} {:.1} s in {} inserts, {} MB",
                s.table,
                secs,
                inserts,
                s.bytes / 1_000_000
            ));
        }
    }
    ctx.diagnose(
        "processor_clickhouse_by_table",
        serde_json::Value::Object(tables),
    );
    if !line.is_empty() {
        ctx.note(format!(
            "processor phase, ClickHouse inserts by table: {}",
            line.join("; ")
        ));
    }
}

/// CPU cores used per thread name over the steady window (diagnostics and a note): a
/// name near 1.0 core per thread is the one that limits throughput.
fn busy_threads(
    ctx: &Ctx,
    (first, done): &(BTreeMap<String, f64>, BTreeMap<String, f64>),
    secs: f64,
) {
    if secs <= 0.0 {
        return;
    }
    let mut cores: Vec<(String, f64)> = done
        .iter()
        .map(|(name, cpu)| {
            (
                name.clone(),
                (cpu - first.get(name).copied().unwrap_or(0.0)) / secs,
            )
        })
        .filter(|(_, c)| *c >= 0.01)
        .collect();
    cores.sort_by(|a, b| b.1.total_cmp(&a.1));
    ctx.diagnose(
        "processor_thread_cores",
        serde_json::Value::Object(cores.iter().map(|(n, c)| (n.clone(), json!(c))).collect()),
    );
    let top: Vec<String> = cores
        .iter()
        .take(5)
        .map(|(n, c)| format!("{n} {c:.2}"))
        .collect();
    if !top.is_empty() {
        ctx.note(format!(
            "processor phase, CPU cores by thread name: {}",
            top.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_breakdown_from_prometheus_text() {
        let text = "# HELP x\n\
            touchstream_processor_clickhouse_insert_duration_seconds_sum{table=\"events\"} 1.5\n\
            touchstream_processor_clickhouse_insert_duration_seconds_count{table=\"events\"} 3\n\
            touchstream_processor_batch_rows_sum{table=\"events\"} 3000\n\
            touchstream_processor_clickhouse_insert_duration_seconds_bucket{table=\"events\",le=\"0.5\"} 2\n";
        let b = parse_insert_breakdown(text);
        assert_eq!(b.get("events"), Some(&[1.5, 3.0, 3000.0]));
        assert_eq!(b.len(), 1);
    }
}
