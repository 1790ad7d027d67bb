//! One customer's derived journey: sessions and funnel attempts as a pure function of a
//! checkpoint ([`Machine`]) and the events after it ([`HistEvent`], sorted).
//!
//! Why replay instead of incremental updates only: a re-attributed anonymous event can
//! land before events the customer already has, which may merge or split sessions and
//! re-anchor funnel attempts. Replaying the bounded history from the checkpoint gives the
//! same answer as a batch computation over the whole log, and [`replay`] also moves the
//! checkpoint forward past events old enough that nothing can land before them anymore.

use serde::{Deserialize, Serialize};

use crate::catalog::{Channel, Stage};
use crate::funnel::{AttemptSlot, ClosedAttempt, FunnelSet};
use crate::hash::id128;

/// What stage 2 keeps of a released event: enough to rebuild sessions and attempts and to
/// re-emit its touchpoint row, not its properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HistEvent {
    pub(crate) time_ms: i64,
    pub(crate) event_id: String,
    /// Event name or message type (session entry/exit).
    pub(crate) name: String,
    pub(crate) stage: Stage,
    pub(crate) channel: Channel,
    /// (funnel index, step mask) for funnels with a matching step.
    pub(crate) steps: Vec<(u16, u32)>,
    /// Stage-1 version of its routing.
    pub(crate) version: u64,
    /// Touchpoint rows emitted for it in this partition (low bits of their version).
    pub(crate) emitted: u16,
    /// Session key of the last touchpoint row emitted for it.
    pub(crate) session: Option<u128>,
}

impl HistEvent {
    /// Total order of a customer's history.
    pub(crate) fn order_key(&self) -> (i64, &str) {
        (self.time_ms, &self.event_id)
    }

    fn mask(&self, funnel: u16) -> u32 {
        self.steps
            .iter()
            .find(|(f, _)| *f == funnel)
            .map_or(0, |(_, m)| *m)
    }
}

/// A session being built.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct SessionAcc {
    /// `id128(customer, first_event_id)`.
    pub(crate) key: u128,
    pub(crate) first_event_id: String,
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    pub(crate) event_count: u32,
    pub(crate) entry_event: String,
    pub(crate) exit_event: String,
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
    /// Indexed like [`FunnelSet::funnels`].
    pub(crate) attempts: Vec<AttemptSlot>,
}

/// Everything a replay derived.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// Every session the replay touched, oldest first, and whether it can no longer change.
    pub(crate) sessions: Vec<(SessionAcc, bool)>,
    /// Every attempt that closed during the replay (or by the frontier at its end), and
    /// whether it can no longer change.
    pub(crate) attempts: Vec<(ClosedAttempt, bool)>,
    /// Session key of each history event.
    pub(crate) event_sessions: Vec<u128>,
    /// Checkpoint after the first `evict` events.
    pub(crate) new_base: Machine,
    /// Earliest deadline of an attempt still open at the end.
    pub(crate) next_deadline_ms: Option<i64>,
}

/// Parameters of a replay that do not change per customer.
pub(crate) struct ReplayParams<'a> {
    pub(crate) funnels: &'a FunnelSet,
    pub(crate) session_gap_ms: i64,
    /// Every event before it has been released: attempts whose window ended before it
    /// are dropped.
    pub(crate) frontier_ms: i64,
}

/// Replay `history` (sorted by [`HistEvent::order_key`]) from `base`. Rows closed within
/// the first `evict` events are final: later insertions (never before the eviction
/// cutoff) cannot change them.
pub(crate) fn replay(
    customer_id: &str,
    base: &Machine,
    history: &[HistEvent],
    evict: usize,
    params: &ReplayParams<'_>,
) -> Replay {
    let funnels = params.funnels.funnels();
    let mut m = base.clone();
    m.attempts.resize(funnels.len(), AttemptSlot::default());
    let mut out = Replay {
        event_sessions: Vec::with_capacity(history.len()),
        ..Replay::default()
    };
    let mut closed = Vec::new();
    let mut final_sessions = 0;
    let mut final_attempts = 0;
    for (i, e) in history.iter().enumerate() {
        if i == evict {
            out.new_base = m.clone();
            final_sessions = out.sessions.len();
            final_attempts = closed.len();
        }
        match &mut m.session {
            Some(s) if e.time_ms.saturating_sub(s.end_ms) <= params.session_gap_ms => {
                s.end_ms = e.time_ms;
                s.event_count = s.event_count.saturating_add(1);
                s.exit_event.clone_from(&e.name);
                s.channels |= channel_bit(e.channel);
            }
            _ => {
                if let Some(done) = m.session.take() {
                    out.sessions.push((done, false));
                }
                m.session = Some(SessionAcc {
                    key: id128(&[customer_id, &e.event_id]),
                    first_event_id: e.event_id.clone(),
                    start_ms: e.time_ms,
                    end_ms: e.time_ms,
                    event_count: 1,
                    entry_event: e.name.clone(),
                    exit_event: e.name.clone(),
                    channels: channel_bit(e.channel),
                });
            }
        }
        out.event_sessions
            .push(m.session.as_ref().map_or(0, |s| s.key));
        for (fi, (slot, funnel)) in m.attempts.iter_mut().zip(funnels).enumerate() {
            let fi = u16::try_from(fi).unwrap_or(u16::MAX);
            slot.step(fi, funnel, e.mask(fi), e.time_ms, &e.event_id, &mut closed);
        }
    }
    if evict >= history.len() {
        out.new_base = m.clone();
        final_sessions = out.sessions.len();
        final_attempts = closed.len();
    }
    if let Some(open) = m.session.take() {
        out.sessions.push((open, false));
    }
    for (fi, (slot, funnel)) in m.attempts.iter_mut().zip(funnels).enumerate() {
        let fi = u16::try_from(fi).unwrap_or(u16::MAX);
        slot.close_expired(fi, funnel, params.frontier_ms, &mut closed);
        if let Some(deadline) = slot.deadline_ms(funnel) {
            out.next_deadline_ms = Some(out.next_deadline_ms.map_or(deadline, |d| d.min(deadline)));
        }
    }
    for (_, fin) in out.sessions.iter_mut().take(final_sessions) {
        *fin = true;
    }
    out.attempts = closed
        .into_iter()
        .enumerate()
        .map(|(i, a)| (a, i < final_attempts))
        .collect();
    out
}
