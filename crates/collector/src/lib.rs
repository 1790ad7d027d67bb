//! The collector: Touchstream's Segment-compatible front door (docs/design.md §2–3).
//!
//! Frontends and offline systems POST Segment messages; each request is authenticated by
//! write key ([`auth`]), read under size limits ([`body`]), split into messages that are
//! validated one by one ([`message`]), and produced to Kafka ([`sink`]): valid messages as
//! Avro to `touchpoints.raw`, invalid ones as JSON to `touchpoints.dlq`. The service is
//! stateless, so it scales by running more copies behind a load balancer.

pub mod auth;
pub mod body;
pub mod error;
pub mod message;
pub mod metrics;
pub mod privacy;
pub mod server;
pub mod sink;

pub use server::{run, CollectorError};
