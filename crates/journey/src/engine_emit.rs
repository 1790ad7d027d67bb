//! Turning a customer's replay into rows: diff against what was written, tombstones,
//! touchpoint re-emission, timers and forgetting idle customers.

use super::{JourneyStage, LiveRow};
use crate::funnel::{ClosedAttempt, Outcome};
use crate::hash::{fingerprint, hex128, id128};
use crate::rows::{FunnelAttemptRow, SessionRow, TouchpointRow};
use crate::session::{replay, HistEvent, ReplayParams, SessionAcc};

/// Either kind of derived row, before it gets a version.
enum Row {
    Session(SessionRow),
    Attempt(u16, FunnelAttemptRow),
}

impl JourneyStage {
    /// Replay one customer and write what changed.
    pub(super) fn recompute(&mut self, id: &str) {
        let Some(mut customer) = self.customers.remove(id) else {
            return;
        };
        if let Some(wake) = customer.wake_ms.take() {
            self.timers.remove(&(wake, id.to_owned()));
        }
        let cutoff = self.cutoff_ms();
        let frontier = self.frontier_ms.unwrap_or(i64::MIN);
        let evict = customer.history.partition_point(|e| e.time_ms < cutoff);
        let params = ReplayParams {
            funnels: &self.funnels,
            session_gap_ms: self.gap_ms,
            frontier_ms: frontier,
        };
        let replayed = replay(id, &customer.base, &customer.history, evict, &params);

        let mut produced = Vec::with_capacity(replayed.sessions.len() + replayed.attempts.len());
        let mut still_live = Vec::new();
        for (session, is_final) in &replayed.sessions {
            let row = session_row(id, session);
            let live = LiveRow {
                key: session.key,
                funnel: None,
                partition_ms: session.start_ms,
                fingerprint: fingerprint(&row),
            };
            self.write_if_changed(id, &customer.live, live, Row::Session(row));
            produced.push((live.key, live.funnel));
            if !is_final {
                still_live.push(live);
            }
        }
        for (attempt, is_final) in &replayed.attempts {
            let Some((key, row)) = self.attempt_row(id, attempt) else {
                continue;
            };
            let live = LiveRow {
                key,
                funnel: Some(attempt.funnel),
                partition_ms: attempt.closed_ms,
                fingerprint: fingerprint(&row),
            };
            self.write_if_changed(id, &customer.live, live, Row::Attempt(attempt.funnel, row));
            produced.push((live.key, live.funnel));
            if !is_final {
                still_live.push(live);
            }
        }
        for old in &customer.live {
            if !produced.contains(&(old.key, old.funnel)) {
                self.emit_tombstone(id, old);
            }
        }
        customer.live = still_live;

        for (event, session) in customer.history.iter_mut().zip(&replayed.event_sessions) {
            if event.session != Some(*session) {
                event.session = Some(*session);
                let row = touchpoint_row(id, event, hex128(*session), false);
                event.emitted = event.emitted.saturating_add(1);
                self.emit_touchpoint(row);
            }
        }
        customer.history.drain(..evict);
        customer.base = replayed.new_base;
        customer.base_until_ms = Some(customer.base_until_ms.map_or(cutoff, |b| b.max(cutoff)));

        // Nothing can change a customer whose newest event is further back than any session
        // gap or funnel window reaches, and whose history is gone: forget it.
        let reach = self.gap_ms.max(self.funnels.max_window_ms());
        let settled_at = customer.last_time_ms.saturating_add(reach);
        if customer.history.is_empty() && cutoff > settled_at {
            self.counters.customers_expired += 1;
            return;
        }
        let expire_at = settled_at.saturating_add(self.horizon_ms);
        let wake = replayed
            .next_deadline_ms
            .map_or(expire_at, |d| d.min(expire_at));
        customer.wake_ms = Some(wake);
        self.timers.insert((wake, id.to_owned()));
        self.customers.insert(id.to_owned(), customer);
    }

    fn write_if_changed(&mut self, id: &str, written: &[LiveRow], new: LiveRow, row: Row) {
        let old = written
            .iter()
            .find(|w| w.key == new.key && w.funnel == new.funnel);
        if let Some(old) = old {
            if old.fingerprint == new.fingerprint && old.partition_ms == new.partition_ms {
                return;
            }
            if old.partition_ms != new.partition_ms {
                // The row moves to another ClickHouse partition (an attempt's close time
                // changed): the old copy would survive FINAL there, so tombstone it.
                self.emit_tombstone(id, old);
            }
        }
        match row {
            Row::Session(mut r) => {
                r.version = self.next_version();
                self.pending.sessions.insert((new.key, new.partition_ms), r);
            }
            Row::Attempt(funnel, mut r) => {
                r.version = self.next_version();
                self.pending
                    .attempts
                    .insert((funnel, new.key, new.partition_ms), r);
            }
        }
    }

    /// A tombstone for a row this partition wrote: same key and partition time.
    pub(super) fn emit_tombstone(&mut self, id: &str, row: &LiveRow) {
        let version = self.next_version();
        match row.funnel {
            None => {
                self.pending.sessions.insert(
                    (row.key, row.partition_ms),
                    SessionRow {
                        session_id: hex128(row.key),
                        customer_id: id.to_owned(),
                        start_ms: row.partition_ms,
                        end_ms: row.partition_ms,
                        event_count: 0,
                        first_event_id: String::new(),
                        entry_event: String::new(),
                        exit_event: String::new(),
                        channels: Vec::new(),
                        is_deleted: true,
                        version,
                    },
                );
            }
            Some(funnel) => {
                let name = self
                    .funnels
                    .funnels()
                    .get(usize::from(funnel))
                    .map(|f| f.name.clone())
                    .unwrap_or_default();
                self.pending.attempts.insert(
                    (funnel, row.key, row.partition_ms),
                    FunnelAttemptRow {
                        attempt_id: hex128(row.key),
                        funnel: name,
                        customer_id: id.to_owned(),
                        start_ms: row.partition_ms,
                        closed_ms: row.partition_ms,
                        outcome: Outcome::Dropped,
                        reached_step: 0,
                        total_steps: 0,
                        step_times_ms: Vec::new(),
                        step_event_ids: Vec::new(),
                        is_deleted: true,
                        version,
                    },
                );
            }
        }
    }

    /// A touchpoint that is in no session: too late, too old to re-attribute, or left in
    /// the buffer by a retraction.
    pub(super) fn emit_unplaced(&mut self, id: &str, event: &HistEvent, is_late: bool) {
        self.emit_touchpoint(touchpoint_row(id, event, String::new(), is_late));
    }

    fn emit_touchpoint(&mut self, row: TouchpointRow) {
        match self.pending.touchpoints.get(&row.event_id) {
            Some(kept) if kept.version > row.version => {}
            _ => {
                self.pending.touchpoints.insert(row.event_id.clone(), row);
            }
        }
    }

    fn attempt_row(&self, id: &str, closed: &ClosedAttempt) -> Option<(u128, FunnelAttemptRow)> {
        let funnel = self.funnels.funnels().get(usize::from(closed.funnel))?;
        let first = closed.attempt.step_event_ids.first()?;
        let reached = closed.attempt.step_times_ms.len();
        let key = id128(&[&funnel.name, id, first]);
        Some((
            key,
            FunnelAttemptRow {
                attempt_id: hex128(key),
                funnel: funnel.name.clone(),
                customer_id: id.to_owned(),
                start_ms: closed.attempt.start_ms(),
                closed_ms: closed.closed_ms,
                outcome: closed.outcome,
                reached_step: u8::try_from(reached).unwrap_or(u8::MAX),
                total_steps: u8::try_from(funnel.steps.len()).unwrap_or(u8::MAX),
                step_times_ms: closed.attempt.step_times_ms.clone(),
                step_event_ids: closed.attempt.step_event_ids.clone(),
                is_deleted: false,
                version: 0,
            },
        ))
    }
}

fn session_row(id: &str, s: &SessionAcc) -> SessionRow {
    SessionRow {
        session_id: hex128(s.key),
        customer_id: id.to_owned(),
        start_ms: s.start_ms,
        end_ms: s.end_ms,
        event_count: s.event_count,
        first_event_id: s.first_event_id.clone(),
        entry_event: s.entry_event.clone(),
        exit_event: s.exit_event.clone(),
        channels: s.channel_list(),
        is_deleted: false,
        version: 0,
    }
}

fn touchpoint_row(id: &str, e: &HistEvent, session_id: String, is_late: bool) -> TouchpointRow {
    TouchpointRow {
        event_id: e.event_id.clone(),
        customer_id: id.to_owned(),
        session_id,
        event_time_ms: e.time_ms,
        stage: e.stage,
        channel: e.channel,
        is_late,
        version: e
            .version
            .saturating_mul(1 << 16)
            .saturating_add(u64::from(e.emitted)),
    }
}
