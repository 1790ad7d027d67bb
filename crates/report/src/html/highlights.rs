//! The page's first section: what a person should look at first, drawn from the sections
//! below it — each funnel's largest drop-off, the touchpoints worse than their catalog
//! floor and those meeting their target, and how complaints were followed up.

use std::fmt::Write as _;

use super::{duration, esc, int, pct, worst_step};
use crate::scorecard::{Measure, ScorecardRow, Standing};
use crate::Report;

fn measure_value(row: &ScorecardRow, m: Measure) -> Option<f64> {
    match m {
        Measure::Nps => row.nps(),
        Measure::Csat => row.csat(),
        Measure::Ces => row.ces(),
        Measure::NextStage => row.next_stage(),
    }
}

fn shown(m: Measure, v: f64) -> String {
    match m {
        Measure::Nps => format!("{v:.0}"),
        Measure::Csat | Measure::Ces => format!("{v:.2}"),
        Measure::NextStage => pct(v),
    }
}

/// The section.
pub fn render(h: &mut String, r: &Report) {
    h.push_str(r#"<section id="highlights"><h2>Highlights</h2><ul class="highlights">"#);
    for f in &r.funnels {
        let Some(w) = worst_step(&f.steps) else {
            continue;
        };
        let s = &f.steps[w];
        let _ = write!(
            h,
            r#"<li><b>{}</b> loses most at step {} ({}): <span class="fig" data-key="highlight/{}/largest_dropoff" data-value="{}">{}</span> of {} attempts dropped there.</li>"#,
            esc(&f.name),
            w + 1,
            esc(&f.step_labels[w]),
            esc(&f.name),
            s.dropoff().unwrap_or(0.0),
            pct(s.dropoff().unwrap_or(0.0)),
            int(s.reached),
        );
    }
    let mut below = Vec::new();
    let mut met = Vec::new();
    for row in &r.scorecard.rows {
        for t in r
            .scorecard
            .thresholds
            .iter()
            .filter(|t| t.event == row.event)
        {
            let Some(v) = measure_value(row, t.measure) else {
                continue;
            };
            let what = format!(
                "{} ({}) {} {}",
                esc(&row.event),
                esc(&row.channel),
                t.measure.label(),
                shown(t.measure, v)
            );
            match t.standing(v) {
                Standing::BelowFloor => below.push(format!(
                    "{what} (floor {})",
                    t.floor.map(|f| f.to_string()).unwrap_or_default()
                )),
                Standing::MeetsTarget => met.push(format!(
                    "{what} (target {})",
                    t.target.map(|f| f.to_string()).unwrap_or_default()
                )),
                Standing::Neutral => {}
            }
        }
    }
    if r.scorecard.thresholds.is_empty() {
        h.push_str("<li>The catalog sets no floors or targets.</li>");
    } else {
        let _ = write!(
            h,
            r#"<li class="{}">Worse than the catalog's floor: {}.</li><li>Meeting their target: {}.</li>"#,
            if below.is_empty() { "" } else { "bad" },
            if below.is_empty() {
                "none".to_string()
            } else {
                below.join("; ")
            },
            if met.is_empty() {
                "none".to_string()
            } else {
                met.join("; ")
            },
        );
    }
    if let Some(s) = r.sla.as_ref().filter(|s| s.all.complaints > 0) {
        let a = &s.all;
        let within = if a.followed_up > 0 {
            pct(a.within_target as f64 / a.followed_up as f64)
        } else {
            "–".into()
        };
        let _ = write!(
            h,
            "<li>Complaints: {} closed, {} of the follow-ups within {}, {} never followed up, {} still waiting.</li>",
            int(a.complaints),
            within,
            esc(&duration(s.target_minutes)),
            int(a.never),
            int(s.waiting),
        );
    }
    h.push_str("</ul></section>");
}
