//! Memory phase: processor RSS against the number of active customers.
//!
//! For each customer count C a fresh processor (own topics, database, group) reads C
//! events, one per customer: a signed-in `Product Viewed` (anonymous id and user id), so
//! every customer holds an identity link, an open session and an open `web_checkout`
//! attempt. Event times lie 10 to 40 minutes back: all are released by the watermark,
//! none has expired, and no attempt's one-hour window has closed. Once every event has
//! its row in ClickHouse and one more snapshot interval has passed (the allocator gives
//! the backlog's buffers back), `VmRSS` is sampled every 100 ms over two snapshot
//! intervals: the lowest sample is the resting RSS, the highest includes the periodic
//! snapshots. A single reading would land on either, at random.
//!
//! bytes per customer = (RSS(C) − resting RSS(idle)) / C, where the idle processor ran
//! the same way with `idle_customers` (default 1) customers, so fixed costs (code,
//! librdkafka buffers, runtime) cancel out.

use std::time::{Duration, Instant};

use crate::config::Phase;
use crate::ctx::{wait_journey_rows, Ctx};
use crate::error::BenchError;
use crate::payload::{active_customer, record, touchpoint};
use crate::procs::ChildProc;
use crate::report::{Figure, Target};

const MIN: i64 = 60_000;

/// RSS at rest: first `settle` passes unsampled (the allocator gives back what the
/// processing of the backlog used: jemalloc's decay; in a build without jemalloc, the
/// periodic `malloc_trim`), then
/// the RSS is sampled every 100 ms for `window`. The lowest sample is the resting RSS
/// (what the state holds); the highest includes the periodic snapshots.
async fn rss_window(
    child: &mut ChildProc,
    settle: Duration,
    window: Duration,
) -> Result<(u64, u64), BenchError> {
    tokio::time::sleep(settle).await;
    let started = Instant::now();
    let (mut lo, mut hi) = (u64::MAX, 0);
    while started.elapsed() < window {
        child.check_alive()?;
        let v = child.rss_bytes()?;
        lo = lo.min(v);
        hi = hi.max(v);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((lo, hi))
}

/// What one processor run measured.
struct Reading {
    /// Lowest RSS in the window.
    rest: u64,
    /// Highest RSS in the window (periodic snapshots included).
    high: u64,
    /// `VmHWM`: the peak since start, processing included.
    peak: u64,
    /// The allocator's bytes of each of [`HEAP_KINDS`] at the end of the window (the
    /// processor's `touchstream_processor_allocator_bytes`); `None` if it has none.
    heap: Option<[u64; 2]>,
}

/// The allocator figures the phase reports per customer: live data, and the pages it
/// sits in.
const HEAP_KINDS: [&str; 2] = ["allocated", "active"];

/// `touchstream_processor_allocator_bytes{kind="<kind>"}` from a `/metrics` text.
fn allocator_bytes(metrics: &str, kind: &str) -> Option<u64> {
    let prefix = format!("touchstream_processor_allocator_bytes{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The processor's [`HEAP_KINDS`] figures, best effort.
async fn heap_reading(metrics: &str) -> Option<[u64; 2]> {
    let text = reqwest::get(format!("{metrics}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some([
        allocator_bytes(&text, HEAP_KINDS[0])?,
        allocator_bytes(&text, HEAP_KINDS[1])?,
    ])
}

/// One processor over `customers` active customers: (settled RSS, peak RSS).
async fn measure(ctx: &Ctx, tag: &str, customers: usize) -> Result<Reading, BenchError> {
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
        crate::kafka_io::Shape::BULK,
        &bar,
    )
    .await?;
    bar.finish();

    let bar = ctx.bar(customers as u64, &format!("{customers} customers: process"));
    let (mut child, metrics) = ctx.spawn_processor(tag, &cfg)?;
    wait_journey_rows(&cfg, &mut child, customers as u64, &bar).await?;
    bar.finish();
    // One snapshot interval (or trim interval, if longer: the trim runs in a build
    // without jemalloc only) to settle, then two of them sampled.
    let interval = Duration::from_millis(
        cfg.processor
            .snapshot_interval_ms
            .max(cfg.processor.release_memory_ms),
    );
    let settle = interval + Duration::from_secs(1);
    let window = (interval * 2).max(Duration::from_secs(5));
    let (rest, high) = rss_window(&mut child, settle, window).await?;
    let peak = child.peak_rss_bytes()?;
    let heap = heap_reading(&metrics).await;
    child.stop(Duration::from_secs(30)).await;
    Ok(Reading {
        rest,
        high,
        peak,
        heap,
    })
}

/// Run the memory phase: `reps` times the idle processor and every customer count (each
/// repetition subtracts its own idle reading). Per-customer figures are the worst
/// repetition (the limit must hold in each, not on average), the RSS figures the median;
/// every repetition's value is in the figure's spread.
pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>, BenchError> {
    let idle_n = ctx.opts.idle_customers;
    let reps = ctx.opts.reps;
    let counts = &ctx.opts.customers;
    let mut idle = Vec::with_capacity(reps);
    // readings[i][rep]: customer count i.
    let mut readings: Vec<Vec<Reading>> = counts.iter().map(|_| Vec::new()).collect();
    for rep in 1..=reps {
        ctx.say(&format!("rep {rep}/{reps}"));
        let tag = |what: &str| {
            if reps == 1 {
                format!("memory-{what}")
            } else {
                format!("memory-r{rep}-{what}")
            }
        };
        let idle_rep = measure(ctx, &tag("idle"), idle_n).await?;
        for (i, &c) in counts.iter().enumerate() {
            let r = measure(ctx, &tag(&c.to_string()), c).await?;
            ctx.say(&format!(
                "  {c} customers: {:.0} B per customer at rest",
                (r.rest as f64 - idle_rep.rest as f64) / c as f64
            ));
            readings[i].push(r);
        }
        idle.push(idle_rep);
    }
    let missing = |what: &str| BenchError::Workload(format!("no reading for {what}"));
    let median = |name: &str, label: &str, samples: Vec<f64>| {
        Figure::repeated(Phase::Memory, name, label, &samples, "bytes").ok_or_else(|| missing(name))
    };
    let mut figures = vec![median(
        "memory_idle_rss_bytes",
        &format!("processor resting RSS, {idle_n} customer(s)"),
        idle.iter().map(|r| r.rest as f64).collect(),
    )?];
    for (&c, reps) in counts.iter().zip(&readings) {
        // Each repetition against its own idle reading.
        let per = |pick: fn(&Reading) -> u64| -> Vec<f64> {
            reps.iter()
                .zip(&idle)
                .map(|(r, i)| (pick(r) as f64 - i.rest as f64) / c as f64)
                .collect()
        };
        let rss = |pick: fn(&Reading) -> u64| -> Vec<f64> {
            reps.iter().map(|r| pick(r) as f64).collect()
        };
        let worst = |name: String, label: String, samples: Vec<f64>| {
            Figure::worst_of(Phase::Memory, &name, &label, &samples, "bytes")
                .ok_or_else(|| missing(&name))
        };
        figures.extend([
            median(
                &format!("memory_rss_bytes_{c}"),
                &format!("processor resting RSS, {c} active customers"),
                rss(|r| r.rest),
            )?,
            median(
                &format!("memory_high_rss_bytes_{c}"),
                &format!("processor highest RSS at rest, {c} active customers"),
                rss(|r| r.high),
            )?,
            median(
                &format!("memory_peak_rss_bytes_{c}"),
                &format!("processor peak RSS (processing), {c} active customers"),
                rss(|r| r.peak),
            )?,
            worst(
                format!("memory_bytes_per_customer_{c}"),
                format!("bytes per active customer, resting ({c}), worst rep"),
                per(|r| r.rest),
            )?
            .target(Target::AtMost(1024.0)),
            worst(
                format!("memory_high_bytes_per_customer_{c}"),
                format!("bytes per active customer, highest at rest ({c}), worst rep"),
                per(|r| r.high),
            )?,
        ]);
        // Where the resting bytes are: live data (allocated) and the pages it sits in
        // (active), per customer over the idle run's; no target, a diagnosis.
        for (k, kind) in HEAP_KINDS.iter().enumerate() {
            let samples: Option<Vec<f64>> = reps
                .iter()
                .zip(&idle)
                .map(|(r, i)| Some((r.heap?[k] as f64 - i.heap?[k] as f64) / c as f64))
                .collect();
            if let Some(samples) = samples {
                figures.push(worst(
                    format!("memory_heap_{kind}_per_customer_{c}"),
                    format!("heap {kind} bytes per active customer, resting ({c}), worst rep"),
                    samples,
                )?);
            }
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_bytes_are_read_by_kind() {
        let text = "# HELP x\ntouchstream_processor_allocator_bytes{kind=\"active\"} 2048\n\
                    touchstream_processor_allocator_bytes{kind=\"allocated\"} 1500\n";
        assert_eq!(allocator_bytes(text, "allocated"), Some(1500));
        assert_eq!(allocator_bytes(text, "active"), Some(2048));
        assert_eq!(allocator_bytes(text, "resident"), None);
    }
}
