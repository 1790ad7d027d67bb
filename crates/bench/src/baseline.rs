//! Baselines: the limits of this box, measured with the same data and no Touchstream
//! logic in between.
//!
//! 1. raw produce: the workload's Avro records (identity key, single-object value) with
//!    the collector's producer settings to a fresh topic;
//! 2. raw consume: that topic read back by a bare consumer;
//! 3. raw insert: the `events` and `touchpoint_journey` rows of those events (what the
//!    `touchpoints` view joins) written with the `clickhouse` crate's RowBinary insert in
//!    100,000-row batches, the two tables concurrently as the processor's two stages do.
//!
//! The topic of step 1 is then the processor phase's input, already filled.

use std::time::Instant;

use touchstream_core::avro;
use touchstream_processor::tables::events::Events;
use touchstream_processor::tables::touchpoint_journey::TouchpointJourney;
use touchstream_processor::tables::Table;

use crate::config::Phase;
use crate::ctx::{wait_limit, Ctx};
use crate::error::BenchError;
use crate::procs;
use crate::report::Figure;
use crate::Workload;

/// Rows per insert in the insert baseline.
const INSERT_BATCH: usize = 100_000;

/// Run the three baselines.
pub async fn run(ctx: &Ctx, w: &Workload) -> Result<Vec<Figure>, BenchError> {
    let cfg = ctx.phase_config("baseline");
    ctx.prepare(&cfg, true).await?;
    let n = w.records.len() as u64;
    let topic = cfg.kafka.raw_topic.clone();

    let bar = ctx.bar(n, "raw produce");
    let cpu_before = procs::service_cpu_secs();
    let produced = crate::kafka_io::produce(
        &cfg.kafka,
        &topic,
        w.records
            .iter()
            .map(|(k, v)| Ok((k.as_str(), v.as_slice()))),
        crate::kafka_io::Shape::BULK,
        &bar,
    )
    .await?;
    let (produced, produce_secs) = (produced.records, produced.secs);
    let mut produce_services = std::collections::BTreeMap::new();
    procs::add_service_cpu(
        &mut produce_services,
        &cpu_before,
        &procs::service_cpu_secs(),
    );
    produce_services.retain(|name, _| *name == "broker");
    bar.finish();
    if let Ok(mut p) = ctx.prefilled.lock() {
        *p = Some(topic.clone());
    }

    let bar = ctx.bar(n, "raw consume");
    let (kafka, t, b) = (cfg.kafka.clone(), topic.clone(), bar.clone());
    let limit = wait_limit(n as usize);
    let (consume_secs, _) =
        tokio::task::spawn_blocking(move || crate::kafka_io::consume(&kafka, &t, n, &b, limit))
            .await
            .map_err(|e| BenchError::Task(e.to_string()))??;
    bar.finish();

    let bar = ctx.bar(n, "raw insert");
    let ch = touchstream_clickhouse::client(&cfg.clickhouse);
    let mut insert_secs = 0.0;
    let mut services = std::collections::BTreeMap::new();
    for (chunk_no, chunk) in w.records.chunks(INSERT_BATCH).enumerate() {
        // Rows are built before the clock starts: only the insert is measured.
        let mut events = Vec::with_capacity(chunk.len());
        let mut journey = Vec::with_capacity(chunk.len());
        for (i, (_, value)) in chunk.iter().enumerate() {
            let tp = avro::decode(value).map_err(|e| BenchError::Workload(e.to_string()))?;
            let offset = (chunk_no * INSERT_BATCH + i) as i64;
            let (e, j) = crate::payload::rows(&tp, 0, offset);
            events.push(e);
            journey.push(j);
        }
        let cpu_before = procs::service_cpu_secs();
        let started = Instant::now();
        tokio::try_join!(
            insert::<Events>(&ch, &events),
            insert::<TouchpointJourney>(&ch, &journey)
        )?;
        insert_secs += started.elapsed().as_secs_f64();
        procs::add_service_cpu(&mut services, &cpu_before, &procs::service_cpu_secs());
        bar.inc(chunk.len() as u64);
    }
    bar.finish();

    let nf = n as f64;
    let mut figures = vec![
        Figure::info(
            Phase::Baseline,
            "raw_produce_msgs_per_sec",
            "raw Kafka produce (collector's producer settings)",
            produced as f64 / produce_secs,
            "msg/s",
        ),
        Figure::info(
            Phase::Baseline,
            "raw_consume_msgs_per_sec",
            "raw Kafka consume",
            nf / consume_secs,
            "msg/s",
        ),
        Figure::info(
            Phase::Baseline,
            "raw_insert_events_per_sec",
            "raw ClickHouse insert (events + touchpoint_journey rows)",
            nf / insert_secs,
            "ev/s",
        ),
    ];
    figures.extend(Figure::service_cpu(
        Phase::Baseline,
        "raw_produce",
        "raw produce",
        &produce_services,
        produced as f64,
    ));
    services.retain(|name, _| *name == "clickhouse");
    figures.extend(Figure::service_cpu(
        Phase::Baseline,
        "raw_insert",
        "raw insert",
        &services,
        nf,
    ));
    Ok(figures)
}

/// One RowBinary insert of `rows` into `T`'s table (the `clickhouse` crate, as the
/// processor's store writes).
pub async fn insert<T: Table>(ch: &clickhouse::Client, rows: &[T::Row]) -> Result<(), BenchError> {
    let what = || format!("inserting into {}", T::NAME);
    let mut ins = ch
        .insert::<T::Row>(T::NAME)
        .await
        .map_err(|e| BenchError::clickhouse(what(), e))?;
    for r in rows {
        ins.write(r)
            .await
            .map_err(|e| BenchError::clickhouse(what(), e))?;
    }
    ins.end()
        .await
        .map_err(|e| BenchError::clickhouse(what(), e))
}
