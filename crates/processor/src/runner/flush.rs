//! Cuts and their write chain: a cut drains the partitions' outputs, enqueues the
//! records and captures snapshots; its write stores the rows, then (after the cut before
//! it) the snapshots, then commits the offsets.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt as _};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use touchstream_core::kafka::acks::{AckGroup, GroupProducer};
use tracing::Instrument as _;

use super::consumer::LagContext;
use super::ctx::RunCtx;
use super::part::{new_chain_id, state_error, Chain, Part};
use super::stage::Stage;
use crate::batch::{Batch, Record, RowCounts};
use crate::store::Rejected;
use crate::tables::processor_state::{ProcessorState, StateRow};
use crate::tables::processor_state_delta::{DeltaRow, ProcessorStateDelta};
use crate::{ProcessorError, StateError};

/// When the next flush also saves snapshots and commits offsets.
///
/// Snapshots hold a partition's whole state, so their cost grows with the number of
/// customers, not with the input rate: at a million events encoding one took 0.3–2.1 s,
/// over a quarter of the journey stage's time at the 5 s interval. So the pause after a
/// snapshot is at least [`SNAPSHOT_PAUSE_FACTOR`] times what encoding it took, which
/// keeps snapshots under ~10 % of the stage's time whatever the state's size (a crash
/// then replays that much more input).
pub(super) struct SnapshotDue {
    pub(super) last: Instant,
    pub(super) every: Duration,
    /// [`SNAPSHOT_PAUSE_FACTOR`] × the last snapshot's encoding time.
    pub(super) min_pause: Duration,
    /// Shutdown or revocation: save now whatever the clock says.
    pub(super) force: bool,
}

impl SnapshotDue {
    pub(super) fn due(&self) -> bool {
        self.force || self.last.elapsed() >= self.every.max(self.min_pause)
    }
}

/// See [`SnapshotDue`].
const SNAPSHOT_PAUSE_FACTOR: u32 = 10;

/// Outputs gathered since the last cut, and when snapshots are due.
pub(super) struct Outbox {
    pub(super) batch: Batch,
    /// Input offsets (first, last) per topic-partition in the current batch.
    pub(super) ranges: BTreeMap<(String, i32), (i64, i64)>,
    pub(super) snap: SnapshotDue,
    /// Fires when the latest cut's write and every earlier one have finished.
    pub(super) prev_done: Option<oneshot::Receiver<()>>,
    /// What the last cut's batch held: the next batch is sized like it.
    pub(super) last_counts: RowCounts,
    /// The current batch has been sized ([`Outbox::size_batch`]).
    pub(super) sized: bool,
}

impl Outbox {
    pub(super) fn new(snap: SnapshotDue) -> Self {
        Self {
            batch: Batch::default(),
            ranges: BTreeMap::new(),
            snap,
            prev_done: None,
            last_counts: RowCounts::default(),
            sized: false,
        }
    }

    /// Size the batch like the last cut's before its first input (see [`Batch`]).
    pub(super) fn size_batch(&mut self) {
        if !self.sized {
            self.batch.size_like(&self.last_counts);
            self.sized = true;
        }
    }

    /// Note `offset` of `topic`/`partition` as part of the current batch.
    pub(super) fn note_offset(&mut self, topic: &str, partition: i32, offset: i64) {
        // Looked up by reference first: the topic is copied once per batch, not per input.
        if let Some(r) = self
            .ranges
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic)
            .map(|(_, r)| r)
        {
            r.1 = offset;
        } else {
            self.ranges
                .insert((topic.to_string(), partition), (offset, offset));
        }
    }
}

/// A cut batch on its way out: its records already enqueued in the producer (in order),
/// its rows, and, when due, the snapshots and offsets to save after them.
struct Outgoing {
    acks: Arc<AckGroup>,
    batch: Batch,
    scope: String,
    /// The input offset ranges the batch came from, for the dead-letter records of rows
    /// ClickHouse refuses.
    inputs: serde_json::Value,
    states: Vec<StateRow>,
    /// Partitions saved as deltas (the others of the cut are in `states`).
    deltas: Vec<DeltaRow>,
    tpl: TopicPartitionList,
}

/// The writes of earlier cuts, running while the loop processes the next messages;
/// polled together, completed in cut order.
pub(super) type InFlight<'a> =
    FuturesOrdered<Pin<Box<dyn Future<Output = Result<(), ProcessorError>> + Send + 'a>>>;

/// Wait for every write in flight.
pub(super) async fn finish(in_flight: &mut InFlight<'_>) -> Result<(), ProcessorError> {
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
pub(super) async fn flush<'a, S: Stage>(
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
    let key = ctx.state_key(stage.name());
    let scope = format!(
        "{key}:{}",
        out.ranges
            .iter()
            .map(|((t, p), (a, b))| format!("{t}#{p}:{a}-{b}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let inputs = serde_json::Value::Array(
        out.ranges
            .iter()
            .map(|((t, p), (a, b))| {
                serde_json::json!({"kafka_topic": t, "kafka_partition": p, "first_offset": a, "last_offset": b})
            })
            .collect(),
    );
    out.ranges.clear();
    out.size_batch();
    for (p, part) in parts.iter_mut().filter(|(_, p)| p.dirty) {
        stage.drain(&mut part.state, *p, &mut out.batch);
        part.dirty = false;
    }
    let mut batch = std::mem::take(&mut out.batch);
    // After the drains: a partition's watermark follows its events in the same pack.
    batch.close_packs();
    out.last_counts = batch.counts();
    out.sized = false;
    let producer = ctx.producer();
    // 1. Internal topics and DLQ, enqueued now so they keep the order of the cuts; their
    // acknowledgements are awaited before anything of this cut is committed.
    let acks = AckGroup::new();
    for r in &batch.records {
        enqueue(&acks, &producer, r).await?;
    }
    batch.records.clear();
    // 3. Snapshots (whole, or the changes since the previous save) and 4. offsets, when
    // due, written after the rows.
    let mut states = Vec::new();
    let mut deltas = Vec::new();
    let mut tpl = TopicPartitionList::new();
    if save {
        let encoding = Instant::now();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for (p, part) in parts.iter_mut().filter(|(_, p)| p.unsaved) {
            let fail = |e| state_error(&key, *p, e);
            let delta = if compaction_due(&part.chain, part.whole_next, ctx) {
                None
            } else {
                stage
                    .delta(&part.state)
                    .map(|d| crate::state_codec::encode(&d))
                    .transpose()
                    .map_err(|e| fail(StateError::Snapshot(e)))?
            };
            let kind = if delta.is_some() { "delta" } else { "whole" };
            match delta {
                Some(delta) => {
                    part.chain.deltas += 1;
                    part.chain.delta_bytes += delta.len() as u64;
                    let offsets = serde_json::to_string(&part.pos)
                        .map_err(|e| fail(StateError::Offsets(e)))?;
                    count_saved(ctx, stage.name(), kind, delta.len());
                    deltas.push(DeltaRow {
                        stage: key.clone(),
                        partition: *p,
                        chain: part.chain.id,
                        slot: part.chain.deltas,
                        offsets,
                        delta,
                        saved_at_ms: now_ms,
                        version: part.pos.seq,
                    });
                }
                None => {
                    let snapshot = crate::state_codec::encode(&stage.snapshot(&part.state))
                        .map_err(|e| fail(StateError::Snapshot(e)))?;
                    part.chain = Chain {
                        id: new_chain_id(),
                        base_bytes: snapshot.len() as u64,
                        ..Chain::default()
                    };
                    part.pos.chain = part.chain.id;
                    let offsets = serde_json::to_string(&part.pos)
                        .map_err(|e| fail(StateError::Offsets(e)))?;
                    count_saved(ctx, stage.name(), kind, snapshot.len());
                    states.push(StateRow {
                        stage: key.clone(),
                        partition: *p,
                        offsets,
                        snapshot,
                        saved_at_ms: now_ms,
                        version: part.pos.seq,
                    });
                }
            }
            stage.saved(&mut part.state);
            part.whole_next = false;
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
        inputs,
        states,
        deltas,
        tpl,
    })
}

/// Whether a partition's next save must be whole: it has no whole snapshot with a chain
/// id yet (new, restored from an older processor's or a backfill's), was changed outside
/// its input, or its deltas reached the configured count or share of the whole one.
fn compaction_due(chain: &Chain, whole_next: bool, ctx: &RunCtx) -> bool {
    let limits = ctx.compaction;
    whole_next
        || chain.id == 0
        || chain.deltas >= limits.after_deltas
        || chain.delta_bytes as f64 > limits.delta_share * chain.base_bytes as f64
}

fn count_saved(ctx: &RunCtx, stage: &str, kind: &str, bytes: usize) {
    ctx.metrics
        .snapshots
        .with_label_values(&[stage, kind])
        .inc();
    ctx.metrics
        .snapshot_bytes
        .with_label_values(&[stage, kind])
        .inc_by(bytes as u64);
}

/// Enqueue one record on the producer, waiting while its queue is full (up to 30 s).
async fn enqueue(
    acks: &Arc<AckGroup>,
    producer: &GroupProducer,
    r: &Record,
) -> Result<(), ProcessorError> {
    let started = Instant::now();
    loop {
        let record_key = r.key.as_deref().map(str::as_bytes);
        match acks.send(producer, &r.topic, record_key, &r.payload, r.partition) {
            Ok(()) => return Ok(()),
            Err(e)
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                    && started.elapsed() < Duration::from_secs(30) =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(ProcessorError::Produce(e)),
        }
    }
}

/// The dead-letter record of a row ClickHouse refused for good: the row, the server's
/// reason, and the input offsets of the batch it came from (README, "Dead-letter topic").
fn rejected_record(
    dlq_topic: &str,
    scope: &str,
    inputs: &serde_json::Value,
    r: &Rejected,
) -> Record {
    let doc = serde_json::json!({
        "reason": "insert_rejected",
        "detail": r.error,
        "source": "processor",
        "table": r.table,
        "inputs": inputs,
        "scope": scope,
        "row": r.row,
    });
    Record {
        topic: dlq_topic.to_string(),
        key: None,
        partition: None,
        payload: doc.to_string().into_bytes(),
    }
}

/// Write a cut: records acknowledged, 2. rows (refused ones to the dead-letter topic,
/// acknowledged), then — once the previous cut's write has
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
    job.acks.wait().await.map_err(ProcessorError::Produce)?;
    let refused = job.batch.rows.write(&ctx.store, &job.scope).await?;
    if !refused.is_empty() {
        let acks = AckGroup::new();
        let producer = ctx.producer();
        for r in &refused {
            let record = rejected_record(&ctx.kafka.dlq_topic, &job.scope, &job.inputs, r);
            enqueue(&acks, &producer, &record).await?;
        }
        acks.wait().await.map_err(ProcessorError::Produce)?;
    }
    if let Some(after) = after {
        // The sender goes away unsent only when the earlier write failed or was dropped:
        // then this cut must not save or commit anything either.
        after.await.map_err(ProcessorError::EarlierWrite)?;
    }
    if !job.states.is_empty() || !job.deltas.is_empty() {
        // A partition's whole snapshot starts a new chain; its deltas name theirs, so
        // the two tables need no order between them (a partition is in one of them).
        if !job.states.is_empty() {
            ctx.store.write::<ProcessorState>(&job.states, None).await?;
        }
        if !job.deltas.is_empty() {
            ctx.store
                .write::<ProcessorStateDelta>(&job.deltas, None)
                .await?;
        }
        if job.tpl.count() > 0 {
            // Advisory: the snapshot is the source of truth; a failed commit (e.g. the
            // partition moved in a rebalance) only means a longer skip-replay next time.
            if let Err(e) = consumer.commit(&job.tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "offset commit failed");
            }
        }
    }
    ctx.health.progressed();
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
}
