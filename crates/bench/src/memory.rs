//! Memory phase: processor RSS against the number of active customers.
//!
//! For each customer count C a fresh processor (own topics, database, group) reads C
//! events, one per customer: a signed-in `Product Viewed` (anonymous id and user id), so
//! every customer holds an identity link, an open session and an open `web_checkout`
//! attempt. Event times lie 10 to 40 minutes back: all are released by the watermark,
//! none has expired, and no attempt's one-hour window has closed. Once every event has
//! its row in ClickHouse and the RSS has settled, `VmRSS` is read.
//!
//! bytes per customer = (RSS(C) − RSS(idle)) / C, where the idle processor ran the same
//! way with `idle_customers` (default 1) customers, so fixed costs (code, librdkafka
//! buffers, runtime) cancel out.

use std::time::{Duration, Instant};

use crate::config::Phase;
use crate::ctx::{wait_journey_rows, Ctx};
use crate::error::BenchError;
use crate::payload::{active_customer, record, touchpoint};
use crate::procs::ChildProc;
use crate::report::{Figure, Target};

const MIN: i64 = 60_000;

/// RSS once it stops moving: sampled every 500 ms for at least 2 s, until three samples
/// in a row are within 1 % of each other (at most 30 s).
async fn settled_rss(child: &mut ChildProc) -> Result<u64, BenchError> {
    let started = Instant::now();
    let mut samples: Vec<u64> = Vec::new();
    loop {
        child.check_alive()?;
        samples.push(child.rss_bytes()?);
        let last3 = &samples[samples.len().saturating_sub(3)..];
        let (lo, hi) = last3
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let steady = last3.len() == 3 && (hi - lo) as f64 <= hi as f64 * 0.01;
        if (steady && started.elapsed() >= Duration::from_secs(2))
            || started.elapsed() > Duration::from_secs(30)
        {
            return Ok(*samples.last().unwrap_or(&0));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One processor over `customers` active customers: (settled RSS, peak RSS).
async fn measure(ctx: &Ctx, tag: &str, customers: usize) -> Result<(u64, u64), BenchError> {
    let mut cfg = ctx.phase_config(tag);
    cfg.processor.idle_watermark_secs = ctx.opts.idle_watermark_secs;
    ctx.prepare(&cfg, true).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let first = now - 40 * MIN;
    let span = 30 * MIN;
    let run = ctx.run_id.clone();
    let bar = ctx.bar(customers as u64, &format!("{customers} customers: fill"));
    crate::kafka_io::produce(
        &cfg.kafka,
        &cfg.kafka.raw_topic,
        (0..customers).map(|i| {
            let t = first + span * i as i64 / customers as i64;
            touchpoint(&active_customer(&run, i, t), now).and_then(|tp| record(&tp))
        }),
        &bar,
    )
    .await?;
    bar.finish();

    let bar = ctx.bar(customers as u64, &format!("{customers} customers: process"));
    let (mut child, _) = ctx.spawn_processor(tag, &cfg)?;
    wait_journey_rows(&cfg, &mut child, customers as u64, &bar).await?;
    bar.finish();
    let rss = settled_rss(&mut child).await?;
    let peak = child.peak_rss_bytes()?;
    child.stop(Duration::from_secs(30)).await;
    Ok((rss, peak))
}

/// Run the memory phase.
pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>, BenchError> {
    let idle_n = ctx.opts.idle_customers;
    let (idle, _) = measure(ctx, "memory-idle", idle_n).await?;
    let mut figures = vec![Figure::info(
        Phase::Memory,
        "memory_idle_rss_bytes",
        &format!("processor RSS, {idle_n} customer(s)"),
        idle as f64,
        "bytes",
    )];
    for &c in &ctx.opts.customers {
        let (rss, peak) = measure(ctx, &format!("memory-{c}"), c).await?;
        figures.push(Figure::info(
            Phase::Memory,
            &format!("memory_rss_bytes_{c}"),
            &format!("processor RSS, {c} active customers"),
            rss as f64,
            "bytes",
        ));
        figures.push(Figure::info(
            Phase::Memory,
            &format!("memory_peak_rss_bytes_{c}"),
            &format!("processor peak RSS, {c} active customers"),
            peak as f64,
            "bytes",
        ));
        figures.push(
            Figure::info(
                Phase::Memory,
                &format!("memory_bytes_per_customer_{c}"),
                &format!("bytes per active customer ({c})"),
                (rss as f64 - idle as f64) / c as f64,
                "bytes",
            )
            .target(Target::AtMost(1024.0)),
        );
    }
    Ok(figures)
}
