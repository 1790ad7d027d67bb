//! Funnel definitions and the anchored-attempt state machine (docs/design.md §5).
//!
//! Definitions come from TOML (`deploy/funnels.toml`, parsed and validated in [`def`]).
//! Stage 2 matches each event against every step and exclusion once, when the event
//! enters ([`FunnelSet::matches`]), and keeps only the resulting bit masks ([`Steps`]):
//! the properties themselves are not needed again, which keeps per-customer history
//! small. Exclusions share the step mask (bits after the steps') rather than adding a
//! second one, so a history event stays sixteen bytes. [`AttemptSlot::step`] (in
//! [`attempt`]) then applies the rules of docs/design.md §5 to events in
//! `(event_time, event_id)` order.

mod attempt;
mod def;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use attempt::Outcome;
pub(crate) use attempt::{AttemptSlot, ClosedAttempt, OpenAttempt};
pub use def::{
    Attribution, Breakdown, Dimension, Exclusion, Filter, Funnel, FunnelSet, Order, Step, ALL,
    MAX_BREAKDOWN_SERIES, MAX_BREAKDOWN_VALUE_BYTES, OTHER,
};

/// Most steps plus exclusions a funnel may have (they share one `u32` mask per event;
/// `reached_step` is `UInt8`).
pub const MAX_STEPS: usize = 32;

/// An event's step masks, (funnel index, mask) for each funnel with a matching step or
/// exclusion ([`Funnel::step_bits`], [`Funnel::exclusion_bits`]), in funnel order, and
/// for each funnel with a breakdown one of whose steps it matches, that funnel's
/// breakdown values ([`Values`]). Sixteen bytes: every history event has one, and only
/// the rarer shapes allocate (docs/performance.md, "funnel breakdowns").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Steps {
    /// Matches steps of at most one funnel (mask 0: of none, most events).
    One(u16, u32),
    /// Matches steps of one funnel with a breakdown, every value allow-listed: (funnel,
    /// mask, index into that funnel's allow-listed tuples, [`Funnel::listed`]). The usual
    /// shape of a breakdown funnel's step, so it costs no allocation.
    Listed(u16, u32, u8),
    /// Matches steps of several funnels.
    // A thin pointer: `Box<[_]>` would make every history event 8 bytes larger.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<(u16, u32)>>),
    /// Any other match with breakdown values (several funnels, or a value outside the
    /// allow-lists): one allocation for the entries (funnel, mask, values; values only
    /// for breakdown funnels whose step matches), besides values of their own.
    #[allow(clippy::box_collection)]
    Detailed(Box<Vec<Entry>>),
}

/// One funnel's part of [`Steps`]: (funnel index, mask, breakdown values).
pub(crate) type Entry = (u16, u32, Option<Values>);

/// One funnel's breakdown values of an event, one per dimension (README "Funnels",
/// Breakdowns). Serialized as the tuple's index or as the list of values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Values {
    /// Every value allow-listed: tuple `i` of the funnel's [`Funnel::listed`], which every
    /// such event and attempt shares. Valid under the same definition only; a snapshot is
    /// restored by definition fingerprint (`journey/remap.rs`), which covers the
    /// allow-lists and their order.
    Listed(u8),
    /// Some value outside the allow-lists: the values themselves (allow-listed ones still
    /// share the configuration's strings).
    Own(Arc<[Arc<str>]>),
}

impl Values {
    /// The values as a shared tuple (`None` for a `Listed` index the funnel lacks).
    pub(crate) fn resolve<'a>(&'a self, funnel: &'a Funnel) -> Option<&'a Arc<[Arc<str>]>> {
        match self {
            Values::Listed(i) => funnel.listed.get(usize::from(*i)),
            Values::Own(v) => Some(v),
        }
    }
}

impl Default for Steps {
    fn default() -> Self {
        Steps::NONE
    }
}

impl Steps {
    pub(crate) const NONE: Steps = Steps::One(0, 0);

    /// Matches no step.
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Steps::One(_, 0))
    }

    /// This funnel's step mask (0 when no step matches).
    pub(crate) fn mask(&self, funnel: u16) -> u32 {
        match self {
            Steps::One(f, m) | Steps::Listed(f, m, _) => {
                if *f == funnel {
                    *m
                } else {
                    0
                }
            }
            Steps::Many(all) => all
                .iter()
                .find(|(f, _)| *f == funnel)
                .map_or(0, |(_, m)| *m),
            Steps::Detailed(all) => all
                .iter()
                .find(|(f, _, _)| *f == funnel)
                .map_or(0, |(_, m, _)| *m),
        }
    }

    /// `(funnel index, mask)` pairs (funnels in index order), sorted by the caller.
    pub(crate) fn from_pairs(all: Vec<(u16, u32)>) -> Steps {
        match all.as_slice() {
            [] => Steps::NONE,
            [(f, m)] => Steps::One(*f, *m),
            _ => Steps::Many(Box::new(all)),
        }
    }

    /// Funnel `fi`'s breakdown values (`None` without breakdown or step match); `funnel`
    /// is funnel `fi`, whose table a `Listed` index reads.
    pub(crate) fn values<'a>(&'a self, fi: u16, funnel: &'a Funnel) -> Option<&'a Arc<[Arc<str>]>> {
        match self {
            Steps::Listed(f, _, i) if *f == fi => funnel.listed.get(usize::from(*i)),
            Steps::Detailed(all) => all
                .iter()
                .find(|(f, _, _)| *f == fi)
                .and_then(|(_, _, v)| v.as_ref())
                .and_then(|v| v.resolve(funnel)),
            _ => None,
        }
    }

    pub(crate) fn as_slice(&self) -> std::borrow::Cow<'_, [(u16, u32)]> {
        use std::borrow::Cow;
        match self {
            Steps::One(_, 0) => Cow::Borrowed(&[]),
            Steps::One(f, m) | Steps::Listed(f, m, _) => Cow::Owned(vec![(*f, *m)]),
            Steps::Many(all) => Cow::Borrowed(all),
            Steps::Detailed(all) => Cow::Owned(all.iter().map(|(f, m, _)| (*f, *m)).collect()),
        }
    }

    /// Every funnel's (index, mask, values), funnels in index order.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        match self {
            Steps::Listed(f, m, i) => vec![(*f, *m, Some(Values::Listed(*i)))],
            Steps::Detailed(all) => all.as_ref().clone(),
            _ => self
                .as_slice()
                .iter()
                .map(|(f, m)| (*f, *m, None))
                .collect(),
        }
    }

    /// From entries as [`Self::entries`] gives them (sorted by the caller), in the
    /// smallest shape that holds them.
    pub(crate) fn from_entries(all: Vec<Entry>) -> Steps {
        if all.iter().all(|(_, _, v)| v.is_none()) {
            return Steps::from_pairs(all.into_iter().map(|(f, m, _)| (f, m)).collect());
        }
        match all.as_slice() {
            [(f, m, Some(Values::Listed(i)))] => Steps::Listed(*f, *m, *i),
            _ => Steps::Detailed(Box::new(all)),
        }
    }
}

/// Serialized as the list of masks (as before breakdowns existed), or, with breakdown
/// values, as `{"masks": [..], "values": [[funnel, values], ..]}` (values: a
/// [`Values::Listed`] index or the list of values).
impl Serialize for Steps {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entries = match self {
            Steps::Listed(..) | Steps::Detailed(_) => self.entries(),
            _ => return self.as_slice().serialize(serializer),
        };
        DetailedRepr {
            masks: entries.iter().map(|(f, m, _)| (*f, *m)).collect(),
            values: entries
                .into_iter()
                .filter_map(|(f, _, v)| v.map(|v| (f, v)))
                .collect(),
        }
        .serialize(serializer)
    }
}

#[derive(Serialize, Deserialize)]
struct DetailedRepr {
    masks: Vec<(u16, u32)>,
    values: Vec<(u16, Values)>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StepsRepr {
    Masks(Vec<(u16, u32)>),
    Detailed(DetailedRepr),
}

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match StepsRepr::deserialize(deserializer)? {
            StepsRepr::Masks(all) => Steps::from_pairs(all),
            StepsRepr::Detailed(d) => {
                let mut values = d.values.into_iter().peekable();
                let entries = d
                    .masks
                    .into_iter()
                    .map(|(f, m)| {
                        let v = values.next_if(|(vf, _)| *vf == f).map(|(_, v)| v);
                        (f, m, v)
                    })
                    .collect();
                Steps::from_entries(entries)
            }
        })
    }
}

#[cfg(test)]
mod tests;
