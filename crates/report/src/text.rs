//! Figures written for people, and text made safe for HTML: shared by the page
//! ([`crate::html`]) and its charts ([`crate::svg`]).

/// HTML-escape text (also for attribute values).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// 1234567 → "1,234,567".
pub fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 0.449 → "44.9 %".
pub fn pct(ratio: f64) -> String {
    format!("{:.1} %", ratio * 100.0)
}

/// Minutes for people: "45 min", "2 h 10 min", "1 d 3 h".
pub fn duration(minutes: f64) -> String {
    let m = minutes.round().max(0.0) as u64;
    match m {
        0..=59 => format!("{m} min"),
        60..=1439 => {
            let (h, r) = (m / 60, m % 60);
            if r == 0 {
                format!("{h} h")
            } else {
                format!("{h} h {r} min")
            }
        }
        _ => {
            let (d, h) = (m / 1440, (m % 1440) / 60);
            if h == 0 {
                format!("{d} d")
            } else {
                format!("{d} d {h} h")
            }
        }
    }
}
