//! Shared ground of every Touchstream component.
//!
//! The collector turns HTTP messages into [`Touchpoint`]s and writes them to Kafka with
//! [`avro::encode_ref`] (the borrowing form of [`avro::encode`]); the processor reads
//! them back with [`avro::decode`]. Both load one
//! [`Config`] from a TOML file plus environment overrides, and both reach Kafka through
//! the client settings built in [`kafka`]. Keeping these here means the wire format and the
//! configuration contract have exactly one definition.

pub mod avro;
pub mod config;
pub mod event;
pub mod kafka;
pub mod memory;

pub use config::{Config, ConfigError};
pub use event::{is_placeholder_id, Channel, MessageType, Touchpoint};
