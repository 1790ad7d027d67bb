//! ClickHouse access for Touchstream: connection and schema migrations, on one server or
//! rewritten for a cluster (`cluster`: replicated, sharded tables). The row types
//! the processor writes are declared with the processor (`touchstream_processor::tables`).
//!
//! Data comes from the processor's batches and from `touchstream migrate`; it goes to the
//! tables analysts query (docs/design.md §6). The client is built with the official `clickhouse`
//! crate over HTTP; schema validation is off because ClickHouse 18.16, which our tests run
//! on, lacks `RowBinaryWithNamesAndTypes`.

pub mod cluster;
pub mod error;
pub mod migrate;
pub mod retention;
pub mod suppression;

use touchstream_core::config::ClickHouseConfig;

pub use migrate::{
    migrate, plan_sql, status, MigrateError, MigrationOutcome, MigrationReport, MigrationStatus,
};

/// A client bound to the configured database.
pub fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    server_client(cfg).with_database(&cfg.database)
}

/// A client with no database selected (for `CREATE DATABASE` and `version()`).
///
/// On a cluster (`clickhouse.cluster`), inserts through `Distributed` tables are
/// synchronous (`insert_distributed_sync = 1`): an insert returns only once every shard
/// has its rows, so the processor commits Kafka offsets only after that (SPEC §6), and
/// a shard that is down fails the insert, which the processor retries. They also set
/// `prefer_localhost_replica = 0`: ClickHouse 18.16 answers a `SELECT` of some columns
/// `FROM <Distributed> FINAL` without `WHERE` with "Cannot find column version" when it
/// reads the server's own shard in-process; over the network it does not (README
/// "Running on a cluster").
pub fn server_client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    let c = clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_validation(false);
    if cfg.cluster.is_some() {
        c.with_setting("insert_distributed_sync", "1")
            .with_setting("prefer_localhost_replica", "0")
    } else {
        c
    }
}

/// A server version as (major, minor), e.g. (18, 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u32, pub u32);

impl std::str::FromStr for ServerVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut it = s.trim().split('.');
        let mut num = |what: &str| {
            it.next()
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or_else(|| format!("bad server version {s:?}: no {what}"))
        };
        Ok(ServerVersion(num("major")?, num("minor")?))
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Ask the server for its version.
pub async fn server_version(client: &clickhouse::Client) -> Result<ServerVersion, MigrateError> {
    let v: String = client
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(MigrateError::ClickHouse)?;
    v.parse().map_err(MigrateError::Parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            "18.16.1".parse::<ServerVersion>().unwrap(),
            ServerVersion(18, 16)
        );
        assert_eq!(
            "26.9.1.1".parse::<ServerVersion>().unwrap(),
            ServerVersion(26, 9)
        );
        assert!(ServerVersion(18, 16) < ServerVersion(20, 3));
        assert!("x".parse::<ServerVersion>().is_err());
    }
}
