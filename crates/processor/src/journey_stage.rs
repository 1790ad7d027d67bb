//! Stage 2: sessions, journeys and funnels, partitioned by customer id
//! (`touchpoints.by_customer`).
//!
//! Reads routed JSON from stage 1; writes `touchpoint_journey`, `sessions` and
//! `funnel_attempts`; counts funnel outcomes per step for Prometheus. Its input is
//! repartitioned, so event times from different identity partitions interleave; the
//! watermark is therefore the minimum of the identity partitions' watermarks, which they
//! send in-band ([`Routed::Watermark`]), not the newest event time seen here.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use touchstream_journey::{
    Catalog, FunnelSet, JourneyConfig, JourneyCounters, JourneyEvent, JourneySnapshot,
    JourneyStage, MessageType, Outcome, RoutedEvent,
};

use crate::batch::Batch;
use crate::metrics::Metrics;
use crate::routed_codec::Routed;
use crate::runner::{Input, Stage};

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
    /// Metrics.
    pub metrics: Arc<Metrics>,
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
}

#[derive(Serialize, Deserialize)]
struct SavedJourney {
    engine: JourneySnapshot,
    sources: BTreeMap<i32, i64>,
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
        JourneyState {
            engine: JourneyStage::new(
                self.config.clone(),
                self.catalog.clone(),
                self.funnels.clone(),
            ),
            counted: HashSet::new(),
            seen: JourneyCounters::default(),
            sources: BTreeMap::new(),
        }
    }

    fn restore(&self, json: &[u8]) -> Result<JourneyState, serde_json::Error> {
        let saved: SavedJourney = serde_json::from_slice(json)?;
        let engine = JourneyStage::from_snapshot(
            self.config.clone(),
            self.catalog.clone(),
            self.funnels.clone(),
            saved.engine,
        );
        // The restored totals were counted by the process that saved them.
        let seen = engine.counters().clone();
        Ok(JourneyState {
            engine,
            counted: HashSet::new(),
            seen,
            sources: saved.sources,
        })
    }

    fn snapshot<'a>(&'a self, state: &'a JourneyState) -> impl Serialize + 'a {
        SavedJourneyRef {
            engine: state.engine.snapshot_ref(),
            sources: &state.sources,
        }
    }

    fn handle(&self, state: &mut JourneyState, input: &Input<'_>, batch: &mut Batch) {
        match crate::routed_codec::decode(input.payload) {
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
            Err(e) => {
                self.metrics
                    .messages
                    .with_label_values(&["journey", "undecodable"])
                    .inc();
                batch
                    .records
                    .push(input.dlq(&self.dlq_topic, "undecodable", &e));
            }
        }
    }

    fn drain(&self, state: &mut JourneyState, partition: i32, batch: &mut Batch) {
        let out = state.engine.take_output();
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
        for a in out.attempts.iter().filter(|a| !a.is_deleted) {
            if !state.counted.insert(a.attempt_id.clone()) {
                continue;
            }
            if state.counted.len() >= MAX_COUNTED {
                state.counted.clear();
            }
            let funnel = a.funnel.as_str();
            self.metrics
                .funnel_attempts
                .with_label_values(&[funnel, a.outcome.as_str()])
                .inc();
            if let Some(first) = a.step_times_ms.first() {
                for (k, t) in a.step_times_ms.iter().enumerate().skip(1) {
                    self.metrics
                        .step_delay_seconds
                        .with_label_values(&[funnel, &(k + 1).to_string()])
                        .observe((t - first).max(0) as f64 / 1000.0);
                }
            }
            for step in 1..=a.reached_step {
                self.metrics
                    .funnel_step_reached
                    .with_label_values(&[funnel, &step.to_string()])
                    .inc();
            }
            match a.outcome {
                Outcome::Dropped => self
                    .metrics
                    .funnel_step_dropped
                    .with_label_values(&[funnel, &a.reached_step.to_string()])
                    .inc(),
                Outcome::Converted => self
                    .metrics
                    .funnel_converted
                    .with_label_values(&[funnel])
                    .inc(),
            }
        }
        batch.rows.funnel_attempts.extend(out.attempts);
        batch.rows.touchpoint_journey.extend(out.touchpoints);
        batch.rows.sessions.extend(out.sessions);
    }
}
impl Journey {
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
