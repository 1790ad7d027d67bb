//! The report's period: `--since` / `--until`, each a UTC date (`YYYY-MM-DD`) or an
//! RFC 3339 time. `since` is inclusive; `until` is exclusive, and a date there means the
//! end of that day, so `--since 2026-11-01 --until 2026-11-30` is all of November.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `[since_ms, until_ms)`, epoch milliseconds; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    /// First included instant.
    pub since_ms: Option<i64>,
    /// First excluded instant.
    pub until_ms: Option<i64>,
}

impl Period {
    /// The lower bound for SQL (`i64::MIN` when unbounded).
    pub fn lower(&self) -> i64 {
        self.since_ms.unwrap_or(i64::MIN)
    }

    /// The upper bound for SQL (`i64::MAX` when unbounded).
    pub fn upper(&self) -> i64 {
        self.until_ms.unwrap_or(i64::MAX)
    }

    /// No instant is inside.
    pub fn is_empty(&self) -> bool {
        self.lower() >= self.upper()
    }

    /// For people: "2026-11-01 00:00 UTC – 2026-12-01 00:00 UTC", "all time", ...
    pub fn describe(&self) -> String {
        match (self.since_ms, self.until_ms) {
            (None, None) => "all time".into(),
            (Some(s), None) => format!("from {}", format_ms(s)),
            (None, Some(u)) => format!("before {}", format_ms(u)),
            (Some(s), Some(u)) => format!("{} – {}", format_ms(s), format_ms(u)),
        }
    }
}

/// Which end a date stands for: a `--since` date is that day's start, an `--until` date
/// the next day's start (the whole day is in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `--since`.
    Start,
    /// `--until`.
    End,
}

/// Parse `--since` / `--until`: a UTC date (`YYYY-MM-DD`) or an RFC 3339 time
/// (`2026-11-30T12:00:00Z`, `2026-11-30T13:00:00+01:00`), as epoch ms.
pub fn parse_time(text: &str, end: End) -> Result<i64, String> {
    let at = match OffsetDateTime::parse(text.trim(), &Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let date = time::Date::parse(text.trim(), &format).map_err(|_| {
                format!("{text:?}: expected a date YYYY-MM-DD (UTC) or an RFC 3339 time such as 2026-11-30T12:00:00Z")
            })?;
            let date = match end {
                End::Start => date,
                End::End => date
                    .next_day()
                    .ok_or_else(|| format!("{text:?}: no day after it"))?,
            };
            date.midnight().assume_utc()
        }
    };
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|e| e.to_string())
}

/// `2026-11-30 12:00 UTC` (seconds when not zero).
pub fn format_ms(ms: i64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    let f = if t.second() == 0 {
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC")
    } else {
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC")
    };
    t.format(&f).unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times() {
        assert_eq!(parse_time("1970-01-02", End::Start), Ok(86_400_000));
        assert_eq!(parse_time("1970-01-02", End::End), Ok(2 * 86_400_000));
        assert_eq!(
            parse_time("1970-01-01T01:00:00+01:00", End::End),
            Ok(0),
            "an explicit time is taken as it is"
        );
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z", End::Start), Ok(1500));
        let e = parse_time("yesterday", End::Start).unwrap_err();
        assert!(e.contains("YYYY-MM-DD"), "{e}");
    }

    #[test]
    fn periods() {
        assert!(!Period::default().is_empty());
        assert_eq!(Period::default().describe(), "all time");
        let p = Period {
            since_ms: Some(86_400_000),
            until_ms: Some(86_400_000),
        };
        assert!(p.is_empty());
        assert_eq!(
            Period {
                since_ms: Some(0),
                until_ms: Some(90_061_000)
            }
            .describe(),
            "1970-01-01 00:00 UTC – 1970-01-02 01:01:01 UTC"
        );
    }
}
