//! The stage's Kafka consumer, and what librdkafka's statistics tell the loop about it:
//! high watermarks (is a partition caught up?), revocations, an unfinished group join.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use super::ctx::RunCtx;
use super::stage::Stage;
use crate::ProcessorError;

/// How long a group join may stay unfinished before the stage restarts with a new
/// consumer: longer than the rebalance timeout (`max.poll.interval.ms`, 60 s), the
/// longest a broker may legitimately hold a join while waiting for members.
pub(super) const GROUP_STALL: Duration = Duration::from_secs(90);

/// Keeps each partition's high watermark and lag from librdkafka's statistics for the
/// idle check. (The lag metric comes from [`crate::lag`], which does not depend on the
/// loop polling.)
pub struct LagContext {
    /// (high watermark, consumer lag) per topic partition.
    high: Mutex<HashMap<(String, i32), (i64, i64)>>,
    /// Revocations seen so far. The loop compares it with its own count: a partition
    /// that was revoked may have been processed by another member in between, so its
    /// in-memory state is stale and is reloaded from the saved snapshot.
    revocations: AtomicU64,
    /// Since when the statistics have shown the group join unfinished (librdkafka's
    /// `cgrp.join_state` other than `steady`); `None` while steady.
    joining_since: Mutex<Option<Instant>>,
}

impl LagContext {
    /// How long the group join has been unfinished, per the latest statistics.
    pub(super) fn joining_for(&self) -> Duration {
        self.joining_since
            .lock()
            .ok()
            .and_then(|since| since.map(|s| s.elapsed()))
            .unwrap_or_default()
    }

    /// Revocations so far.
    pub(super) fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::SeqCst)
    }

    /// (high watermark, consumer lag) of a topic partition, as the statistics last
    /// reported them (every second; no broker round trip, so the loop never blocks on
    /// it); `None` if they have not yet.
    pub(super) fn high_watermark(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let high = self.high.lock().ok()?;
        high.get(&(topic.to_string(), partition)).copied()
    }
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        if let (Some(cgrp), Ok(mut since)) = (&stats.cgrp, self.joining_since.lock()) {
            if cgrp.join_state == "steady" {
                *since = None;
            } else if since.is_none() {
                *since = Some(Instant::now());
            }
        }
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.hi_offset >= 0 {
                    if let Ok(mut high) = self.high.lock() {
                        high.insert((topic.clone(), *p), (part.hi_offset, part.consumer_lag));
                    }
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            self.revocations.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The stage's consumer, subscribed to its topics.
pub(super) fn subscribe<S: Stage>(
    stage: &S,
    ctx: &RunCtx,
    instance_id: Option<&str>,
) -> Result<StreamConsumer<LagContext>, ProcessorError> {
    // librdkafka prefetches up to 64 MiB per consumer by default: memory that does not
    // buy throughput here (each stage drains its queue in batches of `batch_max_rows`).
    // A default like the fetch wait: `kafka.client_properties` can override it.
    let mut config = touchstream_core::kafka::consumer_config_with(
        &ctx.kafka,
        &[("queued.max.messages.kbytes", "16384")],
    );
    if let Some(id) = instance_id {
        config.set("group.instance.id", id);
    }
    let consumer: StreamConsumer<LagContext> = config
        .set("group.id", &ctx.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Range assignment gives partition p of every input topic to the same member:
        // the co-partitioning the identity stage relies on.
        .set("partition.assignment.strategy", "range")
        .set("statistics.interval.ms", "1000")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // Also the rebalance timeout: how long a rebalance waits for a member that died
        // without leaving (SIGKILL). The default 5 min would stall every partition that
        // long; a flush retrying through a ClickHouse outage longer than this makes the
        // member leave and rejoin, which the snapshots make safe.
        .set("max.poll.interval.ms", "60000")
        .create_with_context(LagContext {
            high: Mutex::new(HashMap::new()),
            revocations: AtomicU64::new(0),
            joining_since: Mutex::new(None),
        })?;
    let topics = stage.topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(stage = stage.name(), group = %ctx.group_id, topics = ?topics, "stage consuming");
    Ok(consumer)
}
