//! `touchstream funnels backfill NAME [--since DATE]`: recompute one funnel's attempts
//! from the history stored in ClickHouse, after its definition changed or it was added
//! (README, "Changing funnels"; docs/ops.md, "Changing a funnel").
//!
//! Why this shape: the journey stage keeps no event properties, so after a definition
//! change it cannot tell which of the events it holds match the new steps, and attempts
//! that closed before its horizon are out of its reach altogether. The stored history
//! (`touchpoints`: every placed event with its customer and properties) has both. The
//! backfill loads the journey partitions' saved state, lets the engine recompute the
//! funnel customer by customer over the stored events
//! ([`touchstream_journey::JourneyStage::backfill_customer`]), writes the rows, and
//! saves the partitions' state back, so a processor started afterwards continues as if
//! the funnel had always been defined this way. Run it with the processors stopped: a
//! running one would keep writing state the backfill then overwrites (or the reverse).

use std::collections::{BTreeMap, HashMap};

use clickhouse::Row;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use touchstream_core::Config;
use touchstream_journey::{
    Catalog, FunnelSet, JourneyConfig, JourneyEvent, JourneyOutput, JourneyStage, MessageType,
    Properties, StoredAttempt,
};

use crate::journey_stage::{decode_state_deltas, encode_state};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tables::customer_touchpoints::CustomerTouchpoints;
use crate::tables::funnel_attempts::FunnelAttempts;
use crate::tables::processor_state::{ProcessorState, StateRow};
use crate::tables::sessions::Sessions;
use crate::tables::touchpoint_journey::TouchpointJourney;
use crate::{correction_horizon_secs, ProcessorError, StateError};

/// What to recompute.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Funnel name, as in the funnels file.
    pub funnel: String,
    /// Recompute attempts that started at or after this time (epoch ms); earlier ones
    /// are left as they are. `i64::MIN`: all history.
    pub since_ms: i64,
}

/// Progress, reported as the backfill goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Stored events to read, and of how many customers.
    Started {
        /// Events.
        events: u64,
        /// Customers.
        customers: u64,
    },
    /// Events read so far.
    Events(u64),
}

/// What a backfill did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Journey partitions whose saved state was updated.
    pub partitions: usize,
    /// Customers recomputed.
    pub customers: u64,
    /// Stored events read.
    pub events: u64,
    /// Attempt rows written, tombstones included.
    pub attempt_rows: u64,
    /// Held events with no stored copy (they match no step of the funnel).
    pub missing_events: u64,
}

/// A stored placed event, as the backfill reads it (`touchpoints` columns, this order).
#[derive(Debug, Row, Deserialize)]
struct StoredEvent {
    customer_id: String,
    event_id: String,
    kind: String,
    event: String,
    anonymous_id: String,
    user_id: String,
    previous_id: String,
    event_time_ms: i64,
    message_channel: String,
    properties: String,
}

impl StoredEvent {
    fn into_event(self) -> (String, JourneyEvent) {
        let some = |s: String| (!s.is_empty()).then_some(s);
        let event = JourneyEvent {
            event_id: self.event_id,
            kind: self.kind.parse().unwrap_or(MessageType::Track),
            event: some(self.event),
            anonymous_id: some(self.anonymous_id),
            user_id: some(self.user_id),
            previous_id: some(self.previous_id),
            event_time_ms: self.event_time_ms,
            // As the identity stage passes it on (see `JourneyEvent::from(&Touchpoint)`).
            channel: (self.message_channel != "other" && !self.message_channel.is_empty())
                .then_some(self.message_channel),
            properties: Properties::from_json(&self.properties),
        };
        (self.customer_id, event)
    }
}

/// A stored attempt row of the funnel.
#[derive(Debug, Row, Deserialize)]
struct StoredRow {
    customer_id: String,
    attempt_id: String,
    closed_ms: i64,
}

/// One journey partition's saved state, loaded.
struct Partition {
    partition: i32,
    offsets: String,
    version: u64,
    engine: JourneyStage,
    sources: BTreeMap<i32, i64>,
}

/// Rows are written every this many customers, so memory stays bounded.
const FLUSH_EVERY: u64 = 2_000;

/// Run a backfill (see the module docs).
pub async fn backfill(
    config: &Config,
    options: &BackfillOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<BackfillReport, ProcessorError> {
    let pc = &config.processor;
    let catalog = Catalog::load(&pc.catalog_path)?;
    let funnels = FunnelSet::load(&pc.funnels_path)?;
    let journey_config = JourneyConfig {
        session_gap_secs: pc.session_gap_secs,
        allowed_lateness_secs: pc.allowed_lateness_secs,
        reattribution_horizon_secs: Some(correction_horizon_secs(pc, &funnels)),
        external_watermark: true,
        feedback_window_secs: pc.feedback_window_secs,
        hot_customer_max_events: pc.hot_customer_max_events,
    };
    // An unknown funnel is refused before anything is read.
    let mut spare = JourneyStage::new(journey_config.clone(), catalog.clone(), funnels.clone());
    let fi = spare.funnel_index(&options.funnel)?;
    let client = touchstream_clickhouse::client(&config.clickhouse);
    let store = Store::new(
        client.clone(),
        Metrics::new()?,
        CancellationToken::new(),
        false,
    );
    let stage_key = format!("{}-journey/journey", pc.group_id);

    // Newest version of any row of the funnel: every row written here goes above it.
    let max_version: u64 = client
        .query("SELECT max(version) FROM funnel_attempts WHERE funnel = ?")
        .bind(&options.funnel)
        .fetch_one()
        .await?;

    // The journey partitions' saved state, under today's funnels.
    let partitions: Vec<i32> = client
        .query("SELECT DISTINCT partition FROM processor_state WHERE stage = ? ORDER BY partition")
        .bind(&stage_key)
        .fetch_all()
        .await?;
    let mut parts = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let Some(saved) = store.load_chain(&stage_key, partition).await? else {
            continue;
        };
        let fail = |e| state_error(&stage_key, partition, e);
        let json =
            crate::state_codec::decode(&saved.base).map_err(|e| fail(StateError::Snapshot(e)))?;
        let deltas = saved
            .deltas
            .iter()
            .map(|d| crate::state_codec::decode(d).map(std::borrow::Cow::into_owned))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(StateError::Snapshot(e)))?;
        let (snapshot, sources) =
            decode_state_deltas(&json, &deltas).map_err(|e| fail(StateError::Restore(e)))?;
        let mut engine = JourneyStage::from_snapshot(
            journey_config.clone(),
            catalog.clone(),
            funnels.clone(),
            snapshot,
        );
        engine.raise_versions_above(max_version);
        parts.push(Partition {
            partition,
            offsets: saved.offsets,
            version: saved.version,
            engine,
            sources,
        });
    }
    // Customers no partition holds any more (or never did) are recomputed here.
    spare.raise_versions_above(max_version);
    let window_ms = funnels
        .funnels()
        .get(usize::from(fi))
        .map_or(0, |f| f.window_ms);
    let mut report = BackfillReport {
        partitions: parts.len(),
        ..BackfillReport::default()
    };

    // Buffered events have no journey row yet: their stored copies by id.
    let buffered: Vec<String> = parts
        .iter()
        .flat_map(|p| p.engine.buffered_event_ids())
        .collect();
    let mut by_id: HashMap<String, JourneyEvent> = HashMap::new();
    for chunk in buffered.chunks(1_000) {
        let rows: Vec<StoredEvent> = client
            .query(
                "SELECT '' AS customer_id, event_id, type, event, anonymous_id, user_id, \
                 previous_id, event_time_ms, message_channel, properties \
                 FROM events FINAL WHERE has(?, event_id)",
            )
            .bind(chunk)
            .fetch_all()
            .await?;
        for row in rows {
            let (_, e) = row.into_event();
            by_id.insert(e.event_id.clone(), e);
        }
    }
    for p in &mut parts {
        let missing = p.engine.rematch_buffered(fi, &|id| by_id.get(id).cloned());
        report.missing_events += missing as u64;
    }
    drop(by_id);

    // The funnel's stored rows in range, by customer: tombstoned unless produced again.
    let mut stored: HashMap<String, Vec<StoredAttempt>> = HashMap::new();
    let rows: Vec<StoredRow> = client
        .query(
            "SELECT customer_id, attempt_id, closed_ms FROM funnel_attempts FINAL \
             WHERE funnel = ? AND is_deleted = 0 AND start_ms >= ?",
        )
        .bind(&options.funnel)
        .bind(options.since_ms)
        .fetch_all()
        .await?;
    for r in rows {
        stored
            .entry(r.customer_id)
            .or_default()
            .push((r.attempt_id, r.closed_ms));
    }

    // Stored events from one window before the earliest checkpoint and `since`: enough
    // to know which attempt was open at either.
    let earliest = parts
        .iter()
        .filter_map(|p| p.engine.earliest_checkpoint_ms())
        .min()
        .unwrap_or(i64::MAX)
        .min(options.since_ms);
    let from_ms = earliest.saturating_sub(window_ms);
    // Placed events (in a session) with their customer: the `touchpoints` view's join,
    // filtered before it, and with the message channel the view leaves out.
    let placed = "FROM (SELECT event_id, type, event, anonymous_id, user_id, previous_id, \
                  event_time_ms, message_channel, properties FROM events FINAL \
                  WHERE event_time_ms >= ?) \
                  ANY INNER JOIN (SELECT event_id, customer_id FROM touchpoint_journey FINAL \
                  WHERE is_late = 0 AND session_id != '') USING event_id";
    let (events, customers): (u64, u64) = client
        .query(&format!("SELECT count(), uniqExact(customer_id) {placed}"))
        .bind(from_ms)
        .fetch_one()
        .await?;
    progress(Progress::Started { events, customers });
    let frontier = match parts.iter().filter_map(|p| p.engine.frontier_ms()).max() {
        Some(f) => f,
        // No saved state: close what the stored events' own time has passed.
        None => client
            .query(&format!("SELECT max(event_time_ms) {placed}"))
            .bind(from_ms)
            .fetch_one::<i64>()
            .await?
            .saturating_add(1),
    };

    let mut cursor = client
        .query(&format!(
            "SELECT customer_id, event_id, type, event, anonymous_id, user_id, previous_id, \
             event_time_ms, message_channel, properties {placed} \
             ORDER BY customer_id, event_time_ms, event_id"
        ))
        .bind(from_ms)
        .fetch::<StoredEvent>()?;
    let mut current: Option<(String, Vec<JourneyEvent>)> = None;
    let mut ctx = Recompute {
        fi,
        since_ms: options.since_ms,
        frontier,
        parts: &mut parts,
        spare: &mut spare,
        stored: &mut stored,
        report: &mut report,
    };
    while let Some(row) = cursor.next().await? {
        let (customer, event) = row.into_event();
        ctx.report.events += 1;
        if ctx.report.events % 10_000 == 0 {
            progress(Progress::Events(ctx.report.events));
        }
        match &mut current {
            Some((c, list)) if *c == customer => list.push(event),
            _ => {
                if let Some((c, list)) = current.replace((customer, vec![event])) {
                    ctx.customer(&c, &list);
                    if ctx.report.customers % FLUSH_EVERY == 0 {
                        ctx.write(&store).await?;
                    }
                }
            }
        }
    }
    if let Some((c, list)) = current.take() {
        ctx.customer(&c, &list);
    }
    progress(Progress::Events(ctx.report.events));
    // Stored rows of customers without stored events in range: nothing produces them.
    let rest: Vec<String> = ctx.stored.keys().cloned().collect();
    for c in rest {
        ctx.customer(&c, &[]);
    }
    ctx.write(&store).await?;

    // The partitions' state, saved where the processor will load it.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut states = Vec::with_capacity(parts.len());
    for p in &parts {
        let fail = |e| state_error(&stage_key, p.partition, e);
        let snapshot = crate::state_codec::encode(&encode_state(&p.engine, &p.sources))
            .map_err(|e| fail(StateError::Snapshot(e)))?;
        // One position ordinal more, so the processor's next save (at its next message)
        // has a higher version than this one.
        let mut offsets: serde_json::Value =
            serde_json::from_str(&p.offsets).map_err(|e| fail(StateError::Offsets(e)))?;
        let seq = offsets["seq"].as_u64().unwrap_or(p.version).max(p.version) + 1;
        offsets["seq"] = seq.into();
        // A whole snapshot of its own: the deltas saved before it do not follow it
        // (README "Processor state").
        if let Some(o) = offsets.as_object_mut() {
            o.remove("chain");
        }
        states.push(StateRow {
            stage: stage_key.clone(),
            partition: p.partition,
            offsets: offsets.to_string(),
            snapshot,
            saved_at_ms: now_ms,
            version: seq,
        });
    }
    store.write::<ProcessorState>(&states, None).await?;
    Ok(report)
}

fn state_error(key: &str, partition: i32, source: StateError) -> ProcessorError {
    ProcessorError::State {
        at: format!("{key}/{partition}"),
        source,
    }
}

/// The per-customer step and where its rows go.
struct Recompute<'a> {
    fi: u16,
    since_ms: i64,
    frontier: i64,
    parts: &'a mut Vec<Partition>,
    spare: &'a mut JourneyStage,
    stored: &'a mut HashMap<String, Vec<StoredAttempt>>,
    report: &'a mut BackfillReport,
}

impl Recompute<'_> {
    fn customer(&mut self, customer: &str, events: &[JourneyEvent]) {
        let rows = self.stored.remove(customer).unwrap_or_default();
        let engine = match self
            .parts
            .iter_mut()
            .find(|p| p.engine.holds_customer(customer))
        {
            Some(p) => &mut p.engine,
            None => &mut *self.spare,
        };
        let missing = engine.backfill_customer(
            self.fi,
            customer,
            events,
            self.since_ms,
            self.frontier,
            &rows,
        );
        self.report.missing_events += missing as u64;
        self.report.customers += 1;
    }

    /// Write every row the engines produced so far.
    async fn write(&mut self, store: &Store) -> Result<(), ProcessorError> {
        let engines = self
            .parts
            .iter_mut()
            .map(|p| &mut p.engine)
            .chain(std::iter::once(&mut *self.spare));
        let mut all = JourneyOutput::default();
        for engine in engines {
            let out = engine.take_output();
            all.touchpoints.extend(out.touchpoints);
            all.customer_touchpoints.extend(out.customer_touchpoints);
            all.sessions.extend(out.sessions);
            all.attempts.extend(out.attempts);
        }
        self.report.attempt_rows += all.attempts.len() as u64;
        store
            .write::<TouchpointJourney>(&all.touchpoints, None)
            .await?;
        store
            .write::<CustomerTouchpoints>(&all.customer_touchpoints, None)
            .await?;
        store.write::<Sessions>(&all.sessions, None).await?;
        store.write::<FunnelAttempts>(&all.attempts, None).await?;
        Ok(())
    }
}
