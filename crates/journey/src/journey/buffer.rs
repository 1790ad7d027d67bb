//! The reorder buffer: events waiting for the release frontier, released in
//! `(event_time, event_id, customer_id)` order.
//!
//! The ordered index holds only keys and a slot number; the events sit in a slab, so
//! inserting into and popping from the index moves small entries, not whole events. The
//! release keys of each customer's buffered events are kept beside it, so a retraction
//! removes that customer's few events without scanning the index (during a catch-up the
//! buffer can hold most of a backlog).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::hash::FastMap;
use crate::journey::session::HistEvent;

/// Release order: `(event_time, event_id, customer_id)`.
pub(super) type BufferKey = (i64, Arc<str>, Arc<str>);

#[derive(Debug, Default)]
pub(super) struct Buffer {
    order: BTreeMap<BufferKey, usize>,
    slots: Vec<Option<HistEvent>>,
    free: Vec<usize>,
    /// `(event_time, event_id)` of each customer's buffered events (ids with none are
    /// absent).
    per_customer: FastMap<Arc<str>, Vec<(i64, Arc<str>)>>,
    /// Event id → time, for customers with at least [`LONG`] buffered events (a backlog
    /// of one busy customer), so that [`Self::get_mut`] need not scan theirs. May name
    /// events released since: hits are checked against `order`. Dropped with the
    /// customer's last buffered event.
    long: FastMap<Arc<str>, FastMap<Arc<str>, i64>>,
}

/// A customer with fewer buffered events than this has them scanned by id.
const LONG: usize = 32;

/// Room the slab and the per-customer index keep once the buffer has drained: a burst
/// does not keep its peak size for the life of the partition.
const KEEP_SLOTS: usize = 256;

impl Buffer {
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// Buffer `event` for `customer`; an event already buffered under the same key only
    /// keeps the higher version. Returns false for such a duplicate.
    pub(super) fn insert(&mut self, customer: Arc<str>, event: HistEvent) -> bool {
        let key = (event.time_ms, Arc::clone(&event.event_id), customer);
        match self.order.entry(key) {
            Entry::Occupied(kept) => {
                if let Some(kept) = self.slots.get_mut(*kept.get()).and_then(Option::as_mut) {
                    kept.version = kept.version.max(event.version);
                }
                false
            }
            Entry::Vacant(slot) => {
                let (time_ms, event_id, customer) = slot.key();
                self.per_customer
                    .entry(Arc::clone(customer))
                    .or_default()
                    .push((*time_ms, Arc::clone(event_id)));
                if !self.long.is_empty() {
                    if let Some(ids) = self.long.get_mut(customer) {
                        ids.insert(Arc::clone(event_id), *time_ms);
                    }
                }
                let at = match self.free.pop() {
                    Some(at) => {
                        self.slots[at] = Some(event);
                        at
                    }
                    None => {
                        self.slots.push(Some(event));
                        self.slots.len() - 1
                    }
                };
                slot.insert(at);
                true
            }
        }
    }

    /// The buffered event of `customer` with `event_id`, at whatever time.
    pub(super) fn get_mut(
        &mut self,
        customer: &Arc<str>,
        event_id: &str,
    ) -> Option<&mut HistEvent> {
        let keys = self.per_customer.get(customer)?;
        let key = if keys.len() < LONG {
            let (time_ms, id) = keys.iter().find(|(_, id)| &**id == event_id)?;
            (*time_ms, Arc::clone(id), Arc::clone(customer))
        } else {
            let ids = self.long.entry(Arc::clone(customer)).or_default();
            if ids.len() < keys.len() || ids.len() > 2 * keys.len() {
                // New, or mostly naming released events: rebuilt.
                ids.clear();
                ids.extend(keys.iter().map(|(t, id)| (Arc::clone(id), *t)));
            }
            let (id, time_ms) = ids.get_key_value(event_id)?;
            let key = (*time_ms, Arc::clone(id), Arc::clone(customer));
            if !self.order.contains_key(&key) {
                // Released since.
                ids.remove(event_id);
                return None;
            }
            key
        };
        let at = *self.order.get(&key)?;
        self.slots.get_mut(at)?.as_mut()
    }

    /// The first event in release order if its time is before `frontier_ms` (any, with
    /// `flush`), removed.
    pub(super) fn pop_before(
        &mut self,
        frontier_ms: i64,
        flush: bool,
    ) -> Option<(Arc<str>, HistEvent)> {
        let entry = self.order.first_entry()?;
        if !flush && entry.key().0 >= frontier_ms {
            return None;
        }
        let ((time_ms, event_id, customer), at) = entry.remove_entry();
        let event = self.take_slot(&customer, time_ms, &event_id, at)?;
        Some((customer, event))
    }

    /// Every buffered event of `customer`, removed, in release order.
    pub(super) fn remove_customer(&mut self, customer: &str) -> Vec<(Arc<str>, HistEvent)> {
        self.long.remove(customer);
        let Some((customer, mut keys)) = self.per_customer.remove_entry(customer) else {
            return Vec::new();
        };
        keys.sort_unstable();
        let mut out = Vec::with_capacity(keys.len());
        for (time_ms, event_id) in keys {
            let key = (time_ms, event_id, Arc::clone(&customer));
            if let Some(at) = self.order.remove(&key) {
                if let Some(event) = self.slots.get_mut(at).and_then(Option::take) {
                    self.free.push(at);
                    out.push((Arc::clone(&customer), event));
                }
            }
        }
        self.reset_if_drained();
        out
    }

    /// `customer`'s buffered events, in no particular order.
    pub(super) fn of_customer<'a>(
        &'a self,
        customer: &str,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a HistEvent)> + 'a {
        self.per_customer
            .get_key_value(customer)
            .into_iter()
            .flat_map(move |(id, keys)| {
                keys.iter().filter_map(move |(time_ms, event_id)| {
                    let at = self
                        .order
                        .get(&(*time_ms, Arc::clone(event_id), Arc::clone(id)))?;
                    Some((id, self.slots.get(*at)?.as_ref()?))
                })
            })
    }

    /// `(customer, event)` in release order.
    /// Every buffered event, in no particular order, to change what it keeps (not its
    /// time or id, which order the buffer).
    pub(super) fn for_each_mut(&mut self, mut f: impl FnMut(&mut HistEvent)) {
        for e in self.slots.iter_mut().flatten() {
            f(e);
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &HistEvent)> {
        self.order
            .iter()
            .filter_map(|((_, _, id), at)| Some((id, self.slots.get(*at)?.as_ref()?)))
    }

    fn take_slot(
        &mut self,
        customer: &str,
        time_ms: i64,
        event_id: &str,
        at: usize,
    ) -> Option<HistEvent> {
        if let Some(keys) = self.per_customer.get_mut(customer) {
            if let Some(i) = keys
                .iter()
                .position(|(t, id)| *t == time_ms && &**id == event_id)
            {
                keys.swap_remove(i);
            }
            if keys.is_empty() {
                self.per_customer.remove(customer);
                if !self.long.is_empty() {
                    self.long.remove(customer);
                }
            }
        }
        let event = self.slots.get_mut(at)?.take();
        self.free.push(at);
        self.reset_if_drained();
        event
    }

    /// Drained: start the slab over rather than keep a free list as long as the largest
    /// burst, and give back room beyond [`KEEP_SLOTS`].
    fn reset_if_drained(&mut self) {
        if !self.order.is_empty() {
            return;
        }
        self.slots.clear();
        self.free.clear();
        if self.slots.capacity() > KEEP_SLOTS {
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        if self.per_customer.capacity() > KEEP_SLOTS {
            self.per_customer = FastMap::default();
        }
        self.long = FastMap::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::catalog::{Channel, Stage};
    use crate::journey::funnel::Steps;

    fn event(time_ms: i64, id: &str) -> HistEvent {
        HistEvent {
            time_ms,
            event_id: Arc::from(id),
            name: Arc::from("Product Viewed"),
            kind: None,
            stage: Stage::Consideration,
            channel: Channel::Web,
            steps: Steps::NONE,
            version: 1,
            emitted: 0,
            session: [0; 2],
            keyed: false,
            extra: false,
        }
    }

    fn ids(events: &[(Arc<str>, HistEvent)]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|(c, e)| (c.to_string(), e.event_id.to_string()))
            .collect()
    }

    #[test]
    fn retraction_takes_only_that_customers_events_in_release_order() {
        let mut b = Buffer::default();
        let (a, z): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("z"));
        assert!(b.insert(Arc::clone(&a), event(30, "a3")));
        assert!(b.insert(Arc::clone(&z), event(10, "z1")));
        assert!(b.insert(Arc::clone(&a), event(10, "a1")));
        assert!(b.insert(Arc::clone(&z), event(20, "z2")));
        assert!(b.insert(Arc::clone(&a), event(20, "a2")));
        // A duplicate key keeps one entry.
        assert!(!b.insert(Arc::clone(&a), event(20, "a2")));
        assert_eq!(b.len(), 5);

        // Release one of a's events first: the index must forget it.
        let (c, e) = b.pop_before(15, false).unwrap();
        assert_eq!((&*c, &*e.event_id), ("a", "a1"));
        let (c, e) = b.pop_before(15, false).unwrap();
        assert_eq!((&*c, &*e.event_id), ("z", "z1"));
        assert!(b.pop_before(15, false).is_none());

        let removed = b.remove_customer("a");
        assert_eq!(
            ids(&removed),
            vec![("a".into(), "a2".into()), ("a".into(), "a3".into())]
        );
        assert!(b.remove_customer("a").is_empty());
        assert_eq!(b.len(), 1);
        let rest: Vec<_> = b
            .iter()
            .map(|(c, e)| (c.to_string(), e.event_id.to_string()))
            .collect();
        assert_eq!(rest, vec![("z".to_string(), "z2".to_string())]);
        // Found by id alone, at whatever time.
        assert_eq!(b.get_mut(&z, "z2").map(|e| e.time_ms), Some(20));
        assert!(b.get_mut(&z, "z1").is_none());
        assert!(b.get_mut(&a, "z2").is_none());
        // Slots freed by the retraction are reused.
        assert!(b.insert(Arc::clone(&a), event(40, "a4")));
        assert_eq!(b.slots.len(), 5);
    }

    #[test]
    fn a_long_backlog_is_found_by_id() {
        let mut b = Buffer::default();
        let (a, z): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("z"));
        b.insert(Arc::clone(&z), event(0, "shared"));
        for i in 0..(3 * LONG as i64) {
            b.insert(Arc::clone(&a), event(100 + i, &format!("a{i}")));
        }
        for i in 0..(3 * LONG as i64) {
            let got = b.get_mut(&a, &format!("a{i}")).map(|e| e.time_ms);
            assert_eq!(got, Some(100 + i));
        }
        assert!(b.get_mut(&a, "shared").is_none());
        // Release z's and most of a's: released ids are not found, the rest and new ones
        // are.
        for _ in 0..(2 * LONG) {
            b.pop_before(i64::MAX, true);
        }
        b.insert(Arc::clone(&a), event(1_000, "new"));
        let found = |b: &mut Buffer, id: &str| b.get_mut(&a, id).is_some();
        assert!(!found(&mut b, "a0"));
        assert!(!found(&mut b, &format!("a{}", 2 * LONG - 2)));
        assert!(found(&mut b, &format!("a{}", 2 * LONG)));
        assert!(found(&mut b, "new"));
        assert_eq!(b.remove_customer("a").len(), LONG + 2);
        assert!(b.long.is_empty());
        assert!(!found(&mut b, "new"));
    }

    #[test]
    fn a_drained_burst_gives_its_room_back() {
        let mut b = Buffer::default();
        for i in 0..(3 * KEEP_SLOTS) {
            let customer: Arc<str> = Arc::from(format!("c{i}").as_str());
            b.insert(customer, event(i as i64, &format!("e{i}")));
        }
        assert!(b.slots.capacity() >= 3 * KEEP_SLOTS);
        while b.pop_before(i64::MAX, true).is_some() {}
        assert_eq!(b.len(), 0);
        assert!(b.slots.capacity() <= KEEP_SLOTS);
        assert!(b.per_customer.capacity() <= KEEP_SLOTS);
        assert!(b.per_customer.is_empty());
    }
}
