//! Where a request's records go: the [`Sink`] trait and the records it is given.
//!
//! A request is answered 200 only when its sink has acknowledged every one of its records;
//! any failure fails the whole request with a retryable 503 (records that did land are
//! deduplicated downstream by `messageId`). Two sinks implement the trait:
//! - [`KafkaSink`], the one `touchstream collector` runs: an idempotent producer (acks=all)
//!   that waits for every acknowledgement within `produce_timeout_ms`;
//! - [`MemorySink`], for tests and for embedding the collector without a broker: it keeps
//!   what it is given and can be told to fail or to report itself unready.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use rdkafka::error::KafkaError;

mod kafka;
mod memory;

pub use kafka::{produce_all, KafkaSink};
pub use memory::{MemorySink, PublishedRecord};

/// Publishes the records of a request. The collector's router is built over one
/// (`server::Collector::new`); every method is called concurrently from many requests.
pub trait Sink: Send + Sync + 'static {
    /// Publish every record; `Ok` only once each one is acknowledged (durably stored).
    /// An error refuses the whole request with 503 and `Retry-After`.
    fn publish(&self, records: &Records<'_>) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Whether publishing can succeed now (`/readyz`).
    fn ready(&self) -> impl Future<Output = bool> + Send;

    /// Settle whatever is still buffered; called once at shutdown, after the last answer.
    fn flush(&self) -> impl Future<Output = ()> + Send;
}

/// The records of one request: every key and value in one buffer, so building a record
/// costs no allocation of its own (librdkafka copies what it produces anyway).
pub struct Records<'t> {
    buf: Vec<u8>,
    items: Vec<Item<'t>>,
}

struct Item<'t> {
    topic: &'t str,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

/// One record to produce, borrowed from [`Records`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Target topic.
    pub topic: &'a str,
    /// Partitioning key (`None` for the DLQ).
    pub key: Option<&'a [u8]>,
    /// Value bytes.
    pub payload: &'a [u8],
}

impl<'t> Records<'t> {
    /// Room for `records` records of `bytes` key and value bytes in all (a hint).
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Records {
            buf: Vec::with_capacity(bytes),
            items: Vec::with_capacity(records),
        }
    }

    /// Add a record whose value `write_value` appends to the buffer it is given.
    pub fn push(
        &mut self,
        topic: &'t str,
        key: Option<&str>,
        write_value: impl FnOnce(&mut Vec<u8>),
    ) {
        let key = key.map(|k| {
            let start = self.buf.len();
            self.buf.extend_from_slice(k.as_bytes());
            start..self.buf.len()
        });
        let start = self.buf.len();
        write_value(&mut self.buf);
        let value = start..self.buf.len();
        self.items.push(Item { topic, key, value });
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// No records.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The records, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> {
        self.items.iter().map(|i| Record {
            topic: i.topic,
            key: i.key.clone().map(|k| &self.buf[k]),
            payload: &self.buf[i.value.clone()],
        })
    }
}

/// Why a publish failed; each maps to a `broker_errors` label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// librdkafka's local queue is full: the broker is not keeping up.
    #[error("kafka producer queue is full")]
    QueueFull,
    /// No acknowledgement within the bound.
    #[error("kafka did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// The broker or client reported a delivery failure.
    #[error("kafka delivery failed: {0}")]
    Delivery(#[source] KafkaError),
}

impl SinkError {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::QueueFull => "queue_full",
            SinkError::Timeout(_) => "timeout",
            SinkError::Delivery(_) => "delivery",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_keys_and_values_apart() {
        let mut r = Records::with_capacity(0, 0);
        assert!(r.is_empty());
        r.push("raw", Some("k1"), |b| b.extend_from_slice(b"v1"));
        r.push("dlq", None, |b| b.extend_from_slice(b"{}"));
        r.push("raw", Some(""), |_| {});
        assert_eq!(r.len(), 3);
        let all: Vec<Record<'_>> = r.iter().collect();
        assert_eq!(
            all,
            [
                Record {
                    topic: "raw",
                    key: Some(b"k1"),
                    payload: b"v1"
                },
                Record {
                    topic: "dlq",
                    key: None,
                    payload: b"{}"
                },
                Record {
                    topic: "raw",
                    key: Some(b""),
                    payload: b""
                },
            ]
        );
    }
}
