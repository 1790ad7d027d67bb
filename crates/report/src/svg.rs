//! Charts drawn as inline SVG on the server, so the page shows its figures without a
//! script and without fetching anything. Each chart is a pure function of the figures it
//! draws; the figures themselves (with their `data-value`s) are in the tables beside it.

use std::fmt::Write as _;

use crate::text::{esc, int, pct};

/// Colours of the segments, in order (colour-blind-safe, Okabe–Ito).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

const WIDTH: f64 = 760.0;
const LABEL_W: f64 = 230.0;
const BAR_W: f64 = 330.0;

/// A funnel: one bar per step, as long as the attempts that reached it (relative to the
/// widest), the part that dropped there shaded, and the counts beside it.
pub fn funnel(labels: &[String], reached: &[u64], dropped: &[u64], title: &str) -> String {
    let row = 40.0;
    let top = 26.0;
    let height = top + row * labels.len() as f64 + 8.0;
    let max = reached.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        esc(title)
    );
    let _ = write!(
        s,
        r##"<rect x="{LABEL_W}" y="4" width="12" height="12" fill="#2f6db5"/><text x="{x1}" y="14" class="lbl">reached the step</text><rect x="{x2}" y="4" width="12" height="12" fill="#d1495b"/><text x="{x3}" y="14" class="lbl">of which dropped there</text>"##,
        x1 = LABEL_W + 16.0,
        x2 = LABEL_W + 150.0,
        x3 = LABEL_W + 166.0,
    );
    for (i, label) in labels.iter().enumerate() {
        let y = top + row * i as f64;
        let r = reached.get(i).copied().unwrap_or(0);
        let d = dropped.get(i).copied().unwrap_or(0);
        let w = BAR_W * r as f64 / max;
        let dw = BAR_W * d as f64 / max;
        let _ = write!(
            s,
            r#"<text x="{x}" y="{ty}" class="lbl" text-anchor="end">{n}. {label}</text>"#,
            x = LABEL_W - 10.0,
            ty = y + 19.0,
            n = i + 1,
            label = esc(&clip(label, 30))
        );
        let _ = write!(
            s,
            r##"<rect x="{LABEL_W}" y="{y0}" width="{BAR_W}" height="26" fill="#eef1f5"/><rect x="{LABEL_W}" y="{y0}" width="{w:.1}" height="26" fill="#2f6db5"><title>{r} reached</title></rect>"##,
            y0 = y + 2.0,
            r = int(r),
        );
        if d > 0 {
            let _ = write!(
                s,
                r##"<rect x="{x:.1}" y="{y0}" width="{dw:.1}" height="26" fill="#d1495b"><title>{d} dropped here</title></rect>"##,
                x = LABEL_W + w - dw,
                y0 = y + 2.0,
                d = int(d),
            );
        }
        let drop = if i + 1 == labels.len() {
            " converted".to_string()
        } else if r > 0 {
            format!(" · {} dropped", pct(d as f64 / r as f64))
        } else {
            String::new()
        };
        let _ = write!(
            s,
            r#"<text x="{x}" y="{ty}" class="val">{r}{drop}</text>"#,
            x = LABEL_W + BAR_W + 10.0,
            ty = y + 19.0,
            r = int(r),
        );
    }
    s.push_str("</svg>");
    s
}

/// A funnel per segment, normalised: for each step one bar per segment, as long as the
/// share of the segment's step-1 attempts that reached the step, so segments of any size
/// compare at a glance.
pub fn segments(labels: &[String], segments: &[(String, Vec<u64>)], title: &str) -> String {
    let bar_h = 12.0;
    let gap = 10.0;
    let legend_h = 24.0;
    let group = bar_h * segments.len() as f64 + gap;
    let height = legend_h + group * labels.len() as f64 + 6.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        esc(title)
    );
    let mut x = LABEL_W;
    for (j, (name, _)) in segments.iter().enumerate() {
        let c = PALETTE[j % PALETTE.len()];
        let name = segment_name(name);
        let _ = write!(
            s,
            r#"<rect x="{x}" y="4" width="12" height="12" fill="{c}"/><text x="{tx}" y="14" class="lbl">{n}</text>"#,
            tx = x + 16.0,
            n = esc(&clip(&name, 18))
        );
        x += 30.0 + 7.0 * name.chars().count().min(18) as f64;
    }
    for (i, label) in labels.iter().enumerate() {
        let y = legend_h + group * i as f64;
        let _ = write!(
            s,
            r#"<text x="{x}" y="{ty}" class="lbl" text-anchor="end">{n}. {label}</text>"#,
            x = LABEL_W - 10.0,
            ty = y + group / 2.0,
            n = i + 1,
            label = esc(&clip(label, 30))
        );
        for (j, (name, reached)) in segments.iter().enumerate() {
            let first = reached.first().copied().unwrap_or(0);
            let r = reached.get(i).copied().unwrap_or(0);
            let share = if first > 0 {
                r as f64 / first as f64
            } else {
                0.0
            };
            let by = y + bar_h * j as f64;
            let c = PALETTE[j % PALETTE.len()];
            let _ = write!(
                s,
                r#"<rect x="{LABEL_W}" y="{by}" width="{w:.1}" height="{h}" fill="{c}"><title>{n}: {r} reached ({p} of step 1)</title></rect><text x="{tx:.1}" y="{ty}" class="small">{p}</text>"#,
                w = BAR_W * share,
                h = bar_h - 2.0,
                n = esc(&segment_name(name)),
                r = int(r),
                p = pct(share),
                tx = LABEL_W + BAR_W * share + 4.0,
                ty = by + bar_h - 3.0,
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A histogram of follow-up delays: one column per bucket, green when the whole bucket is
/// within the target, red when it is all past it, amber when the target cuts it.
pub fn histogram(buckets: &[(String, u64, Tone)], title: &str) -> String {
    let height = 230.0;
    let base = 190.0;
    let left = 20.0;
    let col = (WIDTH - left * 2.0) / buckets.len().max(1) as f64;
    let max = buckets.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        esc(title)
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{base}" x2="{x2}" y2="{base}" stroke="#888"/>"##,
        x2 = WIDTH - left
    );
    for (i, (label, n, tone)) in buckets.iter().enumerate() {
        let h = 160.0 * *n as f64 / max;
        let x = left + col * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{bx:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{c}"><title>{label}: {v}</title></rect><text x="{cx:.1}" y="{ty:.1}" class="val" text-anchor="middle">{v}</text><text x="{cx:.1}" y="{ly}" class="small" text-anchor="middle">{label}</text>"#,
            bx = x + 6.0,
            y = base - h,
            w = col - 12.0,
            c = tone.colour(),
            label = esc(label),
            v = int(*n),
            cx = x + col / 2.0,
            ty = base - h - 5.0,
            ly = base + 16.0,
        );
    }
    s.push_str("</svg>");
    s
}

/// Stores: per store three bars (footfall, identified visits, purchases) on one scale,
/// the conversion (purchases ÷ footfall) at the end.
pub fn stores(stores: &[(String, [u64; 3])], title: &str) -> String {
    const SERIES: [(&str, &str); 3] = [
        ("footfall", "#8da9c4"),
        ("identified visits", "#0072B2"),
        ("purchases", "#009E73"),
    ];
    let bar_h = 13.0;
    let gap = 12.0;
    let legend_h = 24.0;
    let group = bar_h * 3.0 + gap;
    let height = legend_h + group * stores.len() as f64 + 4.0;
    let max = stores
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        esc(title)
    );
    let mut x = LABEL_W;
    for (name, c) in SERIES {
        let _ = write!(
            s,
            r#"<rect x="{x}" y="4" width="12" height="12" fill="{c}"/><text x="{tx}" y="14" class="lbl">{name}</text>"#,
            tx = x + 16.0
        );
        x += 40.0 + 7.0 * name.len() as f64;
    }
    for (i, (store, values)) in stores.iter().enumerate() {
        let y = legend_h + group * i as f64;
        let conversion = if values[0] > 0 {
            format!(" · {} conversion", pct(values[2] as f64 / values[0] as f64))
        } else {
            String::new()
        };
        let _ = write!(
            s,
            r#"<text x="{x}" y="{ty}" class="lbl" text-anchor="end">{n}</text>"#,
            x = LABEL_W - 10.0,
            ty = y + group / 2.0,
            n = esc(&clip(store, 30))
        );
        for (j, ((name, c), v)) in SERIES.iter().zip(values).enumerate() {
            let by = y + bar_h * j as f64;
            let w = BAR_W * *v as f64 / max;
            let extra = if j == 2 { conversion.as_str() } else { "" };
            let _ = write!(
                s,
                r#"<rect x="{LABEL_W}" y="{by}" width="{w:.1}" height="{h}" fill="{c}"><title>{name}: {v}</title></rect><text x="{tx:.1}" y="{ty}" class="small">{v}{extra}</text>"#,
                h = bar_h - 2.0,
                v = int(*v),
                tx = LABEL_W + w + 4.0,
                ty = by + bar_h - 3.0,
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Footfall by hour of the day (columns) with the purchases inside them (darker), and
/// the conversion above each column.
pub fn hours(hours: &[(u8, u64, u64)], title: &str) -> String {
    let height = 220.0;
    let base = 180.0;
    let left = 20.0;
    let col = (WIDTH - left * 2.0) / 24.0;
    let max = hours.iter().map(|h| h.1.max(h.2)).max().unwrap_or(0).max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        esc(title)
    );
    let _ = write!(
        s,
        r##"<rect x="{left}" y="2" width="12" height="12" fill="#8da9c4"/><text x="{x1}" y="12" class="lbl">footfall</text><rect x="{x2}" y="2" width="12" height="12" fill="#009E73"/><text x="{x3}" y="12" class="lbl">purchases (conversion above)</text><line x1="{left}" y1="{base}" x2="{x4}" y2="{base}" stroke="#888"/>"##,
        x1 = left + 16.0,
        x2 = left + 100.0,
        x3 = left + 116.0,
        x4 = WIDTH - left,
    );
    for hour in 0..24u8 {
        let x = left + col * f64::from(hour);
        let (f, p) = hours
            .iter()
            .find(|h| h.0 == hour)
            .map_or((0, 0), |h| (h.1, h.2));
        let fh = 130.0 * f as f64 / max;
        let ph = 130.0 * p as f64 / max;
        let _ = write!(
            s,
            r##"<rect x="{bx:.1}" y="{fy:.1}" width="{w:.1}" height="{fh:.1}" fill="#8da9c4"><title>{hour}:00 footfall {fv}</title></rect><rect x="{bx:.1}" y="{py:.1}" width="{w:.1}" height="{ph:.1}" fill="#009E73"><title>{hour}:00 purchases {pv}</title></rect><text x="{cx:.1}" y="{ly}" class="small" text-anchor="middle">{hour}</text>"##,
            bx = x + 3.0,
            w = col - 6.0,
            fy = base - fh,
            py = base - ph,
            fv = int(f),
            pv = int(p),
            cx = x + col / 2.0,
            ly = base + 14.0,
        );
        if f > 0 {
            let _ = write!(
                s,
                r#"<text x="{cx:.1}" y="{ty:.1}" class="small" text-anchor="middle">{c:.0}%</text>"#,
                cx = x + col / 2.0,
                ty = base - fh - 4.0,
                c = 100.0 * p as f64 / f as f64,
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Where a bucket stands against a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Within.
    Good,
    /// Partly.
    Mixed,
    /// Past.
    Bad,
}

impl Tone {
    fn colour(self) -> &'static str {
        match self {
            Tone::Good => "#2e8540",
            Tone::Mixed => "#e0a526",
            Tone::Bad => "#d1495b",
        }
    }
}

/// A segment's name for people: `''` (attempts stored without values) named as such.
pub fn segment_name(value: &str) -> String {
    if value.is_empty() {
        "(no value)".into()
    } else {
        value.to_string()
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}
