//! Why a message is refused: a bounded reason code and a human-readable detail.
//!
//! The code is a metric label and the `reason` of the response's `rejected` entries and
//! of the dead-letter record; the detail names the field.

/// Why a message was rejected. The label is a bounded metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Not valid JSON or not an object.
    Malformed,
    /// `type` missing or not one of track|page|screen|identify|alias.
    UnknownType,
    /// Neither `anonymousId` nor `userId`.
    MissingIdentity,
    /// An id is a placeholder (`null`, `undefined`, `0`, ...).
    PlaceholderId,
    /// `track` without `event`.
    MissingEvent,
    /// `alias` without `previousId` and `userId`.
    MissingAliasIds,
    /// A timestamp is not ISO-8601.
    InvalidTimestamp,
    /// A field has the wrong JSON type.
    InvalidField,
    /// The event time is before `collector.event_time_floor` (any endpoint).
    EventTimeBeforeFloor,
    /// The event time is more than `collector.max_event_age_days` before receipt, on a
    /// live endpoint (all but `/v1/import`).
    EventTimeTooOld,
    /// A track event's properties break its catalog entry's schema (README "Feedback
    /// and stores"): a required property missing, a wrong type, a value out of range.
    InvalidProperty,
    /// An id names an erased person (`collector.suppression = "reject"`); not
    /// dead-lettered.
    Suppressed,
}

impl RejectReason {
    /// Metric label and stable machine-readable code.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingIdentity => "missing_identity",
            RejectReason::PlaceholderId => "placeholder_id",
            RejectReason::MissingEvent => "missing_event",
            RejectReason::MissingAliasIds => "missing_alias_ids",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::EventTimeBeforeFloor => "event_time_before_floor",
            RejectReason::EventTimeTooOld => "event_time_too_old",
            RejectReason::InvalidProperty => "invalid_property",
            RejectReason::Suppressed => "suppressed",
        }
    }
}

/// A rejected message: the reason code and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Code.
    pub reason: RejectReason,
    /// Explanation naming the field.
    pub detail: String,
}

/// A rejection for `reason` with its detail.
pub(crate) fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}
