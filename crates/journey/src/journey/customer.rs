//! One customer's state in stage 2 and what a snapshot keeps of it, and the stage's
//! shared event names.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::hash::{FastMap, FastState};
use crate::journey::funnel::FunnelSet;
use crate::journey::session::{HistEvent, Machine};

/// A row key this partition has written and may still change or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LiveRow {
    pub(super) key: u128,
    /// `start_ms` of a session, `closed_ms` of an attempt: the partition column a
    /// tombstone must repeat to land in the same ClickHouse partition.
    pub(super) partition_ms: i64,
    pub(super) fingerprint: u64,
    /// Time of the event whose replay step closed the row (a session: the event that
    /// started the next one), unless `open`. The row becomes final once the eviction
    /// cutoff passes it. For an open-attempt row: the attempt's `due_ms` (the overdue
    /// gauge reads it from here, see [`super::JourneyStage::open_attempts`]).
    pub(super) closed_by_ms: i64,
    /// `None` for a session, the funnel index for an attempt.
    pub(super) funnel: Option<u16>,
    /// Still open at the end of the history (the open session, an attempt only the
    /// release frontier closed): new events at the end can change or remove it, while
    /// closed rows stay as they are.
    pub(super) open: bool,
    /// 0 for sessions and closed attempts; for a `funnel_open_attempts` row (an attempt
    /// still open at the release frontier, always `open`), the step it reached (1-based).
    /// Fits in the row's padding: open attempts cost one row each, no extra field.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) open_step: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl LiveRow {
    /// The same ClickHouse row: same table (session, attempt or open attempt) and key.
    pub(super) fn same(&self, other: &LiveRow) -> bool {
        self.key == other.key
            && self.funnel == other.funnel
            && (self.open_step == 0) == (other.open_step == 0)
    }
}

/// One customer's state. Every active customer has one, boxed in the stage's map, so its
/// size is paid per customer: 96 bytes, one jemalloc size class (a unit test pins it;
/// docs/performance.md, "memory per active customer"). Hence the two optional times as a
/// value and a flag each (an `Option<i64>` takes 16 bytes) and the written rows as a
/// boxed slice (they are replaced whole, so no spare room is needed).
#[derive(Debug, Default)]
pub(super) struct Customer {
    /// Checkpoint covering every event before [`Self::base_until_ms`]; `None` when empty.
    pub(super) base: Option<Box<Machine>>,
    /// [`Self::base_until_ms`] when `has_base_until`.
    base_until: i64,
    /// Released events from the checkpoint on, sorted by `(time, event_id)`.
    pub(super) history: Vec<HistEvent>,
    /// Rows derived from `base` + `history` as last written: sessions first, then
    /// attempts, each in replay order.
    pub(super) live: Box<[LiveRow]>,
    /// Newest event time ever released for the customer.
    pub(super) last_time_ms: i64,
    /// [`Self::wake_ms`] when `has_wake`.
    wake: i64,
    /// Time of its entry in the timer set, which exists while [`Self::wake_ms`] is set: at
    /// most the wake, moved later only when it fires early (the wake moves with nearly
    /// every event).
    pub(super) timer_ms: i64,
    /// Machine after `history[..stepped]`, kept for customers with a long history so
    /// that events appended at its end are stepped from here instead of replaying it
    /// all; dropped when an event lands earlier. Not saved: derived.
    pub(super) tail: Option<Box<Machine>>,
    pub(super) stepped: u32,
    /// Queued in [`JourneyStage::dirty`].
    pub(super) dirty: bool,
    /// No two `live` rows share a key (the tail shortcut relies on it).
    pub(super) live_unique: bool,
    has_base_until: bool,
    has_wake: bool,
}

impl Customer {
    /// The checkpoint's time: it covers every event before it; `None` before the first
    /// replay.
    pub(super) fn base_until_ms(&self) -> Option<i64> {
        self.has_base_until.then_some(self.base_until)
    }

    pub(super) fn set_base_until_ms(&mut self, ms: Option<i64>) {
        self.has_base_until = ms.is_some();
        self.base_until = ms.unwrap_or_default();
    }

    /// When the customer must be recomputed without new events (an attempt's deadline,
    /// or forgetting it).
    pub(super) fn wake_ms(&self) -> Option<i64> {
        self.has_wake.then_some(self.wake)
    }

    pub(super) fn set_wake_ms(&mut self, ms: Option<i64>) {
        self.has_wake = ms.is_some();
        self.wake = ms.unwrap_or_default();
    }

    /// [`Self::wake_ms`], cleared.
    pub(super) fn take_wake_ms(&mut self) -> Option<i64> {
        let wake = self.wake_ms();
        self.set_wake_ms(None);
        wake
    }

    pub(super) fn saved(&self) -> SavedCustomer {
        SavedCustomer {
            base: self.base.as_deref().cloned(),
            base_until_ms: self.base_until_ms(),
            history: self.history.clone(),
            live: self.live.to_vec(),
            last_time_ms: self.last_time_ms,
            wake_ms: self.wake_ms(),
        }
    }

    /// [`Self::saved`] without the copies.
    pub(super) fn saved_ref(&self) -> SavedCustomerRef<'_> {
        SavedCustomerRef {
            base: self.base.as_deref(),
            base_until_ms: self.base_until_ms(),
            history: &self.history,
            live: &self.live,
            last_time_ms: self.last_time_ms,
            wake_ms: self.wake_ms(),
        }
    }

    pub(super) fn restore(saved: SavedCustomer, names: &mut Names, funnels: &FunnelSet) -> Self {
        let mut history = saved.history;
        for e in &mut history {
            e.name = names.intern(&e.name);
        }
        // Deserialized vectors grow by doubling from 4 (JSON gives no length): a
        // one-event customer would keep room for four after every restart.
        history.shrink_to_fit();
        let mut customer = Self {
            base: saved.base.filter(|b| !b.is_empty()).map(|mut b| {
                b.compact();
                // Deserialized breakdown values are strings of their own: share the
                // funnel's allow-listed tuples again, as before the restart.
                for (slot, funnel) in b.attempts.iter_mut().zip(funnels.funnels()) {
                    if let Some(open) = &mut slot.0 {
                        funnel.share_listed(&mut open.breakdown);
                    }
                }
                Box::new(b)
            }),
            history,
            live: saved.live.into_boxed_slice(),
            last_time_ms: saved.last_time_ms,
            ..Self::default()
        };
        customer.set_base_until_ms(saved.base_until_ms);
        customer.set_wake_ms(saved.wake_ms);
        customer
    }

    /// Add a released event to the history (a duplicate only raises the kept version).
    /// Returns the kept event when a duplicate raised the version of an event whose
    /// touchpoint row is already written: that row must go out again with the new version
    /// (see [`JourneyStage::insert_history`](super::JourneyStage)).
    /// Apply the hot-customer cap to `hist` before it joins the history: at most `cap`
    /// events per customer in each `window_ms` window of event time (aligned to the
    /// epoch), the first ones in `(event_time, event_id)` order — the same ones whatever
    /// order they arrive in (README "Hot customers"). A full window refuses an event
    /// that sorts after all of its events; one that sorts before the window's last event
    /// takes its place, and that event leaves the history (returned, to be written as
    /// unplaced). A copy of an event the history holds is left to [`Self::add`]. The
    /// window is counted in the history, so a window partly behind the checkpoint
    /// counts only its part after it.
    pub(super) fn cap(&mut self, hist: &HistEvent, cap: usize, window_ms: i64) -> Capped {
        if cap == 0 || window_ms <= 0 || self.history.len() < cap {
            return Capped::No;
        }
        let key = hist.order_key();
        if self
            .history
            .binary_search_by(|e| e.order_key().cmp(&key))
            .is_ok()
        {
            return Capped::No;
        }
        let start = hist.time_ms.div_euclid(window_ms).saturating_mul(window_ms);
        let end = start.saturating_add(window_ms);
        let lo = self.history.partition_point(|e| e.time_ms < start);
        let hi = self.history.partition_point(|e| e.time_ms < end);
        if hi - lo < cap {
            return Capped::No;
        }
        let last = hi - 1;
        if self.history[last].order_key() < key {
            return Capped::Refused;
        }
        if last < self.stepped as usize {
            // The kept tail machine has stepped over it: replay from the base.
            self.tail = None;
        }
        Capped::Displaced(self.history.remove(last))
    }

    pub(super) fn add(&mut self, hist: HistEvent, duplicates: &mut u64) -> Option<&mut HistEvent> {
        let fresh = self.history.is_empty() && !self.has_base_until;
        self.last_time_ms = if fresh {
            hist.time_ms
        } else {
            self.last_time_ms.max(hist.time_ms)
        };
        match self
            .history
            .binary_search_by(|e| e.order_key().cmp(&hist.order_key()))
        {
            Ok(i) => {
                *duplicates += 1;
                let kept = &mut self.history[i];
                if hist.version > kept.version {
                    kept.version = hist.version;
                    if kept.emitted > 0 {
                        return Some(kept);
                    }
                }
                None
            }
            Err(i) => {
                if i < self.stepped as usize {
                    // Lands inside what the tail already covers: replay from the base.
                    self.tail = None;
                }
                // Most customers have a handful of events: no room to spare for a single
                // one, then room for four, and past that grow by half.
                let len = self.history.len();
                if len == self.history.capacity() {
                    let capacity = match len {
                        0 => 1,
                        1..=3 => 4,
                        _ => len + len / 2,
                    };
                    regrow(&mut self.history, capacity);
                }
                self.history.insert(i, hist);
                None
            }
        }
    }
}

/// Histories shorter than this are scanned for an event id: most customers have a handful
/// of events, and no index to keep.
pub(super) const ID_INDEX_MIN_EVENTS: usize = 32;

/// Where each event id of a long history (at least [`ID_INDEX_MIN_EVENTS`] events) was
/// placed, by customer, so that finding a duplicate (docs/design.md §4, Duplicates) need
/// not scan the history: one scan per event made a customer with 32,000 events in the
/// horizon ~100 times slower per event. Kept beside the customers, not in [`Customer`],
/// so that the many short histories pay nothing. An index may still name events evicted
/// since (eviction does not maintain it): every hit is checked against the history, so
/// the answers are those of a scan. Not saved: derived.
#[derive(Debug, Default)]
pub(super) struct IdIndex(FastMap<Arc<str>, Box<FastMap<Arc<str>, i64>>>);

impl IdIndex {
    /// The position in `history` (`customer`'s) of the event with `event_id`, at
    /// whatever time.
    pub(super) fn find(
        &mut self,
        customer: &Arc<str>,
        history: &[HistEvent],
        event_id: &str,
    ) -> Option<usize> {
        if history.len() < ID_INDEX_MIN_EVENTS {
            if !self.0.is_empty() {
                self.0.remove(&**customer);
            }
            return history.iter().position(|e| &*e.event_id == event_id);
        }
        let ids = self.0.entry(Arc::clone(customer)).or_default();
        if ids.len() < history.len() || ids.len() > 2 * history.len() {
            // New (or restored), or mostly naming evicted events: rebuilt.
            ids.clear();
            ids.extend(history.iter().map(|e| (Arc::clone(&e.event_id), e.time_ms)));
        }
        let time_ms = *ids.get(event_id)?;
        match history.binary_search_by(|e| e.order_key().cmp(&(time_ms, event_id))) {
            Ok(i) => Some(i),
            Err(_) => {
                // Evicted since.
                ids.remove(event_id);
                None
            }
        }
    }

    /// `event` joined `customer`'s history.
    pub(super) fn placed(&mut self, customer: &str, event: &HistEvent) {
        if self.0.is_empty() {
            return;
        }
        if let Some(ids) = self.0.get_mut(customer) {
            ids.insert(Arc::clone(&event.event_id), event.time_ms);
        }
    }

    /// `customer` was forgotten or retracted.
    pub(super) fn forget(&mut self, customer: &str) {
        if !self.0.is_empty() {
            self.0.remove(customer);
        }
    }
}

/// Move `v` into a new allocation of exactly `capacity`. Not `reserve_exact`: glibc's
/// `realloc` bypasses its per-thread cache and costs several times a `malloc` + `free`
/// pair, and these vectors grow one customer event at a time.
pub(crate) fn regrow<T>(v: &mut Vec<T>, capacity: usize) {
    let mut grown = Vec::with_capacity(capacity.max(v.len()));
    grown.append(v);
    *v = grown;
}

/// What the hot-customer cap does with an event ([`Customer::cap`]).
pub(super) enum Capped {
    /// Under the cap (or a copy): added as usual.
    No,
    /// Its window is full of earlier events: stored unplaced.
    Refused,
    /// Added in place of this event, the window's last, which is stored unplaced.
    Displaced(HistEvent),
}

/// A customer as saved in a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct SavedCustomer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) base: Option<Machine>,
    pub(super) base_until_ms: Option<i64>,
    pub(super) history: Vec<HistEvent>,
    pub(super) live: Vec<LiveRow>,
    pub(super) last_time_ms: i64,
    pub(super) wake_ms: Option<i64>,
}

/// [`SavedCustomer`] by reference: the same fields, serialized the same way.
#[derive(Serialize)]
pub(super) struct SavedCustomerRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<&'a Machine>,
    base_until_ms: Option<i64>,
    history: &'a [HistEvent],
    live: &'a [LiveRow],
    last_time_ms: i64,
    wake_ms: Option<i64>,
}

/// Event names shared by every event that has them: names repeat (a catalog's worth),
/// ids do not. Bounded, so a client sending a new name with every event costs one
/// string per event as before, not an ever-growing table.
#[derive(Debug, Default)]
pub(super) struct Names(HashSet<Arc<str>, FastState>);

const MAX_NAMES: usize = 10_000;

impl Names {
    pub(super) fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.get(name) {
            return Arc::clone(known);
        }
        let name: Arc<str> = Arc::from(name);
        if self.0.len() < MAX_NAMES {
            self.0.insert(Arc::clone(&name));
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every active customer pays for its boxed [`Customer`]: at 96 bytes it takes
    /// jemalloc's 96-byte class (glibc: a 112-byte chunk); at 120, as before, 128 in both.
    #[test]
    fn a_customer_takes_96_bytes() {
        assert!(
            std::mem::size_of::<Customer>() <= 96,
            "Customer is {} bytes",
            std::mem::size_of::<Customer>()
        );
    }

    #[test]
    fn optional_times_round_trip() {
        let mut c = Customer::default();
        assert_eq!((c.base_until_ms(), c.wake_ms()), (None, None));
        c.set_base_until_ms(Some(i64::MIN));
        c.set_wake_ms(Some(0));
        assert_eq!((c.base_until_ms(), c.wake_ms()), (Some(i64::MIN), Some(0)));
        assert_eq!(c.take_wake_ms(), Some(0));
        assert_eq!(c.wake_ms(), None);
        c.set_base_until_ms(None);
        assert_eq!(c.base_until_ms(), None);
    }
}
