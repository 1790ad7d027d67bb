//! The consume → process → write → snapshot → commit loop shared by both stages.
//!
//! Each input partition has its own state, restored from `processor_state` the first time
//! the partition shows up. The loop keeps, per partition, the next offset it expects on
//! each input topic:
//! - an older offset (Kafka resumed from an earlier commit) is a replay of work already in
//!   the state: skipped;
//! - a newer one means another instance moved on and saved a newer snapshot: the state is
//!   reloaded, and if it is still behind, the consumer seeks back to it (from further
//!   back each time a seek does not take: tansu never serves an offset inside a producer
//!   batch, see `seek`).
//!
//! A flush writes every row of the batch (retrying while ClickHouse is away), then the
//! snapshots, then commits the offsets: offsets never pass rows that are not stored. If a
//! flush fails for a reason other than shutdown (e.g. Kafka produce errors), the stage
//! drops its in-memory state and restarts from the last snapshots; outputs are
//! deterministic, so re-emitted rows replace themselves.
//!
//! A run that fails or panics is restarted the same way (from the last snapshots, after a
//! backoff that doubles with each failure in a row), counted, and reported by
//! [`health`]: a stage that keeps failing makes the processor unhealthy.
//!
//! Modules, by concern: [`stage`] (what a stage supplies), [`ctx`] (where it runs),
//! `run_loop` (the loop, revocations, idle partitions), `consumer` (the Kafka consumer and
//! what its statistics say), `part` (per-partition state and position), `seek` (input
//! out of order: replays, gaps, seeks back) and `flush` (cuts and their write chain).

mod consumer;
pub mod ctx;
mod flush;
pub mod health;
mod part;
mod run_loop;
mod seek;
pub mod stage;

pub use ctx::{Compaction, RunCtx, PRODUCER_LINGER_MS, PRODUCE_TIMEOUT_MS};
pub use health::{Health, StageHealth};
pub use run_loop::run_stage;
pub use stage::{Input, Stage};
