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
/// exclusion ([`Funnel::step_bits`], [`Funnel::exclusion_bits`]), in funnel order. Serialized as that list. Sixteen bytes: every history event has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Steps {
    /// Matches steps of at most one funnel (mask 0: of none, most events).
    One(u16, u32),
    /// Matches steps of several funnels.
    // A thin pointer: `Box<[_]>` would make every history event 8 bytes larger.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<(u16, u32)>>),
    /// Matches a step of a funnel with a breakdown: the masks, and that funnel's
    /// breakdown values. Only such events pay for the values (a pointer in the same
    /// sixteen bytes otherwise).
    Detailed(Box<Detailed>),
}

/// [`Steps::Detailed`]'s content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Detailed {
    /// As [`Steps::Many`] (one or more entries).
    pub(crate) masks: Vec<(u16, u32)>,
    /// (funnel index, one value per breakdown dimension) for each funnel with a
    /// breakdown one of whose steps the event matches.
    pub(crate) values: Vec<(u16, Box<[Arc<str>]>)>,
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
            Steps::One(f, m) => {
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
            Steps::Detailed(d) => d
                .masks
                .iter()
                .find(|(f, _)| *f == funnel)
                .map_or(0, |(_, m)| *m),
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

    /// This funnel's breakdown values (empty without breakdown or step match).
    pub(crate) fn values(&self, funnel: u16) -> &[Arc<str>] {
        match self {
            Steps::Detailed(d) => d
                .values
                .iter()
                .find(|(f, _)| *f == funnel)
                .map_or(&[], |(_, v)| v),
            _ => &[],
        }
    }

    pub(crate) fn as_slice(&self) -> std::borrow::Cow<'_, [(u16, u32)]> {
        match self {
            Steps::One(_, 0) => std::borrow::Cow::Borrowed(&[]),
            Steps::One(f, m) => std::borrow::Cow::Owned(vec![(*f, *m)]),
            Steps::Many(all) => std::borrow::Cow::Borrowed(all),
            Steps::Detailed(d) => std::borrow::Cow::Borrowed(&d.masks),
        }
    }

    /// From masks and values as [`Steps::Detailed`] holds them (either may be empty).
    pub(crate) fn from_parts(masks: Vec<(u16, u32)>, values: Vec<(u16, Box<[Arc<str>]>)>) -> Self {
        if !values.is_empty() {
            return Steps::Detailed(Box::new(Detailed { masks, values }));
        }
        Steps::from_pairs(masks)
    }

    /// All funnels' breakdown values.
    pub(crate) fn all_values(&self) -> &[(u16, Box<[Arc<str>]>)] {
        match self {
            Steps::Detailed(d) => &d.values,
            _ => &[],
        }
    }
}

/// Serialized as the list of masks (as before breakdowns existed), or, for
/// [`Steps::Detailed`], as `{"masks": [..], "values": [..]}`.
impl Serialize for Steps {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Steps::Detailed(d) => d.serialize(serializer),
            _ => self.as_slice().serialize(serializer),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StepsRepr {
    Masks(Vec<(u16, u32)>),
    Detailed(Detailed),
}

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match StepsRepr::deserialize(deserializer)? {
            StepsRepr::Masks(all) => Steps::from_pairs(all),
            StepsRepr::Detailed(d) => Steps::from_parts(d.masks, d.values),
        })
    }
}

#[cfg(test)]
mod tests;
