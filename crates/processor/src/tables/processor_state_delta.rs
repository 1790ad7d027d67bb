//! `processor_state_delta`: what changed in a stage partition's state since its previous
//! save, numbered after the whole snapshot in `processor_state` it extends (migration
//! 0011). Written by the runner between whole snapshots, read after the whole one when a
//! partition is (re)assigned.

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::Table;

/// The `processor_state_delta` table.
pub struct ProcessorStateDelta;

impl Table for ProcessorStateDelta {
    const NAME: &'static str = "processor_state_delta";
    type Row = DeltaRow;
}

/// One `processor_state_delta` row.
#[derive(Debug, Clone, Row, Serialize, Deserialize)]
pub struct DeltaRow {
    /// `<group>/<stage>`.
    pub stage: String,
    /// Input partition number.
    pub partition: i32,
    /// The whole snapshot it extends: the `chain` in that `processor_state` row's
    /// offsets.
    pub chain: u64,
    /// 1 for the first delta after the whole snapshot, then 2, ...
    pub slot: u32,
    /// JSON: next offset per input topic, the stage's seq counter and the chain, as in
    /// `processor_state.offsets`: the position this delta brings the state to.
    pub offsets: String,
    /// The stage's changes: JSON in an LZ4 frame ([`crate::state_codec`]).
    #[serde(with = "serde_bytes")]
    pub delta: Vec<u8>,
    /// Wall clock when saved.
    pub saved_at_ms: i64,
    /// The partition's seq counter when saved: a later chain's row of the same slot
    /// replaces an earlier one's.
    pub version: u64,
}

/// What a restore reads of a delta.
#[derive(Row, Deserialize)]
pub struct SavedDelta {
    /// As in [`DeltaRow::slot`].
    pub slot: u32,
    /// As in [`DeltaRow::offsets`].
    pub offsets: String,
    /// As in [`DeltaRow::delta`].
    #[serde(with = "serde_bytes")]
    pub delta: Vec<u8>,
}

/// The query reading a chain's [`SavedDelta`]s in slot order, for a stage, partition and
/// chain (bound in that order).
pub fn load_query() -> String {
    format!(
        "SELECT slot, offsets, delta FROM {} FINAL \
         WHERE stage = ? AND partition = ? AND chain = ? ORDER BY slot",
        ProcessorStateDelta::NAME
    )
}
