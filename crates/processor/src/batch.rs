//! Everything one flush writes: records for internal topics and the DLQ, and rows per
//! ClickHouse table. Stages fill it; the runner writes it in a fixed order.

use crate::convert::{AttemptDbRow, ConflictRow, EventRow, IdentityRow, JourneyRow, SessionDbRow};
use crate::store::Store;
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

/// Outputs accumulated since the last flush.
#[derive(Default)]
pub struct Batch {
    /// Internal-topic and DLQ records, in production order.
    pub records: Vec<Record>,
    /// `events` rows.
    pub events: Vec<EventRow>,
    /// `identities` rows.
    pub identities: Vec<IdentityRow>,
    /// `identity_conflicts` rows.
    pub conflicts: Vec<ConflictRow>,
    /// `touchpoint_journey` rows.
    pub journey: Vec<JourneyRow>,
    /// `sessions` rows.
    pub sessions: Vec<SessionDbRow>,
    /// `funnel_attempts` rows.
    pub attempts: Vec<AttemptDbRow>,
}

impl Batch {
    /// Write every table's rows (each retried until stored), all tables at once: the
    /// inserts are independent, and a flush waits for the slowest instead of the sum.
    /// `scope` names the input offset ranges of the batch (deduplication tokens).
    pub async fn write(&self, store: &Store, scope: &str) -> Result<(), ProcessorError> {
        let scope = Some(scope);
        futures::try_join!(
            store.insert("events", &self.events, scope),
            store.insert("identities", &self.identities, scope),
            store.insert("identity_conflicts", &self.conflicts, scope),
            store.insert("touchpoint_journey", &self.journey, scope),
            store.insert("sessions", &self.sessions, scope),
            store.insert("funnel_attempts", &self.attempts, scope),
        )?;
        Ok(())
    }

    /// Forget everything (after a write, or when a failed flush is abandoned).
    pub fn clear(&mut self) {
        *self = Batch::default();
    }
}
