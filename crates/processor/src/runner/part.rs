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
    /// The whole snapshot the state was last saved as or over ([`Chain::id`]); 0 in
    /// rows written before deltas existed, and by a backfill.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) chain: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// What a partition has saved since its last whole snapshot: decides when the next save
/// is whole again ([`super::flush`]).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Chain {
    /// Names the whole snapshot (`processor_state`) the deltas follow; 0: none usable,
    /// the next save is whole.
    pub(super) id: u64,
    /// Deltas saved after it.
    pub(super) deltas: u32,
    /// Their bytes as stored, together.
    pub(super) delta_bytes: u64,
    /// The whole snapshot's bytes as stored.
    pub(super) base_bytes: u64,
}

/// A new [`Chain::id`]: the wall clock in nanoseconds (unique per save in practice; ids
/// are compared for equality only), never 0.
pub(super) fn new_chain_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos());
    u64::try_from(nanos & u128::from(u64::MAX))
        .unwrap_or(1)
        .max(1)
}

pub(super) struct Part<S> {
    pub(super) state: S,
    pub(super) pos: Position,
    /// Has outputs to drain before the next flush.
    pub(super) dirty: bool,
    /// Changed since its last saved snapshot.
    pub(super) unsaved: bool,
    /// What was saved since the last whole snapshot.
    pub(super) chain: Chain,
    /// Changed outside the input (an erasure): the next save must be whole, so that no
    /// delta is left naming what was purged.
    pub(super) whole_next: bool,
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
    /// Account for the in-order message `offset` of `topic` about to be handled at `now`
    /// (the run loop's coarse clock); its seq.
    pub(super) fn advance(&mut self, topic: &str, offset: i64, now: Instant) -> u64 {
        // In order again: a later gap gets a fresh reload and seek.
        self.gap_reloaded = false;
        self.idle_seek = false;
        self.seeks = 0;
        self.last_seek = None;
        self.pos.seq += 1;
        match self.pos.next.get_mut(topic) {
            Some(next) => *next = offset + 1,
            None => {
                self.pos.next.insert(topic.to_string(), offset + 1);
            }
        }
        self.dirty = true;
        self.unsaved = true;
        self.last_input = now;
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

/// A partition's state from its newest whole snapshot and the deltas saved after it, or
/// a new one if it has none.
pub(super) async fn load_part<S: Stage>(
    stage: &S,
    ctx: &RunCtx,
    partition: i32,
) -> Result<Part<S::State>, ProcessorError> {
    let key = ctx.state_key(stage.name());
    let (state, pos, chain) = match ctx.store.load_chain(&key, partition).await? {
        Some(saved) => {
            let fail = |e| state_error(&key, partition, e);
            let pos: Position =
                serde_json::from_str(&saved.offsets).map_err(|e| fail(StateError::Offsets(e)))?;
            let json = crate::state_codec::decode(&saved.base)
                .map_err(|e| fail(StateError::Snapshot(e)))?;
            let deltas = saved
                .deltas
                .iter()
                .map(|d| crate::state_codec::decode(d).map(std::borrow::Cow::into_owned))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(StateError::Snapshot(e)))?;
            let chain = Chain {
                id: saved.chain,
                deltas: u32::try_from(deltas.len()).unwrap_or(u32::MAX),
                delta_bytes: saved.deltas.iter().map(|d| d.len() as u64).sum(),
                base_bytes: saved.base.len() as u64,
            };
            let state = stage
                .restore_deltas(&json, &deltas)
                .map_err(|e| fail(StateError::Restore(e)))?;
            tracing::info!(
                stage = stage.name(),
                partition,
                seq = pos.seq,
                deltas = deltas.len(),
                "restored partition state"
            );
            (state, pos, chain)
        }
        None => (stage.new_state(), Position::default(), Chain::default()),
    };
    Ok(Part {
        state,
        pos,
        dirty: false,
        unsaved: false,
        chain,
        whole_next: false,
        last_input: Instant::now(),
        gap_reloaded: false,
        idle_seek: false,
        seeks: 0,
        last_seek: None,
    })
}
