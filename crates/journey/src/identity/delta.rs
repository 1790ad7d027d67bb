//! Incremental snapshots of stage 1: what changed since the last save (README
//! "Processor state"), the counterpart of `journey/delta.rs`.
//!
//! With change tracking on ([`IdentityStage::track_changes`]) the stage remembers the
//! anonymous ids whose link or unlinked history changed (a new link, a link used on a
//! later day, a history that grew, was re-sent, expired, evicted or erased) and whether
//! the evicted links' fingerprints changed. A delta holds those ids' links and histories
//! (absent: gone), the fingerprints when they changed, and the watermark and counters:
//! its size follows the ids active since the last save, not the identity graph.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use super::{AnonHistory, IdentityCounters, IdentitySnapshot, IdentityStage, SavedLink};
use crate::hash::FastState;

/// Room the change set keeps once saved. Each partition has one, and a backlog or a
/// burst fills it with most of its anonymous ids: kept at that size (it was up to 4,096), the
/// sets of a processor's partitions held ~40 bytes per active customer at 10k
/// customers (docs/performance.md "2026-12-03: memory per active customer"). Regrowing
/// costs less than saving the ids it holds.
pub(super) const KEEP_CHANGED: usize = 256;

/// Anonymous ids changed since the last save.
pub(super) type Changed = HashSet<Box<str>, FastState>;

/// What changed in an identity partition since its previous save.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdentityDelta {
    watermark_ms: Option<i64>,
    counters: IdentityCounters,
    /// Every changed id: its link and history now, each `None` when it has none.
    ids: BTreeMap<String, (Option<SavedLink>, Option<AnonHistory>)>,
    /// All evicted links' fingerprints, ascending, when they changed.
    #[serde(default)]
    evicted_links: Option<Vec<u64>>,
}

impl IdentitySnapshot {
    /// Lay `delta` (taken after this snapshot's state) over it.
    pub fn apply(&mut self, delta: IdentityDelta) {
        self.watermark_ms = delta.watermark_ms;
        self.counters = delta.counters;
        for (id, (link, history)) in delta.ids {
            match link {
                Some(l) => self.links.insert(id.clone(), l),
                None => self.links.remove(&id),
            };
            match history {
                Some(h) => self.unlinked.insert(id, h),
                None => self.unlinked.remove(&id),
            };
        }
        if let Some(evicted) = delta.evicted_links {
            self.evicted_links = evicted;
        }
    }
}

/// [`IdentityDelta`] by reference, from the state in place.
pub struct IdentityDeltaRef<'a>(&'a IdentityStage);

impl Serialize for IdentityDeltaRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let e = self.0;
        let ids: BTreeSet<&str> = e.changed.iter().flatten().map(|id| &**id).collect();
        let mut st = s.serialize_struct("IdentityDelta", 4)?;
        st.serialize_field("watermark_ms", &e.watermark_ms)?;
        st.serialize_field("counters", &e.counters)?;
        st.serialize_field("ids", &IdsRef(e, &ids))?;
        let evicted = e.evicted_changed.then(|| {
            let mut v: Vec<u64> = e.evicted.iter().copied().collect();
            v.sort_unstable();
            v
        });
        st.serialize_field("evicted_links", &evicted)?;
        st.end()
    }
}

/// The changed ids with their link (`[user, day]`) and history, in id order.
struct IdsRef<'a>(&'a IdentityStage, &'a BTreeSet<&'a str>);

impl Serialize for IdsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        s.collect_map(self.1.iter().map(|id| {
            let link = e
                .links
                .get_key_value(*id)
                .map(|(k, l)| (k.user(), l.day.get()));
            (*id, (link, e.unlinked.get(*id)))
        }))
    }
}

impl IdentityStage {
    /// Record from now on which ids change, for [`Self::delta_ref`].
    pub fn track_changes(&mut self) {
        if self.changed.is_none() {
            self.changed = Some(Changed::default());
        }
    }

    /// Ids changed since the last [`Self::mark_saved`].
    pub fn changed_ids(&self) -> usize {
        self.changed.as_ref().map_or(0, HashSet::len)
    }

    /// What changed since the last [`Self::mark_saved`]; `None` when that cannot be told
    /// (changes not tracked, or histories were evicted while restoring under a smaller
    /// budget): save the whole snapshot then.
    pub fn delta_ref(&self) -> Option<IdentityDeltaRef<'_>> {
        (self.changed.is_some() && !self.whole_next).then_some(IdentityDeltaRef(self))
    }

    /// The state was saved (whole or as a delta): changes count from here.
    pub fn mark_saved(&mut self) {
        if let Some(c) = &mut self.changed {
            c.clear();
            if c.capacity() > KEEP_CHANGED {
                c.shrink_to(KEEP_CHANGED);
            }
        }
        self.evicted_changed = false;
        self.whole_next = false;
    }

    /// `anon`'s link or history changes.
    pub(super) fn mark(&mut self, anon: &str) {
        if let Some(c) = &mut self.changed {
            if !c.contains(anon) {
                c.insert(Box::from(anon));
            }
        }
    }
}
