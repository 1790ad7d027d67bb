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

/// The event times a request accepts (README "Time correction"): never before the
/// configured floor, and on the live endpoints not older than the configured age.
///
/// Why: a device with a reset clock (epoch 0, 2001), a buggy SDK or a hostile client can
/// date events decades back. Stored, such an event lands in its own monthly partition
/// (one request spread across many months makes ClickHouse refuse the insert on servers
/// with `max_partitions_per_insert_block`) and in a session and funnel state long gone.
/// `/v1/import` is the door for real history, so only the floor applies there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeWindow {
    /// Earliest accepted event time, epoch ms.
    pub floor_ms: i64,
    /// Oldest accepted event time on this endpoint, epoch ms (`None`: only the floor).
    pub oldest_ms: Option<i64>,
}

impl EventTimeWindow {
    /// Whether `event_time_ms` is accepted; the rejection names the bound.
    pub fn check(&self, event_time_ms: i64) -> Result<(), super::Rejection> {
        use super::reject::{reject, RejectReason};
        if event_time_ms < self.floor_ms {
            return Err(reject(
                RejectReason::EventTimeBeforeFloor,
                format!(
                    "event time {} is before the floor {} (collector.event_time_floor)",
                    format_timestamp(event_time_ms),
                    format_timestamp(self.floor_ms)
                ),
            ));
        }
        match self.oldest_ms {
            Some(oldest) if event_time_ms < oldest => Err(reject(
                RejectReason::EventTimeTooOld,
                format!(
                    "event time {} is older than {} (collector.max_event_age_days); send history to /v1/import",
                    format_timestamp(event_time_ms),
                    format_timestamp(oldest)
                ),
            )),
            _ => Ok(()),
        }
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
    fn the_window_rejects_before_the_floor_and_too_old() {
        let floor = 946_684_800_000; // 2000-01-01
        let live = EventTimeWindow {
            floor_ms: floor,
            oldest_ms: Some(RECEIVED - 30 * 86_400_000),
        };
        let import = EventTimeWindow {
            floor_ms: floor,
            oldest_ms: None,
        };
        assert!(live.check(RECEIVED).is_ok());
        assert!(live.check(RECEIVED - 30 * 86_400_000).is_ok());
        let e = live.check(RECEIVED - 30 * 86_400_000 - 1).unwrap_err();
        assert_eq!(e.reason.label(), "event_time_too_old");
        assert!(e.detail.contains("/v1/import"), "{}", e.detail);
        assert!(import.check(RECEIVED - 3_000 * 86_400_000).is_ok());
        assert!(import.check(floor).is_ok());
        for w in [live, import] {
            let e = w.check(floor - 1).unwrap_err();
            assert_eq!(e.reason.label(), "event_time_before_floor");
            assert_eq!(
                w.check(0).unwrap_err().reason.label(),
                "event_time_before_floor"
            );
            assert_eq!(
                w.check(i64::MIN).unwrap_err().reason.label(),
                "event_time_before_floor"
            );
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
