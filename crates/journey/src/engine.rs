//! Stage 2: sessions, funnel attempts and touchpoint enrichment, keyed by customer id.
//!
//! Input: [`RoutedEvent`]s and [`Retract`]s from stage 1, in the order of one partition
//! of the repartition topic, each with that topic's offset ordinal as `seq`. Output:
//! rows for `touchpoints`, `sessions` and `funnel_attempts`, collected until
//! [`JourneyStage::take_output`].
//!
//! Order: the partition watermark is the newest event time seen. Events wait in a reorder
//! buffer and are released in `(event_time, event_id)` order once older than
//! `watermark − allowed_lateness` (strictly, so an equal-time event may still arrive).
//! Events more than the lateness behind the watermark on arrival are too late: stored as
//! `is_late` touchpoints without a session and counted, never placed.
//!
//! Per customer, released events join a bounded history after a checkpoint (see
//! [`crate::session`]); each change replays that history and emits only rows that
//! changed, plus tombstones for rows that no longer exist. History reaches back the
//! re-attribution horizon (default: longest funnel window + session gap): a re-attributed
//! event older than that cannot be placed and is stored as a late touchpoint. A customer
//! idle past the horizon is forgotten entirely, so memory follows active customers.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::event::{Retract, RoutedEvent};
use crate::funnel::FunnelSet;
use crate::rows::{FunnelAttemptRow, JourneyOutput, SessionRow, TouchpointRow};
use crate::session::{HistEvent, Machine};

/// Stage-2 tuning (mirrors `[processor]` in the deployment config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JourneyConfig {
    /// Inactivity gap that starts a new session, seconds. Default 1800 (30 min); a gap of
    /// exactly this long stays in the session.
    pub session_gap_secs: u64,
    /// How far behind the watermark an event may arrive and still be placed in order,
    /// seconds. Default 300 (5 min).
    pub allowed_lateness_secs: u64,
    /// How far back (behind the release frontier) a re-attributed event can still be
    /// placed into sessions and attempts, seconds; also how long an idle customer is kept.
    /// Default: longest funnel window + session gap.
    pub reattribution_horizon_secs: Option<u64>,
    /// When true, events do not move the watermark; only [`JourneyStage::advance_watermark`]
    /// does. The processor sets it because its input is repartitioned: events from
    /// several upstream partitions interleave, so the safe watermark is the minimum of the
    /// upstream partitions' watermarks, which they send in-band. Default false.
    pub external_watermark: bool,
}

impl Default for JourneyConfig {
    fn default() -> Self {
        Self {
            session_gap_secs: 1800,
            allowed_lateness_secs: 300,
            reattribution_horizon_secs: None,
            external_watermark: false,
        }
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Monotonic counts for metrics (`_total` counters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyCounters {
    /// Events that arrived more than the allowed lateness behind the watermark.
    pub late_events: u64,
    /// Re-attributed events older than the horizon, stored as late touchpoints.
    pub reattributed_too_old: u64,
    /// Events whose `(event_time, event_id)` was already in the customer's history.
    pub duplicates: u64,
    /// Retractions applied.
    pub retractions: u64,
    /// Customers forgotten after idling past the horizon.
    pub customers_expired: u64,
}

/// A row key this partition has written and may still change or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct LiveRow {
    key: u128,
    /// `None` for a session, the funnel index for an attempt.
    funnel: Option<u16>,
    /// `start_ms` of a session, `closed_ms` of an attempt: the partition column a
    /// tombstone must repeat to land in the same ClickHouse partition.
    partition_ms: i64,
    fingerprint: u64,
}

/// One customer's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Customer {
    /// Checkpoint covering every event before `base_until_ms`.
    base: Machine,
    base_until_ms: Option<i64>,
    /// Released events from the checkpoint on, sorted by `(time, event_id)`.
    history: Vec<HistEvent>,
    /// Rows derived from `base` + `history` as last written.
    live: Vec<LiveRow>,
    /// Newest event time ever released for the customer.
    last_time_ms: i64,
    /// Pending entry in the timer set.
    wake_ms: Option<i64>,
}

/// A buffered event in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Buffered {
    customer_id: String,
    event: HistEvent,
}

/// Serializable stage-2 state, for the caller to persist with its offsets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JourneySnapshot {
    watermark_ms: Option<i64>,
    frontier_ms: Option<i64>,
    buffer: Vec<Buffered>,
    customers: BTreeMap<String, Customer>,
    counters: JourneyCounters,
    version_seq: u64,
    version_n: u64,
}

#[derive(Debug, Default)]
struct Pending {
    touchpoints: BTreeMap<String, TouchpointRow>,
    sessions: BTreeMap<(u128, i64), SessionRow>,
    attempts: BTreeMap<(u16, u128, i64), FunnelAttemptRow>,
}

/// Stage 2 state machine. One per stage-2 partition.
#[derive(Debug)]
pub struct JourneyStage {
    catalog: Catalog,
    funnels: FunnelSet,
    gap_ms: i64,
    lateness_ms: i64,
    horizon_ms: i64,
    external_watermark: bool,
    watermark_ms: Option<i64>,
    /// Every event before it has been released.
    frontier_ms: Option<i64>,
    buffer: BTreeMap<(i64, String, String), HistEvent>,
    customers: BTreeMap<String, Customer>,
    timers: BTreeSet<(i64, String)>,
    dirty: BTreeSet<String>,
    pending: Pending,
    counters: JourneyCounters,
    version_seq: u64,
    version_n: u64,
}

const VERSION_LOW_BITS: u32 = 20;

impl JourneyStage {
    /// Empty state.
    pub fn new(config: JourneyConfig, catalog: Catalog, funnels: FunnelSet) -> Self {
        Self::from_snapshot(config, catalog, funnels, JourneySnapshot::default())
    }

    /// Resume from [`JourneyStage::snapshot`]. Funnels must be the ones the snapshot was
    /// taken with (their order indexes the state); start from an empty snapshot after
    /// changing them.
    pub fn from_snapshot(
        config: JourneyConfig,
        catalog: Catalog,
        funnels: FunnelSet,
        snapshot: JourneySnapshot,
    ) -> Self {
        let gap_ms = secs_to_ms(config.session_gap_secs);
        let horizon_ms = config
            .reattribution_horizon_secs
            .map_or(funnels.max_window_ms().saturating_add(gap_ms), secs_to_ms);
        let timers = snapshot
            .customers
            .iter()
            .filter_map(|(id, c)| c.wake_ms.map(|w| (w, id.clone())))
            .collect();
        let buffer = snapshot
            .buffer
            .into_iter()
            .map(|b| {
                (
                    (b.event.time_ms, b.event.event_id.clone(), b.customer_id),
                    b.event,
                )
            })
            .collect();
        Self {
            catalog,
            funnels,
            gap_ms,
            lateness_ms: secs_to_ms(config.allowed_lateness_secs),
            external_watermark: config.external_watermark,
            horizon_ms,
            watermark_ms: snapshot.watermark_ms,
            frontier_ms: snapshot.frontier_ms,
            buffer,
            customers: snapshot.customers,
            timers,
            dirty: BTreeSet::new(),
            pending: Pending::default(),
            counters: snapshot.counters,
            version_seq: snapshot.version_seq,
            version_n: snapshot.version_n,
        }
    }

    /// The state to persist alongside the consumed offset (after [`Self::take_output`]'s
    /// rows are written).
    pub fn snapshot(&self) -> JourneySnapshot {
        JourneySnapshot {
            watermark_ms: self.watermark_ms,
            frontier_ms: self.frontier_ms,
            buffer: self
                .buffer
                .iter()
                .map(|((_, _, customer_id), event)| Buffered {
                    customer_id: customer_id.clone(),
                    event: event.clone(),
                })
                .collect(),
            customers: self.customers.clone(),
            counters: self.counters.clone(),
            version_seq: self.version_seq,
            version_n: self.version_n,
        }
    }

    /// Counters for metrics.
    pub fn counters(&self) -> &JourneyCounters {
        &self.counters
    }

    /// Newest event time seen in this partition, ms.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
    }

    /// Customers held in memory (for a gauge).
    pub fn customer_count(&self) -> usize {
        self.customers.len()
    }

    /// Events waiting in the reorder buffer (for a gauge).
    pub fn buffered_events(&self) -> usize {
        self.buffer.len()
    }

    /// Handle one routed event. `seq` (the input offset ordinal) must not decrease.
    pub fn process(&mut self, routed: RoutedEvent, seq: u64) {
        self.bump_seq(seq);
        let tp = self.catalog.classify(&routed.event);
        let hist = HistEvent {
            time_ms: routed.event.event_time_ms,
            name: routed.event.display_name().to_owned(),
            steps: self.funnels.matches(&routed.event),
            event_id: routed.event.event_id,
            stage: tp.stage,
            channel: tp.channel,
            version: routed.version,
            emitted: 0,
            session: None,
        };
        if routed.reattributed {
            if hist.time_ms < self.cutoff_ms() {
                self.counters.reattributed_too_old += 1;
                self.emit_unplaced(&routed.customer_id, &hist, true);
                return;
            }
        } else {
            // A replayed copy of an event already placed (e.g. the upstream stage re-sent
            // its output after a restart) must not come back as a late row and replace the
            // placed one.
            let placed = self.customers.get(&routed.customer_id).is_some_and(|c| {
                c.history
                    .binary_search_by(|e| e.order_key().cmp(&hist.order_key()))
                    .is_ok()
            });
            if placed {
                self.counters.duplicates += 1;
                return;
            }
            let too_late = self
                .watermark_ms
                .is_some_and(|w| hist.time_ms < w.saturating_sub(self.lateness_ms));
            if too_late {
                self.counters.late_events += 1;
                self.emit_unplaced(&routed.customer_id, &hist, true);
                return;
            }
            if !self.external_watermark {
                self.watermark_ms = Some(
                    self.watermark_ms
                        .map_or(hist.time_ms, |w| w.max(hist.time_ms)),
                );
            }
        }
        let key = (hist.time_ms, hist.event_id.clone(), routed.customer_id);
        if let Some(kept) = self.buffer.get_mut(&key) {
            kept.version = kept.version.max(hist.version);
            self.counters.duplicates += 1;
        } else {
            self.buffer.insert(key, hist);
        }
        self.advance(false);
    }

    /// Delete everything known about `retract.customer_id` (an anonymous id whose events
    /// stage 1 re-sent under a user): tombstones for its sessions and attempts; its still
    /// buffered events are written as session-less touchpoints (the re-sent copies carry
    /// a higher version and replace them).
    pub fn retract(&mut self, retract: &Retract, seq: u64) {
        self.bump_seq(seq);
        self.counters.retractions += 1;
        let id = retract.customer_id.as_str();
        let keys: Vec<_> = self.buffer.keys().filter(|k| k.2 == id).cloned().collect();
        for key in keys {
            if let Some(hist) = self.buffer.remove(&key) {
                self.emit_unplaced(id, &hist, false);
            }
        }
        self.dirty.remove(id);
        if let Some(customer) = self.customers.remove(id) {
            if let Some(wake) = customer.wake_ms {
                self.timers.remove(&(wake, id.to_owned()));
            }
            for row in &customer.live {
                self.emit_tombstone(id, row);
            }
        }
    }

    /// Move the watermark to at least `ms` without an event: the processor calls this
    /// with the wall clock when a partition has been idle, so that attempts in a quiet
    /// partition still close as dropped. Events older than the new frontier that arrive
    /// later are late, exactly as if a newer event had moved the watermark.
    pub fn advance_watermark(&mut self, ms: i64, seq: u64) {
        self.bump_seq(seq);
        self.watermark_ms = Some(self.watermark_ms.map_or(ms, |w| w.max(ms)));
        self.advance(false);
    }

    /// End of input: release every buffered event and treat the watermark as final for
    /// dropping attempts (an attempt drops once the watermark is past start + window).
    pub fn flush_all(&mut self, seq: u64) {
        self.bump_seq(seq);
        self.advance(true);
    }

    /// Rows produced since the last call, newest per key, sorted by version.
    pub fn take_output(&mut self) -> JourneyOutput {
        let pending = std::mem::take(&mut self.pending);
        let mut out = JourneyOutput {
            touchpoints: pending.touchpoints.into_values().collect(),
            sessions: pending.sessions.into_values().collect(),
            attempts: pending.attempts.into_values().collect(),
        };
        out.touchpoints.sort_by_key(|r| r.version);
        out.sessions.sort_by_key(|r| r.version);
        out.attempts.sort_by_key(|r| r.version);
        out
    }

    fn cutoff_ms(&self) -> i64 {
        self.frontier_ms
            .map_or(i64::MIN, |f| f.saturating_sub(self.horizon_ms))
    }

    fn bump_seq(&mut self, seq: u64) {
        let seq = seq.min(u64::MAX >> VERSION_LOW_BITS);
        if seq > self.version_seq {
            self.version_seq = seq;
            self.version_n = 0;
        }
    }

    /// Strictly increasing within the partition, derived from the input offsets so a
    /// replay from the same snapshot writes identical versions.
    fn next_version(&mut self) -> u64 {
        let v = (self.version_seq << VERSION_LOW_BITS) | self.version_n;
        self.version_n += 1;
        if self.version_n >= 1 << VERSION_LOW_BITS {
            self.version_seq += 1;
            self.version_n = 0;
        }
        v
    }

    fn advance(&mut self, flush: bool) {
        if let Some(w) = self.watermark_ms {
            let target = if flush {
                w
            } else {
                w.saturating_sub(self.lateness_ms)
            };
            self.frontier_ms = Some(self.frontier_ms.map_or(target, |f| f.max(target)));
        }
        let frontier = self.frontier_ms.unwrap_or(i64::MIN);
        while let Some(entry) = self.buffer.first_entry() {
            if !flush && entry.key().0 >= frontier {
                break;
            }
            let ((_, _, customer_id), hist) = entry.remove_entry();
            self.insert_history(customer_id, hist);
        }
        while let Some((wake, _)) = self.timers.first() {
            if *wake >= frontier {
                break;
            }
            if let Some((_, id)) = self.timers.pop_first() {
                if let Some(c) = self.customers.get_mut(&id) {
                    c.wake_ms = None;
                }
                self.dirty.insert(id);
            }
        }
        for id in std::mem::take(&mut self.dirty) {
            self.recompute(&id);
        }
    }

    fn insert_history(&mut self, customer_id: String, hist: HistEvent) {
        let base_until = self
            .customers
            .get(&customer_id)
            .and_then(|c| c.base_until_ms);
        if base_until.is_some_and(|b| hist.time_ms < b) {
            // Before the checkpoint: only reachable with a horizon shorter than the
            // lateness. Keep the promise of never losing an event.
            self.counters.reattributed_too_old += 1;
            self.emit_unplaced(&customer_id, &hist, true);
            return;
        }
        let customer = self.customers.entry(customer_id.clone()).or_default();
        let fresh = customer.history.is_empty() && customer.base_until_ms.is_none();
        customer.last_time_ms = if fresh {
            hist.time_ms
        } else {
            customer.last_time_ms.max(hist.time_ms)
        };
        match customer
            .history
            .binary_search_by(|e| e.order_key().cmp(&hist.order_key()))
        {
            Ok(i) => {
                let kept = &mut customer.history[i];
                kept.version = kept.version.max(hist.version);
                self.counters.duplicates += 1;
            }
            Err(i) => customer.history.insert(i, hist),
        }
        self.dirty.insert(customer_id);
    }
}

#[path = "engine_emit.rs"]
mod emit;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
