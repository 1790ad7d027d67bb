//! Input out of order: replays to skip, input ahead of the saved position (reload the
//! state, seek back), and seeks that do not take.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::LagContext;
use super::ctx::RunCtx;
use super::part::{load_part, Part};
use super::stage::Stage;
use crate::ProcessorError;

/// Seeks back to a saved position tried before the stage run fails and restarts.
const MAX_SEEKS: u32 = 20;
/// Seeks begun because the stage was idle while a partition was behind, before they
/// stop (the last starts 256 << 10 records back).
pub(super) const IDLE_MAX_SEEKS: u32 = 12;
/// How far before the saved position the second seek back starts (doubling after).
const REWIND_BASE: i64 = 256;
/// How long input ahead of the saved position is dropped after a seek before the seek
/// counts as overridden and is issued again.
pub(super) const SEEK_SETTLE: Duration = Duration::from_millis(500);

/// Decide whether to process `offset`, repairing the partition's position if needed.
pub(super) async fn admit<S: Stage>(
    stage: &S,
    ctx: &RunCtx,
    consumer: &StreamConsumer<LagContext>,
    parts: &mut HashMap<i32, Part<S::State>>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<bool, ProcessorError> {
    let Some(part) = parts.get_mut(&partition) else {
        return Ok(false);
    };
    let next = match part.pos.next.get(topic) {
        None => {
            part.pos.next.insert(topic.to_string(), offset);
            return Ok(true);
        }
        Some(n) => *n,
    };
    if offset == next {
        return Ok(true);
    }
    if offset < next {
        return Ok(false);
    }
    // Ahead of our state: someone else processed and saved further.
    if !part.gap_reloaded {
        let mut fresh = load_part(stage, ctx, partition).await?;
        fresh.gap_reloaded = true;
        let fresh_next = fresh.pos.next.get(topic).copied();
        *part = fresh;
        tracing::info!(
            stage = stage.name(),
            partition,
            topic,
            offset,
            "input ahead of local state; reloaded the saved state"
        );
        match fresh_next {
            None => {
                part.pos.next.insert(topic.to_string(), offset);
                return Ok(true);
            }
            Some(n) if n == offset => return Ok(true),
            Some(n) if offset < n => return Ok(false),
            Some(_) => {}
        }
    }
    let next = part.pos.next.get(topic).copied().unwrap_or(offset);
    // Records fetched before the last seek took effect: drop them and wait for it.
    if part
        .last_seek
        .as_ref()
        .is_some_and(|(_, _, at)| at.elapsed() < SEEK_SETTLE)
    {
        return Ok(false);
    }
    // Skip ahead only when the records in between are really gone (retention): a seek
    // issued while the group's assignment is still settling can be overridden by the
    // committed offset, so a record ahead after a seek is no proof that none is left.
    let low = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(5))
        .map(|(low, _)| low)
        .ok();
    let gone = low.is_some_and(|low| low > next);
    let (what, attempt) = if gone {
        (
            "records between the saved position and the input are gone (retention); continuing",
            None,
        )
    } else {
        ("seeking back to the saved position", Some(part.seeks + 1))
    };
    tracing::warn!(
        stage = stage.name(),
        partition,
        topic,
        offset,
        expected = next,
        earliest = low,
        attempt,
        "{what}"
    );
    if gone {
        part.pos.next.insert(topic.to_string(), offset);
        return Ok(true);
    }
    part.idle_seek = false;
    seek_back(stage, consumer, part, partition, topic, next)?;
    Ok(false)
}

/// Seek where input should come and does not:
/// - a seek back has had no effect for a while: no in-order input came (it was
///   overridden, e.g. by the committed offset of an assignment still settling, or it
///   pointed inside a producer batch on tansu, and the input that was ahead has all
///   been dropped meanwhile, so nothing else would);
/// - the whole stage has had no input for a while (`stage_idle`), yet a partition's
///   saved position is behind its high watermark: the consumer's position (the committed
///   offset, inside a producer batch) is one the broker does not serve, and with no
///   later batch nothing would ever arrive to show it.
pub(super) fn reseek_stalled<S: Stage>(
    stage: &S,
    consumer: &StreamConsumer<LagContext>,
    parts: &mut HashMap<i32, Part<S::State>>,
    stage_idle: bool,
) -> Result<(), ProcessorError> {
    for (p, part) in parts.iter_mut() {
        let (topic, next) = match &part.last_seek {
            Some((topic, next, at)) => {
                // Seeks begun by idleness give up (quietly) rather than restart the
                // stage: records between the saved offset and the high watermark may
                // simply not exist (a compacted topic, transaction markers). Input that
                // arrives later resumes the ordinary path.
                if at.elapsed() < 4 * SEEK_SETTLE
                    || (part.idle_seek && part.seeks >= IDLE_MAX_SEEKS)
                {
                    continue;
                }
                (topic.clone(), *next)
            }
            None if stage_idle => {
                let behind = part.pos.next.iter().find(|(topic, next)| {
                    consumer
                        .context()
                        .high_watermark(topic, *p)
                        .is_some_and(|(h, _)| **next < h)
                });
                match behind {
                    Some((topic, next)) => {
                        let b = (topic.clone(), *next);
                        part.idle_seek = true;
                        b
                    }
                    None => continue,
                }
            }
            None => continue,
        };
        tracing::warn!(
            stage = stage.name(),
            partition = *p,
            topic = topic.as_str(),
            expected = next,
            attempt = part.seeks + 1,
            "no input at the saved position; seeking to it"
        );
        seek_back(stage, consumer, part, *p, &topic, next)?;
    }
    Ok(())
}

/// Seek `partition` of `topic` back to `next`, the saved position, and remember when.
///
/// The first seek goes to `next` itself; each further one (the previous did not take)
/// starts further back, [`REWIND_BASE`] doubling per attempt, and the records before
/// `next` are skipped as replays. tansu serves only batches that start at or after the
/// fetch offset, so a position inside a producer batch — snapshots and commits are cut
/// at any record — is never delivered there: its batch has to be fetched from its start.
/// After [`MAX_SEEKS`] without in-order input in between, commit the last target instead
/// and fail the stage run; the restarted run's consumer starts at the committed offset.
fn seek_back<S: Stage>(
    stage: &S,
    consumer: &StreamConsumer<LagContext>,
    part: &mut Part<S::State>,
    partition: i32,
    topic: &str,
    next: i64,
) -> Result<(), ProcessorError> {
    let target = rewind_target(next, part.seeks);
    if part.seeks >= MAX_SEEKS {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(target))?;
        consumer.commit(&tpl, CommitMode::Sync)?;
        return Err(ProcessorError::SeeksFailed {
            stage: stage.name(),
            partition,
            topic: topic.to_string(),
            next,
            seeks: MAX_SEEKS,
            target,
        });
    }
    part.seeks += 1;
    part.last_seek = Some((topic.to_string(), next, Instant::now()));
    // A refused seek (e.g. the partition is assigned but not fetching yet) counts as an
    // attempt that did not take: the next one follows after 4 × SEEK_SETTLE.
    if let Err(e) = consumer.seek(
        topic,
        partition,
        Offset::Offset(target),
        Duration::from_secs(5),
    ) {
        tracing::warn!(stage = stage.name(), partition, topic, target, error = %e, "seek refused");
    }
    Ok(())
}

/// Where seek attempt `attempt` (from 0) for saved position `next` goes: `next`, then
/// [`REWIND_BASE`] << (attempt - 1) records before it, never below offset 0.
fn rewind_target(next: i64, attempt: u32) -> i64 {
    if attempt == 0 {
        return next;
    }
    let back = REWIND_BASE << (attempt - 1).min(20);
    next.saturating_sub(back).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeks_back_go_further_back_each_time_but_not_below_zero() {
        assert_eq!(rewind_target(1000, 0), 1000);
        assert_eq!(rewind_target(1000, 1), 1000 - REWIND_BASE);
        assert_eq!(rewind_target(1000, 2), 1000 - 2 * REWIND_BASE);
        assert_eq!(rewind_target(1000, 3), 0);
        assert_eq!(rewind_target(5, MAX_SEEKS), 0);
        let far = rewind_target(i64::MAX, MAX_SEEKS);
        assert!(far < i64::MAX && far > 0);
    }
}
