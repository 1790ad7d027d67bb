//! Stage 2: sessions, journeys and funnels, partitioned by customer id
//! (`touchpoints.by_customer`).
//!
//! Reads routed JSON from stage 1; writes `touchpoint_journey`, `customer_touchpoints`, `sessions`,
//! `funnel_attempts` and `funnel_open_attempts`; counts funnel outcomes per step, and
//! open and overdue attempts per step, for Prometheus. Its input is
//! repartitioned, so event times from different identity partitions interleave; the
//! watermark is therefore the minimum of the identity partitions' watermarks, which they
//! send in-band ([`Routed::Watermark`]), not the newest event time seen here.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use touchstream_journey::{
    Catalog, FeedbackCounters, FunnelChangeKind, FunnelSet, JourneyConfig, JourneyCounters,
    JourneyDelta, JourneyDeltaRef, JourneyEvent, JourneySnapshot, JourneyStage, MessageType,
    OpenAttemptCount, Outcome, RoutedEvent, ALL,
};

use crate::batch::Batch;
use crate::metrics::Metrics;
use crate::routed_codec::Routed;
use crate::runner::{Input, Stage};
use crate::suppression::Suppression;

/// Stage 2 wiring.
pub struct Journey {
    /// `touchpoints.by_customer`.
    pub routed_topic: String,
    /// `touchpoints.dlq`.
    pub dlq_topic: String,
    /// Session gap, lateness, horizon.
    pub config: JourneyConfig,
    /// Touchpoint catalog.
    pub catalog: Catalog,
    /// Funnels.
    pub funnels: FunnelSet,
    /// Partitions of the identity stage's input (`touchpoints.raw`): the watermark waits
    /// for all of them.
    pub source_partitions: i32,
    /// `processor.open_attempt_overdue_shares`: the `share` labels of the overdue gauge.
    pub overdue_shares: Vec<f64>,
    /// Each held partition's open-attempt counts, summed into the gauges.
    pub open_counts: Arc<OpenCounts>,
    /// Erased people's ids: their events are dropped, their journeys forgotten.
    pub suppression: Arc<Suppression>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Open-attempt counts per journey partition this process holds, as of each partition's
/// last flush: the gauges are their sum, and a partition's entry goes with its state
/// (revoked or restarted), so a partition moved to another process is not counted twice.
#[derive(Debug, Default)]
pub struct OpenCounts(Mutex<BTreeMap<i32, Vec<OpenAttemptCount>>>);

/// A partition's entry in [`OpenCounts`], removed when its state is dropped.
struct OpenSlot {
    counts: Arc<OpenCounts>,
    partition: Option<i32>,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        if let Some(p) = self.partition {
            let mut all = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
            all.remove(&p);
        }
    }
}

/// Per-partition state: the engine plus metric bookkeeping (not snapshotted).
pub struct JourneyState {
    engine: JourneyStage,
    /// Attempts already counted in metrics (re-emitted rows are not counted twice).
    counted: HashSet<String>,
    /// Engine counters already added to the metrics.
    seen: JourneyCounters,
    /// Watermark of each identity-stage partition, ms.
    sources: BTreeMap<i32, i64>,
    /// This partition's open-attempt counts in the shared gauges' sum.
    open_slot: OpenSlot,
    /// When they were last counted ([`OPEN_GAUGE_INTERVAL`]).
    open_counted_at: Option<Instant>,
    /// The [`Suppression`] generation this state was last purged for.
    suppressed_gen: u64,
}

/// Open attempts are counted (a walk over every customer of the partition) at most this
/// often, not at every flush: gauges are scraped every few seconds at most.
const OPEN_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct SavedJourney {
    engine: JourneySnapshot,
    sources: BTreeMap<i32, i64>,
}

/// A partition's saved state JSON: the engine snapshot and the source watermarks.
pub(crate) fn decode_state(
    json: &[u8],
) -> Result<(JourneySnapshot, BTreeMap<i32, i64>), serde_json::Error> {
    let saved: SavedJourney = serde_json::from_slice(json)?;
    Ok((saved.engine, saved.sources))
}

/// What [`decode_state`] reads, for an engine and its source watermarks.
pub(crate) fn encode_state<'a>(
    engine: &'a JourneyStage,
    sources: &'a BTreeMap<i32, i64>,
) -> impl Serialize + 'a {
    SavedJourneyRef {
        engine: engine.snapshot_ref(),
        sources,
    }
}

/// A partition's delta: the engine's changes and the source watermarks.
#[derive(Deserialize)]
struct SavedJourneyDelta {
    engine: JourneyDelta,
    sources: BTreeMap<i32, i64>,
}

/// [`SavedJourneyDelta`] as written.
#[derive(Serialize)]
struct SavedJourneyDeltaRef<'a> {
    engine: JourneyDeltaRef<'a>,
    sources: &'a BTreeMap<i32, i64>,
}

/// A partition's saved state JSON and its deltas' JSON, oldest first, as one snapshot.
pub(crate) fn decode_state_deltas(
    json: &[u8],
    deltas: &[Vec<u8>],
) -> Result<(JourneySnapshot, BTreeMap<i32, i64>), serde_json::Error> {
    let (mut engine, mut sources) = decode_state(json)?;
    for d in deltas {
        let delta: SavedJourneyDelta = serde_json::from_slice(d)?;
        engine.apply(delta.engine);
        sources = delta.sources;
    }
    Ok((engine, sources))
}

/// [`SavedJourney`] as written: the engine serialized in place, not copied first.
#[derive(Serialize)]
struct SavedJourneyRef<'a> {
    engine: touchstream_journey::JourneySnapshotRef<'a>,
    sources: &'a BTreeMap<i32, i64>,
}

/// Bound on remembered attempt ids; past it the set restarts (a rare double count).
const MAX_COUNTED: usize = 1_000_000;

impl Stage for Journey {
    type State = JourneyState;

    fn name(&self) -> &'static str {
        "journey"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.routed_topic.clone()]
    }

    fn new_state(&self) -> JourneyState {
        let mut engine = JourneyStage::new(
            self.config.clone(),
            self.catalog.clone(),
            self.funnels.clone(),
        );
        engine.track_changes();
        JourneyState {
            engine,
            counted: HashSet::new(),
            seen: JourneyCounters::default(),
            sources: BTreeMap::new(),
            open_slot: self.open_slot(),
            open_counted_at: None,
            suppressed_gen: 0,
        }
    }

    fn restore(&self, json: &[u8]) -> Result<JourneyState, serde_json::Error> {
        self.restore_deltas(json, &[])
    }

    fn restore_deltas(
        &self,
        json: &[u8],
        deltas: &[Vec<u8>],
    ) -> Result<JourneyState, serde_json::Error> {
        let (snapshot, sources) = decode_state_deltas(json, deltas)?;
        let mut engine = JourneyStage::from_snapshot(
            self.config.clone(),
            self.catalog.clone(),
            self.funnels.clone(),
            snapshot,
        );
        engine.track_changes();
        for change in engine.funnel_changes() {
            let kind = change.kind.as_str();
            match change.kind {
                FunnelChangeKind::Changed | FunnelChangeKind::Removed => tracing::warn!(
                    funnel = %change.funnel,
                    change = kind,
                    "funnel definition differs from the saved state: its saved attempts and \
                     step matches were dropped; `touchstream funnels backfill` recomputes it \
                     (README, Funnels)"
                ),
                FunnelChangeKind::Added | FunnelChangeKind::Moved => tracing::info!(
                    funnel = %change.funnel,
                    change = kind,
                    "funnel definition differs from the saved state"
                ),
            }
            self.metrics
                .funnel_definition_changes
                .with_label_values(&[&change.funnel, kind])
                .inc();
        }
        // The restored totals were counted by the process that saved them.
        let seen = engine.counters().clone();
        Ok(JourneyState {
            engine,
            counted: HashSet::new(),
            seen,
            sources,
            open_slot: self.open_slot(),
            open_counted_at: None,
            suppressed_gen: 0,
        })
    }

    fn snapshot<'a>(&'a self, state: &'a JourneyState) -> impl Serialize + 'a {
        SavedJourneyRef {
            engine: state.engine.snapshot_ref(),
            sources: &state.sources,
        }
    }

    fn delta<'a>(&'a self, state: &'a JourneyState) -> Option<impl Serialize + 'a> {
        Some(SavedJourneyDeltaRef {
            engine: state.engine.delta_ref()?,
            sources: &state.sources,
        })
    }

    fn saved(&self, state: &mut JourneyState) {
        state.engine.mark_saved();
    }

    fn inputs_in(&self, input: &Input<'_>) -> usize {
        crate::routed_codec::values_in(input.payload)
    }

    fn handle(&self, state: &mut JourneyState, input: &Input<'_>, batch: &mut Batch) {
        // A pack: each value in turn, as if it had been a record of its own at this
        // offset (README "Processor state", packed routed records).
        if let Some(pack) = crate::routed_codec::unpack(input.payload) {
            for payload in pack.values {
                self.handle_one(state, &Input { payload, ..*input }, batch);
            }
            // A frame that stopped adding up (corruption): what follows the break goes to
            // the DLQ, after the values before it were handled.
            if let Some((why, rest)) = pack.broken {
                let rest = Input {
                    payload: rest,
                    ..*input
                };
                self.undecodable(&rest, &why, batch);
            }
            return;
        }
        self.handle_one(state, input, batch);
    }

    fn refresh(&self, state: &mut JourneyState) -> bool {
        let generation = self.suppression.generation();
        if generation == state.suppressed_gen {
            return false;
        }
        state.suppressed_gen = generation;
        let mut changed = false;
        for id in self.suppression.ids().iter() {
            changed |= state.engine.erase(id);
        }
        changed
    }

    fn drain(&self, state: &mut JourneyState, partition: i32, batch: &mut Batch) {
        // The rows go straight into the batch's lists (no second copy per row).
        let first_attempt = batch.rows.funnel_attempts.len();
        batch
            .rows
            .lend_journey(|out| state.engine.take_output_into(out));
        export_counters(&self.metrics, state.engine.counters(), &mut state.seen);
        let label = partition.to_string();
        if let Some(w) = state.engine.watermark_ms() {
            self.metrics
                .watermark_seconds
                .with_label_values(&[&label])
                .set(w / 1000);
        }
        self.metrics
            .buffered_events
            .with_label_values(&[&label])
            .set(i64::try_from(state.engine.buffered_events()).unwrap_or(i64::MAX));
        for a in batch.rows.funnel_attempts[first_attempt..]
            .iter()
            .filter(|a| !a.is_deleted)
        {
            if !state.counted.insert(a.attempt_id.clone()) {
                continue;
            }
            if state.counted.len() >= MAX_COUNTED {
                state.counted.clear();
            }
            let funnel = a.funnel.as_str();
            // The bounded `breakdown` label (README "Funnels", Breakdowns): `all` without
            // breakdown, else allow-listed values or `other`, per the attribution.
            let def = self.funnels.funnels().iter().find(|f| f.name == a.funnel);
            let label = |step: usize| {
                def.map_or_else(
                    || ALL.to_owned(),
                    |f| f.step_breakdown_label(&a.breakdown_values, step),
                )
            };
            let last = label(usize::from(a.reached_step));
            self.metrics
                .funnel_attempts
                .with_label_values(&[funnel, a.outcome.as_str(), &last])
                .inc();
            // An excluded attempt left the funnel: it reached no step and dropped at none
            // as far as drop-off is concerned (README "Processor metrics").
            if a.outcome == Outcome::Excluded {
                continue;
            }
            // Steps reached, 1-based, with their times: a skipped optional step has an
            // empty event id and is neither reached nor timed.
            let reached = || {
                a.step_event_ids
                    .iter()
                    .zip(&a.step_times_ms)
                    .enumerate()
                    .filter(|(_, (id, _))| !id.is_empty())
                    .map(|(k, (_, t))| (k + 1, *t))
            };
            if let Some(first) = a.step_times_ms.first() {
                for (step, t) in reached().skip(1) {
                    self.metrics
                        .step_delay_seconds
                        .with_label_values(&[funnel, &step.to_string()])
                        .observe((t - first).max(0) as f64 / 1000.0);
                }
            }
            for (step, _) in reached() {
                self.metrics
                    .funnel_step_reached
                    .with_label_values(&[funnel, &step.to_string(), &label(step)])
                    .inc();
            }
            match a.outcome {
                Outcome::Dropped => self
                    .metrics
                    .funnel_step_dropped
                    .with_label_values(&[funnel, &a.reached_step.to_string(), &last])
                    .inc(),
                Outcome::Converted => self
                    .metrics
                    .funnel_converted
                    .with_label_values(&[funnel, &last])
                    .inc(),
                Outcome::Excluded => {}
            }
        }
        self.open_gauges(state, partition);
    }
}
impl Journey {
    /// Count `input` as undecodable and send it to the DLQ with `why`.
    fn undecodable(&self, input: &Input<'_>, why: &str, batch: &mut Batch) {
        self.metrics
            .messages
            .with_label_values(&["journey", "undecodable"])
            .inc();
        batch
            .records
            .push(input.dlq(&self.dlq_topic, "undecodable", why));
    }

    fn handle_one(&self, state: &mut JourneyState, input: &Input<'_>, batch: &mut Batch) {
        let decoded = crate::routed_codec::decode(input.payload);
        if self.erased(&decoded) {
            self.metrics
                .suppressed_events
                .with_label_values(&["journey"])
                .inc();
            return;
        }
        match decoded {
            Ok(Routed::Event(e)) => {
                self.count_touchpoint(&e);
                state.engine.process(e, input.seq);
            }
            Ok(Routed::EventFrom(e, origin)) => {
                // Counted only when new: a copy re-sent by a restarted identity partition
                // is skipped by the engine.
                let counted = (!e.reattributed).then(|| Arc::clone(&e.event));
                if state.engine.process_from(e, input.seq, origin) {
                    if let Some(event) = counted {
                        self.count_touchpoint_event(&event);
                    }
                }
            }
            Ok(Routed::Retract(r)) => state.engine.retract(&r, input.seq),
            Ok(Routed::Watermark {
                source_partition,
                watermark_ms,
            }) => {
                // An identity partition's drain sends it after the events of its cut, so a
                // re-attributed run ends here at the latest.
                state.engine.end_run();
                let w = state
                    .sources
                    .entry(source_partition)
                    .or_insert(watermark_ms);
                *w = (*w).max(watermark_ms);
                let all = i32::try_from(state.sources.len()).unwrap_or(i32::MAX)
                    >= self.source_partitions;
                if let (true, Some(min)) = (all, state.sources.values().min()) {
                    state.engine.advance_watermark(*min, input.seq);
                }
            }
            Err(e) => self.undecodable(input, &e, batch),
        }
    }

    fn open_slot(&self) -> OpenSlot {
        OpenSlot {
            counts: Arc::clone(&self.open_counts),
            partition: None,
        }
    }

    /// Count the partition's open attempts at its release frontier and set the gauges to
    /// the sum over the partitions held: every funnel, every step an attempt can be open
    /// at (all but the last) and every configured share, 0 when none, so the series are
    /// bounded by configuration and an alert sees 0 rather than nothing.
    fn open_gauges(&self, state: &mut JourneyState, partition: i32) {
        if state
            .open_counted_at
            .is_some_and(|at| at.elapsed() < OPEN_GAUGE_INTERVAL)
        {
            return;
        }
        state.open_counted_at = Some(Instant::now());
        let shares = &self.overdue_shares;
        let counts = state.engine.open_attempts(shares);
        state.open_slot.partition = Some(partition);
        let funnels = self.funnels.funnels();
        let mut totals: Vec<Vec<(u64, Vec<u64>)>> = funnels
            .iter()
            .map(|f| vec![(0, vec![0; shares.len()]); f.steps.len().saturating_sub(1)])
            .collect();
        {
            let mut all = self
                .open_counts
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            all.insert(partition, counts);
            for c in all.values().flatten() {
                let step = usize::from(c.step).saturating_sub(1);
                let Some(total) = totals.get_mut(c.funnel).and_then(|f| f.get_mut(step)) else {
                    continue;
                };
                total.0 += c.open;
                for (sum, n) in total.1.iter_mut().zip(&c.overdue) {
                    *sum += n;
                }
            }
        }
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (funnel, steps) in funnels.iter().zip(&totals) {
            for (i, (open, overdue)) in steps.iter().enumerate() {
                let step = (i + 1).to_string();
                self.metrics
                    .funnel_open_attempts
                    .with_label_values(&[&funnel.name, &step])
                    .set(gauge(*open));
                for (share, n) in shares.iter().zip(overdue) {
                    self.metrics
                        .funnel_open_attempts_overdue
                        .with_label_values(&[&funnel.name, &step, &share.to_string()])
                        .set(gauge(*n));
                }
            }
        }
    }

    /// The touchpoints metric for an event arriving at the stage (re-attributed copies
    /// are not counted: their event was counted under the anonymous id).
    fn count_touchpoint(&self, e: &RoutedEvent) {
        if !e.reattributed {
            self.count_touchpoint_event(&e.event);
        }
    }

    fn count_touchpoint_event(&self, event: &JourneyEvent) {
        let tp = self.catalog.classify(event);
        let name = match event.kind {
            MessageType::Track => event
                .event
                .as_deref()
                .filter(|n| self.catalog.events.contains_key(*n))
                .unwrap_or("other"),
            kind => kind.as_str(),
        };
        self.metrics
            .touchpoints
            .with_label_values(&[name, tp.stage.as_str(), tp.channel.as_str()])
            .inc();
    }
}

/// Add to the metrics what the engine's counters gained since `seen` (the engine's
/// counters are totals, restored with its snapshot).
fn export_counters(m: &Metrics, counters: &JourneyCounters, seen: &mut JourneyCounters) {
    let late = |cause| m.late_events.with_label_values(&["journey", cause]);
    add_since(
        &late("beyond_horizon"),
        counters.late_beyond_horizon,
        &mut seen.late_beyond_horizon,
    );
    add_since(
        &late("before_checkpoint"),
        counters.late_before_checkpoint,
        &mut seen.late_before_checkpoint,
    );
    add_since(
        &late("reattributed_too_old"),
        counters.reattributed_too_old,
        &mut seen.reattributed_too_old,
    );
    add_since(
        &m.placed_events.with_label_values(&["journey"]),
        counters.placed_events,
        &mut seen.placed_events,
    );
    add_since(
        &m.corrected_events.with_label_values(&["journey"]),
        counters.corrected_events,
        &mut seen.corrected_events,
    );
    add_since(
        &m.redelivered_events.with_label_values(&["journey"]),
        counters.redelivered,
        &mut seen.redelivered,
    );
    add_since(
        &m.hot_customer_events.with_label_values(&["journey"]),
        counters.hot_customer_events,
        &mut seen.hot_customer_events,
    );
    export_feedback(m, &counters.feedback, &mut seen.feedback);
}

/// The feedback tallies' growth since `seen` (README "Feedback attribution").
fn export_feedback(m: &Metrics, now: &FeedbackCounters, seen: &mut FeedbackCounters) {
    let outcome = |o| m.feedback_attribution.with_label_values(&[o]);
    add_since(
        &outcome("unattributed"),
        now.unattributed,
        &mut seen.unattributed,
    );
    add_since(
        &outcome("reattributed"),
        now.reattributed,
        &mut seen.reattributed,
    );
    seen.answers = now.answers;
    for (touchpoint, scales) in &now.by_touchpoint {
        let seen_scales = seen.by_touchpoint.entry(touchpoint.clone()).or_default();
        for (scale, t) in scales {
            let s = seen_scales.entry(scale.clone()).or_default();
            let labels = [touchpoint.as_str(), scale.as_str()];
            add_since(
                &m.feedback_responses.with_label_values(&labels),
                t.responses,
                &mut s.responses,
            );
            if t.score_millis > s.score_millis {
                m.feedback_score_sum
                    .with_label_values(&labels)
                    .inc_by((t.score_millis - s.score_millis) as f64 / 1000.0);
                s.score_millis = t.score_millis;
            }
            add_since(
                &m.feedback_promoters.with_label_values(&[touchpoint]),
                t.promoters,
                &mut s.promoters,
            );
            add_since(
                &m.feedback_detractors.with_label_values(&[touchpoint]),
                t.detractors,
                &mut s.detractors,
            );
        }
    }
}

impl Journey {
    /// Whether a routed record belongs to an erased person (its customer, or any id its
    /// event carries).
    fn erased(&self, routed: &Result<Routed, String>) -> bool {
        match routed {
            Ok(Routed::Event(e) | Routed::EventFrom(e, _)) => self.suppression.any([
                Some(e.customer_id.as_str()),
                e.event.anonymous_id.as_deref(),
                e.event.user_id.as_deref(),
                e.event.previous_id.as_deref(),
            ]),
            Ok(Routed::Retract(r)) => self.suppression.any([Some(r.customer_id.as_str())]),
            _ => false,
        }
    }
}

/// Add to `counter` what the engine's `total` gained since `seen`.
fn add_since(counter: &prometheus::IntCounter, total: u64, seen: &mut u64) {
    if total > *seen {
        counter.inc_by(total - *seen);
        *seen = total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_events_are_exported_by_cause_and_only_once() {
        let m = Metrics::new().expect("metrics");
        // Restored totals were exported by the process that saved them.
        let mut seen = JourneyCounters {
            late_beyond_horizon: 2,
            placed_events: 10,
            ..JourneyCounters::default()
        };
        let counters = JourneyCounters {
            late_events: 4,
            late_beyond_horizon: 3,
            late_before_checkpoint: 1,
            reattributed_too_old: 5,
            placed_events: 17,
            corrected_events: 6,
            redelivered: 8,
            ..JourneyCounters::default()
        };
        export_counters(&m, &counters, &mut seen);
        export_counters(&m, &counters, &mut seen);
        let text = m.render();
        for line in [
            r#"touchstream_processor_late_events_total{cause="beyond_horizon",stage="journey"} 1"#,
            r#"touchstream_processor_late_events_total{cause="before_checkpoint",stage="journey"} 1"#,
            r#"touchstream_processor_late_events_total{cause="reattributed_too_old",stage="journey"} 5"#,
            r#"touchstream_processor_placed_events_total{stage="journey"} 7"#,
            r#"touchstream_processor_corrected_events_total{stage="journey"} 6"#,
            r#"touchstream_processor_redelivered_events_total{stage="journey"} 8"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
