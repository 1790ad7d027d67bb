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
        ("[[funnel]]\nname = \"x\"\nwindow_secs = 1\nsteps = []", "1 to 32"),
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
        steps: ["A", "B", "C"]
            .iter()
            .map(|e| Step {
                event: (*e).into(),
                filters: vec![],
            })
            .collect(),
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
