//! Stage 1 → stage 2 against a batch reference (docs/design.md §4–5).
//!
//! Random logs: a few anonymous ids and users, random links (both ids, identify, alias,
//! conflicts, placeholders), event times shuffled within the allowed lateness (and, in
//! the second property, sometimes beyond it). The streaming stages run in one partition
//! each; their rows are applied like ClickHouse `FINAL` would (newest version per key,
//! tombstones removed) and compared with sessions and attempts computed by plain loops
//! over the whole log, sorted.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Map, Value};
use touchstream_core::is_placeholder_id;
use touchstream_journey::columns::secs;
use touchstream_journey::{
    Catalog, FunnelAttemptRow, FunnelSet, IdentityConfig, IdentityOutput, IdentitySnapshot,
    IdentityStage, JourneyConfig, JourneyEvent, JourneyOutput, JourneySnapshot, JourneyStage,
    MessageType, Origin, Outcome, Properties, Retract, RoutedEvent, SessionRow,
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

/// Raw generated fields of one event.
type Spec = (u8, usize, usize, usize, bool, i64, i64, usize);

fn spec(late_jitter: bool) -> impl Strategy<Value = Spec> {
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
    )
}

/// Build the log. `anonymous`: whether anonymous ids and links appear at all.
fn build(specs: &[Spec], anonymous: bool) -> Vec<JourneyEvent> {
    let mut base = 1_700_000_000_000i64;
    // Names mostly walk each id's funnel steps in order so attempts convert, not only drop.
    let mut cursors: BTreeMap<&str, usize> = BTreeMap::new();
    specs
        .iter()
        .enumerate()
        .map(
            |(i, &(shape, anon_i, user_i, name, pro, delta, jitter, channel))| {
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
        .collect()
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
    let mut watermark = i64::MIN;
    let mut per_customer: BTreeMap<String, Vec<&JourneyEvent>> = BTreeMap::new();
    let mut touchpoints = BTreeMap::new();
    for e in &accepted {
        let late = e.event_time_ms
            < watermark
                .saturating_sub(LATENESS)
                .saturating_sub(horizon_ms);
        watermark = watermark.max(e.event_time_ms);
        touchpoints.insert(e.event_id.clone(), (customer(e), String::new(), late));
        if !late {
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
        specs in prop::collection::vec(spec(false), 1..60)
    ) {
        check(&build(&specs, true), Some(30 * 24 * 3600))?;
    }

    /// Known users only, some events beyond the lateness, default horizon: events behind
    /// the release frontier are placed and their customers' rows rewritten; history
    /// eviction and forgetting idle customers.
    #[test]
    fn late_events_and_eviction_match_batch_reference(
        specs in prop::collection::vec(spec(true), 1..80)
    ) {
        check(&build(&specs, false), None)?;
    }

    /// A horizon (6 min) shorter than the jitter (up to 10 min): some events are older than
    /// it on arrival and stay late; the rest are placed in order.
    #[test]
    fn events_beyond_a_short_horizon_are_late_the_rest_placed(
        specs in prop::collection::vec(spec(true), 1..80)
    ) {
        check(&build(&specs, false), Some(360))?;
    }
}

// --- Crash points ----------------------------------------------------------------------
//
// The processor as the two stages see it (README "Writes, offsets, state"): identity
// partitions read their share of the log and produce routed events, retractions and
// in-band watermarks to the journey topic; a journey partition reads that topic. Each
// stage saves its state with its input position only after what it produced before is
// stored (records acknowledged, rows written). A crash (`kill -9`) loses what was not
// yet acknowledged or written and restarts the stage from its last saved state plus
// everything after the saved position: Kafka re-delivers input the stage had already
// processed, and an identity partition re-sends routed messages the journey already has.
// The final rows must be those of the same run without crashes, row for row (versions
// aside), for any crash points, with a horizon long enough for every event and with one
// shorter than the re-delivery's reach (copies are recognised, not placed by the
// correction horizon).

/// A routed message on the journey topic (`touchpoints.by_customer`).
#[derive(Debug, Clone)]
enum Routed {
    /// With where it comes from, as the processor's identity stage sends it.
    Event(RoutedEvent, Origin),
    Retract(Retract),
    Watermark {
        source: usize,
        ms: i64,
    },
}

/// What an identity partition saved: its state JSON, its watermark and input position.
#[derive(Clone)]
struct IdentitySaved {
    state: String,
    watermark_ms: Option<i64>,
    pos: usize,
}

/// One identity partition (processor `identity_stage.rs`).
struct IdentityPart {
    /// `(seq, event)`: the partition's input in order.
    input: Vec<(u64, JourneyEvent)>,
    pos: usize,
    stage: IdentityStage,
    watermark_ms: Option<i64>,
    /// Last watermark sent (not saved: re-sent after a restart).
    sent_ms: Option<i64>,
    /// Produced, not yet acknowledged by the broker.
    pending: Vec<Routed>,
    saved: IdentitySaved,
}

impl IdentityPart {
    fn new(input: Vec<(u64, JourneyEvent)>) -> Self {
        let stage = IdentityStage::new(IdentityConfig::default());
        let saved = IdentitySaved {
            state: serde_json::to_string(&stage.snapshot()).expect("identity snapshot"),
            watermark_ms: None,
            pos: 0,
        };
        Self {
            input,
            pos: 0,
            stage,
            watermark_ms: None,
            sent_ms: None,
            pending: Vec::new(),
            saved,
        }
    }

    fn step(&mut self, me: usize) {
        let (seq, e) = self.input[self.pos].clone();
        let position = self.pos as u64;
        self.pos += 1;
        self.watermark_ms = Some(
            self.watermark_ms
                .map_or(e.event_time_ms, |w| w.max(e.event_time_ms)),
        );
        let mut index = 0;
        for out in self.stage.process(e, seq) {
            let origin = Origin {
                source: me as u32,
                position,
                index,
            };
            match out {
                IdentityOutput::Event(r) => self.pending.push(Routed::Event(r, origin)),
                IdentityOutput::Retract(r) => self.pending.push(Routed::Retract(r)),
                _ => continue,
            }
            index += 1;
        }
    }

    /// End of a batch: the watermark after the partition's events, then every pending
    /// record acknowledged.
    fn flush(&mut self, me: usize, topic: &mut Vec<Routed>) {
        if let Some(w) = self.watermark_ms.filter(|w| self.sent_ms != Some(*w)) {
            self.pending.push(Routed::Watermark { source: me, ms: w });
            self.sent_ms = Some(w);
        }
        topic.append(&mut self.pending);
    }

    fn save(&mut self, me: usize, topic: &mut Vec<Routed>) {
        self.flush(me, topic);
        self.saved = IdentitySaved {
            state: serde_json::to_string(&self.stage.snapshot()).expect("identity snapshot"),
            watermark_ms: self.watermark_ms,
            pos: self.pos,
        };
    }

    /// `kill -9`, restart from the saved state, and catch up to where the crash was (the
    /// re-processed input's records wait for the next flush, as new ones would).
    fn crash(&mut self, me: usize) {
        let at = self.pos;
        self.pending.clear();
        let snapshot: IdentitySnapshot =
            serde_json::from_str(&self.saved.state).expect("identity restore");
        self.stage = IdentityStage::from_snapshot(IdentityConfig::default(), snapshot);
        self.watermark_ms = self.saved.watermark_ms;
        self.sent_ms = None;
        self.pos = self.saved.pos;
        while self.pos < at {
            self.step(me);
        }
    }
}

/// Identity schedule step: which partition reads its next input, then what it does.
type IdStep = (usize, u8);

/// The journey topic the identity partitions produce, following `schedule`; with
/// `crashes`, a step's action 9 kills the partition (at most 4 times in all).
fn identity_run(
    log: &[JourneyEvent],
    parts: usize,
    schedule: &[IdStep],
    crashes: bool,
) -> Vec<Routed> {
    let mut inputs = vec![Vec::new(); parts];
    for (seq, e) in log.iter().enumerate() {
        // The Kafka key of `touchpoints.raw` (anonymous id when present); an alias without
        // one is linked by its previousId's partition (the aliases topic).
        let key = real(&e.anonymous_id)
            .or(real(&e.previous_id).filter(|_| e.kind == MessageType::Alias))
            .or(real(&e.user_id))
            .unwrap_or_default();
        let p = usize::from(
            key.bytes()
                .fold(0u8, |h, b| h.wrapping_mul(31).wrapping_add(b)),
        ) % parts;
        inputs[p].push((seq as u64 + 1, e.clone()));
    }
    let mut parts: Vec<IdentityPart> = inputs.into_iter().map(IdentityPart::new).collect();
    let mut topic = Vec::new();
    let mut killed = 0;
    let mut steps = schedule.iter().cycle();
    while parts.iter().any(|p| p.pos < p.input.len()) {
        let &(pick, action) = steps.next().expect("cycle");
        // The picked partition, or the next one with input left.
        let me = (0..parts.len())
            .map(|i| (pick + i) % parts.len())
            .find(|&i| parts[i].pos < parts[i].input.len())
            .expect("input left");
        let part = &mut parts[me];
        part.step(me);
        match action {
            6 => part.flush(me, &mut topic),
            7 | 8 => part.save(me, &mut topic),
            9 if crashes && killed < 4 => {
                killed += 1;
                part.crash(me);
            }
            _ => {}
        }
    }
    for (me, part) in parts.iter_mut().enumerate() {
        part.flush(me, &mut topic);
    }
    topic
}

/// ClickHouse after FINAL for rows that may be written twice: the highest version per
/// key wins; a replay writes rows again with the same versions, which must then be the
/// same rows (ClickHouse would keep either).
#[derive(Default, Clone, PartialEq, Debug)]
struct FinalTables {
    touchpoints: BTreeMap<String, (u64, String, String, bool)>,
    sessions: BTreeMap<String, SessionRow>,
    attempts: BTreeMap<String, FunnelAttemptRow>,
}

fn newest<V: PartialEq + std::fmt::Debug>(
    table: &mut BTreeMap<String, (u64, V)>,
    key: String,
    version: u64,
    row: V,
) -> Result<(), TestCaseError> {
    match table.get(&key) {
        Some((v, old)) if *v == version => {
            prop_assert_eq!(old, &row, "two rows for {} with version {}", key, version);
        }
        Some((v, _)) if *v > version => {}
        _ => {
            table.insert(key, (version, row));
        }
    }
    Ok(())
}

impl FinalTables {
    fn apply(&mut self, out: JourneyOutput) -> Result<(), TestCaseError> {
        let mut tp: BTreeMap<String, (u64, (String, String, bool))> = self
            .touchpoints
            .iter()
            .map(|(k, (v, c, s, l))| (k.clone(), (*v, (c.clone(), s.clone(), *l))))
            .collect();
        for r in out.touchpoints {
            newest(
                &mut tp,
                r.event_id,
                r.version,
                (r.customer_id, r.session_id, r.is_late),
            )?;
        }
        self.touchpoints = tp
            .into_iter()
            .map(|(k, (v, (c, s, l)))| (k, (v, c, s, l)))
            .collect();
        let mut sessions: BTreeMap<String, (u64, SessionRow)> = std::mem::take(&mut self.sessions)
            .into_iter()
            .map(|(k, r)| (k, (r.version, r)))
            .collect();
        for r in out.sessions {
            newest(&mut sessions, r.session_id.clone(), r.version, r)?;
        }
        self.sessions = sessions.into_iter().map(|(k, (_, r))| (k, r)).collect();
        let mut attempts: BTreeMap<String, (u64, FunnelAttemptRow)> =
            std::mem::take(&mut self.attempts)
                .into_iter()
                .map(|(k, r)| (k, (r.version, r)))
                .collect();
        for r in out.attempts {
            newest(&mut attempts, r.attempt_id.clone(), r.version, r)?;
        }
        self.attempts = attempts.into_iter().map(|(k, (_, r))| (k, r)).collect();
        Ok(())
    }

    /// Live rows without versions: what the comparison is about.
    fn rows(&self) -> Tables {
        let strip = Tables {
            touchpoints: self
                .touchpoints
                .iter()
                .map(|(k, (_, c, s, l))| (k.clone(), (0, c.clone(), s.clone(), *l)))
                .collect(),
            sessions: self.sessions.clone(),
            attempts: self.attempts.clone(),
        };
        Tables {
            touchpoints: strip.touchpoints.clone(),
            sessions: strip.live_sessions(),
            attempts: strip.live_attempts(),
        }
    }
}

/// What the journey partition saved: engine and per-source watermarks (processor
/// `journey_stage.rs` `SavedJourney`) and the input position.
#[derive(Clone)]
struct JourneySaved {
    state: String,
    sources: BTreeMap<usize, i64>,
    pos: usize,
}

fn journey_config(horizon_secs: Option<u64>) -> JourneyConfig {
    JourneyConfig {
        external_watermark: true,
        ..config(horizon_secs)
    }
}

/// The journey partition over `topic`; at step `i` `plan[i % len]`: 6 writes the rows
/// taken so far, 7 and 8 write them and save the state, 9 (with `crashes`, at most 4
/// times) kills it: rows not written are lost, the saved state is restored and the
/// topic re-delivered from the saved position. Returns the tables before and after the
/// final flush.
fn journey_run(
    topic: &[Routed],
    sources: usize,
    horizon_secs: Option<u64>,
    plan: &[u8],
    crashes: bool,
) -> Result<(Tables, Tables), TestCaseError> {
    let new_stage = |snapshot: JourneySnapshot| {
        JourneyStage::from_snapshot(
            journey_config(horizon_secs),
            Catalog::default(),
            funnels(),
            snapshot,
        )
    };
    let mut stage = new_stage(JourneySnapshot::default());
    let mut marks: BTreeMap<usize, i64> = BTreeMap::new();
    let mut saved = JourneySaved {
        state: serde_json::to_string(&stage.snapshot()).expect("journey snapshot"),
        sources: BTreeMap::new(),
        pos: 0,
    };
    let mut tables = FinalTables::default();
    let mut taken: Vec<JourneyOutput> = Vec::new();
    let (mut pos, mut step, mut killed) = (0, 0usize, 0);
    while pos < topic.len() {
        let seq = pos as u64 + 1;
        match &topic[pos] {
            Routed::Event(r, origin) => {
                stage.process_from(r.clone(), seq, *origin);
            }
            Routed::Retract(r) => stage.retract(r, seq),
            Routed::Watermark { source, ms } => {
                let w = marks.entry(*source).or_insert(*ms);
                *w = (*w).max(*ms);
                if marks.len() >= sources {
                    let min = *marks.values().min().expect("sources");
                    stage.advance_watermark(min, seq);
                }
            }
        }
        pos += 1;
        taken.push(stage.take_output());
        match plan.get(step % plan.len().max(1)).copied().unwrap_or(0) {
            6 => {
                for out in taken.drain(..) {
                    tables.apply(out)?;
                }
            }
            7 | 8 => {
                for out in taken.drain(..) {
                    tables.apply(out)?;
                }
                saved = JourneySaved {
                    state: serde_json::to_string(&stage.snapshot()).expect("journey snapshot"),
                    sources: marks.clone(),
                    pos,
                };
            }
            9 if crashes && killed < 4 => {
                killed += 1;
                taken.clear();
                stage = new_stage(serde_json::from_str(&saved.state).expect("journey restore"));
                marks = saved.sources.clone();
                pos = saved.pos;
            }
            _ => {}
        }
        step += 1;
    }
    for out in taken.drain(..) {
        tables.apply(out)?;
    }
    let before = tables.rows();
    stage.flush_all(topic.len() as u64 + 1);
    tables.apply(stage.take_output())?;
    Ok((before, tables.rows()))
}

fn check_crashes(
    log: &[JourneyEvent],
    parts: usize,
    horizon_secs: Option<u64>,
    id_schedule: &[IdStep],
    plan: &[u8],
) -> Result<(), TestCaseError> {
    let calm = identity_run(log, parts, id_schedule, false);
    let (want_open, want) = journey_run(&calm, parts, horizon_secs, plan, false)?;
    let crashed = identity_run(log, parts, id_schedule, true);
    let (got_open, got) = journey_run(&crashed, parts, horizon_secs, plan, true)?;
    prop_assert_eq!(&got.touchpoints, &want.touchpoints);
    prop_assert_eq!(got.live_sessions(), want.live_sessions());
    prop_assert_eq!(got.live_attempts(), want.live_attempts());
    prop_assert_eq!(&got_open.touchpoints, &want_open.touchpoints);
    prop_assert_eq!(got_open.live_sessions(), want_open.live_sessions());
    prop_assert_eq!(got_open.live_attempts(), want_open.live_attempts());
    Ok(())
}

fn id_schedule() -> impl Strategy<Value = Vec<IdStep>> {
    prop::collection::vec((0..3usize, 0..10u8), 1..40)
}

fn journey_plan() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..10u8, 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/reference.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// Anonymous ids, links and re-attribution over 1–3 identity partitions, a horizon
    /// longer than any log: kills of either stage at any point leave the rows of the
    /// uninterrupted run.
    #[test]
    fn crashes_of_either_stage_do_not_change_the_rows(
        specs in prop::collection::vec(spec(false), 1..60),
        parts in 1..=3usize,
        schedule in id_schedule(),
        plan in journey_plan(),
    ) {
        check_crashes(&build(&specs, true), parts, Some(30 * 24 * 3600), &schedule, &plan)?;
    }

    /// Known users, events beyond the lateness, a horizon (6 min) shorter than how far the
    /// watermark moves while copies wait to be re-sent: a re-delivered copy is recognised
    /// as the event already placed, not stored late.
    #[test]
    fn redelivered_copies_are_not_late_under_a_short_horizon(
        specs in prop::collection::vec(spec(true), 1..80),
        parts in 1..=3usize,
        schedule in id_schedule(),
        plan in journey_plan(),
    ) {
        check_crashes(&build(&specs, false), parts, Some(360), &schedule, &plan)?;
    }
}
