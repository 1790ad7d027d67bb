//! Stage-2 rules (docs/design.md §4 sessions, lateness; §5 funnels through the watermark;
//! re-attribution), worked by hand.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::event::{JourneyEvent, MessageType};
use crate::hash::{hex128, id128};
use crate::identity::{IdentityConfig, IdentityOutput, IdentityStage};
use crate::journey::catalog::{Channel, Stage};
use crate::journey::funnel::Outcome;
use crate::journey::rows::{CustomerTouchpointRow, FunnelAttemptRow, SessionRow, TouchpointRow};

const MIN: i64 = 60_000;

fn funnels() -> FunnelSet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/funnels.toml");
    FunnelSet::load(&path).expect("deploy/funnels.toml")
}

fn stage() -> JourneyStage {
    JourneyStage::new(JourneyConfig::default(), Catalog::default(), funnels())
}

fn event(id: &str, name: &str, t: i64) -> JourneyEvent {
    JourneyEvent {
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
}

fn routed(customer: &str, id: &str, name: &str, t: i64, version: u64) -> RoutedEvent {
    RoutedEvent {
        customer_id: customer.into(),
        event: event(id, name, t).into(),
        version,
        reattributed: false,
    }
}

/// ClickHouse after `FINAL`: newest version per key, tombstones removed.
#[derive(Default)]
struct Tables {
    touchpoints: BTreeMap<Arc<str>, TouchpointRow>,
    sessions: BTreeMap<Arc<str>, SessionRow>,
    attempts: BTreeMap<String, FunnelAttemptRow>,
    /// `customer_touchpoints` by key, tombstones kept (checked against `touchpoints`).
    by_customer: BTreeMap<(Arc<str>, i64, Arc<str>), CustomerTouchpointRow>,
}

impl Tables {
    fn apply(&mut self, out: JourneyOutput) {
        for r in out.touchpoints {
            let newer = self
                .touchpoints
                .get(&r.event_id)
                .is_none_or(|old| r.version > old.version);
            if newer {
                self.touchpoints.insert(r.event_id.clone(), r);
            }
        }
        for r in out.sessions {
            self.sessions.insert(r.session_id.clone(), r);
        }
        for r in out.attempts {
            self.attempts.insert(r.attempt_id.clone(), r);
        }
        for r in out.customer_touchpoints {
            let key = (r.customer_id.clone(), r.event_time_ms, r.event_id.clone());
            if self
                .by_customer
                .get(&key)
                .is_none_or(|old| r.version > old.version)
            {
                self.by_customer.insert(key, r);
            }
        }
        self.sessions.retain(|_, r| !r.is_deleted);
        self.attempts.retain(|_, r| !r.is_deleted);
    }

    /// `customer_touchpoints` without tombstones shows each event once, with the customer,
    /// session, stage, channel and lateness of its `touchpoint_journey` row.
    fn assert_by_customer_matches(&self) {
        let live: BTreeMap<&str, (&str, &str, Stage, Channel, bool)> = self
            .by_customer
            .values()
            .filter(|r| !r.is_deleted)
            .map(|r| {
                let row = (
                    &*r.customer_id,
                    &*r.session_id,
                    r.stage,
                    r.channel,
                    r.is_late,
                );
                (&*r.event_id, row)
            })
            .collect();
        let live_rows = self.by_customer.values().filter(|r| !r.is_deleted).count();
        assert_eq!(live_rows, live.len(), "an event live under two customers");
        let want: BTreeMap<&str, (&str, &str, Stage, Channel, bool)> = self
            .touchpoints
            .values()
            .map(|r| {
                let row = (
                    &*r.customer_id,
                    &*r.session_id,
                    r.stage,
                    r.channel,
                    r.is_late,
                );
                (&*r.event_id, row)
            })
            .collect();
        assert_eq!(live, want);
    }

    fn session_of(&self, event_id: &str) -> &str {
        &self.touchpoints[event_id].session_id
    }
}

/// Feed routed events with seq = position, flush, return the tables.
fn run(events: Vec<RoutedEvent>) -> (Tables, JourneyStage) {
    let mut st = stage();
    let mut tables = Tables::default();
    let n = events.len() as u64;
    for (seq, e) in events.into_iter().enumerate() {
        st.process(e, seq as u64);
        tables.apply(st.take_output());
    }
    st.flush_all(n);
    tables.apply(st.take_output());
    (tables, st)
}

#[test]
fn session_gap_of_exactly_30_min_continues_one_ms_more_splits() {
    let (t, _) = run(vec![
        routed("c", "e1", "Home", 0, 1),
        routed("c", "e2", "Home", 30 * MIN, 2),
        routed("c", "e3", "Home", 60 * MIN + 1, 3),
    ]);
    assert_eq!(t.session_of("e1"), t.session_of("e2"));
    assert_ne!(t.session_of("e2"), t.session_of("e3"));
    let first = &t.sessions[t.session_of("e1")];
    assert_eq!(
        (first.start_ms, first.end_ms, first.event_count),
        (0, 30 * MIN, 2)
    );
    assert_eq!(&*first.first_event_id, "e1");
    assert_eq!(t.sessions.len(), 2);
}

#[test]
fn session_ids_are_deterministic_hashes_of_customer_and_first_event() {
    let events = || {
        vec![
            routed("c", "e1", "Home", 0, 1),
            RoutedEvent {
                event: JourneyEvent {
                    channel: Some("browser".into()),
                    ..event("e2", "Product Viewed", MIN)
                }
                .into(),
                ..routed("c", "e2", "", 0, 2)
            },
        ]
    };
    let (a, _) = run(events());
    let (b, _) = run(events());
    let expected = hex128(id128(&["c", "e1"]));
    assert_eq!(a.session_of("e2"), expected);
    assert_eq!(
        a.sessions.keys().collect::<Vec<_>>(),
        b.sessions.keys().collect::<Vec<_>>()
    );
    let s = &a.sessions[expected.as_str()];
    assert_eq!(
        (&*s.entry_event, &*s.exit_event),
        ("Home", "Product Viewed")
    );
    assert_eq!(s.channels, vec![Channel::Web, Channel::Other]);
}

#[test]
fn late_within_lateness_is_placed_in_order() {
    // Watermark 10 min; an event at 6 min is 4 min behind (lateness 5): placed first.
    let (t, st) = run(vec![
        routed("c", "e10", "Home", 10 * MIN, 1),
        routed("c", "e6", "Home", 6 * MIN, 2),
    ]);
    let s = &t.sessions[t.session_of("e10")];
    assert_eq!(
        (&*s.first_event_id, s.start_ms, s.event_count),
        ("e6", 6 * MIN, 2)
    );
    assert!(!t.touchpoints["e6"].is_late);
    assert_eq!(st.counters().late_events, 0);
}

#[test]
fn behind_the_frontier_inside_the_horizon_is_placed_and_the_session_rewritten() {
    // Lateness 5 min: e20 moves the frontier to 15 min. e15 is exactly at it; e14 is 1 ms
    // behind it, yet inside the horizon: placed too, the session now starts with it.
    let (t, st) = run(vec![
        routed("c", "e20", "Home", 20 * MIN, 1),
        routed("c", "e15", "Home", 15 * MIN, 2),
        routed("c", "e14", "Home", 15 * MIN - 1, 3),
    ]);
    assert_eq!(t.sessions.len(), 1, "the superseded session is deleted");
    let s = &t.sessions[t.session_of("e20")];
    assert_eq!((&*s.first_event_id, s.event_count), ("e14", 3));
    for id in ["e14", "e15", "e20"] {
        assert!(!t.touchpoints[id].is_late, "{id}");
        assert_eq!(t.session_of(id), t.session_of("e20"), "{id}");
    }
    assert_eq!(st.counters().late_events, 0);
    assert_eq!(st.counters().corrected_events, 1);
}

#[test]
fn older_than_the_horizon_is_too_late_stored_and_counted() {
    let config = JourneyConfig {
        reattribution_horizon_secs: Some(3600),
        ..JourneyConfig::default()
    };
    let mut st = JourneyStage::new(config, Catalog::default(), funnels());
    let mut t = Tables::default();
    // Frontier 120 min, horizon 60 min: the cutoff is 60 min.
    st.process(routed("c", "e125", "Home", 125 * MIN, 1), 1);
    st.process(routed("c", "e60", "Home", 60 * MIN, 2), 2);
    st.process(routed("c", "e59", "Home", 60 * MIN - 1, 3), 3);
    st.flush_all(4);
    t.apply(st.take_output());
    assert!(!t.touchpoints["e60"].is_late);
    let late = &t.touchpoints["e59"];
    assert!(late.is_late && late.session_id.is_empty());
    assert_eq!(&*late.customer_id, "c");
    assert_eq!(st.counters().late_events, 1);
    assert_eq!(st.counters().late_beyond_horizon, 1);
    assert_eq!(st.counters().late_before_checkpoint, 0);
    assert_eq!(st.counters().corrected_events, 1);
    // Each event once: placed or late.
    assert_eq!(st.counters().placed_events, 2);
}

#[test]
fn a_raised_horizon_does_not_place_events_before_an_older_checkpoint() {
    // Horizon 60 min: c's history before 60 min is folded into its checkpoint.
    let short = JourneyConfig {
        reattribution_horizon_secs: Some(3600),
        ..JourneyConfig::default()
    };
    let mut st = JourneyStage::new(short, Catalog::default(), funnels());
    st.process(routed("c", "e0", "Home", 0, 1), 1);
    st.process(routed("c", "e125", "Home", 125 * MIN, 2), 2);
    st.process(routed("c", "e126", "Home", 126 * MIN, 3), 3);
    let snapshot = st.snapshot();
    // Restarted with the default (week-long) horizon: 30 min is inside the new horizon
    // but before c's checkpoint, so it is late and counted as such.
    let mut st = JourneyStage::from_snapshot(
        JourneyConfig::default(),
        Catalog::default(),
        funnels(),
        snapshot,
    );
    st.process(routed("c", "e30", "Home", 30 * MIN, 4), 4);
    let out = st.take_output();
    let row = out
        .touchpoints
        .iter()
        .find(|r| &*r.event_id == "e30")
        .expect("row");
    assert!(row.is_late && row.session_id.is_empty());
    assert_eq!(st.counters().late_events, 1);
    assert_eq!(st.counters().late_before_checkpoint, 1);
    assert_eq!(st.counters().late_beyond_horizon, 0);
    assert_eq!(st.counters().reattributed_too_old, 0);
}

#[test]
fn arrival_order_does_not_change_the_tables() {
    // Customer after customer (a backfill, an offline queue), each journey hours long,
    // against the same events in time order: the same rows (versions aside).
    let mut log = Vec::new();
    for c in 0..6_i64 {
        let base = (c % 3) * 50 * MIN;
        for (k, name) in [
            "Product Viewed",
            "Product Added",
            "Home",
            "Checkout Started",
        ]
        .into_iter()
        .enumerate()
        {
            let t = base + k as i64 * 40 * MIN + c * MIN;
            log.push((format!("c{c}"), format!("c{c}-e{k}"), name, t));
        }
    }
    let run_in = |order: &[(String, String, &str, i64)]| {
        let mut st = stage();
        let mut t = Tables::default();
        for (i, (c, id, name, time)) in order.iter().enumerate() {
            st.process(routed(c, id, name, *time, i as u64 + 1), i as u64 + 1);
            t.apply(st.take_output());
        }
        st.flush_all(order.len() as u64 + 1);
        t.apply(st.take_output());
        (t, st.counters().clone())
    };
    let mut by_time = log.clone();
    by_time.sort_by_key(|e| (e.3, e.1.clone()));
    let (a, a_counters) = run_in(&by_time);
    let (b, b_counters) = run_in(&log);
    assert_eq!(a_counters.corrected_events, 0);
    assert!(b_counters.corrected_events > 0, "{b_counters:?}");
    assert_eq!(b_counters.late_events, 0);
    let unversioned = |t: &Tables| {
        (
            t.touchpoints
                .values()
                .map(|r| (r.event_id.clone(), r.session_id.clone(), r.is_late))
                .collect::<Vec<_>>(),
            t.sessions
                .values()
                .map(|r| SessionRow {
                    version: 0,
                    ..r.clone()
                })
                .collect::<Vec<_>>(),
            t.attempts
                .values()
                .map(|r| FunnelAttemptRow {
                    version: 0,
                    ..r.clone()
                })
                .collect::<Vec<_>>(),
        )
    };
    assert!(!a.attempts.is_empty());
    assert_eq!(unversioned(&b), unversioned(&a));
}

#[test]
fn funnel_drops_only_when_the_watermark_passes_the_window() {
    // Lateness 5 min: the release frontier is watermark − 5 min.
    let mut st = stage();
    let mut t = Tables::default();
    st.process(routed("c", "v", "Product Viewed", 0, 1), 1);
    st.process(routed("c", "a", "Product Added", MIN, 2), 2);
    // Another customer moves the watermark to 65 min → frontier exactly 60 min: still open.
    st.process(routed("d", "x", "Home", 65 * MIN, 3), 3);
    t.apply(st.take_output());
    assert!(t.attempts.is_empty());
    st.process(routed("d", "y", "Home", 65 * MIN + 1, 4), 4);
    t.apply(st.take_output());
    let row = t.attempts.values().next().expect("dropped attempt");
    assert_eq!(row.outcome, Outcome::Dropped);
    assert_eq!((row.reached_step, row.total_steps), (2, 4));
    assert_eq!((row.start_ms, row.closed_ms), (0, 60 * MIN));
    assert_eq!(row.step_event_ids, vec!["v", "a"]);
    assert_eq!(row.attempt_id, hex128(id128(&["web_checkout", "c", "v"])));
}

#[test]
fn an_idle_watermark_advance_closes_attempts_without_new_events() {
    let mut st = stage();
    let mut t = Tables::default();
    st.process(routed("c", "v", "Product Viewed", 0, 1), 1);
    st.advance_watermark(65 * MIN, 1);
    t.apply(st.take_output());
    assert!(
        t.attempts.is_empty(),
        "frontier exactly at start + window: still open"
    );
    // Never moves backwards.
    st.advance_watermark(10 * MIN, 1);
    assert_eq!(st.watermark_ms(), Some(65 * MIN));
    st.advance_watermark(65 * MIN + 1, 2);
    t.apply(st.take_output());
    let row = t.attempts.values().next().expect("dropped attempt");
    assert_eq!((row.outcome, row.reached_step), (Outcome::Dropped, 1));
    // An event behind the new frontier (inside the horizon) corrects the closed attempt.
    st.process(routed("c", "late", "Product Added", MIN, 3), 3);
    t.apply(st.take_output());
    assert_eq!(st.counters().late_events, 0);
    assert_eq!(st.counters().corrected_events, 1);
    assert_eq!(t.attempts.len(), 1);
    let row = t.attempts.values().next().expect("corrected attempt");
    assert_eq!((row.outcome, row.reached_step), (Outcome::Dropped, 2));
    assert_eq!(row.step_event_ids, vec!["v", "late"]);
}

#[test]
fn an_external_watermark_alone_releases_and_judges_lateness() {
    let config = JourneyConfig {
        external_watermark: true,
        ..JourneyConfig::default()
    };
    let mut st = JourneyStage::new(config, Catalog::default(), funnels());
    let mut t = Tables::default();
    // Far-apart events do not move the watermark: nothing is released or late yet.
    st.process(
        routed("c", "late-day", "Product Viewed", 24 * 60 * MIN, 1),
        1,
    );
    st.process(routed("d", "early", "Product Viewed", 0, 2), 2);
    assert_eq!(st.watermark_ms(), None);
    assert_eq!(st.counters().late_events, 0);
    st.advance_watermark(10 * MIN, 3);
    t.apply(st.take_output());
    assert_eq!(
        t.touchpoints.len(),
        1,
        "only the event behind the frontier is released"
    );
    assert!(!t.touchpoints["early"].session_id.is_empty());
    // An event more than the lateness behind the external watermark is placed at once
    // (inside the horizon), not held back.
    st.process(routed("e", "old", "Home", MIN, 4), 4);
    t.apply(st.take_output());
    assert_eq!(st.counters().late_events, 0);
    assert_eq!(st.counters().corrected_events, 1);
    assert!(!t.touchpoints["old"].session_id.is_empty());
}

#[test]
fn a_replayed_copy_behind_the_watermark_does_not_replace_the_placed_row() {
    let mut st = stage();
    let mut t = Tables::default();
    st.process(routed("c", "e1", "Product Viewed", 0, 1), 1);
    st.process(routed("d", "e2", "Home", 60 * MIN, 2), 2);
    t.apply(st.take_output());
    let placed = t.touchpoints["e1"].clone();
    assert!(!placed.session_id.is_empty());
    // The same event again, now far behind the watermark.
    st.process(routed("c", "e1", "Product Viewed", 0, 1), 3);
    t.apply(st.take_output());
    assert_eq!(t.touchpoints["e1"], placed);
    assert_eq!(st.counters().late_events, 0);
    assert_eq!(st.counters().duplicates, 1);
    // e1 only: e2 still waits for the frontier (events count as placed on release).
    assert_eq!(st.counters().placed_events, 1);
}

#[test]
fn funnel_converts_and_a_new_attempt_follows() {
    let names = [
        "Product Viewed",
        "Product Added",
        "Checkout Started",
        "Order Completed",
    ];
    let mut events: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| routed("c", &format!("s{i}"), n, i as i64 * MIN, i as u64))
        .collect();
    events.push(routed("c", "again", "Product Viewed", 10 * MIN, 9));
    events.push(routed("c", "late-step", "Product Added", 80 * MIN, 10));
    let (t, _) = run(events);
    let mut rows: Vec<_> = t.attempts.values().collect();
    rows.sort_by_key(|r| r.start_ms);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].outcome, Outcome::Converted);
    assert_eq!((rows[0].closed_ms, rows[0].reached_step), (3 * MIN, 4));
    assert_eq!(rows[0].step_times_ms, vec![0, MIN, 2 * MIN, 3 * MIN]);
    // The second attempt's Product Added came after its window: dropped at step 1.
    assert_eq!(rows[1].outcome, Outcome::Dropped);
    assert_eq!(
        (rows[1].start_ms, rows[1].closed_ms, rows[1].reached_step),
        (10 * MIN, 70 * MIN, 1)
    );
}

/// Stage 1 then stage 2, one partition each, as the proptest does.
fn pipeline(events: Vec<JourneyEvent>) -> (Tables, JourneyStage) {
    let mut ids = IdentityStage::new(IdentityConfig::default());
    let mut st = stage();
    let mut t = Tables::default();
    let mut seq2 = 0;
    for (seq1, e) in events.into_iter().enumerate() {
        route(&mut ids, &mut st, &mut t, e, seq1 as u64 + 1, &mut seq2);
    }
    st.flush_all(seq2 + 1);
    t.apply(st.take_output());
    (t, st)
}

/// Route `e` through stage 1 at input position `seq1` and feed its outputs to stage 2,
/// numbered on from `seq2`.
fn route(
    ids: &mut IdentityStage,
    st: &mut JourneyStage,
    t: &mut Tables,
    e: JourneyEvent,
    seq1: u64,
    seq2: &mut u64,
) {
    for out in ids.process(e, seq1) {
        *seq2 += 1;
        match out {
            IdentityOutput::Event(r) => st.process(r, *seq2),
            IdentityOutput::Retract(r) => st.retract(&r, *seq2),
            _ => {}
        }
        t.apply(st.take_output());
    }
}

fn with_ids(mut e: JourneyEvent, anon: Option<&str>, user: Option<&str>) -> JourneyEvent {
    e.anonymous_id = anon.map(Into::into);
    e.user_id = user.map(Into::into);
    e
}

#[test]
fn reattribution_moves_anonymous_events_sessions_and_attempts_to_the_user() {
    let (t, st) = pipeline(vec![
        // Logged in on another device first.
        with_ids(event("u-home", "Home", 20 * MIN), None, Some("u")),
        // Anonymous browsing, earlier than the user's first event…
        with_ids(event("a-view", "Product Viewed", 10 * MIN), Some("a"), None),
        with_ids(event("a-add", "Product Added", 21 * MIN), Some("a"), None),
        // …then login on the anonymous device, and the purchase.
        with_ids(event("login", "Signed In", 22 * MIN), Some("a"), Some("u")),
        with_ids(event("co", "Checkout Started", 23 * MIN), Some("a"), None),
        with_ids(event("oc", "Order Completed", 24 * MIN), None, Some("u")),
    ]);
    // Everything is the user's, in one session starting with the anonymous view.
    for id in ["u-home", "a-view", "a-add", "login", "co", "oc"] {
        assert_eq!(&*t.touchpoints[id].customer_id, "u", "{id}");
    }
    let sid = hex128(id128(&["u", "a-view"]));
    assert!(t.touchpoints.values().all(|r| *r.session_id == *sid));
    assert_eq!(t.sessions.len(), 1, "{:?}", t.sessions);
    assert_eq!(t.sessions[sid.as_str()].event_count, 6);
    // The anonymous attempt became the user's, and converted.
    assert_eq!(t.attempts.len(), 1);
    let a = t.attempts.values().next().expect("attempt");
    assert_eq!(
        (a.customer_id.as_str(), a.outcome),
        ("u", Outcome::Converted)
    );
    assert_eq!(a.step_event_ids, vec!["a-view", "a-add", "co", "oc"]);
    assert_eq!(st.counters().retractions, 1);
    t.assert_by_customer_matches();
    // The anonymous rows were tombstoned under "a", and the journey rows carry the
    // message type and name.
    assert!(t
        .by_customer
        .keys()
        .any(|(c, _, id)| &**c == "a" && &**id == "a-view"));
    let login = t
        .by_customer
        .values()
        .find(|r| &*r.event_id == "login" && !r.is_deleted);
    let login = login.expect("login row");
    assert_eq!((login.message_type, &*login.event), ("track", "Signed In"));
}

/// A full replay by a fresh consumer group: the journey stage reads the first run's
/// routed stream, then the replay's copy of it (a fresh identity stage routes the
/// anonymous events under the anonymous id again before the link re-attributes them).
/// The replay's anonymous copies arrive far behind the watermark and are placed under the
/// anonymous id (inside the correction horizon); the retraction and the re-attributed
/// copies that follow must leave the user's rows the newest again and nothing live under
/// the anonymous id.
#[test]
fn a_full_replay_leaves_reattributed_events_with_the_user() {
    let log = [
        with_ids(event("a-view", "Product Viewed", 10 * MIN), Some("a"), None),
        with_ids(event("a-add", "Product Added", 11 * MIN), Some("a"), None),
        with_ids(event("login", "Signed In", 12 * MIN), Some("a"), Some("u")),
        // Much later traffic of someone else: the watermark moves far past the log.
        with_ids(event("x-home", "Home", 300 * MIN), Some("x"), None),
    ];
    let mut st = stage();
    let mut t = Tables::default();
    let mut seq2 = 0;
    for pass in 0..2_u64 {
        let mut ids = IdentityStage::new(IdentityConfig::default());
        // The replay numbers its inputs higher (it interleaves the raw and aliases topics
        // differently), so its copies carry higher versions than the first run's.
        for (seq1, e) in log.iter().cloned().enumerate() {
            let seq1 = seq1 as u64 + 1 + pass * 100;
            route(&mut ids, &mut st, &mut t, e, seq1, &mut seq2);
        }
        if pass == 0 {
            for id in ["a-view", "a-add", "login"] {
                assert_eq!(&*t.touchpoints[id].customer_id, "u", "first run: {id}");
            }
        }
    }
    st.flush_all(seq2 + 1);
    t.apply(st.take_output());
    assert!(
        st.counters().corrected_events > 0,
        "the replay's anonymous copies came behind the frontier"
    );
    for id in ["a-view", "a-add", "login"] {
        let row = &t.touchpoints[id];
        assert_eq!(&*row.customer_id, "u", "after the replay: {id}");
        assert!(!row.is_late && !row.session_id.is_empty(), "{id}: {row:?}");
    }
    assert!(
        t.sessions.values().all(|s| &*s.customer_id != "a"),
        "a live session under the anonymous id"
    );
    assert!(
        t.attempts.values().all(|a| a.customer_id != "a"),
        "a live attempt under the anonymous id"
    );
    t.assert_by_customer_matches();
}

#[test]
fn retraction_tombstones_rows_and_writes_buffered_events() {
    let mut st = stage();
    let mut t = Tables::default();
    st.process(routed("a", "v", "Product Viewed", 0, 1), 1);
    st.process(routed("a", "w", "Home", 6 * MIN, 2), 2); // releases v only
    t.apply(st.take_output());
    assert_eq!(t.sessions.len(), 1);
    st.retract(
        &Retract {
            customer_id: "a".into(),
        },
        3,
    );
    let out = st.take_output();
    assert!(out.sessions.iter().all(|r| r.is_deleted && r.start_ms == 0));
    t.apply(out);
    assert!(t.sessions.is_empty());
    let w = &t.touchpoints["w"];
    assert!(w.session_id.is_empty() && !w.is_late);
    assert_eq!(st.customer_count(), 0);
    assert_eq!(st.buffered_events(), 0);
}

#[test]
fn duplicates_are_placed_once() {
    let (t, st) = run(vec![
        routed("c", "e1", "Home", 0, 1),
        routed("c", "e1", "Home", 0, 2),
    ]);
    assert_eq!(t.sessions.values().next().map(|s| s.event_count), Some(1));
    assert_eq!(st.counters().duplicates, 1);
    assert_eq!(st.counters().placed_events, 1);
}

/// A client's retry: the same event id with a later event time (its new `sentAt` /
/// receipt time), waiting in the buffer, placed, or far behind the horizon.
#[test]
fn a_retry_at_another_time_is_a_duplicate() {
    // Retried 2 s later, both still buffered: one event, the first copy's time.
    let (t, st) = run(vec![
        routed("c", "m1", "Product Viewed", 0, 1),
        routed("c", "m1", "Product Viewed", 2_000, 2),
    ]);
    let s = &t.sessions[t.session_of("m1")];
    assert_eq!((s.start_ms, s.end_ms, s.event_count), (0, 0, 1));
    assert_eq!(st.counters().duplicates, 1);

    // The first copy already placed; a converted attempt must not gain a second one
    // anchored at the retry.
    let (t, st) = run(vec![
        routed("c", "pv", "Product Viewed", 0, 1),
        routed("c", "pa", "Product Added", MIN, 2),
        routed("c", "cs", "Checkout Started", 2 * MIN, 3),
        routed("c", "oc", "Order Completed", 3 * MIN, 4),
        routed("d", "other", "Home", 20 * MIN, 5),
        routed("c", "pv", "Product Viewed", 15 * MIN, 6),
    ]);
    let checkout: Vec<_> = t
        .attempts
        .values()
        .filter(|a| a.funnel == "web_checkout")
        .collect();
    assert_eq!(checkout.len(), 1, "{checkout:?}");
    assert_eq!(checkout[0].outcome, Outcome::Converted);
    assert_eq!(checkout[0].step_times_ms, vec![0, MIN, 2 * MIN, 3 * MIN]);
    let s = &t.sessions[t.session_of("pv")];
    assert_eq!((s.start_ms, s.end_ms, s.event_count), (0, 3 * MIN, 4));
    assert_eq!(st.counters().duplicates, 1);

    // An earlier copy arriving second does not move the placed one either: the first
    // copy in input order stays.
    let (t, _) = run(vec![
        routed("c", "m1", "Home", 10 * MIN, 1),
        routed("d", "other", "Home", 30 * MIN, 2),
        routed("c", "m1", "Home", 5 * MIN, 3),
    ]);
    assert_eq!(t.sessions[t.session_of("m1")].start_ms, 10 * MIN);
}

/// Long histories and backlogs find ids through an index ([`IdIndex`], the buffer's):
/// retries of early, middle and late events are found, placed or still buffered, and an
/// id evicted from the history is no longer remembered.
#[test]
fn retries_are_found_in_long_histories_and_backlogs() {
    let mut st = stage();
    let mut t = Tables::default();
    // 200 events a minute apart: the first ~195 released, the rest buffered.
    for i in 0..200 {
        st.process(routed("c", &format!("e{i}"), "Home", i * MIN, 1), i as u64);
    }
    t.apply(st.take_output());
    assert!(st.buffered_events() > 0);
    let mut seq = 200;
    for (i, shift) in [(0, 500), (100, 300), (150, -3), (199, 700), (198, 1)] {
        st.process(
            routed("c", &format!("e{i}"), "Home", i * MIN + shift * MIN, 2),
            seq,
        );
        seq += 1;
    }
    assert_eq!(st.counters().duplicates, 5);
    // A backlog of one customer, all buffered (an import): retries found there too.
    for i in 0..100 {
        st.process(routed("b", &format!("b{i}"), "Home", 190 * MIN + i, 3), seq);
        seq += 1;
    }
    for i in [0, 57, 99] {
        st.process(routed("b", &format!("b{i}"), "Home", 191 * MIN + i, 4), seq);
        seq += 1;
    }
    assert_eq!(st.counters().duplicates, 8);
    st.flush_all(seq);
    t.apply(st.take_output());
    let counts: u32 = t
        .sessions
        .values()
        .filter(|s| &*s.customer_id == "c")
        .map(|s| s.event_count)
        .sum();
    assert_eq!(counts, 200);
    let counts: u32 = t
        .sessions
        .values()
        .filter(|s| &*s.customer_id == "b")
        .map(|s| s.event_count)
        .sum();
    assert_eq!(counts, 100);

    // Far later, the early events left the history (behind the horizon): a copy of one
    // inside the horizon is a new event again, as documented.
    let later = 30 * 24 * 60 * MIN;
    st.process(routed("c", "e-late", "Home", later, 5), seq);
    st.process(routed("c", "e5", "Home", later + MIN, 5), seq + 1);
    assert_eq!(st.counters().duplicates, 8);
}

#[test]
fn a_retry_behind_the_horizon_does_not_turn_the_placed_row_late() {
    let mut st = stage();
    let mut t = Tables::default();
    st.process(routed("c", "m1", "Home", 10 * MIN, 1), 1);
    st.process(routed("d", "e2", "Home", 20 * MIN, 2), 2);
    t.apply(st.take_output());
    let placed = t.touchpoints["m1"].clone();
    assert!(!placed.session_id.is_empty());
    // A copy whose (skewed) time lies behind everything still placeable.
    st.process(routed("c", "m1", "Home", -30 * 24 * 60 * MIN, 3), 3);
    t.apply(st.take_output());
    assert_eq!(t.touchpoints["m1"], placed);
    assert_eq!(st.counters().late_events, 0);
    assert_eq!(st.counters().duplicates, 1);
}

#[test]
fn snapshot_resume_writes_the_same_rows() {
    let events: Vec<_> = (0..12)
        .map(|i| {
            routed(
                "c",
                &format!("e{i}"),
                "Product Viewed",
                i * 7 * MIN,
                i as u64,
            )
        })
        .collect();
    let mut whole = stage();
    let mut split = stage();
    let mut out_whole = Vec::new();
    let mut out_split = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        whole.process(e.clone(), i as u64);
        out_whole.push(whole.take_output());
        if i == 6 {
            let json = serde_json::to_string(&split.snapshot()).expect("serialize");
            let snap = serde_json::from_str(&json).expect("deserialize");
            split = JourneyStage::from_snapshot(
                JourneyConfig::default(),
                Catalog::default(),
                funnels(),
                snap,
            );
        }
        split.process(e, i as u64);
        out_split.push(split.take_output());
    }
    assert_eq!(out_whole, out_split);
}

#[test]
fn idle_customers_are_forgotten_after_the_horizon() {
    let config = JourneyConfig {
        reattribution_horizon_secs: Some(3600),
        ..JourneyConfig::default()
    };
    let mut st = JourneyStage::new(config, Catalog::default(), funnels());
    st.process(routed("c", "e1", "Home", 0, 1), 1);
    st.process(routed("d", "e2", "Home", 6 * MIN, 2), 2);
    assert_eq!(st.customer_count(), 1);
    // c's last event + max(gap, 7 d window) + horizon must pass the frontier.
    let far = 7 * 24 * 60 * MIN + 60 * MIN + 5 * MIN + 1;
    st.process(routed("d", "e3", "Home", far, 3), 3);
    st.process(routed("d", "e4", "Home", far + 1, 4), 4);
    assert_eq!(st.counters().customers_expired, 1);
    // A re-attributed event older than the horizon is stored late, not placed.
    st.process(
        RoutedEvent {
            reattributed: true,
            ..routed("c", "old", "Home", MIN, 5)
        },
        5,
    );
    let out = st.take_output();
    let old = out
        .touchpoints
        .iter()
        .find(|r| &*r.event_id == "old")
        .expect("row");
    assert!(old.is_late && old.session_id.is_empty());
    assert_eq!(st.counters().reattributed_too_old, 1);
}

#[test]
fn memory_per_customer_with_few_events_is_small() {
    let mut st = stage();
    for i in 0..3 {
        st.process(
            routed(
                "customer-0001",
                &format!("{i:036}"),
                "Product Viewed",
                i * MIN,
                1,
            ),
            1,
        );
    }
    st.flush_all(2);
    let json = serde_json::to_vec(&st.snapshot().customers).expect("serialize");
    // Serialized size as a proxy for heap use (see report): 3 events, one session, one
    // open attempt.
    assert!(json.len() < 2048, "{} bytes", json.len());
}

#[test]
fn per_customer_structs_stay_small() {
    // What an active customer costs besides its strings (see benches/memory.rs): one
    // boxed `Customer`, its history and its written rows.
    use std::mem::size_of;
    assert!(size_of::<HistEvent>() <= 88, "{}", size_of::<HistEvent>());
    assert!(size_of::<LiveRow>() <= 48, "{}", size_of::<LiveRow>());
    assert!(size_of::<Customer>() <= 120, "{}", size_of::<Customer>());
}

#[test]
fn restoring_a_snapshot_anywhere_changes_no_output() {
    // Two customers, one long enough to keep its end-of-history machine, anonymous events
    // re-attributed by a link, events still buffered at most cut points.
    let names = [
        "Home",
        "Product Viewed",
        "Product Added",
        "Checkout Started",
        "Order Completed",
    ];
    let mut log = Vec::new();
    for i in 0..40i64 {
        let name = names[(i % 5) as usize];
        let (anon, user) = match i % 4 {
            0 => (Some("a"), None),
            1 => (None, Some("u")),
            2 => (Some("b"), None),
            _ => (Some("b"), Some("v")),
        };
        // Mostly in order, some out of order within the lateness, gaps past a session.
        let t = i * 3 * MIN + if i % 7 == 3 { -4 * MIN } else { 0 } + (i / 20) * 60 * MIN;
        log.push(with_ids(event(&format!("e{i:02}"), name, t), anon, user));
    }
    log.push(with_ids(
        event("link", "Signed In", 125 * MIN),
        Some("a"),
        Some("u"),
    ));

    let stage1 = |log: &[JourneyEvent]| {
        let mut ids = IdentityStage::new(IdentityConfig::default());
        let mut msgs = Vec::new();
        for (seq, e) in log.iter().enumerate() {
            msgs.extend(ids.process(e.clone(), seq as u64 + 1));
        }
        msgs
    };
    let msgs = stage1(&log);
    let feed =
        |st: &mut JourneyStage, out: &mut Vec<JourneyOutput>, i: usize, m: &IdentityOutput| {
            let seq = i as u64 + 1;
            match m {
                IdentityOutput::Event(r) => st.process(r.clone(), seq),
                IdentityOutput::Retract(r) => st.retract(r, seq),
                _ => {}
            }
            out.push(st.take_output());
        };
    let mut whole = stage();
    let mut expected = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        feed(&mut whole, &mut expected, i, m);
    }
    whole.flush_all(msgs.len() as u64 + 1);
    expected.push(whole.take_output());

    for cut in 0..=msgs.len() {
        let mut st = stage();
        let mut got = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            if i == cut {
                let json = serde_json::to_string(&st.snapshot()).expect("serialize");
                // The in-place serializer writes the very same document.
                assert_eq!(
                    serde_json::to_string(&st.snapshot_ref()).expect("serialize"),
                    json,
                    "cut {cut}"
                );
                let snap: JourneySnapshot = serde_json::from_str(&json).expect("deserialize");
                st = JourneyStage::from_snapshot(
                    JourneyConfig::default(),
                    Catalog::default(),
                    funnels(),
                    snap,
                );
                // A restored stage saves the same state it was restored from.
                assert_eq!(
                    serde_json::to_string(&st.snapshot()).expect("serialize"),
                    json,
                    "cut {cut}"
                );
            }
            feed(&mut st, &mut got, i, m);
        }
        st.flush_all(msgs.len() as u64 + 1);
        got.push(st.take_output());
        assert_eq!(got, expected, "restored before message {cut}");
        assert_eq!(st.counters(), whole.counters(), "cut {cut}");
    }
}

/// A seeded mix of `n` events: customers, anonymous ids and links, events within and
/// beyond the lateness, duplicate ids.
fn mixed_log(seed: u64, n: u64) -> Vec<JourneyEvent> {
    let mut seed = seed;
    let mut next = move |n: u64| {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let names = [
        "Home",
        "Product Viewed",
        "Product Added",
        "Checkout Started",
        "Order Completed",
        "Complaint Filed",
        "Follow-up Completed",
    ];
    let mut log = Vec::new();
    let mut t = 0i64;
    for i in 0..n {
        t += [0, MIN, 3 * MIN, 20 * MIN, 2 * 60 * MIN][next(5) as usize];
        let jitter = if next(10) == 0 {
            8 * MIN
        } else {
            next(3) as i64 * MIN
        };
        let (anon, user) = match next(6) {
            0 | 1 => (Some(["a0", "a1", "a2"][next(3) as usize]), None),
            2 => (Some(["a0", "a1", "a2"][next(3) as usize]), Some("u0")),
            _ => (None, Some(["u0", "u1", "u2"][next(3) as usize])),
        };
        let id = if next(30) == 0 { next(i + 1) } else { i };
        let name = names[next(names.len() as u64) as usize];
        log.push(with_ids(
            event(&format!("e{id}"), name, t - jitter),
            anon,
            user,
        ));
    }
    log
}

#[test]
fn the_tail_shortcut_writes_exactly_what_full_replays_write() {
    // A seeded mix of customers, anonymous ids and links, events within and beyond the
    // lateness, duplicate ids, idle watermark moves and flushes: every output batch must
    // be identical whether customers step their kept tail (from the first event on) or
    // always replay from the checkpoint.
    let log = mixed_log(7, 600);
    let t = log.iter().map(|e| e.event_time_ms).max().unwrap_or(0);
    let run = |tail_min: usize| {
        let mut ids = IdentityStage::new(IdentityConfig::default());
        let mut st = stage();
        st.tail_min_events = tail_min;
        let mut outs = Vec::new();
        let mut seq2 = 0;
        for (seq1, e) in log.iter().enumerate() {
            for out in ids.process(e.clone(), seq1 as u64 + 1) {
                seq2 += 1;
                match out {
                    IdentityOutput::Event(r) => st.process(r, seq2),
                    IdentityOutput::Retract(r) => st.retract(&r, seq2),
                    _ => {}
                }
            }
            if seq1 % 97 == 96 {
                seq2 += 1;
                st.advance_watermark(e.event_time_ms + 30 * MIN, seq2);
            }
            if seq1 % 250 == 249 {
                seq2 += 1;
                st.flush_all(seq2);
            }
            outs.push(st.take_output());
        }
        seq2 += 1;
        st.advance_watermark(t + 30 * 24 * 60 * MIN, seq2);
        outs.push(st.take_output());
        (outs, st.counters().clone())
    };
    let (always, counters) = run(0);
    assert!(
        counters.corrected_events > 0 && counters.retractions > 0,
        "{counters:?}"
    );
    assert!(always.iter().map(|o| o.attempts.len()).sum::<usize>() > 0);
    assert!(always.iter().map(|o| o.open_attempts.len()).sum::<usize>() > 0);
    let (never, never_counters) = run(usize::MAX);
    assert_eq!(counters, never_counters);
    assert_eq!(always.len(), never.len());
    for (i, (a, b)) in always.iter().zip(&never).enumerate() {
        assert_eq!(a, b, "batch {i}");
    }
    assert_eq!(run(TAIL_MIN_EVENTS_FOR_TESTS).0, never);
}

const TAIL_MIN_EVENTS_FOR_TESTS: usize = emit::TAIL_MIN_EVENTS;

/// `funnel_open_attempts`: an attempt's row appears when it opens, is rewritten (higher
/// version) when it advances, and is tombstoned in its own partition when it converts or
/// drops; the open-attempt counts follow the release frontier.
#[test]
fn open_attempts_appear_advance_and_vanish_on_close() {
    use crate::journey::rows::FunnelOpenAttemptRow;
    let mut st = stage();
    let mut seq = 0;
    let mut table: BTreeMap<(String, String), FunnelOpenAttemptRow> = BTreeMap::new();
    let mut feed = |st: &mut JourneyStage, batch: Vec<(&str, &str, &str, i64)>| {
        for (customer, id, name, t) in batch {
            seq += 1;
            st.process(routed(customer, id, name, t, 1), seq);
        }
        for r in st.take_output().open_attempts {
            let key = (r.funnel.clone(), r.attempt_id.clone());
            if let Some(old) = table.get(&key) {
                assert!(r.version > old.version, "{r:?}");
                assert_eq!(r.started_at, old.started_at, "same partition: {r:?}");
            }
            table.insert(key, r);
        }
        let mut open: Vec<_> = table.values().filter(|r| !r.is_deleted).cloned().collect();
        open.sort_by(|a, b| a.funnel.cmp(&b.funnel));
        open
    };
    let window = 60 * MIN;
    let week = 7 * 24 * 60 * MIN;

    // Released once the frontier (watermark − 5 min) passes them.
    let open = feed(
        &mut st,
        vec![
            ("c1", "complaint", "Complaint Filed", 0),
            ("c2", "view", "Product Viewed", 0),
            ("c3", "h1", "Home", 10 * MIN),
        ],
    );
    let steps: Vec<_> = open
        .iter()
        .map(|r| (r.funnel.as_str(), &*r.customer_id, r.reached_step, r.due_ms))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("service_recovery", "c1", 1, week),
            ("web_checkout", "c2", 1, window)
        ]
    );
    assert_eq!(open[1].total_steps, 4);
    assert_eq!(open[1].step_event_ids, vec!["view".to_string()]);
    let attempt_id = open[1].attempt_id.clone();
    // Frontier at 5 min: 1/12 of the checkout window used, ~0 of the week.
    let counts = st.open_attempts(&[0.05, 0.5]);
    assert_eq!(
        counts,
        vec![
            OpenAttemptCount {
                funnel: 0,
                step: 1,
                open: 1,
                overdue: vec![1, 0]
            },
            OpenAttemptCount {
                funnel: 1,
                step: 1,
                open: 1,
                overdue: vec![0, 0]
            },
        ]
    );

    // The checkout advances to step 2: same row, rewritten.
    let open = feed(
        &mut st,
        vec![
            ("c2", "add", "Product Added", 20 * MIN),
            ("c3", "h2", "Home", 40 * MIN),
        ],
    );
    assert_eq!(open.len(), 2);
    assert_eq!(
        (
            open[1].attempt_id.as_str(),
            open[1].reached_step,
            open[1].reached_ms
        ),
        (attempt_id.as_str(), 2, 20 * MIN)
    );
    let counts = st.open_attempts(&[0.05, 0.5]);
    assert_eq!(
        counts[0],
        OpenAttemptCount {
            funnel: 0,
            step: 2,
            open: 1,
            overdue: vec![1, 1]
        }
    );

    // The complaint converts, the checkout's window passes: both rows go.
    let open = feed(
        &mut st,
        vec![
            ("c1", "follow", "Follow-up Completed", 50 * MIN),
            ("c1", "order", "Order Completed", 51 * MIN),
            ("c3", "h3", "Home", 70 * MIN),
        ],
    );
    assert!(open.is_empty(), "{open:?}");
    assert!(st.open_attempts(&[0.5]).is_empty());
    assert_eq!(table.len(), 2, "tombstones reuse the keys");
}

#[test]
fn a_copy_re_sent_after_the_watermark_moved_on_is_recognised_not_late() {
    // Horizon 60 min. c's event at 0 is placed; the watermark then moves 9 days on, past
    // the longest funnel window, so c is forgotten. The identity partition restarts and re-sends
    // the event: without its origin it would be stored late and replace the placed row.
    let config = JourneyConfig {
        reattribution_horizon_secs: Some(3600),
        external_watermark: true,
        ..JourneyConfig::default()
    };
    let origin = |position, index| Origin {
        source: 1,
        position,
        index,
    };
    const FAR: i64 = 9 * 24 * 60 * MIN;
    let mut st = JourneyStage::new(config.clone(), Catalog::default(), funnels());
    let mut t = Tables::default();
    st.process_from(routed("c", "e1", "Home", 0, 7), 1, origin(7, 0));
    st.advance_watermark(10 * MIN, 2);
    t.apply(st.take_output());
    let placed = t.touchpoints["e1"].clone();
    assert!(!placed.is_late && !placed.session_id.is_empty());
    st.process_from(routed("d", "e2", "Home", FAR, 8), 3, origin(8, 0));
    st.advance_watermark(FAR, 4);
    // The state survives a restart (snapshot round trip) with what it has processed.
    let json = serde_json::to_string(&st.snapshot_ref()).expect("snapshot");
    let mut st = JourneyStage::from_snapshot(
        config,
        Catalog::default(),
        funnels(),
        serde_json::from_str(&json).expect("restore"),
    );
    st.process_from(routed("c", "e1", "Home", 0, 7), 5, origin(7, 0));
    st.process_from(routed("d", "e2", "Home", FAR, 8), 6, origin(8, 0));
    t.apply(st.take_output());
    assert_eq!(t.touchpoints["e1"], placed);
    assert_eq!(st.counters().redelivered, 2);
    assert_eq!(st.counters().late_events, 0);
    // Without an origin the same copy is judged by its time: late.
    st.process(routed("c", "e1", "Home", 0, 7), 7);
    assert_eq!(st.counters().late_events, 1);
    // What follows from the same source is new.
    st.process_from(routed("d", "e3", "Home", FAR + 1, 8), 8, origin(8, 1));
    assert_eq!(st.counters().redelivered, 2);
}

/// A customer with `n` events of its own, then a re-attributed run of `n` older events
/// (an anonymous history re-sent under it, landing before its own events) between two
/// flushes, then one event of another customer (the run ends). Returns the rows and the
/// replay work the run took. `snapshot_at`: restore from a snapshot (taken without a
/// flush) after that event of the run.
fn reattributed_run(n: i64, snapshot_at: Option<i64>) -> (Vec<JourneyOutput>, u64) {
    let t0 = 2 * 24 * 60 * MIN;
    let mut st = stage();
    let mut seq = 0;
    let mut outs = Vec::new();
    for i in 0..n {
        seq += 1;
        st.process(
            routed("u", &format!("u{i}"), "Product Viewed", t0 + i * MIN, 1),
            seq,
        );
    }
    outs.push(st.take_output());
    let before = st.replayed_events();
    for i in 0..n {
        seq += 1;
        let mut r = routed(
            "u",
            &format!("a{i}"),
            "Product Viewed",
            t0 - (n - i) * 1000,
            2,
        );
        r.reattributed = true;
        // The run arrives between two flushes, as one identity cut's output does.
        st.process(r, seq);
        if snapshot_at == Some(i) {
            let json = serde_json::to_string(&st.snapshot_ref()).expect("serialize");
            let snap = serde_json::from_str(&json).expect("deserialize");
            st = JourneyStage::from_snapshot(
                JourneyConfig::default(),
                Catalog::default(),
                funnels(),
                snap,
            );
        }
    }
    seq += 1;
    st.process(routed("z", "z", "Product Viewed", t0 + n * MIN, 1), seq);
    outs.push(st.take_output());
    (outs, st.replayed_events() - before)
}

/// A re-attributed run is replayed once, when it ends, not after each of its events:
/// 10× the events cost ~10× the work (counted in history events stepped, not time),
/// where replaying after each event cost 100×.
#[test]
fn a_reattributed_run_replays_in_linear_work() {
    let (_, small) = reattributed_run(100, None);
    let (_, large) = reattributed_run(1000, None);
    assert!(small > 0);
    assert!(
        large <= 12 * small,
        "10x the events took {large} / {small} = {:.1}x the work",
        large as f64 / small as f64
    );
    assert!(large <= 3 * 2 * 1000, "{large} steps for 2000 events");
}

/// The deferred recompute of a run survives a snapshot and restore in the middle of
/// it: the same rows, the same versions.
#[test]
fn a_snapshot_inside_a_reattributed_run_changes_no_output() {
    let (whole, _) = reattributed_run(40, None);
    let (split, _) = reattributed_run(40, Some(17));
    assert_eq!(whole, split);
    assert!(whole.iter().map(|o| o.sessions.len()).sum::<usize>() > 0);
}

/// The whole snapshot of `st`'s state as a restore would save it again (the buffer in
/// release order, whatever order a snapshot listed it in).
fn canonical(snap: JourneySnapshot) -> String {
    let st =
        JourneyStage::from_snapshot(JourneyConfig::default(), answers_catalog(), funnels(), snap);
    serde_json::to_string(&st.snapshot()).expect("serialize")
}

/// The default catalog plus a survey answer (README "Feedback attribution").
fn answers_catalog() -> Catalog {
    Catalog::from_toml_str(
        r#"
[events]
"Order Completed" = { stage = "purchase", channel = "web" }
"Complaint Filed" = { stage = "service", channel = "call_center" }
"Follow-up Completed" = { stage = "service", channel = "call_center" }
"Survey Completed" = { stage = "feedback", channel = "email", feedback = "any", rates_stage = "service" }
"#,
        None,
    )
    .expect("valid catalog")
}

/// [`mixed_log`] with every fifth event a survey answer rating an `Order Completed` and
/// every seventh in a store: events whose details (`journey/feedback.rs`) are saved
/// beside the history, and answers whose attribution later events change.
fn mixed_log_with_answers(seed: u64, n: u64) -> Vec<JourneyEvent> {
    let mut log = mixed_log(seed, n);
    for (i, e) in log.iter_mut().enumerate() {
        if i % 5 == 4 {
            e.event = Some("Survey Completed".into());
            e.properties = crate::event::Properties::from_json(&format!(
                r#"{{"scale":"csat","score":{},"about_event":"Order Completed"}}"#,
                1 + i % 5
            ));
        } else if i % 7 == 3 {
            e.properties = crate::event::Properties::from_json(r#"{"store_id":"s1"}"#);
        }
    }
    log
}

/// Incremental snapshots: a whole snapshot with the deltas saved after it, laid over it
/// in order, is the state the last delta was taken from — over a seeded mixed stream
/// with links (retractions, re-attributed runs), idle watermark moves that forget
/// customers, flushes and an erasure, saved at irregular points, with a whole snapshot
/// every few deltas (README "Processor state").
#[test]
fn deltas_laid_over_their_base_give_the_whole_snapshot() {
    let log = mixed_log_with_answers(11, 500);
    let mut ids = IdentityStage::new(IdentityConfig::default());
    let mut st = JourneyStage::new(JourneyConfig::default(), answers_catalog(), funnels());
    st.track_changes();
    let mut stored: Option<JourneySnapshot> = None;
    let (mut deltas, mut saves, mut seq2) = (0, 0, 0);
    for (seq1, e) in log.iter().enumerate() {
        for out in ids.process(e.clone(), seq1 as u64 + 1) {
            seq2 += 1;
            match out {
                IdentityOutput::Event(r) => st.process(r, seq2),
                IdentityOutput::Retract(r) => st.retract(&r, seq2),
                _ => {}
            }
        }
        if seq1 % 89 == 88 {
            seq2 += 1;
            st.advance_watermark(e.event_time_ms + 9 * 24 * 60 * MIN, seq2);
        }
        if seq1 == 300 {
            st.erase("u1");
        }
        let _ = st.take_output();
        if seq1 % (3 + seq1 % 5) != 0 {
            continue;
        }
        saves += 1;
        match (stored.as_mut(), st.delta_ref()) {
            (Some(base), Some(delta)) if saves % 6 != 0 => {
                let json = serde_json::to_string(&delta).expect("serialize");
                base.apply(serde_json::from_str(&json).expect("deserialize"));
                deltas += 1;
            }
            _ => {
                let json = serde_json::to_string(&st.snapshot_ref()).expect("serialize");
                stored = Some(serde_json::from_str(&json).expect("deserialize"));
            }
        }
        st.mark_saved();
        let base = stored.clone().expect("saved");
        assert_eq!(
            canonical(base),
            canonical(st.snapshot()),
            "after message {seq1}"
        );
    }
    assert!(deltas > 50, "{deltas} deltas");
    assert!(st.counters().customers_expired > 0 && st.counters().retractions > 0);
    // Answers were saved through deltas, attributed and not.
    let fb = &st.counters().feedback;
    assert!(
        fb.answers > 20 && fb.answers > fb.unattributed + 10,
        "{fb:?}"
    );
}

/// What a delta costs follows the customers changed since the last save, not how many
/// the partition keeps.
#[test]
fn a_delta_grows_with_the_change_not_the_state() {
    let sizes = |customers: i64| {
        let mut st = stage();
        st.track_changes();
        let mut seq = 0;
        for c in 0..customers {
            seq += 1;
            st.process(
                routed(
                    &format!("c{c}"),
                    &format!("e{c}"),
                    "Product Viewed",
                    c * 1000,
                    1,
                ),
                seq,
            );
        }
        let _ = st.take_output();
        st.mark_saved();
        for c in 0..10 {
            seq += 1;
            // Behind the watermark: it stays where it was, nothing else is released.
            let t = (customers - 1) * 1000 - c;
            st.process(
                routed(&format!("c{c}"), &format!("x{c}"), "Product Added", t, 1),
                seq,
            );
        }
        let _ = st.take_output();
        assert_eq!(st.changed_customers(), 10);
        let delta = serde_json::to_vec(&st.delta_ref().expect("tracked")).expect("serialize");
        let whole = serde_json::to_vec(&st.snapshot_ref()).expect("serialize");
        (delta.len(), whole.len())
    };
    let (small_delta, small_whole) = sizes(1_000);
    let (large_delta, large_whole) = sizes(10_000);
    assert!(
        large_whole > 8 * small_whole,
        "{large_whole} vs {small_whole}"
    );
    assert!(
        large_delta < small_delta + small_delta / 2,
        "10x the customers, same change: delta {large_delta} vs {small_delta} bytes"
    );
    assert!(
        large_delta * 100 < large_whole,
        "{large_delta} vs {large_whole}"
    );
}

/// Hot-customer cap (README "Hot customers"): 5 events per 30-minute window. A bot sends
/// 12 events in one window and 3 in the next, plus an ordinary customer: in time order,
/// in reverse and interleaved, the same 5 + 3 are placed (the first of each window in
/// `(event_time, event_id)` order), the other 7 stored without a session and counted,
/// and the rows are the same.
#[test]
fn a_hot_customer_is_capped_per_window_whatever_the_arrival_order() {
    let config = JourneyConfig {
        hot_customer_max_events: 5,
        ..JourneyConfig::default()
    };
    let base = 100 * 30 * MIN;
    let mut events: Vec<RoutedEvent> = (0..12)
        .map(|i| {
            routed(
                "bot",
                &format!("b{i:02}"),
                "Product Viewed",
                base + i * MIN,
                1,
            )
        })
        .chain((0..3).map(|i| {
            routed(
                "bot",
                &format!("n{i}"),
                "Product Viewed",
                base + 30 * MIN + i * MIN,
                1,
            )
        }))
        .chain((0..3).map(|i| routed("person", &format!("p{i}"), "Home", base + i * MIN, 1)))
        .collect();
    let feed = |events: &[RoutedEvent]| {
        let mut st = JourneyStage::new(config.clone(), Catalog::default(), funnels());
        let mut t = Tables::default();
        let n = events.len() as u64;
        for (seq, e) in events.iter().enumerate() {
            st.process(e.clone(), seq as u64 + 1);
            t.apply(st.take_output());
        }
        st.flush_all(n + 1);
        t.apply(st.take_output());
        (t, st.counters().clone())
    };
    let (ordered, counters) = feed(&events);
    let placed: Vec<&str> = ordered
        .touchpoints
        .values()
        .filter(|r| !r.session_id.is_empty())
        .map(|r| &*r.event_id)
        .collect();
    assert_eq!(
        placed,
        ["b00", "b01", "b02", "b03", "b04", "n0", "n1", "n2", "p0", "p1", "p2"]
    );
    for r in ordered
        .touchpoints
        .values()
        .filter(|r| r.session_id.is_empty())
    {
        assert!(!r.is_late, "{r:?}");
        assert_eq!(&*r.customer_id, "bot");
    }
    assert_eq!(ordered.touchpoints.len(), 18, "every event is stored");
    assert_eq!(counters.hot_customer_events, 7);
    let bot_events: u32 = ordered
        .sessions
        .values()
        .filter(|s| &*s.customer_id == "bot")
        .map(|s| s.event_count)
        .sum();
    assert_eq!(bot_events, 8);

    let by_key = |t: &Tables| -> Vec<(String, String, bool)> {
        t.touchpoints
            .values()
            .map(|r| (r.event_id.to_string(), r.session_id.to_string(), r.is_late))
            .collect()
    };
    events.reverse();
    let (reversed, rc) = feed(&events);
    let mut mixed = events.clone();
    mixed.sort_by_key(|r| {
        (r.event.event_id.len() * 7 + r.event.event_id.as_bytes()[1] as usize) % 5
    });
    let (interleaved, ic) = feed(&mixed);
    for (t, c) in [(&reversed, &rc), (&interleaved, &ic)] {
        assert_eq!(by_key(t), by_key(&ordered));
        let strip = |t: &Tables| -> Vec<SessionRow> {
            t.sessions
                .values()
                .map(|s| SessionRow {
                    version: 0,
                    ..s.clone()
                })
                .collect()
        };
        assert_eq!(strip(t), strip(&ordered));
        assert_eq!(c.hot_customer_events, 7);
        t.assert_by_customer_matches();
    }
}

#[test]
fn a_release_of_a_backlog_does_not_keep_its_dirty_queue() {
    // The processor's case: a backlog buffered under an external watermark, then
    // released by one advance, which queues every customer at once.
    let config = JourneyConfig {
        external_watermark: true,
        ..JourneyConfig::default()
    };
    let mut st = JourneyStage::new(config, Catalog::default(), funnels());
    let n = 4 * KEEP_DIRTY;
    for i in 0..n {
        let (c, e) = (format!("c{i}"), format!("e{i}"));
        st.process(
            routed(&c, &e, "Product Viewed", MIN, i as u64 + 1),
            i as u64 + 1,
        );
    }
    st.advance_watermark(60 * MIN, n as u64 + 1);
    drop(st.take_output());
    assert_eq!(st.customer_count(), n);
    assert!(st.dirty.is_empty());
    assert!(
        st.dirty.capacity() <= KEEP_DIRTY,
        "{} slots kept",
        st.dirty.capacity()
    );
}

#[test]
fn a_save_gives_back_the_change_set_a_burst_filled() {
    let mut st = stage();
    st.track_changes();
    let n = 4 * delta::KEEP_CHANGED;
    for i in 0..n {
        let (c, e) = (format!("c{i}"), format!("e{i}"));
        st.process(
            routed(&c, &e, "Product Viewed", MIN, i as u64 + 1),
            i as u64 + 1,
        );
    }
    assert_eq!(st.changed_customers(), n);
    st.mark_saved();
    let room = st.changed.as_ref().map_or(0, |c| c.capacity());
    assert!(room <= 2 * delta::KEEP_CHANGED, "room for {room} ids kept");
}
