//! The `[clickhouse]` section: where the processor writes and `touchstream migrate`
//! creates the tables, and how long `touchstream retention` keeps their rows. The
//! password is hidden from `Debug`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The tables `touchstream retention` can expire, each with the column its monthly
/// partitions (`toYYYYMM`) are cut by (deploy/clickhouse/0001, 0005, 0007).
pub const RETENTION_TABLES: [(&str, &str); 7] = [
    ("events", "event_date"),
    ("touchpoint_journey", "event_date"),
    ("customer_touchpoints", "event_date"),
    ("touchpoints_by_day", "event_date"),
    ("sessions", "started_at"),
    ("funnel_attempts", "closed_at"),
    ("funnel_open_attempts", "started_at"),
];

/// ClickHouse connection.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP(S) endpoint. Default `http://127.0.0.1:8123`. Use `https://` for TLS.
    pub url: String,
    /// Database holding Touchstream's tables; created by `touchstream migrate`.
    /// Default `touchstream`.
    pub database: String,
    /// User. Default `default`.
    pub user: String,
    /// Password. Default empty. Prefer `TOUCHSTREAM__CLICKHOUSE__PASSWORD_FILE`.
    pub password: String,
    /// Days each table keeps its rows, by table name (one of [`RETENTION_TABLES`]);
    /// `touchstream retention` drops the monthly partitions whose whole month is older
    /// (README "Privacy"). At least 1. Default empty: every table keeps everything.
    pub retention_days: BTreeMap<String, u32>,
    /// Name of a cluster in the servers' `remote_servers` config (README "Running on a
    /// cluster"). When set, `touchstream migrate` creates every table `ON CLUSTER`: a
    /// `Replicated…MergeTree` `<table>_local` on each server (ZooKeeper path with the
    /// `{shard}`/`{replica}` macros) and a `Distributed` table under the usual name,
    /// sharded by the table's key, so analysts query the same names as on one server;
    /// inserts through it are synchronous (`insert_distributed_sync = 1`). Default
    /// unset: one server, plain `ReplacingMergeTree` tables.
    pub cluster: Option<String>,
}

// Hand-written so the password never reaches a log line.
impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &masked_url(&self.url))
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("retention_days", &self.retention_days)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// `url` with the password of its user-info (`scheme://user:password@host`) replaced by
/// `***`, for `touchstream config` and log lines (README "Configuration").
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "touchstream".into(),
            user: "default".into(),
            password: String::new(),
            retention_days: BTreeMap::new(),
            cluster: None,
        }
    }
}

impl ClickHouseConfig {
    /// The first thing wrong with the section, if anything: a `retention_days` entry
    /// for a table retention cannot expire, or of 0 days.
    pub(super) fn problem(&self) -> Option<String> {
        if let Some(c) = &self.cluster {
            if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                return Some(format!(
                    "clickhouse.cluster: {c:?} is not a cluster name (letters, digits, `_`)"
                ));
            }
        }
        for (table, days) in &self.retention_days {
            if !RETENTION_TABLES.iter().any(|(t, _)| t == table) {
                let known: Vec<&str> = RETENTION_TABLES.iter().map(|(t, _)| *t).collect();
                return Some(format!(
                    "clickhouse.retention_days: {table:?} is not a partitioned table; one of {}",
                    known.join(", ")
                ));
            }
            if *days == 0 {
                return Some(format!(
                    "clickhouse.retention_days: {table} = 0; at least 1 (leave a table out to keep it)"
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod mask_tests {
    use super::*;

    #[test]
    fn url_credentials_are_masked_in_debug() {
        let c = ClickHouseConfig {
            url: "https://admin:s3cret@ch.example:8443/?database=x".into(),
            ..ClickHouseConfig::default()
        };
        let shown = format!("{c:#?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("https://admin:***@ch.example:8443/?database=x"),
            "{shown}"
        );
        assert_eq!(masked_url("http://127.0.0.1:8123"), "http://127.0.0.1:8123");
        assert_eq!(masked_url("http://u@h:1"), "http://u@h:1");
    }
}
