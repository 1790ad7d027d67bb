//! Latency phase: how long an event takes from the collector receiving it to its row
//! being visible in ClickHouse, at a fixed offered rate.
//!
//! A collector and a processor run as children. Batches are sent open-loop on a fixed
//! schedule (a slow answer does not delay the next batch, so queueing shows up as
//! latency instead of as a lower rate). Every `tracer_every`-th event is a tracer with
//! a known `messageId` (its event id is `<source>:<messageId>`, README "Event ids and
//! retries"); ClickHouse is polled every `poll_ms` for the tracers it shows.
//! A tracer's latency is the poll time that first saw it minus its `received_at` (the
//! collector's clock, same host), measured twice:
//! - **raw**: its `events` row, i.e. its row in the `touchpoints` view (identity stage);
//! - **enriched**: its `touchpoint_journey` row with a customer and session (journey
//!   stage), which by design waits for the watermark to pass its event time plus the
//!   allowed lateness (`latency_lateness_secs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clickhouse::Row;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use touchstream_demo::sender::iso;

use crate::collector::{post, start, write_key};
use crate::config::Phase;
use crate::ctx::Ctx;
use crate::error::BenchError;
use crate::report::{Figure, Target};

/// Requests in flight at most; beyond it the sender falls behind its schedule (and the
/// achieved rate shows it).
const MAX_IN_FLIGHT: usize = 256;

#[derive(Row, Deserialize)]
struct RawSeen {
    event_id: String,
    received_at_ms: i64,
}

#[derive(Row, Deserialize)]
struct Id {
    event_id: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What the sender reports once every batch is answered.
struct Sent {
    /// Events answered 200.
    accepted: u64,
    /// Tracer event numbers of accepted batches.
    tracers: Vec<usize>,
    /// From the first scheduled send to the last answer.
    took: Duration,
    /// CPU seconds of collector and processor over the sending.
    cpu: (f64, f64),
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The body of batch `b`: events `b*size..` from the templates, stamped now, with
/// `messageId` `id(k)` for event `k`.
fn body(templates: &[Value], b: usize, size: usize, id: impl Fn(usize) -> String) -> Bytes {
    let now = iso(now_ms());
    let batch: Vec<Value> = (b * size..(b + 1) * size)
        .map(|k| {
            let mut m = templates[k % templates.len()].clone();
            m["messageId"] = json!(id(k));
            m["timestamp"] = json!(now);
            m
        })
        .collect();
    Bytes::from(json!({"batch": batch, "sentAt": now}).to_string())
}

/// Event `k`'s id: tracers are `t-k`, the rest `e-k`.
fn tracer_id(k: usize, every: usize) -> String {
    if k % every == 0 {
        format!("t-{k}")
    } else {
        format!("e-{k}")
    }
}

/// The `messageId` part of an event id (`<source>:<messageId>`, README "Event ids and
/// retries"): tracers are looked up by the id the bench sent.
fn message_id(event_id: String) -> String {
    match event_id.split_once(':') {
        Some((_, id)) => id.to_string(),
        None => event_id,
    }
}

async fn visible(ch: &clickhouse::Client, sql: &str) -> Result<u64, BenchError> {
    #[derive(Row, Deserialize)]
    struct N {
        n: u64,
    }
    ch.query(sql)
        .fetch_one::<N>()
        .await
        .map(|r| r.n)
        .map_err(|e| BenchError::clickhouse(sql.to_string(), e))
}

/// Run the latency phase.
pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>, BenchError> {
    let o = &ctx.opts;
    let mut cfg = ctx.phase_config("latency");
    cfg.processor.allowed_lateness_secs = o.latency_lateness_secs;
    cfg.processor.idle_watermark_secs = o.idle_watermark_secs;
    ctx.prepare(&cfg, true).await?;
    let key = write_key(&cfg)?;
    let (mut processor, _) = ctx.spawn_processor("latency-processor", &cfg)?;
    let (mut collector, base) = start(ctx, "latency-collector", &cfg).await?;
    let url = format!("{base}/v1/batch");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let ch = touchstream_clickhouse::client(&cfg.clickhouse);

    let total = (o.latency_rate * o.latency_secs).round().max(1.0) as usize;
    let size = o.batch_messages;
    let batches = total.div_ceil(size);
    let templates = Arc::new(crate::payload::journey_messages(
        total.clamp(1000, 50_000),
        o.seed,
        now_ms(),
    ));

    // Warm-up: one batch through the whole pipeline, so the consumer groups have joined
    // and every partition is assigned before the clock runs.
    let bar = ctx.bar(2 * size as u64, "warm-up through the pipeline");
    post(
        &client,
        &url,
        &key,
        &body(&templates, 0, size, |k| format!("w-{k}")),
    )
    .await?;
    let limit = Duration::from_secs(120);
    let started = Instant::now();
    loop {
        processor.check_alive()?;
        collector.check_alive()?;
        let raw = visible(
            &ch,
            "SELECT count() AS n FROM events WHERE event_id LIKE '%:w-%'",
        )
        .await?;
        let enriched = visible(
            &ch,
            "SELECT uniqExact(event_id) AS n FROM touchpoint_journey WHERE event_id LIKE '%:w-%'",
        )
        .await?;
        bar.set_position(raw.min(size as u64) + enriched.min(size as u64));
        if raw >= size as u64 && enriched >= size as u64 {
            break;
        }
        if started.elapsed() > limit {
            return Err(BenchError::Timeout {
                what: format!(
                    "the warm-up batch in ClickHouse ({raw}/{size} events rows, {enriched}/{size} touchpoint_journey rows)"
                ),
                after: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();

    // Open-loop sender.
    let bar = ctx.bar((batches * size) as u64, "events sent at the fixed rate");
    let cpu0 = (collector.cpu_secs()?, processor.cpu_secs()?);
    let send_started = Instant::now();
    let sender = {
        let (templates, client, url, key, bar) = (
            templates.clone(),
            client.clone(),
            url.clone(),
            key.clone(),
            bar.clone(),
        );
        let every = o.tracer_every;
        let interval = Duration::from_secs_f64(size as f64 / o.latency_rate);
        tokio::spawn(async move {
            let sem = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut handles = Vec::with_capacity(batches);
            for b in 0..batches {
                tokio::time::sleep_until((send_started + interval * b as u32).into()).await;
                let permit = sem
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| BenchError::Task(e.to_string()))?;
                let body = body(&templates, b, size, |k| tracer_id(k, every));
                let (client, url, key, bar) =
                    (client.clone(), url.clone(), key.clone(), bar.clone());
                handles.push(tokio::spawn(async move {
                    let r = post(&client, &url, &key, &body).await;
                    drop(permit);
                    bar.inc(size as u64);
                    r.map(|(accepted, _)| (b, accepted))
                }));
            }
            let mut tracers = Vec::new();
            let mut accepted = 0;
            for h in handles {
                let (b, n) = h.await.map_err(|e| BenchError::Task(e.to_string()))??;
                accepted += n;
                tracers.extend((b * size..(b + 1) * size).filter(|k| k % every == 0));
            }
            Ok::<_, BenchError>((accepted, tracers, send_started.elapsed()))
        })
    };

    // Poll for tracers while sending and until all are visible.
    let mut raw_seen: HashMap<String, (i64, i64)> = HashMap::new();
    let mut enriched_seen: HashMap<String, i64> = HashMap::new();
    let mut sent: Option<Sent> = None;
    let mut sender = Some(sender);
    let mut deadline: Option<Instant> = None;
    let poll = Duration::from_millis(o.poll_ms.max(1));
    let tbar = ctx.bar(0, "tracers visible (raw, enriched)");
    loop {
        let tick = Instant::now();
        processor.check_alive()?;
        collector.check_alive()?;
        let raw: Vec<RawSeen> = ch
            .query("SELECT event_id, received_at_ms FROM events WHERE event_id LIKE '%:t-%'")
            .fetch_all()
            .await
            .map_err(|e| BenchError::clickhouse("polling tracers in events", e))?;
        let at = now_ms();
        for r in raw {
            raw_seen
                .entry(message_id(r.event_id))
                .or_insert((r.received_at_ms, at));
        }
        let enriched: Vec<Id> = ch
            .query("SELECT event_id FROM touchpoint_journey WHERE event_id LIKE '%:t-%' AND customer_id != ''")
            .fetch_all()
            .await
            .map_err(|e| BenchError::clickhouse("polling tracers in touchpoint_journey", e))?;
        let at = now_ms();
        for r in enriched {
            enriched_seen.entry(message_id(r.event_id)).or_insert(at);
        }
        if sender.as_ref().is_some_and(|s| s.is_finished()) {
            if let Some(s) = sender.take() {
                let (accepted, tracers, took) =
                    s.await.map_err(|e| BenchError::Task(e.to_string()))??;
                let cpu = (
                    collector.cpu_secs()? - cpu0.0,
                    processor.cpu_secs()? - cpu0.1,
                );
                bar.finish();
                tbar.set_length(2 * tracers.len() as u64);
                sent = Some(Sent {
                    accepted,
                    tracers,
                    took,
                    cpu,
                });
                deadline = Some(
                    Instant::now()
                        + Duration::from_secs(60 + o.latency_lateness_secs + o.idle_watermark_secs),
                );
            }
        }
        if let Some(Sent { tracers, .. }) = &sent {
            let (r, e) = tracers.iter().fold((0, 0), |(r, e), k| {
                let id = format!("t-{k}");
                (
                    r + u64::from(raw_seen.contains_key(&id)),
                    e + u64::from(enriched_seen.contains_key(&id)),
                )
            });
            tbar.set_position(r + e);
            if r + e == 2 * tracers.len() as u64 {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(BenchError::Timeout {
                    what: format!(
                        "latency tracers in ClickHouse: {r} of {n} in events, {e} of {n} enriched in touchpoint_journey",
                        n = tracers.len()
                    ),
                    after: Duration::from_secs(60),
                });
            }
        }
        if let Some(rest) = poll.checked_sub(tick.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    tbar.finish();
    let Some(Sent {
        accepted,
        tracers,
        took,
        cpu,
    }) = sent
    else {
        return Err(BenchError::Task("sender result missing".into()));
    };
    processor.stop(Duration::from_secs(30)).await;
    collector.stop(Duration::from_secs(10)).await;

    let mut raw_ms = Vec::with_capacity(tracers.len());
    let mut enriched_ms = Vec::with_capacity(tracers.len());
    for k in &tracers {
        let id = format!("t-{k}");
        if let Some((received, seen)) = raw_seen.get(&id) {
            raw_ms.push((seen - received) as f64);
            if let Some(e) = enriched_seen.get(&id) {
                enriched_ms.push((e - received) as f64);
            }
        }
    }
    raw_ms.sort_by(f64::total_cmp);
    enriched_ms.sort_by(f64::total_cmp);
    let secs = took.as_secs_f64();
    let lateness = o.latency_lateness_secs;
    Ok(vec![
        Figure::info(
            Phase::Latency,
            "latency_events_per_sec",
            &format!("offered {} ev/s, accepted", o.latency_rate),
            accepted as f64 / secs,
            "ev/s",
        ),
        Figure::info(
            Phase::Latency,
            "latency_p50_ms",
            "receive → row in touchpoints, p50",
            percentile(&raw_ms, 0.5),
            "ms",
        ),
        Figure::info(
            Phase::Latency,
            "latency_p99_ms",
            "receive → row in touchpoints, p99",
            percentile(&raw_ms, 0.99),
            "ms",
        )
        .target(Target::AtMost(2000.0)),
        Figure::info(
            Phase::Latency,
            "latency_enriched_p50_ms",
            &format!("receive → enriched row (lateness {lateness} s), p50"),
            percentile(&enriched_ms, 0.5),
            "ms",
        ),
        Figure::info(
            Phase::Latency,
            "latency_enriched_p99_ms",
            &format!("receive → enriched row (lateness {lateness} s), p99"),
            percentile(&enriched_ms, 0.99),
            "ms",
        ),
        Figure::info(
            Phase::Latency,
            "latency_collector_cpu_cores",
            "collector CPU at this rate",
            cpu.0 / secs,
            "cores",
        ),
        Figure::info(
            Phase::Latency,
            "latency_processor_cpu_cores",
            "processor CPU at this rate",
            cpu.1 / secs,
            "cores",
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn tracers_are_found_by_the_message_id_they_were_sent_with() {
        assert_eq!(message_id("web:t-100".into()), "t-100");
        assert_eq!(message_id("web:a:b".into()), "a:b");
        assert_eq!(message_id("t-100".into()), "t-100");
    }

    #[test]
    fn bodies_carry_tracers_at_the_right_places() {
        let t = vec![json!({"type": "track", "event": "X", "userId": "u"})];
        let b: Value = serde_json::from_slice(&body(&t, 1, 100, |k| tracer_id(k, 50))).unwrap();
        let ids: Vec<&str> = b["batch"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["messageId"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 100);
        assert_eq!(ids[0], "t-100");
        assert_eq!(ids[1], "e-101");
        assert_eq!(ids[50], "t-150");
    }
}
