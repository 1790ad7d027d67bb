//! The loop itself: consume, hand each in-order message to the stage, cut batches by
//! size and time, follow revocations, let caught-up partitions go idle, and restart the
//! stage run after a failure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt as _};
use futures::FutureExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

use super::consumer::{subscribe, LagContext, GROUP_STALL};
use super::ctx::{RunCtx, MAX_RESTART_BACKOFF};
use super::flush::{finish, flush, InFlight, Outbox, SnapshotDue};
use super::part::{load_part, Part, Position};
use super::seek::{admit, reseek_stalled, SEEK_SETTLE};
use super::stage::{Input, Stage};
use crate::metrics::Metrics;
use crate::ProcessorError;

/// Run a stage until shutdown, restarting from saved state after failures and panics
/// (module docs of [`super`]): a panic in one stage must not leave the process half
/// alive, with the other stage running and this one gone.
pub async fn run_stage<S: Stage>(stage: S, ctx: RunCtx) -> Result<(), ProcessorError> {
    let mut instance_id = ctx.instance_id.clone();
    loop {
        let run = std::panic::AssertUnwindSafe(run_once(&stage, &ctx, instance_id.as_deref()))
            .catch_unwind()
            .await;
        let (e, cause) = match run {
            Ok(Ok(()) | Err(ProcessorError::ShuttingDown)) => break,
            Ok(Err(e)) => (e, "error"),
            Err(panic) => (ProcessorError::Panicked(panic_message(&*panic)), "panic"),
        };
        if matches!(e, ProcessorError::GroupStalled(_)) && instance_id.is_some() {
            // tansu never expires a dead static member (it checks heartbeats
            // only on requests of dynamic members), so a group whose leader is
            // such a member never completes a join; a dynamic member's join
            // makes it drop the dead ones.
            tracing::warn!(
                stage = stage.name(),
                "rejoining as a dynamic member (without group.instance.id) for the rest of this run"
            );
            instance_id = None;
        }
        ctx.metrics
            .stage_restarts
            .with_label_values(&[stage.name(), cause])
            .inc();
        let in_a_row = ctx.health.failed(&e.to_string());
        let pause = restart_pause(ctx.restart_backoff, in_a_row);
        tracing::warn!(stage = stage.name(), error = %e, cause, failures_in_a_row = in_a_row, restart_in_ms = pause.as_millis() as u64, "stage failed; restarting from saved state");
        ctx.renew_producer();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let producer = ctx.producer();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || {
        rdkafka::producer::Producer::flush(&**producer, Duration::from_secs(10))
    })
    .await
    {
        tracing::warn!(stage = stage.name(), error = %e, "flushing producer at shutdown");
    }
    Ok(())
}

/// The pause before the next run after `in_a_row` failures in a row: `base`, doubled for
/// each failure after the first, at most [`MAX_RESTART_BACKOFF`].
fn restart_pause(base: Duration, in_a_row: u32) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    base.saturating_mul(1 << doublings)
        .min(MAX_RESTART_BACKOFF.max(base))
}

/// The text of a panic's payload (`panic!` with a string, or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Whether every input topic of `partition` has been processed up to its end: the high
/// watermark librdkafka's statistics last reported ([`LagContext::high_watermark`]). A
/// topic this partition never delivered and the statistics do not know yet counts as
/// caught up (an unused co-partitioned topic such as `touchpoints.aliases`); one we did
/// read but without statistics does not.
fn caught_up(
    consumer: &StreamConsumer<LagContext>,
    topics: &[String],
    partition: i32,
    pos: &Position,
) -> bool {
    topics.iter().all(|topic| {
        let next = pos.next.get(topic).copied();
        match (consumer.context().high_watermark(topic, partition), next) {
            (Some((h, _)), Some(n)) => n >= h,
            // Not read since start: librdkafka's own lag (from its fetch position) says.
            (Some((h, lag)), None) => h == 0 || lag == 0,
            (None, Some(_)) => false,
            (None, None) => true,
        }
    })
}

async fn run_once<S: Stage>(
    stage: &S,
    ctx: &RunCtx,
    instance_id: Option<&str>,
) -> Result<(), ProcessorError> {
    let consumer = subscribe(stage, ctx, instance_id)?;
    let topics = stage.topics();
    let mut parts: HashMap<i32, Part<S::State>> = HashMap::new();
    let mut pending_msgs = 0usize;
    let mut last_flush = Instant::now();
    // Any input at all, skipped replays included: the consumer is delivering.
    let mut last_msg = Instant::now();
    // Reading the clock for every input cost ~2 % of the processor's CPU in a backlog
    // (docs/performance.md): inputs are stamped with this clock, read at every tick and
    // every CLOCK_EVERY inputs, so it is behind by at most one tick (<= 500 ms) or
    // CLOCK_EVERY inputs' handling. Idle and stall decisions use seconds.
    let mut clock = CoarseClock::new();
    let mut tick = tokio::time::interval(
        ctx.batch_max
            .min(Duration::from_millis(500))
            .max(Duration::from_millis(10)),
    );
    let mut revocations_seen = 0u64;
    let mut out = Outbox::new(SnapshotDue {
        last: Instant::now(),
        every: ctx.snapshot_every,
        min_pause: Duration::ZERO,
        force: false,
    });
    let mut in_flight: InFlight<'_> = FuturesOrdered::new();
    let counters = Counters::new(&ctx.metrics, stage.name());

    loop {
        // After a revocation, finish the work in hand (rows, snapshots; the commit may be
        // refused, which is fine) and forget every partition's state: whatever is
        // assigned now is reloaded from its snapshot, which another member may have
        // moved on while it was away. Keeping the old state would leave its position
        // behind the committed offset, so the partition never looks caught up.
        let revocations = consumer.context().revocations();
        if revocations != revocations_seen {
            revocations_seen = revocations;
            if !parts.is_empty() {
                out.snap.force = true;
                flush(stage, ctx, &consumer, &mut parts, &mut out, &mut in_flight).await?;
                finish(&mut in_flight).await?;
                pending_msgs = 0;
                last_flush = Instant::now();
                tracing::info!(
                    stage = stage.name(),
                    partitions = parts.len(),
                    "rebalance: partition states dropped, reloading from snapshots"
                );
                parts.clear();
            }
        }
        tokio::select! {
            // Surface a failed write as soon as it fails (not only at the next cut).
            Some(res) = in_flight.next(), if !in_flight.is_empty() => {
                res?;
            }
            _ = ctx.shutdown.cancelled() => {
                out.snap.force = true;
                flush(stage, ctx, &consumer, &mut parts, &mut out, &mut in_flight).await?;
                finish(&mut in_flight).await?;
                tracing::info!(stage = stage.name(), "stage stopped after a final flush");
                return Ok(());
            }
            _ = tick.tick() => {
                clock.refresh();
                let joining = consumer.context().joining_for();
                if joining > GROUP_STALL {
                    return Err(ProcessorError::GroupStalled(joining));
                }
                // Partitions assigned but silent so far still need a state, so that idle
                // handling (e.g. the identity stage's watermark) covers them too.
                let assigned: Vec<i32> = consumer
                    .assignment()
                    .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_default();
                for p in assigned {
                    if let std::collections::hash_map::Entry::Vacant(v) = parts.entry(p) {
                        v.insert(load_part(stage, ctx, p).await?);
                    }
                }
                reseek_stalled(stage, &consumer, &mut parts, last_msg.elapsed() >= 4 * SEEK_SETTLE)?;
                if let Some(limit) = stage.idle_after() {
                    for (p, part) in parts.iter_mut() {
                        let idle = part.last_input.elapsed();
                        // Silent is not idle while a backlog waits (a rebalance or restart
                        // pauses consumption): only a caught-up partition counts.
                        if idle >= limit
                            && caught_up(&consumer, &topics, *p, &part.pos)
                            && stage.idle(&mut part.state, idle, part.pos.seq)
                        {
                            part.dirty = true;
                            part.unsaved = true;
                        }
                    }
                }
                for part in parts.values_mut() {
                    if stage.refresh(&mut part.state) {
                        part.dirty = true;
                        part.unsaved = true;
                        part.whole_next = true;
                    }
                }
                let due = last_flush.elapsed() >= ctx.batch_max;
                let snapshot_due = out.snap.due() && parts.values().any(|p| p.unsaved);
                if due && (pending_msgs > 0 || snapshot_due || parts.values().any(|p| p.dirty)) {
                    flush(stage, ctx, &consumer, &mut parts, &mut out, &mut in_flight).await?;
                    pending_msgs = 0;
                    last_flush = Instant::now();
                }
            }
            msg = consumer.recv() => {
                let msg = msg?;
                let now = clock.stamp();
                last_msg = now;
                let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
                if let std::collections::hash_map::Entry::Vacant(v) = parts.entry(partition) {
                    v.insert(load_part(stage, ctx, partition).await?);
                }
                let admit = admit(stage, ctx, &consumer, &mut parts, topic, partition, offset).await?;
                if !admit {
                    counters.skipped.inc();
                    continue;
                }
                out.size_batch();
                let mut inputs = 1;
                if let Some(part) = parts.get_mut(&partition) {
                    let seq = part.advance(topic, offset, now);
                    let input = Input { topic, partition, offset, payload: msg.payload().unwrap_or_default(), seq };
                    inputs = stage.inputs_in(&input);
                    stage.handle(&mut part.state, &input, &mut out.batch);
                }
                out.note_offset(topic, partition, offset);
                counters.processed.inc();
                pending_msgs += inputs;
                if pending_msgs >= ctx.batch_max_rows {
                    flush(stage, ctx, &consumer, &mut parts, &mut out, &mut in_flight).await?;
                    pending_msgs = 0;
                    last_flush = Instant::now();
                }
            }
        }
    }
}

/// Inputs stamped between two clock reads while they keep coming.
const CLOCK_EVERY: u32 = 64;

/// The run loop's clock for stamping inputs (see [`run_once`]).
struct CoarseClock {
    now: Instant,
    stamped: u32,
}

impl CoarseClock {
    fn new() -> Self {
        Self {
            now: Instant::now(),
            stamped: 0,
        }
    }

    fn refresh(&mut self) {
        self.now = Instant::now();
        self.stamped = 0;
    }

    /// The time for one input: the clock is read again every [`CLOCK_EVERY`] stamps.
    fn stamp(&mut self) -> Instant {
        self.stamped += 1;
        if self.stamped >= CLOCK_EVERY {
            self.refresh();
        }
        self.now
    }
}

/// A stage's per-message counters, looked up once per run rather than per message.
struct Counters {
    processed: prometheus::IntCounter,
    skipped: prometheus::IntCounter,
}

impl Counters {
    fn new(metrics: &Metrics, stage: &str) -> Self {
        Self {
            processed: metrics.messages.with_label_values(&[stage, "processed"]),
            skipped: metrics
                .messages
                .with_label_values(&[stage, "skipped_replay"]),
        }
    }
}
