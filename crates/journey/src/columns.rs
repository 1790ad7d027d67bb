//! How the row types' values are written as ClickHouse columns.
//!
//! The rows this crate emits ([`crate::TouchpointRow`], [`crate::SessionRow`],
//! [`crate::FunnelAttemptRow`], [`crate::Link`], [`crate::Conflict`]) are the tables' rows
//! themselves: the processor inserts them as they are (with `clickhouse::Row` derived
//! under the `clickhouse` feature), so each table's columns are declared once. The
//! tables run on ClickHouse 18.16, which has no enums in our schema, no `Bool` and no
//! `DateTime64`: enums are stored as their name, flags as `UInt8`, and each time is an
//! `Int64` of ms next to a `Date`/`DateTime` partition column derived from it. Serialized
//! as JSON (the processor's insert deduplication token hashes it) the rows read the same
//! way.

use serde::Serializer;

/// ClickHouse `Date` of an epoch-ms time: days since the epoch (UTC), clamped to the type.
pub fn days(ms: i64) -> u16 {
    u16::try_from(ms.div_euclid(86_400_000).max(0)).unwrap_or(u16::MAX)
}

/// ClickHouse `DateTime` of an epoch-ms time: seconds since the epoch, clamped to the type.
pub fn secs(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000).max(0)).unwrap_or(u32::MAX)
}

/// An enum stored in a `String` column under its name.
pub(crate) trait Named: Copy {
    /// The stored name.
    fn name(self) -> &'static str;
}

/// [`Named`] by the enum's own `as_str`.
macro_rules! named_by_as_str {
    ($($t:ty),*) => {$(
        impl Named for $t {
            fn name(self) -> &'static str {
                self.as_str()
            }
        }
    )*};
}

named_by_as_str!(
    crate::Stage,
    crate::Channel,
    crate::Outcome,
    crate::LinkType
);

/// `serialize_with` for a `String` column holding an enum's name.
pub(crate) fn name<S: Serializer, T: Named>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value.name())
}

/// `serialize_with` for an `Array(String)` column of enum names.
pub(crate) fn names<S: Serializer, T: Named>(values: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(values.iter().map(|v| v.name()))
}

/// `serialize_with` for a `UInt8` 0/1 column.
pub(crate) fn flag<S: Serializer>(value: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u8(u8::from(*value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times() {
        assert_eq!(days(0), 0);
        assert_eq!(days(86_400_000 * 3 + 5), 3);
        assert_eq!(secs(1_999), 1);
        assert_eq!(days(-5), 0);
        assert_eq!(secs(-5), 0);
    }

    #[test]
    fn rows_serialize_as_their_columns() {
        let session = crate::SessionRow {
            session_id: "s".into(),
            customer_id: "c".into(),
            started_at: 5,
            start_ms: 5_000,
            end_ms: 6_000,
            event_count: 3,
            first_event_id: "f".into(),
            entry_event: "a".into(),
            exit_event: "b".into(),
            channels: vec![crate::Channel::Web, crate::Channel::CallCenter],
            is_deleted: true,
            version: 9,
        };
        assert_eq!(
            serde_json::to_string(&session).unwrap(),
            r#"{"session_id":"s","customer_id":"c","started_at":5,"start_ms":5000,"end_ms":6000,"event_count":3,"first_event_id":"f","entry_event":"a","exit_event":"b","channels":["web","call_center"],"is_deleted":1,"version":9}"#
        );
        let link = crate::Link {
            anonymous_id: "a".into(),
            user_id: "u".into(),
            linked_at_ms: 5,
            link_event_id: "l".into(),
            link_type: crate::LinkType::BothIds,
            version: 3,
        };
        assert_eq!(
            serde_json::to_string(&link).unwrap(),
            r#"{"anonymous_id":"a","user_id":"u","linked_at_ms":5,"link_event_id":"l","link_type":"both_ids","version":3}"#
        );
    }
}
