//! `processor_state`: each stage partition's snapshot and the input position it
//! corresponds to, one live row per (stage, partition). Written by the runner after a
//! cut's rows, read when a partition is (re)assigned.

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::Table;

/// The `processor_state` table.
pub struct ProcessorState;

impl Table for ProcessorState {
    const NAME: &'static str = "processor_state";
    type Row = StateRow;
}

/// One `processor_state` row.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct StateRow {
    /// `<group>/<stage>`.
    pub stage: String,
    /// Input partition number.
    pub partition: i32,
    /// JSON: next offset per input topic, and the stage's seq counter.
    pub offsets: String,
    /// The stage's state at that position: JSON in an LZ4 frame ([`crate::state_codec`]).
    #[serde(with = "serde_bytes")]
    pub snapshot: Vec<u8>,
    /// Wall clock when saved.
    pub saved_at_ms: i64,
    /// Increases with every save of this partition, so the newest wins.
    pub version: u64,
}

/// What a restore reads of the newest row of a partition.
#[derive(Row, Deserialize)]
pub struct Saved {
    /// As in [`StateRow::offsets`].
    pub offsets: String,
    /// As in [`StateRow::snapshot`].
    #[serde(with = "serde_bytes")]
    pub snapshot: Vec<u8>,
    /// As in [`StateRow::version`].
    pub version: u64,
}

/// The query reading [`Saved`] for a stage and partition (bound in that order).
pub fn load_query() -> String {
    format!(
        "SELECT offsets, snapshot, version FROM {} FINAL WHERE stage = ? AND partition = ?",
        ProcessorState::NAME
    )
}
