//! Funnel definitions and the anchored-attempt state machine (docs/design.md §5).
//!
//! Definitions come from TOML (`deploy/funnels.toml`). Stage 2 matches each event against
//! every step once, when the event enters ([`FunnelSet::matches`]), and keeps only the
//! resulting bit masks: the properties themselves are not needed again, which keeps
//! per-customer history small. [`AttemptSlot::step`] then applies rules 1–4 to events
//! in `(event_time, event_id)` order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{JourneyEvent, MessageType};
use crate::JourneyError;

/// Most steps a funnel may have (step masks are `u32`; `reached_step` is `UInt8`).
pub const MAX_STEPS: usize = 32;

/// The funnels file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunnelsFile {
    /// `[[funnel]]` tables.
    #[serde(default)]
    funnel: Vec<FunnelDef>,
}

/// One `[[funnel]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunnelDef {
    /// Unique name, stored in `funnel_attempts.funnel` and used as a metric label.
    name: String,
    /// Time from the step-1 event within which every later step must happen, seconds.
    window_secs: u64,
    /// Ordered steps.
    steps: Vec<StepDef>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDef {
    /// Track event name, exact.
    event: String,
    /// Property equality filters, all must hold.
    #[serde(default, rename = "where")]
    filters: BTreeMap<String, toml::Value>,
}

/// A validated step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Track event name the step matches.
    pub event: String,
    /// Top-level property → required value.
    pub filters: Vec<(String, Value)>,
}

impl Step {
    fn matches(&self, event: &JourneyEvent) -> bool {
        event.kind == MessageType::Track
            && event.event.as_deref() == Some(self.event.as_str())
            && self
                .filters
                .iter()
                .all(|(k, want)| event.properties.get(k).is_some_and(|v| same_value(v, want)))
    }
}

/// Equality where `1` and `1.0` are the same number; otherwise JSON equality.
fn same_value(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => got == want,
    }
}

/// A validated funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Funnel {
    /// Unique name.
    pub name: String,
    /// Window from the step-1 event, ms.
    pub window_ms: i64,
    /// Ordered steps, at least one and at most [`MAX_STEPS`].
    pub steps: Vec<Step>,
}

/// All configured funnels, in file order (the order of attempt rows and of the masks).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunnelSet {
    funnels: Vec<Funnel>,
}

impl FunnelSet {
    /// Parse and validate TOML text; `origin` names the file in errors.
    pub fn from_toml_str(text: &str, origin: Option<&str>) -> Result<Self, JourneyError> {
        let file: FunnelsFile =
            toml::from_str(text).map_err(|e| JourneyError::invalid("funnels", origin, e))?;
        let bad = |message: String| JourneyError::invalid("funnels", origin, message);
        let mut names = BTreeSet::new();
        let mut funnels = Vec::with_capacity(file.funnel.len());
        for def in file.funnel {
            if def.name.trim().is_empty() {
                return Err(bad("funnel.name must not be empty".into()));
            }
            if !names.insert(def.name.clone()) {
                return Err(bad(format!("duplicate funnel name `{}`", def.name)));
            }
            let window_ms = i64::try_from(def.window_secs.saturating_mul(1000))
                .ok()
                .filter(|w| *w > 0)
                .ok_or_else(|| {
                    bad(format!(
                        "funnel `{}`: window_secs must be positive, got {}",
                        def.name, def.window_secs
                    ))
                })?;
            if def.steps.is_empty() || def.steps.len() > MAX_STEPS {
                return Err(bad(format!(
                    "funnel `{}`: steps must have 1 to {MAX_STEPS} entries, got {}",
                    def.name,
                    def.steps.len()
                )));
            }
            let mut steps = Vec::with_capacity(def.steps.len());
            for (i, step) in def.steps.into_iter().enumerate() {
                if step.event.trim().is_empty() {
                    return Err(bad(format!(
                        "funnel `{}` step {}: event must not be empty",
                        def.name,
                        i + 1
                    )));
                }
                let mut filters = Vec::with_capacity(step.filters.len());
                for (key, value) in step.filters {
                    let json = match value {
                        toml::Value::String(s) => Value::String(s),
                        toml::Value::Integer(n) => Value::from(n),
                        toml::Value::Boolean(b) => Value::Bool(b),
                        toml::Value::Float(f) => serde_json::Number::from_f64(f)
                            .map(Value::Number)
                            .ok_or_else(|| {
                                bad(format!(
                                    "funnel `{}` step {} where.{key}: {f} is not a JSON number",
                                    def.name,
                                    i + 1
                                ))
                            })?,
                        other => {
                            return Err(bad(format!(
                                "funnel `{}` step {} where.{key}: only strings, numbers and \
                                 booleans can be compared, got {}",
                                def.name,
                                i + 1,
                                other.type_str()
                            )))
                        }
                    };
                    filters.push((key, json));
                }
                steps.push(Step {
                    event: step.event,
                    filters,
                });
            }
            funnels.push(Funnel {
                name: def.name,
                window_ms,
                steps,
            });
        }
        if funnels.len() > usize::from(u16::MAX) {
            return Err(bad("too many funnels".into()));
        }
        Ok(Self { funnels })
    }

    /// Read and parse a funnels file.
    pub fn load(path: &Path) -> Result<Self, JourneyError> {
        let text = crate::read_file(path)?;
        Self::from_toml_str(&text, Some(&path.display().to_string()))
    }

    /// The funnels, in file order.
    pub fn funnels(&self) -> &[Funnel] {
        &self.funnels
    }

    /// Longest window, ms (0 without funnels): how far back history must reach.
    pub fn max_window_ms(&self) -> i64 {
        self.funnels.iter().map(|f| f.window_ms).max().unwrap_or(0)
    }

    /// For each funnel with at least one matching step: (funnel index, bit i set when
    /// step i+1 matches). Empty (no allocation) for most events.
    pub fn matches(&self, event: &JourneyEvent) -> Vec<(u16, u32)> {
        self.masks(event).collect()
    }

    /// [`Self::matches`] as kept in a customer's history: no allocation for the usual
    /// zero or one matching funnel.
    pub(crate) fn steps(&self, event: &JourneyEvent) -> Steps {
        let mut masks = self.masks(event);
        match (masks.next(), masks.next()) {
            (None, _) => Steps::NONE,
            (Some((f, m)), None) => Steps::One(f, m),
            (Some(a), Some(b)) => Steps::Many(Box::new([a, b].into_iter().chain(masks).collect())),
        }
    }

    fn masks<'a>(&'a self, event: &'a JourneyEvent) -> impl Iterator<Item = (u16, u32)> + 'a {
        // Only a named track event can match a step.
        let named = event.kind == MessageType::Track && event.event.is_some();
        self.funnels
            .iter()
            .enumerate()
            .filter(move |_| named)
            .filter_map(move |(fi, funnel)| {
                let mask = funnel
                    .steps
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.matches(event))
                    .fold(0u32, |m, (i, _)| m | (1 << i));
                match (mask != 0, u16::try_from(fi)) {
                    (true, Ok(fi)) => Some((fi, mask)),
                    _ => None,
                }
            })
    }
}

/// An event's step masks, (funnel index, mask) for each funnel with a matching step, in
/// funnel order. Serialized as that list. Sixteen bytes: every history event has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Steps {
    /// Matches steps of at most one funnel (mask 0: of none, most events).
    One(u16, u32),
    /// Matches steps of several funnels.
    // A thin pointer: `Box<[_]>` would make every history event 8 bytes larger.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<(u16, u32)>>),
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
        }
    }

    fn as_slice(&self) -> std::borrow::Cow<'_, [(u16, u32)]> {
        match self {
            Steps::One(_, 0) => std::borrow::Cow::Borrowed(&[]),
            Steps::One(f, m) => std::borrow::Cow::Owned(vec![(*f, *m)]),
            Steps::Many(all) => std::borrow::Cow::Borrowed(all),
        }
    }
}

impl Serialize for Steps {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let all = Vec::<(u16, u32)>::deserialize(deserializer)?;
        Ok(match all.as_slice() {
            [] => Steps::NONE,
            [(f, m)] => Steps::One(*f, *m),
            _ => Steps::Many(Box::new(all)),
        })
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Reached the last step within the window.
    Converted,
    /// The window passed first.
    Dropped,
}

impl Outcome {
    /// Value stored in `funnel_attempts.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Converted => "converted",
            Outcome::Dropped => "dropped",
        }
    }
}

/// An open attempt: the steps reached so far (index 0 is the step-1 event), as
/// (event time, event id). The ids are shared with the customer's history.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct OpenAttempt {
    pub(crate) steps: Vec<(i64, Arc<str>)>,
}

impl OpenAttempt {
    pub(crate) fn start_ms(&self) -> i64 {
        self.steps.first().map_or(i64::MIN, |s| s.0)
    }

    /// Steps reached so far.
    pub(crate) fn reached(&self) -> usize {
        self.steps.len()
    }

    /// Time each reached step happened, ms.
    pub(crate) fn step_times_ms(&self) -> Vec<i64> {
        self.steps.iter().map(|s| s.0).collect()
    }

    /// Event id of each reached step.
    pub(crate) fn step_event_ids(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.1.as_ref().to_owned()).collect()
    }
}

/// A closed attempt, ready to become a row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClosedAttempt {
    pub(crate) funnel: u16,
    pub(crate) attempt: OpenAttempt,
    pub(crate) outcome: Outcome,
    pub(crate) closed_ms: i64,
}

/// One customer's state for one funnel: at most one open attempt (anchored semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct AttemptSlot(pub(crate) Option<OpenAttempt>);

impl AttemptSlot {
    /// Apply one event (events must come in `(event_time, event_id)` order). `mask` is
    /// this funnel's step mask for the event.
    pub(crate) fn step(
        &mut self,
        funnel_index: u16,
        funnel: &Funnel,
        mask: u32,
        time_ms: i64,
        event_id: &Arc<str>,
        closed: &mut Vec<ClosedAttempt>,
    ) {
        // Rule 3: an event past the window proves the watermark passed it.
        self.close_expired(funnel_index, funnel, time_ms, closed);
        let total = funnel.steps.len();
        if let Some(open) = &mut self.0 {
            // Rule 2: the first later event matching the next step advances.
            let next = open.steps.len();
            if mask & (1 << next) != 0 {
                open.steps.push((time_ms, Arc::clone(event_id)));
                if open.steps.len() == total {
                    self.close(funnel_index, Outcome::Converted, time_ms, closed);
                }
            }
            // Consumed or not, an open attempt ignores other step-1 events (rule 1), and the
            // event that converted it does not also start the next one (rule 4: "next").
            return;
        }
        if mask & 1 != 0 {
            // Rule 1 and 4: no open attempt, a step-1 event starts one.
            // Room for every step: growing one at a time would reallocate.
            let mut steps = Vec::with_capacity(total);
            steps.push((time_ms, Arc::clone(event_id)));
            self.0 = Some(OpenAttempt { steps });
            if total == 1 {
                self.close(funnel_index, Outcome::Converted, time_ms, closed);
            }
        }
    }

    /// Close the open attempt as dropped if `now_ms` is past its window: either an
    /// event's time or the release frontier (everything before it has been seen).
    pub(crate) fn close_expired(
        &mut self,
        funnel_index: u16,
        funnel: &Funnel,
        now_ms: i64,
        closed: &mut Vec<ClosedAttempt>,
    ) {
        if let Some(open) = &self.0 {
            let deadline = open.start_ms().saturating_add(funnel.window_ms);
            if now_ms > deadline {
                self.close(funnel_index, Outcome::Dropped, deadline, closed);
            }
        }
    }

    /// Time after which the open attempt drops, if one is open.
    pub(crate) fn deadline_ms(&self, funnel: &Funnel) -> Option<i64> {
        self.0
            .as_ref()
            .map(|a| a.start_ms().saturating_add(funnel.window_ms))
    }

    fn close(
        &mut self,
        funnel: u16,
        outcome: Outcome,
        closed_ms: i64,
        closed: &mut Vec<ClosedAttempt>,
    ) {
        if let Some(attempt) = self.0.take() {
            closed.push(ClosedAttempt {
                funnel,
                attempt,
                outcome,
                closed_ms,
            });
        }
    }
}

#[cfg(test)]
mod tests;
