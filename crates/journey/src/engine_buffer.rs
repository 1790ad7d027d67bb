//! The reorder buffer: events waiting for the release frontier, released in
//! `(event_time, event_id, customer_id)` order.
//!
//! The ordered index holds only keys and a slot number; the events sit in a slab, so
//! inserting into and popping from the index moves small entries, not whole events. A
//! count per customer lets a retraction find that customer's few buffered events from the
//! newest end instead of comparing every buffered key.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::hash::FastMap;
use crate::session::HistEvent;

/// Release order: `(event_time, event_id, customer_id)`.
pub(super) type BufferKey = (i64, Arc<str>, Arc<str>);

#[derive(Debug, Default)]
pub(super) struct Buffer {
    order: BTreeMap<BufferKey, usize>,
    slots: Vec<Option<HistEvent>>,
    free: Vec<usize>,
    /// Buffered events per customer id (ids with none are absent).
    per_customer: FastMap<Arc<str>, usize>,
}

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
                *self
                    .per_customer
                    .entry(Arc::clone(&slot.key().2))
                    .or_insert(0) += 1;
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
        let ((_, _, customer), at) = entry.remove_entry();
        let event = self.take_slot(&customer, at)?;
        Some((customer, event))
    }

    /// Every buffered event of `customer`, removed, in release order.
    pub(super) fn remove_customer(&mut self, customer: &str) -> Vec<(Arc<str>, HistEvent)> {
        let Some(&count) = self.per_customer.get(customer) else {
            return Vec::new();
        };
        // Usually among the newest: search from that end.
        let mut keys: Vec<BufferKey> = self
            .order
            .keys()
            .rev()
            .filter(|k| &*k.2 == customer)
            .take(count)
            .cloned()
            .collect();
        keys.reverse();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(((_, _, id), at)) = self.order.remove_entry(&key) {
                if let Some(event) = self.take_slot(&id, at) {
                    out.push((id, event));
                }
            }
        }
        out
    }

    /// `(customer, event)` in release order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &HistEvent)> {
        self.order
            .iter()
            .filter_map(|((_, _, id), at)| Some((id, self.slots.get(*at)?.as_ref()?)))
    }

    fn take_slot(&mut self, customer: &str, at: usize) -> Option<HistEvent> {
        if let Some(count) = self.per_customer.get_mut(customer) {
            *count -= 1;
            if *count == 0 {
                self.per_customer.remove(customer);
            }
        }
        let event = self.slots.get_mut(at)?.take()?;
        if self.order.is_empty() {
            // Drained: start the slab over rather than keep a free list as long as the
            // largest burst.
            self.slots.clear();
            self.free.clear();
        } else {
            self.free.push(at);
        }
        Some(event)
    }
}
