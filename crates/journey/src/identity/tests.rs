//! Stage-1 rules, docs/design.md §4 "Identity", worked by hand.

use super::*;

fn ev(id: &str, kind: MessageType, anon: Option<&str>, user: Option<&str>, t: i64) -> JourneyEvent {
    JourneyEvent {
        event_id: id.into(),
        kind,
        event: (kind == MessageType::Track).then(|| "Product Viewed".to_owned()),
        anonymous_id: anon.map(Into::into),
        user_id: user.map(Into::into),
        previous_id: None,
        event_time_ms: t,
        channel: None,
        properties: Default::default(),
    }
}

fn track(id: &str, anon: Option<&str>, user: Option<&str>, t: i64) -> JourneyEvent {
    ev(id, MessageType::Track, anon, user, t)
}

fn alias(id: &str, previous: &str, user: &str, t: i64) -> JourneyEvent {
    let mut e = ev(id, MessageType::Alias, None, Some(user), t);
    e.previous_id = Some(previous.into());
    e
}

/// (customer_id, event_id, reattributed) of routed events.
fn routed(out: &[IdentityOutput]) -> Vec<(String, String, bool)> {
    out.iter()
        .filter_map(|o| match o {
            IdentityOutput::Event(r) => Some((
                r.customer_id.clone(),
                r.event.event_id.clone(),
                r.reattributed,
            )),
            _ => None,
        })
        .collect()
}

fn links(out: &[IdentityOutput]) -> Vec<&Link> {
    out.iter()
        .filter_map(|o| match o {
            IdentityOutput::Link(l) => Some(l),
            _ => None,
        })
        .collect()
}

fn s(v: &str) -> String {
    v.to_owned()
}

#[test]
fn placeholder_ids() {
    for p in [
        "anonymous",
        "ANONYMOUS",
        "null",
        "Null",
        "undefined",
        "0",
        "",
        "   ",
        " null ",
        "\t",
    ] {
        assert!(is_placeholder_id(p), "{p:?}");
    }
    for real in ["a1", "00", "nullable", "anon", "user-0"] {
        assert!(!is_placeholder_id(real), "{real:?}");
    }
}

#[test]
fn placeholder_only_messages_are_rejected_and_placeholders_never_link() {
    let mut stage = IdentityStage::new(IdentityConfig::default());
    let out = stage.process(track("e1", Some("undefined"), Some("null"), 0), 1);
    assert!(matches!(
        out.as_slice(),
        [IdentityOutput::Rejected {
            reason: RejectReason::NoIdentity,
            ..
        }]
    ));
    let out = stage.process(alias("e2", "anonymous", "u1", 0), 2);
    assert!(matches!(
        out.as_slice(),
        [IdentityOutput::Rejected {
            reason: RejectReason::AliasWithoutIds,
            ..
        }]
    ));
    // A placeholder anonymous id next to a real user id: routed to the user, no link.
    let out = stage.process(track("e3", Some("0"), Some("u1"), 0), 3);
    assert_eq!(routed(&out), vec![(s("u1"), s("e3"), false)]);
    assert!(links(&out).is_empty());
    assert_eq!(stage.counters().rejected, 2);
}

#[test]
fn customer_id_is_user_else_link_else_anonymous() {
    let mut stage = IdentityStage::new(IdentityConfig::default());
    assert_eq!(
        routed(&stage.process(track("e1", None, Some("u1"), 0), 1)),
        vec![(s("u1"), s("e1"), false)]
    );
    assert_eq!(
        routed(&stage.process(track("e2", Some("a1"), None, 0), 2)),
        vec![(s("a1"), s("e2"), false)]
    );
}

#[test]
fn both_ids_link_and_reattribute_earlier_anonymous_events() {
    let mut stage = IdentityStage::new(IdentityConfig::default());
    stage.process(track("e1", Some("a1"), None, 10), 1);
    stage.process(track("e2", Some("a1"), None, 20), 2);
    let out = stage.process(track("e3", Some("a1"), Some("u1"), 30), 3);
    let l = links(&out);
    assert_eq!(l.len(), 1);
    assert_eq!(
        (
            l[0].anonymous_id.as_str(),
            l[0].user_id.as_str(),
            l[0].link_type
        ),
        ("a1", "u1", LinkType::BothIds)
    );
    assert_eq!(
        (l[0].linked_at_ms, l[0].link_event_id.as_str(), l[0].version),
        (30, "e3", 3)
    );
    // Earlier events re-sent under the user, with the link's version, then the retraction,
    // then the linking event itself.
    assert_eq!(
        routed(&out),
        vec![
            (s("u1"), s("e1"), true),
            (s("u1"), s("e2"), true),
            (s("u1"), s("e3"), false)
        ]
    );
    assert!(out.iter().all(|o| match o {
        IdentityOutput::Event(r) => r.version == 3,
        _ => true,
    }));
    let retract_at = out
        .iter()
        .position(|o| matches!(o, IdentityOutput::Retract(r) if r.customer_id == "a1"));
    assert_eq!(retract_at, Some(out.len() - 2));
    // Future anonymous-only events belong to the user.
    assert_eq!(
        routed(&stage.process(track("e4", Some("a1"), None, 40), 4)),
        vec![(s("u1"), s("e4"), false)]
    );
    assert_eq!(stage.counters().reattributed_events, 2);
}

#[test]
fn identify_and_alias_links() {
    let mut stage = IdentityStage::new(IdentityConfig::default());
    let out = stage.process(
        ev("i1", MessageType::Identify, Some("a1"), Some("u1"), 0),
        1,
    );
    assert_eq!(links(&out)[0].link_type, LinkType::Identify);
    // Identify without an anonymous id links nothing.
    let out = stage.process(ev("i2", MessageType::Identify, None, Some("u2"), 0), 2);
    assert!(links(&out).is_empty());

    stage.process(track("e1", Some("a2"), None, 5), 3);
    let out = stage.process(alias("al", "a2", "u2", 9), 4);
    let l = links(&out);
    assert_eq!(
        (
            l[0].anonymous_id.as_str(),
            l[0].user_id.as_str(),
            l[0].link_type
        ),
        ("a2", "u2", LinkType::Alias)
    );
    assert_eq!(
        routed(&out),
        vec![(s("u2"), s("e1"), true), (s("u2"), s("al"), false)]
    );
    assert_eq!(stage.linked_user("a2"), Some("u2"));
}

#[test]
fn first_link_wins_and_conflicts_are_recorded_not_applied() {
    let mut stage = IdentityStage::new(IdentityConfig::default());
    stage.process(track("e1", Some("a1"), Some("u1"), 0), 1);
    let out = stage.process(
        ev("e2", MessageType::Identify, Some("a1"), Some("u2"), 50),
        2,
    );
    assert!(links(&out).is_empty());
    let conflict = out.iter().find_map(|o| match o {
        IdentityOutput::Conflict(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(
        conflict,
        Some(Conflict {
            anonymous_id: s("a1"),
            linked_user_id: s("u1"),
            conflicting_user_id: s("u2"),
            event_id: s("e2"),
            event_time_ms: 50,
            version: 2,
        })
    );
    // The message's own user id is canonical for the message itself…
    assert_eq!(routed(&out), vec![(s("u2"), s("e2"), false)]);
    // …but the anonymous id stays with the first user.
    assert_eq!(
        routed(&stage.process(track("e3", Some("a1"), None, 60), 3)),
        vec![(s("u1"), s("e3"), false)]
    );
    // A repeat of the same link is neither a link nor a conflict.
    let out = stage.process(track("e4", Some("a1"), Some("u1"), 70), 4);
    assert!(links(&out).is_empty() && out.len() == 1);
    assert_eq!(stage.counters().conflicts, 1);
    assert_eq!(stage.counters().links, 1);
}

#[test]
fn user_ids_are_never_merged() {
    let mut stage = IdentityStage::new(IdentityConfig::default());
    // An event carrying only user ids never links them.
    stage.process(track("e1", None, Some("u1"), 0), 1);
    stage.process(track("e2", None, Some("u2"), 0), 2);
    assert_eq!(stage.snapshot().links.len(), 0);
}

#[test]
fn history_overflow_drops_oldest_from_reattribution_and_counts() {
    let config = IdentityConfig {
        max_unlinked_history_events: 2,
        ..IdentityConfig::default()
    };
    let mut stage = IdentityStage::new(config);
    for (i, id) in ["e1", "e2", "e3"].iter().enumerate() {
        stage.process(track(id, Some("a1"), None, i as i64), i as u64 + 1);
    }
    let out = stage.process(track("e4", Some("a1"), Some("u1"), 9), 4);
    assert_eq!(
        routed(&out),
        vec![
            (s("u1"), s("e2"), true),
            (s("u1"), s("e3"), true),
            (s("u1"), s("e4"), false)
        ]
    );
    // Still retracted: e1's sessions under a1 are deleted even though e1 stays with a1.
    assert!(out.iter().any(|o| matches!(o, IdentityOutput::Retract(_))));
    assert_eq!(stage.counters().reattribution_skipped, 1);
}

#[test]
fn unlinked_history_expires_by_event_time() {
    let config = IdentityConfig {
        unlinked_history_ttl_secs: 10,
        ..IdentityConfig::default()
    };
    let mut stage = IdentityStage::new(config);
    stage.process(track("e1", Some("a1"), None, 0), 1);
    stage.process(track("e2", Some("a2"), None, 10_000), 2); // exactly the TTL: kept
    assert_eq!(stage.counters().histories_expired, 0);
    stage.process(track("e3", Some("a2"), None, 10_001), 3);
    assert_eq!(stage.counters().histories_expired, 1);
    let out = stage.process(track("e4", Some("a1"), Some("u1"), 10_002), 4);
    assert_eq!(routed(&out), vec![(s("u1"), s("e4"), false)]);
}

#[test]
fn snapshot_round_trips_through_json() {
    let mut stage = IdentityStage::new(IdentityConfig::default());
    stage.process(track("e1", Some("a1"), None, 0), 1);
    stage.process(track("e2", Some("a2"), Some("u2"), 0), 2);
    let json = serde_json::to_string(&stage.snapshot()).expect("serialize");
    let restored: IdentitySnapshot = serde_json::from_str(&json).expect("deserialize");
    let mut resumed = IdentityStage::from_snapshot(IdentityConfig::default(), restored);
    let mut original = stage.clone();
    let e = track("e3", Some("a1"), Some("u1"), 5);
    assert_eq!(resumed.process(e.clone(), 3), original.process(e, 3));
}

#[test]
fn snapshot_by_reference_is_the_same_document() {
    let config = IdentityConfig {
        max_unlinked_history_events: 2,
        ..IdentityConfig::default()
    };
    let mut stage = IdentityStage::new(config);
    let same = |stage: &IdentityStage| {
        let owned = serde_json::to_string(&stage.snapshot()).expect("serialize");
        let by_ref = serde_json::to_string(&stage.snapshot_ref()).expect("serialize");
        assert_eq!(by_ref, owned);
    };
    same(&stage);
    // Unlinked histories (one overflowing), links, a conflict, ids out of order.
    for (i, anon) in ["a9", "a1", "a5", "a1", "a1"].iter().enumerate() {
        stage.process(
            track(&format!("e{i}"), Some(anon), None, i as i64),
            i as u64,
        );
    }
    stage.process(track("e7", Some("a3"), Some("u3"), 7), 7);
    stage.process(track("e8", Some("a5"), Some("u5"), 8), 8);
    stage.process(alias("e9", "a5", "u6", 9), 9);
    stage.process(track("e10", Some("a0"), Some("u0"), 10), 10);
    same(&stage);
}

#[test]
fn expiry_follows_the_last_event_across_a_snapshot() {
    let config = IdentityConfig {
        unlinked_history_ttl_secs: 10,
        ..IdentityConfig::default()
    };
    let mut original = IdentityStage::new(config.clone());
    original.process(track("e1", Some("a1"), None, 0), 1);
    original.process(track("e2", Some("a1"), None, 8_000), 2);
    let json = serde_json::to_string(&original.snapshot()).expect("serialize");
    let mut resumed =
        IdentityStage::from_snapshot(config, serde_json::from_str(&json).expect("deserialize"));
    for stage in [&mut original, &mut resumed] {
        // 10 s after the first event, not after the last: a1 is kept.
        stage.process(track("e3", Some("a2"), None, 10_001), 3);
        assert_eq!(stage.counters().histories_expired, 0);
        stage.process(track("e4", Some("a2"), None, 18_000), 4);
        assert_eq!(stage.counters().histories_expired, 0);
        stage.process(track("e5", Some("a2"), None, 18_001), 5);
        assert_eq!(stage.counters().histories_expired, 1);
        // a1's history is gone: the link re-sends nothing.
        let out = stage.process(track("e6", Some("a1"), Some("u1"), 18_002), 6);
        assert_eq!(routed(&out), vec![(s("u1"), s("e6"), false)]);
    }
    assert_eq!(original.snapshot(), resumed.snapshot());
}

/// The byte total the stage keeps, recomputed from scratch through a snapshot.
fn recomputed_bytes(stage: &IdentityStage) -> usize {
    IdentityStage::from_snapshot(
        IdentityConfig {
            max_unlinked_history_bytes: usize::MAX,
            ..IdentityConfig::default()
        },
        stage.snapshot(),
    )
    .unlinked_history_bytes()
}

#[test]
fn unlinked_histories_stay_within_the_byte_budget_evicting_the_idlest_first() {
    let one = super::approx_event_bytes(&track("e-0000", Some("a0"), None, 0));
    // Room for about ten events in all.
    let config = IdentityConfig {
        max_unlinked_history_bytes: one * 10 + one / 2,
        ..IdentityConfig::default()
    };
    let mut stage = IdentityStage::new(config.clone());
    let mut seq = 0;
    let mut visit = |stage: &mut IdentityStage, anon: &str| {
        seq += 1;
        stage.process(
            track(&format!("e-{seq:04}"), Some(anon), None, seq * 1000),
            seq as u64,
        );
    };
    // a0..a4 with two events each: ten events, within the budget.
    for a in ["a0", "a0", "a1", "a1", "a2", "a2", "a3", "a3", "a4", "a4"] {
        visit(&mut stage, a);
    }
    assert_eq!(stage.counters().histories_evicted, 0);
    assert_eq!(stage.unlinked_histories(), 5);
    // a0 comes back: eleven events; a1 is now the idlest and goes.
    visit(&mut stage, "a0");
    assert_eq!(stage.counters().histories_evicted, 1);
    assert_eq!(stage.unlinked_histories(), 4);
    // a5 arrives twice: the second makes eleven again; a2 goes.
    visit(&mut stage, "a5");
    assert_eq!(stage.counters().histories_evicted, 1);
    visit(&mut stage, "a5");
    assert_eq!(stage.counters().histories_evicted, 2);
    assert!(stage.unlinked_history_bytes() <= config.max_unlinked_history_bytes);
    assert_eq!(stage.unlinked_history_bytes(), recomputed_bytes(&stage));
    let out = stage.process(track("l-2", Some("a2"), Some("u2"), 20_000), 100);
    assert_eq!(
        routed(&out),
        vec![(s("u2"), s("l-2"), false)],
        "an evicted history re-sends nothing at its link"
    );
    let out = stage.process(track("l-0", Some("a0"), Some("u0"), 20_001), 101);
    assert_eq!(
        routed(&out),
        vec![
            (s("u0"), s("e-0001"), true),
            (s("u0"), s("e-0002"), true),
            (s("u0"), s("e-0011"), true),
            (s("u0"), s("l-0"), false)
        ],
        "a kept history is re-sent whole"
    );
    assert_eq!(stage.unlinked_history_bytes(), recomputed_bytes(&stage));
}

#[test]
fn byte_accounting_follows_overflow_links_and_expiry() {
    let config = IdentityConfig {
        max_unlinked_history_events: 3,
        unlinked_history_ttl_secs: 60,
        ..IdentityConfig::default()
    };
    let mut stage = IdentityStage::new(config.clone());
    for i in 0..5 {
        stage.process(
            track(&format!("e{i}"), Some("a1"), None, i * 1000),
            i as u64 + 1,
        );
        stage.process(
            track(&format!("f{i}"), Some("a2"), None, i * 1000),
            i as u64 + 100,
        );
    }
    assert_eq!(stage.unlinked_history_bytes(), recomputed_bytes(&stage));
    stage.process(track("g", Some("a1"), Some("u1"), 6000), 200);
    assert_eq!(stage.unlinked_history_bytes(), recomputed_bytes(&stage));
    // a2 expires when the partition's time passes its last event by the TTL.
    stage.process(track("h", Some("a3"), None, 4000 + 60_001), 201);
    assert_eq!(stage.counters().histories_expired, 1);
    assert_eq!(stage.unlinked_histories(), 1);
    assert_eq!(stage.unlinked_history_bytes(), recomputed_bytes(&stage));
    // A snapshot restored under a smaller budget evicts at once.
    let small = IdentityConfig {
        max_unlinked_history_bytes: 0,
        ..config
    };
    let restored = IdentityStage::from_snapshot(small, stage.snapshot());
    assert_eq!(restored.unlinked_histories(), 0);
    assert_eq!(restored.counters().histories_evicted, 1);
}

#[test]
fn unused_links_leave_memory_and_come_back_by_lookup_so_the_first_still_wins() {
    const DAY: i64 = 24 * 3600 * 1000;
    let config = IdentityConfig {
        link_ttl_days: 2,
        ..IdentityConfig::default()
    };
    let mut stage = IdentityStage::new(config.clone());
    let t0 = 100 * DAY;
    stage.process(track("e1", Some("a1"), Some("u1"), t0), 1);
    stage.process(track("e2", Some("a2"), Some("u2"), t0), 2);
    // a2 keeps being used; a1 does not.
    stage.process(track("e3", Some("a2"), None, t0 + 2 * DAY), 3);
    assert_eq!(stage.expire_links(), 0);
    assert_eq!(stage.link_count(), 2, "two days unused: kept");
    stage.process(track("e4", Some("a2"), None, t0 + 3 * DAY), 4);
    assert_eq!(stage.expire_links(), 0, "first found unused: only marked");
    assert_eq!(stage.link_count(), 2);
    assert_eq!(stage.expire_links(), 1, "still unused at the next call");
    assert_eq!(
        stage.link_count(),
        1,
        "three days unused: a1's link left memory"
    );
    assert_eq!(stage.counters().links_evicted, 1);
    assert!(stage.needs_lookup("a1"));
    assert!(!stage.needs_lookup("a2"), "held");
    assert!(!stage.needs_lookup("a9"), "never linked");

    // Evicted state survives a snapshot.
    let json = serde_json::to_string(&stage.snapshot_ref()).expect("json");
    let mut stage =
        IdentityStage::from_snapshot(config, serde_json::from_str(&json).expect("parse"));
    assert!(stage.needs_lookup("a1"));

    // The caller looks the link up and puts it back: a1 routes to u1 again, and a later
    // link of a1 to another user is a conflict, not a new link.
    stage.restore_link("a1", Some("u1"));
    assert_eq!(stage.counters().links_restored, 1);
    assert!(!stage.needs_lookup("a1"));
    let out = stage.process(track("e5", Some("a1"), None, t0 + 3 * DAY + 1), 5);
    assert_eq!(routed(&out), vec![(s("u1"), s("e5"), false)]);
    let out = stage.process(track("e6", Some("a1"), Some("u9"), t0 + 3 * DAY + 2), 6);
    assert!(
        out.iter()
            .any(|o| matches!(o, IdentityOutput::Conflict(c) if c.linked_user_id == "u1")),
        "{out:?}"
    );
    assert!(links(&out).is_empty());
}

#[test]
fn snapshots_from_before_link_expiry_still_load() {
    let old = r#"{"links":{"a1":"u1"},"unlinked":{},"watermark_ms":86400000,"counters":{"links":1,"conflicts":0,"reattributed_events":0,"reattribution_skipped":0,"histories_expired":0,"rejected":0}}"#;
    let stage = IdentityStage::from_snapshot(
        IdentityConfig::default(),
        serde_json::from_str(old).expect("old snapshot"),
    );
    assert_eq!(stage.linked_user("a1"), Some("u1"));
}

/// Incremental snapshots (README "Processor state"): a whole snapshot with the deltas
/// saved after it, laid over it in order, is the state saved last — over a seeded stream
/// of anonymous ids and users with links, conflicts, history overflow, TTL expiry, byte
/// budget evictions, links leaving memory and coming back, and an erasure, saved at
/// irregular points with a whole snapshot every 5th save. A delta names only the ids
/// changed since the save before it.
#[test]
fn identity_deltas_laid_over_their_base_give_the_whole_snapshot() {
    const DAY: i64 = 24 * 3600 * 1000;
    let config = IdentityConfig {
        max_unlinked_history_events: 4,
        unlinked_history_ttl_secs: 3 * 24 * 3600,
        max_unlinked_history_bytes: 12 * approx_event_bytes(&track("e0000", Some("a00"), None, 0)),
        link_ttl_days: 2,
    };
    let mut seed = 5u64;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let mut stage = IdentityStage::new(config.clone());
    stage.track_changes();
    let mut stored: Option<IdentitySnapshot> = None;
    let (mut saves, mut deltas, mut t) = (0, 0, 100 * DAY);
    for i in 0..800u64 {
        t += [0, 60_000, 3_600_000, DAY / 2][next(4) as usize];
        let anon = format!("a{:02}", next(40));
        let user = format!("u{}", next(6));
        let e = match next(10) {
            0 => track(&format!("e{i:04}"), Some(&anon), Some(&user), t),
            1 => alias(&format!("e{i:04}"), &anon, &user, t),
            2 | 3 => track(&format!("e{i:04}"), None, Some(&user), t),
            _ => track(&format!("e{i:04}"), Some(&anon), None, t),
        };
        if let Some(a) = e.anonymous_id.as_deref() {
            if stage.needs_lookup(a) {
                stage.restore_link(a, (next(2) == 0).then_some("u0"));
            }
        }
        stage.process(e, i + 1);
        if i % 37 == 0 {
            stage.expire_links();
        }
        if i == 500 {
            stage.erase(&["u1".to_string(), "a07".to_string()].into_iter().collect());
        }
        if i % (2 + i % 4) != 0 {
            continue;
        }
        saves += 1;
        match (stored.as_mut(), stage.delta_ref()) {
            (Some(base), Some(delta)) if saves % 5 != 0 => {
                let json = serde_json::to_string(&delta).expect("serialize");
                base.apply(serde_json::from_str(&json).expect("deserialize"));
                deltas += 1;
            }
            _ => {
                let json = serde_json::to_string(&stage.snapshot_ref()).expect("serialize");
                stored = Some(serde_json::from_str(&json).expect("deserialize"));
            }
        }
        stage.mark_saved();
        let json = |s: &IdentitySnapshot| serde_json::to_string(s).expect("serialize");
        let base = stored.as_ref().expect("saved");
        assert_eq!(json(base), json(&stage.snapshot()), "after event {i}");
    }
    let c = stage.counters();
    assert!(deltas > 100, "{deltas} deltas");
    assert!(
        c.links_evicted > 0
            && c.links_restored > 0
            && c.histories_expired > 0
            && c.histories_evicted > 0
            && c.reattribution_skipped > 0
            && c.conflicts > 0,
        "{c:?}"
    );
}

#[test]
fn a_save_gives_back_the_change_set_a_burst_filled() {
    let mut stage = IdentityStage::new(IdentityConfig::default());
    stage.track_changes();
    let n = 4 * delta::KEEP_CHANGED;
    for i in 0..n {
        let (anon, user) = (format!("a{i}"), format!("u{i}"));
        stage.process(
            track(&format!("e{i}"), Some(&anon), Some(&user), 0),
            i as u64 + 1,
        );
    }
    stage.mark_saved();
    let room = stage.changed.as_ref().map_or(0, |c| c.capacity());
    assert!(room <= 2 * delta::KEEP_CHANGED, "room for {room} ids kept");
}
