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
//!
//! Some events are followed by a survey answer (`Survey Completed`) naming the touchpoint
//! it rates by event id, by name, by stage, or not at all; the reference attributes each
//! placed answer over the customer's whole sorted journey (README "Feedback
//! attribution"), so a touchpoint arriving after the answer must re-attribute it.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Map, Value};
use touchstream_core::is_placeholder_id;
use touchstream_journey::columns::secs;
use touchstream_journey::{
    Attribution, Catalog, Filter, Funnel, FunnelAttemptRow, FunnelOpenAttemptRow, FunnelSet,
    IdentityConfig, IdentityOutput, IdentitySnapshot, IdentityStage, JourneyConfig, JourneyEvent,
    JourneyOutput, JourneySnapshot, JourneyStage, MessageType, Order, Origin, Outcome, Properties,
    Retract, RoutedEvent, SessionRow,
};

const MIN: i64 = 60_000;
const GAP_SECS: u64 = 600;
const LATENESS_SECS: u64 = 120;
const LATENESS: i64 = LATENESS_SECS as i64 * 1000;

/// Attribution window of the feedback checks, seconds.
const FEEDBACK_WINDOW_SECS: u64 = 1200;

const CATALOG: &str = r#"
[events]
"Product Viewed" = { stage = "consideration", channel = "web" }
"Product Added" = { stage = "purchase", channel = "web" }
"Checkout Started" = { stage = "purchase", channel = "web" }
"Order Completed" = { stage = "purchase", channel = "web" }
"Complaint Filed" = { stage = "service", channel = "call_center" }
"Follow-up Completed" = { stage = "service", channel = "call_center" }
"Survey Completed" = { stage = "feedback", channel = "email", feedback = "any", rates_stage = "service" }
"#;

fn catalog() -> Catalog {
    Catalog::from_toml_str(CATALOG, None).expect("valid catalog")
}

const FUNNELS: &str = r#"
[[funnel]]
name = "checkout"
window_secs = 3600
steps = [{ event = "Product Viewed" }, { event = "Product Added", where = { plan = "pro" } },
         { event = "Checkout Started" }, { event = "Order Completed" }]
breakdown = [{ key = "channel", values = ["web", "app"] }]

[[funnel]]
name = "recovery"
window_secs = 2700
steps = [{ event = "Complaint Filed" }, { event = "Follow-up Completed", within_secs = 900 },
         { event = "Order Completed" }]
breakdown = [{ key = "properties.plan" }, { key = "source" }]
breakdown_attribution = "last_step"
exclude = [{ event = "Home", where = { coupon = { exists = false } }, between = [2, 3] }]

[[funnel]]
name = "strict_checkout"
order = "strict"
window_secs = 1800
steps = [{ event = "Product Viewed" }, { event = "Product Added", optional = true },
         { event = "Checkout Started", within_secs = 600 },
         { event = "Order Completed", where = { amount = { ">" = 20, "<" = 140 },
                                                coupon = { exists = false } } }]
exclude = [{ event = "Complaint Filed", between = [1, 3] }]
breakdown = [{ key = "channel" }, { key = "properties.amount" }]
breakdown_attribution = "each_step"

[[funnel]]
name = "any_recovery"
order = "any"
window_secs = 1200
steps = [{ event = "Complaint Filed", where = { plan = { in = ["pro", "team"] } } },
         { event = "Follow-up Completed", optional = true },
         { event = "Order Completed", where = { plan = { not = "free" } } }]
exclude = [{ event = "Home", where = { amount = { exists = true } }, between = [1, 3] }]
breakdown = [{ key = "properties.plan", values = ["pro"] }]
breakdown_attribution = "each_step"
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

/// Build the log, with survey answers. `anonymous`: whether anonymous ids and links
/// appear at all.
fn build(specs: &[Spec], anonymous: bool) -> Vec<JourneyEvent> {
    build_with(specs, anonymous, true)
}

/// [`build`]; `answers`: whether events are followed by survey answers (which, being
/// events of the customer, interrupt strict funnel attempts).
fn build_with(specs: &[Spec], anonymous: bool, answers: bool) -> Vec<JourneyEvent> {
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
                // Numbers, numbers as text, or absent; a coupon now and then.
                match i % 6 {
                    0 => None,
                    1 | 4 => Some(json!((i % 7) * 25)),
                    _ => Some(json!(format!("{}", (i % 9) * 20))),
                }
                .map(|a| properties.insert("amount".into(), a));
                if i % 5 == 0 {
                    properties.insert("coupon".into(), json!("SAVE"));
                }
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
    // first copy's position), after the first copy and `between` later events; an
    // answer after everything at its event's position.
    let mut log: Vec<((usize, usize), JourneyEvent)> = Vec::new();
    for (i, (e, spec)) in firsts.iter().zip(specs).enumerate() {
        log.push(((i, 0), e.clone()));
        if let Some(answer) = answer_after(i, e).filter(|_| answers) {
            if (i / 4) % 6 == 0 && specs[i - 1].8.is_none() {
                // The touchpoint it names arrives eight events later: often after the
                // answer was released, so it must raise the answer's attribution.
                let named = format!("e{:03}", i - 1);
                let later = ((i + 8).min(firsts.len() - 1), usize::MAX - 1);
                if let Some(entry) = log
                    .iter_mut()
                    .find(|(k, ev)| k.1 == 0 && ev.event_id == named)
                {
                    entry.0 = later;
                }
            }
            log.push(((i, usize::MAX), answer));
        }
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

/// Every fourth event (of the track and page events) is followed by an answer from the
/// same ids, 0–2 minutes later, naming what it rates by an id (sometimes another
/// customer's or no event's), a name, a stage and channel, a stage only, or nothing (the
/// catalog's `rates_stage`, service, applies).
fn answer_after(i: usize, e: &JourneyEvent) -> Option<JourneyEvent> {
    if i % 4 != 2 || !matches!(e.kind, MessageType::Track | MessageType::Page) {
        return None;
    }
    let mut properties = Map::new();
    properties.insert("scale".into(), json!("csat"));
    properties.insert("score".into(), json!(1 + i % 5));
    match (i / 4) % 6 {
        0 => {
            properties.insert("about_event_id".into(), json!(format!("e{:03}", i - 1)));
        }
        1 => {
            properties.insert("about_event_id".into(), json!(format!("e{:03}", i - 2)));
            properties.insert("about_event".into(), json!(NAMES[i % 4]));
        }
        2 => {
            properties.insert("about_event".into(), json!(NAMES[(i / 8) % 4]));
        }
        3 => {
            properties.insert("about_stage".into(), json!("purchase"));
            properties.insert("about_channel".into(), json!("web"));
        }
        4 => {
            properties.insert("about_stage".into(), json!("consideration"));
        }
        _ => {}
    }
    Some(JourneyEvent {
        event_id: format!("s{i:03}"),
        kind: MessageType::Track,
        event: Some("Survey Completed".into()),
        event_time_ms: e.event_time_ms + (i % 3) as i64 * MIN,
        channel: None,
        properties: Properties::from_json(&Value::Object(properties).to_string()),
        ..e.clone()
    })
}

/// The reference attribution of the answer `events[k]` over the customer's sorted
/// events: (rule, rated event id); written from the README, not shared with the crate.
fn reference_attribution(events: &[&JourneyEvent], k: usize) -> (String, String) {
    let catalog = catalog();
    let answer = events[k];
    let text = |key: &str| answer.properties.get(key).and_then(|v| v.as_str());
    let from = answer.event_time_ms - FEEDBACK_WINDOW_SECS as i64 * 1000;
    let candidates: Vec<&JourneyEvent> = events[..k]
        .iter()
        .rev()
        .take_while(|e| e.event_time_ms >= from)
        .copied()
        .collect();
    if let Some(id) = text("about_event_id") {
        if let Some(e) = candidates.iter().find(|e| e.event_id == id) {
            return ("event_id".into(), e.event_id.clone());
        }
    }
    if let Some(name) = text("about_event") {
        if let Some(e) = candidates.iter().find(|e| e.display_name() == name) {
            return ("event".into(), e.event_id.clone());
        }
    }
    let stage = text("about_stage").unwrap_or("service");
    let channel = text("about_channel");
    let found = candidates.iter().find(|e| {
        let tp = catalog.classify(e);
        tp.stage.as_str() != "feedback"
            && tp.stage.as_str() == stage
            && channel.is_none_or(|c| tp.channel.as_str() == c)
    });
    match found {
        Some(e) => ("stage".into(), e.event_id.clone()),
        None => ("none".into(), String::new()),
    }
}

/// ClickHouse after FINAL, checking that versions only grow per key.
#[derive(Default)]
struct Tables {
    touchpoints: BTreeMap<String, (u64, String, String, bool)>,
    sessions: BTreeMap<String, SessionRow>,
    attempts: BTreeMap<String, FunnelAttemptRow>,
    open_attempts: BTreeMap<String, FunnelOpenAttemptRow>,
    /// Answer id → (version, customer, attribution, rated event id, is_late).
    feedback: BTreeMap<String, (u64, String, String, String, bool)>,
}

impl Tables {
    fn apply(&mut self, out: JourneyOutput) {
        for r in out.feedback {
            if let Some(old) = self.feedback.get(&r.event_id) {
                assert!(
                    r.version > old.0,
                    "feedback version went back: {r:?} {old:?}"
                );
            }
            self.feedback.insert(
                r.event_id,
                (
                    r.version,
                    r.customer_id,
                    r.attribution,
                    r.about_event_id,
                    r.is_late,
                ),
            );
        }
        for r in out.touchpoints {
            let newer = self
                .touchpoints
                .get(&*r.event_id)
                .is_none_or(|old| r.version > old.0);
            if newer {
                self.touchpoints.insert(
                    r.event_id.to_string(),
                    (
                        r.version,
                        r.customer_id.to_string(),
                        r.session_id.to_string(),
                        r.is_late,
                    ),
                );
            }
        }
        for r in out.sessions {
            if let Some(old) = self.sessions.get(&*r.session_id) {
                assert!(r.version > old.version, "session version went back: {r:?}");
            }
            self.sessions.insert(r.session_id.to_string(), r);
        }
        for r in out.attempts {
            if let Some(old) = self.attempts.get(&r.attempt_id) {
                assert!(r.version > old.version, "attempt version went back: {r:?}");
            }
            self.attempts.insert(r.attempt_id.clone(), r);
        }
        for r in out.open_attempts {
            if let Some(old) = self.open_attempts.get(&r.attempt_id) {
                assert!(
                    r.version > old.version,
                    "open attempt version went back: {r:?}"
                );
                assert_eq!(
                    r.started_at, old.started_at,
                    "tombstone in another partition"
                );
            }
            self.open_attempts.insert(r.attempt_id.clone(), r);
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

    fn live_open_attempts(&self) -> BTreeMap<String, FunnelOpenAttemptRow> {
        self.open_attempts
            .iter()
            .filter(|(_, r)| !r.is_deleted)
            .map(|(k, r)| {
                (
                    k.clone(),
                    FunnelOpenAttemptRow {
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

/// The engine's default hot-customer cap (1000 per window), which the generated logs never
/// reach; [`HOT_CAP`] in the property that tests the cap.
fn default_cap() -> usize {
    JourneyConfig::default().hot_customer_max_events
}

/// A hot-customer cap the generated logs reach often: a user's events come every few
/// minutes, windows are the 10-minute session gap.
const HOT_CAP: usize = 3;

fn config(horizon_secs: Option<u64>) -> JourneyConfig {
    capped_config(horizon_secs, default_cap())
}

fn capped_config(horizon_secs: Option<u64>, hot_cap: usize) -> JourneyConfig {
    JourneyConfig {
        session_gap_secs: GAP_SECS,
        allowed_lateness_secs: LATENESS_SECS,
        reattribution_horizon_secs: horizon_secs,
        hot_customer_max_events: hot_cap,
        external_watermark: false,
        feedback_window_secs: FEEDBACK_WINDOW_SECS,
    }
}

fn funnels() -> FunnelSet {
    FunnelSet::from_toml_str(FUNNELS, None).expect("valid funnels")
}

fn stream(log: &[JourneyEvent], horizon_secs: Option<u64>) -> Tables {
    capped_stream(log, horizon_secs, default_cap())
}

fn capped_stream(log: &[JourneyEvent], horizon_secs: Option<u64>, hot_cap: usize) -> Tables {
    let mut ids = IdentityStage::new(IdentityConfig::default());
    let config = capped_config(horizon_secs, hot_cap);
    let mut journeys = JourneyStage::new(config, catalog(), funnels());
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
    /// Attempts still open once every event is in (the release frontier at the newest
    /// event time).
    open_attempts: BTreeMap<String, FunnelOpenAttemptRow>,
    /// Answer id → (customer, attribution, rated event id, is_late).
    feedback: BTreeMap<String, (String, String, String, bool)>,
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
    capped_reference(log, horizon_ms, default_cap())
}

/// [`reference`] with a hot-customer cap of `hot_cap` events per customer and window.
fn capped_reference(log: &[JourneyEvent], horizon_ms: i64, hot_cap: usize) -> Expected {
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
    let mut feedback = BTreeMap::new();
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
        if late && e.event.as_deref() == Some("Survey Completed") {
            // Too late to place: kept, unattributed (a placed copy replaces it below).
            feedback.insert(
                e.event_id.clone(),
                (customer(e), "none".to_owned(), String::new(), true),
            );
        }
        if !late {
            placed.insert(&e.event_id);
            per_customer.entry(customer(e)).or_default().push(e);
        }
    }
    let catalog = catalog();
    let funnels = funnels();
    let mut sessions = BTreeMap::new();
    let mut attempts = BTreeMap::new();
    let mut open_attempts = BTreeMap::new();
    for (c, events) in &mut per_customer {
        events.sort_by(|a, b| (a.event_time_ms, &a.event_id).cmp(&(b.event_time_ms, &b.event_id)));
        // The hot-customer cap (README "Hot customers"): per window of the session gap
        // (aligned to the epoch), the first `hot_cap` events in that order are placed;
        // the rest are stored without a session, not late, and take part in nothing; an
        // answer among them is kept unattributed.
        let mut per_window: BTreeMap<i64, usize> = BTreeMap::new();
        events.retain(|e| {
            let n = per_window
                .entry(e.event_time_ms.div_euclid(GAP_SECS as i64 * 1000))
                .or_default();
            *n += 1;
            if *n <= hot_cap {
                return true;
            }
            touchpoints.insert(e.event_id.clone(), (c.clone(), String::new(), false));
            if e.event.as_deref() == Some("Survey Completed") {
                feedback.insert(
                    e.event_id.clone(),
                    (c.clone(), "none".to_string(), String::new(), false),
                );
            }
            false
        });
        for (k, e) in events.iter().enumerate() {
            if e.event.as_deref() == Some("Survey Completed") {
                let (rule, about) = reference_attribution(events, k);
                feedback.insert(e.event_id.clone(), (c.clone(), rule, about, false));
            }
        }
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
                    session_id: id.into(),
                    customer_id: c.as_str().into(),
                    started_at: secs(g[0].event_time_ms),
                    start_ms: g[0].event_time_ms,
                    end_ms: g[g.len() - 1].event_time_ms,
                    event_count: g.len() as u32,
                    first_event_id: g[0].event_id.as_str().into(),
                    entry_event: g[0].display_name().into(),
                    exit_event: g[g.len() - 1].display_name().into(),
                    channels,
                    is_deleted: false,
                    version: 0,
                },
            );
        }
        for f in funnels.funnels() {
            attempts_of(f, c, events, watermark, &mut attempts, &mut open_attempts);
        }
    }
    Expected {
        touchpoints,
        sessions,
        attempts,
        open_attempts,
        feedback,
    }
}

/// A reference condition, written from the README's table rather than shared with the
/// crate.
fn holds(filter: &Filter, got: Option<&Value>) -> bool {
    let got = got.filter(|v| !v.is_null());
    let eq = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    };
    let num = || match got {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match filter {
        Filter::Eq(v) => got.is_some_and(|g| eq(g, v)),
        Filter::In(vs) => got.is_some_and(|g| vs.iter().any(|v| eq(g, v))),
        Filter::Not(vs) => !got.is_some_and(|g| vs.iter().any(|v| eq(g, v))),
        Filter::Gt(n) => num().is_some_and(|g| g > *n),
        Filter::Ge(n) => num().is_some_and(|g| g >= *n),
        Filter::Lt(n) => num().is_some_and(|g| g < *n),
        Filter::Le(n) => num().is_some_and(|g| g <= *n),
        Filter::Exists(want) => got.is_some() == *want,
    }
}

fn named(e: &JourneyEvent, event: &str, filters: &[(String, Filter)]) -> bool {
    e.kind == MessageType::Track
        && e.event.as_deref() == Some(event)
        && filters.iter().all(|(k, f)| holds(f, e.properties.get(k)))
}

/// An event's breakdown value for `key`, read from the event directly (README "Funnels",
/// Breakdowns): the classified channel, the source before the id's first `:`, or a
/// top-level property as text (cut to `MAX_BREAKDOWN_VALUE_BYTES`).
fn breakdown_value(key: &str, e: &JourneyEvent) -> String {
    let raw = match key {
        "channel" => catalog().classify(e).channel.as_str().to_owned(),
        "source" => e.event_id.split_once(':').map_or("", |(s, _)| s).to_owned(),
        _ => {
            let name = key.strip_prefix("properties.").expect("properties key");
            match e.properties.get(name) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    v.to_string()
                }
                _ => String::new(),
            }
        }
    };
    let mut end = raw
        .len()
        .min(touchstream_journey::MAX_BREAKDOWN_VALUE_BYTES);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    raw[..end].to_owned()
}

/// `breakdown_keys` and `breakdown_values` of an attempt whose steps are `a` (step index,
/// event), per the funnel's attribution.
fn breakdown_of(f: &Funnel, a: &[(usize, &JourneyEvent)]) -> (Vec<String>, Vec<String>) {
    let keys: Vec<String> = f.breakdown.iter().map(|b| b.key.clone()).collect();
    if keys.is_empty() {
        return (keys, Vec::new());
    }
    let of = |e: &JourneyEvent| {
        keys.iter()
            .map(|k| breakdown_value(k, e))
            .collect::<Vec<_>>()
    };
    let values = match f.breakdown_attribution {
        Attribution::FirstStep => of(a[0].1),
        Attribution::LastStep => of(a[a.len() - 1].1),
        Attribution::EachStep if f.order == Order::Any => {
            a.iter().flat_map(|(_, e)| of(e)).collect()
        }
        Attribution::EachStep => (0..=a[a.len() - 1].0)
            .flat_map(|k| match a.iter().find(|(j, _)| *j == k) {
                Some((_, e)) => of(e),
                None => vec![String::new(); keys.len()],
            })
            .collect(),
    };
    (keys, values)
}

/// One customer's attempts of one funnel, by walking its sorted events (docs/design.md
/// §5 rules 1–6). `watermark`: the newest event time seen, which closes what is left.
fn attempts_of(
    f: &Funnel,
    customer: &str,
    events: &[&JourneyEvent],
    watermark: i64,
    attempts: &mut BTreeMap<String, FunnelAttemptRow>,
    open_attempts: &mut BTreeMap<String, FunnelOpenAttemptRow>,
) {
    let n = f.steps.len();
    let step = |e: &JourneyEvent, k: usize| named(e, &f.steps[k].event, &f.steps[k].filters);
    // Steps as (step index, event): ordered by step for ordered/strict, by time for any.
    type Att<'e> = Vec<(usize, &'e JourneyEvent)>;
    let deadline = |a: &Att<'_>| {
        let window = a[0].1.event_time_ms + f.window_ms;
        if f.order == Order::Any {
            return window;
        }
        let (last_k, last) = a[a.len() - 1];
        let required = (last_k + 1..n)
            .find(|&k| !f.steps[k].optional)
            .expect("last required");
        f.steps[required]
            .within_ms
            .map_or(window, |w| window.min(last.event_time_ms + w))
    };
    // Step times and ids as rows hold them (a skipped optional step: 0 and '').
    let layout = |a: &Att<'_>| -> (Vec<i64>, Vec<String>) {
        if f.order == Order::Any {
            a.iter()
                .map(|(_, e)| (e.event_time_ms, e.event_id.clone()))
                .unzip()
        } else {
            let deepest = a[a.len() - 1].0;
            (0..=deepest)
                .map(|k| match a.iter().find(|(j, _)| *j == k) {
                    Some((_, e)) => (e.event_time_ms, e.event_id.clone()),
                    None => (0, String::new()),
                })
                .unzip()
        }
    };
    let mut close = |a: Att<'_>, outcome, closed_ms| {
        let (times, ids) = layout(&a);
        let (bd_keys, bd_values) = breakdown_of(f, &a);
        let first = a[0].1;
        let id = hex_id(&[&f.name, customer, &first.event_id]);
        attempts.insert(
            id.clone(),
            FunnelAttemptRow {
                attempt_id: id,
                funnel: f.name.clone(),
                customer_id: customer.to_owned(),
                started_at: secs(first.event_time_ms),
                start_ms: first.event_time_ms,
                closed_at: secs(closed_ms),
                closed_ms,
                outcome,
                reached_step: times.len() as u8,
                total_steps: n as u8,
                step_times_ms: times,
                step_event_ids: ids,
                breakdown_keys: bd_keys.clone(),
                breakdown_values: bd_values.clone(),
                is_deleted: false,
                version: 0,
            },
        );
    };
    let converted = |a: &Att<'_>| match f.order {
        Order::Any => (0..n).all(|k| f.steps[k].optional || a.iter().any(|(j, _)| *j == k)),
        _ => a[a.len() - 1].0 == n - 1,
    };
    let mut open: Option<Att<'_>> = None;
    for &e in events {
        if let Some(mut a) = open.take() {
            let t = e.event_time_ms;
            let reached = a[a.len() - 1].0 + 1;
            let excluded = f.exclude.iter().any(|x| {
                named(e, &x.event, &x.filters)
                    && (f.order == Order::Any || (x.from <= reached && reached < x.to))
            });
            // The step this event takes, if any.
            let takes = if f.order == Order::Any {
                (0..n).find(|&k| step(e, k) && !a.iter().any(|(j, _)| *j == k))
            } else {
                let last_t = a[a.len() - 1].1.event_time_ms;
                let mut found = None;
                for k in reached..n {
                    let in_time = f.steps[k].within_ms.is_none_or(|w| t - last_t <= w);
                    if step(e, k) && in_time {
                        found = Some(k);
                        break;
                    }
                    if !f.steps[k].optional {
                        break;
                    }
                }
                found
            };
            let dl = deadline(&a);
            if t > dl {
                close(a, Outcome::Dropped, dl);
            } else if excluded {
                close(a, Outcome::Excluded, t);
            } else if let Some(k) = takes {
                a.push((k, e));
                if converted(&a) {
                    close(a, Outcome::Converted, t);
                } else {
                    open = Some(a);
                }
                continue;
            } else if f.order == Order::Strict {
                close(a, Outcome::Dropped, t);
            } else {
                open = Some(a);
                continue;
            }
        }
        let first = match f.order {
            Order::Any => (0..n).find(|&k| step(e, k)),
            _ => step(e, 0).then_some(0),
        };
        if let Some(k) = first {
            let a = vec![(k, e)];
            if converted(&a) {
                close(a, Outcome::Converted, e.event_time_ms);
            } else {
                open = Some(a);
            }
        }
    }
    if let Some(a) = open {
        let dl = deadline(&a);
        if watermark > dl {
            close(a, Outcome::Dropped, dl);
        } else {
            // Still open at the frontier: a `funnel_open_attempts` row.
            let (times, ids) = layout(&a);
            let (bd_keys, bd_values) = breakdown_of(f, &a);
            let first = a[0].1;
            let id = hex_id(&[&f.name, customer, &first.event_id]);
            open_attempts.insert(
                id.clone(),
                FunnelOpenAttemptRow {
                    attempt_id: id,
                    funnel: f.name.clone(),
                    customer_id: customer.to_owned(),
                    started_at: secs(first.event_time_ms),
                    start_ms: first.event_time_ms,
                    reached_step: times.len() as u8,
                    total_steps: n as u8,
                    reached_ms: a[a.len() - 1].1.event_time_ms,
                    due_at: secs(dl),
                    due_ms: dl,
                    step_times_ms: times,
                    step_event_ids: ids,
                    breakdown_keys: bd_keys.clone(),
                    breakdown_values: bd_values.clone(),
                    is_deleted: false,
                    version: 0,
                },
            );
        }
    }
}

/// `feedback`: whether to compare the answers' attribution too (exact only when the
/// window fits in the correction horizon, README "Feedback attribution").
fn check(
    log: &[JourneyEvent],
    horizon_secs: Option<u64>,
    feedback: bool,
) -> Result<(), TestCaseError> {
    check_capped(log, horizon_secs, default_cap(), feedback)
}

fn check_capped(
    log: &[JourneyEvent],
    horizon_secs: Option<u64>,
    hot_cap: usize,
    feedback: bool,
) -> Result<(), TestCaseError> {
    let got = capped_stream(log, horizon_secs, hot_cap);
    let horizon_ms = horizon_secs.map_or(funnels().max_window_ms() + GAP_SECS as i64 * 1000, |s| {
        s as i64 * 1000
    });
    let want = capped_reference(log, horizon_ms, hot_cap);
    let got_tp: BTreeMap<_, _> = got
        .touchpoints
        .iter()
        .map(|(k, (_, c, s, l))| (k.clone(), (c.clone(), s.clone(), *l)))
        .collect();
    prop_assert_eq!(got_tp, want.touchpoints);
    prop_assert_eq!(got.live_sessions(), want.sessions);
    prop_assert_eq!(got.live_attempts(), want.attempts);
    prop_assert_eq!(got.live_open_attempts(), want.open_attempts);
    if feedback {
        let got_fb: BTreeMap<_, _> = got
            .feedback
            .iter()
            .map(|(k, (_, c, r, a, l))| (k.clone(), (c.clone(), r.clone(), a.clone(), *l)))
            .collect();
        prop_assert_eq!(got_fb, want.feedback);
    }
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
        check(&build(&specs, true), Some(30 * 24 * 3600), true)?;
    }

    /// Known users only, some events beyond the lateness, default horizon: events behind
    /// the release frontier are placed and their customers' rows rewritten; history
    /// eviction and forgetting idle customers.
    #[test]
    fn late_events_and_eviction_match_batch_reference(
        specs in prop::collection::vec(spec(true, 0), 1..80)
    ) {
        check(&build(&specs, false), None, true)?;
    }

    /// A horizon (6 min) shorter than the jitter (up to 10 min): some events are older than
    /// it on arrival and stay late; the rest are placed in order.
    #[test]
    fn events_beyond_a_short_horizon_are_late_the_rest_placed(
        specs in prop::collection::vec(spec(true, 0), 1..80)
    ) {
        check(&build(&specs, false), Some(360), false)?;
    }

    /// The hot-customer cap, reached often: anonymous ids, links and re-attribution,
    /// events shuffled within the lateness; the same events are placed as the batch
    /// reference's first `HOT_CAP` per customer and window, the rest stored without a
    /// session. Without client retries: a copy of an event the cap kept out is not
    /// recognised as one (nothing of it is kept), README "Hot customers".
    #[test]
    fn hot_customers_are_capped_like_the_batch_reference(
        specs in prop::collection::vec(spec(false, 0), 1..80)
    ) {
        let specs: Vec<Spec> = specs.into_iter().map(|mut s| { s.8 = None; s }).collect();
        check_capped(&build(&specs, true), Some(30 * 24 * 3600), HOT_CAP, true)?;
    }
}

/// The generated logs exercise every attribution rule, and late touchpoints that raise
/// an answer's attribution after its first row: otherwise the feedback checks above could
/// pass with every answer attributed on arrival, or none at all.
#[test]
fn generated_logs_exercise_every_attribution_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(spec(true, 0), 20..80);
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        let log = build(&strategy.new_tree(&mut runner).unwrap().current(), false);
        for (_, (version, _, rule, _, _)) in stream(&log, None).feedback {
            *seen.entry(rule).or_default() += 1;
            // Low bits: rows written for the answer; a second one re-attributed it.
            if version & 0xFFFF >= 2 {
                *seen.entry("re-attributed".into()).or_default() += 1;
            }
        }
    }
    for what in ["event_id", "event", "stage", "none", "re-attributed"] {
        assert!(
            seen.get(what).copied().unwrap_or(0) >= 3,
            "{what}: {seen:?}"
        );
    }
}

/// The generated logs exercise every funnel option: otherwise the properties above
/// could pass without ever excluding, interrupting, skipping or hitting a step deadline.
#[test]
fn generated_logs_exercise_every_funnel_option() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(spec(false, 3), 20..60);
    let funnels = funnels();
    let step_deadline = |r: &FunnelAttemptRow| {
        let f = funnels
            .funnels()
            .iter()
            .find(|f| f.name == r.funnel)
            .unwrap();
        r.closed_ms < r.start_ms + f.window_ms
    };
    let mut seen = BTreeMap::<&str, usize>::new();
    for _ in 0..200 {
        // Without answers: they interrupt strict attempts, and the few conversions of
        // this fixed set of logs are what is checked here.
        let log = build_with(
            &strategy.new_tree(&mut runner).unwrap().current(),
            true,
            false,
        );
        for r in reference(&log, i64::MAX / 4).attempts.values() {
            let mut see = |what| *seen.entry(what).or_default() += 1;
            let dropped = r.outcome == Outcome::Dropped;
            match r.funnel.as_str() {
                "recovery" if r.outcome == Outcome::Excluded => see("ordered excluded"),
                "recovery" if dropped && step_deadline(r) => see("within_secs drop"),
                "strict_checkout" if dropped && step_deadline(r) => {
                    see("strict interrupted or within_secs")
                }
                "strict_checkout" if r.outcome == Outcome::Excluded => see("strict excluded"),
                "strict_checkout" if r.outcome == Outcome::Converted => see("strict converted"),
                "any_recovery" if r.outcome == Outcome::Excluded => see("any excluded"),
                "any_recovery" if r.outcome == Outcome::Converted => see("any converted"),
                _ => {}
            }
            if r.step_event_ids.iter().any(String::is_empty) {
                see("optional skipped");
            }
            if r.funnel == "any_recovery" && r.step_event_ids.len() == 3 {
                see("any with the optional step");
            }
        }
    }
    for what in [
        "ordered excluded",
        "within_secs drop",
        "strict interrupted or within_secs",
        "strict excluded",
        "strict converted",
        "any excluded",
        "any converted",
        "optional skipped",
        "any with the optional step",
    ] {
        assert!(
            seen.get(what).copied().unwrap_or(0) >= 3,
            "{what}: {seen:?}"
        );
    }
}

/// Hand-worked cases, one per option (the funnels of `FUNNELS`): the rows written down
/// here must be what both the batch reference and the streaming stages produce, with the
/// events arriving in order and in reverse (placed late and corrected).
#[test]
fn hand_worked_cases_for_each_funnel_option() {
    const T0: i64 = 1_700_000_000_000;
    type Want = (Outcome, Vec<&'static str>, i64);
    let track = |i: usize, minute: i64, name: &str, props: Value| JourneyEvent {
        event_id: format!("h{i}"),
        kind: MessageType::Track,
        event: Some(name.to_owned()),
        anonymous_id: None,
        user_id: Some("u0".into()),
        previous_id: None,
        event_time_ms: T0 + minute * MIN,
        channel: None,
        properties: Properties::from_json(&props.to_string()),
    };
    let pro = || json!({"plan": "pro", "coupon": "SAVE"});
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &str, Vec<(i64, &str, Value)>, Vec<Want>)> = vec![
        (
            "an excluded event between steps 2 and 3 excludes the attempt",
            "recovery",
            vec![
                (0, "Complaint Filed", pro()),
                (10, "Follow-up Completed", pro()),
                (20, "Home", json!({})),
                (30, "Order Completed", pro()),
            ],
            vec![(Outcome::Excluded, vec!["h0", "h1"], 20)],
        ),
        (
            "before step 2 the exclusion does not apply; a couponed Home is no exclusion",
            "recovery",
            vec![
                (0, "Complaint Filed", pro()),
                (5, "Home", json!({})),
                (10, "Follow-up Completed", pro()),
                (20, "Home", pro()),
                (30, "Order Completed", pro()),
            ],
            vec![(Outcome::Converted, vec!["h0", "h2", "h4"], 30)],
        ),
        (
            "a follow-up 16 min after the complaint is past within_secs = 900",
            "recovery",
            vec![
                (0, "Complaint Filed", pro()),
                (16, "Follow-up Completed", pro()),
                (20, "Order Completed", pro()),
            ],
            vec![(Outcome::Dropped, vec!["h0"], 15)],
        ),
        (
            "strict: any other event between steps drops the attempt there",
            "strict_checkout",
            vec![
                (0, "Product Viewed", pro()),
                (1, "Product Added", pro()),
                (2, "Home", json!({})),
                (3, "Checkout Started", pro()),
                (4, "Order Completed", json!({"amount": 50})),
            ],
            vec![(Outcome::Dropped, vec!["h0", "h1"], 2)],
        ),
        (
            "strict: the optional step 2 skipped, recorded empty; amount as text",
            "strict_checkout",
            vec![
                (0, "Product Viewed", pro()),
                (1, "Checkout Started", pro()),
                (2, "Order Completed", json!({"amount": "50"})),
            ],
            vec![(Outcome::Converted, vec!["h0", "", "h1", "h2"], 2)],
        ),
        (
            "strict: an order over the amount range or with a coupon is no step, so it \
             interrupts; the complaint exclusion applies from step 1",
            "strict_checkout",
            vec![
                (0, "Product Viewed", pro()),
                (1, "Product Added", pro()),
                (2, "Checkout Started", pro()),
                (3, "Order Completed", json!({"amount": 200})),
                (10, "Product Viewed", pro()),
                (11, "Checkout Started", pro()),
                (12, "Order Completed", json!({"amount": 50, "coupon": "X"})),
                (20, "Product Viewed", pro()),
                (21, "Complaint Filed", pro()),
            ],
            vec![
                (Outcome::Dropped, vec!["h0", "h1", "h2"], 3),
                (Outcome::Dropped, vec!["h4", "", "h5"], 12),
                (Outcome::Excluded, vec!["h7"], 21),
            ],
        ),
        (
            "any: order first, then the complaint; the optional follow-up not needed",
            "any_recovery",
            vec![
                (0, "Order Completed", json!({"plan": "team"})),
                (5, "Follow-up Completed", json!({})),
                (6, "Complaint Filed", json!({"plan": "team"})),
            ],
            vec![(Outcome::Converted, vec!["h0", "h1", "h2"], 6)],
        ),
        (
            "any: a free-plan order is no step; a Home with an amount excludes; the next \
             order (any step starts an attempt) drops at the end of its 20 min window",
            "any_recovery",
            vec![
                (0, "Complaint Filed", pro()),
                (1, "Order Completed", json!({"plan": "free"})),
                (2, "Home", json!({"amount": 0})),
                (3, "Order Completed", pro()),
            ],
            vec![
                (Outcome::Excluded, vec!["h0"], 2),
                (Outcome::Dropped, vec!["h3"], 23),
            ],
        ),
    ];
    for (what, funnel, events, want) in cases {
        let mut log: Vec<JourneyEvent> = events
            .into_iter()
            .enumerate()
            .map(|(i, (minute, name, props))| track(i, minute, name, props))
            .collect();
        // Another customer's event five hours on moves the watermark past every window.
        let mut later = track(99, 300, "Ping", json!({}));
        later.user_id = Some("u1".into());
        let want: Vec<(Outcome, Vec<String>, i64)> = want
            .into_iter()
            .map(|(o, ids, closed)| {
                (
                    o,
                    ids.into_iter().map(Into::into).collect(),
                    T0 + closed * MIN,
                )
            })
            .collect();
        let of_funnel = |rows: BTreeMap<String, FunnelAttemptRow>| {
            let mut rows: Vec<_> = rows
                .into_values()
                .filter(|r| r.funnel == funnel)
                .map(|r| {
                    assert_eq!(r.reached_step as usize, r.step_event_ids.len(), "{what}");
                    assert_eq!(r.step_times_ms.len(), r.step_event_ids.len(), "{what}");
                    (r.outcome, r.step_event_ids, r.closed_ms)
                })
                .collect();
            rows.sort_by_key(|r| r.2);
            rows
        };
        let mut in_order = log.clone();
        in_order.push(later.clone());
        assert_eq!(
            of_funnel(reference(&in_order, i64::MAX / 4).attempts),
            want,
            "reference: {what}"
        );
        assert_eq!(
            of_funnel(stream(&in_order, Some(30 * 24 * 3600)).live_attempts()),
            want,
            "in order: {what}"
        );
        log.reverse();
        log.insert(0, later);
        assert_eq!(
            of_funnel(stream(&log, Some(30 * 24 * 3600)).live_attempts()),
            want,
            "in reverse: {what}"
        );
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
    open_attempts: BTreeMap<String, FunnelOpenAttemptRow>,
    feedback: BTreeMap<String, (u64, Attributed)>,
}

/// An answer's row: customer, rule, rated event id, is_late.
type Attributed = (String, String, String, bool);

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
                r.event_id.to_string(),
                r.version,
                (
                    r.customer_id.to_string(),
                    r.session_id.to_string(),
                    r.is_late,
                ),
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
            newest(&mut sessions, r.session_id.to_string(), r.version, r)?;
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
        let mut open: BTreeMap<String, (u64, FunnelOpenAttemptRow)> =
            std::mem::take(&mut self.open_attempts)
                .into_iter()
                .map(|(k, r)| (k, (r.version, r)))
                .collect();
        for r in out.open_attempts {
            newest(&mut open, r.attempt_id.clone(), r.version, r)?;
        }
        self.open_attempts = open.into_iter().map(|(k, (_, r))| (k, r)).collect();
        for r in out.feedback {
            let row = (r.customer_id, r.attribution, r.about_event_id, r.is_late);
            newest(&mut self.feedback, r.event_id, r.version, row)?;
        }
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
            open_attempts: self.open_attempts.clone(),
            feedback: BTreeMap::new(),
        };
        Tables {
            touchpoints: strip.touchpoints.clone(),
            sessions: strip.live_sessions(),
            attempts: strip.live_attempts(),
            open_attempts: strip.live_open_attempts(),
            feedback: self
                .feedback
                .iter()
                .map(|(k, (_, (c, r, a, l)))| (k.clone(), (0, c.clone(), r.clone(), a.clone(), *l)))
                .collect(),
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
        JourneyStage::from_snapshot(journey_config(horizon_secs), catalog(), funnels(), snapshot)
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
    prop_assert_eq!(&got.feedback, &want.feedback);
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
        specs in prop::collection::vec(spec(false, 3), 1..60),
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
        specs in prop::collection::vec(spec(true, 0), 1..80),
        parts in 1..=3usize,
        schedule in id_schedule(),
        plan in journey_plan(),
    ) {
        check_crashes(&build(&specs, false), parts, Some(360), &schedule, &plan)?;
    }
}
