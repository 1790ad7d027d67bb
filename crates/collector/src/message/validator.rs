//! The entry points: validate one message, or the messages of one request with reusable
//! buffers. The scanner reads a message; what it declines is read through a `Value`.

use touchstream_core::avro::TouchpointRef;
use touchstream_core::{MessageType, Touchpoint};

use super::build::{build, Buffers};
use super::dom::Dom;
use super::reject::Rejection;
use super::request::RequestMeta;
use super::scan::Scanned;

/// Validate one message and build its touchpoint.
///
/// `raw` is the message's JSON text; `implied` is the type of a single-message endpoint
/// (`/v1/track` implies `track`), `None` for batch members, which must carry `type`.
/// The collector itself uses a [`Validator`], which borrows instead of copying.
pub fn to_touchpoint(
    raw: &str,
    implied: Option<MessageType>,
    meta: &RequestMeta<'_>,
) -> Result<Touchpoint, Rejection> {
    Validator::new()
        .validate(raw, implied, meta)
        .map(|tp| tp.to_touchpoint())
}

/// Validates the messages of one request (all borrowed from one body, lifetime `'de`),
/// reusing its working buffers from one message to the next, and hands out each
/// touchpoint as a borrowed [`TouchpointRef`] ready for [`avro::encode_ref`]: no owned
/// copy of any field is made on the way from the JSON text to the Avro bytes.
///
/// [`avro::encode_ref`]: touchstream_core::avro::encode_ref
#[derive(Default)]
pub struct Validator<'de> {
    scanned: Scanned<'de>,
    bufs: Buffers,
    /// A message the scanner declined, read through a `Value` (see [`Validator::validate`]).
    fallback: Option<Dom>,
}

impl<'de> Validator<'de> {
    /// A validator with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate one message (see [`to_touchpoint`]); the touchpoint borrows from the
    /// message, `meta` and this validator until the next call.
    pub fn validate<'s>(
        &'s mut self,
        raw: &'de str,
        implied: Option<MessageType>,
        meta: &'s RequestMeta<'_>,
    ) -> Result<TouchpointRef<'s>, Rejection> {
        if self.scanned.scan(raw, meta.batch_context.is_some()) {
            build(&self.scanned, &mut self.bufs, raw, implied, meta)
        } else {
            // Not an object as `serde_json::Value` reads one (invalid JSON, another type,
            // or its raw-value token): the `Value` reading answers, with its exact
            // rejection text.
            let dom = self.fallback.insert(Dom::parse(raw)?);
            build(&*dom, &mut self.bufs, raw, implied, meta)
        }
    }
}
