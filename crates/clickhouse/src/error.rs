//! The crate's error: what can go wrong applying migrations, on one server or a cluster.
//! Its own module because both the migrator and the cluster rewriting return it.

/// Why migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The server rejected a statement or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[source] clickhouse::error::Error),
    /// A statement of a migration failed.
    #[error("migration {file} failed at statement {index}: {source}")]
    Statement {
        /// Migration file.
        file: String,
        /// 1-based statement number in the file.
        index: usize,
        /// Server error.
        source: clickhouse::error::Error,
    },
    /// An applied migration's text differs from the recorded checksum.
    #[error("migration {file} was applied with checksum {recorded} but the file now has {current}; never edit an applied migration, add a new one")]
    Changed {
        /// Migration file.
        file: String,
        /// Checksum in the table.
        recorded: String,
        /// Checksum of the embedded file.
        current: String,
    },
    /// A header or version could not be parsed.
    #[error("{0}")]
    Parse(String),
    /// A statement has no form for a cluster, or a table no placement (sharding key).
    #[error("cluster: {0}")]
    Cluster(String),
}
