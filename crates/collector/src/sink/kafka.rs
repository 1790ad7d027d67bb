//! The Kafka sink: a request's records produced with one counted acknowledgement group,
//! and the producer's lifecycle (replaced by a fresh one when it keeps failing).
//!
//! The producer is idempotent with acks=all (`touchstream_core::kafka::acks`); a request
//! waits at most `produce_timeout_ms` for its last acknowledgement.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use touchstream_core::config::KafkaConfig;
use touchstream_core::kafka::acks::{group_producer, AckGroup, GroupProducer};
use touchstream_core::kafka::KafkaSetupError;

use super::{Records, Sink, SinkError};
use crate::metrics::Metrics;

/// The sink `touchstream collector` runs: publishes to the broker of `kafka` config.
pub struct KafkaSink {
    producer: ProducerCell,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl KafkaSink {
    /// A producer for `kafka`; a request fails when its records are not all acknowledged
    /// within `produce_timeout_ms`. Produce latency and failures go to `metrics`.
    pub fn new(
        kafka: &KafkaConfig,
        produce_timeout_ms: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaSetupError> {
        Ok(Self {
            producer: ProducerCell::new(kafka, produce_timeout_ms)?,
            timeout: Duration::from_millis(produce_timeout_ms),
            metrics,
        })
    }
}

impl Sink for KafkaSink {
    async fn publish(&self, records: &Records<'_>) -> Result<(), SinkError> {
        let produced =
            produce_all(&self.producer.get(), records, self.timeout, &self.metrics).await;
        self.producer.observe(&produced);
        produced
    }

    /// Ready when the broker answers a metadata request within 1.5 s. Called by the
    /// collector's background readiness check, never by a `/readyz` request itself.
    async fn ready(&self) -> bool {
        let producer = self.producer.get();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_millis(1500))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Every request has been answered by now; this flushes whatever librdkafka still
    /// holds (DLQ records of answered requests are already acked, so normally instant).
    async fn flush(&self) {
        let producer = self.producer.get();
        match tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing producer at shutdown"),
            Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
        }
    }
}

/// Produce all records and wait until every one is acknowledged, or fail. The records
/// share one [`AckGroup`]: one wake-up when the last is settled, no future per record.
pub async fn produce_all(
    producer: &GroupProducer,
    records: &Records<'_>,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<(), SinkError> {
    let started = Instant::now();
    let group = AckGroup::new();
    for r in records.iter() {
        match group.send(producer, r.topic, r.key, r.payload, None) {
            Ok(()) => {}
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                return Err(fail(metrics, SinkError::QueueFull));
            }
            Err(e) => return Err(fail(metrics, SinkError::Delivery(e))),
        }
    }
    let acks = tokio::time::timeout(timeout, group.wait()).await;
    metrics
        .produce_seconds
        .observe(started.elapsed().as_secs_f64());
    match acks {
        Err(_elapsed) => Err(fail(metrics, SinkError::Timeout(timeout))),
        Ok(Err(e)) => Err(fail(metrics, SinkError::Delivery(e))),
        Ok(Ok(())) => Ok(()),
    }
}

fn fail(metrics: &Metrics, e: SinkError) -> SinkError {
    metrics.broker_errors.with_label_values(&[e.kind()]).inc();
    e
}

/// The producer, replaced by a fresh one after repeated delivery failures.
///
/// An idempotent producer can end up permanently failing after a broker restart (its
/// producer id/sequence state no longer matches the broker's, or librdkafka raised a fatal
/// error); librdkafka's documented remedy is a new producer instance. Without this, the
/// collector would answer 503 until restarted by hand.
struct ProducerCell {
    current: RwLock<GroupProducer>,
    consecutive_failures: AtomicU32,
    kafka: KafkaConfig,
    timeout_ms: u64,
}

/// Delivery failures in a row after which the producer is recreated.
const RECREATE_AFTER_FAILURES: u32 = 3;

impl ProducerCell {
    fn new(kafka: &KafkaConfig, timeout_ms: u64) -> Result<Self, KafkaSetupError> {
        Ok(Self {
            current: RwLock::new(group_producer(kafka, timeout_ms, 0)?),
            consecutive_failures: AtomicU32::new(0),
            kafka: kafka.clone(),
            timeout_ms,
        })
    }

    fn get(&self) -> GroupProducer {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Count a publish outcome; recreate the producer after a fatal error or
    /// [`RECREATE_AFTER_FAILURES`] failures in a row.
    fn observe(&self, result: &Result<(), SinkError>) {
        let Err(e) = result else {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        };
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let fatal = self.get().client().fatal_error().is_some();
        if !fatal && failures < RECREATE_AFTER_FAILURES {
            return;
        }
        match group_producer(&self.kafka, self.timeout_ms, 0) {
            Ok(fresh) => {
                tracing::warn!(error = %e, failures, fatal, "recreating the kafka producer after delivery failures");
                let mut guard = match self.current.write() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *guard = fresh;
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(error = %err, "recreating the kafka producer failed"),
        }
    }
}
