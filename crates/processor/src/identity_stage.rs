//! Stage 1: identity stitching, partitioned by the Kafka key of `touchpoints.raw`
//! (anonymous id when present) and co-partitioned with `touchpoints.aliases`.
//!
//! Reads Avro touchpoints; writes the raw `events` rows, `identities` and
//! `identity_conflicts`; routes every event to `touchpoints.by_customer` keyed by its
//! customer id (re-sending earlier anonymous events when a link appears). An alias without
//! `anonymousId` sits in its userId's partition, so it is forwarded to
//! `touchpoints.aliases` keyed by `previousId`, where the owner of that id links it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use touchstream_core::{avro, MessageType};
use touchstream_journey::{
    IdentityConfig, IdentityCounters, IdentityOutput, IdentitySnapshot, IdentityStage,
    JourneyEvent, Origin, RoutedEvent,
};

use crate::batch::{Batch, Record};
use crate::metrics::Metrics;
use crate::routed_codec::Routed;
use crate::runner::{Input, Stage};
use crate::suppression::Suppression;
use crate::tables::events::EventRow;

/// Stage 1 wiring.
pub struct Identity {
    /// `touchpoints.raw`.
    pub raw_topic: String,
    /// `touchpoints.aliases`.
    pub aliases_topic: String,
    /// `touchpoints.by_customer`.
    pub routed_topic: String,
    /// `touchpoints.dlq`.
    pub dlq_topic: String,
    /// Limits of the stage.
    pub config: IdentityConfig,
    /// Partitions of `touchpoints.by_customer` (watermarks go to each).
    pub routed_partitions: i32,
    /// Idle time after which the partition's watermark follows the wall clock.
    pub idle_watermark: Option<Duration>,
    /// Erased people's ids: their events are dropped, their links forgotten.
    pub suppression: Arc<Suppression>,
    /// Where links that left memory are looked up again (`identities`); `None` treats
    /// them as gone (tests without a server).
    pub links_from: Option<clickhouse::Client>,
    /// How often unused links are looked for ([`IdentityStage::expire_links`]).
    pub link_sweep: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Per-partition state: links and history, plus the partition's event-time watermark.
pub struct IdentityState {
    identity: IdentityStage,
    /// Newest event time routed from this partition, ms.
    watermark_ms: Option<i64>,
    /// Last watermark sent downstream (not saved: resent after a restart).
    sent_ms: Option<i64>,
    /// The stage's counters as last exported to the metrics (restored totals were
    /// exported by the process that saved them).
    exported: IdentityCounters,
    /// The [`Suppression`] generation this state was last purged for.
    suppressed_gen: u64,
    /// When unused links were last looked for.
    link_sweep_at: std::time::Instant,
}

#[derive(Serialize, Deserialize)]
struct SavedIdentity {
    identity: IdentitySnapshot,
    watermark_ms: Option<i64>,
}

/// A partition's delta (README "Processor state"): the stage's changes and the
/// watermark.
#[derive(Deserialize)]
struct SavedIdentityDelta {
    identity: touchstream_journey::IdentityDelta,
    watermark_ms: Option<i64>,
}

/// [`SavedIdentityDelta`] as written.
#[derive(Serialize)]
struct SavedIdentityDeltaRef<'a> {
    identity: touchstream_journey::IdentityDeltaRef<'a>,
    watermark_ms: Option<i64>,
}

/// [`SavedIdentity`] as written: the stage serialized in place, not copied first.
#[derive(Serialize)]
struct SavedIdentityRef<'a> {
    identity: touchstream_journey::IdentitySnapshotRef<'a>,
    watermark_ms: Option<i64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Stage for Identity {
    type State = IdentityState;

    fn name(&self) -> &'static str {
        "identity"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.raw_topic.clone(), self.aliases_topic.clone()]
    }

    fn new_state(&self) -> IdentityState {
        let mut identity = IdentityStage::new(self.config.clone());
        identity.track_changes();
        IdentityState {
            identity,
            watermark_ms: None,
            sent_ms: None,
            exported: IdentityCounters::default(),
            suppressed_gen: 0,
            link_sweep_at: std::time::Instant::now(),
        }
    }

    fn restore(&self, json: &[u8]) -> Result<IdentityState, serde_json::Error> {
        self.restore_deltas(json, &[])
    }

    fn restore_deltas(
        &self,
        json: &[u8],
        deltas: &[Vec<u8>],
    ) -> Result<IdentityState, serde_json::Error> {
        let mut saved: SavedIdentity = serde_json::from_slice(json)?;
        for d in deltas {
            let delta: SavedIdentityDelta = serde_json::from_slice(d)?;
            saved.identity.apply(delta.identity);
            saved.watermark_ms = delta.watermark_ms;
        }
        // The saved totals were exported by the process that saved them; evictions by a
        // smaller budget at restore happen here and are exported at the next drain.
        let exported = saved.identity.counters().clone();
        let mut identity = IdentityStage::from_snapshot(self.config.clone(), saved.identity);
        identity.track_changes();
        Ok(IdentityState {
            identity,
            watermark_ms: saved.watermark_ms,
            sent_ms: None,
            exported,
            suppressed_gen: 0,
            link_sweep_at: std::time::Instant::now(),
        })
    }

    fn snapshot<'a>(&'a self, state: &'a IdentityState) -> impl Serialize + 'a {
        SavedIdentityRef {
            identity: state.identity.snapshot_ref(),
            watermark_ms: state.watermark_ms,
        }
    }

    fn delta<'a>(&'a self, state: &'a IdentityState) -> Option<impl Serialize + 'a> {
        Some(SavedIdentityDeltaRef {
            identity: state.identity.delta_ref()?,
            watermark_ms: state.watermark_ms,
        })
    }

    fn saved(&self, state: &mut IdentityState) {
        state.identity.mark_saved();
    }

    fn handle(&self, state: &mut IdentityState, input: &Input<'_>, batch: &mut Batch) {
        let (topic, partition, offset) = (input.topic, input.partition, input.offset);
        let tp = match avro::decode(input.payload) {
            Ok(tp) => tp,
            Err(e) => {
                self.metrics
                    .messages
                    .with_label_values(&["identity", "undecodable"])
                    .inc();
                tracing::warn!(topic, partition, offset, error = %e, "undecodable record sent to the DLQ");
                batch
                    .records
                    .push(input.dlq(&self.dlq_topic, "undecodable", &e.to_string()));
                return;
            }
        };
        // An erased person's event (a replay, a late copy) is never stored again.
        if self.suppression.any([
            tp.anonymous_id.as_deref(),
            tp.user_id.as_deref(),
            tp.previous_id.as_deref(),
        ]) {
            self.metrics
                .suppressed_events
                .with_label_values(&["identity"])
                .inc();
            return;
        }
        // A time far past its receipt (only another producer could write one) must not drag
        // the watermark into the future and make every later event late.
        let t = tp.event_time_ms.min(
            tp.received_at_ms
                .saturating_add(touchstream_core::event::MAX_FUTURE_MS),
        );
        state.watermark_ms = Some(state.watermark_ms.map_or(t, |w| w.max(t)));
        let event = JourneyEvent::from(&tp);
        // A returning anonymous id whose link left memory: look it up again before the
        // event is routed or links anything, so the first link still wins.
        for id in [event.anonymous_id.as_deref(), event.previous_id.as_deref()]
            .into_iter()
            .flatten()
        {
            if state.identity.needs_lookup(id) {
                let user = self.links_from.as_ref().and_then(|c| stored_link(c, id));
                state.identity.restore_link(id, user.as_deref());
            }
        }
        // Each routed event says where it comes from (this topic partition, this input's
        // offset, its place among the input's routed records), so that the journey stage
        // recognises the copies this partition re-sends after restarting from its saved
        // state (docs/design.md §4, Crashes and copies).
        let source = u32::try_from(partition).unwrap_or_default() * 2
            + u32::from(topic == self.aliases_topic);
        let position = u64::try_from(offset).unwrap_or_default();
        let mut index = 0;
        let mut origin = || {
            let o = Origin {
                source,
                position,
                index,
            };
            index += 1;
            o
        };
        if topic == self.raw_topic {
            let alias_ids = (tp.message_type == MessageType::Alias && tp.anonymous_id.is_none())
                .then(|| (tp.previous_id.clone(), tp.user_id.clone()));
            // The row takes the touchpoint's strings; `event` has its own copies.
            batch.rows.events.push(EventRow::new(tp, partition, offset));
            if let Some((Some(prev), Some(user))) = alias_ids {
                // The alias event is the user's touchpoint: route it now, in order with
                // the user's other events. The link itself is decided by the owner of
                // previousId, which gets the alias through the aliases topic.
                push_routed(
                    batch,
                    self.routed_partitions,
                    &self.routed_topic,
                    &Routed::EventFrom(
                        RoutedEvent {
                            customer_id: user,
                            event: event.into(),
                            version: input.seq,
                            reattributed: false,
                        },
                        origin(),
                    ),
                );
                batch.records.push(Record {
                    topic: self.aliases_topic.clone(),
                    key: Some(prev),
                    partition: None,
                    payload: input.payload.to_vec(),
                });
                return;
            }
        }
        // An alias forwarded from its userId's partition: that partition routed it already.
        let forwarded = (topic == self.aliases_topic).then(|| event.event_id.clone());
        for out in state.identity.process(event, input.seq) {
            match out {
                IdentityOutput::Event(routed)
                    if !routed.reattributed
                        && forwarded.as_deref() == Some(routed.event.event_id.as_str()) => {}
                IdentityOutput::Event(routed) => {
                    let routed = Routed::EventFrom(routed, origin());
                    push_routed(batch, self.routed_partitions, &self.routed_topic, &routed);
                }
                IdentityOutput::Retract(r) => {
                    let routed = Routed::Retract(r);
                    push_routed(batch, self.routed_partitions, &self.routed_topic, &routed);
                }
                IdentityOutput::Link(link) => batch.rows.identities.push(link),
                IdentityOutput::Conflict(c) => {
                    self.metrics
                        .identity_conflicts
                        .with_label_values(&["identity"])
                        .inc();
                    batch.rows.identity_conflicts.push(c);
                }
                IdentityOutput::Rejected { event, reason } => {
                    let detail = format!("{reason:?} (event {})", event.event_id);
                    batch
                        .records
                        .push(input.dlq(&self.dlq_topic, "rejected_identity", &detail));
                }
            }
        }
    }

    fn refresh(&self, state: &mut IdentityState) -> bool {
        let mut changed = false;
        if state.link_sweep_at.elapsed() >= self.link_sweep {
            state.link_sweep_at = std::time::Instant::now();
            changed |= state.identity.expire_links() > 0;
        }
        let generation = self.suppression.generation();
        if generation == state.suppressed_gen {
            return changed;
        }
        state.suppressed_gen = generation;
        state.identity.erase(&self.suppression.ids()) || changed
    }

    fn drain(&self, state: &mut IdentityState, partition: i32, batch: &mut Batch) {
        export_counters(
            &self.metrics,
            state.identity.counters(),
            &mut state.exported,
        );
        self.metrics
            .identity_links
            .with_label_values(&[&partition.to_string()])
            .set(i64::try_from(state.identity.link_count()).unwrap_or(i64::MAX));
        self.metrics
            .unlinked_history_bytes
            .with_label_values(&[&partition.to_string()])
            .set(i64::try_from(state.identity.unlinked_history_bytes()).unwrap_or(i64::MAX));
        let Some(w) = state.watermark_ms else {
            return;
        };
        if state.sent_ms == Some(w) {
            return;
        }
        // After this partition's events, so each journey partition sees them first.
        // Encoded once by the codec that writes every routed value, copied per partition.
        let payload = crate::routed_codec::encode(&Routed::Watermark {
            source_partition: partition,
            watermark_ms: w,
        });
        for p in 0..self.routed_partitions {
            batch.pack(&self.routed_topic, p, &payload);
        }
        state.sent_ms = Some(w);
    }

    fn idle_after(&self) -> Option<Duration> {
        self.idle_watermark
    }

    fn idle(&self, state: &mut IdentityState, idle: Duration, _seq: u64) -> bool {
        match self.idle_watermark {
            Some(limit) if idle >= limit => {
                let now = now_ms();
                if state.watermark_ms.is_some_and(|w| w >= now) {
                    return false;
                }
                state.watermark_ms = Some(now);
                true
            }
            _ => false,
        }
    }
}

/// Add to the identity metrics what the stage's totals gained since last exported.
fn export_counters(m: &Metrics, counters: &IdentityCounters, seen: &mut IdentityCounters) {
    let add = |counter: &prometheus::IntCounterVec, total: u64, seen: &mut u64| {
        if total > *seen {
            counter
                .with_label_values(&["identity"])
                .inc_by(total - *seen);
            *seen = total;
        }
    };
    add(
        &m.reattributed_events,
        counters.reattributed_events,
        &mut seen.reattributed_events,
    );
    add(
        &m.reattribution_skipped,
        counters.reattribution_skipped,
        &mut seen.reattribution_skipped,
    );
    add(
        &m.histories_expired,
        counters.histories_expired,
        &mut seen.histories_expired,
    );
    add(
        &m.links_evicted,
        counters.links_evicted,
        &mut seen.links_evicted,
    );
    add(
        &m.links_restored,
        counters.links_restored,
        &mut seen.links_restored,
    );
    add(
        &m.histories_evicted,
        counters.histories_evicted,
        &mut seen.histories_evicted,
    );
}

#[derive(clickhouse::Row, Deserialize)]
struct StoredLink {
    user_id: String,
}

/// The stored link of `anonymous_id` (`identities`), for a link that left memory. The
/// stage is synchronous, so this runs the query on a thread of its own; it is rare (an
/// id back after `identity_link_ttl_days`). Retried for a minute while ClickHouse is
/// away, then the stage fails and restarts from its snapshot (deciding without the link
/// could let a second link win).
fn stored_link(client: &clickhouse::Client, anonymous_id: &str) -> Option<String> {
    let query = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(
            client
                .query("SELECT user_id FROM identities FINAL WHERE anonymous_id = ? LIMIT 1")
                .bind(anonymous_id)
                .fetch_optional::<StoredLink>(),
        )
        .map_err(|e| e.to_string())
    };
    for attempt in 0..60 {
        match std::thread::scope(|s| s.spawn(query).join()) {
            Ok(Ok(link)) => return link.map(|l| l.user_id),
            Ok(Err(e)) => {
                tracing::warn!(attempt, error = %e, "looking up an evicted identity link failed; retrying")
            }
            Err(_) => tracing::warn!(
                attempt,
                "looking up an evicted identity link panicked; retrying"
            ),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("identity link lookup failed for a minute; restarting the stage");
}

/// Add `routed` (an event or a retraction) to the pack of its customer's
/// `touchpoints.by_customer` partition, the one librdkafka would pick for the customer id
/// as key ([`crate::routed_codec::partition_for`]).
fn push_routed(batch: &mut Batch, partitions: i32, topic: &str, routed: &Routed) {
    let customer = match routed {
        Routed::Event(e) | Routed::EventFrom(e, _) => e.customer_id.as_str(),
        Routed::Retract(r) => r.customer_id.as_str(),
        Routed::Watermark { .. } => "",
    };
    let partition = crate::routed_codec::partition_for(customer, partitions);
    batch.pack_with(topic, partition, |buf| {
        crate::routed_codec::encode_into(routed, buf)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touchpoint(id: &str, anon: &str, t: i64) -> touchstream_core::Touchpoint {
        touchstream_core::Touchpoint {
            event_id: id.to_string(),
            message_type: MessageType::Track,
            event: Some("Product Viewed".into()),
            anonymous_id: Some(anon.to_string()),
            user_id: None,
            previous_id: None,
            event_time_ms: t,
            timestamp_ms: Some(t),
            sent_at_ms: None,
            received_at_ms: t,
            source: "web".into(),
            channel: "web".into(),
            properties: "{}".into(),
            traits: "{}".into(),
            context: "{}".into(),
            ip: None,
            user_agent: None,
            extra: "{}".into(),
        }
    }

    #[test]
    fn evictions_and_history_bytes_are_exported_once() {
        let metrics = Metrics::new().expect("metrics");
        let one = touchstream_journey::approx_event_bytes(&JourneyEvent::from(&touchpoint(
            "web:m-00", "anon-00", 0,
        )));
        let stage = Identity {
            raw_topic: "raw".into(),
            aliases_topic: "aliases".into(),
            routed_topic: "routed".into(),
            dlq_topic: "dlq".into(),
            config: IdentityConfig {
                max_unlinked_history_bytes: one * 5,
                ..IdentityConfig::default()
            },
            routed_partitions: 1,
            idle_watermark: None,
            suppression: Arc::default(),
            links_from: None,
            link_sweep: Duration::from_secs(60),
            metrics: metrics.clone(),
        };
        let mut state = stage.new_state();
        let mut batch = Batch::default();
        for i in 0..8 {
            let payload = avro::encode(&touchpoint(
                &format!("web:m-{i:02}"),
                &format!("anon-{i:02}"),
                i * 1000,
            ))
            .expect("encode");
            let input = Input {
                topic: "raw",
                partition: 0,
                offset: i,
                payload: &payload,
                seq: i as u64 + 1,
            };
            stage.handle(&mut state, &input, &mut batch);
        }
        stage.drain(&mut state, 0, &mut batch);
        stage.drain(&mut state, 0, &mut batch);
        let evicted = metrics
            .histories_evicted
            .with_label_values(&["identity"])
            .get();
        assert_eq!(evicted, 3, "eight one-event histories, room for five");
        let bytes = metrics
            .unlinked_history_bytes
            .with_label_values(&["0"])
            .get();
        assert!(bytes > 0 && bytes as usize <= one * 5, "{bytes}");
        // Restored totals are not exported again.
        let saved = serde_json::to_vec(&stage.snapshot(&state)).expect("snapshot");
        let mut restored = stage.restore(&saved).expect("restore");
        stage.drain(&mut restored, 0, &mut batch);
        assert_eq!(
            metrics
                .histories_evicted
                .with_label_values(&["identity"])
                .get(),
            3
        );
    }
}
