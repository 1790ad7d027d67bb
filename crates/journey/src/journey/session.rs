//! One customer's derived journey: sessions and funnel attempts as a pure function of a
//! checkpoint ([`Machine`]) and the events after it ([`HistEvent`], sorted).
//!
//! Why replay instead of incremental updates only: a re-attributed anonymous event can
//! land before events the customer already has, which may merge or split sessions and
//! re-anchor funnel attempts. Replaying the bounded history from the checkpoint gives the
//! same answer as a batch computation over the whole log. Events that only extend the
//! history at its end (the usual, in-order case) do not need that: the machine state
//! after the history can be kept and stepped forward ([`Replayer::step`] is the one
//! transition both use, so the two cannot disagree).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::MessageType;
use crate::hash::Fnv128;
use crate::journey::catalog::{Channel, Stage};
use crate::journey::funnel::{AttemptSlot, ClosedAttempt, Funnel, FunnelSet, Steps};

/// What stage 2 keeps of a released event: enough to rebuild sessions and attempts and to
/// re-emit its touchpoint row, not its properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HistEvent {
    pub(crate) time_ms: i64,
    /// Shared with the sessions and attempts that name it.
    pub(crate) event_id: Arc<str>,
    /// Event name or message type (session entry/exit), interned per stage.
    pub(crate) name: Arc<str>,
    /// Message type, for the `customer_touchpoints` row; `None` in snapshots written
    /// before it was kept (such an event's row then shows its name only).
    #[serde(default)]
    pub(crate) kind: Option<MessageType>,
    pub(crate) stage: Stage,
    pub(crate) channel: Channel,
    /// (funnel index, step mask) for funnels with a matching step.
    pub(crate) steps: Steps,
    /// Stage-1 version of its routing.
    pub(crate) version: u64,
    /// Touchpoint rows emitted for it in this partition (low bits of their version).
    pub(crate) emitted: u16,
    /// Session key of the last touchpoint row emitted for it, as two halves (a `u128`
    /// field would align the whole event to 16 bytes); meaningless while `emitted` is 0
    /// (no row yet).
    pub(crate) session: [u64; 2],
    /// `session` is this event's own session key (it started its session): a replay
    /// where it starts one again needs no hashing. A cache, not saved.
    #[serde(skip)]
    pub(crate) keyed: bool,
    /// The stage keeps details of it beyond this entry (a store, an answer:
    /// `journey/feedback.rs`). A flag in the padding, so most events pay nothing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) extra: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl HistEvent {
    /// Total order of a customer's history.
    pub(crate) fn order_key(&self) -> (i64, &str) {
        (self.time_ms, &self.event_id)
    }

    /// Session of the last touchpoint row emitted for it.
    pub(crate) fn emitted_session(&self) -> Option<u128> {
        (self.emitted > 0)
            .then(|| u128::from(self.session[0]) | (u128::from(self.session[1]) << 64))
    }

    pub(crate) fn set_session(&mut self, key: u128) {
        self.session = [key as u64, (key >> 64) as u64];
    }
}

/// A session being built.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct SessionAcc {
    /// `id128(customer, first_event_id)`.
    pub(crate) key: u128,
    pub(crate) first_event_id: Arc<str>,
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    pub(crate) event_count: u32,
    pub(crate) entry_event: Arc<str>,
    pub(crate) exit_event: Arc<str>,
    /// Bit i set for `Channel::ALL[i]`.
    pub(crate) channels: u8,
}

impl SessionAcc {
    /// Distinct channels in declaration order.
    pub(crate) fn channel_list(&self) -> Vec<Channel> {
        Channel::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| self.channels & (1 << i) != 0)
            .map(|(_, c)| *c)
            .collect()
    }
}

fn channel_bit(channel: Channel) -> u8 {
    let i = Channel::ALL.iter().position(|c| *c == channel).unwrap_or(6);
    1 << i
}

/// Per-customer state after a prefix of its events: the open session and, per funnel,
/// the open attempt. Everything else about the prefix is already written out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) session: Option<SessionAcc>,
    /// Empty while no attempt is open, else indexed like [`FunnelSet::funnels`].
    pub(crate) attempts: Vec<AttemptSlot>,
}

impl Machine {
    /// Frees the attempt slots when none is open (most customers, most of the time).
    pub(crate) fn compact(&mut self) {
        if self.attempts.iter().all(|a| a.0.is_none()) {
            self.attempts = Vec::new();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.session.is_none() && self.attempts.iter().all(|a| a.0.is_none())
    }
}

/// Rows a stretch of replay closed, in the order they closed.
#[derive(Debug, Default)]
pub(crate) struct Produced {
    /// Sessions, with the time of the event that closed them (started the next one);
    /// `None` for the session still open at the end, which can still change.
    pub(crate) sessions: Vec<(SessionAcc, Option<i64>)>,
    /// Closed attempts; `attempt_by[i]` is the time of the event that closed
    /// `attempts[i]`, or `None` when the release frontier closed it at the end (a later
    /// event may still reopen and advance it).
    pub(crate) attempts: Vec<ClosedAttempt>,
    pub(crate) attempt_by: Vec<Option<i64>>,
    /// Session key of each stepped event, in order, and whether the event started it.
    pub(crate) event_sessions: Vec<(u128, bool)>,
    /// Earliest deadline of an attempt still open at the end.
    pub(crate) next_deadline_ms: Option<i64>,
    /// Attempts still open at the end, in funnel order: (funnel index, due time ms from
    /// [`AttemptSlot::deadline_ms`]). Their steps stay in the machine's slots.
    pub(crate) open_attempts: Vec<(u16, i64)>,
}

impl Produced {
    pub(crate) fn clear(&mut self) {
        self.sessions.clear();
        self.attempts.clear();
        self.attempt_by.clear();
        self.event_sessions.clear();
        self.next_deadline_ms = None;
        self.open_attempts.clear();
    }
}

/// The transition function of one customer's replay.
pub(crate) struct Replayer<'a> {
    funnels: &'a [Funnel],
    session_gap_ms: i64,
    /// `id128` state after the customer id part.
    customer: Fnv128,
}

impl<'a> Replayer<'a> {
    pub(crate) fn new(funnels: &'a FunnelSet, session_gap_ms: i64, customer_id: &str) -> Self {
        let mut customer = Fnv128::new();
        customer.part(customer_id);
        Self {
            funnels: funnels.funnels(),
            session_gap_ms,
            customer,
        }
    }

    fn session_key(&self, e: &HistEvent) -> u128 {
        if let (true, Some(key)) = (e.keyed, e.emitted_session()) {
            return key;
        }
        let mut h = self.customer;
        h.part(&e.event_id);
        h.finish()
    }

    /// Apply one event (events must come in [`HistEvent::order_key`] order): sessions and
    /// attempts it closes go to `out`, its session key to `out.event_sessions`.
    pub(crate) fn step(&self, m: &mut Machine, e: &HistEvent, out: &mut Produced) {
        let (key, started) = match &mut m.session {
            Some(s) if e.time_ms.saturating_sub(s.end_ms) <= self.session_gap_ms => {
                s.end_ms = e.time_ms;
                s.event_count = s.event_count.saturating_add(1);
                if !Arc::ptr_eq(&s.exit_event, &e.name) {
                    s.exit_event = Arc::clone(&e.name);
                }
                s.channels |= channel_bit(e.channel);
                (s.key, false)
            }
            _ => {
                let key = self.session_key(e);
                let started = SessionAcc {
                    key,
                    first_event_id: Arc::clone(&e.event_id),
                    start_ms: e.time_ms,
                    end_ms: e.time_ms,
                    event_count: 1,
                    entry_event: Arc::clone(&e.name),
                    exit_event: Arc::clone(&e.name),
                    channels: channel_bit(e.channel),
                };
                if let Some(done) = m.session.replace(started) {
                    out.sessions.push((done, Some(e.time_ms)));
                }
                (key, true)
            }
        };
        out.event_sessions.push((key, started));
        // Slots only matter while an attempt is open or the event matches a step.
        if m.attempts.is_empty() {
            if e.steps.is_empty() {
                return;
            }
            m.attempts
                .resize(self.funnels.len(), AttemptSlot::default());
        }
        for (fi, (slot, funnel)) in m.attempts.iter_mut().zip(self.funnels).enumerate() {
            let fi = u16::try_from(fi).unwrap_or(u16::MAX);
            slot.step(
                fi,
                funnel,
                e.steps.mask(fi),
                e.time_ms,
                &e.event_id,
                e.steps.values(fi, funnel),
                &mut out.attempts,
            );
        }
        out.attempt_by.resize(out.attempts.len(), Some(e.time_ms));
    }

    /// The end of a replay at release frontier `frontier_ms`, without changing `m`: the
    /// open session, attempts whose window the frontier passed (dropped), and the others
    /// (still open) with their deadlines.
    pub(crate) fn finish(&self, m: &Machine, frontier_ms: i64, out: &mut Produced) {
        if let Some(open) = &m.session {
            out.sessions.push((open.clone(), None));
        }
        for (fi, (slot, funnel)) in m.attempts.iter().zip(self.funnels).enumerate() {
            let fi = u16::try_from(fi).unwrap_or(u16::MAX);
            let Some(deadline) = slot.deadline_ms(funnel) else {
                continue;
            };
            if frontier_ms > deadline {
                let mut copy = slot.clone();
                copy.close_expired(fi, funnel, frontier_ms, &mut out.attempts);
                out.attempt_by.resize(out.attempts.len(), None);
            } else {
                out.next_deadline_ms =
                    Some(out.next_deadline_ms.map_or(deadline, |d| d.min(deadline)));
                out.open_attempts.push((fi, deadline));
            }
        }
    }
}
