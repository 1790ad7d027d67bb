//! Stage 1: identity stitching, partitioned by the Kafka key of `touchpoints.raw`
//! (anonymous id when present) and co-partitioned with `touchpoints.aliases`.
//!
//! Reads Avro touchpoints; writes the raw `events` rows, `identities` and
//! `identity_conflicts`; routes every event to `touchpoints.by_customer` keyed by its
//! customer id (re-sending earlier anonymous events when a link appears). An alias without
//! `anonymousId` sits in its userId's partition, so it is forwarded to
//! `touchpoints.aliases` keyed by `previousId`, where the owner of that id links it.

use std::sync::Arc;

use serde_json::json;
use touchstream_core::{avro, MessageType};
use touchstream_journey::{IdentityConfig, IdentityOutput, IdentitySnapshot, IdentityStage};

use crate::batch::{Batch, Record};
use crate::convert::{journey_event, ConflictRow, EventRow, IdentityRow, Routed};
use crate::metrics::Metrics;
use crate::runner::Stage;

/// Stage 1 wiring.
pub struct Identity {
    /// `touchpoints.raw`.
    pub raw_topic: String,
    /// `touchpoints.aliases`.
    pub aliases_topic: String,
    /// `touchpoints.by_customer`.
    pub routed_topic: String,
    /// `touchpoints.dlq`.
    pub dlq_topic: String,
    /// Limits of the stage.
    pub config: IdentityConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// A DLQ record for an input the processor cannot use, with where it came from.
pub fn dlq_record(
    dlq_topic: &str,
    reason: &str,
    detail: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    payload: &[u8],
) -> Record {
    let doc = json!({
        "reason": reason,
        "detail": detail,
        "source": "processor",
        "kafka_topic": topic,
        "kafka_partition": partition,
        "kafka_offset": offset,
        "payload_hex": payload.iter().take(64 * 1024).map(|b| format!("{b:02x}")).collect::<String>(),
    });
    Record {
        topic: dlq_topic.to_string(),
        key: None,
        payload: doc.to_string().into_bytes(),
    }
}

impl Stage for Identity {
    type State = IdentityStage;

    fn name(&self) -> &'static str {
        "identity"
    }

    fn topics(&self) -> Vec<String> {
        vec![self.raw_topic.clone(), self.aliases_topic.clone()]
    }

    fn new_state(&self) -> IdentityStage {
        IdentityStage::new(self.config.clone())
    }

    fn restore(&self, snapshot: &str) -> Result<IdentityStage, String> {
        let snap: IdentitySnapshot = serde_json::from_str(snapshot).map_err(|e| e.to_string())?;
        Ok(IdentityStage::from_snapshot(self.config.clone(), snap))
    }

    fn snapshot(&self, state: &IdentityStage) -> Result<String, String> {
        serde_json::to_string(&state.snapshot()).map_err(|e| e.to_string())
    }

    fn handle(
        &self,
        state: &mut IdentityStage,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
        seq: u64,
        batch: &mut Batch,
    ) {
        let tp = match avro::decode(payload) {
            Ok(tp) => tp,
            Err(e) => {
                self.metrics
                    .messages
                    .with_label_values(&["identity", "undecodable"])
                    .inc();
                tracing::warn!(topic, partition, offset, error = %e, "undecodable record sent to the DLQ");
                batch.records.push(dlq_record(
                    &self.dlq_topic,
                    "undecodable",
                    &e.to_string(),
                    topic,
                    partition,
                    offset,
                    payload,
                ));
                return;
            }
        };
        if topic == self.raw_topic {
            batch.events.push(EventRow::new(&tp, partition, offset));
            if tp.message_type == MessageType::Alias && tp.anonymous_id.is_none() {
                if let Some(prev) = &tp.previous_id {
                    batch.records.push(Record {
                        topic: self.aliases_topic.clone(),
                        key: Some(prev.clone()),
                        payload: payload.to_vec(),
                    });
                    return;
                }
            }
        }
        for out in state.process(journey_event(&tp), seq) {
            match out {
                IdentityOutput::Event(routed) => {
                    let key = routed.customer_id.clone();
                    push_routed(batch, &self.routed_topic, key, &Routed::Event(routed));
                }
                IdentityOutput::Retract(r) => {
                    let key = r.customer_id.clone();
                    push_routed(batch, &self.routed_topic, key, &Routed::Retract(r));
                }
                IdentityOutput::Link(link) => batch.identities.push(IdentityRow::from(link)),
                IdentityOutput::Conflict(c) => {
                    self.metrics
                        .identity_conflicts
                        .with_label_values(&["identity"])
                        .inc();
                    batch.conflicts.push(ConflictRow::from(c));
                }
                IdentityOutput::Rejected { event, reason } => {
                    let detail = format!("{reason:?} (event {})", event.event_id);
                    batch.records.push(dlq_record(
                        &self.dlq_topic,
                        "rejected_identity",
                        &detail,
                        topic,
                        partition,
                        offset,
                        payload,
                    ));
                }
            }
        }
    }

    fn drain(&self, _state: &mut IdentityStage, _partition: i32, _batch: &mut Batch) {}
}

fn push_routed(batch: &mut Batch, topic: &str, key: String, routed: &Routed) {
    // Serializing our own plain structs cannot fail; an empty value would be caught by
    // the journey stage's decoder and sent to the DLQ rather than lost silently.
    let payload = serde_json::to_vec(routed).unwrap_or_default();
    batch.records.push(Record {
        topic: topic.to_string(),
        key: Some(key),
        payload,
    });
}
