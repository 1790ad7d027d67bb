//! The Segment endpoints the collector serves, and their paths.

use touchstream_core::MessageType;

/// Which Segment endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/batch` and `/v1/import`.
    Batch,
    /// A single-message endpoint of this type.
    Single(MessageType),
}

/// The batch route for history: event times older than `max_event_age_days` are
/// accepted there (README "Time correction").
pub const IMPORT_ROUTE: &str = "/v1/import";

/// Canonical ingest routes.
pub const ROUTES: [(&str, Endpoint); 7] = [
    ("/v1/batch", Endpoint::Batch),
    ("/v1/import", Endpoint::Batch),
    ("/v1/track", Endpoint::Single(MessageType::Track)),
    ("/v1/page", Endpoint::Single(MessageType::Page)),
    ("/v1/screen", Endpoint::Single(MessageType::Screen)),
    ("/v1/identify", Endpoint::Single(MessageType::Identify)),
    ("/v1/alias", Endpoint::Single(MessageType::Alias)),
];

impl Endpoint {
    /// Metric label and the DLQ record's `endpoint`.
    pub(super) fn label(self) -> &'static str {
        match self {
            Endpoint::Batch => "batch",
            Endpoint::Single(t) => t.as_str(),
        }
    }

    /// The message type the endpoint implies (`None`: each message names its own).
    pub(super) fn implied_type(self) -> Option<MessageType> {
        match self {
            Endpoint::Batch => None,
            Endpoint::Single(t) => Some(t),
        }
    }
}
