//! Stage 1 → stage 2 against a batch reference (docs/design.md §4–5).
//!
//! Random logs: a few anonymous ids and users, random links (both ids, identify, alias,
//! conflicts, placeholders), event times shuffled within the allowed lateness (and, in
//! the second property, sometimes beyond it). The streaming stages run in one partition
//! each; their rows are applied like ClickHouse `FINAL` would (newest version per key,
//! tombstones removed) and compared with sessions and attempts computed by plain loops
//! over the whole log, sorted.
//!
//! Some events are sent twice, as a client retrying after a timeout does: the same event
//! id and fields at another event time (its new `sentAt`/receipt time), right after the
//! first copy or a few events later. The reference's rule is the documented one
//! (docs/design.md §4, Duplicates): the first copy in arrival order that is placed
//! counts, every later copy is ignored.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Map, Value};
use touchstream_core::is_placeholder_id;
use touchstream_journey::columns::secs;
use touchstream_journey::{
    Catalog, FunnelAttemptRow, FunnelSet, IdentityConfig, IdentityOutput, IdentityStage,
    JourneyConfig, JourneyEvent, JourneyOutput, JourneyStage, MessageType, Outcome, Properties,
    SessionRow,
};

const MIN: i64 = 60_000;
const GAP_SECS: u64 = 600;
const LATENESS_SECS: u64 = 120;
const LATENESS: i64 = LATENESS_SECS as i64 * 1000;

const FUNNELS: &str = r#"
[[funnel]]
name = "checkout"
window_secs = 3600
steps = [{ event = "Product Viewed" }, { event = "Product Added", where = { plan = "pro" } },
         { event = "Checkout Started" }, { event = "Order Completed" }]

[[funnel]]
name = "recovery"
window_secs = 2700
steps = [{ event = "Complaint Filed" }, { event = "Follow-up Completed" },
         { event = "Order Completed" }]
"#;

const NAMES: [&str; 7] = [
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Complaint Filed",
    "Follow-up Completed",
    "Home",
];
const ANONS: [&str; 4] = ["a0", "a1", "a2", "undefined"];
const USERS: [&str; 2] = ["u0", "u1"];
const CHANNELS: [Option<&str>; 5] = [
    None,
    Some("web"),
    Some("app"),
    Some("store"),
    Some("server"),
];

/// Raw generated fields of one event; the last: a retry of it, if any, as (its event
/// time less the first copy's, how many later events come between the two copies).
type Spec = (
    u8,
    usize,
    usize,
    usize,
    bool,
    i64,
    i64,
    usize,
    Option<(i64, usize)>,
);

/// `max_between`: how many events may come between an event and its retry. Beyond the
/// first, a retry can arrive after the first copy left the history (behind a short
/// horizon), where nothing remembers it; only the long-horizon property uses them.
fn spec(late_jitter: bool, max_between: usize) -> impl Strategy<Value = Spec> {
    let jitter_max = if late_jitter { 5 * LATENESS } else { LATENESS };
    (
        0u8..10,
        0..ANONS.len(),
        0..USERS.len(),
        0..8usize,
        prop::bool::weighted(0.8),
        // Whole minutes half the time, so gap, window and lateness boundaries are hit
        // exactly and equal times (ordered by event id) are common.
        prop_oneof![
            4 => (0..4i64).prop_map(|m| m * MIN),
            4 => 0..3 * MIN,
            1 => (0..90i64).prop_map(|m| m * MIN),
        ],
        prop_oneof![
            2 => (0..=LATENESS / MIN).prop_map(|m| m * MIN),
            2 => 0..=LATENESS,
            1 => (0..=jitter_max / MIN).prop_map(|m| m * MIN),
        ],
        0..CHANNELS.len(),
        // A retry is usually later (a new `sentAt` or receipt time), sometimes earlier
        // (a client clock corrected in between) or at the same time.
        prop::option::weighted(
            0.2,
            (
                prop_oneof![
                    3 => 1..=3 * MIN,
                    1 => -MIN..=0,
                    1 => Just(0),
                ],
                0..=max_between,
            ),
        ),
    )
}

/// Build the log. `anonymous`: whether anonymous ids and links appear at all.
fn build(specs: &[Spec], anonymous: bool) -> Vec<JourneyEvent> {
    let mut base = 1_700_000_000_000i64;
    // Names mostly walk each id's funnel steps in order so attempts convert, not only drop.
    let mut cursors: BTreeMap<&str, usize> = BTreeMap::new();
    let firsts: Vec<JourneyEvent> = specs
        .iter()
        .enumerate()
        .map(
            |(i, &(shape, anon_i, user_i, name, pro, delta, jitter, channel, _))| {
                base += delta;
                let (kind, anon, user, previous) = match (anonymous, shape) {
                    (false, _) => (MessageType::Track, None, Some(USERS[user_i]), None),
                    (true, 0..=3) => (MessageType::Track, Some(ANONS[anon_i]), None, None),
                    (true, 4) => (MessageType::Track, None, Some(USERS[user_i]), None),
                    (true, 5 | 6) => (
                        MessageType::Track,
                        Some(ANONS[anon_i]),
                        Some(USERS[user_i]),
                        None,
                    ),
                    (true, 7) => (
                        MessageType::Identify,
                        Some(ANONS[anon_i]),
                        Some(USERS[user_i]),
                        None,
                    ),
                    (true, 8) => (
                        MessageType::Alias,
                        None,
                        Some(USERS[user_i]),
                        Some(ANONS[anon_i]),
                    ),
                    (true, _) => (MessageType::Page, Some(ANONS[anon_i]), None, None),
                };
                let name = if name < 3 {
                    name + 4 // Complaint Filed, Follow-up Completed, Home
                } else {
                    let cursor = cursors
                        .entry(user.or(anon).unwrap_or_default())
                        .or_insert(3);
                    *cursor = (*cursor + 1) % 4;
                    *cursor
                };
                let mut properties = Map::new();
                properties.insert("plan".into(), json!(if pro { "pro" } else { "free" }));
                JourneyEvent {
                    event_id: format!("e{i:03}"),
                    kind,
                    event: matches!(kind, MessageType::Track | MessageType::Page)
                        .then(|| NAMES[name].to_owned()),
                    anonymous_id: anon.map(Into::into),
                    user_id: user.map(Into::into),
                    previous_id: previous.map(Into::into),
                    event_time_ms: base + jitter,
                    channel: CHANNELS[channel].map(Into::into),
                    // Text, as the processor passes it: the funnel filters parse it.
                    properties: Properties::from_json(&Value::Object(properties).to_string()),
                }
            },
        )
        .collect();
    // Each event at (its position, 0); a retry at (the position it follows, 1 + the
    // first copy's position), after the first copy and `between` later events.
    let mut log: Vec<((usize, usize), JourneyEvent)> = Vec::new();
    for (i, (e, spec)) in firsts.iter().zip(specs).enumerate() {
        log.push(((i, 0), e.clone()));
        if let Some((shift, between)) = spec.8 {
            let at = (i + between).min(firsts.len() - 1);
            let retry = JourneyEvent {
                event_time_ms: e.event_time_ms + shift,
                ..e.clone()
            };
            log.push(((at, 1 + i), retry));
        }
    }
    log.sort_by_key(|(at, _)| *at);
    log.into_iter().map(|(_, e)| e).collect()
}

/// ClickHouse after FINAL, checking that versions only grow per key.
#[derive(Default)]
struct Tables {
    touchpoints: BTreeMap<String, (u64, String, String, bool)>,
    sessions: BTreeMap<String, SessionRow>,
    attempts: BTreeMap<String, FunnelAttemptRow>,
}

impl Tables {
    fn apply(&mut self, out: JourneyOutput) {
        for r in out.touchpoints {
            let newer = self
                .touchpoints
                .get(&r.event_id)
                .is_none_or(|old| r.version > old.0);
            if newer {
                self.touchpoints.insert(
                    r.event_id,
                    (r.version, r.customer_id, r.session_id, r.is_late),
                );
            }
        }
        for r in out.sessions {
            if let Some(old) = self.sessions.get(&r.session_id) {
                assert!(r.version > old.version, "session version went back: {r:?}");
            }
            self.sessions.insert(r.session_id.clone(), r);
        }
        for r in out.attempts {
            if let Some(old) = self.attempts.get(&r.attempt_id) {
                assert!(r.version > old.version, "attempt version went back: {r:?}");
            }
            self.attempts.insert(r.attempt_id.clone(), r);
        }
    }

    fn live_sessions(&self) -> BTreeMap<String, SessionRow> {
        self.sessions
            .iter()
            .filter(|(_, r)| !r.is_deleted)
            .map(|(k, r)| {
                (
                    k.clone(),
                    SessionRow {
                        version: 0,
                        ..r.clone()
                    },
                )
            })
            .collect()
    }

    fn live_attempts(&self) -> BTreeMap<String, FunnelAttemptRow> {
        self.attempts
            .iter()
            .filter(|(_, r)| !r.is_deleted)
            .map(|(k, r)| {
                (
                    k.clone(),
                    FunnelAttemptRow {
                        version: 0,
                        ..r.clone()
                    },
                )
            })
            .collect()
    }
}

fn config(horizon_secs: Option<u64>) -> JourneyConfig {
    JourneyConfig {
        session_gap_secs: GAP_SECS,
        allowed_lateness_secs: LATENESS_SECS,
        reattribution_horizon_secs: horizon_secs,
        external_watermark: false,
    }
}

fn funnels() -> FunnelSet {
    FunnelSet::from_toml_str(FUNNELS, None).expect("valid funnels")
}

fn stream(log: &[JourneyEvent], horizon_secs: Option<u64>) -> Tables {
    let mut ids = IdentityStage::new(IdentityConfig::default());
    let mut journeys = JourneyStage::new(config(horizon_secs), Catalog::default(), funnels());
    let mut tables = Tables::default();
    let mut seq2 = 0;
    for (seq1, e) in log.iter().enumerate() {
        for out in ids.process(e.clone(), seq1 as u64) {
            seq2 += 1;
            match out {
                IdentityOutput::Event(r) => journeys.process(r, seq2),
                IdentityOutput::Retract(r) => journeys.retract(&r, seq2),
                _ => {}
            }
            tables.apply(journeys.take_output());
        }
    }
    journeys.flush_all(seq2 + 1);
    tables.apply(journeys.take_output());
    tables
}

/// The straightforward batch answer.
struct Expected {
    touchpoints: BTreeMap<String, (String, String, bool)>,
    sessions: BTreeMap<String, SessionRow>,
    attempts: BTreeMap<String, FunnelAttemptRow>,
}

fn real(id: &Option<String>) -> Option<&str> {
    id.as_deref().filter(|s| !is_placeholder_id(s))
}

fn hex_id(parts: &[&str]) -> String {
    // Same construction as the crate's (FNV-1a 128 over length-prefixed parts); kept
    // here so the reference does not share code with what it checks.
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for p in parts {
        for b in (p.len() as u64).to_le_bytes().iter().chain(p.as_bytes()) {
            h ^= u128::from(*b);
            h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
    }
    format!("{h:032x}")
}

fn reference(log: &[JourneyEvent], horizon_ms: i64) -> Expected {
    // Links, first processed wins; rejected messages take no part.
    let mut links: BTreeMap<&str, &str> = BTreeMap::new();
    let mut accepted = Vec::new();
    for e in log {
        let (anon, user, prev) = (
            real(&e.anonymous_id),
            real(&e.user_id),
            real(&e.previous_id),
        );
        let ok = if e.kind == MessageType::Alias {
            prev.is_some() && user.is_some()
        } else {
            anon.is_some() || user.is_some()
        };
        if !ok {
            continue;
        }
        if let Some(u) = user {
            for a in [prev.filter(|_| e.kind == MessageType::Alias), anon]
                .into_iter()
                .flatten()
            {
                links.entry(a).or_insert(u);
            }
        }
        accepted.push(e);
    }
    let customer = |e: &JourneyEvent| -> String {
        match (real(&e.user_id), real(&e.anonymous_id)) {
            (Some(u), _) => u.to_owned(),
            (None, Some(a)) => links.get(a).map_or(a, |u| u).to_owned(),
            (None, None) => unreachable!("rejected"),
        }
    };
    // Too late, in arrival order: older than the horizon behind the release frontier (the
    // newest time seen so far less the lateness). Everything else is placed, whatever
    // order it came in.
    //
    // One event counts once: a copy of an event id already placed is ignored, whatever
    // its time (it does not move the watermark either). A copy that was too late leaves
    // a late row, which a later copy that can be placed replaces.
    let mut watermark = i64::MIN;
    let mut per_customer: BTreeMap<String, Vec<&JourneyEvent>> = BTreeMap::new();
    let mut touchpoints = BTreeMap::new();
    let mut placed: std::collections::BTreeSet<&str> = Default::default();
    for e in &accepted {
        if placed.contains(e.event_id.as_str()) {
            continue;
        }
        let late = e.event_time_ms
            < watermark
                .saturating_sub(LATENESS)
                .saturating_sub(horizon_ms);
        watermark = watermark.max(e.event_time_ms);
        touchpoints.insert(e.event_id.clone(), (customer(e), String::new(), late));
        if !late {
            placed.insert(&e.event_id);
            per_customer.entry(customer(e)).or_default().push(e);
        }
    }
    let catalog = Catalog::default();
    let funnels = funnels();
    let mut sessions = BTreeMap::new();
    let mut attempts = BTreeMap::new();
    for (c, events) in &mut per_customer {
        events.sort_by(|a, b| (a.event_time_ms, &a.event_id).cmp(&(b.event_time_ms, &b.event_id)));
        let mut groups: Vec<Vec<&JourneyEvent>> = Vec::new();
        for e in events.iter() {
            match groups.last_mut() {
                Some(g)
                    if e.event_time_ms - g[g.len() - 1].event_time_ms <= GAP_SECS as i64 * 1000 =>
                {
                    g.push(e)
                }
                _ => groups.push(vec![e]),
            }
        }
        for g in groups {
            let id = hex_id(&[c, &g[0].event_id]);
            for e in &g {
                touchpoints.insert(e.event_id.clone(), (c.clone(), id.clone(), false));
            }
            let mut channels: Vec<_> = g.iter().map(|e| catalog.classify(e).channel).collect();
            channels.sort();
            channels.dedup();
            sessions.insert(
                id.clone(),
                SessionRow {
                    session_id: id,
                    customer_id: c.clone(),
                    started_at: secs(g[0].event_time_ms),
                    start_ms: g[0].event_time_ms,
                    end_ms: g[g.len() - 1].event_time_ms,
                    event_count: g.len() as u32,
                    first_event_id: g[0].event_id.clone(),
                    entry_event: g[0].display_name().to_owned(),
                    exit_event: g[g.len() - 1].display_name().to_owned(),
                    channels,
                    is_deleted: false,
                    version: 0,
                },
            );
        }
        for f in funnels.funnels() {
            let matches = |e: &JourneyEvent, k: usize| {
                let step = &f.steps[k];
                e.kind == MessageType::Track
                    && e.event.as_deref() == Some(step.event.as_str())
                    && step
                        .filters
                        .iter()
                        .all(|(key, v)| e.properties.get(key) == Some(v as &Value))
            };
            let mut open: Option<Vec<&JourneyEvent>> = None;
            let mut close = |steps: Vec<&JourneyEvent>, outcome, closed_ms| {
                let id = hex_id(&[&f.name, c, &steps[0].event_id]);
                attempts.insert(
                    id.clone(),
                    FunnelAttemptRow {
                        attempt_id: id,
                        funnel: f.name.clone(),
                        customer_id: c.clone(),
                        started_at: secs(steps[0].event_time_ms),
                        start_ms: steps[0].event_time_ms,
                        closed_at: secs(closed_ms),
                        closed_ms,
                        outcome,
                        reached_step: steps.len() as u8,
                        total_steps: f.steps.len() as u8,
                        step_times_ms: steps.iter().map(|e| e.event_time_ms).collect(),
                        step_event_ids: steps.iter().map(|e| e.event_id.clone()).collect(),
                        is_deleted: false,
                        version: 0,
                    },
                );
            };
            for e in events.iter() {
                if let Some(steps) = open.take() {
                    let deadline = steps[0].event_time_ms + f.window_ms;
                    if e.event_time_ms > deadline {
                        close(steps, Outcome::Dropped, deadline);
                    } else if matches(e, steps.len()) {
                        let mut steps = steps;
                        steps.push(e);
                        if steps.len() == f.steps.len() {
                            close(steps, Outcome::Converted, e.event_time_ms);
                        } else {
                            open = Some(steps);
                        }
                        continue;
                    } else {
                        open = Some(steps);
                        continue;
                    }
                }
                if matches(e, 0) {
                    open = Some(vec![e]);
                    if f.steps.len() == 1 {
                        close(vec![e], Outcome::Converted, e.event_time_ms);
                        open = None;
                    }
                }
            }
            if let Some(steps) = open {
                let deadline = steps[0].event_time_ms + f.window_ms;
                if watermark > deadline {
                    close(steps, Outcome::Dropped, deadline);
                }
            }
        }
    }
    Expected {
        touchpoints,
        sessions,
        attempts,
    }
}

fn check(log: &[JourneyEvent], horizon_secs: Option<u64>) -> Result<(), TestCaseError> {
    let got = stream(log, horizon_secs);
    let horizon_ms = horizon_secs.map_or(funnels().max_window_ms() + GAP_SECS as i64 * 1000, |s| {
        s as i64 * 1000
    });
    let want = reference(log, horizon_ms);
    let got_tp: BTreeMap<_, _> = got
        .touchpoints
        .iter()
        .map(|(k, (_, c, s, l))| (k.clone(), (c.clone(), s.clone(), *l)))
        .collect();
    prop_assert_eq!(got_tp, want.touchpoints);
    prop_assert_eq!(got.live_sessions(), want.sessions);
    prop_assert_eq!(got.live_attempts(), want.attempts);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // `PROPTEST_CASES=5000` for a longer soak.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        // Relative to the package root (cargo's working directory for tests); committed.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/reference.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// Anonymous ids, links, conflicts, re-attribution; every event within the lateness.
    /// The horizon is longer than any log, so every re-attributed event can be placed.
    #[test]
    fn identity_and_journeys_match_batch_reference(
        specs in prop::collection::vec(spec(false, 3), 1..60)
    ) {
        check(&build(&specs, true), Some(30 * 24 * 3600))?;
    }

    /// Known users only, some events beyond the lateness, default horizon: events behind
    /// the release frontier are placed and their customers' rows rewritten; history
    /// eviction and forgetting idle customers.
    #[test]
    fn late_events_and_eviction_match_batch_reference(
        specs in prop::collection::vec(spec(true, 0), 1..80)
    ) {
        check(&build(&specs, false), None)?;
    }

    /// A horizon (6 min) shorter than the jitter (up to 10 min): some events are older than
    /// it on arrival and stay late; the rest are placed in order.
    #[test]
    fn events_beyond_a_short_horizon_are_late_the_rest_placed(
        specs in prop::collection::vec(spec(true, 0), 1..80)
    ) {
        check(&build(&specs, false), Some(360))?;
    }
}
