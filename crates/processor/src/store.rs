//! ClickHouse writes with retry, and reading the per-partition state snapshots back.
//!
//! Each failed insert is classified ([`classify`]):
//! - retryable (the network, a timeout, an overloaded server, too many parts, or a setup
//!   problem such as a missing table or denied access, which no row can be blamed for):
//!   retried with exponential backoff (capped at 10 s) until it succeeds or the processor
//!   shuts down. While ClickHouse is away, nothing downstream of the failed batch is
//!   committed, lag grows and is reported, and nothing is lost.
//! - permanent (the server refuses the rows themselves, and would refuse them again: a
//!   value it cannot store, a `throwIf`/constraint, too many partitions in one block):
//!   the batch is split in halves until the offending rows stand alone; everything else
//!   is stored, and the refused rows are handed back as [`Rejected`] for the dead-letter
//!   topic (README, "Dead-letter topic"), so one bad row never stalls the stream.
//!
//! Rows carry deterministic keys and versions, so a retried insert that had in fact
//! landed, or a half stored twice while splitting, leaves no duplicate after `FINAL`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::{RowOwned, RowWrite};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::tables::processor_state::{self, Saved};
use crate::tables::processor_state_delta::{self, SavedDelta};
use crate::tables::Table;
use crate::{ProcessorError, StateError};

/// A partition's saved state as [`Store::load_chain`] reads it.
#[derive(Debug)]
pub struct SavedChain {
    /// The whole snapshot's chain id (0: saved without one, no deltas follow it).
    pub chain: u64,
    /// The position the state stands for: the last delta's, else the whole snapshot's.
    pub offsets: String,
    /// The whole snapshot's version.
    pub version: u64,
    /// The whole snapshot, as stored.
    pub base: Vec<u8>,
    /// The deltas after it, in order, as stored.
    pub deltas: Vec<Vec<u8>>,
}

/// What the chain checks read of a saved position (`offsets`).
#[derive(Deserialize)]
struct ChainPosition {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    chain: u64,
}

/// ClickHouse access for the processor.
#[derive(Clone)]
pub struct Store {
    client: clickhouse::Client,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// The server supports `insert_deduplication_token` (ClickHouse 22.2+).
    dedup_tokens: bool,
}

/// First ClickHouse release with `insert_deduplication_token`.
pub const DEDUP_TOKEN_SINCE: touchstream_clickhouse::ServerVersion =
    touchstream_clickhouse::ServerVersion(22, 2);

/// The deduplication token of one insert: the input offset ranges that produced it, the
/// table, and a hash of the rows. Equal only for a byte-identical retry of the same
/// batch, so ClickHouse drops exactly the duplicates and never a differing block.
pub fn dedup_token<R: Serialize>(scope: &str, table: &str, rows: &[R]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(rows).unwrap_or_default().hash(&mut h);
    format!("{scope}/{table}/{:016x}", h.finish())
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a failed insert says about its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertFault {
    /// Try the same rows again later: the failure is the network's, the server's load, or
    /// the setup's, not the rows'.
    Retryable,
    /// The server refuses these rows and will again: find which and set them aside.
    Permanent,
}

/// ClickHouse error codes that say nothing against the rows: transient (network,
/// timeouts, memory, too many parts/queries, replicas and ZooKeeper) or a setup problem
/// an operator must fix (unknown database/table/column, a row shape the table does not
/// have, access, read-only), which every row of every batch would hit alike. Retried.
const RETRYABLE_CODES: &[u32] = &[
    3,    // UNEXPECTED_END_OF_FILE
    8,    // THERE_IS_NO_COLUMN
    10,   // NOT_FOUND_COLUMN_IN_BLOCK
    16,   // NO_SUCH_COLUMN_IN_TABLE
    33,   // CANNOT_READ_ALL_DATA (row shape differs from the table's)
    47,   // UNKNOWN_IDENTIFIER
    60,   // UNKNOWN_TABLE
    62,   // SYNTAX_ERROR
    81,   // UNKNOWN_DATABASE
    159,  // TIMEOUT_EXCEEDED
    160,  // TOO_SLOW
    164,  // READONLY
    173,  // CANNOT_ALLOCATE_MEMORY
    192,  // UNKNOWN_USER
    193,  // WRONG_PASSWORD
    194,  // REQUIRED_PASSWORD
    195,  // IP_ADDRESS_NOT_ALLOWED
    201,  // QUOTA_EXCEEDED
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    203,  // NO_FREE_CONNECTION
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    225,  // NO_ZOOKEEPER
    236,  // ABORTED
    241,  // MEMORY_LIMIT_EXCEEDED
    242,  // TABLE_IS_READ_ONLY
    243,  // NOT_ENOUGH_SPACE
    252,  // TOO_MANY_PARTS (but see `classify`: too many partitions per block is the rows')
    279,  // ALL_CONNECTION_TRIES_FAILED
    319,  // UNKNOWN_STATUS_OF_INSERT
    394,  // QUERY_WAS_CANCELLED
    425,  // SYSTEM_ERROR
    439,  // CANNOT_SCHEDULE_TASK
    497,  // ACCESS_DENIED
    516,  // AUTHENTICATION_FAILED
    999,  // KEEPER_EXCEPTION
    1000, // POCO_EXCEPTION
];

/// The ClickHouse error code in a server's error text (`Code: 395. DB::Exception: ...`).
fn error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Classify a failed insert (module docs). A server error whose code is not in
/// [`RETRYABLE_CODES`] is permanent, as is a row the client cannot encode; everything
/// without a server code (connection refused, reset, timed out) is retryable.
pub fn classify(e: &clickhouse::error::Error) -> InsertFault {
    use clickhouse::error::Error as E;
    match e {
        E::BadResponse(text) => match error_code(text) {
            // Modern servers' `max_partitions_per_insert_block`: a smaller block passes.
            Some(252) if text.contains("partitions for single INSERT block") => {
                InsertFault::Permanent
            }
            Some(code) if RETRYABLE_CODES.contains(&code) => InsertFault::Retryable,
            Some(_) => InsertFault::Permanent,
            None => InsertFault::Retryable,
        },
        E::DataFormat(_) | E::Custom(_) | E::SequenceMustHaveLength | E::InvalidUtf8Encoding(_) => {
            InsertFault::Permanent
        }
        _ => InsertFault::Retryable,
    }
}

/// A row ClickHouse refused for good, set aside for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Table it was meant for.
    pub table: String,
    /// The row as JSON.
    pub row: serde_json::Value,
    /// The server's reason.
    pub error: String,
}

/// One insert attempt's outcome after retries: stored, or refused for good.
enum Attempt {
    Stored,
    Refused(clickhouse::error::Error),
}

impl Store {
    /// A store writing to the configured database.
    pub fn new(
        client: clickhouse::Client,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        dedup_tokens: bool,
    ) -> Self {
        Self {
            client,
            metrics,
            shutdown,
            dedup_tokens,
        }
    }

    /// Insert `rows` into table `T`, every one of them: a row the server refuses for good
    /// is an error ([`ProcessorError::Refused`]). For rows that must all land or none
    /// matter (snapshots, a backfill's recomputation).
    pub async fn write<T: Table>(
        &self,
        rows: &[T::Row],
        scope: Option<&str>,
    ) -> Result<(), ProcessorError> {
        let rejected = self.insert(T::NAME, rows, scope).await?;
        match rejected.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(ProcessorError::Refused {
                table: first.table,
                error: first.error,
            }),
        }
    }

    /// Insert `rows` into table `T`, setting aside the rows the server refuses for good
    /// (see [`Store::insert`]).
    pub async fn write_or_set_aside<T: Table>(
        &self,
        rows: &[T::Row],
        scope: Option<&str>,
    ) -> Result<Vec<Rejected>, ProcessorError> {
        self.insert(T::NAME, rows, scope).await
    }

    /// Insert `rows` into `table`, retrying retryable failures until it succeeds; rows
    /// the server refuses for good are found by splitting the batch and returned, the
    /// rest stored (module docs). Fails only on shutdown. `scope` names the input offsets
    /// that produced the rows; on servers that support it it becomes part of each
    /// insert's deduplication token.
    pub async fn insert<R: RowOwned + RowWrite + Serialize>(
        &self,
        table: &str,
        rows: &[R],
        scope: Option<&str>,
    ) -> Result<Vec<Rejected>, ProcessorError> {
        let mut rejected = Vec::new();
        // Ranges still to store, the next one last; a refused range of more than one row
        // is replaced by its two halves.
        let mut todo = Vec::with_capacity(8);
        todo.push(0..rows.len());
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            let part = &rows[range.clone()];
            match self.insert_retrying(table, part, scope).await? {
                Attempt::Stored => {}
                Attempt::Refused(e) if part.len() == 1 => {
                    self.metrics.rejected_rows.with_label_values(&[table]).inc();
                    tracing::error!(table, error = %e, "clickhouse refused a row for good; sending it to the dead-letter topic");
                    rejected.push(Rejected {
                        table: table.to_string(),
                        row: serde_json::to_value(&part[0]).unwrap_or_default(),
                        error: e.to_string(),
                    });
                }
                Attempt::Refused(e) => {
                    tracing::warn!(table, rows = part.len(), error = %e, "clickhouse refused the batch for good; splitting it to find the rows");
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
            }
        }
        Ok(rejected)
    }

    /// One insert of `rows`, retried with backoff while the failure is retryable.
    async fn insert_retrying<R: RowOwned + RowWrite + Serialize>(
        &self,
        table: &str,
        rows: &[R],
        scope: Option<&str>,
    ) -> Result<Attempt, ProcessorError> {
        let token = scope
            .filter(|_| self.dedup_tokens)
            .map(|scope| dedup_token(scope, table, rows));
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.try_insert(table, rows, token.as_deref()).await {
                Ok(()) => {
                    self.metrics
                        .insert_seconds
                        .with_label_values(&[table])
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics
                        .batch_rows
                        .with_label_values(&[table])
                        .observe(rows.len() as f64);
                    return Ok(Attempt::Stored);
                }
                Err(e) => {
                    self.metrics
                        .insert_failures
                        .with_label_values(&[table])
                        .inc();
                    if classify(&e) == InsertFault::Permanent {
                        return Ok(Attempt::Refused(e));
                    }
                    tracing::warn!(table, rows = rows.len(), error = %e, retry_in_ms = backoff.as_millis() as u64, "clickhouse insert failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(ProcessorError::ShuttingDown),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn try_insert<R: RowOwned + RowWrite>(
        &self,
        table: &str,
        rows: &[R],
        token: Option<&str>,
    ) -> Result<(), clickhouse::error::Error> {
        let mut insert = self.client.insert::<R>(table).await?;
        if let Some(token) = token {
            insert = insert.with_setting("insert_deduplication_token", token);
        }
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    /// The newest saved whole state of a partition, retrying while ClickHouse is away.
    pub async fn load_state(
        &self,
        stage: &str,
        partition: i32,
    ) -> Result<Option<Saved>, ProcessorError> {
        let query = processor_state::load_query();
        self.read_retrying(stage, partition, || {
            self.client
                .query(&query)
                .bind(stage)
                .bind(partition)
                .fetch_optional::<Saved>()
        })
        .await
    }

    /// The newest saved state of a partition: its whole snapshot and the deltas saved
    /// after it (README "Processor state"), retrying while ClickHouse is away.
    pub async fn load_chain(
        &self,
        stage: &str,
        partition: i32,
    ) -> Result<Option<SavedChain>, ProcessorError> {
        let Some(base) = self.load_state(stage, partition).await? else {
            return Ok(None);
        };
        let fail = |e| ProcessorError::State {
            at: format!("{stage}/{partition}"),
            source: StateError::Offsets(e),
        };
        let mut at: ChainPosition = serde_json::from_str(&base.offsets).map_err(fail)?;
        let mut chain = SavedChain {
            chain: at.chain,
            offsets: base.offsets,
            version: base.version,
            base: base.snapshot,
            deltas: Vec::new(),
        };
        if chain.chain == 0 {
            return Ok(Some(chain));
        }
        for d in self.load_deltas(stage, partition, chain.chain).await? {
            // Slots 1, 2, ... in order: a gap means the rest was not saved in this chain
            // (a save failed, or an older chain's rows remain there).
            if usize::try_from(d.slot).ok() != Some(chain.deltas.len() + 1) {
                break;
            }
            let next: ChainPosition = serde_json::from_str(&d.offsets).map_err(fail)?;
            if next.chain != chain.chain || next.seq < at.seq {
                break;
            }
            at = next;
            chain.offsets = d.offsets;
            chain.deltas.push(d.delta);
        }
        Ok(Some(chain))
    }

    /// The deltas saved after the whole state `chain` of a partition, in slot order
    /// (gaps included: the caller stops at the first), retrying while ClickHouse is away.
    pub async fn load_deltas(
        &self,
        stage: &str,
        partition: i32,
        chain: u64,
    ) -> Result<Vec<SavedDelta>, ProcessorError> {
        let query = processor_state_delta::load_query();
        self.read_retrying(stage, partition, || {
            self.client
                .query(&query)
                .bind(stage)
                .bind(partition)
                .bind(chain)
                .fetch_all::<SavedDelta>()
        })
        .await
    }

    /// Run a read of saved state until it succeeds or the processor shuts down.
    async fn read_retrying<T, F, Fut>(
        &self,
        stage: &str,
        partition: i32,
        read: F,
    ) -> Result<T, ProcessorError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, clickhouse::error::Error>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match read().await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::warn!(stage, partition, error = %e, "loading processor state failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(ProcessorError::ShuttingDown),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> clickhouse::error::Error {
        clickhouse::error::Error::BadResponse(text.to_string())
    }

    #[test]
    fn refusals_of_the_rows_are_permanent_and_the_rest_retryable() {
        use InsertFault::{Permanent, Retryable};
        // 18.16's text for a throwIf in a MATERIALIZED column, and a value it cannot parse.
        assert_eq!(classify(&server("Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, e.what() = DB::Exception")), Permanent);
        assert_eq!(
            classify(&server(
                "Code: 6. DB::Exception: Cannot parse string 'x' as UInt32"
            )),
            Permanent
        );
        assert_eq!(classify(&server("Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100).")), Permanent);
        assert_eq!(classify(&server("Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts.")), Retryable);
        assert_eq!(
            classify(&server(
                "Code: 60. DB::Exception: Table ts.events doesn't exist."
            )),
            Retryable
        );
        assert_eq!(
            classify(&server(
                "Code: 241. DB::Exception: Memory limit (for query) exceeded"
            )),
            Retryable
        );
        assert_eq!(classify(&server("502 Bad Gateway")), Retryable);
        assert_eq!(classify(&clickhouse::error::Error::TimedOut), Retryable);
        assert_eq!(
            classify(&clickhouse::error::Error::Custom("bad".into())),
            Permanent
        );
    }

    #[test]
    fn tokens_differ_by_scope_table_and_content() {
        let a = dedup_token("g/identity:raw#0:5-9", "events", &["x"]);
        assert_eq!(a, dedup_token("g/identity:raw#0:5-9", "events", &["x"]));
        assert!(a.starts_with("g/identity:raw#0:5-9/events/"));
        assert_ne!(a, dedup_token("g/identity:raw#0:5-10", "events", &["x"]));
        assert_ne!(a, dedup_token("g/identity:raw#0:5-9", "sessions", &["x"]));
        assert_ne!(a, dedup_token("g/identity:raw#0:5-9", "events", &["y"]));
    }
}
