use super::*;
use crate::funnels::{Outcomes, Segment, StepCount};
use crate::scorecard::{Measure, Scorecard, ScorecardRow, Threshold};
use crate::sla::{SlaBucket, SlaReport, SlaRow};
use crate::stores::{AuditRow, HourRow, StoreRow, Stores};
use crate::Period;

fn sample() -> Report {
    let steps = vec![
        StepCount {
            reached: 1652,
            dropped: 744,
        },
        StepCount {
            reached: 908,
            dropped: 0,
        },
    ];
    Report {
        generated_ms: 0,
        period: Period {
            since_ms: Some(0),
            until_ms: Some(86_400_000),
        },
        database: "db".into(),
        funnels: vec![
            FunnelReport {
                name: "web<checkout>".into(),
                step_labels: vec!["Product Viewed".into(), "Order \"Completed\"".into()],
                window_secs: 3600,
                outcomes: Outcomes {
                    attempts: 1652,
                    converted: 908,
                    dropped: 744,
                    excluded: 0,
                },
                steps: steps.clone(),
                breakdown_keys: vec!["channel".into()],
                segments: vec![
                    Segment {
                        value: String::new(),
                        steps: steps.clone(),
                    },
                    Segment {
                        value: "web".into(),
                        steps,
                    },
                ],
            },
            FunnelReport {
                name: "quiet".into(),
                step_labels: vec!["A".into()],
                window_secs: 60,
                outcomes: Outcomes::default(),
                steps: vec![StepCount::default()],
                breakdown_keys: vec![],
                segments: vec![],
            },
        ],
        sla: Some(SlaReport {
            funnel: "service_recovery".into(),
            step_names: ("Complaint Filed".into(), "Follow-up Completed".into()),
            target_minutes: 1440.0,
            segment_key: Some("properties.team".into()),
            all: SlaRow {
                by_segment: 0,
                segment: String::new(),
                complaints: 10,
                followed_up: 8,
                never: 2,
                within_target: 6,
                median_minutes: 130.5,
                p90_minutes: 1500.25,
            },
            segments: vec![],
            buckets: vec![
                SlaBucket {
                    from_minutes: 0,
                    to_minutes: Some(15),
                    followed_up: 3,
                },
                SlaBucket {
                    from_minutes: 15,
                    to_minutes: None,
                    followed_up: 5,
                },
            ],
            waiting: 1,
            waiting_past_target: 0,
        }),
        sla_funnel: "service_recovery".into(),
        scorecard: Scorecard {
            rows: vec![ScorecardRow {
                event: "Follow-up Completed".into(),
                stage: "service".into(),
                channel: "call_center".into(),
                events: 40,
                customer_days: 40,
                next_stage_customers: 10,
                complaint_customers: 2,
                converted_attempts: 5,
                nps_n: 0,
                promoters: 0,
                detractors: 0,
                csat_n: 20,
                csat_sum: 70.0,
                ces_n: 0,
                ces_sum: 0.0,
            }],
            thresholds: vec![Threshold {
                event: "Follow-up Completed".into(),
                measure: Measure::Csat,
                floor: Some(4.0),
                target: Some(4.5),
            }],
            first_day: "1970-01-01".into(),
            end_day: "1970-01-02".into(),
        },
        stores: Stores {
            stores: vec![StoreRow {
                store_id: "store-1".into(),
                footfall: 200,
                identified_visits: 30,
                purchases: 12,
            }],
            audits: vec![AuditRow {
                store_id: "store-2".into(),
                audits: 2,
                mean_score: 81.5,
                min_score: 70.0,
                items_passed: 17,
                items_checked: 20,
            }],
            hours: vec![HourRow {
                hour_of_day: 9,
                footfall: 50,
                identified_visits: 4,
                purchases: 3,
            }],
        },
    }
}

#[test]
fn figures_carry_their_exact_values() {
    let page = render(&sample());
    for needle in [
        r#"data-key="funnel/web&lt;checkout&gt;/step/1/reached" data-value="1652">1,652<"#,
        r#"data-key="funnel/web&lt;checkout&gt;/step/1/dropoff" data-value="0.4503631961259080""#,
        r#"data-key="funnel/web&lt;checkout&gt;/segment/web/step/2/reached" data-value="908""#,
        r#"data-key="sla/median_minutes" data-value="130.5">2 h 11 min<"#,
        r#"data-key="sla/bucket/1" data-value="5""#,
        r#"data-key="sla/within_target_share" data-value="0.75">75.0 %<"#,
        r#"class="num below" data-key="scorecard/Follow-up Completed/service/call_center/csat" data-value="3.5""#,
        r#"data-key="scorecard/Follow-up Completed/service/call_center/csat_responses" data-value="20">(20)<"#,
        r#"data-key="store/store-1/conversion" data-value="0.06""#,
        r#"data-key="store/store-2/audit_mean" data-value="81.5""#,
        r#"data-key="store_hour/9/purchases" data-value="3""#,
    ] {
        let needle = needle.replace("0.4503631961259080", &(744.0f64 / 1652.0).to_string());
        assert!(page.contains(&needle), "missing {needle}");
    }
}

#[test]
fn highlights_name_the_worst_step_and_the_floors() {
    let page = render(&sample());
    assert!(page.contains("loses most at step 1 (Product Viewed)"));
    assert!(page.contains(
        "Worse than the catalog's floor: Follow-up Completed (call_center) CSAT 3.50 (floor 4)."
    ));
    assert!(page.contains("Meeting their target: none."));
}

#[test]
fn text_is_escaped_and_nothing_is_fetched() {
    let page = render(&sample());
    assert!(!page.contains("web<checkout>"));
    assert!(page.contains("Order &quot;Completed&quot;"));
    for external in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!page.contains(external), "page refers to {external}");
    }
}

#[test]
fn empty_sections_say_so() {
    let mut r = sample();
    let page = render(&r);
    assert!(page.contains("No attempts of quiet closed in this period."));
    assert!(page.contains("(no value)"), "the empty segment is named");
    r.sla = None;
    r.funnels.clear();
    r.scorecard.rows.clear();
    r.stores = Stores::default();
    let page = render(&r);
    assert!(page.contains("The funnels file defines no funnel."));
    assert!(page.contains("No funnel named <code>service_recovery</code>"));
    assert!(page.contains("No touchpoints in this period."));
    assert!(page.contains("No footfall, store visits, store purchases or audits in this period."));
}

#[test]
fn formats() {
    assert_eq!(int(0), "0");
    assert_eq!(int(1_234_567), "1,234,567");
    assert_eq!(int(100), "100");
    assert_eq!(duration(14.6), "15 min");
    assert_eq!(duration(130.5), "2 h 11 min");
    assert_eq!(duration(1500.0), "1 d 1 h");
    assert_eq!(sla::bucket_label(0, Some(15)), "<15m");
    assert_eq!(sla::bucket_label(60, Some(120)), "1h–2h");
    assert_eq!(sla::bucket_label(10080, None), "≥7d");
}
