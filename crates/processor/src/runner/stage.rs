//! What a stage supplies to the runner: its per-partition state and how one input
//! message changes it.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::batch::{Batch, Record};

/// One input message, as the runner hands it to [`Stage::handle`].
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Value (empty if the record had none).
    pub payload: &'a [u8],
    /// The partition's sequence number for it: counts every message the partition's
    /// state has processed, so it orders outputs and versions rows.
    pub seq: u64,
}

impl Input<'_> {
    /// A DLQ record for this input, which the processor cannot use, with where it came
    /// from.
    pub fn dlq(&self, dlq_topic: &str, reason: &str, detail: &str) -> Record {
        let doc = json!({
            "reason": reason,
            "detail": detail,
            "source": "processor",
            "kafka_topic": self.topic,
            "kafka_partition": self.partition,
            "kafka_offset": self.offset,
            "payload_hex": self.payload.iter().take(64 * 1024).map(|b| format!("{b:02x}")).collect::<String>(),
        });
        Record {
            topic: dlq_topic.to_string(),
            key: None,
            partition: None,
            payload: doc.to_string().into_bytes(),
        }
    }
}

/// The stage-specific part of the loop. All methods are synchronous and CPU-only.
pub trait Stage: Send + Sync + 'static {
    /// Per-partition state.
    type State: Send;
    /// `identity` or `journey` (metric label, state key).
    fn name(&self) -> &'static str;
    /// Input topics (co-partitioned when more than one).
    fn topics(&self) -> Vec<String>;
    /// State of a partition never seen before.
    fn new_state(&self) -> Self::State;
    /// State from a saved snapshot's JSON.
    fn restore(&self, json: &[u8]) -> Result<Self::State, serde_json::Error>;
    /// What to save of a state: the runner serializes it as JSON and compresses it
    /// ([`crate::state_codec::encode`]); [`Stage::restore`] gets that JSON back.
    fn snapshot<'a>(&'a self, state: &'a Self::State) -> impl Serialize + 'a;
    /// What changed since the last save ([`Stage::saved`]), to write instead of the
    /// whole state (a delta, README "Processor state"); `None` when the stage cannot tell,
    /// and the default: then the whole state is written. [`Stage::restore_deltas`] lays
    /// the deltas over the whole state they followed.
    fn delta<'a>(&'a self, _state: &'a Self::State) -> Option<impl Serialize + 'a> {
        None::<()>
    }
    /// The state was just captured for saving (whole or as a delta): changes count from
    /// here.
    fn saved(&self, _state: &mut Self::State) {}
    /// State from a saved whole snapshot's JSON and the JSON of the deltas saved after
    /// it, oldest first. The default is [`Stage::restore`], for stages without deltas.
    fn restore_deltas(
        &self,
        json: &[u8],
        deltas: &[Vec<u8>],
    ) -> Result<Self::State, serde_json::Error> {
        if deltas.is_empty() {
            self.restore(json)
        } else {
            Err(serde::de::Error::custom(format!(
                "the {} stage saves no deltas, yet {} were found",
                self.name(),
                deltas.len()
            )))
        }
    }
    /// Process one input message.
    fn handle(&self, state: &mut Self::State, input: &Input<'_>, batch: &mut Batch);
    /// How many inputs a message counts as toward `processor.batch_max_rows` (a packed
    /// record holds many values, each as much work as a record of its own).
    fn inputs_in(&self, _input: &Input<'_>) -> usize {
        1
    }
    /// Move outputs the state holds into the batch (called before every flush).
    fn drain(&self, state: &mut Self::State, partition: i32, batch: &mut Batch);
    /// Called for every partition held, a few times a second: apply what changed outside
    /// the input (e.g. erased people, [`crate::suppression`]); return true if the state
    /// changed (the partition's rows are flushed and its snapshot saved).
    fn refresh(&self, _state: &mut Self::State) -> bool {
        false
    }
    /// After how long without input a caught-up partition counts as idle (`None`: never).
    fn idle_after(&self) -> Option<Duration> {
        None
    }
    /// The partition is caught up and had no input for `idle`; return true if the state
    /// changed.
    fn idle(&self, _state: &mut Self::State, _idle: Duration, _seq: u64) -> bool {
        false
    }
}
