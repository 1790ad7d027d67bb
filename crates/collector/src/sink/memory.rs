//! A sink that keeps records in memory: for tests of the HTTP API without a broker, and
//! for embedding the collector where something else takes the records.
//!
//! Nothing is durable. A publish is all or nothing: when the sink is told to fail, the
//! request's records are not kept (a real broker may keep some of a failed request).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Records, Sink, SinkError};

/// Keeps every published record, in publish order. Clones share the same store, so a
/// test keeps one clone and gives the other to `server::Collector::new`.
#[derive(Clone)]
pub struct MemorySink {
    state: Arc<Mutex<State>>,
}

struct State {
    records: Vec<PublishedRecord>,
    fail_with: Option<SinkError>,
    ready: bool,
}

/// A record as [`MemorySink`] kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRecord {
    /// Topic it was published to.
    pub topic: String,
    /// Partitioning key (`None` for the DLQ).
    pub key: Option<Vec<u8>>,
    /// Value bytes (Avro for the raw topic, JSON for the DLQ).
    pub payload: Vec<u8>,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySink {
    /// An empty sink that accepts everything and reports itself ready.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                records: Vec::new(),
                fail_with: None,
                ready: true,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on every publish fails with `error` (`None`: succeeds again).
    pub fn fail_with(&self, error: Option<SinkError>) {
        self.state().fail_with = error;
    }

    /// What [`Sink::ready`] answers from now on.
    pub fn set_ready(&self, ready: bool) {
        self.state().ready = ready;
    }

    /// Every record published so far, in order.
    pub fn records(&self) -> Vec<PublishedRecord> {
        self.state().records.clone()
    }

    /// The records published so far to `topic`, in order.
    pub fn records_in(&self, topic: &str) -> Vec<PublishedRecord> {
        self.state()
            .records
            .iter()
            .filter(|r| r.topic == topic)
            .cloned()
            .collect()
    }
}

impl Sink for MemorySink {
    async fn publish(&self, records: &Records<'_>) -> Result<(), SinkError> {
        let mut state = self.state();
        if let Some(e) = &state.fail_with {
            return Err(e.clone());
        }
        state
            .records
            .extend(records.iter().map(|r| PublishedRecord {
                topic: r.topic.to_string(),
                key: r.key.map(<[u8]>::to_vec),
                payload: r.payload.to_vec(),
            }));
        Ok(())
    }

    async fn ready(&self) -> bool {
        self.state().ready
    }

    async fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn keeps_records_in_order_and_fails_when_told() {
        let sink = MemorySink::new();
        let mut records = Records::with_capacity(2, 8);
        records.push("raw", Some("k"), |b| b.extend_from_slice(b"v"));
        records.push("dlq", None, |b| b.extend_from_slice(b"{}"));
        sink.publish(&records).await.unwrap();
        let kept = sink.clone().records();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(sink.records_in("dlq")[0].payload, b"{}");

        sink.fail_with(Some(SinkError::Timeout(Duration::from_secs(1))));
        let e = sink.publish(&records).await.unwrap_err();
        assert_eq!(e.kind(), "timeout");
        assert_eq!(sink.records().len(), 2, "a failed publish keeps nothing");
        sink.fail_with(None);
        sink.publish(&records).await.unwrap();
        assert_eq!(sink.records().len(), 4);

        assert!(sink.ready().await);
        sink.set_ready(false);
        assert!(!sink.ready().await);
    }
}
