//! Everything one flush writes: records for internal topics and the DLQ, and rows per
//! ClickHouse table ([`crate::tables`]). Stages fill it; the runner writes it in a fixed
//! order (records, rows, then snapshots and offsets).

use std::future::Future;
use std::pin::Pin;

use touchstream_journey::JourneyOutput;

use crate::routed_codec::Pack;
use crate::store::{Rejected, Store};
use crate::tables::{
    customer_touchpoints, events, feedback, funnel_attempts, funnel_open_attempts, identities,
    identity_conflicts, sessions, touchpoint_journey, Table,
};
use crate::ProcessorError;

/// A Kafka record to produce before the batch's offsets are committed.
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Key, if any.
    pub key: Option<String>,
    /// Explicit partition (watermarks go to every partition); else by key.
    pub partition: Option<i32>,
    /// Value.
    pub payload: Vec<u8>,
}

/// The most records or rows of one table [`Batch::size_like`] reserves ahead: a larger
/// batch grows its lists as before.
const MAX_RESERVE: usize = 1 << 17;

/// Outputs accumulated since the last flush.
///
/// Sizing: a cut hands the batch to its write and starts an empty one; the runner sizes
/// the new one like the last ([`Batch::size_like`]) when its first input arrives. During a
/// backlog each batch is about as large as the one before, so its lists are allocated
/// once instead of growing by doubling (every doubling copies the list and touches fresh
/// pages: ~4 % of the processor's CPU in a backlog, docs/performance.md), and a quiet
/// stage holds no room between cuts.
#[derive(Default)]
pub struct Batch {
    /// Internal-topic and DLQ records, in production order.
    pub records: Vec<Record>,
    /// Open packs of `touchpoints.by_customer` values, by destination partition (topic
    /// and pack); [`Batch::close_packs`] turns them into records at the cut.
    packs: Vec<Option<(String, Pack)>>,
    /// Per partition: whether a pack of this batch reached [`PACK_CAP`].
    filled: Vec<bool>,
    /// Rows per table.
    pub rows: Rows,
}

/// Bytes at which a pack becomes a record and the next values start another: large
/// enough that per-record costs vanish, far below librdkafka's `message.max.bytes`
/// (1,000,000 by default) so a pack is never refused for its size.
const PACK_CAP: usize = 256 * 1024;

/// Room a pack near the cap is given: the cap and a quarter, for the value that crosses it.
const PACK_ROOM: usize = PACK_CAP + PACK_CAP / 4;

impl Batch {
    /// Add `value` (one [`crate::routed_codec::encode`]d value) for `partition` of
    /// `topic` to that partition's pack: [`Batch::pack_with`].
    pub fn pack(&mut self, topic: &str, partition: i32, value: &[u8]) {
        self.pack_with(topic, partition, |buf| buf.extend_from_slice(value));
    }

    /// Add the value `write` appends (e.g. [`crate::routed_codec::encode_into`]) for
    /// `partition` of `topic` to that partition's pack, written in place. A value that
    /// takes the pack past [`PACK_CAP`] moves to the next pack, and a pack that reaches
    /// the cap becomes a record now, so a pack is at most the cap or a single value (which
    /// fits as a record of its own), and a partition's values keep their order across its
    /// records.
    pub fn pack_with(&mut self, topic: &str, partition: i32, write: impl FnOnce(&mut Vec<u8>)) {
        let i = usize::try_from(partition).unwrap_or_default();
        if self.packs.len() <= i {
            self.packs.resize_with(i + 1, || None);
            self.filled.resize(i + 1, false);
        }
        let filled = self.filled[i];
        let (_, pack) = self.packs[i].get_or_insert_with(|| {
            // A partition that filled a pack this batch will likely fill the next: room
            // for the cap and one more value from the start.
            let room = if filled { PACK_ROOM } else { 16 * 1024 };
            (topic.to_string(), Pack::with_capacity(room))
        });
        // A pack past half the cap grows once to the cap and a quarter (not by doubling
        // to twice the cap when the value that crosses the cap is written).
        if pack.len() >= PACK_CAP / 2 {
            pack.reserve_total(PACK_ROOM);
        }
        pack.push_with(write);
        if pack.len() > PACK_CAP && pack.entries() > 1 {
            let value = pack.pop().unwrap_or_default();
            self.filled[i] = true;
            self.close_pack(i);
            self.pack(topic, partition, &value);
            return;
        }
        if pack.len() >= PACK_CAP {
            self.filled[i] = true;
            self.close_pack(i);
        }
    }

    fn close_pack(&mut self, i: usize) {
        if let Some((topic, pack)) = self.packs[i].take() {
            self.records.push(Record {
                topic,
                key: None,
                partition: Some(i32::try_from(i).unwrap_or(i32::MAX)),
                payload: pack.finish(),
            });
        }
    }

    /// Every open pack becomes a record (at the cut, after the stages' drains).
    pub fn close_packs(&mut self) {
        for i in 0..self.packs.len() {
            self.close_pack(i);
        }
    }
}

/// One table's insert, as [`Rows::write`] runs them side by side: the rows it set aside.
type Insert<'a> = Pin<Box<dyn Future<Output = Result<Vec<Rejected>, ProcessorError>> + Send + 'a>>;

/// Declares [`Rows`] from the list of tables: a row list per table, named after the
/// table's module (which is named after the table), and their inserts.
macro_rules! tables {
    ($($module:ident::$table:ident),* $(,)?) => {
        /// The rows of every table a flush writes, gathered by the stages.
        #[derive(Default)]
        pub struct Rows {
            $(
                #[doc = concat!("`", stringify!($module), "` rows.")]
                pub $module: Vec<<$module::$table as Table>::Row>,
            )*
        }

        /// Rows per table of a batch, to size the next one like it ([`Batch::size_like`]).
        #[derive(Debug, Default, Clone, Copy)]
        pub struct RowCounts {
            records: usize,
            $($module: usize,)*
        }

        impl Batch {
            /// How many records and rows of each table this batch holds.
            pub fn counts(&self) -> RowCounts {
                RowCounts {
                    records: self.records.len(),
                    $($module: self.rows.$module.len(),)*
                }
            }

            /// Reserve room for as many records and rows as `like` counts (each at most
            /// [`MAX_RESERVE`]).
            pub fn size_like(&mut self, like: &RowCounts) {
                self.records.reserve(like.records.min(MAX_RESERVE));
                $(self.rows.$module.reserve(like.$module.min(MAX_RESERVE));)*
            }
        }

        impl Rows {
            /// Each table's insert (one that has no rows returns at once).
            fn inserts<'a>(&'a self, store: &'a Store, scope: Option<&'a str>) -> Vec<Insert<'a>> {
                vec![$(Box::pin(store.write_or_set_aside::<$module::$table>(&self.$module, scope))),*]
            }
        }
    };
}

// The tables a flush writes. `processor_state` is not here: the runner writes it after
// these, and only when snapshots are due.
tables! {
    events::Events,
    identities::Identities,
    identity_conflicts::IdentityConflicts,
    touchpoint_journey::TouchpointJourney,
    customer_touchpoints::CustomerTouchpoints,
    sessions::Sessions,
    funnel_attempts::FunnelAttempts,
    funnel_open_attempts::FunnelOpenAttempts,
    feedback::Feedback,
}

impl Rows {
    /// Lend the journey stage's six lists to `f` as one [`JourneyOutput`], which the
    /// stage appends its rows to (`JourneyStage::take_output_into`): the lists are moved
    /// out and back, so no row is copied. Taking the output apart again field by field
    /// means a list added to `JourneyOutput` does not compile until it has its table here.
    pub fn lend_journey<R>(&mut self, f: impl FnOnce(&mut JourneyOutput) -> R) -> R {
        let mut out = JourneyOutput {
            touchpoints: std::mem::take(&mut self.touchpoint_journey),
            customer_touchpoints: std::mem::take(&mut self.customer_touchpoints),
            sessions: std::mem::take(&mut self.sessions),
            attempts: std::mem::take(&mut self.funnel_attempts),
            open_attempts: std::mem::take(&mut self.funnel_open_attempts),
            feedback: std::mem::take(&mut self.feedback),
        };
        let result = f(&mut out);
        let JourneyOutput {
            touchpoints,
            customer_touchpoints,
            sessions,
            attempts,
            open_attempts,
            feedback,
        } = out;
        self.touchpoint_journey = touchpoints;
        self.customer_touchpoints = customer_touchpoints;
        self.sessions = sessions;
        self.funnel_attempts = attempts;
        self.funnel_open_attempts = open_attempts;
        self.feedback = feedback;
        result
    }

    /// Write every table's rows (each retried until stored), all tables at once: the
    /// inserts are independent, and a flush waits for the slowest instead of the sum.
    /// `scope` names the input offset ranges of the batch (deduplication tokens). Returns
    /// the rows ClickHouse refused for good, for the dead-letter topic ([`crate::store`]).
    pub async fn write(&self, store: &Store, scope: &str) -> Result<Vec<Rejected>, ProcessorError> {
        let refused = futures::future::try_join_all(self.inserts(store, Some(scope))).await?;
        Ok(refused.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_stay_under_the_cap_and_keep_each_partitions_order() {
        let mut b = Batch::default();
        let big = vec![7u8; PACK_CAP * 3 / 4];
        b.pack("t", 1, &big);
        b.pack("t", 0, b"a");
        // Would take partition 1's pack past the cap: it is closed first.
        b.pack("t", 1, &big);
        b.pack("t", 1, b"b");
        b.close_packs();
        let parts: Vec<_> = b.records.iter().map(|r| r.partition).collect();
        assert_eq!(parts, [Some(1), Some(0), Some(1)]);
        assert!(b.records.iter().all(|r| r.payload.len() <= PACK_CAP));
        let values = |i: usize| {
            crate::routed_codec::unpack(&b.records[i].payload)
                .expect("a pack")
                .values
                .iter()
                .map(|v| v.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(values(0), [big.len()]);
        assert_eq!(values(1), [1]);
        assert_eq!(values(2), [big.len(), 1]);
    }

    /// The packs as the identity stage made them before values were written in place: a
    /// value that would take a non-empty pack past the cap closed it first; a pack at
    /// the cap after a value closed.
    fn packs_as_before(values: &[(i32, Vec<u8>)]) -> Vec<(i32, Vec<u8>)> {
        let mut open: std::collections::BTreeMap<i32, Pack> = Default::default();
        let mut out = Vec::new();
        for (p, v) in values {
            if open
                .get(p)
                .is_some_and(|k| !k.is_empty() && k.len() + 4 + v.len() > PACK_CAP)
            {
                out.push((*p, open.remove(p).expect("open").finish()));
            }
            let pack = open.entry(*p).or_default();
            pack.push(v);
            if pack.len() >= PACK_CAP {
                out.push((*p, open.remove(p).expect("open").finish()));
            }
        }
        // The cut closes the open packs in partition order.
        out.extend(open.into_iter().map(|(p, k)| (p, k.finish())));
        out
    }

    proptest::proptest! {
        #[test]
        fn packs_written_in_place_equal_the_packs_made_before(
            values in proptest::collection::vec(
                (0..3i32, proptest::prop_oneof![
                    0..64usize,
                    PACK_CAP / 2 - 64..PACK_CAP / 2 + 64,
                    PACK_CAP - 64..PACK_CAP + 64,
                    PACK_CAP..PACK_CAP * 2,
                ]),
                0..12,
            )
        ) {
            let values: Vec<(i32, Vec<u8>)> = values
                .into_iter()
                .enumerate()
                .map(|(n, (p, len))| (p, vec![u8::try_from(n % 251).unwrap_or(0); len]))
                .collect();
            let mut b = Batch::default();
            for (p, v) in &values {
                b.pack_with("t", *p, |buf| buf.extend_from_slice(v));
            }
            b.close_packs();
            let got: Vec<(i32, Vec<u8>)> = b
                .records
                .iter()
                .map(|r| (r.partition.unwrap_or(-1), r.payload.clone()))
                .collect();
            proptest::prop_assert_eq!(got, packs_as_before(&values));
        }
    }
}
