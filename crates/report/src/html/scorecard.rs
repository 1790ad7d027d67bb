//! The scorecard table: one row per touchpoint, sortable, each measure marked against
//! the catalog's floor (worse: red) and target (met: green).

use std::fmt::Write as _;

use super::{esc, int, pct, td_int, td_ratio};
use crate::scorecard::{Measure, Scorecard, ScorecardRow, Standing};

/// A measure's cell: the value, its response count, its standing.
fn cell(
    card: &Scorecard,
    row: &ScorecardRow,
    measure: Measure,
    value: Option<f64>,
    n: Option<u64>,
) -> String {
    let key = format!(
        "scorecard/{}/{}/{}/{}",
        row.event,
        row.stage,
        row.channel,
        measure.name()
    );
    let Some(v) = value else {
        return format!(r#"<td class="num" data-key="{}">–</td>"#, esc(&key));
    };
    let threshold = card.threshold(&row.event, measure);
    let (class, note) = match threshold.map(|t| t.standing(v)) {
        Some(Standing::BelowFloor) => (" below", " · below floor"),
        Some(Standing::MeetsTarget) => (" above", " · target met"),
        _ => ("", ""),
    };
    let text = match measure {
        Measure::Nps => format!("{v:.0}"),
        Measure::Csat | Measure::Ces => format!("{v:.2}"),
        Measure::NextStage => pct(v),
    };
    let mut title = String::new();
    if let Some(t) = threshold {
        if let Some(f) = t.floor {
            let _ = write!(title, "floor {f}");
        }
        if let Some(g) = t.target {
            if !title.is_empty() {
                title.push_str(", ");
            }
            let _ = write!(title, "target {g}");
        }
    }
    let count = n
        .map(|n| {
            format!(
                r#" <small data-key="{}_responses" data-value="{n}">({})</small>"#,
                esc(&key),
                int(n)
            )
        })
        .unwrap_or_default();
    format!(
        r#"<td class="num{class}" data-key="{}" data-value="{v}"{}>{}{count}<span class="sr">{note}</span></td>"#,
        esc(&key),
        if title.is_empty() {
            String::new()
        } else {
            format!(r#" title="{}""#, esc(&title))
        },
        esc(&text),
    )
}

/// The section.
pub fn render(h: &mut String, card: &Scorecard) {
    let _ = write!(
        h,
        r#"<section id="scorecard"><h2>Touchpoint scorecard</h2><p class="lead">Per touchpoint (event × stage × channel), {}. <em>Next stage</em> and <em>complaints</em>: share of the touchpoint's customers (per day) who reached a later journey stage, or filed a complaint, within 7 days. NPS in points (promoters − detractors), CSAT 1–5, CES 1–7 (lower is less effort), with the number of answers. Marked red: worse than the catalog's floor; green: target met. Click a column to sort.</p>"#,
        esc(&card.describe_days())
    );
    if card.rows.is_empty() {
        h.push_str(r#"<p class="empty">No touchpoints in this period.</p></section>"#);
        return;
    }
    if card.thresholds.is_empty() {
        h.push_str(
            r#"<p class="lead">The catalog sets no floors or targets, so nothing is marked.</p>"#,
        );
    } else {
        let list: Vec<String> = card
            .thresholds
            .iter()
            .map(|t| {
                let mut parts = Vec::new();
                if let Some(f) = t.floor {
                    parts.push(format!("floor {f}"));
                }
                if let Some(g) = t.target {
                    parts.push(format!("target {g}"));
                }
                format!(
                    "{} {}: {}",
                    esc(&t.event),
                    t.measure.label(),
                    parts.join(", ")
                )
            })
            .collect();
        let _ = write!(
            h,
            r#"<p class="lead">Catalog floors and targets: {}.</p>"#,
            list.join("; ")
        );
    }
    h.push_str(r#"<div class="wide"><table class="sortable" id="scorecard-table"><thead><tr><th>touchpoint</th><th>stage</th><th>channel</th><th class="num">events</th><th class="num">next stage</th><th class="num">complaints</th><th class="num" title="converted funnel attempts that passed through the touchpoint">converted through</th><th class="num">NPS</th><th class="num">CSAT</th><th class="num">CES</th></tr></thead><tbody>"#);
    for r in &card.rows {
        let base = format!("scorecard/{}/{}/{}", r.event, r.stage, r.channel);
        let _ = write!(
            h,
            r#"<tr><td class="name">{}</td><td>{}</td><td>{}</td>{}{}{}{}{}{}{}</tr>"#,
            if r.event.is_empty() {
                r#"<span class="muted" title="identify and alias calls carry no event name">(no event name)</span>"#.to_string()
            } else {
                esc(&r.event)
            },
            esc(&r.stage),
            esc(&r.channel),
            td_int(&format!("{base}/events"), r.events),
            cell(card, r, Measure::NextStage, r.next_stage(), None),
            td_ratio(&format!("{base}/complaint_share"), r.complaint_share()),
            td_int(&format!("{base}/converted_attempts"), r.converted_attempts),
            cell(card, r, Measure::Nps, r.nps(), Some(r.nps_n)),
            cell(card, r, Measure::Csat, r.csat(), Some(r.csat_n)),
            cell(card, r, Measure::Ces, r.ces(), Some(r.ces_n)),
        );
    }
    h.push_str("</tbody></table></div></section>");
}
