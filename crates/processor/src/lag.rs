//! Consumer lag measured from outside the consume loop.
//!
//! Lag is the broker's end offset minus the group's committed offset, per input
//! partition. Committed offsets only move after rows are stored, so this is the backlog not
//! yet safely in ClickHouse — and, unlike librdkafka's statistics (served only while the
//! consume loop polls), it keeps growing and being reported while a flush is stuck
//! retrying a ClickHouse outage.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use touchstream_core::config::KafkaConfig;

use crate::metrics::Metrics;

/// How often lag is measured.
pub const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Measure `group`'s lag on `topics` every [`LAG_INTERVAL`] until `shutdown`.
pub async fn monitor(
    kafka: KafkaConfig,
    group: String,
    topics: Vec<String>,
    stage: &'static str,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    // Not subscribed, so it never joins the group: it only reads committed offsets.
    let consumer: BaseConsumer = match touchstream_core::kafka::client_config(&kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(stage, error = %e, "lag monitor could not create its client");
            return;
        }
    };
    let consumer = Arc::new(consumer);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LAG_INTERVAL) => {}
        }
        let (c, t) = (consumer.clone(), topics.clone());
        let measured = tokio::task::spawn_blocking(move || measure(&c, &t)).await;
        match measured {
            Ok(Ok(lags)) => {
                for (topic, partition, lag) in lags {
                    metrics
                        .consumer_lag
                        .with_label_values(&[stage, &topic, &partition.to_string()])
                        .set(lag);
                }
            }
            Ok(Err(e)) => tracing::debug!(stage, error = %e, "measuring lag failed"),
            Err(e) => tracing::debug!(stage, error = %e, "lag task failed"),
        }
    }
}

fn measure(
    consumer: &BaseConsumer,
    topics: &[String],
) -> Result<Vec<(String, i32, i64)>, rdkafka::error::KafkaError> {
    let timeout = Duration::from_secs(3);
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), timeout)?;
        for t in md.topics() {
            for p in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
                tpl.add_partition(topic, p.id());
                ends.push((topic.clone(), p.id(), low, high));
            }
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    Ok(ends
        .into_iter()
        .map(|(topic, p, low, high)| {
            let at = committed
                .find_partition(&topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(n) => Some(n),
                    _ => None,
                })
                .unwrap_or(low);
            (topic, p, (high - at).max(0))
        })
        .collect())
}
