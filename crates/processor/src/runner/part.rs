//! A partition's state in the loop: the stage's state, the input position it stands
//! for, and the bookkeeping of seeks; loaded from its saved snapshot.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::ctx::RunCtx;
use super::stage::Stage;
use crate::{ProcessorError, StateError};

/// The input position a state stands for (`processor_state.offsets`).
#[derive(Serialize, Deserialize, Default)]
pub(super) struct Position {
    /// Messages processed so far ([`super::Input::seq`] of the last one).
    pub(super) seq: u64,
    /// Next offset expected per input topic.
    pub(super) next: BTreeMap<String, i64>,
}

pub(super) struct Part<S> {
    pub(super) state: S,
    pub(super) pos: Position,
    /// Has outputs to drain before the next flush.
    pub(super) dirty: bool,
    /// Changed since its last saved snapshot.
    pub(super) unsaved: bool,
    pub(super) last_input: Instant,
    pub(super) gap_reloaded: bool,
    /// The current seeks back began because the stage was idle while this partition
    /// was behind (not because input came ahead): they stop after
    /// [`super::seek::IDLE_MAX_SEEKS`].
    pub(super) idle_seek: bool,
    /// Seeks back to the saved position since the last in-order input, and when the
    /// last one was issued.
    pub(super) seeks: u32,
    pub(super) last_seek: Option<(String, i64, Instant)>,
}

impl<S> Part<S> {
    /// Account for the in-order message `offset` of `topic` about to be handled; its seq.
    pub(super) fn advance(&mut self, topic: &str, offset: i64) -> u64 {
        // In order again: a later gap gets a fresh reload and seek.
        self.gap_reloaded = false;
        self.idle_seek = false;
        self.seeks = 0;
        self.last_seek = None;
        self.pos.seq += 1;
        self.pos.next.insert(topic.to_string(), offset + 1);
        self.dirty = true;
        self.unsaved = true;
        self.last_input = Instant::now();
        self.pos.seq
    }
}

/// Where a partition's state error happened, for [`ProcessorError::State`].
pub(super) fn state_error(key: &str, partition: i32, source: StateError) -> ProcessorError {
    ProcessorError::State {
        at: format!("{key}/{partition}"),
        source,
    }
}

/// A partition's state from its newest snapshot, or a new one if it has none.
pub(super) async fn load_part<S: Stage>(
    stage: &S,
    ctx: &RunCtx,
    partition: i32,
) -> Result<Part<S::State>, ProcessorError> {
    let key = ctx.state_key(stage.name());
    let (state, pos) = match ctx.store.load_state(&key, partition).await? {
        Some(saved) => {
            let fail = |e| state_error(&key, partition, e);
            let pos: Position =
                serde_json::from_str(&saved.offsets).map_err(|e| fail(StateError::Offsets(e)))?;
            let json = crate::state_codec::decode(&saved.snapshot)
                .map_err(|e| fail(StateError::Snapshot(e)))?;
            let state = stage
                .restore(&json)
                .map_err(|e| fail(StateError::Restore(e)))?;
            tracing::info!(
                stage = stage.name(),
                partition,
                seq = pos.seq,
                "restored partition state"
            );
            (state, pos)
        }
        None => (stage.new_state(), Position::default()),
    };
    Ok(Part {
        state,
        pos,
        dirty: false,
        unsaved: false,
        last_input: Instant::now(),
        gap_reloaded: false,
        idle_seek: false,
        seeks: 0,
        last_seek: None,
    })
}
