//! Where a stage runs and writes: Kafka, its producer, ClickHouse, metrics, batching.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use touchstream_core::config::KafkaConfig;
use touchstream_core::kafka::acks::{group_producer, GroupProducer};

use super::health::StageHealth;
use crate::metrics::Metrics;
use crate::store::Store;

/// The processor producer's `linger.ms`: it enqueues a whole cut and waits for the
/// acknowledgements together, so batching costs nothing here.
pub const PRODUCER_LINGER_MS: u32 = 5;

/// The longest pause between restarts of a failing stage.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);

/// How long the processor's producer retries a record before failing it, ms.
pub const PRODUCE_TIMEOUT_MS: u64 = 30_000;

/// When a partition's save is a whole snapshot rather than a delta (README "Processor
/// state"; `processor.snapshot_compact_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    /// Whole after this many deltas (0: every save is whole).
    pub after_deltas: u32,
    /// Whole once the deltas since the last whole snapshot weigh more than this share of
    /// it.
    pub delta_share: f64,
}

impl Compaction {
    /// From the processor's config.
    pub fn from_config(pc: &touchstream_core::config::ProcessorConfig) -> Self {
        Self {
            after_deltas: pc.snapshot_compact_after_deltas,
            delta_share: pc.snapshot_compact_delta_share,
        }
    }
}

/// Where the stage runs and writes.
pub struct RunCtx {
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Consumer group of this stage.
    pub group_id: String,
    /// Static membership id of this stage's consumer (`group.instance.id`), if any.
    pub instance_id: Option<String>,
    /// This stage's producer (internal topics and DLQ); replaced after a failed run, since
    /// an idempotent producer can stay failed after a broker restart.
    pub producer: Mutex<GroupProducer>,
    /// ClickHouse.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Flush at this many input messages.
    pub batch_max_rows: usize,
    /// Flush at least this often.
    pub batch_max: Duration,
    /// Save snapshots and commit offsets at most this often (a flush in between writes
    /// rows only). Snapshots hold a partition's whole state, so saving them on every
    /// flush would cost more than the rows; a crash replays at most this much input.
    pub snapshot_every: Duration,
    /// When a partition's save is whole rather than a delta.
    pub compaction: Compaction,
    /// Cut batches being written at once (at least 1).
    pub writes_in_flight: usize,
    /// Pause before restarting after a failure; doubles with each failure in a row, up
    /// to [`MAX_RESTART_BACKOFF`].
    pub restart_backoff: Duration,
    /// This stage's health record (failures in a row), read by `/healthz`.
    pub health: Arc<StageHealth>,
    /// Process-wide shutdown.
    pub shutdown: CancellationToken,
}

impl RunCtx {
    /// The producer in use (a panic elsewhere while it was being replaced leaves the
    /// lock poisoned, not the producer).
    pub(super) fn producer(&self) -> GroupProducer {
        match self.producer.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replace the producer with a new one (after a failed run).
    pub(super) fn renew_producer(&self) {
        match group_producer(&self.kafka, PRODUCE_TIMEOUT_MS, PRODUCER_LINGER_MS) {
            Ok(fresh) => match self.producer.lock() {
                Ok(mut p) => *p = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            },
            Err(e) => tracing::warn!(error = %e, "recreating the producer failed"),
        }
    }

    /// Key of a stage's rows in `processor_state` (`<group>/<stage>`), also the start of
    /// its insert deduplication scopes.
    pub(super) fn state_key(&self, stage: &str) -> String {
        format!("{}/{stage}", self.group_id)
    }
}
