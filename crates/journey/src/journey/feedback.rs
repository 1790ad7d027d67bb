//! Survey answers attributed to the touchpoint they rate (README "Feedback attribution"),
//! and the few event details the stage keeps beyond a history entry (an answer, a store).
//!
//! An answer (`Survey Completed`, `NPS Submitted`, ...: a catalog event with `feedback`)
//! rates one earlier touchpoint of the same customer, found by the first rule that
//! matches among the customer's events at or before the answer (in `(time, event id)`
//! order) and at most the window (`feedback_window_secs`) before it:
//!
//! 1. `event_id`: the event `properties.about_event_id` names (its `messageId`, or the
//!    stored `<source>:<messageId>`);
//! 2. `event`: the most recent event named `properties.about_event`;
//! 3. `stage`: the most recent non-feedback event of `properties.about_stage` (else the
//!    catalog's `rates_stage`) and, when given, `properties.about_channel`;
//!
//! else `none`: the answer is stored unattributed and counted.
//!
//! That is the largest candidate by `(rule, time, event id)` (rule 1 above 2 above 3), so
//! a touchpoint arriving late can only raise it, and the stage keeps the largest it has
//! written: when history behind the correction horizon is folded into the checkpoint,
//! the touchpoint an answer was attributed to may leave the history, and recomputing
//! without it must not lower the attribution. Hence the rows equal a batch computation
//! over the whole log whatever the arrival order, as long as every event arrives within
//! the correction horizon and the window fits in it (docs/guarantees.md).
//!
//! Details live in [`Extras`], keyed by customer and event id, only for events that
//! have them (a flag in [`HistEvent`] says so): most events have neither a store nor an
//! answer, and a field in every history event would cost every customer memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::columns::{days, secs};
use crate::event::JourneyEvent;
use crate::hash::FastMap;
use crate::journey::catalog::{Catalog, Channel, Stage};
use crate::journey::properties::{self, Scale};
use crate::journey::rows::FeedbackRow;
use crate::journey::session::HistEvent;

/// Default attribution window: 3 days (within the processor's shortest correction
/// horizon, 7 days, with room for late answers).
pub const DEFAULT_WINDOW_SECS: u64 = 3 * 24 * 3600;

/// What the stage keeps of an event beyond its history entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Extra {
    /// `properties.store_id`, for `customer_touchpoints.store_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) store_id: Option<Arc<str>>,
    /// The answer, when the event is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) answer: Option<Answer>,
}

/// A survey answer and what was last written for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub(crate) time_ms: i64,
    pub(crate) scale: Scale,
    pub(crate) score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) about_event_id: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) about_event: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) about_stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) about_channel: Option<Channel>,
    /// Attribution last written: `(rule, touchpoint time, touchpoint id)`; `None`
    /// before the first row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) written: Option<(Rule, i64, Arc<str>)>,
    /// Rows written for it (low bits of the row version).
    #[serde(default)]
    pub(crate) emitted: u16,
    /// The touchpoint its last row names was displaced by the hot-customer cap (README
    /// "Hot customers"): the next attribution is written whatever it finds, even a lower
    /// one or none, since a batch run would never have placed that touchpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) rated_capped: bool,
}

/// Which attribution rule found the touchpoint; ordered by precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Rule {
    /// Nothing found.
    None,
    /// The most recent touchpoint of the named (or the catalog's) stage / channel.
    Stage,
    /// The most recent touchpoint with the named event.
    Event,
    /// The referenced event id.
    EventId,
}

impl Rule {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rule::None => "none",
            Rule::Stage => "stage",
            Rule::Event => "event",
            Rule::EventId => "event_id",
        }
    }
}

/// The details `event` brings, if any: its store (`properties.store_id`, looked for
/// only when the text names it, so other events are not parsed) and, for a catalog
/// answer event with a valid scale and score, the answer.
pub(crate) fn extra_of(catalog: &Catalog, event: &JourneyEvent) -> Option<Extra> {
    let entry = event.event.as_deref().and_then(|n| catalog.events.get(n));
    let answer_kind = entry.and_then(|e| e.feedback);
    let names_store = event.properties.json().contains("\"store_id\"");
    if answer_kind.is_none() && !names_store {
        return None;
    }
    let props = event.properties.map();
    let store_id = props
        .get("store_id")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(Arc::from);
    let text = |key: &str| {
        props
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(Arc::from)
    };
    let answer = answer_kind
        .and_then(|kind| properties::answer(kind, props).ok())
        .map(|a| Answer {
            time_ms: event.event_time_ms,
            scale: a.scale,
            score: a.score,
            about_event_id: text("about_event_id"),
            about_event: text("about_event"),
            about_stage: props
                .get("about_stage")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .or(entry.and_then(|e| e.rates_stage)),
            about_channel: props
                .get("about_channel")
                .and_then(|v| v.as_str())
                .and_then(Channel::from_message),
            written: None,
            emitted: 0,
            rated_capped: false,
        });
    (store_id.is_some() || answer.is_some()).then_some(Extra { store_id, answer })
}

/// The touchpoint `answer` (at `history[at]`) rates: the rule and the touchpoint's
/// index, `(Rule::None, None)` when no rule matches. Pure: the reference for tests.
pub(crate) fn attribute(
    history: &[HistEvent],
    at: usize,
    answer: &Answer,
    window_ms: i64,
) -> (Rule, Option<usize>) {
    let from = answer.time_ms.saturating_sub(window_ms);
    let before = &history[..at.min(history.len())];
    let in_window = || {
        before
            .iter()
            .enumerate()
            .rev()
            .take_while(move |(_, e)| e.time_ms >= from)
    };
    if let Some(id) = &answer.about_event_id {
        // The stored id (`<source>:<messageId>`) or the `messageId` the client sent.
        let named = |e: &HistEvent| {
            e.event_id == *id || e.event_id.split_once(':').is_some_and(|(_, m)| m == &**id)
        };
        if let Some((i, _)) = in_window().find(|(_, e)| named(e)) {
            return (Rule::EventId, Some(i));
        }
    }
    if let Some(name) = &answer.about_event {
        if let Some((i, _)) = in_window().find(|(_, e)| e.name == *name) {
            return (Rule::Event, Some(i));
        }
    }
    if answer.about_stage.is_some() || answer.about_channel.is_some() {
        let found = in_window().find(|(_, e)| {
            e.stage != Stage::Feedback
                && answer.about_stage.is_none_or(|s| e.stage == s)
                && answer.about_channel.is_none_or(|c| e.channel == c)
        });
        if let Some((i, _)) = found {
            return (Rule::Stage, Some(i));
        }
    }
    (Rule::None, None)
}

/// The order details are saved in: by customer, then event id.
pub(crate) fn sort_saved(saved: &mut [SavedExtra]) {
    saved
        .sort_unstable_by(|a, b| (&a.customer_id, &a.event_id).cmp(&(&b.customer_id, &b.event_id)));
}

/// One customer's event details, saved in snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SavedExtra {
    pub(crate) customer_id: Arc<str>,
    pub(crate) event_id: Arc<str>,
    extra: Extra,
}

/// [`Extra`]s by event id (then customer: a re-attributed event has one under each
/// customer until the former is retracted), and each customer's answers.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    by_event: FastMap<Arc<str>, Vec<(Arc<str>, Extra)>>,
    answers: FastMap<Arc<str>, Vec<Arc<str>>>,
}

impl Extras {
    pub(crate) fn get(&self, customer: &str, event_id: &str) -> Option<&Extra> {
        self.by_event
            .get(event_id)?
            .iter()
            .find(|(c, _)| &**c == customer)
            .map(|(_, x)| x)
    }

    fn get_mut(&mut self, customer: &str, event_id: &str) -> Option<&mut Extra> {
        self.by_event
            .get_mut(event_id)?
            .iter_mut()
            .find(|(c, _)| &**c == customer)
            .map(|(_, x)| x)
    }

    /// Keep `extra` for the event unless the customer already has one for it (the
    /// first copy of an event stays, docs/design.md §4, Duplicates). Returns whether it
    /// was added.
    pub(crate) fn insert(
        &mut self,
        customer: &Arc<str>,
        event_id: &Arc<str>,
        extra: Extra,
    ) -> bool {
        if self.get(customer, event_id).is_some() {
            return false;
        }
        if extra.answer.is_some() {
            self.answers
                .entry(Arc::clone(customer))
                .or_default()
                .push(Arc::clone(event_id));
        }
        self.by_event
            .entry(Arc::clone(event_id))
            .or_default()
            .push((Arc::clone(customer), extra));
        true
    }

    pub(crate) fn remove(&mut self, customer: &str, event_id: &str) -> Option<Extra> {
        let list = self.by_event.get_mut(event_id)?;
        let i = list.iter().position(|(c, _)| &**c == customer)?;
        let (_, extra) = list.swap_remove(i);
        if list.is_empty() {
            self.by_event.remove(event_id);
        }
        if extra.answer.is_some() {
            if let Some(ids) = self.answers.get_mut(customer) {
                ids.retain(|id| &**id != event_id);
                if ids.is_empty() {
                    self.answers.remove(customer);
                }
            }
        }
        Some(extra)
    }

    /// Events with details held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_event.values().map(Vec::len).sum()
    }

    /// Every detail held, in saved order ([`sort_saved`]).
    pub(crate) fn saved(&self) -> Vec<SavedExtra> {
        self.saved_of(|_| true)
    }

    /// The details held for the customers `of` accepts (a delta's changed customers), in
    /// saved order ([`sort_saved`]).
    pub(crate) fn saved_of(&self, of: impl Fn(&str) -> bool) -> Vec<SavedExtra> {
        let mut out: Vec<SavedExtra> = self
            .by_event
            .iter()
            .flat_map(|(event_id, list)| {
                list.iter().filter(|(customer_id, _)| of(customer_id)).map(
                    |(customer_id, extra)| SavedExtra {
                        customer_id: Arc::clone(customer_id),
                        event_id: Arc::clone(event_id),
                        extra: extra.clone(),
                    },
                )
            })
            .collect();
        sort_saved(&mut out);
        out
    }

    /// Whether no details are held.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_event.is_empty()
    }

    pub(crate) fn restore(saved: Vec<SavedExtra>) -> Self {
        let mut extras = Self::default();
        for s in saved {
            extras.insert(&s.customer_id, &s.event_id, s.extra);
        }
        extras
    }
}

/// Per touchpoint and scale: answers counted when first written (a later re-attribution
/// does not move them, so the counters never go down).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tally {
    /// Answers.
    pub responses: u64,
    /// Sum of their scores, in thousandths (exact for the scales' whole and tenth values).
    pub score_millis: u64,
    /// NPS answers of 9 or 10.
    pub promoters: u64,
    /// NPS answers of 0 to 6.
    pub detractors: u64,
}

/// Feedback counts for metrics (part of [`super::JourneyCounters`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeedbackCounters {
    /// Answers written (each once, at its first row).
    pub answers: u64,
    /// Of those, written without a touchpoint (no rule matched, or too late to place).
    pub unattributed: u64,
    /// Answers whose row changed after the first (a late touchpoint, a re-attribution).
    pub reattributed: u64,
    /// Touchpoint (catalog event name, `other` for any other) → scale → tally.
    pub by_touchpoint: BTreeMap<String, BTreeMap<String, Tally>>,
}

impl FeedbackCounters {
    fn count(&mut self, catalog: &Catalog, about: Option<&str>, answer: &Answer) {
        self.answers += 1;
        let Some(about) = about else {
            self.unattributed += 1;
            return;
        };
        let label = if catalog.events.contains_key(about) {
            about
        } else {
            "other"
        };
        let tally = self
            .by_touchpoint
            .entry(label.to_owned())
            .or_default()
            .entry(answer.scale.as_str().to_owned())
            .or_default();
        tally.responses += 1;
        tally.score_millis += (answer.score * 1000.0).round().max(0.0) as u64;
        if answer.scale == Scale::Nps {
            if answer.score >= 9.0 {
                tally.promoters += 1;
            } else if answer.score <= 6.0 {
                tally.detractors += 1;
            }
        }
    }
}

/// The row for `answer` (event `e` of `customer`) rating `about` (`None`: unattributed).
fn row(
    customer: &str,
    e: &HistEvent,
    answer: &Answer,
    rule: Rule,
    about: Option<(&HistEvent, Option<&str>)>,
    is_late: bool,
) -> FeedbackRow {
    let (about_event_id, about_event, about_stage, about_channel, about_store_id, t) = match about {
        Some((a, store)) => (
            a.event_id.as_ref().to_owned(),
            a.name.as_ref().to_owned(),
            a.stage.as_str().to_owned(),
            a.channel.as_str().to_owned(),
            store.unwrap_or_default().to_owned(),
            Some(a.time_ms),
        ),
        None => Default::default(),
    };
    FeedbackRow {
        event_id: e.event_id.as_ref().to_owned(),
        event_date: days(e.time_ms),
        answered_at: secs(e.time_ms),
        answered_ms: e.time_ms,
        customer_id: customer.to_owned(),
        event: e.name.as_ref().to_owned(),
        scale: answer.scale.as_str().to_owned(),
        score: answer.score,
        attribution: rule.as_str().to_owned(),
        about_event_id,
        about_event,
        about_stage,
        about_channel,
        about_store_id,
        about_date: t.map_or(0, days),
        about_time_ms: t.unwrap_or(0),
        delay_ms: t.map_or(0, |t| e.time_ms.saturating_sub(t)),
        is_late,
        // A late (unplaced) copy's row is 0; rows of a placed copy count from 1, so one
        // replaces the late row a first copy may have left.
        version: e
            .version
            .saturating_mul(1 << 16)
            .saturating_add(if is_late {
                0
            } else {
                1 + u64::from(answer.emitted)
            }),
    }
}

impl super::JourneyStage {
    /// Write the rows of `customer`'s answers whose attribution rose (or that have none
    /// yet). Called after each recompute of the customer.
    pub(super) fn attribute_answers(&mut self, customer: &Arc<str>) {
        let Some(ids) = self.out.extras.answers.get(customer).cloned() else {
            return;
        };
        let Some(c) = self.customers.get(customer) else {
            return;
        };
        let mut wrote = false;
        for id in ids {
            let Some(answer) = self
                .out
                .extras
                .get(customer, &id)
                .and_then(|x| x.answer.clone())
            else {
                continue;
            };
            let Ok(at) = c
                .history
                .binary_search_by(|e| e.order_key().cmp(&(answer.time_ms, &*id)))
            else {
                // Still buffered: attributed once released.
                continue;
            };
            let (rule, found) = attribute(&c.history, at, &answer, self.feedback_window_ms);
            let key = found.map(|i| {
                let t = &c.history[i];
                (rule, t.time_ms, Arc::clone(&t.event_id))
            });
            let raised = answer.rated_capped
                || match (&answer.written, &key) {
                    (None, _) => true,
                    (Some(w), Some(k)) => k > w,
                    (Some(_), None) => false,
                };
            if !raised {
                continue;
            }
            let e = &c.history[at];
            let about = found.map(|i| {
                let t = &c.history[i];
                let store = if t.extra {
                    self.out
                        .extras
                        .get(customer, &t.event_id)
                        .and_then(|x| x.store_id.as_deref())
                } else {
                    None
                };
                (t, store)
            });
            let row = row(customer, e, &answer, rule, about, false);
            let first = answer.written.is_none();
            if first {
                let about_name = found.map(|i| c.history[i].name.as_ref());
                self.counters
                    .feedback
                    .count(&self.catalog, about_name, &answer);
            } else {
                self.counters.feedback.reattributed += 1;
            }
            self.out.feedback(row);
            if let Some(a) = self
                .out
                .extras
                .get_mut(customer, &id)
                .and_then(|x| x.answer.as_mut())
            {
                a.written = Some(key.unwrap_or((Rule::None, i64::MIN, Arc::from(""))));
                a.emitted = a.emitted.saturating_add(1);
                a.rated_capped = false;
            }
            wrote = true;
        }
        if wrote {
            // The answer's saved details changed (`written`): the next delta carries them.
            self.mark(customer);
        }
    }

    /// `hist` of `customer` is over the hot-customer cap (refused, or displaced by an
    /// earlier event that arrived later): stored, not placed. An answer's row says it is
    /// unattributed, replacing an attribution written while it was placed; the event's
    /// details go.
    pub(super) fn capped_extra(&mut self, customer: &Arc<str>, hist: &HistEvent) {
        if !hist.extra {
            return;
        }
        let Some(extra) = self.out.extras.remove(customer, &hist.event_id) else {
            return;
        };
        if let Some(answer) = extra.answer {
            if answer.written.is_none() {
                self.counters.feedback.count(&self.catalog, None, &answer);
            } else {
                self.counters.feedback.reattributed += 1;
            }
            // Not late: `emitted` counts the rows written, so this one's version is higher.
            let row = row(customer, hist, &answer, Rule::None, None, false);
            self.out.feedback(row);
        }
    }

    /// `displaced` of `customer` left its place under the hot-customer cap: answers whose
    /// last row names it are attributed again at the customer's recompute.
    pub(super) fn unrate_displaced(&mut self, customer: &Arc<str>, displaced: &str) {
        let Some(ids) = self.out.extras.answers.get(customer).cloned() else {
            return;
        };
        for id in ids {
            if let Some(a) = self
                .out
                .extras
                .get_mut(customer, &id)
                .and_then(|x| x.answer.as_mut())
            {
                if a.written.as_ref().is_some_and(|w| &*w.2 == displaced) {
                    a.rated_capped = true;
                }
            }
        }
    }

    /// `hist` of `customer` was stored unplaced (too late): an answer gets its row,
    /// unattributed and late, and the event's details go.
    pub(super) fn unplaced_extra(&mut self, customer: &Arc<str>, hist: &HistEvent) {
        if !hist.extra {
            return;
        }
        let Some(extra) = self.out.extras.remove(customer, &hist.event_id) else {
            return;
        };
        if let Some(answer) = extra.answer {
            if answer.written.is_none() {
                self.counters.feedback.count(&self.catalog, None, &answer);
                let row = row(customer, hist, &answer, Rule::None, None, true);
                self.out.feedback(row);
            }
        }
    }

    /// Forget the details of `events` of `customer` (retracted, erased, evicted).
    pub(super) fn forget_extras<'a>(
        &mut self,
        customer: &str,
        events: impl IntoIterator<Item = &'a HistEvent>,
    ) {
        for e in events {
            if e.extra {
                self.out.extras.remove(customer, &e.event_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MessageType;
    use crate::journey::funnel::Steps;

    fn ev(t: i64, id: &str, name: &str, stage: Stage, channel: Channel) -> HistEvent {
        HistEvent {
            time_ms: t,
            event_id: Arc::from(id),
            name: Arc::from(name),
            kind: Some(MessageType::Track),
            stage,
            channel,
            steps: Steps::One(0, 0),
            version: 1,
            emitted: 0,
            session: [0; 2],
            keyed: false,
            extra: false,
        }
    }

    fn answer(t: i64) -> Answer {
        Answer {
            time_ms: t,
            scale: Scale::Csat,
            score: 4.0,
            about_event_id: None,
            about_event: None,
            about_stage: None,
            about_channel: None,
            written: None,
            emitted: 0,
            rated_capped: false,
        }
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn rules_apply_in_order_within_the_window() {
        use Channel::*;
        use Stage::*;
        let h = vec![
            ev(0, "old", "Order Delivered", Purchase, Other),
            ev(2 * DAY, "web:d1", "Order Delivered", Purchase, Other),
            ev(3 * DAY, "f1", "Follow-up Completed", Service, CallCenter),
            ev(4 * DAY, "d2", "Order Delivered", Purchase, Other),
            ev(5 * DAY, "r1", "Review Submitted", Feedback, Web),
            ev(6 * DAY, "ans", "Survey Completed", Feedback, Email),
            ev(6 * DAY, "zz", "Order Delivered", Purchase, Other),
        ];
        let w = 4 * DAY;
        let mut a = answer(6 * DAY);
        // Nothing named: unattributed.
        assert_eq!(attribute(&h, 5, &a, w), (Rule::None, None));
        // A stage: the most recent non-feedback event of it, not the review.
        a.about_stage = Some(Service);
        assert_eq!(attribute(&h, 5, &a, w), (Rule::Stage, Some(2)));
        // A channel narrows the stage rule; with no such event, nothing.
        a.about_channel = Some(Store);
        assert_eq!(attribute(&h, 5, &a, w), (Rule::None, None));
        a.about_channel = None;
        // The named event wins over the stage: the most recent before the answer (not
        // the one after it in (time, id) order), within the window.
        a.about_event = Some(Arc::from("Order Delivered"));
        assert_eq!(attribute(&h, 5, &a, w), (Rule::Event, Some(3)));
        // The referenced id wins over both, when within the window.
        a.about_event_id = Some(Arc::from("d1"));
        assert_eq!(attribute(&h, 5, &a, w), (Rule::EventId, Some(1)));
        a.about_event_id = Some(Arc::from("web:d1"));
        assert_eq!(attribute(&h, 5, &a, w), (Rule::EventId, Some(1)));
        a.about_event_id = Some(Arc::from("old"));
        assert_eq!(attribute(&h, 5, &a, w), (Rule::Event, Some(3)));
        // A shorter window leaves only what it reaches.
        a.about_event_id = None;
        assert_eq!(attribute(&h, 5, &a, DAY / 2), (Rule::None, None));
    }

    #[test]
    fn extras_keep_the_first_copy_and_forget_cleanly() {
        let mut x = Extras::default();
        let (c, e) = (Arc::from("c"), Arc::from("e"));
        let with = |score| Extra {
            store_id: None,
            answer: Some(Answer { score, ..answer(0) }),
        };
        assert!(x.insert(&c, &e, with(1.0)));
        assert!(!x.insert(&c, &e, with(2.0)));
        assert!(x.insert(&Arc::from("d"), &e, with(3.0)));
        assert_eq!(
            x.get("c", "e")
                .and_then(|x| x.answer.as_ref())
                .map(|a| a.score),
            Some(1.0)
        );
        let restored = Extras::restore(x.saved());
        assert_eq!(restored.saved(), x.saved());
        assert!(x.remove("c", "e").is_some());
        assert!(x.remove("d", "e").is_some());
        assert_eq!(x.len(), 0);
        assert!(x.answers.is_empty() && x.by_event.is_empty());
    }
}
