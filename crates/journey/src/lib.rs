//! Touchstream's journey logic: the deterministic state machines of the stream processor,
//! with no I/O (docs/design.md §4–5).
//!
//! The processor runs in two Kafka stages and this crate is the pure core of both:
//!
//! 1. [`IdentityStage`] (partitioned by anonymous id): placeholder ids, anonymous → user
//!    links (first wins, conflicts recorded), `customer_id` routing, and re-attribution of
//!    events seen before a link ([`RoutedEvent`] with `reattributed`, then [`Retract`]).
//! 2. [`JourneyStage`] (partitioned by customer id): watermark and reorder buffer, late
//!    events, the touchpoint [`Catalog`], sessions and anchored funnel attempts
//!    ([`FunnelSet`]), emitted as ClickHouse-shaped rows ([`JourneyOutput`]).
//!
//! The I/O layer decodes messages into [`JourneyEvent`], forwards stage outputs, writes
//! rows, and persists both stages' snapshots with the offsets they correspond to. Every
//! output is a function of the input order and `seq`s, so replaying from a snapshot
//! writes identical rows with identical versions (idempotent under `FINAL`).

pub mod columns;
mod event;
mod hash;
mod identity;
mod journey;

use std::path::{Path, PathBuf};

pub use event::{JourneyEvent, MessageType, Properties, Retract, RoutedEvent};
pub use identity::{
    approx_event_bytes, Conflict, IdentityConfig, IdentityCounters, IdentityDelta,
    IdentityDeltaRef, IdentityOutput, IdentitySnapshot, IdentitySnapshotRef, IdentityStage, Link,
    LinkType, RejectReason,
};
pub use journey::catalog::{Catalog, Channel, EventEntry, Measures, Stage, Threshold, Touchpoint};
pub use journey::funnel::{
    Attribution, Breakdown, Dimension, Exclusion, Filter, Funnel, FunnelSet, Order, Outcome, Step,
    ALL, MAX_BREAKDOWN_SERIES, MAX_BREAKDOWN_VALUE_BYTES, MAX_STEPS, OTHER,
};
pub use journey::properties::{FeedbackKind, PropertyRule, PropertyType, PropertyViolation, Scale};
pub use journey::rows::{
    no_text, CustomerTouchpointRow, FeedbackRow, FunnelAttemptRow, FunnelOpenAttemptRow,
    JourneyOutput, SessionRow, TouchpointRow,
};
pub use journey::{
    funnel_fingerprint, FeedbackCounters, FunnelChange, FunnelChangeKind, JourneyConfig,
    JourneyCounters, JourneyDelta, JourneyDeltaRef, JourneySnapshot, JourneySnapshotRef,
    JourneyStage, OpenAttemptCount, Origin, StoredAttempt, Tally,
};

/// Why journey configuration could not be loaded. Always permanent: fix the file.
#[derive(Debug, thiserror::Error)]
pub enum JourneyError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file did not parse or failed validation; the message names the key or value.
    #[error("invalid {what}{}: {message}", .origin.as_deref().map(|o| format!(" in {o}")).unwrap_or_default())]
    Invalid {
        /// `catalog` or `funnels`.
        what: &'static str,
        /// File the problem came from, when known.
        origin: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl JourneyError {
    fn invalid(what: &'static str, origin: Option<&str>, message: impl std::fmt::Display) -> Self {
        JourneyError::Invalid {
            what,
            origin: origin.map(str::to_owned),
            message: message.to_string(),
        }
    }
}

fn read_file(path: &Path) -> Result<String, JourneyError> {
    std::fs::read_to_string(path).map_err(|source| JourneyError::Read {
        path: path.to_owned(),
        source,
    })
}
