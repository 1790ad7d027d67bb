//! The complaint → follow-up section: the figures as cards, the delay distribution as
//! a histogram coloured against the target, and the same figures per segment.

use std::fmt::Write as _;

use super::{duration, esc, int, pct, ratio, span, td, td_int, td_ratio};
use crate::sla::SlaReport;
use crate::svg::{self, segment_name, Tone};

/// A delay bucket for people: "<15m", "1h–2h", "≥7d".
pub fn bucket_label(from: u64, to: Option<u64>) -> String {
    let short = |m: u64| match m {
        0 => "0".to_string(),
        m if m % 1440 == 0 => format!("{}d", m / 1440),
        m if m % 60 == 0 => format!("{}h", m / 60),
        m => format!("{m}m"),
    };
    match to {
        Some(t) if from == 0 => format!("<{}", short(t)),
        Some(t) => format!("{}–{}", short(from), short(t)),
        None => format!("≥{}", short(from)),
    }
}

/// The section.
pub fn render(h: &mut String, s: Option<&SlaReport>, funnel: &str) {
    h.push_str(r#"<section id="sla"><h2>Complaint → follow-up</h2>"#);
    let Some(s) = s else {
        let _ = write!(
            h,
            r#"<p class="empty">No funnel named <code>{}</code> is defined in the funnels file, so there is no complaint → follow-up to show.</p></section>"#,
            esc(funnel)
        );
        return;
    };
    let _ = write!(
        h,
        r#"<p class="lead">Funnel <code>{}</code>: time from <em>{}</em> to <em>{}</em> over the complaints closed in the period; target: follow-up within {}.</p>"#,
        esc(&s.funnel),
        esc(&s.step_names.0),
        esc(&s.step_names.1),
        esc(&duration(s.target_minutes))
    );
    let a = &s.all;
    let waiting = format!(
        r#"<div class="card"><div class="k">still waiting</div><div class="v">{}</div></div><div class="card"><div class="k">waiting past target</div><div class="v">{}</div></div>"#,
        span("sla/waiting", &s.waiting.to_string(), &int(s.waiting)),
        span(
            "sla/waiting_past_target",
            &s.waiting_past_target.to_string(),
            &int(s.waiting_past_target)
        ),
    );
    if a.complaints == 0 {
        let _ = write!(
            h,
            r#"<p class="empty" data-key="sla/complaints" data-value="0">No complaints closed in this period.</p><div class="cards">{waiting}</div></section>"#
        );
        return;
    }
    let within = ratio(a.within_target, a.followed_up);
    let _ = write!(
        h,
        r#"<div class="cards"><div class="card"><div class="k">complaints</div><div class="v">{}</div></div><div class="card"><div class="k">followed up</div><div class="v">{}</div></div><div class="card"><div class="k">never followed up</div><div class="v">{}</div></div><div class="card"><div class="k">follow-ups within target</div><div class="v">{}</div></div><div class="card"><div class="k">median</div><div class="v">{}</div></div><div class="card"><div class="k">p90</div><div class="v">{}</div></div>{waiting}</div>"#,
        span(
            "sla/complaints",
            &a.complaints.to_string(),
            &int(a.complaints)
        ),
        span(
            "sla/followed_up",
            &a.followed_up.to_string(),
            &int(a.followed_up)
        ),
        span("sla/never", &a.never.to_string(), &int(a.never)),
        match within {
            Some(w) => span("sla/within_target_share", &w.to_string(), &pct(w)),
            None => "–".into(),
        },
        figure_minutes("sla/median_minutes", a.followed_up, a.median_minutes),
        figure_minutes("sla/p90_minutes", a.followed_up, a.p90_minutes),
    );
    let bars: Vec<(String, u64, Tone)> = s
        .buckets
        .iter()
        .map(|b| {
            let tone = match b.to_minutes {
                Some(t) if t as f64 <= s.target_minutes => Tone::Good,
                _ if b.from_minutes as f64 >= s.target_minutes => Tone::Bad,
                _ => Tone::Mixed,
            };
            (
                bucket_label(b.from_minutes, b.to_minutes),
                b.followed_up,
                tone,
            )
        })
        .collect();
    h.push_str(&svg::histogram(
        &bars,
        "Follow-ups by delay after the complaint (green: within target)",
    ));
    h.push_str(r#"<table class="buckets"><thead><tr><th>delay</th>"#);
    for (label, _, _) in &bars {
        let _ = write!(h, r#"<th class="num">{}</th>"#, esc(label));
    }
    h.push_str("</tr></thead><tbody><tr><td>follow-ups</td>");
    for (i, b) in s.buckets.iter().enumerate() {
        h.push_str(&td_int(&format!("sla/bucket/{i}"), b.followed_up));
    }
    h.push_str("</tr></tbody></table>");
    if let Some(key) = &s.segment_key {
        let _ = write!(
            h,
            r#"<h4>By {key}</h4><table class="sortable" id="sla-segments"><thead><tr><th>{key}</th><th class="num">complaints</th><th class="num">followed up</th><th class="num">never</th><th class="num">within target</th><th class="num">median</th><th class="num">p90</th></tr></thead><tbody>"#,
            key = esc(key)
        );
        for r in &s.segments {
            let base = format!("sla/segment/{}", r.segment);
            let _ = write!(
                h,
                "<tr><td>{}</td>{}{}{}{}{}{}</tr>",
                esc(&segment_name(&r.segment)),
                td_int(&format!("{base}/complaints"), r.complaints),
                td_int(&format!("{base}/followed_up"), r.followed_up),
                td_int(&format!("{base}/never"), r.never),
                td_ratio(
                    &format!("{base}/within_target_share"),
                    ratio(r.within_target, r.followed_up)
                ),
                td_minutes(
                    &format!("{base}/median_minutes"),
                    r.followed_up,
                    r.median_minutes
                ),
                td_minutes(&format!("{base}/p90_minutes"), r.followed_up, r.p90_minutes),
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>");
}

fn figure_minutes(key: &str, n: u64, minutes: f64) -> String {
    if n == 0 {
        return "–".into();
    }
    span(key, &minutes.to_string(), &duration(minutes))
}

fn td_minutes(key: &str, n: u64, minutes: f64) -> String {
    if n == 0 {
        return format!(r#"<td class="num" data-key="{}">–</td>"#, esc(key));
    }
    td(key, &minutes.to_string(), &duration(minutes))
}
