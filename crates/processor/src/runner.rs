//! The consume → process → write → snapshot → commit loop shared by both stages.
//!
//! Each input partition has its own state, restored from `processor_state` the first time
//! the partition shows up. The loop keeps, per partition, the next offset it expects on
//! each input topic:
//! - an older offset (Kafka resumed from an earlier commit) is a replay of work already in
//!   the state: skipped;
//! - a newer one means another instance moved on and saved a newer snapshot: the state is
//!   reloaded, and if it is still behind, the consumer seeks back to it (from further
//!   back each time a seek does not take: tansu never serves an offset inside a producer
//!   batch, see `seek_back`).
//!
//! A flush writes every row of the batch (retrying while ClickHouse is away), then the
//! snapshots, then commits the offsets: offsets never pass rows that are not stored. If a
//! flush fails for a reason other than shutdown (e.g. Kafka produce errors), the stage
//! drops its in-memory state and restarts from the last snapshots; outputs are
//! deterministic, so re-emitted rows replace themselves.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesOrdered, StreamExt as _};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use touchstream_core::config::KafkaConfig;
use touchstream_core::kafka::acks::{group_producer, AckGroup, GroupProducer};
use tracing::Instrument as _;

use crate::batch::Batch;
use crate::metrics::Metrics;
use crate::store::{StateRow, Store};
use crate::ProcessorError;

/// The stage-specific part of the loop. All methods are synchronous and CPU-only.
pub trait Stage: Send + Sync + 'static {
    /// Per-partition state.
    type State: Send;
    /// `identity` or `journey` (metric label, state key).
    fn name(&self) -> &'static str;
    /// Input topics (co-partitioned when more than one).
    fn topics(&self) -> Vec<String>;
    /// State of a partition never seen before.
    fn new_state(&self) -> Self::State;
    /// State from a saved snapshot's JSON.
    fn restore(&self, json: &[u8]) -> Result<Self::State, String>;
    /// What to save of a state: the runner serializes it as JSON and compresses it
    /// ([`crate::state_codec::encode`]); [`Stage::restore`] gets that JSON back.
    fn snapshot<'a>(&'a self, state: &'a Self::State) -> impl Serialize + 'a;
    /// Process one input message.
    #[allow(clippy::too_many_arguments)]
    fn handle(
        &self,
        state: &mut Self::State,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
        seq: u64,
        batch: &mut Batch,
    );
    /// Move outputs the state holds into the batch (called before every flush).
    fn drain(&self, state: &mut Self::State, partition: i32, batch: &mut Batch);
    /// After how long without input a caught-up partition counts as idle (`None`: never).
    fn idle_after(&self) -> Option<Duration> {
        None
    }
    /// The partition is caught up and had no input for `idle`; return true if the state
    /// changed.
    fn idle(&self, _state: &mut Self::State, _idle: Duration, _seq: u64) -> bool {
        false
    }
}

/// Whether every input topic of `partition` has been processed up to its end: the high
/// watermark librdkafka's statistics last reported (every second; no broker round trip,
/// so the loop never blocks on it). A topic this partition never delivered and the
/// statistics do not know yet counts as caught up (an unused co-partitioned topic such as
/// `touchpoints.aliases`); one we did read but without statistics does not.
fn caught_up(
    consumer: &StreamConsumer<LagContext>,
    topics: &[String],
    partition: i32,
    pos: &Position,
) -> bool {
    let Ok(high) = consumer.context().high.lock() else {
        return false;
    };
    topics.iter().all(|topic| {
        let next = pos.next.get(topic).copied();
        match (high.get(&(topic.clone(), partition)), next) {
            (Some((h, _)), Some(n)) => n >= *h,
            // Not read since start: librdkafka's own lag (from its fetch position) says.
            (Some((h, lag)), None) => *h == 0 || *lag == 0,
            (None, Some(_)) => false,
            (None, None) => true,
        }
    })
}

/// When the next flush also saves snapshots and commits offsets.
///
/// Snapshots hold a partition's whole state, so their cost grows with the number of
/// customers, not with the input rate: at a million events encoding one took 0.3–2.1 s,
/// over a quarter of the journey stage's time at the 5 s interval. So the pause after a
/// snapshot is at least [`SNAPSHOT_PAUSE_FACTOR`] times what encoding it took, which
/// keeps snapshots under ~10 % of the stage's time whatever the state's size (a crash
/// then replays that much more input).
struct SnapshotDue {
    last: Instant,
    every: Duration,
    /// [`SNAPSHOT_PAUSE_FACTOR`] × the last snapshot's encoding time.
    min_pause: Duration,
    /// Shutdown or revocation: save now whatever the clock says.
    force: bool,
}

impl SnapshotDue {
    fn due(&self) -> bool {
        self.force || self.last.elapsed() >= self.every.max(self.min_pause)
    }
}

/// See [`SnapshotDue`].
const SNAPSHOT_PAUSE_FACTOR: u32 = 10;

/// Where the stage runs and writes.
pub struct RunCtx {
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Consumer group of this stage.
    pub group_id: String,
    /// Static membership id of this stage's consumer (`group.instance.id`), if any.
    pub instance_id: Option<String>,
    /// This stage's producer (internal topics and DLQ); replaced after a failed run, since
    /// an idempotent producer can stay failed after a broker restart.
    pub producer: std::sync::Mutex<GroupProducer>,
    /// ClickHouse.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Flush at this many input messages.
    pub batch_max_rows: usize,
    /// Flush at least this often.
    pub batch_max: Duration,
    /// Save snapshots and commit offsets at most this often (a flush in between writes
    /// rows only). Snapshots hold a partition's whole state, so saving them on every
    /// flush would cost more than the rows; a crash replays at most this much input.
    pub snapshot_every: Duration,
    /// Cut batches being written at once (at least 1).
    pub writes_in_flight: usize,
    /// Pause before restarting after a failure.
    pub restart_backoff: Duration,
    /// Process-wide shutdown.
    pub shutdown: CancellationToken,
}

#[derive(Serialize, Deserialize, Default)]
struct Position {
    seq: u64,
    next: BTreeMap<String, i64>,
}

struct Part<S> {
    state: S,
    pos: Position,
    /// Has outputs to drain before the next flush.
    dirty: bool,
    /// Changed since its last saved snapshot.
    unsaved: bool,
    last_input: Instant,
    gap_reloaded: bool,
    /// The current seeks back began because the stage was idle while this partition
    /// was behind (not because input came ahead): they stop after [`IDLE_MAX_SEEKS`].
    idle_seek: bool,
    /// Seeks back to the saved position since the last in-order input, and when the
    /// last one was issued.
    seeks: u32,
    last_seek: Option<(String, i64, Instant)>,
}

/// Keeps each partition's high watermark and lag from librdkafka's statistics for the
/// idle check. (The lag metric comes from [`crate::lag`], which does not depend on the
/// loop polling.)
pub struct LagContext {
    /// (high watermark, consumer lag) per topic partition.
    high: std::sync::Mutex<HashMap<(String, i32), (i64, i64)>>,
    /// Revocations seen so far. The loop compares it with its own count: a partition
    /// that was revoked may have been processed by another member in between, so its
    /// in-memory state is stale and is reloaded from the saved snapshot.
    revocations: std::sync::atomic::AtomicU64,
    /// Since when the statistics have shown the group join unfinished (librdkafka's
    /// `cgrp.join_state` other than `steady`); `None` while steady.
    joining_since: std::sync::Mutex<Option<Instant>>,
}

impl LagContext {
    /// How long the group join has been unfinished, per the latest statistics.
    fn joining_for(&self) -> Duration {
        self.joining_since
            .lock()
            .ok()
            .and_then(|since| since.map(|s| s.elapsed()))
            .unwrap_or_default()
    }
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        if let (Some(cgrp), Ok(mut since)) = (&stats.cgrp, self.joining_since.lock()) {
            if cgrp.join_state == "steady" {
                *since = None;
            } else if since.is_none() {
                *since = Some(Instant::now());
            }
        }
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.hi_offset >= 0 {
                    if let Ok(mut high) = self.high.lock() {
                        high.insert((topic.clone(), *p), (part.hi_offset, part.consumer_lag));
                    }
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            self.revocations
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Run a stage until shutdown, restarting from saved state after failures.
pub async fn run_stage<S: Stage>(stage: S, ctx: RunCtx) -> Result<(), ProcessorError> {
    let mut instance_id = ctx.instance_id.clone();
    loop {
        match run_once(&stage, &ctx, instance_id.as_deref()).await {
            Ok(()) | Err(ProcessorError::ShuttingDown) => break,
            Err(e) => {
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
                tracing::warn!(stage = stage.name(), error = %e, "stage failed; restarting from saved state");
                match group_producer(&ctx.kafka, PRODUCE_TIMEOUT_MS, PRODUCER_LINGER_MS) {
                    Ok(fresh) => match ctx.producer.lock() {
                        Ok(mut p) => *p = fresh,
                        Err(poisoned) => *poisoned.into_inner() = fresh,
                    },
                    Err(e) => tracing::warn!(error = %e, "recreating the producer failed"),
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ctx.restart_backoff) => {}
                }
            }
        }
    }
    let producer = match ctx.producer.lock() {
        Ok(p) => p.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || {
        rdkafka::producer::Producer::flush(&*producer, Duration::from_secs(10))
    })
    .await
    {
        tracing::warn!(stage = stage.name(), error = %e, "flushing producer at shutdown");
    }
    Ok(())
}

/// The processor producer's `linger.ms`: it enqueues a whole cut and waits for the
/// acknowledgements together, so batching costs nothing here.
pub const PRODUCER_LINGER_MS: u32 = 5;

/// How long the processor's producer retries a record before failing it, ms.
pub const PRODUCE_TIMEOUT_MS: u64 = 30_000;

fn state_key(ctx: &RunCtx, stage: &str) -> String {
    format!("{}/{stage}", ctx.group_id)
}

async fn load_part<S: Stage>(
    stage: &S,
    ctx: &RunCtx,
    partition: i32,
) -> Result<Part<S::State>, ProcessorError> {
    let key = state_key(ctx, stage.name());
    let (state, pos) = match ctx.store.load_state(&key, partition).await? {
        Some((offsets, snapshot, _)) => {
            let pos: Position = serde_json::from_str(&offsets)
                .map_err(|e| ProcessorError::State(format!("{key}/{partition} offsets: {e}")))?;
            let state = crate::state_codec::decode(&snapshot)
                .and_then(|json| stage.restore(&json))
                .map_err(|e| ProcessorError::State(format!("{key}/{partition} snapshot: {e}")))?;
            tracing::info!(
                stage = stage.name(),
                partition,
                seq = pos.seq,
                "restored partition state"
            );
            (state, pos)
        }
        None => (stage.new_state(), Position::default()),
    };
    Ok(Part {
        state,
        pos,
        dirty: false,
        unsaved: false,
        last_input: Instant::now(),
        gap_reloaded: false,
        idle_seek: false,
        seeks: 0,
        last_seek: None,
    })
}

async fn run_once<S: Stage>(
    stage: &S,
    ctx: &RunCtx,
    instance_id: Option<&str>,
) -> Result<(), ProcessorError> {
    let mut config = touchstream_core::kafka::consumer_config(&ctx.kafka);
    // librdkafka prefetches up to 64 MiB per consumer by default: memory that does not
    // buy throughput here (each stage drains its queue in batches of `batch_max_rows`).
    if !ctx
        .kafka
        .client_properties
        .contains_key("queued.max.messages.kbytes")
    {
        config.set("queued.max.messages.kbytes", "16384");
    }
    if let Some(id) = instance_id {
        config.set("group.instance.id", id);
    }
    let consumer: StreamConsumer<LagContext> = config
        .set("group.id", &ctx.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Range assignment gives partition p of every input topic to the same member:
        // the co-partitioning the identity stage relies on.
        .set("partition.assignment.strategy", "range")
        .set("statistics.interval.ms", "1000")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // Also the rebalance timeout: how long a rebalance waits for a member that died
        // without leaving (SIGKILL). The default 5 min would stall every partition that
        // long; a flush retrying through a ClickHouse outage longer than this makes the
        // member leave and rejoin, which the snapshots make safe.
        .set("max.poll.interval.ms", "60000")
        .create_with_context(LagContext {
            high: std::sync::Mutex::new(HashMap::new()),
            revocations: std::sync::atomic::AtomicU64::new(0),
            joining_since: std::sync::Mutex::new(None),
        })?;
    let topics = stage.topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(stage = stage.name(), group = %ctx.group_id, topics = ?topics, "stage consuming");

    let mut parts: HashMap<i32, Part<S::State>> = HashMap::new();
    let mut pending_msgs = 0usize;
    let mut last_flush = Instant::now();
    // Any input at all, skipped replays included: the consumer is delivering.
    let mut last_msg = Instant::now();
    let mut tick = tokio::time::interval(
        ctx.batch_max
            .min(Duration::from_millis(500))
            .max(Duration::from_millis(10)),
    );
    let mut revocations_seen = 0u64;
    let mut out = Outbox {
        batch: Batch::default(),
        ranges: BTreeMap::new(),
        snap: SnapshotDue {
            last: Instant::now(),
            every: ctx.snapshot_every,
            min_pause: Duration::ZERO,
            force: false,
        },
        prev_done: None,
    };
    let mut in_flight: InFlight<'_> = FuturesOrdered::new();
    let counters = Counters::new(&ctx.metrics, stage.name());

    loop {
        // After a revocation, finish the work in hand (rows, snapshots; the commit may be
        // refused, which is fine) and forget every partition's state: whatever is
        // assigned now is reloaded from its snapshot, which another member may have
        // moved on while it was away. Keeping the old state would leave its position
        // behind the committed offset, so the partition never looks caught up.
        let revocations = consumer
            .context()
            .revocations
            .load(std::sync::atomic::Ordering::SeqCst);
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
                last_msg = Instant::now();
                let (topic, partition, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
                if let std::collections::hash_map::Entry::Vacant(v) = parts.entry(partition) {
                    v.insert(load_part(stage, ctx, partition).await?);
                }
                let admit = admit(stage, ctx, &consumer, &mut parts, &topic, partition, offset).await?;
                if !admit {
                    counters.skipped.inc();
                    continue;
                }
                if let Some(part) = parts.get_mut(&partition) {
                    // In order again: a later gap gets a fresh reload and seek.
                    part.gap_reloaded = false;
                    part.idle_seek = false;
                    part.seeks = 0;
                    part.last_seek = None;
                    part.pos.seq += 1;
                    part.pos.next.insert(topic.clone(), offset + 1);
                    part.dirty = true;
                    part.unsaved = true;
                    part.last_input = Instant::now();
                    stage.handle(&mut part.state, &topic, partition, offset, msg.payload().unwrap_or_default(), part.pos.seq, &mut out.batch);
                }
                out.ranges
                    .entry((topic.clone(), partition))
                    .and_modify(|r| r.1 = offset)
                    .or_insert((offset, offset));
                counters.processed.inc();
                pending_msgs += 1;
                if pending_msgs >= ctx.batch_max_rows {
                    flush(stage, ctx, &consumer, &mut parts, &mut out, &mut in_flight).await?;
                    pending_msgs = 0;
                    last_flush = Instant::now();
                }
            }
        }
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

/// Decide whether to process `offset`, repairing the partition's position if needed.
async fn admit<S: Stage>(
    stage: &S,
    ctx: &RunCtx,
    consumer: &StreamConsumer<LagContext>,
    parts: &mut HashMap<i32, Part<S::State>>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<bool, ProcessorError> {
    let Some(part) = parts.get_mut(&partition) else {
        return Ok(false);
    };
    let next = match part.pos.next.get(topic) {
        None => {
            part.pos.next.insert(topic.to_string(), offset);
            return Ok(true);
        }
        Some(n) => *n,
    };
    if offset == next {
        return Ok(true);
    }
    if offset < next {
        return Ok(false);
    }
    // Ahead of our state: someone else processed and saved further.
    if !part.gap_reloaded {
        let mut fresh = load_part(stage, ctx, partition).await?;
        fresh.gap_reloaded = true;
        let fresh_next = fresh.pos.next.get(topic).copied();
        *part = fresh;
        tracing::info!(
            stage = stage.name(),
            partition,
            topic,
            offset,
            "input ahead of local state; reloaded the saved state"
        );
        match fresh_next {
            None => {
                part.pos.next.insert(topic.to_string(), offset);
                return Ok(true);
            }
            Some(n) if n == offset => return Ok(true),
            Some(n) if offset < n => return Ok(false),
            Some(_) => {}
        }
    }
    let next = part.pos.next.get(topic).copied().unwrap_or(offset);
    // Records fetched before the last seek took effect: drop them and wait for it.
    if part
        .last_seek
        .as_ref()
        .is_some_and(|(_, _, at)| at.elapsed() < SEEK_SETTLE)
    {
        return Ok(false);
    }
    // Skip ahead only when the records in between are really gone (retention): a seek
    // issued while the group's assignment is still settling can be overridden by the
    // committed offset, so a record ahead after a seek is no proof that none is left.
    let low = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(5))
        .map(|(low, _)| low)
        .ok();
    let gone = low.is_some_and(|low| low > next);
    if !gone {
        tracing::warn!(
            stage = stage.name(),
            partition,
            topic,
            offset,
            expected = next,
            attempt = part.seeks + 1,
            "seeking back to the saved position"
        );
        part.idle_seek = false;
        seek_back(stage, consumer, part, partition, topic, next)?;
        return Ok(false);
    }
    tracing::warn!(
        stage = stage.name(),
        partition,
        topic,
        offset,
        expected = next,
        earliest = low,
        "records between the saved position and the input are gone (retention); continuing"
    );
    part.pos.next.insert(topic.to_string(), offset);
    Ok(true)
}

/// Seek where input should come and does not:
/// - a seek back has had no effect for a while: no in-order input came (it was
///   overridden, e.g. by the committed offset of an assignment still settling, or it
///   pointed inside a producer batch on tansu, and the input that was ahead has all
///   been dropped meanwhile, so nothing else would);
/// - the whole stage has had no input for a while (`stage_idle`), yet a partition's
///   saved position is behind its high watermark: the consumer's position (the committed
///   offset, inside a producer batch) is one the broker does not serve, and with no
///   later batch nothing would ever arrive to show it.
fn reseek_stalled<S: Stage>(
    stage: &S,
    consumer: &StreamConsumer<LagContext>,
    parts: &mut HashMap<i32, Part<S::State>>,
    stage_idle: bool,
) -> Result<(), ProcessorError> {
    for (p, part) in parts.iter_mut() {
        let (topic, next) = match &part.last_seek {
            Some((topic, next, at)) => {
                // Seeks begun by idleness give up (quietly) rather than restart the
                // stage: records between the saved offset and the high watermark may
                // simply not exist (a compacted topic, transaction markers). Input that
                // arrives later resumes the ordinary path.
                if at.elapsed() < 4 * SEEK_SETTLE
                    || (part.idle_seek && part.seeks >= IDLE_MAX_SEEKS)
                {
                    continue;
                }
                (topic.clone(), *next)
            }
            None if stage_idle => {
                let behind = consumer.context().high.lock().ok().and_then(|high| {
                    part.pos.next.iter().find_map(|(topic, next)| {
                        high.get(&(topic.clone(), *p))
                            .is_some_and(|(h, _)| next < h)
                            .then(|| (topic.clone(), *next))
                    })
                });
                match behind {
                    Some(b) => {
                        part.idle_seek = true;
                        b
                    }
                    None => continue,
                }
            }
            None => continue,
        };
        tracing::warn!(
            stage = stage.name(),
            partition = *p,
            topic = topic.as_str(),
            expected = next,
            attempt = part.seeks + 1,
            "no input at the saved position; seeking to it"
        );
        seek_back(stage, consumer, part, *p, &topic, next)?;
    }
    Ok(())
}

/// Seek `partition` of `topic` back to `next`, the saved position, and remember when.
///
/// The first seek goes to `next` itself; each further one (the previous did not take)
/// starts further back, [`REWIND_BASE`] doubling per attempt, and the records before
/// `next` are skipped as replays. tansu serves only batches that start at or after the
/// fetch offset, so a position inside a producer batch — snapshots and commits are cut
/// at any record — is never delivered there: its batch has to be fetched from its start.
/// After [`MAX_SEEKS`] without in-order input in between, commit the last target instead
/// and fail the stage run; the restarted run's consumer starts at the committed offset.
fn seek_back<S: Stage>(
    stage: &S,
    consumer: &StreamConsumer<LagContext>,
    part: &mut Part<S::State>,
    partition: i32,
    topic: &str,
    next: i64,
) -> Result<(), ProcessorError> {
    let target = rewind_target(next, part.seeks);
    if part.seeks >= MAX_SEEKS {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(target))?;
        consumer.commit(&tpl, CommitMode::Sync)?;
        return Err(ProcessorError::State(format!(
            "{} partition {partition}: {MAX_SEEKS} seeks back to {topic} offset {next} did not \
             take; committed offset {target}, restarting the stage",
            stage.name()
        )));
    }
    part.seeks += 1;
    part.last_seek = Some((topic.to_string(), next, Instant::now()));
    // A refused seek (e.g. the partition is assigned but not fetching yet) counts as an
    // attempt that did not take: the next one follows after 4 × SEEK_SETTLE.
    if let Err(e) = consumer.seek(
        topic,
        partition,
        Offset::Offset(target),
        Duration::from_secs(5),
    ) {
        tracing::warn!(stage = stage.name(), partition, topic, target, error = %e, "seek refused");
    }
    Ok(())
}

/// Where seek attempt `attempt` (from 0) for saved position `next` goes: `next`, then
/// [`REWIND_BASE`] << (attempt - 1) records before it, never below offset 0.
fn rewind_target(next: i64, attempt: u32) -> i64 {
    if attempt == 0 {
        return next;
    }
    let back = REWIND_BASE << (attempt - 1).min(20);
    next.saturating_sub(back).max(0)
}

/// How long a group join may stay unfinished before the stage restarts with a new
/// consumer: longer than the rebalance timeout (`max.poll.interval.ms`, 60 s), the
/// longest a broker may legitimately hold a join while waiting for members.
const GROUP_STALL: Duration = Duration::from_secs(90);

/// Seeks back to a saved position tried before the stage run fails and restarts.
const MAX_SEEKS: u32 = 20;
/// Seeks begun because the stage was idle while a partition was behind, before they
/// stop (the last starts 256 << 10 records back).
const IDLE_MAX_SEEKS: u32 = 12;
/// How far before the saved position the second seek back starts (doubling after).
const REWIND_BASE: i64 = 256;
/// How long input ahead of the saved position is dropped after a seek before the seek
/// counts as overridden and is issued again.
const SEEK_SETTLE: Duration = Duration::from_millis(500);

/// Outputs gathered since the last cut, and when snapshots are due.
struct Outbox {
    batch: Batch,
    /// Input offsets (first, last) per topic-partition in the current batch.
    ranges: BTreeMap<(String, i32), (i64, i64)>,
    snap: SnapshotDue,
    /// Fires when the latest cut's write and every earlier one have finished.
    prev_done: Option<oneshot::Receiver<()>>,
}

/// A cut batch on its way out: its records already enqueued in the producer (in order),
/// its rows, and, when due, the snapshots and offsets to save after them.
struct Outgoing {
    acks: Arc<AckGroup>,
    batch: Batch,
    scope: String,
    states: Vec<StateRow>,
    tpl: TopicPartitionList,
}

/// The writes of earlier cuts, running while the loop processes the next messages;
/// polled together, completed in cut order.
type InFlight<'a> =
    FuturesOrdered<Pin<Box<dyn Future<Output = Result<(), ProcessorError>> + Send + 'a>>>;

/// Wait for every write in flight.
async fn finish(in_flight: &mut InFlight<'_>) -> Result<(), ProcessorError> {
    while let Some(res) = in_flight.next().await {
        res?;
    }
    Ok(())
}

/// Cut the batch and start writing it while the loop goes on with the next messages, so
/// the stage is not idle while ClickHouse and Kafka acknowledge. Up to
/// `writes_in_flight` cuts are written at once (their rows are independent and
/// deterministic). Each write finishes only after the one before it (see [`write_out`]),
/// so a cut that saves snapshots and commits offsets does that after every earlier cut's
/// rows are stored: a commit never passes rows that are not stored, and commits stay in
/// order. The cut itself does not wait for them: waiting here (as before) stalled the
/// stage for the slowest insert in flight at every snapshot.
async fn flush<'a, S: Stage>(
    stage: &S,
    ctx: &'a RunCtx,
    consumer: &'a StreamConsumer<LagContext>,
    parts: &mut HashMap<i32, Part<S::State>>,
    out: &mut Outbox,
    in_flight: &mut InFlight<'a>,
) -> Result<(), ProcessorError> {
    let save = out.snap.due();
    while in_flight.len() >= ctx.writes_in_flight {
        if let Some(res) = in_flight.next().await {
            res?;
        }
    }
    let job = cut(stage, ctx, parts, out, save).await?;
    let (done, next_done) = oneshot::channel();
    let after = out.prev_done.replace(next_done);
    in_flight.push_back(Box::pin(
        write_out(ctx, consumer, job, after, done)
            .instrument(tracing::debug_span!("flush", stage = stage.name())),
    ));
    Ok(())
}

/// Drain outputs, enqueue the records, and capture snapshots if `save` (synchronously,
/// so they describe exactly the input up to this cut).
async fn cut<S: Stage>(
    stage: &S,
    ctx: &RunCtx,
    parts: &mut HashMap<i32, Part<S::State>>,
    out: &mut Outbox,
    save: bool,
) -> Result<Outgoing, ProcessorError> {
    let scope = format!(
        "{}:{}",
        state_key(ctx, stage.name()),
        out.ranges
            .iter()
            .map(|((t, p), (a, b))| format!("{t}#{p}:{a}-{b}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    out.ranges.clear();
    for (p, part) in parts.iter_mut().filter(|(_, p)| p.dirty) {
        stage.drain(&mut part.state, *p, &mut out.batch);
        part.dirty = false;
    }
    let mut batch = std::mem::take(&mut out.batch);
    let producer = match ctx.producer.lock() {
        Ok(p) => p.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    // 1. Internal topics and DLQ, enqueued now so they keep the order of the cuts; their
    // acknowledgements are awaited before anything of this cut is committed.
    let acks = AckGroup::new();
    for r in &batch.records {
        let started = Instant::now();
        loop {
            let key = r.key.as_deref().map(str::as_bytes);
            match acks.send(&producer, &r.topic, key, &r.payload, r.partition) {
                Ok(()) => break,
                Err(e)
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                        && started.elapsed() < Duration::from_secs(30) =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(ProcessorError::Produce(e.to_string())),
            }
        }
    }
    batch.records.clear();
    // 3. Snapshots and 4. offsets, when due, written after the rows.
    let mut states = Vec::new();
    let mut tpl = TopicPartitionList::new();
    if save {
        let encoding = Instant::now();
        let key = state_key(ctx, stage.name());
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for (p, part) in parts.iter_mut().filter(|(_, p)| p.unsaved) {
            let snapshot = crate::state_codec::encode(&stage.snapshot(&part.state))
                .map_err(ProcessorError::State)?;
            let offsets = serde_json::to_string(&part.pos)
                .map_err(|e| ProcessorError::State(e.to_string()))?;
            states.push(StateRow {
                stage: key.clone(),
                partition: *p,
                offsets,
                snapshot,
                saved_at_ms: now_ms,
                version: part.pos.seq,
            });
            for (topic, next) in &part.pos.next {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*next))?;
            }
            part.unsaved = false;
        }
        out.snap.last = Instant::now();
        out.snap.min_pause = encoding.elapsed() * SNAPSHOT_PAUSE_FACTOR;
        out.snap.force = false;
    }
    Ok(Outgoing {
        acks,
        batch,
        scope,
        states,
        tpl,
    })
}

/// Write a cut: records acknowledged, 2. rows, then — once the previous cut's write has
/// finished (`after`) — 3. snapshots, 4. offsets; then signal `done`. A failure fails the
/// stage run, which restarts from the saved snapshots (and drops the later writes before
/// they commit anything).
async fn write_out(
    ctx: &RunCtx,
    consumer: &StreamConsumer<LagContext>,
    job: Outgoing,
    after: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
) -> Result<(), ProcessorError> {
    job.acks
        .wait()
        .await
        .map_err(|e| ProcessorError::Produce(e.to_string()))?;
    job.batch.write(&ctx.store, &job.scope).await?;
    if let Some(after) = after {
        // The sender goes away unsent only when the earlier write failed or was dropped:
        // then this cut must not save or commit anything either.
        after
            .await
            .map_err(|_| ProcessorError::Task("an earlier cut's write did not finish".into()))?;
    }
    if !job.states.is_empty() {
        ctx.store
            .insert("processor_state", &job.states, None)
            .await?;
        if job.tpl.count() > 0 {
            // Advisory: the snapshot is the source of truth; a failed commit (e.g. the
            // partition moved in a rebalance) only means a longer skip-replay next time.
            if let Err(e) = consumer.commit(&job.tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "offset commit failed");
            }
        }
    }
    // The next cut may be waiting for this one; nobody listening is fine.
    let _ = done.send(());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_snapshot_lengthens_the_pause_before_the_next() {
        let mut due = SnapshotDue {
            last: Instant::now() - Duration::from_secs(6),
            every: Duration::from_secs(5),
            min_pause: Duration::ZERO,
            force: false,
        };
        assert!(due.due(), "the interval has passed");
        due.min_pause = Duration::from_millis(800) * SNAPSHOT_PAUSE_FACTOR;
        assert!(!due.due(), "8 s after an 0.8 s snapshot");
        due.force = true;
        assert!(due.due(), "shutdown and revocation do not wait");
    }

    #[test]
    fn seeks_back_go_further_back_each_time_but_not_below_zero() {
        assert_eq!(rewind_target(1000, 0), 1000);
        assert_eq!(rewind_target(1000, 1), 1000 - REWIND_BASE);
        assert_eq!(rewind_target(1000, 2), 1000 - 2 * REWIND_BASE);
        assert_eq!(rewind_target(1000, 3), 0);
        assert_eq!(rewind_target(5, MAX_SEEKS), 0);
        let far = rewind_target(i64::MAX, MAX_SEEKS);
        assert!(far < i64::MAX && far > 0);
    }
}
