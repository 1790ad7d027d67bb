//! Ordered, recorded, idempotent schema migrations (docs/design.md §6).
//!
//! Migrations are the `deploy/clickhouse/NNNN_name.sql` files, embedded at build time and
//! applied in file-name order. Each applied file is recorded in `<db>.schema_migrations`
//! with a checksum; a recorded file is never run again, and a recorded file whose text
//! changed is an error (write a new migration instead). Statements use `IF NOT EXISTS`, so
//! a run interrupted half-way is safe to repeat; `ALTER TABLE .. ADD COLUMN`, which has no
//! `IF NOT EXISTS` on 18.16, is written without it and a column that already exists
//! counts as added.
//!
//! A file may start with `-- touchstream: min_server_version = X.Y`: on an older server
//! it is skipped and *not* recorded, so the first run after a server upgrade applies it.
//! That is how features a newer server has (codecs, skipping indexes) reach current
//! ClickHouse without breaking 18.16.
//!
//! With `clickhouse.cluster` set, each statement is rewritten for the cluster first
//! (`ON CLUSTER`, replicated `_local` tables, `Distributed` tables: [`crate::cluster`]); the
//! files themselves stay written for one server.

use clickhouse::Row;
use serde::Deserialize;
use touchstream_core::config::ClickHouseConfig;

use crate::cluster::{for_cluster, ident, on_cluster, schema_migrations_sql};
use crate::{client, server_client, server_version, ServerVersion};

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

pub use crate::error::MigrateError;

/// What happened to one migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationOutcome {
    /// Ran now and recorded.
    Applied,
    /// Recorded earlier; nothing to do.
    AlreadyApplied,
    /// Needs a newer server; not recorded.
    Skipped {
        /// Version the file requires.
        requires: ServerVersion,
    },
}

/// Per-file outcome of a `migrate` run.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    /// Server version found.
    pub server: ServerVersion,
    /// (file name, outcome), in apply order.
    pub files: Vec<(String, MigrationOutcome)>,
}

/// One parsed migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// File name, e.g. `0001_init.sql`.
    pub name: String,
    /// Version number from the file name prefix.
    pub version: u32,
    /// Minimum server version, when the file declares one.
    pub min_server: Option<ServerVersion>,
    /// Statements with `{db}` still in place.
    pub statements: Vec<String>,
    /// FNV-1a 64 of the file text, hex.
    pub checksum: String,
}

/// Parse the embedded migration files.
pub fn embedded() -> Result<Vec<Migration>, MigrateError> {
    MIGRATIONS.iter().map(|(n, t)| parse(n, t)).collect()
}

/// Parse one migration file.
pub fn parse(name: &str, text: &str) -> Result<Migration, MigrateError> {
    let version = name
        .split('_')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .ok_or_else(|| {
            MigrateError::Parse(format!(
                "migration {name}: name must start with a number, e.g. 0003_x.sql"
            ))
        })?;
    let mut min_server = None;
    let mut body = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("-- touchstream:") {
            let v = rest
                .trim()
                .strip_prefix("min_server_version")
                .and_then(|r| r.trim().strip_prefix('='))
                .ok_or_else(|| {
                    MigrateError::Parse(format!("migration {name}: unknown directive {t:?}"))
                })?;
            min_server = Some(v.trim().parse().map_err(MigrateError::Parse)?);
        } else if !t.starts_with("--") {
            body.push_str(line);
            body.push('\n');
        }
    }
    let statements = body
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    Ok(Migration {
        name: name.to_string(),
        version,
        min_server,
        statements,
        checksum: format!("{:016x}", fnv1a(text.as_bytes())),
    })
}

/// First server with `ADD COLUMN IF NOT EXISTS` we rely on (18.16 has none).
const ADD_COLUMN_IF_NOT_EXISTS: ServerVersion = ServerVersion(20, 1);

/// A statement as sent to a server of `version`: on servers that have it, `ADD COLUMN`
/// becomes `ADD COLUMN IF NOT EXISTS`, so the statement repeats safely by itself; older
/// servers get it as written and an existing column counts as added
/// ([`migrate_files`]).
fn for_server(sql: &str, version: ServerVersion) -> String {
    if version >= ADD_COLUMN_IF_NOT_EXISTS && adds_column(sql) && !sql.contains("IF NOT EXISTS") {
        sql.replace("ADD COLUMN ", "ADD COLUMN IF NOT EXISTS ")
    } else {
        sql.to_owned()
    }
}

/// Whether a statement adds columns (repeatable: see [`migrate_files`]).
fn adds_column(sql: &str) -> bool {
    let upper = sql.to_ascii_uppercase();
    upper.trim_start().starts_with("ALTER TABLE") && upper.contains("ADD COLUMN")
}

/// FNV-1a, 64 bit: stable across builds and Rust versions, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Row, Deserialize)]
struct Applied {
    name: String,
    checksum: String,
}

/// The statements `migrate` would run on an empty database of a server of `version`,
/// with `{db}` resolved — for reviewing a deployment, or for checking the SQL on another
/// engine (the test suite runs them on chDB, a current ClickHouse).
/// `cluster` is `clickhouse.cluster` (statements rewritten for it, module docs).
pub fn plan_sql(
    database: &str,
    version: ServerVersion,
    cluster: Option<&str>,
) -> Result<Vec<String>, MigrateError> {
    let db = ident(database);
    let on = cluster.map(on_cluster).unwrap_or_default();
    let mut out = vec![format!("CREATE DATABASE IF NOT EXISTS {db}{on}")];
    if let Some(c) = cluster {
        out.push(schema_migrations_sql(database, c).replace("{db}", &db));
    }
    for m in embedded()? {
        if m.min_server.is_some_and(|req| version < req) {
            continue;
        }
        for s in statements_for(&m, database, cluster)? {
            out.push(for_server(&s.replace("{db}", &db), version));
        }
    }
    Ok(out)
}

/// A migration's statements (with `{db}`) for one server, or rewritten for `cluster`.
fn statements_for(
    m: &Migration,
    database: &str,
    cluster: Option<&str>,
) -> Result<Vec<String>, MigrateError> {
    match cluster {
        None => Ok(m.statements.clone()),
        Some(c) => {
            let mut out = Vec::new();
            for s in &m.statements {
                out.extend(for_cluster(&m.name, s, database, c)?);
            }
            Ok(out)
        }
    }
}

/// Where a database stands against this binary's migrations (what a processor waits
/// for at start: README "Guarantees", Start in any order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// The server's version.
    pub server: ServerVersion,
    /// Embedded migrations not applied yet, in order: neither recorded in
    /// `schema_migrations` nor needing a newer server than this one (`migrate` skips those).
    pub pending: Vec<String>,
}

/// Read [`MigrationStatus`]; an error when ClickHouse does not answer or the database (or
/// its `schema_migrations` journal) does not exist yet.
pub async fn status(cfg: &ClickHouseConfig) -> Result<MigrationStatus, MigrateError> {
    let server = server_version(&server_client(cfg)).await?;
    let db = ident(&cfg.database);
    let applied = applied(&client(cfg), &db).await?;
    let pending = embedded()?
        .into_iter()
        .filter(|m| !applied.iter().any(|a| a.name == m.name))
        .filter(|m| m.min_server.is_none_or(|req| server >= req))
        .map(|m| m.name)
        .collect();
    Ok(MigrationStatus { server, pending })
}

/// What `schema_migrations` of `db` (a quoted identifier) records as applied.
async fn applied(ch: &clickhouse::Client, db: &str) -> Result<Vec<Applied>, MigrateError> {
    ch.query(&format!(
        "SELECT name, checksum FROM {db}.schema_migrations"
    ))
    .fetch_all()
    .await
    .map_err(MigrateError::ClickHouse)
}

/// Apply pending migrations to the configured database, creating it if needed.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<MigrationReport, MigrateError> {
    migrate_files(cfg, &embedded()?).await
}

/// Apply the given migrations (tests pass their own to check ordering and skipping).
pub async fn migrate_files(
    cfg: &ClickHouseConfig,
    migrations: &[Migration],
) -> Result<MigrationReport, MigrateError> {
    let server = server_client(cfg);
    let version = server_version(&server).await?;
    let db = ident(&cfg.database);
    let cluster = cfg.cluster.as_deref();
    // Rewrite every pending file before running any, so a table without a placement
    // fails the run before it changes anything.
    let mut planned = Vec::with_capacity(migrations.len());
    for m in migrations {
        planned.push(statements_for(m, &cfg.database, cluster)?);
    }
    let on = cluster.map(on_cluster).unwrap_or_default();
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}{on}"))
        .execute()
        .await
        .map_err(MigrateError::ClickHouse)?;
    let ch = client(cfg);
    let journal = match cluster {
        Some(c) => schema_migrations_sql(&cfg.database, c).replace("{db}", &db),
        None => format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations \
             (version UInt32, name String, checksum String, applied_at DateTime DEFAULT now()) \
             ENGINE = MergeTree ORDER BY version"
        ),
    };
    ch.query(&journal)
        .execute()
        .await
        .map_err(MigrateError::ClickHouse)?;
    let applied = applied(&ch, &db).await?;

    let mut report = MigrationReport {
        server: version,
        files: Vec::new(),
    };
    for (m, statements) in migrations.iter().zip(&planned) {
        if let Some(a) = applied.iter().find(|a| a.name == m.name) {
            if a.checksum != m.checksum {
                return Err(MigrateError::Changed {
                    file: m.name.clone(),
                    recorded: a.checksum.clone(),
                    current: m.checksum.clone(),
                });
            }
            report
                .files
                .push((m.name.clone(), MigrationOutcome::AlreadyApplied));
            continue;
        }
        if let Some(req) = m.min_server {
            if version < req {
                tracing::info!(file = %m.name, server = %version, requires = %req, "skipping migration that needs a newer server");
                report
                    .files
                    .push((m.name.clone(), MigrationOutcome::Skipped { requires: req }));
                continue;
            }
        }
        for (i, stmt) in statements.iter().enumerate() {
            let sql = for_server(&stmt.replace("{db}", &db), version);
            match ch.query(&sql).execute().await {
                Ok(()) => {}
                // 18.16 has no `ADD COLUMN IF NOT EXISTS`: a column a half-finished run
                // already added counts as added.
                Err(e) if adds_column(&sql) && e.to_string().contains("already exists") => {}
                Err(source) => {
                    return Err(MigrateError::Statement {
                        file: m.name.clone(),
                        index: i + 1,
                        source,
                    })
                }
            }
        }
        ch.query(&format!(
            "INSERT INTO {db}.schema_migrations (version, name, checksum) VALUES ({}, '{}', '{}')",
            m.version,
            m.name.replace('\'', ""),
            m.checksum
        ))
        .execute()
        .await
        .map_err(MigrateError::ClickHouse)?;
        tracing::info!(file = %m.name, "applied migration");
        report
            .files
            .push((m.name.clone(), MigrationOutcome::Applied));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_parse_in_order() {
        let ms = embedded().unwrap();
        assert!(ms.len() >= 2);
        assert!(ms.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(ms[0].name, "0001_init.sql");
        assert!(ms[0].min_server.is_none());
        assert!(ms[0]
            .statements
            .iter()
            .any(|s| s.contains("{db}.touchpoints")));
        assert_eq!(ms[1].min_server, Some(ServerVersion(20, 3)));
        assert_eq!(ms[2].min_server, Some(ServerVersion(22, 2)));
    }

    #[test]
    fn parse_splits_statements_and_strips_comments() {
        let m = parse("0007_x.sql", "-- hi; there\nCREATE A;\n\n-- c\nCREATE B;\n").unwrap();
        assert_eq!(m.version, 7);
        assert_eq!(m.statements, vec!["CREATE A", "CREATE B"]);
        assert!(parse("x.sql", "").is_err());
        let add = "ALTER TABLE t ADD COLUMN b Array(String) AFTER a";
        assert_eq!(for_server(add, ServerVersion(18, 16)), add);
        assert_eq!(
            for_server(add, ServerVersion(24, 8)),
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS b Array(String) AFTER a"
        );
        let view = "CREATE VIEW IF NOT EXISTS v AS SELECT 1";
        assert_eq!(for_server(view, ServerVersion(24, 8)), view);
        assert!(parse("0001_x.sql", "-- touchstream: bogus\n").is_err());
    }

    #[test]
    fn checksum_is_stable() {
        assert_eq!(format!("{:016x}", fnv1a(b"")), "cbf29ce484222325");
        assert_eq!(format!("{:016x}", fnv1a(b"a")), "af63dc4c8601ec8c");
    }
}
