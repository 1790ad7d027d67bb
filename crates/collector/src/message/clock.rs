//! Client timestamps and the event time the collector derives from them (docs/design.md,
//! "Time correction").

use time::format_description::well_known::{Iso8601, Rfc3339};
use time::OffsetDateTime;
use touchstream_core::event::MAX_FUTURE_MS;

/// Parse an ISO-8601 timestamp to epoch ms.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let dt = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(s, &Iso8601::DEFAULT))
        .ok()?;
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Epoch ms as RFC 3339 UTC with milliseconds (`2026-11-25T15:40:00.000Z`), the form
/// Segment SDKs write and [`parse_timestamp`] reads: for generators, benches and tests.
pub fn format_timestamp(ms: i64) -> String {
    let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

/// docs/design.md §2 time correction: skew-correct with `sentAt` when both are present, else the
/// client timestamp, else receipt time; never more than 10 minutes in the future.
pub fn event_time_ms(
    received_at_ms: i64,
    timestamp_ms: Option<i64>,
    sent_at_ms: Option<i64>,
) -> i64 {
    let t = match (timestamp_ms, sent_at_ms) {
        (Some(ts), Some(sent)) => received_at_ms.saturating_sub(sent.saturating_sub(ts)),
        (Some(ts), None) => ts,
        _ => received_at_ms,
    };
    if t > received_at_ms.saturating_add(MAX_FUTURE_MS) {
        received_at_ms
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVED: i64 = 1_764_072_000_000; // 2025-11-25T12:00:00Z

    #[test]
    fn formatted_timestamps_parse_back() {
        for ms in [
            0,
            RECEIVED,
            RECEIVED + 1,
            RECEIVED - 999,
            253_402_300_799_999,
        ] {
            let text = format_timestamp(ms);
            assert_eq!(text.len(), 24, "{text}");
            assert_eq!(parse_timestamp(&text), Some(ms), "{text}");
        }
    }

    #[test]
    fn worked_time_examples() {
        // Client clock 1 h behind: event 2 s before sending, so 2 s before receipt.
        assert_eq!(
            event_time_ms(
                RECEIVED,
                parse_timestamp("2025-11-25T11:00:00.000Z"),
                parse_timestamp("2025-11-25T11:00:02.000Z")
            ),
            RECEIVED - 2000
        );
        // No sentAt: the timestamp as sent.
        assert_eq!(
            event_time_ms(RECEIVED, Some(RECEIVED - 5000), None),
            RECEIVED - 5000
        );
        // Nothing: receipt time.
        assert_eq!(event_time_ms(RECEIVED, None, Some(RECEIVED)), RECEIVED);
        // 10 min ahead is kept, 10 min + 1 ms is clamped.
        assert_eq!(
            event_time_ms(RECEIVED, Some(RECEIVED + MAX_FUTURE_MS), None),
            RECEIVED + MAX_FUTURE_MS
        );
        assert_eq!(
            event_time_ms(RECEIVED, Some(RECEIVED + MAX_FUTURE_MS + 1), None),
            RECEIVED
        );
        // Skew correction can also land in the future (timestamp after sentAt): clamped.
        assert_eq!(
            event_time_ms(RECEIVED, Some(RECEIVED + 3_600_000), Some(RECEIVED)),
            RECEIVED
        );
        // Offsets other than Z are honoured.
        assert_eq!(parse_timestamp("2025-11-25T13:00:00+01:00"), Some(RECEIVED));
        assert_eq!(
            parse_timestamp("2025-11-25T12:00:00.123Z"),
            Some(RECEIVED + 123)
        );
    }
}
