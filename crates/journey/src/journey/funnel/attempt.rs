//! The anchored-attempt state machine of docs/design.md §5: one customer's open attempt
//! per funnel, stepped over its events in `(event_time, event_id)` order.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Funnel;

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
