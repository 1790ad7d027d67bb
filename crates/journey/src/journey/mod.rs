//! Stage 2: sessions, funnel attempts and touchpoint enrichment, keyed by customer id.
//!
//! Input: [`RoutedEvent`]s and [`Retract`]s from stage 1, in the order of one partition
//! of the repartition topic, each with that topic's offset ordinal as `seq`. Output:
//! rows for `touchpoints`, `sessions`, `funnel_attempts` and `funnel_open_attempts`
//! (attempts still open at the release frontier), collected until
//! [`JourneyStage::take_output`].
//!
//! Order: the partition watermark is the newest event time seen. Events wait in a reorder
//! buffer and are released in `(event_time, event_id)` order once older than
//! `watermark − allowed_lateness` (the release frontier; strictly, so an equal-time event
//! may still arrive). An event that arrives behind the frontier is placed all the same and
//! the rows it changes are rewritten, so arrival order does not change the tables; only an
//! event older than the correction horizon behind the frontier is too late: stored as an
//! `is_late` touchpoint without a session and counted, never placed. A customer's journey
//! holds each event id once: a later copy (a client's retry at another event time, a
//! replay) is dropped whatever its time, the first in input order stays (docs/design.md
//! §4, Duplicates).
//!
//! Per customer, released events join a bounded history after a checkpoint (see
//! [`crate::journey::session`]); each change replays that history (or, when the new events only
//! extend it, steps the kept end-of-history state over them: see `emit.rs`) and
//! emits only rows that changed, plus tombstones for rows that no longer exist. History
//! reaches back the
//! re-attribution horizon (default: longest funnel window + session gap): a re-attributed
//! event older than that cannot be placed and is stored as a late touchpoint. A customer
//! idle past the horizon is forgotten entirely, so memory follows active customers.

mod backfill;
mod buffer;
pub(crate) mod catalog;
mod customer;
mod delta;
mod emit;
pub(crate) mod feedback;
pub(crate) mod funnel;
mod open;
mod output;
pub(crate) mod properties;
mod remap;
pub(crate) mod rows;
pub(crate) mod session;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{Retract, RoutedEvent};
use crate::hash::{FastMap, FastState, Fnv128};
use crate::journey::catalog::Catalog;
use crate::journey::feedback::SavedExtra;
pub use crate::journey::feedback::{FeedbackCounters, Tally};
use crate::journey::funnel::FunnelSet;
use crate::journey::rows::JourneyOutput;
use crate::journey::session::HistEvent;

pub use backfill::StoredAttempt;
use buffer::Buffer;
use customer::{Capped, Customer, IdIndex, LiveRow, Names, SavedCustomer};
pub use delta::{JourneyDelta, JourneyDeltaRef};
use emit::Scratch;
pub use open::OpenAttemptCount;
use output::Output;
use remap::SavedFunnel;
pub use remap::{funnel_fingerprint, FunnelChange, FunnelChangeKind};

/// Stage-2 tuning (mirrors `[processor]` in the deployment config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JourneyConfig {
    /// Inactivity gap that starts a new session, seconds. Default 1800 (30 min); a gap of
    /// exactly this long stays in the session.
    pub session_gap_secs: u64,
    /// How long events wait behind the watermark before their journey rows are first
    /// written, seconds. Default 300 (5 min). An event later than that is still placed
    /// (its customer's rows are rewritten) as long as it is inside the horizon below.
    pub allowed_lateness_secs: u64,
    /// The correction horizon: how far back behind the release frontier a late or
    /// re-attributed event can still be placed into sessions and attempts, seconds; also
    /// how long an idle customer is kept. Default: longest funnel window + session gap.
    pub reattribution_horizon_secs: Option<u64>,
    /// The hot-customer cap: at most this many events per customer are placed into
    /// sessions and funnels in each window of `session_gap_secs` of event time (aligned
    /// to the epoch); the first ones in `(event_time, event_id)` order, so arrival order
    /// does not change which. The others are stored (touchpoint rows without a session)
    /// and counted in [`JourneyCounters::hot_customer_events`]. 0: no cap. Default 1000
    /// (one event every 1.8 s for 30 minutes, well past what a person does; a bot or a
    /// shared kiosk id gets there).
    pub hot_customer_max_events: usize,
    /// When true, events do not move the watermark; only [`JourneyStage::advance_watermark`]
    /// does. The processor sets it because its input is repartitioned: events from
    /// several upstream partitions interleave, so the safe watermark is the minimum of the
    /// upstream partitions' watermarks, which they send in-band. Default false.
    pub external_watermark: bool,
    /// How far before a survey answer the touchpoint it rates may lie, seconds (README
    /// "Feedback attribution"). Default 259200 (3 days). Touchpoints behind the
    /// correction horizon are forgotten, so keep it within the horizon.
    pub feedback_window_secs: u64,
}

impl Default for JourneyConfig {
    fn default() -> Self {
        Self {
            session_gap_secs: 1800,
            allowed_lateness_secs: 300,
            reattribution_horizon_secs: None,
            hot_customer_max_events: 1000,
            external_watermark: false,
            feedback_window_secs: feedback::DEFAULT_WINDOW_SECS,
        }
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Monotonic counts for metrics (`_total` counters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JourneyCounters {
    /// Events stored unplaced (`is_late`) on arrival: the sum of the two causes below.
    pub late_events: u64,
    /// Of `late_events`: older than the correction horizon behind the release frontier.
    pub late_beyond_horizon: u64,
    /// Events inside the horizon but before their customer's checkpoint (made under a
    /// shorter horizon, or, with a horizon shorter than the allowed lateness, moved past
    /// a buffered event before its release): stored unplaced. Counted in `late_events`.
    pub late_before_checkpoint: u64,
    /// Events added to a customer's history: each event (by `(event_time, event_id)`) is
    /// counted once, here or in a late cause, so `late / (late + placed)` is the share of
    /// events that could not be placed. Duplicates count in neither; a re-attributed copy
    /// counts as an event of its own (here or in `reattributed_too_old`).
    pub placed_events: u64,
    /// Events that arrived behind the release frontier (the watermark less the allowed
    /// lateness) but inside the horizon: placed, and their customer's rows rewritten.
    pub corrected_events: u64,
    /// Re-attributed events older than the horizon, stored as late touchpoints.
    pub reattributed_too_old: u64,
    /// Copies of an event id the customer's journey already held (placed or buffered),
    /// whatever their event time: retries and replays, dropped.
    pub duplicates: u64,
    /// Retractions applied.
    pub retractions: u64,
    /// Customers forgotten after idling past the horizon.
    pub customers_expired: u64,
    /// Re-delivered copies recognised by their [`Origin`] and skipped (an identity
    /// partition re-sent what it had routed before a crash or a rebalance).
    pub redelivered: u64,
    /// Survey answers and their attribution (README "Feedback attribution").
    pub feedback: FeedbackCounters,
    /// Events over the hot-customer cap ([`JourneyConfig::hot_customer_max_events`]):
    /// stored without a session, not placed. Counts each such event as it is refused,
    /// or as an earlier event that arrived later takes its place (it was counted in
    /// `placed_events` then).
    pub hot_customer_events: u64,
}

/// Where a routed event comes from: the stage-1 input stream that produced it (the
/// processor: one identity topic partition), the input's position in that stream (its
/// Kafka offset) and the event's index among that input's routed records. Stage 1 reads
/// each stream in order, so its output reaches each journey partition in origin order
/// per stream; a restarted stage 1 (or a fresh consumer group replaying the topic)
/// re-sends the same inputs' output with the same origins. So an origin not after the
/// last one processed from its stream is a copy (docs/design.md §4, Crashes and copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    /// The input stream (processor: `partition * 2`, `+ 1` for `touchpoints.aliases`).
    pub source: u32,
    /// The input's position in it (processor: the Kafka offset).
    pub position: u64,
    /// Index of the event among that input's routed records.
    pub index: u32,
}

/// A buffered event in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Buffered {
    customer_id: Arc<str>,
    event: HistEvent,
}

/// Serializable stage-2 state, for the caller to persist with its offsets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JourneySnapshot {
    watermark_ms: Option<i64>,
    frontier_ms: Option<i64>,
    buffer: Vec<Buffered>,
    customers: BTreeMap<Arc<str>, SavedCustomer>,
    counters: JourneyCounters,
    version_seq: u64,
    version_n: u64,
    /// Name and definition fingerprint of each funnel the state was built with, in the
    /// order its indexes refer to (`None` in snapshots from before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    funnels: Option<Vec<SavedFunnel>>,
    /// Last `(position, index)` processed per source stream ([`Origin`]).
    #[serde(default)]
    delivered: BTreeMap<u32, (u64, u32)>,
    /// Details of events beyond their history entry (`journey/feedback.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    extras: Vec<SavedExtra>,
    /// The customer whose recompute waits for the rest of a re-attributed burst
    /// ([`JourneyStage::pending`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Arc<str>>,
}

/// [`JourneySnapshot`] by reference ([`JourneyStage::snapshot_ref`]): serializes to the
/// same document as the owned snapshot without copying the state first. A large
/// partition's snapshot would otherwise hold its state twice, plus the text, at once.
pub struct JourneySnapshotRef<'a>(&'a JourneyStage);

impl Serialize for JourneySnapshotRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let e = self.0;
        let fields = 9 + usize::from(!e.out.extras.is_empty()) + usize::from(e.pending.is_some());
        let mut st = s.serialize_struct("JourneySnapshot", fields)?;
        st.serialize_field("watermark_ms", &e.watermark_ms)?;
        st.serialize_field("frontier_ms", &e.frontier_ms)?;
        st.serialize_field("buffer", &BufferRef(&e.buffer))?;
        st.serialize_field("customers", &CustomersRef(&e.customers))?;
        st.serialize_field("counters", &e.counters)?;
        st.serialize_field("version_seq", &e.out.version_seq)?;
        st.serialize_field("version_n", &e.out.version_n)?;
        st.serialize_field("funnels", &remap::saved_funnels(&e.funnels))?;
        st.serialize_field("delivered", &e.delivered)?;
        let extras = e.out.extras.saved();
        if extras.is_empty() {
            st.skip_field("extras")?;
        } else {
            st.serialize_field("extras", &extras)?;
        }
        if e.pending.is_some() {
            st.serialize_field("pending", &e.pending)?;
        }
        st.end()
    }
}

/// [`Buffered`] by reference.
#[derive(Serialize)]
struct BufferedRef<'a> {
    customer_id: &'a Arc<str>,
    event: &'a HistEvent,
}

struct BufferRef<'a>(&'a Buffer);

impl Serialize for BufferRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .iter()
                .map(|(customer_id, event)| BufferedRef { customer_id, event }),
        )
    }
}

/// Customers in id order, as the snapshot's `BTreeMap` has them.
struct CustomersRef<'a>(&'a FastMap<Arc<str>, Box<Customer>>);

impl Serialize for CustomersRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<(&Arc<str>, &Customer)> =
            self.0.iter().map(|(id, c)| (id, c.as_ref())).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        s.collect_map(sorted.into_iter().map(|(id, c)| (id, c.saved_ref())))
    }
}

/// Room [`JourneyStage::dirty`] keeps once drained.
const KEEP_DIRTY: usize = 256;

/// Stage 2 state machine. One per stage-2 partition.
#[derive(Debug)]
pub struct JourneyStage {
    catalog: Catalog,
    funnels: FunnelSet,
    /// `id128` state after each funnel's name: the first part of its attempt keys.
    funnel_keys: Vec<Fnv128>,
    gap_ms: i64,
    lateness_ms: i64,
    horizon_ms: i64,
    /// [`JourneyConfig::hot_customer_max_events`].
    hot_cap: usize,
    external_watermark: bool,
    watermark_ms: Option<i64>,
    /// Every event before it has been released.
    frontier_ms: Option<i64>,
    buffer: Buffer,
    customers: FastMap<Arc<str>, Box<Customer>>,
    /// Event ids of the customers with long histories (duplicates, docs/design.md §4).
    ids: IdIndex,
    timers: BTreeSet<(i64, Arc<str>)>,
    /// Customers to recompute at the end of [`Self::advance`] (empty between calls).
    dirty: Vec<Arc<str>>,
    names: Names,
    out: Output,
    /// Reused by every replay.
    scratch: Scratch,
    /// Histories at least this long keep their tail machine ([`emit::TAIL_MIN_EVENTS`];
    /// tests vary it to compare the tail shortcut with full replays).
    tail_min_events: usize,
    counters: JourneyCounters,
    /// How today's funnels differ from the snapshot's (empty when they match).
    funnel_changes: Vec<FunnelChange>,
    /// Last `(position, index)` processed per source stream ([`Self::process_from`]).
    delivered: BTreeMap<u32, (u64, u32)>,
    /// [`JourneyConfig::feedback_window_secs`], ms.
    feedback_window_ms: i64,
    /// A customer whose recompute is deferred while the input goes on with re-attributed
    /// copies for it: stage 1 re-sends an anonymous history as one run of events, each
    /// landing inside the user's history, and replaying the history after each would cost
    /// the square of the run's length. Recomputed once the run ends — before the next
    /// input of any other kind, or when the output is taken ([`Self::take_output`], the
    /// processor's flush), whichever comes first ([`Self::settle`]) — with the version the
    /// last event so far gave, so the rows of a run end the same whether a flush split it
    /// or not (a split run is replayed once per part). A snapshot names it, so a restore
    /// recomputes it at the same point.
    pending: Option<Arc<str>>,
    /// Customers changed since the last save, when tracked ([`Self::track_changes`]).
    changed: Option<delta::Changed>,
    /// The next save must be whole ([`Self::delta_ref`]).
    whole_next: bool,
}

impl JourneyStage {
    /// Empty state.
    pub fn new(config: JourneyConfig, catalog: Catalog, funnels: FunnelSet) -> Self {
        Self::from_snapshot(config, catalog, funnels, JourneySnapshot::default())
    }

    /// Resume from [`JourneyStage::snapshot`]. Funnels may differ from the ones the
    /// snapshot was taken with: state is matched to them by definition fingerprint, and a
    /// changed or removed funnel's saved state is dropped (see [`Self::funnel_changes`]).
    pub fn from_snapshot(
        config: JourneyConfig,
        catalog: Catalog,
        funnels: FunnelSet,
        mut snapshot: JourneySnapshot,
    ) -> Self {
        let (remap, funnel_changes) = match snapshot.funnels.take() {
            Some(saved) => remap::plan(&saved, &funnels),
            None => (None, Vec::new()),
        };
        let gap_ms = secs_to_ms(config.session_gap_secs);
        let horizon_ms = config
            .reattribution_horizon_secs
            .map_or(funnels.max_window_ms().saturating_add(gap_ms), secs_to_ms);
        let funnel_keys = funnels
            .funnels()
            .iter()
            .map(|f| {
                let mut h = Fnv128::new();
                h.part(&f.name);
                h
            })
            .collect();
        let mut names = Names::default();
        let mut timers = BTreeSet::new();
        let mut customers =
            FastMap::with_capacity_and_hasher(snapshot.customers.len(), FastState::default());
        let mut out = Output::new(snapshot.version_seq, snapshot.version_n);
        out.extras = feedback::Extras::restore(std::mem::take(&mut snapshot.extras));
        for (id, mut saved) in snapshot.customers {
            if let Some(remap) = &remap {
                for (funnel, row) in remap.customer(&mut saved) {
                    out.open_tombstone_named(&id, funnel, &row);
                }
            }
            let mut customer = Customer::restore(saved, &mut names, &funnels);
            if let Some(wake) = customer.wake_ms() {
                timers.insert((wake, Arc::clone(&id)));
            }
            customer.timer_ms = customer.wake_ms().unwrap_or_default();
            customers.insert(id, Box::new(customer));
        }
        let pending = snapshot.pending.filter(|id| match customers.get_mut(id) {
            Some(c) => {
                c.dirty = true;
                true
            }
            None => false,
        });
        let mut buffer = Buffer::default();
        for mut b in snapshot.buffer {
            if let Some(remap) = &remap {
                remap.buffered(&mut b.event);
            }
            b.event.name = names.intern(&b.event.name);
            buffer.insert(b.customer_id, b.event);
        }
        Self {
            catalog,
            funnels,
            funnel_keys,
            gap_ms,
            lateness_ms: secs_to_ms(config.allowed_lateness_secs),
            hot_cap: config.hot_customer_max_events,
            external_watermark: config.external_watermark,
            horizon_ms,
            watermark_ms: snapshot.watermark_ms,
            frontier_ms: snapshot.frontier_ms,
            buffer,
            customers,
            ids: IdIndex::default(),
            timers,
            dirty: Vec::new(),
            names,
            out,
            scratch: Scratch::default(),
            tail_min_events: emit::TAIL_MIN_EVENTS,
            counters: snapshot.counters,
            funnel_changes,
            delivered: snapshot.delivered,
            feedback_window_ms: secs_to_ms(config.feedback_window_secs),
            pending,
            changed: None,
            whole_next: remap.is_some(),
        }
    }

    /// How the configured funnels differ from the snapshot this stage resumed from:
    /// for the processor's log and metric. Empty for a fresh stage or unchanged funnels.
    pub fn funnel_changes(&self) -> &[FunnelChange] {
        &self.funnel_changes
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
                .map(|(customer_id, event)| Buffered {
                    customer_id: Arc::clone(customer_id),
                    event: event.clone(),
                })
                .collect(),
            customers: self
                .customers
                .iter()
                .map(|(id, c)| (Arc::clone(id), c.saved()))
                .collect(),
            counters: self.counters.clone(),
            version_seq: self.out.version_seq,
            version_n: self.out.version_n,
            funnels: Some(remap::saved_funnels(&self.funnels)),
            delivered: self.delivered.clone(),
            extras: self.out.extras.saved(),
            pending: self.pending.clone(),
        }
    }

    /// The same document as [`Self::snapshot`], serialized from the state in place.
    pub fn snapshot_ref(&self) -> JourneySnapshotRef<'_> {
        JourneySnapshotRef(self)
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

    /// [`Self::process`] an event routed from stage-1 input stream `origin.source`, unless
    /// it is a copy of one already processed from there: an identity partition restarted from
    /// its saved state (after `kill -9`, a pause that cost it its partitions, a rebalance)
    /// re-sends everything it routed after that state was saved. Whether a copy would
    /// still be placed, or found in its customer's history, depends on how far the
    /// watermark moved meanwhile (a copy older than the correction horizon, or before its
    /// customer's checkpoint, would be stored late and replace the placed row), so copies
    /// are recognised by where they come from, not by when they happened. Counted in
    /// `redelivered`. Returns whether the event was new (processed).
    pub fn process_from(&mut self, routed: RoutedEvent, seq: u64, origin: Origin) -> bool {
        let at = (origin.position, origin.index);
        if self
            .delivered
            .get(&origin.source)
            .is_some_and(|last| at <= *last)
        {
            self.out.bump_seq(seq);
            self.counters.redelivered += 1;
            return false;
        }
        self.delivered.insert(origin.source, at);
        self.process(routed, seq);
        true
    }

    /// Handle one routed event. `seq` (the input offset ordinal) must not decrease.
    pub fn process(&mut self, routed: RoutedEvent, seq: u64) {
        let continues_run =
            routed.reattributed && self.pending.as_deref() == Some(routed.customer_id.as_str());
        if !continues_run {
            self.settle();
        }
        self.out.bump_seq(seq);
        let RoutedEvent {
            customer_id,
            event,
            version,
            reattributed,
        } = routed;
        let tp = self.catalog.classify(&event);
        let extra = feedback::extra_of(&self.catalog, &event);
        let mut hist = HistEvent {
            time_ms: event.event_time_ms,
            name: self.names.intern(event.display_name()),
            kind: Some(event.kind),
            steps: self.funnels.steps(&event, tp.channel.as_str()),
            event_id: Arc::from(event.event_id.as_str()),
            stage: tp.stage,
            channel: tp.channel,
            version,
            emitted: 0,
            session: [0; 2],
            keyed: false,
            extra: false,
        };
        if reattributed {
            // Its row under the id it was routed to before the link (the anonymous id, or
            // an alias's previous id) is keyed by that customer in `customer_touchpoints`:
            // delete it there (`touchpoint_journey`, keyed by event id alone, is replaced
            // by this customer's row). Written whatever happens to this copy below.
            for former in [&event.anonymous_id, &event.previous_id]
                .into_iter()
                .flatten()
                .filter(|f| !f.is_empty() && **f != customer_id)
            {
                self.out.moved(former, &hist, version);
            }
        }
        let (id, checkpoint_ms) = match self.customers.get_key_value(customer_id.as_str()) {
            Some((id, c)) => (Arc::clone(id), c.base_until_ms()),
            None => (Arc::from(customer_id), None),
        };
        self.mark(&id);
        // One event counts once: a copy of an event id the customer's journey already
        // holds (placed, or waiting in the buffer) is a duplicate, whatever its event
        // time — a client's retry carries a new `sentAt`/receipt time, and a replayed
        // copy (the upstream stage re-sent its output after a restart) the same one. The
        // copy that arrived first (input order, so a replay decides alike) stays;
        // checked before the lateness rules, so a duplicate behind the horizon never
        // comes back as a late row that replaces the placed one (docs/design.md §4,
        // Duplicates).
        if self.keep_first_copy(&id, &hist, reattributed) {
            self.counters.duplicates += 1;
            return;
        }
        if let Some(extra) = extra {
            // Kept with the event's first copy (a copy already held keeps its own).
            self.out.extras.insert(&id, &hist.event_id, extra);
            hist.extra = true;
        }
        if reattributed {
            if hist.time_ms < self.cutoff_ms() {
                self.counters.reattributed_too_old += 1;
                self.out.unplaced(&id, &hist, true);
                self.unplaced_extra(&id, &hist);
                return;
            }
        } else {
            // Behind the correction horizon: the customer's state there is folded into its
            // checkpoint (or forgotten), so the event cannot be placed; stored and counted.
            // The customer's own checkpoint can lie later than today's cutoff when the
            // horizon was raised since it was made: nothing before it can be placed either.
            let cutoff = checkpoint_ms.map_or(self.cutoff_ms(), |b| b.max(self.cutoff_ms()));
            if hist.time_ms < cutoff {
                self.counters.late_events += 1;
                if hist.time_ms < self.cutoff_ms() {
                    self.counters.late_beyond_horizon += 1;
                } else {
                    self.counters.late_before_checkpoint += 1;
                }
                self.out.unplaced(&id, &hist, true);
                self.unplaced_extra(&id, &hist);
                return;
            }
            // Behind the release frontier but inside the horizon: placed all the same (the
            // buffer releases it at once), and the customer's sessions and attempts it
            // changes are rewritten — the tables end as a time-ordered arrival would leave
            // them, whatever order the events came in (docs/design.md §4, Lateness).
            if self.frontier_ms.is_some_and(|f| hist.time_ms < f) {
                self.counters.corrected_events += 1;
            }
            if !self.external_watermark {
                self.watermark_ms = Some(
                    self.watermark_ms
                        .map_or(hist.time_ms, |w| w.max(hist.time_ms)),
                );
            }
        }
        let defer = reattributed.then(|| Arc::clone(&id));
        if !self.buffer.insert(id, hist) {
            self.counters.duplicates += 1;
        }
        self.advance_deferring(false, defer);
    }

    /// End a re-attributed run ([`Self::pending`]) at an input that is not an event, e.g.
    /// the processor's in-band upstream watermarks, which move no watermark until every
    /// upstream partition has sent one: the run's rows are then written without waiting
    /// for the next event. [`Self::advance_watermark`], [`Self::retract`],
    /// [`Self::flush_all`] and any event of another kind end a run too.
    pub fn end_run(&mut self) {
        self.settle();
    }

    /// Recompute the customer [`Self::pending`] names, if any: its re-attributed run
    /// ended.
    fn settle(&mut self) {
        if let Some(id) = self.pending.take() {
            // As in the release loop: answers before the replay evicts anything.
            self.attribute_answers(&id);
            self.recompute(&id);
        }
    }

    /// Work done by replays so far: history events stepped through a customer's machine
    /// (tests and benchmarks compare it across input sizes; not saved).
    pub fn replayed_events(&self) -> u64 {
        self.scratch.stepped
    }

    /// Delete everything known about `retract.customer_id` (an anonymous id whose events
    /// stage 1 re-sent under a user): tombstones for its sessions and attempts; its still
    /// buffered events are written as session-less touchpoints (the re-sent copies carry
    /// a higher version and replace them).
    pub fn retract(&mut self, retract: &Retract, seq: u64) {
        self.settle();
        self.out.bump_seq(seq);
        self.counters.retractions += 1;
        let id = retract.customer_id.as_str();
        self.mark_str(id);
        for (customer, hist) in self.buffer.remove_customer(id) {
            self.out.unplaced(&customer, &hist, false);
            self.forget_extras(&customer, [&hist]);
        }
        self.ids.forget(id);
        if let Some((key, customer)) = self.customers.remove_entry(id) {
            for row in &customer.live {
                self.out.tombstone(&key, row);
            }
            self.forget_extras(&key, &customer.history);
            if customer.wake_ms().is_some() {
                self.timers.remove(&(customer.timer_ms, key));
            }
        }
    }

    /// Forget everything about `customer_id` and write nothing: the person was erased
    /// (README, "Privacy"), and `touchstream erase` deletes their rows from the tables, so
    /// not even a tombstone may name them again. Their buffered events, history, open
    /// attempts and timers go. Returns whether anything was held.
    pub fn erase(&mut self, customer_id: &str) -> bool {
        if self.pending.as_deref() == Some(customer_id) {
            // Not recomputed: nothing may be written about them.
            self.pending = None;
        }
        self.settle();
        self.mark_str(customer_id);
        let removed = self.buffer.remove_customer(customer_id);
        self.forget_extras(customer_id, removed.iter().map(|(_, h)| h));
        let buffered = !removed.is_empty();
        self.ids.forget(customer_id);
        match self.customers.remove_entry(customer_id) {
            Some((key, customer)) => {
                self.forget_extras(&key, &customer.history);
                if customer.wake_ms().is_some() {
                    self.timers.remove(&(customer.timer_ms, key));
                }
                true
            }
            None => buffered,
        }
    }

    /// Move the watermark to at least `ms` without an event: the processor calls this
    /// with the wall clock when a partition has been idle, so that attempts in a quiet
    /// partition still close as dropped. Events older than the new frontier that arrive
    /// later are treated exactly as if a newer event had moved the watermark: placed and
    /// their customer's rows rewritten inside the correction horizon, late beyond it.
    pub fn advance_watermark(&mut self, ms: i64, seq: u64) {
        self.settle();
        self.out.bump_seq(seq);
        self.watermark_ms = Some(self.watermark_ms.map_or(ms, |w| w.max(ms)));
        self.advance(false);
    }

    /// End of input: release every buffered event and treat the watermark as final for
    /// dropping attempts (an attempt drops once the watermark is past start + window).
    pub fn flush_all(&mut self, seq: u64) {
        self.settle();
        self.out.bump_seq(seq);
        self.advance(true);
    }

    /// Rows produced since the last call, newest per key, sorted by version.
    pub fn take_output(&mut self) -> JourneyOutput {
        let mut out = JourneyOutput::default();
        self.take_output_into(&mut out);
        out
    }

    /// [`Self::take_output`], appended to `out`'s lists: a caller gathering several
    /// partitions' rows for one write (the processor's batch) copies none of them again.
    pub fn take_output_into(&mut self, out: &mut JourneyOutput) {
        // A re-attributed run's rows are written at the latest with the rest of the
        // output (the processor takes it at every flush).
        self.settle();
        self.out.take_into(&self.funnels, out);
    }

    /// Whether `customer` already holds a copy of `hist`'s event id, in its history or
    /// in the buffer. The kept copy stays as it is, except that a re-attributed copy
    /// raises its version (re-attribution carries the link's higher version, so that the
    /// user's row replaces any written under the anonymous id): a placed copy's
    /// touchpoint row then goes out again, same content, new version.
    ///
    /// Short histories are scanned, long ones looked up ([`IdIndex`]).
    fn keep_first_copy(
        &mut self,
        customer: &Arc<str>,
        hist: &HistEvent,
        reattributed: bool,
    ) -> bool {
        let raise = |kept: &mut HistEvent| {
            let raised = reattributed && hist.version > kept.version;
            if raised {
                kept.version = hist.version;
            }
            raised
        };
        if let Some(c) = self.customers.get_mut(customer) {
            let found = self.ids.find(customer, &c.history, &hist.event_id);
            if let Some(kept) = found.map(|i| &mut c.history[i]) {
                if raise(kept) && kept.emitted > 0 {
                    self.out
                        .touchpoint(customer, kept, kept.emitted_session(), false);
                    kept.emitted = kept.emitted.saturating_add(1);
                }
                return true;
            }
        }
        match self.buffer.get_mut(customer, &hist.event_id) {
            Some(kept) => {
                raise(kept);
                true
            }
            None => false,
        }
    }

    fn cutoff_ms(&self) -> i64 {
        self.frontier_ms
            .map_or(i64::MIN, |f| f.saturating_sub(self.horizon_ms))
    }

    fn advance(&mut self, flush: bool) {
        self.advance_deferring(flush, None);
    }

    /// [`Self::advance`], leaving `defer`'s recompute to [`Self::settle`] (it becomes
    /// [`Self::pending`]).
    fn advance_deferring(&mut self, flush: bool, defer: Option<Arc<str>>) {
        if let Some(w) = self.watermark_ms {
            let target = if flush {
                w
            } else {
                w.saturating_sub(self.lateness_ms)
            };
            self.frontier_ms = Some(self.frontier_ms.map_or(target, |f| f.max(target)));
        }
        let frontier = self.frontier_ms.unwrap_or(i64::MIN);
        while let Some((customer_id, hist)) = self.buffer.pop_before(frontier, flush) {
            self.insert_history(customer_id, hist);
        }
        while let Some((at, _)) = self.timers.first() {
            if *at >= frontier {
                break;
            }
            let Some((_, id)) = self.timers.pop_first() else {
                break;
            };
            let Some(c) = self.customers.get_mut(&id) else {
                continue;
            };
            match c.wake_ms() {
                // Fired early: the wake moved on since the entry was made.
                Some(wake) if wake >= frontier => {
                    c.timer_ms = wake;
                    self.timers.insert((wake, id));
                }
                None => {}
                Some(_) => {
                    c.set_wake_ms(None);
                    if !c.dirty {
                        c.dirty = true;
                        self.dirty.push(id);
                    }
                }
            }
        }
        if !self.dirty.is_empty() {
            // Customer id order, as rows were always written in.
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            for id in dirty.drain(..) {
                if defer.as_ref() == Some(&id) {
                    // Stays `dirty`, so later events of the run do not queue it again.
                    self.pending = Some(id);
                    continue;
                }
                // Answers first: the replay evicts what fell behind the cutoff, which
                // may be a just released answer or the touchpoint it rates.
                self.attribute_answers(&id);
                self.recompute(&id);
            }
            // A release after a backlog queues most customers at once: that room is not
            // kept for the life of the partition (16 bytes per customer).
            if dirty.capacity() > KEEP_DIRTY {
                dirty.shrink_to(KEEP_DIRTY);
            }
            self.dirty = dirty;
        }
    }

    fn insert_history(&mut self, customer_id: Arc<str>, hist: HistEvent) {
        self.mark(&customer_id);
        match self.customers.get_mut(&customer_id) {
            Some(customer) => {
                if customer.base_until_ms().is_some_and(|b| hist.time_ms < b) {
                    // Before the checkpoint: only reachable with a horizon shorter than
                    // the lateness. Keep the promise of never losing an event.
                    self.counters.late_events += 1;
                    self.counters.late_before_checkpoint += 1;
                    self.out.unplaced(&customer_id, &hist, true);
                    self.unplaced_extra(&customer_id, &hist);
                    return;
                }
                let mut displaced = None;
                match customer.cap(&hist, self.hot_cap, self.gap_ms) {
                    Capped::No => {}
                    Capped::Refused => {
                        self.counters.hot_customer_events += 1;
                        self.out.unplaced(&customer_id, &hist, false);
                        self.capped_extra(&customer_id, &hist);
                        return;
                    }
                    Capped::Displaced(out) => {
                        // Its placed row (if written) is replaced: `emitted` has moved
                        // past that row's version.
                        self.counters.hot_customer_events += 1;
                        self.out.unplaced(&customer_id, &out, false);
                        displaced = Some(out);
                    }
                }
                self.ids.placed(&customer_id, &hist);
                let duplicates = self.counters.duplicates;
                let kept = customer.add(hist, &mut self.counters.duplicates);
                if self.counters.duplicates == duplicates {
                    self.counters.placed_events += 1;
                }
                if let Some(kept) = kept {
                    // A copy with a higher version (e.g. the re-attributed copy in a full
                    // replay by a fresh group, after a late row for the same event id under
                    // the anonymous id): the placed row goes out again, same content, so
                    // it stays the newest version of that event's row.
                    self.out
                        .touchpoint(&customer_id, kept, kept.emitted_session(), false);
                    kept.emitted = kept.emitted.saturating_add(1);
                }
                let queue = !customer.dirty;
                customer.dirty = true;
                if let Some(out) = displaced {
                    self.unrate_displaced(&customer_id, &out.event_id);
                    self.capped_extra(&customer_id, &out);
                }
                if queue {
                    self.dirty.push(customer_id);
                }
            }
            None => {
                let mut customer = Box::<Customer>::default();
                // A new customer's history holds no duplicate.
                let _ = customer.add(hist, &mut self.counters.duplicates);
                self.counters.placed_events += 1;
                customer.dirty = true;
                self.customers.insert(Arc::clone(&customer_id), customer);
                self.dirty.push(customer_id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
