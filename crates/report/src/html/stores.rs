//! The stores table and chart: footfall → identified visits → purchases per store, the
//! conversion, and audit scores beside them.

use std::fmt::Write as _;

use super::{esc, td, td_int, td_ratio};
use crate::stores::Stores;
use crate::svg;

/// The section.
pub fn render(h: &mut String, s: &Stores) {
    h.push_str(r#"<section id="stores"><h2>Stores</h2><p class="lead">Per store over the period: people counted at the door → signed-in customers who checked in (identified visits) → purchases; conversion = purchases ÷ footfall. Audits (mystery shopper, staff) done there: mean and lowest score (0–100), checklist items passed.</p>"#);
    let ids = s.ids();
    if ids.is_empty() {
        h.push_str(r#"<p class="empty">No footfall, store visits, store purchases or audits in this period.</p></section>"#);
        return;
    }
    let bars: Vec<(String, [u64; 3])> = s
        .stores
        .iter()
        .map(|r| {
            (
                r.store_id.clone(),
                [r.footfall, r.identified_visits, r.purchases],
            )
        })
        .collect();
    if !bars.is_empty() {
        h.push_str(&svg::stores(
            &bars,
            "Footfall, identified visits and purchases per store",
        ));
    }
    h.push_str(r#"<div class="wide"><table class="sortable" id="stores-table"><thead><tr><th>store</th><th class="num">footfall</th><th class="num">identified visits</th><th class="num">purchases</th><th class="num">conversion</th><th class="num">audits</th><th class="num">mean audit score</th><th class="num">lowest</th><th class="num">items passed</th></tr></thead><tbody>"#);
    for id in &ids {
        let base = format!("store/{id}");
        let _ = write!(h, "<tr><td>{}</td>", esc(id));
        match s.stores.iter().find(|r| &r.store_id == id) {
            Some(r) => {
                h.push_str(&td_int(&format!("{base}/footfall"), r.footfall));
                h.push_str(&td_int(&format!("{base}/identified_visits"), r.identified_visits));
                h.push_str(&td_int(&format!("{base}/purchases"), r.purchases));
                h.push_str(&td_ratio(&format!("{base}/conversion"), r.conversion()));
            }
            None => h.push_str(r#"<td class="num">–</td><td class="num">–</td><td class="num">–</td><td class="num">–</td>"#),
        }
        match s.audits.iter().find(|a| &a.store_id == id) {
            Some(a) => {
                h.push_str(&td_int(&format!("{base}/audits"), a.audits));
                h.push_str(&td(
                    &format!("{base}/audit_mean"),
                    &a.mean_score.to_string(),
                    &format!("{:.1}", a.mean_score),
                ));
                h.push_str(&td(
                    &format!("{base}/audit_min"),
                    &a.min_score.to_string(),
                    &format!("{:.1}", a.min_score),
                ));
                h.push_str(&td_ratio(
                    &format!("{base}/items_passed_share"),
                    (a.items_checked > 0).then(|| a.items_passed as f64 / a.items_checked as f64),
                ));
            }
            None => h.push_str(r#"<td class="num">0</td><td class="num">–</td><td class="num">–</td><td class="num">–</td>"#),
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>");
    if !s.hours.is_empty() {
        let hours: Vec<(u8, u64, u64)> = s
            .hours
            .iter()
            .map(|r| (r.hour_of_day, r.footfall, r.purchases))
            .collect();
        h.push_str("<h4>By hour of the day (UTC), all stores</h4>");
        h.push_str(&svg::hours(
            &hours,
            "Footfall and purchases by hour of the day",
        ));
        h.push_str(r#"<div class="wide"><table class="hours"><thead><tr><th>hour</th>"#);
        for r in &s.hours {
            let _ = write!(h, r#"<th class="num">{}</th>"#, r.hour_of_day);
        }
        h.push_str("</tr></thead><tbody><tr><td>footfall</td>");
        for r in &s.hours {
            h.push_str(&td_int(
                &format!("store_hour/{}/footfall", r.hour_of_day),
                r.footfall,
            ));
        }
        h.push_str("</tr><tr><td>purchases</td>");
        for r in &s.hours {
            h.push_str(&td_int(
                &format!("store_hour/{}/purchases", r.hour_of_day),
                r.purchases,
            ));
        }
        h.push_str("</tr></tbody></table></div>");
    }
    h.push_str("</section>");
}
