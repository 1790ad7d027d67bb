//! Funnel definitions that changed since a snapshot was taken (docs/design.md §5,
//! "Changing funnel definitions").
//!
//! Why: the saved state refers to funnels by position — each history event keeps its
//! step masks as `(funnel index, mask)`, each checkpoint its open attempts in a slot per
//! funnel, each written attempt row its funnel index — and the masks were computed with
//! the definitions of the day. Restored under an edited `deploy/funnels.toml`, a
//! reordered file would hand one funnel's open attempts to another and a changed step
//! would be read with the old step's matches. So a snapshot records every funnel's name
//! and a fingerprint of its whole definition, and a restore maps the saved state onto
//! today's funnels by that fingerprint:
//! - same definition, maybe at another position: its state is kept and moved;
//! - changed definition (same name) or removed funnel: its saved state is dropped — its
//!   open attempts, its step masks, its written rows' bookkeeping. Rows already in
//!   ClickHouse stay as the old definition wrote them until `touchstream funnels
//!   backfill` or later events rewrite them;
//! - new funnel: nothing saved; it starts with the events that arrive from now on.
//!
//! Snapshots from before fingerprints were recorded carry none and are assumed to match
//! today's funnels (the behaviour they were written under).

use serde::{Deserialize, Serialize};

use crate::hash::{hex128, Fnv128};
use crate::journey::customer::LiveRow;
use crate::journey::customer::SavedCustomer;
use crate::journey::funnel::{AttemptSlot, Funnel, FunnelSet, Steps};
use crate::journey::session::{HistEvent, Machine};

/// A funnel as a snapshot records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedFunnel {
    pub(super) name: String,
    pub(super) fingerprint: String,
}

/// Fingerprint of one funnel's whole definition (name, window, steps and every option):
/// a hash of its canonical JSON, so any edit that can change its attempts changes it.
pub fn funnel_fingerprint(funnel: &Funnel) -> String {
    // Serializing a plain struct of strings, numbers and JSON values cannot fail.
    let json = serde_json::to_string(funnel).unwrap_or_default();
    let mut h = Fnv128::new();
    h.part(&json);
    hex128(h.finish())[..16].to_owned()
}

pub(super) fn saved_funnels(funnels: &FunnelSet) -> Vec<SavedFunnel> {
    funnels
        .funnels()
        .iter()
        .map(|f| SavedFunnel {
            name: f.name.clone(),
            fingerprint: funnel_fingerprint(f),
        })
        .collect()
}

/// How a funnel differs from the snapshot the stage resumed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunnelChangeKind {
    /// Not in the snapshot: starts empty.
    Added,
    /// Same name, different definition: its saved state was dropped.
    Changed,
    /// In the snapshot, no longer configured: its saved state was dropped.
    Removed,
    /// Same definition at another position: its state was kept.
    Moved,
}

impl FunnelChangeKind {
    /// Label value (`touchstream_processor_funnel_definition_changes_total{change}`).
    pub fn as_str(self) -> &'static str {
        match self {
            FunnelChangeKind::Added => "added",
            FunnelChangeKind::Changed => "changed",
            FunnelChangeKind::Removed => "removed",
            FunnelChangeKind::Moved => "moved",
        }
    }
}

/// One funnel's difference from the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunnelChange {
    /// Funnel name.
    pub funnel: String,
    /// What changed.
    pub kind: FunnelChangeKind,
}

/// Where each saved funnel's state goes: `map[old index]` is today's index, `None` to
/// drop it. `None` overall when nothing moves or drops (the usual restart).
pub(super) struct Remap {
    map: Vec<Option<u16>>,
    new_len: usize,
    /// The saved funnels' names, by saved index: a dropped funnel's open-attempt rows are
    /// tombstoned under the name they were written with.
    old_names: Vec<String>,
}

/// Compare the snapshot's funnels with today's.
pub(super) fn plan(saved: &[SavedFunnel], now: &FunnelSet) -> (Option<Remap>, Vec<FunnelChange>) {
    let today = saved_funnels(now);
    let mut changes = Vec::new();
    let map: Vec<Option<u16>> = saved
        .iter()
        .enumerate()
        .map(|(old, s)| {
            let found = today.iter().position(|t| t.name == s.name);
            match found {
                Some(new) if today[new].fingerprint == s.fingerprint => {
                    if new != old {
                        changes.push(FunnelChange {
                            funnel: s.name.clone(),
                            kind: FunnelChangeKind::Moved,
                        });
                    }
                    u16::try_from(new).ok()
                }
                Some(_) => {
                    changes.push(FunnelChange {
                        funnel: s.name.clone(),
                        kind: FunnelChangeKind::Changed,
                    });
                    None
                }
                None => {
                    changes.push(FunnelChange {
                        funnel: s.name.clone(),
                        kind: FunnelChangeKind::Removed,
                    });
                    None
                }
            }
        })
        .collect();
    for t in &today {
        if !saved.iter().any(|s| s.name == t.name) {
            changes.push(FunnelChange {
                funnel: t.name.clone(),
                kind: FunnelChangeKind::Added,
            });
        }
    }
    let identity = map.len() == today.len()
        && map
            .iter()
            .enumerate()
            .all(|(i, m)| *m == u16::try_from(i).ok());
    let remap = (!identity).then_some(Remap {
        map,
        new_len: today.len(),
        old_names: saved.iter().map(|s| s.name.clone()).collect(),
    });
    (remap, changes)
}

impl Remap {
    fn index(&self, old: u16) -> Option<u16> {
        self.map.get(usize::from(old)).copied().flatten()
    }

    pub(super) fn steps(&self, steps: &Steps) -> Steps {
        if steps.is_empty() {
            return Steps::NONE;
        }
        // A funnel's breakdown values move with it: same definition, same allow-lists.
        let mut kept: Vec<_> = steps
            .entries()
            .into_iter()
            .filter_map(|(f, m, v)| self.index(f).map(|f| (f, m, v)))
            .collect();
        // `Steps` lists funnels in index order.
        kept.sort_unstable_by_key(|(f, _, _)| *f);
        Steps::from_entries(kept)
    }

    fn machine(&self, m: &mut Machine) {
        if m.attempts.is_empty() {
            return;
        }
        let mut slots = vec![AttemptSlot::default(); self.new_len];
        for (old, slot) in std::mem::take(&mut m.attempts).into_iter().enumerate() {
            let new = u16::try_from(old).ok().and_then(|o| self.index(o));
            if let Some(new) = new {
                if let Some(s) = slots.get_mut(usize::from(new)) {
                    *s = slot;
                }
            }
        }
        m.attempts = slots;
        m.compact();
    }

    fn event(&self, e: &mut HistEvent) {
        e.steps = self.steps(&e.steps);
    }

    /// Returns the dropped funnels' `funnel_open_attempts` rows, with the funnel name
    /// they were written under: their attempts are gone from the state, so the caller
    /// tombstones them (that table must hold only attempts open now).
    pub(super) fn customer(&self, c: &mut SavedCustomer) -> Vec<(String, LiveRow)> {
        if let Some(base) = &mut c.base {
            self.machine(base);
        }
        for e in &mut c.history {
            self.event(e);
        }
        // Attempt rows of a dropped funnel leave the bookkeeping: nothing will rewrite
        // or delete closed ones from here (see the module docs).
        let mut gone = Vec::new();
        c.live.retain_mut(|row| match row.funnel {
            None => true,
            Some(old) => match self.index(old) {
                Some(new) => {
                    row.funnel = Some(new);
                    true
                }
                None => {
                    if row.open_step > 0 {
                        let name = self.old_names.get(usize::from(old)).cloned();
                        gone.push((name.unwrap_or_default(), *row));
                    }
                    false
                }
            },
        });
        gone
    }

    pub(super) fn buffered(&self, e: &mut HistEvent) {
        self.event(e);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::event::{JourneyEvent, MessageType, RoutedEvent};
    use crate::journey::catalog::Catalog;
    use crate::journey::rows::FunnelAttemptRow;
    use crate::journey::{JourneyConfig, JourneySnapshot, JourneyStage};

    const MIN: i64 = 60_000;

    const CHECKOUT: &str = r#"
[[funnel]]
name = "checkout"
window_secs = 3600
steps = [{ event = "Viewed" }, { event = "Bought" }]
"#;
    const SUPPORT: &str = r#"
[[funnel]]
name = "support"
window_secs = 7200
steps = [{ event = "Complained" }, { event = "Called" }, { event = "Bought" }]
"#;
    const SUPPORT_CHANGED: &str = r#"
[[funnel]]
name = "support"
window_secs = 7200
steps = [{ event = "Complained" }, { event = "Emailed" }, { event = "Bought" }]
"#;

    fn set(parts: &[&str]) -> FunnelSet {
        FunnelSet::from_toml_str(&parts.concat(), None).expect("funnels")
    }

    fn routed(id: &str, name: &str, t: i64) -> RoutedEvent {
        RoutedEvent {
            customer_id: "c".into(),
            event: JourneyEvent {
                event_id: id.into(),
                kind: MessageType::Track,
                event: Some(name.into()),
                anonymous_id: None,
                user_id: None,
                previous_id: None,
                event_time_ms: t,
                channel: None,
                properties: Default::default(),
            }
            .into(),
            version: 1,
            reattributed: false,
        }
    }

    fn stage(funnels: FunnelSet, snapshot: JourneySnapshot) -> JourneyStage {
        let config = JourneyConfig {
            allowed_lateness_secs: 0,
            ..JourneyConfig::default()
        };
        JourneyStage::from_snapshot(config, Catalog::default(), funnels, snapshot)
    }

    /// Attempt rows as `FINAL` shows them, without versions.
    fn attempts(rows: &mut BTreeMap<String, FunnelAttemptRow>, st: &mut JourneyStage) {
        for mut r in st.take_output().attempts {
            r.version = 0;
            if r.is_deleted {
                rows.remove(&r.attempt_id);
            } else {
                rows.insert(r.attempt_id.clone(), r);
            }
        }
    }

    /// Runs `first`, saves (through JSON, as the processor does), resumes under `then`
    /// funnels, runs `second`, flushes.
    fn resumed(
        before: FunnelSet,
        after: FunnelSet,
        first: &[RoutedEvent],
        second: &[RoutedEvent],
    ) -> (BTreeMap<String, FunnelAttemptRow>, Vec<FunnelChange>) {
        let mut rows = BTreeMap::new();
        let mut st = stage(before, JourneySnapshot::default());
        let mut seq = 0;
        for e in first {
            seq += 1;
            st.process(e.clone(), seq);
        }
        attempts(&mut rows, &mut st);
        let json = serde_json::to_string(&st.snapshot_ref()).expect("serialize");
        let mut st = stage(after, serde_json::from_str(&json).expect("deserialize"));
        let changes = st.funnel_changes().to_vec();
        for e in second {
            seq += 1;
            st.process(e.clone(), seq);
        }
        st.flush_all(seq + 1);
        attempts(&mut rows, &mut st);
        (rows, changes)
    }

    fn log() -> (Vec<RoutedEvent>, Vec<RoutedEvent>) {
        (
            vec![routed("v1", "Viewed", 0), routed("k1", "Complained", MIN)],
            vec![
                routed("e1", "Emailed", 2 * MIN),
                routed("b1", "Bought", 3 * MIN),
                routed("v2", "Viewed", 10 * MIN),
                // Past every window: closes what is still open.
                routed("z", "Other", 200 * MIN),
            ],
        )
    }

    fn summary(rows: &BTreeMap<String, FunnelAttemptRow>) -> Vec<(String, String, u8)> {
        let mut v: Vec<_> = rows
            .values()
            .map(|r| {
                (
                    r.funnel.clone(),
                    r.outcome.as_str().to_owned(),
                    r.reached_step,
                )
            })
            .collect();
        v.sort();
        v
    }

    /// A changed or removed funnel's open attempts leave the state, so their
    /// `funnel_open_attempts` rows are tombstoned (under the old name, same partition)
    /// by the restore; a moved funnel's stay.
    #[test]
    fn a_dropped_funnels_open_attempt_rows_are_tombstoned_on_restore() {
        let mut st = stage(set(&[CHECKOUT, SUPPORT]), JourneySnapshot::default());
        for (seq, e) in [
            routed("v1", "Viewed", 0),
            routed("k1", "Complained", MIN),
            routed("o", "Other", 5 * MIN),
        ]
        .into_iter()
        .enumerate()
        {
            st.process(e, seq as u64 + 1);
        }
        let written = st.take_output().open_attempts;
        let mut funnels: Vec<_> = written.iter().map(|r| r.funnel.as_str()).collect();
        funnels.sort();
        assert_eq!(funnels, ["checkout", "support"]);
        let support = written
            .iter()
            .find(|r| r.funnel == "support")
            .expect("support");
        let json = serde_json::to_string(&st.snapshot_ref()).expect("serialize");
        for after in [set(&[CHECKOUT, SUPPORT_CHANGED]), set(&[CHECKOUT])] {
            let mut st = stage(after, serde_json::from_str(&json).expect("deserialize"));
            let out = st.take_output().open_attempts;
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(out[0].is_deleted);
            assert!(out[0].version > support.version);
            assert_eq!(
                (
                    out[0].funnel.as_str(),
                    &out[0].attempt_id,
                    out[0].started_at
                ),
                ("support", &support.attempt_id, support.started_at)
            );
        }
        let mut moved = stage(
            set(&[SUPPORT, CHECKOUT]),
            serde_json::from_str(&json).expect("deserialize"),
        );
        assert!(moved.take_output().open_attempts.is_empty());
        assert_eq!(moved.open_attempts(&[]).len(), 2);
    }

    #[test]
    fn reordered_funnels_keep_their_own_state() {
        let (first, second) = log();
        let all: Vec<_> = first.iter().chain(&second).cloned().collect();
        let (uninterrupted, _) = resumed(
            set(&[SUPPORT, CHECKOUT]),
            set(&[SUPPORT, CHECKOUT]),
            &all,
            &[],
        );
        let (rows, changes) = resumed(
            set(&[CHECKOUT, SUPPORT]),
            set(&[SUPPORT, CHECKOUT]),
            &first,
            &second,
        );
        assert_eq!(rows, uninterrupted);
        assert_eq!(
            summary(&rows),
            [
                ("checkout".into(), "converted".into(), 2),
                ("checkout".into(), "dropped".into(), 1),
                ("support".into(), "dropped".into(), 1),
            ]
        );
        let kinds: Vec<_> = changes
            .iter()
            .map(|c| (c.funnel.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("checkout", FunnelChangeKind::Moved),
                ("support", FunnelChangeKind::Moved)
            ]
        );
    }

    #[test]
    fn a_changed_funnel_drops_its_saved_state_and_others_keep_theirs() {
        let (first, second) = log();
        let (rows, changes) = resumed(
            set(&[CHECKOUT, SUPPORT]),
            set(&[CHECKOUT, SUPPORT_CHANGED]),
            &first,
            &second,
        );
        // checkout continues across the restart; support's attempt opened under the old
        // steps is gone: it is neither continued by `Emailed` (today's step 2, which the
        // saved attempt never matched) nor misread.
        assert_eq!(
            summary(&rows),
            [
                ("checkout".into(), "converted".into(), 2),
                ("checkout".into(), "dropped".into(), 1),
            ]
        );
        assert_eq!(
            changes,
            [FunnelChange {
                funnel: "support".into(),
                kind: FunnelChangeKind::Changed
            }]
        );
    }

    #[test]
    fn added_and_removed_funnels_are_reported() {
        let (first, second) = log();
        let (rows, changes) = resumed(set(&[SUPPORT]), set(&[CHECKOUT]), &first, &second);
        // checkout is new: only events from the restart on count (`v1` before it does
        // not, so `b1` converts nothing; `v2` starts an attempt).
        assert_eq!(summary(&rows), [("checkout".into(), "dropped".into(), 1)]);
        let kinds: Vec<_> = changes
            .iter()
            .map(|c| (c.funnel.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("support", FunnelChangeKind::Removed),
                ("checkout", FunnelChangeKind::Added)
            ]
        );
    }

    #[test]
    fn snapshots_without_fingerprints_resume_as_before() {
        let (first, second) = log();
        let funnels = set(&[CHECKOUT, SUPPORT]);
        let mut st = stage(funnels.clone(), JourneySnapshot::default());
        for (i, e) in first.iter().enumerate() {
            st.process(e.clone(), i as u64 + 1);
        }
        let json = serde_json::to_string(&st.snapshot_ref()).expect("serialize");
        // The field is written last: cut it off as an older version's snapshot lacks it.
        let at = json.rfind(r#","funnels":"#).expect("funnels recorded");
        let old = format!("{}}}", &json[..at]);
        let mut resumed = stage(funnels.clone(), serde_json::from_str(&old).expect("old"));
        assert!(resumed.funnel_changes().is_empty());
        let mut rows = BTreeMap::new();
        for (i, e) in second.iter().enumerate() {
            resumed.process(e.clone(), 10 + i as u64);
        }
        resumed.flush_all(100);
        attempts(&mut rows, &mut resumed);
        assert_eq!(
            summary(&rows),
            [
                ("checkout".into(), "converted".into(), 2),
                ("checkout".into(), "dropped".into(), 1),
                ("support".into(), "dropped".into(), 1),
            ]
        );
    }

    #[test]
    fn the_fingerprint_covers_the_whole_definition() {
        let a = set(&[SUPPORT]);
        let b = set(&[SUPPORT_CHANGED]);
        let fp = |s: &FunnelSet| funnel_fingerprint(&s.funnels()[0]);
        assert_eq!(fp(&a), fp(&set(&[SUPPORT])));
        assert_ne!(fp(&a), fp(&b));
        let window = set(&[&SUPPORT.replace("7200", "7201")]);
        assert_ne!(fp(&a), fp(&window));
        assert_eq!(fp(&a).len(), 16);
    }
}
