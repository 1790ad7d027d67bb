//! The page: one HTML document with its CSS, its SVG charts and a small sorting script
//! inline, so it opens anywhere, offline, as one file.
//!
//! Every figure is written twice: as text for people, and as `data-key`/`data-value`
//! (the exact number, unformatted) for machines, e.g.
//! `<td data-key="funnel/web_checkout/step/2/reached" data-value="908">908</td>`.
//! The keys are listed in README "Report". The script records its own errors on the
//! root element (`data-script-errors`) and marks a finished start (`data-script-ready`),
//! so a headless browser's DOM dump shows whether the page ran cleanly.

use std::fmt::Write as _;

mod highlights;
mod scorecard;
mod sla;
mod stores;

use crate::funnels::FunnelReport;
use crate::period::format_ms;
use crate::svg::{self, segment_name};
// The page's text formats, public here where they always were.
pub use crate::text::{duration, esc, int, pct};
use crate::Report;

/// A figure in a table cell: text for people, the exact value for machines.
fn td(key: &str, value: &str, text: &str) -> String {
    format!(
        r#"<td class="num" data-key="{}" data-value="{}">{}</td>"#,
        esc(key),
        esc(value),
        esc(text)
    )
}

/// A figure inline.
fn span(key: &str, value: &str, text: &str) -> String {
    format!(
        r#"<span class="fig" data-key="{}" data-value="{}">{}</span>"#,
        esc(key),
        esc(value),
        esc(text)
    )
}

/// A count cell.
fn td_int(key: &str, n: u64) -> String {
    td(key, &n.to_string(), &int(n))
}

/// A ratio cell (`data-value` the ratio, 0–1; "–" and no value when undefined).
fn td_ratio(key: &str, ratio: Option<f64>) -> String {
    match ratio {
        Some(r) => td(key, &r.to_string(), &pct(r)),
        None => format!(r#"<td class="num" data-key="{}">–</td>"#, esc(key)),
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

const STYLE: &str = r#"
:root { --ink:#1d2430; --muted:#5b6573; --line:#d9dee5; --bg:#f6f8fb; --card:#fff; --accent:#2f6db5;
        --good:#2e8540; --bad:#c0392b; --warn:#b7791f; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", sans-serif;
       color: var(--ink); background: var(--bg); font-size: 15px; line-height: 1.45; }
header { background: #1d2a3a; color: #fff; padding: 18px 32px 14px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #c8d2de; font-size: 13px; }
nav { margin-top: 10px; font-size: 13px; }
nav a { color: #9cc3f0; margin-right: 16px; text-decoration: none; }
main { max-width: 1200px; margin: 0 auto; padding: 8px 24px 40px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 16px 22px 20px; margin: 18px 0; }
section > h2 { margin: 0 0 4px; font-size: 19px; }
.lead { color: var(--muted); margin: 0 0 12px; font-size: 13.5px; }
article { border-top: 1px solid var(--line); padding-top: 12px; margin-top: 14px; }
article h3 { margin: 0 0 4px; font-size: 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 10px 0 4px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px; background: #fbfcfe; }
.card .k { font-size: 12px; color: var(--muted); }
.card .v { font-size: 20px; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 13.5px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left; }
th { background: #f0f3f7; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: " ↕"; color: #a0a8b3; font-size: 11px; }
table.sortable th[aria-sort="ascending"]::after { content: " ↑"; color: var(--ink); }
table.sortable th[aria-sort="descending"]::after { content: " ↓"; color: var(--ink); }
.below { background: #fde8e6; color: var(--bad); font-weight: 600; }
.above { background: #e5f4e8; color: var(--good); font-weight: 600; }
.empty { color: var(--muted); font-style: italic; background: #f4f6f9; padding: 10px 14px; border-radius: 6px; }
svg.chart { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.wide { overflow-x: auto; }
td.name { white-space: nowrap; }
svg .lbl { font-size: 13px; fill: #1d2430; }
svg .val { font-size: 12.5px; fill: #1d2430; font-weight: 600; }
svg .small { font-size: 11px; fill: #5b6573; }
.hot { background: #fde8e6; }
.sr { position: absolute; left: -9999px; }
.muted { color: var(--muted); font-style: italic; }
ul.highlights { margin: 6px 0 0; padding-left: 20px; }
ul.highlights li { margin: 3px 0; }
ul.highlights li.bad { color: var(--bad); }
td small { color: var(--muted); font-weight: normal; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 10px; }
"#;

/// Records script errors on the root element before anything else runs.
const ERROR_HOOK: &str = r#"
(function () {
  var root = document.documentElement;
  function record(message) {
    root.setAttribute('data-script-errors', String(Number(root.getAttribute('data-script-errors') || 0) + 1));
    root.setAttribute('data-script-error', String(message));
  }
  window.addEventListener('error', function (e) { record(e.message || 'error'); });
  window.addEventListener('unhandledrejection', function (e) { record(e.reason || 'rejection'); });
})();
"#;

/// Sorts `table.sortable` by a clicked header (numbers by `data-value`, else text); a
/// `#sort=TABLE_ID:COLUMN:asc|desc` fragment sorts on load, for links and tests.
const SORTER: &str = r#"
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-value');
    if (v !== null && v !== '' && !isNaN(Number(v))) return { n: Number(v) };
    return { t: cell.textContent.trim().toLowerCase() };
  }
  function compare(a, b) {
    if (a.n !== undefined && b.n !== undefined) return a.n - b.n;
    if (a.n !== undefined) return -1;
    if (b.n !== undefined) return 1;
    return a.t < b.t ? -1 : a.t > b.t ? 1 : 0;
  }
  function sortBy(table, col, dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var c = compare(key(r1.cells[col]), key(r2.cells[col]));
      return dir === 'desc' ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === col) th.setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
      else th.removeAttribute('aria-sort');
    });
    table.setAttribute('data-sorted', col + ':' + dir);
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.tabIndex = 0;
      function go() { sortBy(table, i, th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc'); }
      th.addEventListener('click', go);
      th.addEventListener('keydown', function (e) { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); go(); } });
    });
  });
  var m = /^#sort=([^:]+):(\d+):(asc|desc)$/.exec(window.location.hash);
  if (m) {
    var t = document.getElementById(m[1]);
    if (t && t.tHead) sortBy(t, Number(m[2]), m[3]);
  }
  document.documentElement.setAttribute('data-script-ready', '1');
})();
"#;

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Touchstream report — {period}</title><script>{ERROR_HOOK}</script><style>{STYLE}</style></head>
<body><header><h1>Touchstream report</h1><p>Period: <span data-key="period/since_ms" data-value="{since}">{period}</span><span data-key="period/until_ms" data-value="{until}"></span> · database <code>{db}</code> · generated {generated}</p>
<nav><a href="#highlights">Highlights</a><a href="#funnels">Funnels</a><a href="#sla">Complaint follow-up</a><a href="#scorecard">Touchpoint scorecard</a><a href="#stores">Stores</a></nav></header><main>
"##,
        period = esc(&r.period.describe()),
        since = r.period.since_ms.map(|v| v.to_string()).unwrap_or_default(),
        until = r.period.until_ms.map(|v| v.to_string()).unwrap_or_default(),
        db = esc(&r.database),
        generated = esc(&format_ms(r.generated_ms)),
    );
    highlights::render(&mut h, r);
    funnels(&mut h, &r.funnels);
    sla::render(&mut h, r.sla.as_ref(), &r.sla_funnel);
    scorecard::render(&mut h, &r.scorecard);
    stores::render(&mut h, &r.stores);
    let _ = writeln!(
        h,
        r#"</main><footer>Touchstream · every figure on this page also carries its exact value in <code>data-value</code> · queries: crates/report/sql/</footer><script>{SORTER}</script></body></html>"#
    );
    h
}

fn funnels(h: &mut String, funnels: &[FunnelReport]) {
    h.push_str(r#"<section id="funnels"><h2>Funnels</h2><p class="lead">Closed attempts in the period, counted by the time they closed. Drop-off at a step: attempts that reached it and not the next, of those that reached it. Excluded attempts and skipped optional steps count in no step.</p>"#);
    if funnels.is_empty() {
        h.push_str(r#"<p class="empty">The funnels file defines no funnel.</p></section>"#);
        return;
    }
    for f in funnels {
        funnel(h, f);
    }
    h.push_str("</section>");
}

fn funnel(h: &mut String, f: &FunnelReport) {
    let k = |rest: &str| format!("funnel/{}/{rest}", f.name);
    let _ = write!(
        h,
        r#"<article class="funnel" data-funnel="{}"><h3>{}</h3><p class="lead">{} · window {}</p>"#,
        esc(&f.name),
        esc(&f.name),
        esc(&f.step_labels.join(" → ")),
        duration(f.window_secs as f64 / 60.0)
    );
    let o = &f.outcomes;
    if o.attempts == 0 {
        let _ = write!(
            h,
            r#"<p class="empty" data-key="{}" data-value="0">No attempts of {} closed in this period.</p></article>"#,
            esc(&k("attempts")),
            esc(&f.name)
        );
        return;
    }
    let _ = write!(
        h,
        r#"<div class="cards"><div class="card"><div class="k">attempts closed</div><div class="v">{}</div></div><div class="card"><div class="k">converted</div><div class="v">{}</div></div><div class="card"><div class="k">conversion</div><div class="v">{}</div></div><div class="card"><div class="k">dropped</div><div class="v">{}</div></div><div class="card"><div class="k">excluded</div><div class="v">{}</div></div></div>"#,
        span(&k("attempts"), &o.attempts.to_string(), &int(o.attempts)),
        span(&k("converted"), &o.converted.to_string(), &int(o.converted)),
        match ratio(o.converted, o.attempts - o.excluded) {
            Some(c) => span(&k("conversion"), &c.to_string(), &pct(c)),
            None => "–".into(),
        },
        span(&k("dropped"), &o.dropped.to_string(), &int(o.dropped)),
        span(&k("excluded"), &o.excluded.to_string(), &int(o.excluded)),
    );
    let reached: Vec<u64> = f.steps.iter().map(|s| s.reached).collect();
    let dropped: Vec<u64> = f.steps.iter().map(|s| s.dropped).collect();
    h.push_str(&svg::funnel(
        &f.step_labels,
        &reached,
        &dropped,
        &format!("{}: attempts reaching each step", f.name),
    ));
    let _ = write!(
        h,
        r#"<table class="steps" id="steps-{}"><thead><tr><th>step</th><th>event</th><th class="num">reached</th><th class="num">dropped here</th><th class="num">drop-off</th><th class="num">of step 1</th></tr></thead><tbody>"#,
        esc(&f.name)
    );
    let first = f.steps.first().map_or(0, |s| s.reached);
    let worst = worst_step(&f.steps);
    for (i, s) in f.steps.iter().enumerate() {
        let n = i + 1;
        let _ = write!(
            h,
            r#"<tr{}><td>{n}</td><td>{}</td>{}{}{}{}</tr>"#,
            if Some(i) == worst {
                r#" class="hot""#
            } else {
                ""
            },
            esc(&f.step_labels[i]),
            td_int(&k(&format!("step/{n}/reached")), s.reached),
            td_int(&k(&format!("step/{n}/dropped")), s.dropped),
            td_ratio(&k(&format!("step/{n}/dropoff")), s.dropoff()),
            td_ratio(&k(&format!("step/{n}/of_first")), ratio(s.reached, first)),
        );
    }
    h.push_str("</tbody></table>");
    if let Some(w) = worst {
        let _ = write!(
            h,
            r#"<p class="lead">Largest drop-off: step {} ({}), highlighted.</p>"#,
            w + 1,
            esc(&f.step_labels[w])
        );
    }
    if !f.breakdown_keys.is_empty() {
        breakdown(h, f);
    }
    h.push_str("</article>");
}

/// The step (0-based) with the highest drop-off, the last step aside (it converts).
fn worst_step(steps: &[crate::StepCount]) -> Option<usize> {
    steps
        .iter()
        .enumerate()
        .take(steps.len().saturating_sub(1))
        .filter_map(|(i, s)| s.dropoff().map(|d| (i, d)))
        .filter(|(_, d)| *d > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

fn breakdown(h: &mut String, f: &FunnelReport) {
    let _ = write!(h, r#"<h4>By {}</h4>"#, esc(&f.breakdown_keys.join(" / ")));
    if f.segments.is_empty() {
        h.push_str(
            r#"<p class="empty">No attempts with breakdown values closed in this period.</p>"#,
        );
        return;
    }
    let series: Vec<(String, Vec<u64>)> = f
        .segments
        .iter()
        .map(|s| (s.value.clone(), s.steps.iter().map(|c| c.reached).collect()))
        .collect();
    h.push_str(&svg::segments(
        &f.step_labels,
        &series,
        &format!(
            "{}: share of each segment's entrants reaching each step",
            f.name
        ),
    ));
    let _ = write!(
        h,
        r#"<div class="wide"><table class="segments sortable" id="segments-{}"><thead><tr><th>{}</th>"#,
        esc(&f.name),
        esc(&f.breakdown_keys.join(" / "))
    );
    for (i, l) in f.step_labels.iter().enumerate() {
        let _ = write!(
            h,
            r#"<th class="num" title="{}">{}. reached</th><th class="num">drop-off</th>"#,
            esc(l),
            i + 1
        );
    }
    h.push_str("</tr></thead><tbody>");
    for s in &f.segments {
        let _ = write!(h, "<tr><td>{}</td>", esc(&segment_name(&s.value)));
        for (i, c) in s.steps.iter().enumerate() {
            let n = i + 1;
            let base = format!("funnel/{}/segment/{}/step/{n}", f.name, s.value);
            h.push_str(&td_int(&format!("{base}/reached"), c.reached));
            h.push_str(&td_ratio(&format!("{base}/dropoff"), c.dropoff()));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>");
}

#[cfg(test)]
mod tests;
