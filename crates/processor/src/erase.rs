//! `touchstream erase --user ID | --anonymous-id ID`: delete a person everywhere the
//! pipeline stores them, and keep them from coming back (README, "Privacy").
//!
//! Steps, in this order on purpose:
//! 1. Resolve the person's ids: the user and every anonymous id linked to it
//!    (`identities`); for an anonymous id, the user it is linked to, if any, and that
//!    user's other ids; plus the ids of an earlier erasure of the same person, so a
//!    second run is the same erasure.
//! 2. Suppress them (`suppressed_ids`) before deleting anything: from the processors'
//!    next reload on, no event of theirs is stored and their state is purged
//!    ([`crate::suppression`]), so nothing is written behind the deletion.
//! 3. Delete their rows from every table (mutations: `ALTER TABLE … DELETE`, which
//!    every supported ClickHouse has), waiting for each to finish.
//! 4. Wait until no saved processor state a restore reads holds any of the ids (the
//!    processors purge and re-save; a purge's save is a whole snapshot, README
//!    "Processor state"), then drop the older snapshot versions (`OPTIMIZE … FINAL`) and
//!    the deltas of older chains (a mutation).
//! 5. Delete again (rows a processor wrote between steps 2 and its reload), and log the
//!    erasure in `erasures`: counts per table, who asked, when — no personal data.
//!
//! Kafka keeps the person's events until topic retention removes them; processors
//! drop them on any replay. See docs/ops.md for retention settings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use touchstream_core::Config;

use crate::ProcessorError;

/// Who to erase.
#[derive(Debug, Clone)]
pub enum Person {
    /// A user id (and every anonymous id linked to it).
    User(String),
    /// An anonymous id (and, if linked, its user and that user's other ids).
    Anonymous(String),
}

/// What to do, besides whom.
#[derive(Debug, Clone)]
pub struct EraseOptions {
    /// Recorded in `erasures.requested_by` (an operator or ticket name, not the person).
    pub requested_by: String,
    /// How long to wait for running processors to purge their saved state.
    pub state_wait: Duration,
}

/// Progress, reported as the erasure goes.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Ids resolved.
    Resolved(usize),
    /// A table's rows of the person deleted (rows, including old versions).
    Deleted {
        /// Table.
        table: &'static str,
        /// Rows.
        rows: u64,
    },
    /// Waiting for processors to re-save snapshots without the person.
    WaitingForState {
        /// Snapshots that still hold one of the ids.
        snapshots: usize,
    },
}

/// What an erasure did.
#[derive(Debug, Clone, Serialize)]
pub struct EraseReport {
    /// Id of this erasure (`erasures.erasure_id`).
    pub erasure_id: String,
    /// Ids resolved and suppressed.
    pub ids: usize,
    /// Rows deleted per table (all passes, old row versions included).
    pub rows_deleted: BTreeMap<&'static str, u64>,
    /// Saved snapshot versions that still hold an id when the command ends (0 once
    /// every processor holding the person has re-saved; else they are purged when a
    /// processor next loads them).
    pub snapshots_pending: usize,
}

/// The tables holding personal rows, and how a row names the person (`{ids}` is the
/// array of ids).
const TABLES: &[(&str, &str)] = &[
    (
        "events",
        "has({ids}, anonymous_id) OR has({ids}, user_id) OR has({ids}, previous_id)",
    ),
    (
        "identities",
        "has({ids}, anonymous_id) OR has({ids}, user_id)",
    ),
    (
        "identity_conflicts",
        "has({ids}, anonymous_id) OR has({ids}, linked_user_id) OR has({ids}, conflicting_user_id)",
    ),
    ("touchpoint_journey", "has({ids}, customer_id)"),
    ("customer_touchpoints", "has({ids}, customer_id)"),
    ("touchpoints_by_day", "has({ids}, customer_id)"),
    ("sessions", "has({ids}, customer_id)"),
    ("funnel_attempts", "has({ids}, customer_id)"),
    ("funnel_open_attempts", "has({ids}, customer_id)"),
    ("feedback", "has({ids}, customer_id)"),
];

#[derive(Row, Deserialize)]
struct One {
    value: String,
}

#[derive(Row, Deserialize)]
struct Count {
    n: u64,
}

#[derive(Row, Serialize)]
struct SuppressedRow {
    id: String,
    erasure_id: String,
    erased_at: u32,
    version: u64,
}

#[derive(Row, Serialize)]
struct ErasureRow {
    erasure_id: String,
    requested_at: u32,
    requested_by: String,
    ids: u32,
    rows_deleted: String,
    finished_at: u32,
    version: u64,
}

/// A SQL string literal (ClickHouse escapes: backslash and quote).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A SQL array literal of `ids`.
fn array(ids: &BTreeSet<String>) -> String {
    let items: Vec<String> = ids.iter().map(|id| literal(id)).collect();
    format!("[{}]", items.join(", "))
}

fn now() -> (u32, u64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (
        u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    )
}

async fn strings(ch: &clickhouse::Client, sql: &str) -> Result<Vec<String>, ProcessorError> {
    Ok(ch
        .query(sql)
        .fetch_all::<One>()
        .await?
        .into_iter()
        .map(|r| r.value)
        .collect())
}

/// Step 1 (module docs).
async fn resolve(
    ch: &clickhouse::Client,
    person: &Person,
) -> Result<(String, BTreeSet<String>), ProcessorError> {
    let given = match person {
        Person::User(id) | Person::Anonymous(id) => id.clone(),
    };
    let mut ids = BTreeSet::from([given.clone()]);
    let mut users = BTreeSet::new();
    match person {
        Person::User(u) => {
            users.insert(u.clone());
        }
        Person::Anonymous(a) => {
            let sql = format!(
                "SELECT user_id AS value FROM identities FINAL WHERE anonymous_id = {}",
                literal(a)
            );
            users.extend(strings(ch, &sql).await?);
        }
    }
    if !users.is_empty() {
        ids.extend(users.iter().cloned());
        let sql = format!(
            "SELECT anonymous_id AS value FROM identities FINAL WHERE has({}, user_id)",
            array(&users)
        );
        ids.extend(strings(ch, &sql).await?);
    }
    // An earlier erasure of any of these ids: the same erasure, with all its ids.
    let sql = format!(
        "SELECT DISTINCT erasure_id AS value FROM suppressed_ids FINAL WHERE has({}, id)",
        array(&ids)
    );
    let earlier = strings(ch, &sql).await?;
    let erasure_id = match earlier.first() {
        Some(e) => {
            let sql = format!(
                "SELECT id AS value FROM suppressed_ids FINAL WHERE has({}, erasure_id)",
                array(&earlier.iter().cloned().collect())
            );
            ids.extend(strings(ch, &sql).await?);
            e.clone()
        }
        None => format!("erasure-{}", uuid::Uuid::new_v4()),
    };
    Ok((erasure_id, ids))
}

/// Step 3 (module docs): delete the person's rows from every table; rows per table.
async fn delete_rows(
    ch: &clickhouse::Client,
    database: &str,
    ids: &BTreeSet<String>,
    deleted: &mut BTreeMap<&'static str, u64>,
    progress: &(dyn Fn(Progress) + Sync),
    report_zero: bool,
) -> Result<(), ProcessorError> {
    let ids_sql = array(ids);
    for (table, cond) in TABLES {
        let cond = cond.replace("{ids}", &ids_sql);
        let n = ch
            .query(&format!("SELECT count() AS n FROM {table} WHERE {cond}"))
            .fetch_one::<Count>()
            .await?
            .n;
        if n > 0 {
            ch.query(&format!("ALTER TABLE {table} DELETE WHERE {cond}"))
                .execute()
                .await?;
            wait_for_mutations(ch, database, table).await?;
        }
        *deleted.entry(table).or_default() += n;
        if n > 0 || report_zero {
            progress(Progress::Deleted { table, rows: n });
        }
    }
    Ok(())
}

async fn wait_for_mutations(
    ch: &clickhouse::Client,
    database: &str,
    table: &str,
) -> Result<(), ProcessorError> {
    let sql = format!(
        "SELECT count() AS n FROM system.mutations WHERE database = {} AND table = {} AND is_done = 0",
        literal(database),
        literal(table)
    );
    loop {
        if ch.query(&sql).fetch_one::<Count>().await?.n == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A saved whole snapshot: where it belongs, its position (for its chain id) and bytes.
#[derive(Row, Deserialize)]
struct WholeRow {
    stage: String,
    partition: i32,
    offsets: String,
    snapshot: Vec<u8>,
}

/// A saved delta: where it belongs, its chain and bytes.
#[derive(Row, Deserialize)]
struct DeltaRow {
    stage: String,
    partition: i32,
    chain: u64,
    delta: Vec<u8>,
}

/// The chain id in a saved position (`offsets`; 0 when it has none).
fn chain_of(offsets: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(offsets)
        .ok()
        .and_then(|v| v["chain"].as_u64())
        .unwrap_or(0)
}

/// Whether saved state bytes (LZ4 or plain JSON) name any of `needles` (JSON strings).
fn names_any(stored: &[u8], needles: &[Vec<u8>]) -> bool {
    let json = crate::state_codec::decode(stored)
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| stored.to_vec());
    needles
        .iter()
        .any(|n| json.windows(n.len()).any(|w| w == n.as_slice()))
}

/// Saved state holding any of `ids`: whole snapshots and deltas (README "Processor
/// state"). `newest_only`: what a restore reads, the newest whole snapshot per partition
/// and the deltas of its chain; else every stored version. Also returns the live chain
/// of each partition, `(stage, partition, chain)`.
async fn snapshots_holding(
    ch: &clickhouse::Client,
    ids: &BTreeSet<String>,
    newest_only: bool,
) -> Result<(usize, Vec<(String, i32, u64)>), ProcessorError> {
    let final_ = if newest_only { " FINAL" } else { "" };
    let needles: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| serde_json::to_vec(id).unwrap_or_default())
        .collect();
    let mut holding = 0;
    let mut live = Vec::new();
    let sql = format!("SELECT stage, partition, offsets, snapshot FROM processor_state{final_}");
    for row in ch.query(&sql).fetch_all::<WholeRow>().await? {
        if names_any(&row.snapshot, &needles) {
            holding += 1;
        }
        live.push((row.stage, row.partition, chain_of(&row.offsets)));
    }
    let sql = format!("SELECT stage, partition, chain, delta FROM processor_state_delta{final_}");
    for row in ch.query(&sql).fetch_all::<DeltaRow>().await? {
        let read = !newest_only
            || live
                .iter()
                .any(|(s, p, c)| *s == row.stage && *p == row.partition && *c == row.chain);
        if read && names_any(&row.delta, &needles) {
            holding += 1;
        }
    }
    Ok((holding, live))
}

/// Delete the deltas no restore reads any more (those of older chains: a processor
/// purging an erased person saves a whole snapshot, which starts a new chain).
async fn drop_stale_deltas(
    ch: &clickhouse::Client,
    database: &str,
    live: &[(String, i32, u64)],
) -> Result<(), ProcessorError> {
    for (stage, partition, chain) in live {
        let cond = format!(
            "stage = {} AND partition = {partition} AND chain != {chain}",
            literal(stage)
        );
        let n = ch
            .query(&format!(
                "SELECT count() AS n FROM processor_state_delta WHERE {cond}"
            ))
            .fetch_one::<Count>()
            .await?
            .n;
        if n > 0 {
            ch.query(&format!(
                "ALTER TABLE processor_state_delta DELETE WHERE {cond}"
            ))
            .execute()
            .await?;
            wait_for_mutations(ch, database, "processor_state_delta").await?;
        }
    }
    Ok(())
}

/// Erase `person` (module docs).
pub async fn erase(
    config: &Config,
    person: &Person,
    options: &EraseOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<EraseReport, ProcessorError> {
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let database = &config.clickhouse.database;
    let (requested_at, _) = now();
    let (erasure_id, ids) = resolve(&ch, person).await?;
    progress(Progress::Resolved(ids.len()));

    // 2. Suppress first.
    let (at, version) = now();
    let mut insert = ch.insert::<SuppressedRow>("suppressed_ids").await?;
    for id in &ids {
        insert
            .write(&SuppressedRow {
                id: id.clone(),
                erasure_id: erasure_id.clone(),
                erased_at: at,
                version,
            })
            .await?;
    }
    insert.end().await?;

    // 3. Delete.
    let mut deleted = BTreeMap::new();
    delete_rows(&ch, database, &ids, &mut deleted, progress, true).await?;

    // 4. Processor state.
    let started = Instant::now();
    let live = loop {
        let (holding, live) = snapshots_holding(&ch, &ids, true).await?;
        if holding == 0 || started.elapsed() >= options.state_wait {
            break live;
        }
        progress(Progress::WaitingForState { snapshots: holding });
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ch.query("OPTIMIZE TABLE processor_state FINAL")
        .execute()
        .await?;
    drop_stale_deltas(&ch, database, &live).await?;
    ch.query("OPTIMIZE TABLE processor_state_delta FINAL")
        .execute()
        .await?;
    let (snapshots_pending, _) = snapshots_holding(&ch, &ids, false).await?;

    // 5. Delete again, log.
    delete_rows(&ch, database, &ids, &mut deleted, progress, false).await?;
    let (finished_at, version) = now();
    let mut insert = ch.insert::<ErasureRow>("erasures").await?;
    insert
        .write(&ErasureRow {
            erasure_id: erasure_id.clone(),
            requested_at,
            requested_by: options.requested_by.clone(),
            ids: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            rows_deleted: serde_json::to_string(&deleted).unwrap_or_default(),
            finished_at,
            version,
        })
        .await?;
    insert.end().await?;
    Ok(EraseReport {
        erasure_id,
        ids: ids.len(),
        rows_deleted: deleted,
        snapshots_pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_quoted_as_sql_literals() {
        let ids = BTreeSet::from(["a'b".to_string(), "c\\d".to_string()]);
        assert_eq!(array(&ids), r"['a\'b', 'c\\d']");
    }
}
