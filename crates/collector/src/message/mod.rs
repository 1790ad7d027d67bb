//! One Segment message → a validated [`Touchpoint`] or a rejection with a reason.
//!
//! Pure and synchronous so that every rule of docs/design.md §2 (validation, ids, time correction)
//! is unit-tested without a server. The HTTP layer hands us each message's raw JSON text
//! (so the 32 KiB limit is measured on what the client sent) plus request metadata.
//!
//! How it is built, dependencies pointing down:
//!
//! - `validator`: the entry points ([`to_touchpoint`], [`Validator`]). A message is
//!   read by `scan`, the per-message hot path: one pass, no `serde_json::Value` tree,
//!   known fields captured as borrowed strings, numbers or shapes, the free-form parts
//!   (`properties`, `traits`, `context`, the unknown fields for `extra`) written straight
//!   to their canonical text by `canonical`. What the scanner declines (invalid JSON, a
//!   non-object, serde_json's raw-value token) is read by `dom` through a `Value`, so
//!   those answers are exactly serde_json's.
//! - `build` turns a message into the touchpoint, after `rules` checked it; both read
//!   the message only through the `seam` (`MessageFields`) that the two parsers
//!   implement, so each rule is written once. A proptest (in `equivalence`) checks that
//!   both readings give the same touchpoint or rejection on arbitrary messages.
//! - `request` (what a request adds to its messages), `clock` (time correction) and
//!   `reject` (reasons) are the vocabulary of all of the above.
//!
//! [`Touchpoint`]: touchstream_core::Touchpoint

mod build;
mod canonical;
mod clock;
mod dom;
mod reject;
mod request;
mod rules;
mod scan;
mod seam;
mod validator;

#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod tests;

pub use clock::{event_time_ms, format_timestamp, parse_timestamp, EventTimeWindow};
pub use reject::{RejectReason, Rejection};
pub use request::{BatchContext, RequestMeta};
pub use touchstream_core::event::MAX_FUTURE_MS;
pub use validator::{to_touchpoint, Validator};
