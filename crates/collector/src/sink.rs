//! Producing a request's messages to Kafka and waiting for every acknowledgement.
//!
//! A request is answered 200 only when the broker acknowledged all of its records
//! (idempotent producer, acks=all). Any failure — queue full, delivery error, or no ack
//! within `produce_timeout_ms` — fails the whole request with a retryable error; records
//! that did land are deduplicated downstream by `messageId`.

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::metrics::Metrics;

/// One record to produce.
pub struct Record {
    /// Target topic.
    pub topic: String,
    /// Partitioning key (`None` for the DLQ).
    pub key: Option<String>,
    /// Value bytes.
    pub payload: Vec<u8>,
}

/// Why a produce failed; each maps to a `broker_errors` label.
#[derive(Debug, thiserror::Error)]
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

/// Produce all records and wait until every one is acknowledged, or fail.
pub async fn produce_all(
    producer: &FutureProducer,
    records: &[Record],
    timeout: Duration,
    metrics: &Metrics,
) -> Result<(), SinkError> {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        let mut rec = FutureRecord::to(&r.topic).payload(&r.payload);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        match producer.send_result(rec) {
            Ok(fut) => pending.push(fut),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(fail(metrics, SinkError::QueueFull));
            }
            Err((e, _)) => return Err(fail(metrics, SinkError::Delivery(e))),
        }
    }
    let acks = tokio::time::timeout(timeout, join_all(pending)).await;
    metrics
        .produce_seconds
        .observe(started.elapsed().as_secs_f64());
    let acks = acks.map_err(|_| fail(metrics, SinkError::Timeout(timeout)))?;
    for ack in acks {
        match ack {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(fail(metrics, SinkError::Delivery(e))),
            // The producer dropped the message (only on shutdown): not acknowledged.
            Err(_canceled) => return Err(fail(metrics, SinkError::Delivery(KafkaError::Canceled))),
        }
    }
    Ok(())
}

fn fail(metrics: &Metrics, e: SinkError) -> SinkError {
    metrics.broker_errors.with_label_values(&[e.kind()]).inc();
    e
}
