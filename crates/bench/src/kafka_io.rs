//! Raw Kafka traffic: producing prepared records as fast as the broker takes them, and
//! reading a topic back as fast as it is served.
//!
//! Produce uses the collector's own producer ([`touchstream_core::kafka::acks`]:
//! idempotent, acks=all, lz4, same linger and queue, acknowledgements counted per group
//! of records), so the baseline differs from the collector only by HTTP, JSON and
//! validation. Consume uses a plain `BaseConsumer`
//! assigned every partition from the beginning (no group join), the fastest a Rust
//! process on this box can read.

use std::time::{Duration, Instant};

use std::sync::Arc;

use futures::stream::{FuturesOrdered, StreamExt};
use indicatif::ProgressBar;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message, Offset, TopicPartitionList};
use touchstream_core::config::KafkaConfig;
use touchstream_core::kafka::acks::{group_producer, AckGroup};

use crate::error::BenchError;

/// How records are handed to the producer: acknowledgements are awaited per group of
/// records, with at most `in_flight` records unacknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Records per acknowledgement group (one wake-up per group, as the collector has one
    /// per request).
    pub group: usize,
    /// Records waiting for their ack at most.
    pub in_flight: usize,
}

impl Shape {
    /// As fast as the broker takes records: groups of 1,000, up to 100,000 in flight
    /// (bounds this process's memory, far above what the producer needs to keep the
    /// broker busy). The throughput baseline and the topic fills.
    pub const BULK: Shape = Shape {
        group: 1_000,
        in_flight: 100_000,
    };

    /// What the collector's producer sees from `clients` keep-alive clients posting
    /// batches of `batch` messages: each request's records are acknowledged together
    /// and a client sends its next request only after the answer, so at most
    /// `clients × batch` records are in flight. The CPU phase's raw producer.
    pub fn like_collector(clients: usize, batch: usize) -> Shape {
        Shape {
            group: batch.max(1),
            in_flight: (clients * batch).max(1),
        }
    }
}

/// What [`produce`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Produced {
    /// Records timed (all but the first).
    pub records: u64,
    /// Seconds from their first send to the last ack.
    pub secs: f64,
    /// This process's CPU seconds (user + system, every thread: librdkafka's and the
    /// runtime's) over the same time. Only the producer works in this process then.
    pub cpu_secs: f64,
}

/// How long one record may wait for its ack before the produce fails.
const MESSAGE_TIMEOUT_MS: u64 = 60_000;

/// Produce every record to `topic` and wait for all acks. The first record is sent and
/// acknowledged before the clock starts (it pays for the connection and the idempotent
/// producer's id, one-off costs a running collector has behind it).
pub async fn produce<I, K, V>(
    kafka: &KafkaConfig,
    topic: &str,
    records: I,
    shape: Shape,
    bar: &ProgressBar,
) -> Result<Produced, BenchError>
where
    I: IntoIterator<Item = Result<(K, V), BenchError>>,
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let producer = group_producer(kafka, MESSAGE_TIMEOUT_MS, 0)?;
    let failed = |e: KafkaError| BenchError::kafka(format!("producing to {topic}"), e);
    let mut records = records.into_iter();
    if let Some(first) = records.next() {
        let (key, value) = first?;
        let group = AckGroup::new();
        group
            .send(
                &producer,
                topic,
                Some(key.as_ref().as_bytes()),
                value.as_ref(),
                None,
            )
            .map_err(failed)?;
        tokio::time::timeout(Duration::from_secs(30), group.wait())
            .await
            .map_err(|_| {
                failed(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut,
                ))
            })?
            .map_err(failed)?;
        bar.inc(1);
    }
    // Groups of GROUP records, each awaited as a whole, oldest first.
    let mut pending = FuturesOrdered::new();
    let wait = |group: Arc<AckGroup>, n: u64| async move { (group.wait().await, n) };
    let mut acked: u64 = 0;
    let mut settle = |(res, n): (Result<(), KafkaError>, u64)| -> Result<(), BenchError> {
        res.map_err(failed)?;
        acked += n;
        bar.inc(n);
        Ok(())
    };
    let cpu0 = crate::procs::self_cpu_secs()?;
    let started = Instant::now();
    let mut group = AckGroup::new();
    let mut in_group: u64 = 0;
    for rec in records {
        let (key, value) = rec?;
        loop {
            match group.send(
                &producer,
                topic,
                Some(key.as_ref().as_bytes()),
                value.as_ref(),
                None,
            ) {
                Ok(()) => break,
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    // librdkafka's queue is full: wait for the oldest group (or a moment).
                    match pending.next().await {
                        Some(r) => settle(r)?,
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Err(e) => return Err(failed(e)),
            }
        }
        in_group += 1;
        if in_group as usize == shape.group {
            pending.push_back(wait(
                std::mem::replace(&mut group, AckGroup::new()),
                in_group,
            ));
            in_group = 0;
            if pending.len() * shape.group >= shape.in_flight {
                if let Some(r) = pending.next().await {
                    settle(r)?;
                }
            }
        }
    }
    pending.push_back(wait(group, in_group));
    while let Some(r) = pending.next().await {
        settle(r)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Produced {
        records: acked,
        secs,
        cpu_secs: crate::procs::self_cpu_secs()? - cpu0,
    })
}

/// Read `n` records of `topic` from the beginning of every partition. Returns the
/// seconds from the first record to the `n`-th (connection and metadata excluded, as
/// they are one-off costs), and the total including them. Blocking: run it on a
/// blocking thread.
pub fn consume(
    kafka: &KafkaConfig,
    topic: &str,
    n: u64,
    bar: &ProgressBar,
    timeout: Duration,
) -> Result<(f64, f64), BenchError> {
    let mut bytes: u64 = 0;
    let r = consume_with(kafka, topic, n, bar, timeout, |m| {
        // Touch the payload so the read is real.
        bytes += m.payload().map_or(0, |p| p.len() as u64);
    });
    tracing::debug!(bytes, "consumed");
    r
}

/// [`consume`], handing each record to `each` as it arrives.
pub fn consume_with(
    kafka: &KafkaConfig,
    topic: &str,
    n: u64,
    bar: &ProgressBar,
    timeout: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(f64, f64), BenchError> {
    // The processor's fetch wait (`consumer_config`: see `CONSUMER_FETCH_WAIT_MS`), so the
    // baseline reads as fast as the broker lets the processor; librdkafka's default
    // prefetch (the processor caps it at 16 MiB for memory) is kept.
    let consumer: BaseConsumer = touchstream_core::kafka::consumer_config(kafka)
        .set("group.id", format!("{topic}.bench-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| BenchError::kafka("creating a consumer", e))?;
    let started = Instant::now();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| BenchError::kafka(format!("metadata of {topic}"), e))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(|e| BenchError::kafka("assigning partitions", e))?;
        }
    }
    consumer
        .assign(&tpl)
        .map_err(|e| BenchError::kafka("assigning partitions", e))?;
    let mut seen: u64 = 0;
    let mut first: Option<Instant> = None;
    while seen < n {
        if started.elapsed() > timeout {
            return Err(BenchError::Timeout {
                what: format!("{n} records from {topic} (read {seen})"),
                after: timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                each(&m);
                seen += 1;
                if seen % 1024 == 0 {
                    bar.set_position(seen);
                }
            }
            Some(Err(e)) => return Err(BenchError::kafka(format!("consuming {topic}"), e)),
            None => {}
        }
    }
    bar.set_position(seen);
    let total = started.elapsed().as_secs_f64();
    let steady = first.map_or(total, |f| f.elapsed().as_secs_f64());
    Ok((steady, total))
}

/// Delete topics the run created. The broker may not support deletion (tansu in memory
/// mode forgets them on restart anyway); the error is returned for the report's notes.
pub async fn delete_topics(kafka: &KafkaConfig, topics: &[String]) -> Result<(), String> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = touchstream_core::kafka::client_config(kafka)
        .create()
        .map_err(|e| e.to_string())?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .delete_topics(&names, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err())
        .filter(|(_, code)| *code != RDKafkaErrorCode::UnknownTopicOrPartition)
        .map(|(t, code)| format!("{t}: {code}"))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join(", "))
    }
}

/// Topics the broker holds now. Blocking: run it on a blocking thread.
pub fn topic_count(kafka: &KafkaConfig) -> Result<usize, BenchError> {
    let consumer: BaseConsumer = touchstream_core::kafka::client_config(kafka)
        .create()
        .map_err(|e| BenchError::kafka("creating a metadata client", e))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| BenchError::kafka("broker metadata", e))?;
    Ok(md.topics().len())
}
