//! Turning a customer's replay into rows: diff against what was written, tombstones,
//! touchpoint re-emission, timers and forgetting idle customers.
//!
//! Rows are built only when their fingerprint (taken from the replay's own session and
//! attempt state) differs from the one last written. A customer whose new events all come
//! after its history continues from the kept end-of-history machine ([`Customer::tail`]):
//! the sessions and attempts its history already closed are untouched by such events, so
//! only what the new events change is compared and written; anything else replays the
//! history from the checkpoint, whose results the tail shortcut's must always equal
//! (`journey/tests.rs` compares the two over a seeded mixed stream).

use std::sync::Arc;

use super::output::{Output, Row};
use super::{Customer, JourneyStage, LiveRow};
use crate::hash::{fingerprint, Fnv128};
use crate::journey::funnel::{ClosedAttempt, FunnelSet, OpenAttempt};
use crate::journey::session::{Machine, Produced, Replayer};

/// Histories at least this long keep their end-of-history machine between recomputes;
/// shorter ones replay (cheap) and save the memory.
pub(super) const TAIL_MIN_EVENTS: usize = 4;

/// What does not change within one recompute.
pub(super) struct Ctx<'a> {
    pub(super) funnels: &'a FunnelSet,
    pub(super) funnel_keys: &'a [Fnv128],
    pub(super) gap_ms: i64,
    pub(super) cutoff_ms: i64,
    pub(super) frontier_ms: i64,
    pub(super) tail_min_events: usize,
}

impl Ctx<'_> {
    /// `id128(funnel name, customer, first step event id)`; `None` for an attempt that
    /// cannot become a row.
    pub(super) fn attempt_key(&self, id: &str, a: &ClosedAttempt) -> Option<u128> {
        self.open_key(id, a.funnel, &a.attempt)
    }

    /// The same key for an attempt still open: its `funnel_open_attempts` row and, once
    /// it closes, its `funnel_attempts` row share one `attempt_id`.
    fn open_key(&self, id: &str, funnel: u16, a: &OpenAttempt) -> Option<u128> {
        let mut h = *self.funnel_keys.get(usize::from(funnel))?;
        let first = a.steps.first()?;
        h.part(id);
        h.part(&first.1);
        Some(h.finish())
    }
}

impl JourneyStage {
    /// Replay one customer and write what changed.
    pub(super) fn recompute(&mut self, id: &Arc<str>) {
        self.mark(id);
        let ctx = Ctx {
            funnels: &self.funnels,
            funnel_keys: &self.funnel_keys,
            gap_ms: self.gap_ms,
            cutoff_ms: self
                .frontier_ms
                .map_or(i64::MIN, |f| f.saturating_sub(self.horizon_ms)),
            frontier_ms: self.frontier_ms.unwrap_or(i64::MIN),
            tail_min_events: self.tail_min_events,
        };
        let Some(customer) = self.customers.get_mut(id) else {
            return;
        };
        customer.dirty = false;
        // Its timer entry, if it has one (not when the timer just fired).
        let timer = customer.take_wake_ms().map(|_| customer.timer_ms);
        let next_deadline = replay(customer, id, &ctx, &mut self.out, &mut self.scratch);

        // Nothing can change a customer whose newest event is further back than any session
        // gap or funnel window reaches, and whose history is gone: forget it.
        let reach = self.gap_ms.max(self.funnels.max_window_ms());
        let settled_at = customer.last_time_ms.saturating_add(reach);
        if customer.history.is_empty() && ctx.cutoff_ms > settled_at {
            if let Some(at) = timer {
                self.timers.remove(&(at, Arc::clone(id)));
            }
            self.customers.remove(id);
            self.ids.forget(id);
            self.counters.customers_expired += 1;
            return;
        }
        let expire_at = settled_at.saturating_add(self.horizon_ms);
        let wake = next_deadline.map_or(expire_at, |d| d.min(expire_at));
        customer.set_wake_ms(Some(wake));
        // An entry no later than the wake may stay: it only fires early (see `advance`).
        if timer.is_none_or(|at| at > wake) {
            if let Some(at) = timer {
                self.timers.remove(&(at, Arc::clone(id)));
            }
            self.timers.insert((wake, Arc::clone(id)));
            customer.timer_ms = wake;
        }
    }
}

/// Buffers every replay reuses.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    produced: Produced,
    /// Key of each produced attempt (`None`: cannot become a row).
    keys: Vec<Option<u128>>,
    /// Row of each produced session, then attempt, as just written.
    rows: Vec<LiveRow>,
    live: Vec<LiveRow>,
    pairs: Vec<(u128, Option<u16>, bool)>,
    /// History events stepped by replays so far ([`JourneyStage::replayed_events`]).
    pub(super) stepped: u64,
}

/// The customer's machine during a replay: its kept tail, or built from the checkpoint.
enum Stepped {
    Tail(Box<Machine>),
    Base(Machine),
}

impl Stepped {
    fn machine(&self) -> &Machine {
        match self {
            Stepped::Tail(m) => m,
            Stepped::Base(m) => m,
        }
    }
}

/// Replay `c` (from its tail when that gives the same answer, else from its checkpoint),
/// write changed rows, tombstones and touchpoints, evict history behind the cutoff.
/// Returns the earliest deadline of an attempt still open.
fn replay(
    c: &mut Customer,
    id: &Arc<str>,
    ctx: &Ctx<'_>,
    out: &mut Output,
    scratch: &mut Scratch,
) -> Option<i64> {
    let Scratch {
        produced: p,
        keys,
        rows,
        live,
        pairs,
        stepped: work,
    } = scratch;
    let replayer = Replayer::new(ctx.funnels, ctx.gap_ms, id);
    let evict = c.history.partition_point(|e| e.time_ms < ctx.cutoff_ms);

    let mut stepped = None;
    let tail = c.tail.take().filter(|_| c.live_unique);
    if let (Some(mut tail), Some(new)) = (tail, c.history.get(c.stepped as usize..)) {
        p.clear();
        *work += new.len() as u64;
        for e in new {
            replayer.step(&mut tail, e, p);
        }
        replayer.finish(&tail, ctx.frontier_ms, p);
        attempt_keys(ctx, id, p, keys);
        if no_stable_collision(&c.live, p, keys) {
            stepped = Some(Stepped::Tail(tail));
        }
    }
    let fast = stepped.is_some();
    let start = if fast { c.stepped as usize } else { 0 };
    let mut new_base = None;
    let m = match stepped {
        Some(tail) => tail,
        None => {
            p.clear();
            let mut m = c.base.as_deref().cloned().unwrap_or_default();
            *work += c.history.len() as u64;
            for (i, e) in c.history.iter().enumerate() {
                if i == evict && evict > 0 {
                    new_base = Some(m.clone());
                }
                replayer.step(&mut m, e, p);
            }
            replayer.finish(&m, ctx.frontier_ms, p);
            attempt_keys(ctx, id, p, keys);
            Stepped::Base(m)
        }
    };

    // Touchpoints of events whose session changed (on the tail path: the new events;
    // the others keep theirs).
    for (e, (key, started)) in c.history[start..].iter_mut().zip(&p.event_sessions) {
        if e.emitted_session() != Some(*key) {
            e.set_session(*key);
            out.touchpoint(id, e, Some(*key), false);
            e.emitted = e.emitted.saturating_add(1);
        }
        e.keyed = *started;
    }

    // Rows, in replay order: sessions, then attempts.
    rows.clear();
    for (s, by) in p.sessions.drain(..) {
        let row = LiveRow {
            key: s.key,
            partition_ms: s.start_ms,
            fingerprint: fingerprint(&(
                s.key,
                &*s.first_event_id,
                s.start_ms,
                s.end_ms,
                s.event_count,
                &*s.entry_event,
                &*s.exit_event,
                s.channels,
            )),
            closed_by_ms: by.unwrap_or(0),
            funnel: None,
            open: by.is_none(),
            open_step: 0,
        };
        out.write_if_changed(id, &c.live, &row, Row::Session(s));
        rows.push(row);
    }
    for ((a, by), key) in p.attempts.drain(..).zip(&p.attempt_by).zip(keys.iter()) {
        let Some(key) = *key else {
            continue;
        };
        let row = LiveRow {
            key,
            partition_ms: a.closed_ms,
            fingerprint: fingerprint(&(a.outcome, a.closed_ms, &a.attempt.steps)),
            closed_by_ms: by.unwrap_or(0),
            funnel: Some(a.funnel),
            open: by.is_none(),
            open_step: 0,
        };
        out.write_if_changed(id, &c.live, &row, Row::Attempt(a));
        rows.push(row);
    }
    // Attempts still open at the frontier: their `funnel_open_attempts` rows. Always
    // `open` (the next event or the frontier may advance or close them), so every replay
    // produces them again and the loop below tombstones the ones that closed or vanished.
    let machine = m.machine();
    for &(fi, due_ms) in &p.open_attempts {
        let Some(open) = machine
            .attempts
            .get(usize::from(fi))
            .and_then(|slot| slot.0.as_ref())
        else {
            continue;
        };
        let Some(key) = ctx.open_key(id, fi, open) else {
            continue;
        };
        let row = LiveRow {
            key,
            partition_ms: open.start_ms(),
            fingerprint: fingerprint(&(due_ms, &open.steps)),
            closed_by_ms: due_ms,
            funnel: Some(fi),
            open: true,
            open_step: u8::try_from(open.reached()).unwrap_or(u8::MAX).max(1),
        };
        let unchanged = c.live.iter().any(|w| {
            w.same(&row) && w.fingerprint == row.fingerprint && w.partition_ms == row.partition_ms
        });
        if !unchanged {
            let open = Row::Open {
                funnel: fi,
                attempt: open.clone(),
                due_ms,
            };
            out.write_if_changed(id, &c.live, &row, open);
        }
        rows.push(row);
    }
    // Rows written before that this replay no longer produces. On the tail path the
    // closed ones are produced unchanged by definition.
    for old in &c.live {
        if fast && !old.open {
            continue;
        }
        if !rows.iter().any(|r| r.same(old)) {
            out.tombstone(id, old);
        }
    }

    // What can still change: rows not closed by an event behind the cutoff.
    let cutoff = ctx.cutoff_ms;
    let keep = |r: &&LiveRow| r.open || r.closed_by_ms >= cutoff;
    let kept_old = |funnel: bool| {
        c.live
            .iter()
            .filter(move |r| fast && !r.open && r.funnel.is_some() == funnel)
            .filter(keep)
    };
    live.clear();
    live.extend(kept_old(false));
    live.extend(rows.iter().filter(|r| r.funnel.is_none()).filter(keep));
    live.extend(kept_old(true));
    live.extend(rows.iter().filter(|r| r.funnel.is_some()).filter(keep));
    pairs.clear();
    if fast {
        // Old closed rows were unique and nothing new collides with them.
        pairs.extend(
            rows.iter()
                .filter(keep)
                .map(|r| (r.key, r.funnel, r.open_step > 0)),
        );
    } else {
        pairs.extend(live.iter().map(|r| (r.key, r.funnel, r.open_step > 0)));
    }
    pairs.sort_unstable();
    c.live_unique = pairs.windows(2).all(|w| w[0] != w[1]);
    copy_tight(&mut c.live, live);

    // Evict history behind the cutoff into the checkpoint.
    let len = c.history.len();
    if evict > 0 {
        let mut base = match new_base {
            Some(b) => b,
            None if evict >= len => m.machine().clone(),
            None => {
                // Tail path: step the old checkpoint over the evicted events.
                let mut b = c.base.as_deref().cloned().unwrap_or_default();
                let mut sink = Produced::default();
                for e in &c.history[..evict] {
                    replayer.step(&mut b, e, &mut sink);
                }
                b
            }
        };
        base.compact();
        c.base = (!base.is_empty()).then(|| Box::new(base));
        // Their stores and answers go with them (`journey/feedback.rs`).
        for e in c.history[..evict].iter().filter(|e| e.extra) {
            out.extras.remove(id, &e.event_id);
        }
        c.history.drain(..evict);
        if c.history.capacity() > 2 * c.history.len() + 4 {
            c.history.shrink_to_fit();
        }
    }
    c.set_base_until_ms(Some(c.base_until_ms().map_or(cutoff, |b| b.max(cutoff))));

    match u32::try_from(c.history.len()) {
        Ok(len) if len as usize >= ctx.tail_min_events => {
            let mut tail = match m {
                Stepped::Tail(t) => t,
                Stepped::Base(m) => Box::new(m),
            };
            tail.compact();
            c.tail = Some(tail);
            c.stepped = len;
        }
        _ => {
            c.tail = None;
            c.stepped = 0;
        }
    }
    p.next_deadline_ms
}

/// `dst = src`, with no spare room: every customer keeps its list. In place when the
/// length is the same (most replays rewrite the same rows).
fn copy_tight(dst: &mut Box<[LiveRow]>, src: &[LiveRow]) {
    if dst.len() == src.len() {
        dst.copy_from_slice(src);
    } else {
        *dst = src.into();
    }
}

fn attempt_keys(ctx: &Ctx<'_>, id: &str, p: &Produced, keys: &mut Vec<Option<u128>>) {
    keys.clear();
    keys.extend(p.attempts.iter().map(|a| ctx.attempt_key(id, a)));
}

/// True when no row the tail path produced shares its key with a closed written row:
/// then the closed rows a full replay would produce again are exactly the written ones,
/// unchanged, and skipping them changes nothing.
fn no_stable_collision(live: &[LiveRow], p: &Produced, keys: &[Option<u128>]) -> bool {
    let stable = |key: u128, funnel: Option<u16>| {
        live.iter()
            .any(|r| !r.open && r.key == key && r.funnel == funnel)
    };
    p.sessions.iter().all(|(s, _)| !stable(s.key, None))
        && p.attempts
            .iter()
            .zip(keys)
            .all(|(a, k)| k.is_none_or(|k| !stable(k, Some(a.funnel))))
}
