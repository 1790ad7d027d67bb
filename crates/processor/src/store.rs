//! ClickHouse writes with retry, and reading the per-partition state snapshots back.
//!
//! An insert is retried with exponential backoff (capped at 10 s) until it succeeds or
//! the processor shuts down: while ClickHouse is away, nothing downstream of the failed
//! batch is committed, lag grows and is reported, and nothing is lost. Rows carry
//! deterministic keys and versions, so a retried insert that had in fact landed leaves no
//! duplicate after `FINAL`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::{RowOwned, RowWrite};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::tables::processor_state::{self, Saved};
use crate::tables::Table;
use crate::ProcessorError;

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

    /// Insert `rows` into table `T` (see [`Store::insert`]).
    pub async fn write<T: Table>(
        &self,
        rows: &[T::Row],
        scope: Option<&str>,
    ) -> Result<(), ProcessorError> {
        self.insert(T::NAME, rows, scope).await
    }

    /// Insert `rows` into `table`, retrying until it succeeds. Fails only on shutdown.
    /// `scope` names the input offsets that produced the rows; on servers that support it
    /// it becomes part of the insert's deduplication token.
    pub async fn insert<R: RowOwned + RowWrite + Serialize>(
        &self,
        table: &str,
        rows: &[R],
        scope: Option<&str>,
    ) -> Result<(), ProcessorError> {
        if rows.is_empty() {
            return Ok(());
        }
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
                    return Ok(());
                }
                Err(e) => {
                    self.metrics
                        .insert_failures
                        .with_label_values(&[table])
                        .inc();
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

    /// The newest saved state of a partition, retrying while ClickHouse is away.
    pub async fn load_state(
        &self,
        stage: &str,
        partition: i32,
    ) -> Result<Option<Saved>, ProcessorError> {
        let query = processor_state::load_query();
        let mut backoff = Duration::from_millis(100);
        loop {
            let res = self
                .client
                .query(&query)
                .bind(stage)
                .bind(partition)
                .fetch_optional::<Saved>()
                .await;
            match res {
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
