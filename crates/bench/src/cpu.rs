//! CPU phase: what the collector and the processor cost per event against what the bare
//! clients cost for the same records, both sides measured in the same run, alternating,
//! `reps` times (docs/bench.md "CPU per event, side by side").
//!
//! Why CPU and not throughput: on this box the broker and ClickHouse share the cores
//! with the pipeline, so a throughput ratio mostly measures who got the cores. CPU
//! seconds per event are each process's own work, which the box can judge fairly.
//!
//! Each repetition runs, in this order:
//! 1. **raw producer**: the workload's Avro records (keyed and encoded as the collector
//!    writes them) produced with the collector's own producer settings (idempotent,
//!    acks=all, lz4, linger 0) to a fresh topic, acknowledged per request-sized group with
//!    at most `clients × batch_messages` in flight, as the collector's clients let it
//!    ([`Shape::like_collector`]). CPU: this process over the produce (nothing else runs
//!    in it meanwhile).
//! 2. **collector**: a fresh `touchstream collector` child given the same messages as
//!    `/v1/batch` JSON from `clients` keep-alive clients. CPU: the child's, every thread
//!    (`/proc/<pid>/stat`).
//! 3. **raw consume + insert**: step 1's topic read back by a bare consumer (the
//!    processor's fetch settings, no group), each record's Avro decoded and its three
//!    per-event rows built (`events`, `touchpoint_journey`, `customer_touchpoints`, the
//!    shapes the processor writes), then inserted in batches of the processor's
//!    `batch_max_rows`, the three tables concurrently. CPU: this process over the three
//!    steps, each also reported on its own, freeing what each step is done with (the
//!    records after decoding, the rows after inserting) included, as the processor's CPU
//!    includes its own.
//! 4. **processor**: a fresh `touchstream processor` child (fresh group and database)
//!    reading step 1's topic from the start, identity, sessions and funnels on, until
//!    every event has its `touchpoint_journey` row. CPU: the child's, from its start to
//!    then (start-up included: version check, empty state, group join, mostly waits).
//!
//! After its load each child is also watched idle for 6 s ([`idle_share`]): the share of
//! a core it burns with nothing to do is reported beside the ratios.
//!
//! A repetition's ratio is collector / raw producer and processor / raw consume + insert
//! of that repetition ([`crate::stats::paired_ratios`]); the figures give min / median /
//! max over the repetitions, and the targets (≤ 2× and ≤ 3×) are judged at the median.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use touchstream_core::avro;
use touchstream_processor::tables::customer_touchpoints::CustomerTouchpoints;
use touchstream_processor::tables::events::Events;
use touchstream_processor::tables::touchpoint_journey::TouchpointJourney;

use crate::config::Phase;
use crate::ctx::{wait_journey_rows, wait_limit, Ctx};
use crate::error::BenchError;
use crate::kafka_io::Shape;
use crate::procs;
use crate::report::{Figure, Target};
use crate::stats::paired_ratios;
use crate::Workload;

/// Collector CPU per event at most this many times the raw producer's (the issue's).
pub const COLLECTOR_TARGET: f64 = 2.0;
/// Processor CPU per event at most this many times the raw clients' (the issue's).
pub const PROCESSOR_TARGET: f64 = 3.0;

/// One repetition's CPU seconds per 100k events of each side and step.
#[derive(Debug, Default, Clone)]
struct Rep {
    raw_produce: f64,
    collector: f64,
    raw_consume: f64,
    raw_rows: f64,
    raw_insert: f64,
    processor: f64,
    /// Share of a core each child used while idle, right after its load ([`idle_share`]).
    collector_idle: f64,
    processor_idle: f64,
}

impl Rep {
    fn raw_consume_insert(&self) -> f64 {
        self.raw_consume + self.raw_rows + self.raw_insert
    }
}

/// A child is watched after its load for this many slices of [`IDLE_SLICE`].
const IDLE_SLICES: usize = 6;
const IDLE_SLICE: Duration = Duration::from_secs(1);

/// Busiest slices left out of [`idle_share`].
const IDLE_BUSIEST_LEFT_OUT: usize = 2;

/// The share of one core `child` uses with nothing to do: what a deployment pays between
/// bursts (polling threads, timers), and part of every figure above, since each child's
/// CPU is counted from its start. Watched over [`IDLE_SLICES`] one-second slices, the
/// two busiest left out: the processor saves the state its load changed at its next
/// snapshot (every 5 s by default), which is work, not idling, and falls in one slice or
/// two. The rest add up to 4 s, so one clock tick (10 ms) is 0.0025 of a core.
async fn idle_share(child: &crate::procs::ChildProc) -> Result<f64, BenchError> {
    let mut slices = Vec::with_capacity(IDLE_SLICES);
    for _ in 0..IDLE_SLICES {
        let before = child.cpu_secs()?;
        let started = Instant::now();
        tokio::time::sleep(IDLE_SLICE).await;
        slices.push((child.cpu_secs()? - before, started.elapsed().as_secs_f64()));
    }
    slices.sort_by(|a, b| a.0.total_cmp(&b.0));
    slices.truncate(IDLE_SLICES - IDLE_BUSIEST_LEFT_OUT);
    let (cpu, wall) = slices
        .iter()
        .fold((0.0, 0.0), |(c, w), (dc, dw)| (c + dc, w + dw));
    Ok(cpu / wall)
}

fn per_100k(cpu: f64, events: f64) -> f64 {
    if events > 0.0 {
        cpu / events * 100_000.0
    } else {
        f64::NAN
    }
}

/// Run the CPU phase.
pub async fn run(ctx: &Ctx, w: &Workload) -> Result<Vec<Figure>, BenchError> {
    let reps = ctx.opts.reps;
    // One database for every raw insert (the raw client only appends).
    let raw_db = ctx.phase_config("cpu-raw");
    ctx.prepare(&raw_db, true).await?;
    let mut done = Vec::with_capacity(reps);
    let mut threads = Vec::with_capacity(reps);
    for rep in 1..=reps {
        ctx.say(&format!("rep {rep}/{reps}"));
        let (r, t) = repetition(ctx, w, rep, &raw_db).await?;
        ctx.say(&format!(
            "  cpu-s per 100k: raw produce {:.3}, collector {:.3}; raw consume+insert {:.3}, processor {:.3}",
            r.raw_produce,
            r.collector,
            r.raw_consume_insert(),
            r.processor
        ));
        done.push(r);
        threads.push(t);
    }
    ctx.diagnose("cpu_thread_secs_per_100k_events", json!(threads));

    let col = |f: fn(&Rep) -> f64| done.iter().map(f).collect::<Vec<f64>>();
    let raw_produce = col(|r| r.raw_produce);
    let collector = col(|r| r.collector);
    let raw_ci = col(Rep::raw_consume_insert);
    let processor = col(|r| r.processor);
    let missing = |what: &str| BenchError::Workload(format!("no CPU measured for {what}"));
    let collector_ratios =
        paired_ratios(&collector, &raw_produce).ok_or_else(|| missing("the raw producer"))?;
    let processor_ratios =
        paired_ratios(&processor, &raw_ci).ok_or_else(|| missing("the raw consume + insert"))?;

    let fig = |name: &str, label: &str, samples: &[f64], unit: &str| {
        Figure::repeated(Phase::Cpu, name, label, samples, unit).ok_or_else(|| missing(label))
    };
    Ok(vec![
        Figure::info(
            Phase::Cpu,
            "cpu_reps",
            "repetitions (each side alternately)",
            reps as f64,
            "reps",
        ),
        fig(
            "cpu_raw_produce_secs_per_100k_events",
            "raw producer CPU per 100k events (collector's settings)",
            &raw_produce,
            "cpu-s",
        )?,
        fig(
            "cpu_collector_secs_per_100k_events",
            "collector CPU per 100k events (HTTP → Kafka)",
            &collector,
            "cpu-s",
        )?,
        fig(
            "cpu_collector_ratio",
            "collector CPU / raw producer CPU, per rep",
            &collector_ratios,
            "×",
        )?
        .target(Target::TimesAtMost(COLLECTOR_TARGET)),
        fig(
            "cpu_raw_consume_secs_per_100k_events",
            "raw consume CPU per 100k events",
            &col(|r| r.raw_consume),
            "cpu-s",
        )?,
        fig(
            "cpu_raw_rows_secs_per_100k_events",
            "raw Avro decode + row build CPU per 100k events",
            &col(|r| r.raw_rows),
            "cpu-s",
        )?,
        fig(
            "cpu_raw_insert_secs_per_100k_events",
            "raw insert CPU per 100k events (3 tables)",
            &col(|r| r.raw_insert),
            "cpu-s",
        )?,
        fig(
            "cpu_raw_consume_insert_secs_per_100k_events",
            "raw consume + decode + insert CPU per 100k events",
            &raw_ci,
            "cpu-s",
        )?,
        fig(
            "cpu_processor_secs_per_100k_events",
            "processor CPU per 100k events (raw topic → rows)",
            &processor,
            "cpu-s",
        )?,
        fig(
            "cpu_processor_ratio",
            "processor CPU / raw consume + insert CPU, per rep",
            &processor_ratios,
            "×",
        )?
        .target(Target::TimesAtMost(PROCESSOR_TARGET)),
        fig(
            "cpu_collector_idle_core_share",
            "collector idle after its load, share of a core",
            &col(|r| r.collector_idle),
            "cores",
        )?,
        fig(
            "cpu_processor_idle_core_share",
            "processor idle after its events, share of a core",
            &col(|r| r.processor_idle),
            "cores",
        )?,
    ])
}

/// One repetition: raw producer, collector, raw consume + insert, processor.
async fn repetition(
    ctx: &Ctx,
    w: &Workload,
    rep: usize,
    raw_db: &touchstream_core::Config,
) -> Result<(Rep, serde_json::Value), BenchError> {
    let mut r = Rep::default();
    let n = w.records.len() as u64;

    // 1. Raw producer, into the topic the processor will read.
    let cfg = ctx.phase_config(&format!("cpu-r{rep}"));
    ctx.prepare(&cfg, true).await?;
    let bar = ctx.bar(n, "raw produce");
    let produced = crate::kafka_io::produce(
        &cfg.kafka,
        &cfg.kafka.raw_topic,
        w.records
            .iter()
            .map(|(k, v)| Ok((k.as_str(), v.as_slice()))),
        Shape::like_collector(ctx.opts.clients, ctx.opts.batch_messages),
        &bar,
    )
    .await?;
    bar.finish();
    r.raw_produce = per_100k(produced.cpu_secs, produced.records as f64);

    // 2. Collector, on its own topics.
    let ccfg = ctx.phase_config(&format!("cpu-r{rep}-collector"));
    ctx.prepare(&ccfg, false).await?;
    let key = crate::collector::write_key(&ccfg)?;
    let (mut child, base) =
        crate::collector::start(ctx, &format!("cpu-r{rep}-collector"), &ccfg).await?;
    let load = crate::collector::load(ctx, &mut child, &base, &key, w).await?;
    r.collector_idle = idle_share(&child).await?;
    child.stop(Duration::from_secs(10)).await;
    r.collector = per_100k(load.cpu, load.accepted);
    let collector_threads: BTreeMap<String, f64> = load
        .threads
        .iter()
        .map(|(k, v)| (k.clone(), per_100k(*v, load.accepted)))
        .collect();

    // 3. Raw consume, decode + rows, insert.
    let bar = ctx.bar(n, "raw consume");
    let (kafka, topic, b) = (cfg.kafka.clone(), cfg.kafka.raw_topic.clone(), bar.clone());
    let limit = wait_limit(n as usize);
    let (payloads, consume_cpu) = tokio::task::spawn_blocking(move || {
        let cpu0 = procs::self_cpu_secs()?;
        let mut payloads: Vec<(i32, i64, Vec<u8>)> = Vec::with_capacity(n as usize);
        crate::kafka_io::consume_with(&kafka, &topic, n, &b, limit, |m| {
            use rdkafka::Message as _;
            payloads.push((
                m.partition(),
                m.offset(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        })?;
        Ok::<_, BenchError>((payloads, procs::self_cpu_secs()? - cpu0))
    })
    .await
    .map_err(|e| BenchError::Task(e.to_string()))??;
    bar.finish();
    r.raw_consume = per_100k(consume_cpu, n as f64);

    let cpu0 = procs::self_cpu_secs()?;
    let mut events = Vec::with_capacity(payloads.len());
    let mut journey = Vec::with_capacity(payloads.len());
    let mut by_customer = Vec::with_capacity(payloads.len());
    for (partition, offset, value) in &payloads {
        let tp = avro::decode(value).map_err(|e| BenchError::Workload(e.to_string()))?;
        let (e, j, c) = crate::payload::event_rows(tp, *partition, *offset);
        events.push(e);
        journey.push(j);
        by_customer.push(c);
    }
    // The client is done with its copies of the records once decoded: freeing them is
    // part of its work, counted since 2026-12-04 (late) (docs/bench.md).
    drop(payloads);
    r.raw_rows = per_100k(procs::self_cpu_secs()? - cpu0, n as f64);

    let bar = ctx.bar(n, "raw insert");
    let ch = touchstream_clickhouse::client(&raw_db.clickhouse);
    let batch = cfg.processor.batch_max_rows.max(1);
    let cpu0 = procs::self_cpu_secs()?;
    for ((e, j), c) in events
        .chunks(batch)
        .zip(journey.chunks(batch))
        .zip(by_customer.chunks(batch))
    {
        tokio::try_join!(
            crate::baseline::insert::<Events>(&ch, e),
            crate::baseline::insert::<TouchpointJourney>(&ch, j),
            crate::baseline::insert::<CustomerTouchpoints>(&ch, c),
        )?;
        bar.inc(e.len() as u64);
    }
    // Freeing the inserted rows too: the processor frees each batch's rows after its
    // insert, inside its measured CPU.
    drop((events, journey, by_customer));
    r.raw_insert = per_100k(procs::self_cpu_secs()? - cpu0, n as f64);
    bar.finish();

    // 4. Processor over the raw producer's topic.
    let mut pcfg = cfg.clone();
    pcfg.processor.idle_watermark_secs = ctx.opts.idle_watermark_secs;
    let bar = ctx.bar(n, "events processed");
    let started = Instant::now();
    let (mut child, _) = ctx.spawn_processor(&format!("cpu-r{rep}-processor"), &pcfg)?;
    let seen = wait_journey_rows(&pcfg, &mut child, n, &bar).await?;
    bar.finish();
    r.processor_idle = idle_share(&child).await?;
    child.stop(Duration::from_secs(30)).await;
    r.processor = per_100k(seen.done_cpu, n as f64);
    let processor_threads: BTreeMap<String, f64> = seen
        .threads
        .1
        .iter()
        .map(|(k, v)| (k.clone(), per_100k(*v, n as f64)))
        .collect();
    tracing::debug!(rep, secs = started.elapsed().as_secs_f64(), "processor rep");

    Ok((
        r,
        json!({"collector": collector_threads, "processor": processor_threads}),
    ))
}
