//! The anchored-attempt state machine of docs/design.md §5: one customer's open attempt
//! per funnel, stepped over its events in `(event_time, event_id)` order.
//!
//! Every transition depends only on the events' times and order and on the funnel, never
//! on when they arrived or on the wall clock: an attempt closes on an event (conversion,
//! exclusion, a strict funnel's interruption, or an event past a deadline) or when the
//! release frontier passes [`AttemptSlot::deadline_ms`], so a replay gives the same rows.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Attribution, Funnel, Order};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Reached the last step (every required step, for `order = "any"`) in time.
    Converted,
    /// A deadline (window or a step's `within_secs`) passed first, or, in a strict
    /// funnel, another event interrupted the steps.
    Dropped,
    /// An excluded event happened between the exclusion's steps: neither converted nor
    /// dropped.
    Excluded,
}

impl Outcome {
    /// Value stored in `funnel_attempts.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Converted => "converted",
            Outcome::Dropped => "dropped",
            Outcome::Excluded => "excluded",
        }
    }
}

/// An open attempt: its steps as (event time, event id), the ids shared with the
/// customer's history. Ordered and strict funnels keep them aligned to the funnel's steps
/// (index 0 is step 1; a skipped optional step is `(0, "")`), so `steps.len()` is the
/// deepest step reached; `order = "any"` keeps them in the order reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct OpenAttempt {
    pub(crate) steps: Vec<(i64, Arc<str>)>,
    /// Bit i set when step i+1 was reached (what `order = "any"` needs; checkpoints
    /// written before it existed only hold ordered attempts, which do not read it).
    #[serde(default)]
    pub(crate) done: u32,
    /// Breakdown values (README "Funnels", Breakdowns): one per dimension of the step
    /// the funnel's attribution names, or, for `each_step`, one per dimension of each
    /// entry of `steps` (step-major; `""` for a skipped step). `None` without breakdown.
    /// Shared with the event's values (for an allow-listed tuple, with the funnel's
    /// [`super::Funnel::listed`]), so `first_step` and `last_step` attempts allocate
    /// nothing for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) breakdown: Option<Arc<[Arc<str>]>>,
}

impl OpenAttempt {
    fn new(
        capacity: usize,
        step: usize,
        time_ms: i64,
        event_id: &Arc<str>,
        values: Option<&Arc<[Arc<str>]>>,
    ) -> Self {
        // Room for every step: growing one at a time would reallocate.
        let mut steps = Vec::with_capacity(capacity);
        steps.push((time_ms, Arc::clone(event_id)));
        Self {
            steps,
            done: 1 << step,
            breakdown: values.cloned(),
        }
    }

    /// Breakdown values as stored in `funnel_attempts.breakdown_values`.
    pub(crate) fn breakdown_values(&self) -> Vec<String> {
        self.breakdown
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|v| v.as_ref().to_owned())
            .collect()
    }

    pub(crate) fn start_ms(&self) -> i64 {
        self.steps.first().map_or(i64::MIN, |s| s.0)
    }

    /// Time of the last step reached (never a skipped one).
    fn last_ms(&self) -> i64 {
        self.steps.last().map_or(i64::MIN, |s| s.0)
    }

    /// `reached_step`: the deepest step reached (ordered, strict), or how many steps were
    /// reached (any).
    pub(crate) fn reached(&self) -> usize {
        self.steps.len()
    }

    /// Time of each step up to `reached`, ms (0 for a skipped optional step).
    pub(crate) fn step_times_ms(&self) -> Vec<i64> {
        self.steps.iter().map(|s| s.0).collect()
    }

    /// Event id of each step up to `reached` (empty for a skipped optional step).
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
    /// this funnel's mask for the event (steps, then exclusions); strict funnels need
    /// every event of the customer while an attempt is open, with mask 0 for the others.
    /// `values` are the event's breakdown values for this funnel (`None` without one).
    // One argument per thing the rules read; bundling them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step(
        &mut self,
        funnel_index: u16,
        funnel: &Funnel,
        mask: u32,
        time_ms: i64,
        event_id: &Arc<str>,
        values: Option<&Arc<[Arc<str>]>>,
        closed: &mut Vec<ClosedAttempt>,
    ) {
        // Rule 3: an event past a deadline proves the watermark passed it.
        self.close_expired(funnel_index, funnel, time_ms, closed);
        let steps = funnel.step_bits(mask);
        let total = funnel.steps.len();
        if let Some(open) = &mut self.0 {
            if excludes(funnel, open, funnel.exclusion_bits(mask)) {
                // Rule 5: the attempt leaves the funnel; the event is then handled as
                // any event with no attempt open.
                self.close(funnel_index, Outcome::Excluded, time_ms, closed);
            } else if let Some(step) = next_step(funnel, open, steps, time_ms) {
                advance(open, funnel, step, time_ms, event_id, values);
                if converted(funnel, open) {
                    self.close(funnel_index, Outcome::Converted, time_ms, closed);
                }
                // Rule 4: the event that converted it does not also start the next one.
                return;
            } else if funnel.order == Order::Strict {
                // Rule 6: another event interrupts a strict attempt: dropped here, and
                // the event may start the next one (as in PostHog, where only an
                // uninterrupted sequence counts, and a later one still can).
                self.close(funnel_index, Outcome::Dropped, time_ms, closed);
            } else {
                // Rule 1: an open attempt ignores other events, step-1 events included.
                return;
            }
        }
        // Rule 1: no open attempt; a step-1 event (any step's, for `order = "any"`)
        // starts one.
        let first = match funnel.order {
            Order::Any if steps != 0 => steps.trailing_zeros() as usize,
            Order::Ordered | Order::Strict if steps & 1 != 0 => 0,
            _ => return,
        };
        let open = OpenAttempt::new(total, first, time_ms, event_id, values);
        let done = converted(funnel, &open);
        self.0 = Some(open);
        if done {
            self.close(funnel_index, Outcome::Converted, time_ms, closed);
        }
    }

    /// Close the open attempt as dropped if `now_ms` is past its deadline: either an
    /// event's time or the release frontier (everything before it has been seen). It
    /// closes at the deadline.
    pub(crate) fn close_expired(
        &mut self,
        funnel_index: u16,
        funnel: &Funnel,
        now_ms: i64,
        closed: &mut Vec<ClosedAttempt>,
    ) {
        if let Some(deadline) = self.deadline_ms(funnel) {
            if now_ms > deadline {
                self.close(funnel_index, Outcome::Dropped, deadline, closed);
            }
        }
    }

    /// Time after which the open attempt drops, if one is open: the end of its window,
    /// or earlier when the next required step has `within_secs` (measured from the last
    /// step reached). The one place that says when an open attempt drops.
    pub(crate) fn deadline_ms(&self, funnel: &Funnel) -> Option<i64> {
        let open = self.0.as_ref()?;
        let window = open.start_ms().saturating_add(funnel.window_ms);
        if funnel.order == Order::Any {
            return Some(window);
        }
        // The next required step: past any optional ones, which can be skipped.
        let step_deadline = funnel
            .steps
            .iter()
            .skip(open.steps.len())
            .find(|s| !s.optional)
            .and_then(|s| s.within_ms)
            .map(|w| open.last_ms().saturating_add(w));
        Some(step_deadline.map_or(window, |d| d.min(window)))
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

/// Whether an event matching exclusions `hits` (bit j: exclusion j+1) excludes `open`:
/// it reached an exclusion's `from` step and not yet its `to` step.
fn excludes(funnel: &Funnel, open: &OpenAttempt, hits: u32) -> bool {
    if hits == 0 {
        return false;
    }
    funnel
        .exclude
        .iter()
        .enumerate()
        .filter(|(j, _)| hits & (1 << j) != 0)
        .any(|(_, x)| match funnel.order {
            // Validation keeps `any` exclusions at [1, steps]: all the attempt's life.
            Order::Any => true,
            Order::Ordered | Order::Strict => (x.from..x.to).contains(&open.steps.len()),
        })
}

/// The step (0-based) an event matching `steps` advances `open` to, if any. Ordered and
/// strict: the next step, or a later one past optional steps, the nearest that matches
/// and is within its `within_secs` of the last step reached. Any: the lowest step not
/// yet reached.
fn next_step(funnel: &Funnel, open: &OpenAttempt, steps: u32, time_ms: i64) -> Option<usize> {
    if funnel.order == Order::Any {
        let new = steps & !open.done;
        return (new != 0).then(|| new.trailing_zeros() as usize);
    }
    let from = open.steps.len();
    for (k, step) in funnel.steps.iter().enumerate().skip(from) {
        let in_time = step
            .within_ms
            .is_none_or(|w| time_ms.saturating_sub(open.last_ms()) <= w);
        if steps & (1 << k) != 0 && in_time {
            return Some(k);
        }
        if !step.optional {
            return None;
        }
    }
    None
}

fn advance(
    open: &mut OpenAttempt,
    funnel: &Funnel,
    step: usize,
    time_ms: i64,
    event_id: &Arc<str>,
    values: Option<&Arc<[Arc<str>]>>,
) {
    let dims = funnel.breakdown.len();
    let each_step = dims > 0 && funnel.breakdown_attribution == Attribution::EachStep;
    // each_step: the reached steps' values, step-major, in one new tuple.
    let mut all: Vec<Arc<str>> = Vec::new();
    if each_step {
        all.extend(open.breakdown.as_deref().unwrap_or(&[]).iter().cloned());
    }
    if funnel.order != Order::Any && open.steps.len() < step {
        // Skipped optional steps: no time, no event (and no breakdown values).
        let skipped: Arc<str> = Arc::from("");
        if each_step {
            all.resize(step * dims, Arc::clone(&skipped));
        }
        open.steps.resize(step, (0, skipped));
    }
    if dims > 0 {
        match funnel.breakdown_attribution {
            Attribution::FirstStep => {}
            Attribution::LastStep => open.breakdown = values.cloned(),
            Attribution::EachStep => {
                all.extend(values.iter().flat_map(|v| v.iter().cloned()));
                open.breakdown = Some(all.into());
            }
        }
    }
    open.steps.push((time_ms, Arc::clone(event_id)));
    open.done |= 1 << step;
}

/// Ordered and strict: the last step is reached (it is never optional). Any: every
/// required step is.
fn converted(funnel: &Funnel, open: &OpenAttempt) -> bool {
    match funnel.order {
        Order::Any => {
            let required = funnel.required_bits();
            open.done & required == required
        }
        Order::Ordered | Order::Strict => open.steps.len() == funnel.steps.len(),
    }
}
