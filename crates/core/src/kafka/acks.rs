//! A producer for callers that wait for a group of records at once (the collector
//! answers a request only when all of its records are acknowledged): one counter per
//! group instead of one future per record.
//!
//! rdkafka's `FutureProducer` allocates a oneshot channel per record, its delivery
//! callback sends on it and wakes the waiting task, and the request joins a hundred such
//! futures. Here every record of a group carries the same [`AckGroup`] (one reference
//! count increment, no allocation); the delivery callback counts it down and wakes the
//! waiter once, when the last record of the group is settled. The first delivery error
//! is kept and returned.
//!
//! The delivery callbacks run on a polling thread of our own ([`PolledProducer`]) rather
//! than rdkafka's `ThreadedProducer`'s: that one polls for 100 ms at a time, and each
//! poll ends by spinning through its last partial millisecond (the wait is given to
//! librdkafka in whole milliseconds, rounded down, and the loop repeats with a zero wait
//! until the deadline has passed), about 1 % of a core whether or not anything is sent
//! (docs/performance.md, "2026-12-04 (night): an idle producer spins"). Polling for a
//! second at a time keeps the same spin to a tenth of that; callbacks still run as each
//! report arrives.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use tokio::sync::Notify;

use super::KafkaSetupError;
use crate::config::KafkaConfig;

/// The producer: its polling thread runs the delivery callbacks. Cheap to clone (shared).
pub type GroupProducer = Arc<PolledProducer>;

/// How long one poll of the polling thread lasts. Delivery reports are handled as they
/// arrive whatever this is; it bounds how long the thread outlives its producer handle
/// and, per poll, a spin of under a millisecond in rdkafka's poll loop (module docs).
const POLL: Duration = Duration::from_secs(1);

/// A librdkafka producer with a thread that polls it for delivery reports, stopped when
/// the producer is dropped. It dereferences to the `BaseProducer` (send, flush, client).
pub struct PolledProducer {
    producer: Arc<BaseProducer<GroupAcks>>,
    stop: Arc<AtomicBool>,
}

impl PolledProducer {
    fn start(producer: BaseProducer<GroupAcks>) -> Result<Self, KafkaSetupError> {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&producer), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("producer poll".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    p.poll(POLL);
                }
                // The last reference may be this one: the producer is then purged and
                // closed here (rdkafka's drop), off the caller's thread.
            })
            .map_err(KafkaSetupError::Thread)?;
        Ok(Self { producer, stop })
    }
}

impl Deref for PolledProducer {
    type Target = BaseProducer<GroupAcks>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl Drop for PolledProducer {
    /// Ask the thread to stop after its current poll (at most [`POLL`]), without waiting
    /// for it: callers flush what they need acknowledged before they drop the producer,
    /// and a shutdown should not wait a poll interval for nothing. The thread then drops
    /// the client: rdkafka purges what is still queued (its records fail, as they would
    /// have at once with rdkafka's own threaded producer) and waits up to 500 ms for
    /// those reports. A process that exits sooner skips that cleanup, which is harmless
    /// once the shutdown's flush returned.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The producer's context: settles each record on its [`AckGroup`].
pub struct GroupAcks;

impl ClientContext for GroupAcks {}

impl ProducerContext for GroupAcks {
    type DeliveryOpaque = Arc<AckGroup>;

    fn delivery(&self, result: &DeliveryResult<'_>, group: Arc<AckGroup>) {
        if let Err((e, _)) = result {
            group.fail(e.clone());
        }
        group.settle();
    }
}

/// The [`super::producer`] settings (idempotent, acks=all, lz4) with counted
/// acknowledgements instead of a future per record. `linger_ms`: 0 for a caller that
/// answers someone as soon as its records are in (the collector, see
/// [`super::producer`]); a few ms for one that enqueues thousands at a time.
pub fn group_producer(
    cfg: &KafkaConfig,
    message_timeout_ms: u64,
    linger_ms: u32,
) -> Result<GroupProducer, KafkaSetupError> {
    let producer = super::create_producer(cfg, message_timeout_ms, linger_ms, GroupAcks)?;
    PolledProducer::start(producer).map(Arc::new)
}

/// The acknowledgements of one group of records.
pub struct AckGroup {
    /// Records sent and not yet settled, plus one while the sender may still send.
    pending: AtomicUsize,
    /// The first delivery failure.
    error: Mutex<Option<KafkaError>>,
    /// Signalled once, when `pending` reaches zero.
    settled: Notify,
}

impl AckGroup {
    /// An empty group, open for [`AckGroup::send`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            pending: AtomicUsize::new(1),
            error: Mutex::new(None),
            settled: Notify::new(),
        })
    }

    /// Enqueue one record in `producer` as part of this group: to `partition`, or by
    /// `key` when `None`. A record the producer refuses (e.g. its queue is full) is not
    /// part of the group: the error is returned and nothing waits for it.
    pub fn send(
        self: &Arc<Self>,
        producer: &BaseProducer<GroupAcks>,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        partition: Option<i32>,
    ) -> Result<(), KafkaError> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let mut record = BaseRecord::with_opaque_to(topic, Arc::clone(self)).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        producer.send(record).map_err(|(e, _record)| {
            // The refused record (and its reference to the group) is dropped here; no
            // callback will come for it.
            self.settle();
            e
        })
    }

    /// Wait until every record sent is acknowledged or failed; the first failure is the
    /// result. Call once, after the last [`AckGroup::send`].
    pub async fn wait(&self) -> Result<(), KafkaError> {
        // Give up the sender's hold; whoever takes the count to zero signals.
        if self.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            // `Notify` keeps the signal if it comes before this await.
            self.settled.notified().await;
        }
        match self.error.lock() {
            Ok(mut e) => e.take().map_or(Ok(()), Err),
            Err(poisoned) => poisoned.into_inner().take().map_or(Ok(()), Err),
        }
    }

    fn settle(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_one();
        }
    }

    fn fail(&self, e: KafkaError) {
        let mut slot = match self.error.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        slot.get_or_insert(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;

    #[tokio::test]
    async fn an_empty_group_is_settled_at_once() {
        AckGroup::new().wait().await.unwrap();
    }

    #[tokio::test]
    async fn waits_for_the_last_record_and_keeps_the_first_error() {
        let g = AckGroup::new();
        // Three records "sent" (what a successful send does to the count).
        g.pending.fetch_add(3, Ordering::AcqRel);
        let waiter = {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.wait().await })
        };
        g.settle();
        g.fail(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut,
        ));
        g.settle();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one record still pending");
        g.fail(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
        g.settle();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("settled")
            .unwrap();
        assert_eq!(
            got.unwrap_err(),
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
        );
    }

    #[test]
    fn the_polling_thread_stops_after_the_producer_is_dropped() {
        // No broker is needed to create a producer (librdkafka connects lazily).
        let cfg = KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            ..KafkaConfig::default()
        };
        let producer = group_producer(&cfg, 1_000, 0).expect("producer");
        // The client outlives the handle exactly as long as the polling thread holds it.
        let client = Arc::downgrade(&producer.producer);
        let started = std::time::Instant::now();
        drop(producer);
        assert!(started.elapsed() < POLL, "drop does not wait for the poll");
        assert!(client.upgrade().is_some(), "the thread still polls");
        // Its last poll (up to POLL), then rdkafka's purge and flush (up to 500 ms).
        let deadline = std::time::Instant::now() + POLL * 5;
        while client.upgrade().is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(client.upgrade().is_none(), "the thread ended and let go");
    }

    #[tokio::test]
    async fn records_settled_before_the_wait_are_not_missed() {
        let g = AckGroup::new();
        g.pending.fetch_add(2, Ordering::AcqRel);
        g.settle();
        g.settle();
        tokio::time::timeout(std::time::Duration::from_secs(5), g.wait())
            .await
            .expect("no lost wakeup")
            .unwrap();
    }
}
