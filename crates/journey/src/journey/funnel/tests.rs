//! Funnel config parsing and the anchored-attempt rules of docs/design.md §5, step by step.

use std::path::Path;

use std::sync::Arc;

use super::*;
use crate::event::{JourneyEvent, MessageType};

const MIN: i64 = 60_000;

fn deploy_funnels() -> FunnelSet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/funnels.toml");
    FunnelSet::load(&path).expect("deploy/funnels.toml")
}

fn track(name: &str, props: serde_json::Value) -> JourneyEvent {
    JourneyEvent {
        event_id: "e".into(),
        kind: MessageType::Track,
        event: Some(name.into()),
        anonymous_id: Some("a".into()),
        user_id: None,
        previous_id: None,
        event_time_ms: 0,
        channel: None,
        properties: crate::Properties::from_map(props.as_object().cloned().unwrap_or_default()),
    }
}

/// Feed (time, step mask) pairs through one slot, then close by `frontier`.
fn run(funnel: &Funnel, events: &[(i64, u32)], frontier: i64) -> Vec<ClosedAttempt> {
    let mut slot = AttemptSlot::default();
    let mut closed = Vec::new();
    for (i, (t, mask)) in events.iter().enumerate() {
        slot.step(
            0,
            funnel,
            *mask,
            *t,
            &Arc::from(format!("e{i}")),
            None,
            &mut closed,
        );
    }
    slot.close_expired(0, funnel, frontier, &mut closed);
    closed
}

fn summary(closed: &[ClosedAttempt]) -> Vec<(Outcome, usize, i64, i64)> {
    closed
        .iter()
        .map(|c| {
            (
                c.outcome,
                c.attempt.reached(),
                c.attempt.start_ms(),
                c.closed_ms,
            )
        })
        .collect()
}

#[test]
fn deploy_file_has_the_two_default_funnels() {
    let set = deploy_funnels();
    let names: Vec<_> = set.funnels().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["web_checkout", "service_recovery"]);
    assert_eq!(set.funnels()[0].window_ms, 60 * MIN);
    assert_eq!(set.funnels()[0].steps.len(), 4);
    assert_eq!(set.funnels()[1].window_ms, 7 * 24 * 60 * MIN);
    assert_eq!(set.funnels()[1].steps[1].event, "Follow-up Completed");
    let refund = &set.funnels()[1].exclude[0];
    assert_eq!(
        (refund.event.as_str(), refund.from, refund.to),
        ("Order Refunded", 2, 3)
    );
    assert_eq!(set.max_window_ms(), 7 * 24 * 60 * MIN);
}

#[test]
fn property_filters_must_all_match() {
    let set = FunnelSet::from_toml_str(
        r#"[[funnel]]
           name = "pro"
           window_secs = 60
           steps = [{ event = "Pricing Viewed" },
                    { event = "Plan Selected", where = { plan = "pro", seats = 5, annual = true } }]"#,
        None,
    )
    .expect("valid");
    let hit = json!({"plan": "pro", "seats": 5.0, "annual": true, "extra": 1});
    assert_eq!(set.matches(&track("Plan Selected", hit)), vec![(0, 0b10)]);
    for miss in [
        json!({"plan": "free", "seats": 5, "annual": true}),
        json!({"plan": "pro", "seats": "5", "annual": true}),
        json!({"plan": "pro", "seats": 5}),
    ] {
        assert!(set.matches(&track("Plan Selected", miss)).is_empty());
    }
    assert_eq!(
        set.matches(&track("Pricing Viewed", json!({}))),
        vec![(0, 0b01)]
    );
    // Only track events match steps: a page named like a step does not.
    let mut page = track("Pricing Viewed", json!({}));
    page.kind = MessageType::Page;
    assert!(set.matches(&page).is_empty());
}

use serde_json::json;

#[test]
fn bad_funnel_files_name_the_problem() {
    let cases = [
        ("[[funnel]]\nname = \"x\"\nwindow_secs = 1\nsteps = []", "at least 1 entry"),
        ("[[funnel]]\nname = \"x\"\nwindow_secs = 0\nsteps = [{event = \"a\"}]", "window_secs"),
        ("[[funnel]]\nname = \"x\"\nwindow = 1\nsteps = [{event = \"a\"}]", "window"),
        (
            "[[funnel]]\nname = \"x\"\nwindow_secs = 1\nsteps = [{event = \"a\", when = {}}]",
            "when",
        ),
        (
            "[[funnel]]\nname = \"x\"\nwindow_secs = 1\nsteps = [{event = \"a\", where = {k = [1]}}]",
            "where.k",
        ),
        (
            "[[funnel]]\nname = \"x\"\nwindow_secs = 1\nsteps = [{event = \"a\"}]\n\
             [[funnel]]\nname = \"x\"\nwindow_secs = 1\nsteps = [{event = \"a\"}]",
            "duplicate funnel name `x`",
        ),
        ("[[funnels]]\nname = \"x\"", "funnels"),
    ];
    for (text, needle) in cases {
        let err = FunnelSet::from_toml_str(text, Some("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle) && err.contains("f.toml"),
            "{needle}: {err}"
        );
    }
}

fn abc(window_ms: i64) -> Funnel {
    Funnel {
        name: "abc".into(),
        window_ms,
        order: Order::Ordered,
        steps: ["A", "B", "C"]
            .iter()
            .map(|e| Step {
                event: (*e).into(),
                filters: vec![],
                optional: false,
                within_ms: None,
            })
            .collect(),
        exclude: vec![],
        breakdown: vec![],
        breakdown_attribution: Attribution::FirstStep,
        listed: vec![],
    }
}

const A: u32 = 1;
const B: u32 = 2;
const C: u32 = 4;

#[test]
fn rule1_step1_starts_only_without_open_attempt() {
    let f = abc(60 * MIN);
    // The second A (at 10 min) does not re-anchor: the attempt still starts at 0.
    let closed = run(
        &f,
        &[(0, A), (10 * MIN, A), (20 * MIN, B), (30 * MIN, C)],
        0,
    );
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 3, 0, 30 * MIN)]);
    // Steps out of order do not start anything.
    assert!(run(&f, &[(0, B), (1, C)], 10 * 60 * MIN).is_empty());
}

#[test]
fn rule2_advance_on_first_match_within_window_others_ignored() {
    let f = abc(60 * MIN);
    let closed = run(&f, &[(0, A), (1, 0), (2, C), (3, B), (4, B), (5, C)], 0);
    assert_eq!(closed[0].attempt.step_times_ms(), vec![0, 3, 5]);
    assert_eq!(closed[0].attempt.step_event_ids(), vec!["e0", "e3", "e5"]);
    // Window boundary: exactly start + window still advances…
    let closed = run(&f, &[(0, A), (30 * MIN, B), (60 * MIN, C)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 3, 0, 60 * MIN)]);
    // …one ms later does not: dropped at start + window with the steps reached.
    let closed = run(&f, &[(0, A), (30 * MIN, B), (60 * MIN + 1, C)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Dropped, 2, 0, 60 * MIN)]);
}

#[test]
fn rule3_drop_only_when_the_frontier_passes_the_window() {
    let f = abc(60 * MIN);
    assert!(run(&f, &[(0, A), (5, B)], 60 * MIN).is_empty());
    let closed = run(&f, &[(0, A), (5, B)], 60 * MIN + 1);
    assert_eq!(summary(&closed), vec![(Outcome::Dropped, 2, 0, 60 * MIN)]);
}

#[test]
fn rule4_after_close_next_step1_starts_a_new_attempt() {
    let f = abc(60 * MIN);
    // Converted at 3, then A at 4 starts attempt 2; A at 70 min first drops attempt 2
    // (past its window) and then starts attempt 3.
    let closed = run(&f, &[(0, A), (1, B), (3, C), (4, A), (70 * MIN, A)], 0);
    assert_eq!(
        summary(&closed),
        vec![
            (Outcome::Converted, 3, 0, 3),
            (Outcome::Dropped, 1, 4, 60 * MIN + 4),
        ]
    );
    // The event that converts does not also start the next attempt.
    let aa = Funnel {
        steps: vec![f.steps[0].clone(), f.steps[0].clone()],
        ..f.clone()
    };
    // An `A` event matches both steps of `A → A`.
    let closed = run(&aa, &[(0, A | B), (1, A | B), (2, A | B)], 3 * 60 * MIN);
    assert_eq!(
        summary(&closed),
        vec![
            (Outcome::Converted, 2, 0, 1),
            (Outcome::Dropped, 1, 2, 60 * MIN + 2)
        ]
    );
}

/// The one funnel of a TOML text.
fn one(text: &str) -> Funnel {
    FunnelSet::from_toml_str(text, None)
        .expect("valid")
        .funnels()[0]
        .clone()
}

#[test]
fn in_not_comparisons_and_exists_filters() {
    let set = FunnelSet::from_toml_str(
        r#"[[funnel]]
           name = "f"
           window_secs = 60
           steps = [{ event = "Order", where = {
               plan = { in = ["pro", "team"] },
               coupon = { not = ["FREE", "STAFF"] },
               total = { ">" = 100, "<=" = 500 },
               gift = { exists = false },
               email = { exists = true } } }]"#,
        None,
    )
    .expect("valid");
    let base = json!({"plan": "pro", "coupon": "X", "total": 101, "email": "a@b"});
    let with = |k: &str, v: serde_json::Value| {
        let mut p = base.clone();
        p[k] = v;
        p
    };
    let without = |k: &str| {
        let mut p = base.clone();
        p.as_object_mut().unwrap().remove(k);
        p
    };
    let hits = [
        base.clone(),
        with("plan", json!("team")),
        // `not`: an absent property is not one of them.
        without("coupon"),
        with("total", json!(500)),
        // A number sent as text compares as a number.
        with("total", json!("250.5")),
        // `exists = false`: absent or null.
        with("gift", json!(null)),
    ];
    for p in hits {
        assert_eq!(set.matches(&track("Order", p.clone())), vec![(0, 1)], "{p}");
    }
    let misses = [
        with("plan", json!("free")),
        without("plan"),
        with("coupon", json!("STAFF")),
        with("total", json!(100)),
        with("total", json!(500.5)),
        with("total", json!("lots")),
        with("total", json!(true)),
        without("total"),
        with("gift", json!("card")),
        without("email"),
        with("email", json!(null)),
    ];
    for p in misses {
        assert!(set.matches(&track("Order", p.clone())).is_empty(), "{p}");
    }
}

#[test]
fn bad_options_name_the_funnel_the_step_and_the_problem() {
    let f = |extra: &str, steps: &str| {
        format!("[[funnel]]\nname = \"x\"\nwindow_secs = 60\n{extra}\nsteps = [{steps}]")
    };
    let abc = r#"{event = "a"}, {event = "b"}, {event = "c"}"#;
    let cases = [
        (
            f("", r#"{event = "a", optional = true}, {event = "b"}"#),
            "funnel `x` step 1: the first step cannot be optional",
        ),
        (
            f("", r#"{event = "a"}, {event = "b", optional = true}"#),
            "funnel `x` step 2: the last step cannot be optional",
        ),
        (
            f("order = \"sequential\"", abc),
            "funnel `x`: unknown order `sequential`",
        ),
        (
            f("", r#"{event = "a", within_secs = 5}, {event = "b"}"#),
            "funnel `x` step 1: within_secs needs a previous step",
        ),
        (
            f("", r#"{event = "a"}, {event = "b", within_secs = 0}"#),
            "funnel `x` step 2: within_secs must be positive",
        ),
        (
            f("order = \"any\"", r#"{event = "a"}, {event = "b", within_secs = 5}"#),
            "funnel `x` step 2: within_secs needs an order of steps",
        ),
        (
            f("exclude = [{ event = \"r\", between = [2, 4] }]", abc),
            "funnel `x` exclude 1: between must be [from, to] with 1 ≤ from < to ≤ 3",
        ),
        (
            f("exclude = [{ event = \"r\", between = [2, 2] }]", abc),
            "funnel `x` exclude 1: between must be",
        ),
        (
            f("exclude = [{ event = \"r\", between = [0, 2] }]", abc),
            "funnel `x` exclude 1: between must be",
        ),
        (
            f("exclude = [{ event = \"r\", between = [1] }]", abc),
            "funnel `x` exclude 1: between must be",
        ),
        (
            f("exclude = [{ event = \"r\" }]", abc),
            "between",
        ),
        (
            f("order = \"any\"\nexclude = [{ event = \"r\", between = [1, 2] }]", abc),
            "funnel `x` exclude 1: with order = \"any\" steps have no positions: between must be [1, 3]",
        ),
        (
            f("", r#"{event = "a", where = {n = {">" = "5"}}}"#),
            "funnel `x` step 1 where.n.>: expects a number",
        ),
        (
            f("", r#"{event = "a", where = {n = {like = "5"}}}"#),
            "funnel `x` step 1 where.n.like: unknown condition",
        ),
        (
            f("", r#"{event = "a", where = {n = {in = "5"}}}"#),
            "funnel `x` step 1 where.n.in: expects a list",
        ),
        (
            f("", r#"{event = "a", where = {n = {exists = 1}}}"#),
            "funnel `x` step 1 where.n.exists: expects true or false",
        ),
        (
            f("", r#"{event = "a", where = {n = {}}}"#),
            "funnel `x` step 1 where.n: empty condition table",
        ),
        (
            f(
                &format!(
                    "exclude = [{}]",
                    vec![r#"{ event = "r", between = [1, 2] }"#; 31].join(", ")
                ),
                r#"{event = "a"}, {event = "b"}"#,
            ),
            "steps plus exclusions at most 32, got 2 steps and 31 exclusions",
        ),
        (f("", r#"{event = "a", optonal = true}"#), "optonal"),
    ];
    for (text, needle) in cases {
        let err = FunnelSet::from_toml_str(&text, Some("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle) && err.contains("f.toml"),
            "{needle}: {err}"
        );
    }
}

#[test]
fn exclusion_bits_follow_the_step_bits() {
    let set = FunnelSet::from_toml_str(
        r#"[[funnel]]
           name = "r"
           window_secs = 60
           steps = [{ event = "A" }, { event = "B" }, { event = "C" }]
           exclude = [{ event = "X", between = [1, 3] },
                      { event = "B", where = { refund = true }, between = [2, 3] }]"#,
        None,
    )
    .expect("valid");
    let f = &set.funnels()[0];
    assert_eq!(set.matches(&track("X", json!({}))), vec![(0, 0b01000)]);
    // A refund-flagged B matches step 2 and exclusion 2.
    let both = set.matches(&track("B", json!({"refund": true})));
    assert_eq!(both, vec![(0, 0b10010)]);
    assert_eq!(f.step_bits(both[0].1), 0b010);
    assert_eq!(f.exclusion_bits(both[0].1), 0b10);
}

const X: u32 = 8; // exclusion 1 of a three-step funnel

#[test]
fn rule5_an_excluded_event_between_its_steps_closes_the_attempt_as_excluded() {
    let f = one(r#"[[funnel]]
           name = "r"
           window_secs = 3600
           steps = [{ event = "A" }, { event = "B" }, { event = "C" }]
           exclude = [{ event = "X", between = [2, 3] }]"#);
    // Before step 2 the exclusion does not apply.
    let closed = run(&f, &[(0, A), (1, X), (2, B), (3, C)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 3, 0, 3)]);
    // After step 2 and before step 3: excluded at the excluded event's time, with the
    // steps reached; the next A starts a new attempt.
    let closed = run(&f, &[(0, A), (1, B), (2, X), (3, C), (4, A)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Excluded, 2, 0, 2)]);
    // After conversion nothing is excluded; after the window the attempt had dropped.
    let closed = run(&f, &[(0, A), (1, B), (2, C), (3, X)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 3, 0, 2)]);
    let closed = run(&f, &[(0, A), (1, B), (60 * MIN + 1, X)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Dropped, 2, 0, 60 * MIN)]);
}

#[test]
fn rule6_strict_any_other_event_drops_the_attempt_there() {
    let f = one(r#"[[funnel]]
           name = "s"
           order = "strict"
           window_secs = 3600
           steps = [{ event = "A" }, { event = "B" }, { event = "C" }]"#);
    let closed = run(&f, &[(0, A), (1, B), (2, C)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 3, 0, 2)]);
    // An unrelated event (mask 0) between B and C: dropped at it, reached 2.
    let closed = run(&f, &[(0, A), (1, B), (2, 0), (3, C)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Dropped, 2, 0, 2)]);
    // A repeated A interrupts, then starts the attempt that converts.
    let closed = run(&f, &[(0, A), (1, A), (2, B), (3, C)], 0);
    assert_eq!(
        summary(&closed),
        vec![(Outcome::Dropped, 1, 0, 1), (Outcome::Converted, 3, 1, 3)]
    );
    // Ordered would have ignored both.
    let ordered = Funnel {
        order: Order::Ordered,
        ..f.clone()
    };
    let closed = run(&ordered, &[(0, A), (1, A), (2, 0), (3, B), (4, C)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 3, 0, 4)]);
}

#[test]
fn any_order_converts_when_every_required_step_is_reached() {
    let f = one(r#"[[funnel]]
           name = "any"
           order = "any"
           window_secs = 3600
           steps = [{ event = "A" }, { event = "B", optional = true }, { event = "C" }]"#);
    // C then A: converted without the optional B; steps in the order reached.
    let closed = run(&f, &[(0, C), (1, C), (2, A), (3, B)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 2, 0, 2)]);
    assert_eq!(closed[0].attempt.step_event_ids(), vec!["e0", "e2"]);
    // B starts an attempt too; it drops at start + window having reached 2 steps.
    let closed = run(&f, &[(0, B), (1, C), (2, B)], 2 * 60 * MIN);
    assert_eq!(summary(&closed), vec![(Outcome::Dropped, 2, 0, 60 * MIN)]);
    assert_eq!(closed[0].attempt.step_times_ms(), vec![0, 1]);
}

#[test]
fn optional_steps_may_be_skipped_and_are_recorded_empty() {
    let f = one(r#"[[funnel]]
           name = "o"
           window_secs = 3600
           steps = [{ event = "A" }, { event = "B", optional = true }, { event = "C" }]"#);
    let closed = run(&f, &[(0, A), (5, C)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 3, 0, 5)]);
    assert_eq!(closed[0].attempt.step_times_ms(), vec![0, 0, 5]);
    assert_eq!(closed[0].attempt.step_event_ids(), vec!["e0", "", "e1"]);
    // Taken when it happens; an event matching B after C-less progress still counts.
    let closed = run(&f, &[(0, A), (1, B), (2, C)], 0);
    assert_eq!(closed[0].attempt.step_event_ids(), vec!["e0", "e1", "e2"]);
    // Dropped after skipping nothing: reached 1.
    let closed = run(&f, &[(0, A)], 61 * MIN);
    assert_eq!(summary(&closed), vec![(Outcome::Dropped, 1, 0, 60 * MIN)]);
}

#[test]
fn within_secs_drops_at_the_step_deadline() {
    let f = one(r#"[[funnel]]
           name = "w"
           window_secs = 3600
           steps = [{ event = "A" }, { event = "B", within_secs = 600 },
                    { event = "C", optional = true, within_secs = 60 }, { event = "D" }]"#);
    const D: u32 = 8;
    let mut slot = AttemptSlot::default();
    let mut closed = Vec::new();
    slot.step(0, &f, A, 0, &Arc::from("a"), None, &mut closed);
    assert_eq!(slot.deadline_ms(&f), Some(10 * MIN));
    slot.step(0, &f, B, 5 * MIN, &Arc::from("b"), None, &mut closed);
    // C is optional: only the window bounds D.
    assert_eq!(slot.deadline_ms(&f), Some(60 * MIN));
    // C 2 min after B is past its own within_secs: it does not count as step 3.
    slot.step(0, &f, C, 7 * MIN, &Arc::from("c"), None, &mut closed);
    slot.step(0, &f, D, 8 * MIN, &Arc::from("d"), None, &mut closed);
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 4, 0, 8 * MIN)]);
    assert_eq!(closed[0].attempt.step_event_ids(), vec!["a", "b", "", "d"]);
    // B 10 min + 1 ms after A: dropped at A + 10 min, by the event or by the frontier.
    let closed = run(&f, &[(0, A), (10 * MIN + 1, B)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Dropped, 1, 0, 10 * MIN)]);
    assert!(run(&f, &[(0, A)], 10 * MIN).is_empty());
    let closed = run(&f, &[(0, A)], 10 * MIN + 1);
    assert_eq!(summary(&closed), vec![(Outcome::Dropped, 1, 0, 10 * MIN)]);
    // Exactly at the deadline still advances.
    let closed = run(&f, &[(0, A), (10 * MIN, B), (11 * MIN, D)], 0);
    assert_eq!(summary(&closed), vec![(Outcome::Converted, 4, 0, 11 * MIN)]);
}

#[test]
fn deploy_file_commented_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/funnels.toml");
    let text = std::fs::read_to_string(path).expect("deploy/funnels.toml");
    let example: String = text
        .split("# Example with the other options:\n")
        .nth(1)
        .expect("the example")
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let f = one(&example);
    assert_eq!((f.name.as_str(), f.order), ("pro_upgrade", Order::Strict));
    assert!(f.steps[1].optional);
    assert_eq!(f.steps[2].within_ms, Some(600_000));
}

#[test]
fn a_funnel_without_the_newer_options_serializes_as_before_them() {
    // The shape `journey/remap.rs` fingerprints: {name, window_ms, steps: [{event,
    // filters: [[key, value]]}]}, as before order, optional, within_secs, exclude and the
    // non-equality conditions existed; upgrading must not mark such a funnel changed.
    let f = one(r#"[[funnel]]
           name = "pro"
           window_secs = 60
           steps = [{ event = "Pricing Viewed" }, { event = "Plan Selected", where = { plan = "pro", seats = 5 } }]"#);
    assert_eq!(
        serde_json::to_string(&f).unwrap(),
        r#"{"name":"pro","window_ms":60000,"steps":[{"event":"Pricing Viewed","filters":[]},{"event":"Plan Selected","filters":[["plan","pro"],["seats",5]]}]}"#
    );
    // The options, when used, are part of it.
    let g = one(r#"[[funnel]]
           name = "pro"
           order = "strict"
           window_secs = 60
           steps = [{ event = "A" }, { event = "B", optional = true, within_secs = 5,
                      where = { n = { ">" = 1, in = [1, 2] }, t = { exists = true } } }, { event = "C" }]
           exclude = [{ event = "X", between = [1, 3] }]"#);
    assert_eq!(
        serde_json::to_string(&g).unwrap(),
        r#"{"name":"pro","window_ms":60000,"order":"strict","steps":[{"event":"A","filters":[]},{"event":"B","filters":[["n",{">":1.0}],["n",{"in":[1,2]}],["t",{"exists":true}]],"optional":true,"within_ms":5000},{"event":"C","filters":[]}],"exclude":[{"event":"X","filters":[],"from":1,"to":3}]}"#
    );
}

const BD_STEPS: &str =
    r#"steps = [{ event = "A" }, { event = "B", optional = true }, { event = "C" }]"#;

fn bd_funnel(attribution: &str) -> FunnelSet {
    FunnelSet::from_toml_str(
        &format!(
            "[[funnel]]\nname = \"x\"\nwindow_secs = 600\n{BD_STEPS}\n\
             breakdown = [{{ key = \"channel\", values = [\"web\", \"app\"] }}, \
             {{ key = \"properties.store\" }}]\n{attribution}"
        ),
        None,
    )
    .expect("valid")
}

/// Events (id, name, channel, store) through one slot; the closed attempts' values.
fn bd_run(set: &FunnelSet, events: &[(&str, &str, &'static str, &str)]) -> Vec<Vec<String>> {
    let funnel = &set.funnels()[0];
    let mut slot = AttemptSlot::default();
    let mut closed = Vec::new();
    for (i, (id, name, channel, store)) in events.iter().enumerate() {
        let mut e = track(name, serde_json::json!({ "store": store }));
        e.event_id = (*id).into();
        let steps = set.steps(&e, channel);
        let t = i as i64 * MIN;
        let id: Arc<str> = Arc::from(*id);
        slot.step(
            0,
            funnel,
            steps.mask(0),
            t,
            &id,
            steps.values(0, funnel),
            &mut closed,
        );
    }
    slot.close_expired(0, funnel, i64::MAX, &mut closed);
    closed
        .iter()
        .map(|c| c.attempt.breakdown_values())
        .collect()
}

#[test]
fn breakdown_values_follow_the_attribution() {
    // Hand-worked: A on web at store s1, B skipped, C on app at store s2.
    let events = [
        ("web:1", "A", "web", "s1"),
        ("web:2", "Other", "web", "s9"),
        ("app:3", "C", "app", "s2"),
    ];
    assert_eq!(bd_run(&bd_funnel(""), &events), vec![vec!["web", "s1"]]);
    assert_eq!(
        bd_run(&bd_funnel("breakdown_attribution = \"last_step\""), &events),
        vec![vec!["app", "s2"]]
    );
    // each_step: step-major, the skipped optional step 2 as "" for each key.
    assert_eq!(
        bd_run(&bd_funnel("breakdown_attribution = \"each_step\""), &events),
        vec![vec!["web", "s1", "", "", "app", "s2"]]
    );
    // A dropped attempt keeps the values of the steps it reached.
    assert_eq!(
        bd_run(
            &bd_funnel("breakdown_attribution = \"each_step\""),
            &[("web:1", "A", "email", "s1"), ("web:2", "B", "web", "")]
        ),
        vec![vec!["email", "s1", "web", ""]]
    );
}

#[test]
fn breakdown_labels_are_allow_listed_or_other() {
    let set = bd_funnel("");
    let f = &set.funnels()[0];
    let v = |a: &str, b: &str| vec![Arc::<str>::from(a), Arc::<str>::from(b)];
    // `properties.store` allow-lists nothing: every store is `other`.
    assert_eq!(f.breakdown_label(&v("web", "s1")), "web/other");
    assert_eq!(f.breakdown_label(&v("email", "")), "other/other");
    assert_eq!(abc(MIN).breakdown_label::<&str>(&[]), "all");
    // each_step: the step's own values.
    let each = bd_funnel("breakdown_attribution = \"each_step\"");
    let row = ["web", "s1", "", "", "app", "s2"];
    assert_eq!(each.funnels()[0].step_breakdown_label(&row, 3), "app/other");
    assert_eq!(
        each.funnels()[0].step_breakdown_label(&row, 2),
        "other/other"
    );
    assert_eq!(f.step_breakdown_label(&row[..2], 3), "web/other");
}

#[test]
fn events_matching_no_breakdown_funnel_keep_no_values() {
    let set = bd_funnel("");
    // Not a step of the funnel: masks only, no values.
    assert!(matches!(
        set.steps(&track("Other", serde_json::json!({})), "web"),
        Steps::NONE
    ));
    let plain = FunnelSet::from_toml_str(
        &format!("[[funnel]]\nname = \"x\"\nwindow_secs = 600\n{BD_STEPS}"),
        None,
    )
    .expect("valid");
    assert!(matches!(
        plain.steps(&track("A", serde_json::json!({})), "web"),
        Steps::One(0, 1)
    ));
    // A step of a breakdown funnel keeps its values; they survive a snapshot.
    let mut e = track("A", serde_json::json!({ "store": 12, "x": 1 }));
    e.event_id = "crm:o-1".into();
    let steps = set.steps(&e, "store");
    assert_eq!(steps.mask(0), 1);
    assert_eq!(
        steps.values(0, &set.funnels()[0]).map(|v| &v[..]),
        Some(&[Arc::from("store"), Arc::from("12")][..])
    );
    let text = serde_json::to_string(&steps).unwrap();
    let back: Steps = serde_json::from_str(&text).unwrap();
    assert_eq!(back, steps);
    // The old snapshot form (a list of masks) still reads.
    let old: Steps = serde_json::from_str("[[0,1]]").unwrap();
    assert_eq!(old, Steps::One(0, 1));
    assert_eq!(std::mem::size_of::<Steps>(), 16);
}

#[test]
fn source_and_long_property_values() {
    let set = FunnelSet::from_toml_str(
        "[[funnel]]\nname = \"x\"\nwindow_secs = 600\nsteps = [{ event = \"A\" }]\n\
         breakdown = [{ key = \"source\" }, { key = \"properties.note\" }]",
        None,
    )
    .expect("valid");
    let mut e = track("A", serde_json::json!({ "note": "é".repeat(40) }));
    e.event_id = "call-center:o-1:x".into();
    let steps = set.steps(&e, "web");
    let values = steps.values(0, &set.funnels()[0]).expect("values");
    assert_eq!(values[0].as_ref(), "call-center");
    // Cut at a character boundary at most MAX_BREAKDOWN_VALUE_BYTES long.
    assert_eq!(values[1].len(), 64);
}

#[test]
fn bad_breakdowns_name_the_problem() {
    let f = |extra: &str| {
        format!(
            "[[funnel]]\nname = \"x\"\nwindow_secs = 60\nsteps = [{{ event = \"a\" }}]\n{extra}"
        )
    };
    let cases = [
        (
            f(r#"breakdown = [{ key = "traits.plan" }]"#),
            "funnel `x` breakdown 1: `traits.plan`: traits and context do not reach",
        ),
        (
            f(r#"breakdown = [{ key = "context.campaign.source" }]"#),
            "traits and context do not reach the journey stage",
        ),
        (
            f(r#"breakdown = [{ key = "properties.a.b" }]"#),
            "only top-level properties",
        ),
        (
            f(r#"breakdown = [{ key = "device" }]"#),
            "unknown breakdown key `device`",
        ),
        (
            f(r#"breakdown = [{ key = "channel" }, { key = "channel" }]"#),
            "funnel `x` breakdown 2: duplicate breakdown key",
        ),
        (
            f(r#"breakdown = [{ key = "channel", values = ["other"] }]"#),
            "must be non-empty, not `other`",
        ),
        (
            f(r#"breakdown = [{ key = "channel", values = ["a", "a"] }]"#),
            "duplicate value `a`",
        ),
        (
            f(
                r#"breakdown = [{ key = "channel", values = ["a","b","c","d","e"] }, { key = "source", values = ["x","y","z"] }]"#,
            ),
            "funnel `x` breakdown: 24 label values",
        ),
        (
            f(r#"breakdown_attribution = "last_step""#),
            "breakdown_attribution needs a breakdown",
        ),
        (
            f("breakdown = [{ key = \"source\" }]\nbreakdown_attribution = \"middle\""),
            "unknown breakdown_attribution `middle`",
        ),
        (
            f(r#"breakdown = [{ key = "source", value = ["a"] }]"#),
            "unknown field `value`",
        ),
    ];
    for (text, needle) in cases {
        let err = FunnelSet::from_toml_str(&text, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn a_breakdown_is_part_of_the_serialized_funnel() {
    let f = |extra: &str| {
        serde_json::to_string(&one(&format!(
            "[[funnel]]\nname = \"x\"\nwindow_secs = 60\nsteps = [{{ event = \"a\" }}]\n{extra}"
        )))
        .unwrap()
    };
    assert_eq!(
        f("breakdown = [{ key = \"channel\", values = [\"web\"] }]\nbreakdown_attribution = \"each_step\""),
        r#"{"name":"x","window_ms":60000,"steps":[{"event":"a","filters":[]}],"breakdown":[{"key":"channel","values":["web"]}],"breakdown_attribution":"each_step"}"#
    );
    assert_eq!(
        f(""),
        r#"{"name":"x","window_ms":60000,"steps":[{"event":"a","filters":[]}]}"#
    );
}

#[test]
fn allow_listed_values_share_one_tuple_and_allocate_nothing() {
    // channel (web, app) × properties.store (s1, s2, s3): six tuples, channel slowest.
    let set = FunnelSet::from_toml_str(
        "[[funnel]]\nname = \"x\"\nwindow_secs = 600\nsteps = [{ event = \"A\" }, { event = \"B\" }]\n\
         breakdown = [{ key = \"channel\", values = [\"web\", \"app\"] }, \
         { key = \"properties.store\", values = [\"s1\", \"s2\", \"s3\"] }]",
        None,
    )
    .expect("valid");
    let f = &set.funnels()[0];
    let tuples: Vec<Vec<&str>> = f
        .listed
        .iter()
        .map(|t| t.iter().map(|v| v.as_ref()).collect())
        .collect();
    assert_eq!(
        tuples,
        [
            ["web", "s1"],
            ["web", "s2"],
            ["web", "s3"],
            ["app", "s1"],
            ["app", "s2"],
            ["app", "s3"]
        ]
    );
    for (channel, store) in [("web", "s1"), ("web", "s3"), ("app", "s1"), ("app", "s2")] {
        let steps = set.steps(&track("A", serde_json::json!({ "store": store })), channel);
        assert!(matches!(steps, Steps::Listed(0, 1, _)), "{steps:?}");
        let v = steps.values(0, f).expect("values");
        assert_eq!(&v[..], &[Arc::from(channel), Arc::from(store)][..]);
        assert!(f.listed.iter().any(|t| Arc::ptr_eq(t, v)), "shared");
        let back: Steps = serde_json::from_str(&serde_json::to_string(&steps).unwrap()).unwrap();
        assert_eq!(back, steps);
        // The attempt it starts shares the same tuple.
        let mut slot = AttemptSlot::default();
        let id: Arc<str> = Arc::from("e1");
        slot.step(
            0,
            f,
            steps.mask(0),
            0,
            &id,
            steps.values(0, f),
            &mut Vec::new(),
        );
        let open = slot.0.as_ref().expect("open");
        assert!(Arc::ptr_eq(open.breakdown.as_ref().expect("values"), v));
    }
    // A value outside the allow-list: the values themselves, in a snapshot too.
    let steps = set.steps(&track("A", serde_json::json!({ "store": "s9" })), "app");
    assert!(matches!(steps, Steps::Detailed(_)), "{steps:?}");
    let own = |s: &Steps| {
        s.values(0, f)
            .map(|v| v.iter().map(|x| x.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(own(&steps), Some(vec!["app".to_owned(), "s9".to_owned()]));
    let back: Steps = serde_json::from_str(&serde_json::to_string(&steps).unwrap()).unwrap();
    assert_eq!(back, steps);
    assert_eq!(std::mem::size_of::<Steps>(), 16);
    // A restored attempt's values (strings of their own) share the tuple again.
    let mut restored: Option<Arc<[Arc<str>]>> = serde_json::from_str(r#"["app","s2"]"#).unwrap();
    f.share_listed(&mut restored);
    assert!(Arc::ptr_eq(restored.as_ref().unwrap(), &f.listed[4]));
    let mut unlisted: Option<Arc<[Arc<str>]>> = serde_json::from_str(r#"["app","s9"]"#).unwrap();
    f.share_listed(&mut unlisted);
    assert!(!f
        .listed
        .iter()
        .any(|t| Arc::ptr_eq(t, unlisted.as_ref().unwrap())));
}
