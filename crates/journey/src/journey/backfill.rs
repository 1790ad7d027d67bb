//! Recomputing one funnel's attempts from stored history: the engine side of
//! `touchstream funnels backfill` (README, "Changing funnels"; docs/design.md §5).
//!
//! Why here and not as a separate batch job: the rows must be the ones the stream would
//! have written (same attempt ids, same rules), and afterwards the stream must continue
//! from them as if the funnel had always been defined this way. So the backfill drives
//! the same replay the stream uses, over each customer's stored events, and leaves the
//! partition's state — step matches, checkpoint slot, written-row bookkeeping — as a
//! stream that had always had today's definition would hold it. Per customer:
//!
//! - a customer the partition still holds: its held events get their step matches for
//!   the funnel from their stored copies; its stored events before the checkpoint are
//!   replayed to find the funnel's attempt open at the checkpoint (put into the
//!   checkpoint) and the attempts that closed before it (written); then the customer is
//!   recomputed like after any change, which writes what its history decides;
//! - any other customer (forgotten after the horizon, or never held here): its stored
//!   events are replayed and every attempt closed by the release frontier is written.
//!
//! Rows of the funnel that the new definition no longer produces are tombstoned. Versions:
//! a held customer's rows take the partition's own counter (later stream rows supersede
//! them); other customers' rows take versions above every stored row of the funnel.

use std::collections::HashSet;
use std::sync::Arc;

use super::customer::Customer;
use super::emit::Ctx;
use super::{JourneyStage, LiveRow};
use crate::event::JourneyEvent;
use crate::journey::funnel::{AttemptSlot, Steps};
use crate::journey::output::Row;
use crate::journey::session::{HistEvent, Machine, Produced, Replayer};
use crate::JourneyError;

/// A stored attempt row of the funnel being recomputed: `(attempt_id, closed_ms)`.
pub type StoredAttempt = (String, i64);

impl JourneyStage {
    /// Index of funnel `name`, or an error naming the configured ones.
    pub fn funnel_index(&self, name: &str) -> Result<u16, JourneyError> {
        let all = self.funnels.funnels();
        all.iter()
            .position(|f| f.name == name)
            .and_then(|i| u16::try_from(i).ok())
            .ok_or_else(|| {
                let known: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
                JourneyError::invalid(
                    "funnels",
                    None,
                    format!("no funnel `{name}`; configured: {}", known.join(", ")),
                )
            })
    }

    /// True when the partition keeps state for `customer_id` (history or checkpoint).
    pub fn holds_customer(&self, customer_id: &str) -> bool {
        self.customers.contains_key(customer_id)
    }

    /// Earliest checkpoint of any held customer: stored events from one funnel window
    /// before it are needed to rebuild the checkpoint slots.
    pub fn earliest_checkpoint_ms(&self) -> Option<i64> {
        self.customers
            .values()
            .filter_map(|c| c.base_until_ms())
            .min()
    }

    /// The release frontier (every event before it has been placed).
    pub fn frontier_ms(&self) -> Option<i64> {
        self.frontier_ms
    }

    /// Ids of the events waiting in the reorder buffer (they have no journey row yet, so
    /// their stored copies are looked up by id).
    pub fn buffered_event_ids(&self) -> Vec<String> {
        self.buffer
            .iter()
            .map(|(_, e)| e.event_id.as_ref().to_owned())
            .collect()
    }

    /// Rows written from now on get versions above `version` (at least): for a stage that
    /// writes rows for keys another partition may have written.
    pub fn raise_versions_above(&mut self, version: u64) {
        self.out.raise_above(version);
    }

    /// Set funnel `fi`'s step matches of buffered events from their stored copies.
    /// Returns how many buffered events had no stored copy (they keep no match).
    pub fn rematch_buffered(
        &mut self,
        fi: u16,
        stored: &dyn Fn(&str) -> Option<JourneyEvent>,
    ) -> usize {
        // Every buffered event may change: the next save is whole.
        self.whole_next = true;
        let funnels = &self.funnels;
        let catalog = &self.catalog;
        let mut missing = 0;
        self.buffer.for_each_mut(|e| match stored(&e.event_id) {
            Some(ev) => {
                let fresh = funnels.steps(&ev, catalog.classify(&ev).channel.as_str());
                e.steps = with_mask(&e.steps, fi, Some(&fresh));
            }
            None => {
                missing += 1;
                e.steps = with_mask(&e.steps, fi, None);
            }
        });
        missing
    }

    /// Recompute funnel `fi` for one customer from `events`, its stored events in
    /// `(event_time, event_id)` order from at least one window before
    /// [`Self::earliest_checkpoint_ms`] and `since_ms`. Writes attempts that start at or
    /// after `since_ms` and tombstones `stored` rows (start at or after `since_ms`) that
    /// are no longer produced. `frontier_ms` closes the attempts of a customer this stage
    /// does not hold. Returns how many of its held history events had no stored copy.
    pub fn backfill_customer(
        &mut self,
        fi: u16,
        customer_id: &str,
        events: &[JourneyEvent],
        since_ms: i64,
        frontier_ms: i64,
        stored: &[StoredAttempt],
    ) -> usize {
        self.settle();
        let id: Arc<str> = match self.customers.get_key_value(customer_id) {
            Some((id, _)) => Arc::clone(id),
            None => Arc::from(customer_id),
        };
        self.mark(&id);
        let mut hist: Vec<HistEvent> = events.iter().map(|e| self.hist_event(e)).collect();
        hist.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        hist.dedup_by(|a, b| a.order_key() == b.order_key());
        // The stored rows go first, as tombstones: every row this recomputation produces is
        // written after them (higher version), so a row that keeps its id survives even
        // when its close time moved within the same ClickHouse partition, and a row it
        // no longer produces stays deleted.
        let stored_keys: HashSet<u128> = stored
            .iter()
            .filter_map(|(attempt_id, closed_ms)| {
                let key = u128::from_str_radix(attempt_id, 16).ok()?;
                let row = LiveRow {
                    key,
                    partition_ms: *closed_ms,
                    fingerprint: 0,
                    closed_by_ms: 0,
                    funnel: Some(fi),
                    open: false,
                    open_step: 0,
                };
                self.out.tombstone(&id, &row);
                Some(key)
            })
            .collect();
        let mut missing = 0;
        let gap_ms = self.gap_ms;
        let ctx = Ctx {
            funnels: &self.funnels,
            funnel_keys: &self.funnel_keys,
            gap_ms,
            cutoff_ms: i64::MIN,
            frontier_ms,
            tail_min_events: self.tail_min_events,
        };
        let replayer = Replayer::new(&self.funnels, gap_ms, &id);
        let mut closed = Produced::default();
        let mut m = Machine::default();
        let held = self.customers.get_mut(&id);
        let before = match &held {
            Some(c) => c.base_until_ms().unwrap_or(i64::MIN),
            None => i64::MAX,
        };
        for e in hist.iter().take_while(|e| e.time_ms < before) {
            replayer.step(&mut m, e, &mut closed);
        }
        match held {
            Some(c) => {
                // Rows just tombstoned must be written again by the recompute if it still
                // produces them: forget them as written.
                let mut live = std::mem::take(&mut c.live).into_vec();
                live.retain(|r| r.funnel != Some(fi) || !stored_keys.contains(&r.key));
                c.live = live.into_boxed_slice();
                missing = refill_history(c, fi, &hist);
                if c.base_until_ms().is_some() {
                    let slot = m.attempts.get(usize::from(fi)).cloned().unwrap_or_default();
                    set_slot(c, fi, slot, self.funnels.funnels().len());
                }
            }
            None => replayer.finish(&m, frontier_ms, &mut closed),
        }
        for a in closed.attempts.drain(..) {
            if a.funnel != fi || a.attempt.start_ms() < since_ms {
                continue;
            }
            let Some(key) = ctx.attempt_key(&id, &a) else {
                continue;
            };
            let row = LiveRow {
                key,
                partition_ms: a.closed_ms,
                fingerprint: 0,
                closed_by_ms: 0,
                funnel: Some(fi),
                open: false,
                open_step: 0,
            };
            self.out.write_if_changed(&id, &[], &row, Row::Attempt(a));
        }
        if let Some(c) = self.customers.get_mut(&id) {
            c.tail = None;
            c.live_unique = false;
            self.recompute(&id);
        }
        missing
    }

    /// What the stage keeps of a stored event (as [`Self::process`] builds it).
    fn hist_event(&mut self, event: &JourneyEvent) -> HistEvent {
        let tp = self.catalog.classify(event);
        HistEvent {
            time_ms: event.event_time_ms,
            name: self.names.intern(event.display_name()),
            kind: Some(event.kind),
            steps: self.funnels.steps(event, tp.channel.as_str()),
            event_id: Arc::from(event.event_id.as_str()),
            stage: tp.stage,
            channel: tp.channel,
            version: 0,
            emitted: 0,
            session: [0; 2],
            keyed: false,
            extra: false,
        }
    }
}

/// `steps` with funnel `fi`'s mask and breakdown values replaced by `fresh`'s (none
/// when `fresh` is `None`).
fn with_mask(steps: &Steps, fi: u16, fresh: Option<&Steps>) -> Steps {
    let mut all = steps.entries();
    all.retain(|(f, _, _)| *f != fi);
    if let Some(entry) = fresh.and_then(|s| s.entries().into_iter().find(|(f, _, _)| *f == fi)) {
        all.push(entry);
    }
    all.sort_unstable_by_key(|(f, _, _)| *f);
    Steps::from_entries(all)
}

/// Give the held history events funnel `fi`'s matches from their stored copies (`hist`,
/// matched with today's funnels); returns how many had none.
fn refill_history(c: &mut Customer, fi: u16, hist: &[HistEvent]) -> usize {
    let mut missing = 0;
    for e in &mut c.history {
        let found = hist
            .binary_search_by(|h| h.order_key().cmp(&e.order_key()))
            .ok()
            .map(|i| &hist[i].steps);
        if found.is_none() {
            missing += 1;
        }
        e.steps = with_mask(&e.steps, fi, found);
    }
    missing
}

/// Put `slot` into the customer's checkpoint as funnel `fi`'s.
fn set_slot(c: &mut Customer, fi: u16, slot: AttemptSlot, funnels: usize) {
    let base = c.base.get_or_insert_with(Box::default);
    if base.attempts.len() < funnels {
        base.attempts.resize(funnels, AttemptSlot::default());
    }
    if let Some(s) = base.attempts.get_mut(usize::from(fi)) {
        *s = slot;
    }
    base.compact();
    if base.is_empty() {
        c.base = None;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::event::{MessageType, RoutedEvent};
    use crate::journey::catalog::Catalog;
    use crate::journey::funnel::FunnelSet;
    use crate::journey::rows::FunnelAttemptRow;
    use crate::journey::{JourneyConfig, JourneySnapshot};

    const MIN: i64 = 60_000;
    const BEFORE: &str = r#"
[[funnel]]
name = "checkout"
window_secs = 3600
steps = [{ event = "Viewed" }, { event = "Added" }, { event = "Bought" }]

[[funnel]]
name = "support"
window_secs = 7200
steps = [{ event = "Complained" }, { event = "Called" }, { event = "Bought" }]
"#;

    fn set(text: &str) -> FunnelSet {
        FunnelSet::from_toml_str(text, None).expect("funnels")
    }

    fn after() -> FunnelSet {
        // support changed (step 2 and window), checkout moved behind it.
        set(r#"
[[funnel]]
name = "support"
window_secs = 5400
steps = [{ event = "Complained" }, { event = "Emailed" }, { event = "Bought" }]

[[funnel]]
name = "checkout"
window_secs = 3600
steps = [{ event = "Viewed" }, { event = "Added" }, { event = "Bought" }]
"#)
    }

    fn stage(funnels: FunnelSet, snapshot: JourneySnapshot) -> JourneyStage {
        let config = JourneyConfig {
            allowed_lateness_secs: 60,
            ..JourneyConfig::default()
        };
        JourneyStage::from_snapshot(config, Catalog::default(), funnels, snapshot)
    }

    fn event(id: String, name: &str, t: i64, properties: &str) -> JourneyEvent {
        JourneyEvent {
            event_id: id,
            kind: MessageType::Track,
            event: Some(name.into()),
            anonymous_id: None,
            user_id: None,
            previous_id: None,
            event_time_ms: t,
            channel: None,
            properties: crate::event::Properties::from_json(properties),
        }
    }

    /// A seeded log: customers' events over about ten hours, in time order. Each event
    /// carries a `team` and a `store` property (inside and outside the breakdown
    /// allow-lists of [`after_broken_down`]).
    fn log(seed: u64) -> Vec<(String, JourneyEvent)> {
        let names = [
            "Viewed",
            "Added",
            "Bought",
            "Complained",
            "Called",
            "Emailed",
            "Home",
        ];
        let teams = ["north", "south", "east"];
        let stores = ["s1", "s2"];
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut next = move |n: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % n
        };
        let mut out = Vec::new();
        for i in 0..300 {
            let customer = format!("c{}", next(12));
            let t = i as i64 * 2 * MIN + next(3) as i64 * MIN;
            let name = names[next(names.len() as u64) as usize];
            let properties = format!(
                r#"{{"team":"{}","store":"{}"}}"#,
                teams[next(3) as usize],
                stores[next(2) as usize]
            );
            out.push((customer, event(format!("e{i}"), name, t, &properties)));
        }
        out
    }

    /// `funnel_attempts` as ClickHouse keeps it after `FINAL`: newest version per id
    /// (every close time here falls in one monthly partition).
    #[derive(Default)]
    struct Table(BTreeMap<String, FunnelAttemptRow>);

    impl Table {
        fn apply(&mut self, rows: Vec<FunnelAttemptRow>) {
            for r in rows {
                let key = r.attempt_id.clone();
                if self.0.get(&key).is_none_or(|old| r.version > old.version) {
                    self.0.insert(key, r);
                }
            }
        }

        /// Live rows without versions, by attempt id (each id once).
        fn live(&self) -> BTreeMap<String, FunnelAttemptRow> {
            let mut out = BTreeMap::new();
            for r in self.0.values().filter(|r| !r.is_deleted) {
                let mut r = r.clone();
                r.version = 0;
                assert!(
                    out.insert(r.attempt_id.clone(), r).is_none(),
                    "two live rows"
                );
            }
            out
        }

        fn max_version(&self) -> u64 {
            self.0.values().map(|r| r.version).max().unwrap_or(0)
        }
    }

    fn feed(st: &mut JourneyStage, events: &[(String, JourneyEvent)], seq: &mut u64) {
        for (c, e) in events {
            *seq += 1;
            let routed = RoutedEvent {
                customer_id: c.clone(),
                event: e.clone().into(),
                version: 1,
                reattributed: false,
            };
            st.process(routed, *seq);
        }
    }

    /// One funnel's backfill as `touchstream funnels backfill NAME` runs it: the saved
    /// state restored under `after`, buffered and held events rematched, every customer's
    /// stored events recomputed, the state saved back. Returns the saved state.
    fn backfill(
        json: &str,
        after: &FunnelSet,
        name: &str,
        first: &[(String, JourneyEvent)],
        placed: &HashSet<String>,
        table: &mut Table,
    ) -> String {
        let mut st = stage(after.clone(), serde_json::from_str(json).expect("snapshot"));
        let fi = st.funnel_index(name).expect("funnel");
        st.raise_versions_above(table.max_version());
        let by_id: BTreeMap<&str, &JourneyEvent> = first
            .iter()
            .map(|(_, e)| (e.event_id.as_str(), e))
            .collect();
        assert_eq!(
            st.rematch_buffered(fi, &|id| by_id.get(id).map(|e| (*e).clone())),
            0
        );
        let mut per_customer: BTreeMap<&str, Vec<JourneyEvent>> = BTreeMap::new();
        for (c, e) in first.iter().filter(|(_, e)| placed.contains(&e.event_id)) {
            per_customer.entry(c).or_default().push(e.clone());
        }
        let frontier = st.frontier_ms().unwrap_or(i64::MIN);
        for (c, events) in &per_customer {
            let stored: Vec<StoredAttempt> = table
                .0
                .values()
                .filter(|r| !r.is_deleted && r.funnel == name && r.customer_id == *c)
                .map(|r| (r.attempt_id.clone(), r.closed_ms))
                .collect();
            let missing = st.backfill_customer(fi, c, events, i64::MIN, frontier, &stored);
            assert_eq!(missing, 0, "held events without a stored copy");
        }
        table.apply(st.take_output().attempts);
        serde_json::to_string(&st.snapshot_ref()).expect("serialize")
    }

    /// Half of each seeded log under `before`, a backfill of each of `changed` under
    /// `after`, the other half under `after`: `funnel_attempts` must equal a run that had
    /// `after` from the start, row by row (breakdown values included).
    fn backfilled_equals_fresh(before: &str, after: &FunnelSet, changed: &[&str]) {
        for seed in 0..8 {
            let all = log(seed);
            let split = 150 + (seed as usize * 7) % 100;
            let (first, second) = all.split_at(split);

            let mut fresh = stage(after.clone(), JourneySnapshot::default());
            let mut seq = 0;
            feed(&mut fresh, &all, &mut seq);
            fresh.flush_all(seq + 1);
            let mut want = Table::default();
            want.apply(fresh.take_output().attempts);

            // Part one under the old definitions; what ClickHouse holds after it.
            let mut st = stage(set(before), JourneySnapshot::default());
            let mut seq = 0;
            feed(&mut st, first, &mut seq);
            let out = st.take_output();
            let mut table = Table::default();
            table.apply(out.attempts);
            let placed: HashSet<String> = out
                .touchpoints
                .iter()
                .filter(|t| !t.session_id.is_empty())
                .map(|t| t.event_id.to_string())
                .collect();
            let mut json = serde_json::to_string(&st.snapshot_ref()).expect("serialize");

            // The backfills, one funnel at a time, each from the state the last saved.
            for name in changed {
                json = backfill(&json, after, name, first, &placed, &mut table);
            }

            // The processor restarts from the backfilled state and goes on.
            let mut st = stage(
                after.clone(),
                serde_json::from_str(&json).expect("snapshot"),
            );
            assert!(st.funnel_changes().is_empty(), "seed {seed}");
            feed(&mut st, second, &mut seq);
            st.flush_all(seq + 1);
            table.apply(st.take_output().attempts);
            let (got, want) = (table.live(), want.live());
            let differ: Vec<_> = got
                .keys()
                .chain(want.keys())
                .filter(|k| got.get(*k) != want.get(*k))
                .map(|k| (got.get(k), want.get(k)))
                .collect();
            assert!(differ.is_empty(), "seed {seed} split {split}: {differ:#?}");
            for name in changed {
                assert!(want.values().any(|r| r.funnel == *name), "{name}");
            }
        }
    }

    #[test]
    fn a_backfilled_change_continues_as_a_run_that_always_had_it() {
        backfilled_equals_fresh(BEFORE, &after(), &["support"]);
    }

    /// [`after`] with breakdowns: checkout by store (last step), support by team and
    /// store (each step); `s2` and `east` are outside the allow-lists.
    fn after_broken_down() -> FunnelSet {
        set(r#"
[[funnel]]
name = "support"
window_secs = 5400
steps = [{ event = "Complained" }, { event = "Emailed" }, { event = "Bought" }]
breakdown = [{ key = "properties.team", values = ["north", "south"] },
             { key = "properties.store", values = ["s1"] }]
breakdown_attribution = "each_step"

[[funnel]]
name = "checkout"
window_secs = 3600
steps = [{ event = "Viewed" }, { event = "Added" }, { event = "Bought" }]
breakdown = [{ key = "properties.store", values = ["s1"] }]
breakdown_attribution = "last_step"
"#)
    }

    /// Adding a breakdown changes a funnel's definition: a restart drops its saved
    /// attempts (tests/funnel_backfill.rs closed 181 of 190 attempts when its "before"
    /// `web_checkout` lacked the breakdown the repository's has, and only
    /// `service_recovery` was backfilled). Backfilled, the rows carry the values a run
    /// that always had the breakdowns writes: the held events get them from their stored
    /// copies (`with_mask`), the checkpoint's open attempt from the replay.
    #[test]
    fn backfilled_breakdowns_carry_the_values_of_a_run_that_always_had_them() {
        let after = after_broken_down();
        let st = stage(after.clone(), {
            let mut old = stage(set(BEFORE), JourneySnapshot::default());
            let mut seq = 0;
            feed(&mut old, &log(0)[..100], &mut seq);
            let json = serde_json::to_string(&old.snapshot_ref()).expect("serialize");
            serde_json::from_str(&json).expect("snapshot")
        });
        let mut changed: Vec<_> = st
            .funnel_changes()
            .iter()
            .map(|c| (c.funnel.as_str(), c.kind))
            .collect();
        changed.sort_unstable_by_key(|(f, _)| *f);
        use crate::journey::remap::FunnelChangeKind::Changed;
        assert_eq!(
            changed,
            [("checkout", Changed), ("support", Changed)],
            "a breakdown is part of the definition"
        );
        backfilled_equals_fresh(BEFORE, &after, &["support", "checkout"]);
    }
}
