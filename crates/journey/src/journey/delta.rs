//! Incremental snapshots of stage 2: what changed since the last save, instead of the
//! whole partition (docs/design.md §4, Crashes and copies; README "Processor state").
//!
//! A partition's snapshot holds every customer it keeps, so writing it whole costs what
//! the state weighs, however little changed (at a million customers, seconds per save).
//! With change tracking on ([`JourneyStage::track_changes`]) the stage remembers which
//! customers changed — their history, rows, timers or buffered events — and a delta
//! ([`JourneyStage::delta_ref`]) holds those customers whole, the ids of the changed ones
//! it no longer keeps, their buffered events, and the partition's small scalars (watermark,
//! counters, version counter, funnels, delivery positions). Its size follows the change,
//! not the state. [`JourneySnapshot::apply`] lays a delta over the snapshot it followed;
//! a base plus its deltas in order is the state the last delta was taken from
//! (`journey/tests.rs` checks it against the whole snapshot after every save of a mixed
//! stream).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::customer::SavedCustomer;
use super::feedback::SavedExtra;
use super::remap::{self, SavedFunnel};
use super::{Buffered, BufferedRef, JourneyCounters, JourneySnapshot, JourneyStage};
use crate::hash::FastState;

/// Room the change set keeps once saved. Each partition has one, and a backlog or a
/// burst fills it with most of its customers: kept at that size (it was up to 4,096), the
/// sets of a processor's partitions held ~40 bytes per active customer at 10k
/// customers (docs/performance.md "2026-12-03: memory per active customer"). Regrowing
/// costs less than saving the ids it holds.
pub(super) const KEEP_CHANGED: usize = 256;

/// The customers changed since the last save.
pub(super) type Changed = HashSet<Arc<str>, FastState>;

/// What changed in a partition since its previous save ([`JourneyStage::delta_ref`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JourneyDelta {
    watermark_ms: Option<i64>,
    frontier_ms: Option<i64>,
    counters: JourneyCounters,
    version_seq: u64,
    version_n: u64,
    #[serde(default)]
    funnels: Option<Vec<SavedFunnel>>,
    #[serde(default)]
    delivered: BTreeMap<u32, (u64, u32)>,
    #[serde(default)]
    pending: Option<Arc<str>>,
    /// Changed customers the partition still keeps, whole.
    customers: BTreeMap<Arc<str>, SavedCustomer>,
    /// Changed customers it no longer keeps (forgotten, retracted, erased, or with
    /// buffered events only).
    removed: Vec<Arc<str>>,
    /// Every buffered event of the changed customers (theirs in the base are replaced).
    buffer: Vec<Buffered>,
    /// The event details (`journey/feedback.rs`) of the changed customers (theirs in the
    /// base are replaced).
    #[serde(default)]
    extras: Vec<SavedExtra>,
}

impl JourneySnapshot {
    /// Lay `delta` (taken after this snapshot's state) over it.
    pub fn apply(&mut self, delta: JourneyDelta) {
        let changed: HashSet<Arc<str>> = delta
            .customers
            .keys()
            .chain(&delta.removed)
            .cloned()
            .collect();
        self.watermark_ms = delta.watermark_ms;
        self.frontier_ms = delta.frontier_ms;
        self.counters = delta.counters;
        self.version_seq = delta.version_seq;
        self.version_n = delta.version_n;
        if delta.funnels.is_some() {
            self.funnels = delta.funnels;
        }
        self.delivered = delta.delivered;
        self.pending = delta.pending;
        for id in &delta.removed {
            self.customers.remove(id);
        }
        self.customers.extend(delta.customers);
        self.buffer.retain(|b| !changed.contains(&b.customer_id));
        self.buffer.extend(delta.buffer);
        self.extras.retain(|x| !changed.contains(&x.customer_id));
        self.extras.extend(delta.extras);
        super::feedback::sort_saved(&mut self.extras);
    }
}

/// [`JourneyDelta`] by reference, from the state in place.
pub struct JourneyDeltaRef<'a>(&'a JourneyStage);

impl Serialize for JourneyDeltaRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let e = self.0;
        let mut ids: Vec<&Arc<str>> = e.changed.iter().flat_map(|c| c.iter()).collect();
        ids.sort_unstable();
        let changed = e.changed.as_ref();
        let extras = e
            .out
            .extras
            .saved_of(|c| changed.is_some_and(|set| set.contains(c)));
        let mut st = s.serialize_struct("JourneyDelta", 11 + usize::from(!extras.is_empty()))?;
        st.serialize_field("watermark_ms", &e.watermark_ms)?;
        st.serialize_field("frontier_ms", &e.frontier_ms)?;
        st.serialize_field("counters", &e.counters)?;
        st.serialize_field("version_seq", &e.out.version_seq)?;
        st.serialize_field("version_n", &e.out.version_n)?;
        st.serialize_field("funnels", &Some(remap::saved_funnels(&e.funnels)))?;
        st.serialize_field("delivered", &e.delivered)?;
        st.serialize_field("pending", &e.pending)?;
        st.serialize_field("customers", &KeptRef(e, &ids))?;
        let removed: Vec<&Arc<str>> = ids
            .iter()
            .copied()
            .filter(|id| !e.customers.contains_key(*id))
            .collect();
        st.serialize_field("removed", &removed)?;
        st.serialize_field("buffer", &BufferedOfRef(e, &ids))?;
        if extras.is_empty() {
            st.skip_field("extras")?;
        } else {
            st.serialize_field("extras", &extras)?;
        }
        st.end()
    }
}

/// The changed customers still kept, in id order.
struct KeptRef<'a>(&'a JourneyStage, &'a [&'a Arc<str>]);

impl Serialize for KeptRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let customers = &self.0.customers;
        s.collect_map(
            self.1
                .iter()
                .filter_map(|id| Some((*id, customers.get(*id)?.saved_ref()))),
        )
    }
}

/// The buffered events of the changed customers.
struct BufferedOfRef<'a>(&'a JourneyStage, &'a [&'a Arc<str>]);

impl Serialize for BufferedOfRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buffer = &self.0.buffer;
        s.collect_seq(self.1.iter().flat_map(|id| {
            buffer
                .of_customer(id)
                .map(move |(customer_id, event)| BufferedRef { customer_id, event })
        }))
    }
}

impl JourneyStage {
    /// Record from now on which customers change, for [`Self::delta_ref`]. The
    /// processor turns it on; without it a stage keeps no such set.
    pub fn track_changes(&mut self) {
        if self.changed.is_none() {
            self.changed = Some(Changed::default());
        }
    }

    /// Customers changed since the last [`Self::mark_saved`].
    pub fn changed_customers(&self) -> usize {
        self.changed.as_ref().map_or(0, HashSet::len)
    }

    /// What changed since the last [`Self::mark_saved`]; `None` when that cannot be
    /// told (changes not tracked, or the state was remapped onto changed funnels at
    /// restore, which touched customers a delta would not name): save the whole
    /// snapshot then.
    pub fn delta_ref(&self) -> Option<JourneyDeltaRef<'_>> {
        (self.changed.is_some() && !self.whole_next).then_some(JourneyDeltaRef(self))
    }

    /// The state was saved (whole or as a delta): changes count from here.
    pub fn mark_saved(&mut self) {
        if let Some(c) = &mut self.changed {
            c.clear();
            if c.capacity() > KEEP_CHANGED {
                c.shrink_to(KEEP_CHANGED);
            }
        }
        self.whole_next = false;
    }

    /// `id`'s saved state (customer or buffered events) changes.
    pub(super) fn mark(&mut self, id: &Arc<str>) {
        if let Some(c) = &mut self.changed {
            if !c.contains(id) {
                c.insert(Arc::clone(id));
            }
        }
    }

    /// [`Self::mark`] by a borrowed id.
    pub(super) fn mark_str(&mut self, id: &str) {
        if let Some(c) = &mut self.changed {
            if !c.contains(id) {
                c.insert(Arc::from(id));
            }
        }
    }
}
