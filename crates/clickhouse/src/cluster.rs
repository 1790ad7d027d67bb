//! Migrations on a ClickHouse cluster (README "Running on a cluster", docs/design.md §6).
//!
//! The migration files are written for one server. When `clickhouse.cluster` is set,
//! [`for_cluster`] rewrites each statement for the cluster instead of the files being
//! written twice, so a migration added later runs on both without anyone remembering:
//!
//! - a sharded table `T` ([`PLACEMENT`]) becomes `T_local`, created `ON CLUSTER` with the
//!   `Replicated…` form of its engine (ZooKeeper path `/clickhouse/tables/{shard}/<db>/T`,
//!   replica `{replica}`), plus a `Distributed` table named `T` over it, sharded by the
//!   table's key. Analysts and the processor use the same names as on one server.
//! - a table on every server (`processor_state`, the privacy tables, `schema_migrations`)
//!   is one replicated table whose replicas are all the servers (path
//!   `/clickhouse/tables/all/<db>/T`, so `{replica}` must be unique in the cluster): each
//!   is small and read by key (a processor reads its snapshot back from whichever server
//!   it talks to), and a sharded copy would only add a network hop to every read.
//! - views are created `ON CLUSTER` over the `Distributed` tables: they run on the server
//!   the analyst asks and read every shard.
//! - a materialized view is created `ON CLUSTER` over the `_local` tables, so each shard
//!   feeds its own target with its own rows; its source and target must be sharded by the
//!   same key, which [`for_cluster`] checks.
//! - `ALTER TABLE` goes to the `_local` tables `ON CLUSTER`; one that changes columns also
//!   re-creates the `Distributed` table, which holds no data (inserts are synchronous) and
//!   cannot be altered `ON CLUSTER` when shards are replicated (ClickHouse 18.16 refuses).
//! - `INSERT … SELECT` runs as written, through the `Distributed` tables.
//!
//! Sharding keys keep deduplication correct: every key is a function of the columns of
//! the table's `ORDER BY` (its ReplacingMergeTree key), so all versions of a row, and its
//! tombstone, land on one shard, where `FINAL` collapses them; a query on the
//! `Distributed` table then gives the single-server answer. A test checks it for every
//! table the migrations create.

use crate::error::MigrateError;

/// Where a table's rows live on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Spread over the shards by this expression of the table's key columns.
    Sharded(&'static str),
    /// A full copy on every server.
    EveryServer,
}

/// Every table the migrations create, with its placement on a cluster. A migration that
/// creates a table not listed here fails on a cluster, and the unit tests fail at once.
pub const PLACEMENT: &[(&str, Placement)] = &[
    // Raw events and the journey stage's decision per event: by event, their key. The
    // two are joined by event_id (the `touchpoints` view), so both use the same key.
    ("events", Placement::Sharded("cityHash64(event_id)")),
    (
        "touchpoint_journey",
        Placement::Sharded("cityHash64(event_id)"),
    ),
    // One customer's journey rows on one shard: customer_id is in their key, and a
    // re-attribution writes a tombstone under the old customer's key.
    (
        "customer_touchpoints",
        Placement::Sharded("cityHash64(customer_id)"),
    ),
    // Fed per shard by touchpoints_by_day_mv from customer_touchpoints: the same key.
    (
        "touchpoints_by_day",
        Placement::Sharded("cityHash64(customer_id)"),
    ),
    ("identities", Placement::Sharded("cityHash64(anonymous_id)")),
    (
        "identity_conflicts",
        Placement::Sharded("cityHash64(anonymous_id)"),
    ),
    // Keyed by their own ids: a rewritten or tombstoned session/attempt keeps its id.
    ("sessions", Placement::Sharded("cityHash64(session_id)")),
    (
        "funnel_attempts",
        Placement::Sharded("cityHash64(attempt_id)"),
    ),
    (
        "funnel_open_attempts",
        Placement::Sharded("cityHash64(attempt_id)"),
    ),
    // Survey answers (0010), keyed by the answer's event like `events`.
    ("feedback", Placement::Sharded("cityHash64(event_id)")),
    ("processor_state", Placement::EveryServer),
    // Incremental snapshots beside processor_state (0011): read back the same way.
    ("processor_state_delta", Placement::EveryServer),
    ("suppressed_ids", Placement::EveryServer),
    ("erasures", Placement::EveryServer),
];

/// The placement of `table`, if declared.
pub fn placement(table: &str) -> Option<Placement> {
    PLACEMENT.iter().find(|(t, _)| *t == table).map(|(_, p)| *p)
}

/// Suffix of the per-server table under a `Distributed` one.
pub const LOCAL_SUFFIX: &str = "_local";

/// ZooKeeper path of a replicated table: per shard, or one for every server.
fn zk_path(database: &str, table: &str, placement: Placement) -> String {
    let scope = match placement {
        Placement::Sharded(_) => "{shard}",
        Placement::EveryServer => "all",
    };
    literal(&format!("/clickhouse/tables/{scope}/{database}/{table}"))
}

/// A ClickHouse string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Quote an identifier (backticks).
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// The `ON CLUSTER` clause.
pub fn on_cluster(cluster: &str) -> String {
    format!(" ON CLUSTER {}", ident(cluster))
}

/// `schema_migrations` on a cluster: on every server, like `processor_state`, so
/// `migrate` run against any server sees what was applied.
pub fn schema_migrations_sql(database: &str, cluster: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {{db}}.schema_migrations{} \
         (version UInt32, name String, checksum String, applied_at DateTime DEFAULT now()) \
         ENGINE = ReplicatedMergeTree({}, '{{replica}}') ORDER BY version",
        on_cluster(cluster),
        zk_path(database, "schema_migrations", Placement::EveryServer)
    )
}

/// The `Distributed` table `name` over `name_local`.
fn distributed_sql(database: &str, cluster: &str, name: &str, key: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {{db}}.{name}{on} AS {{db}}.{name}{LOCAL_SUFFIX} \
         ENGINE = Distributed({c}, {d}, {t}, {key})",
        on = on_cluster(cluster),
        c = ident(cluster),
        d = literal(database),
        t = literal(&format!("{name}{LOCAL_SUFFIX}")),
    )
}

fn cluster_error(file: &str, what: String) -> MigrateError {
    MigrateError::Cluster(format!("migration {file}: {what}"))
}

/// The identifier right after `{db}.` at the start of `s`, and the rest.
fn table_after_db(s: &str) -> Option<(&str, &str)> {
    let rest = s.trim_start().strip_prefix("{db}.")?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| rest.split_at(end))
}

/// `rest` with its leading keywords (case-insensitive, any whitespace) removed, if it
/// starts with them.
fn strip_words<'a>(rest: &'a str, words: &[&str]) -> Option<&'a str> {
    let mut r = rest.trim_start();
    for w in words {
        let head = r.get(..w.len())?;
        if !head.eq_ignore_ascii_case(w) {
            return None;
        }
        r = &r[w.len()..];
        if !r.starts_with(char::is_whitespace) && !r.is_empty() {
            return None;
        }
        r = r.trim_start();
    }
    Some(r)
}

/// Rewrite one statement (with `{db}` still in place) of migration `file` for a cluster;
/// see the module docs. `database` is the configured database's name (for ZooKeeper
/// paths and `Distributed` arguments). The result still has `{db}` placeholders.
pub fn for_cluster(
    file: &str,
    sql: &str,
    database: &str,
    cluster: &str,
) -> Result<Vec<String>, MigrateError> {
    let on = on_cluster(cluster);
    if let Some(r) = strip_words(sql, &["CREATE", "TABLE"]) {
        let r = strip_words(r, &["IF", "NOT", "EXISTS"])
            .ok_or_else(|| cluster_error(file, "CREATE TABLE without IF NOT EXISTS".to_string()))?;
        let (name, body) = table_after_db(r)
            .ok_or_else(|| cluster_error(file, format!("cannot read the table name in {r:.60}")))?;
        let place = placement(name).ok_or_else(|| {
            cluster_error(
                file,
                format!(
                    "table {name} has no placement on a cluster: add it, with its sharding key, \
                     to PLACEMENT in crates/clickhouse/src/cluster.rs (README \"Running on a cluster\")"
                ),
            )
        })?;
        let local = match place {
            Placement::Sharded(_) => format!("{name}{LOCAL_SUFFIX}"),
            Placement::EveryServer => name.to_string(),
        };
        let body = replicated_engine(file, body, &zk_path(database, name, place))?;
        let mut out = vec![format!(
            "CREATE TABLE IF NOT EXISTS {{db}}.{local}{on}{body}"
        )];
        if let Placement::Sharded(key) = place {
            out.push(distributed_sql(database, cluster, name, key));
        }
        return Ok(out);
    }
    if let Some(r) = strip_words(sql, &["CREATE", "VIEW", "IF", "NOT", "EXISTS"]) {
        let (name, body) = table_after_db(r)
            .ok_or_else(|| cluster_error(file, format!("cannot read the view name in {r:.60}")))?;
        return Ok(vec![format!(
            "CREATE VIEW IF NOT EXISTS {{db}}.{name}{on}{body}"
        )]);
    }
    if let Some(r) = strip_words(
        sql,
        &["CREATE", "MATERIALIZED", "VIEW", "IF", "NOT", "EXISTS"],
    ) {
        let (name, body) = table_after_db(r)
            .ok_or_else(|| cluster_error(file, format!("cannot read the view name in {r:.60}")))?;
        let (body, keys) = to_local_tables(body);
        if keys.windows(2).any(|w| w[0] != w[1]) {
            return Err(cluster_error(
                file,
                format!(
                    "materialized view {name} reads and writes tables sharded by different keys \
                     ({}); on a cluster each shard feeds its own target, so they must match",
                    keys.join(", ")
                ),
            ));
        }
        return Ok(vec![format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{name}{on}{body}"
        )]);
    }
    if let Some(r) = strip_words(sql, &["DROP", "TABLE", "IF", "EXISTS"]) {
        let (name, rest) = table_after_db(r)
            .ok_or_else(|| cluster_error(file, format!("cannot read the table name in {r:.60}")))?;
        let mut out = vec![format!("DROP TABLE IF EXISTS {{db}}.{name}{on}{rest}")];
        if let Some(Placement::Sharded(_)) = placement(name) {
            out.push(format!(
                "DROP TABLE IF EXISTS {{db}}.{name}{LOCAL_SUFFIX}{on}{rest}"
            ));
        }
        return Ok(out);
    }
    if let Some(r) = strip_words(sql, &["ALTER", "TABLE"]) {
        let (name, rest) = table_after_db(r)
            .ok_or_else(|| cluster_error(file, format!("cannot read the table name in {r:.60}")))?;
        return Ok(match placement(name) {
            Some(Placement::Sharded(key)) => {
                let mut out = vec![format!("ALTER TABLE {{db}}.{name}{LOCAL_SUFFIX}{on}{rest}")];
                if rest.to_ascii_uppercase().contains("COLUMN") {
                    out.push(format!("DROP TABLE IF EXISTS {{db}}.{name}{on}"));
                    out.push(distributed_sql(database, cluster, name, key));
                }
                out
            }
            Some(Placement::EveryServer) => {
                vec![format!("ALTER TABLE {{db}}.{name}{on}{rest}")]
            }
            None => {
                return Err(cluster_error(
                    file,
                    format!("ALTER TABLE of {name}, which has no placement on a cluster"),
                ))
            }
        });
    }
    if strip_words(sql, &["INSERT", "INTO"]).is_some() {
        return Ok(vec![sql.to_string()]);
    }
    Err(cluster_error(
        file,
        format!(
            "no cluster form for the statement {:.60}… (CREATE TABLE/VIEW/MATERIALIZED VIEW, \
             DROP TABLE, ALTER TABLE and INSERT have one: extend crates/clickhouse/src/cluster.rs)",
            sql.trim()
        ),
    ))
}

/// `body` (after a table name: columns, `ENGINE = X(args)`, the rest) with the engine
/// replaced by its replicated form at `path`.
fn replicated_engine(file: &str, body: &str, path: &str) -> Result<String, MigrateError> {
    let at = body
        .find("ENGINE")
        .ok_or_else(|| cluster_error(file, "CREATE TABLE without ENGINE".to_string()))?;
    let after = body[at + "ENGINE".len()..].trim_start();
    let after = after
        .strip_prefix('=')
        .ok_or_else(|| cluster_error(file, "ENGINE without =".to_string()))?
        .trim_start();
    let name_end = after
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(after.len());
    let (engine, tail) = after.split_at(name_end);
    if !engine.ends_with("MergeTree") || engine.starts_with("Replicated") {
        return Err(cluster_error(
            file,
            format!("engine {engine}: only a plain *MergeTree has a replicated form here"),
        ));
    }
    let (args, tail) = match tail.strip_prefix('(') {
        Some(t) => {
            let close = t
                .find(')')
                .ok_or_else(|| cluster_error(file, format!("unclosed {engine}(")))?;
            (t[..close].trim(), &t[close + 1..])
        }
        None => ("", tail),
    };
    let args = if args.is_empty() {
        String::new()
    } else {
        format!(", {args}")
    };
    Ok(format!(
        "{}ENGINE = Replicated{engine}({path}, '{{replica}}'{args}){tail}",
        &body[..at]
    ))
}

/// `body` with every `{db}.T` of a sharded table turned into `{db}.T_local`, and the
/// sharding keys of those tables (in order of appearance).
fn to_local_tables(body: &str) -> (String, Vec<&'static str>) {
    let mut out = String::with_capacity(body.len());
    let mut keys = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("{db}.") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        match table_after_db(after) {
            Some((name, tail)) => {
                out.push_str("{db}.");
                out.push_str(name);
                if let Some(Placement::Sharded(key)) = placement(name) {
                    out.push_str(LOCAL_SUFFIX);
                    keys.push(key);
                }
                rest = tail;
            }
            None => {
                out.push_str("{db}.");
                rest = &after["{db}.".len()..];
            }
        }
    }
    out.push_str(rest);
    (out, keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::embedded;

    /// Tables the embedded migrations create, with the columns of their ORDER BY.
    fn created_tables() -> Vec<(String, String, Vec<String>)> {
        let mut out = Vec::new();
        for m in embedded().unwrap() {
            for s in &m.statements {
                let Some(r) = strip_words(s, &["CREATE", "TABLE", "IF", "NOT", "EXISTS"]) else {
                    continue;
                };
                let (name, body) = table_after_db(r).unwrap();
                let order = body
                    .split("ORDER BY")
                    .nth(1)
                    .unwrap_or_else(|| panic!("{name} has no ORDER BY"));
                let cols = order
                    .trim()
                    .trim_start_matches('(')
                    .split([',', ')', '\n'])
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect();
                out.push((m.name.clone(), name.to_string(), cols));
            }
        }
        out
    }

    #[test]
    fn every_table_has_a_placement_and_shards_by_its_own_key() {
        for (file, table, order_by) in created_tables() {
            let place = placement(&table).unwrap_or_else(|| {
                panic!("{file} creates {table}, which has no PLACEMENT entry (sharding key)")
            });
            if let Placement::Sharded(key) = place {
                let col = key
                    .strip_prefix("cityHash64(")
                    .and_then(|k| k.strip_suffix(')'))
                    .unwrap_or(key);
                for c in col.split(',') {
                    assert!(
                        order_by.iter().any(|o| o == c.trim()),
                        "{table}: sharding key {key} uses {c}, not in its ORDER BY {order_by:?}: \
                         versions of one row could land on two shards and FINAL would miss them"
                    );
                }
            }
        }
    }

    #[test]
    fn every_embedded_statement_has_a_cluster_form() {
        for m in embedded().unwrap() {
            for s in &m.statements {
                let out = for_cluster(&m.name, s, "db", "c")
                    .unwrap_or_else(|e| panic!("{}: {e}", m.name));
                for o in &out {
                    let head = o.split('(').next().unwrap_or(o);
                    if !o.starts_with("INSERT") {
                        assert!(head.contains("ON CLUSTER `c`"), "{o}");
                    }
                }
            }
        }
    }

    #[test]
    fn tables_become_replicated_local_plus_distributed() {
        let sql = "CREATE TABLE IF NOT EXISTS {db}.sessions\n(session_id String, version UInt64)\n\
                   ENGINE = ReplacingMergeTree(version)\nPARTITION BY x\nORDER BY session_id";
        let out = for_cluster("0001_x.sql", sql, "shop", "prod").unwrap();
        assert_eq!(
            out,
            vec![
                "CREATE TABLE IF NOT EXISTS {db}.sessions_local ON CLUSTER `prod`\n\
                 (session_id String, version UInt64)\nENGINE = ReplicatedReplacingMergeTree(\
                 '/clickhouse/tables/{shard}/shop/sessions', '{replica}', version)\n\
                 PARTITION BY x\nORDER BY session_id"
                    .to_string(),
                "CREATE TABLE IF NOT EXISTS {db}.sessions ON CLUSTER `prod` AS {db}.sessions_local \
                 ENGINE = Distributed(`prod`, 'shop', 'sessions_local', cityHash64(session_id))"
                    .to_string(),
            ]
        );
        let state = "CREATE TABLE IF NOT EXISTS {db}.processor_state (stage String) \
                     ENGINE = ReplacingMergeTree() ORDER BY stage";
        assert_eq!(
            for_cluster("f", state, "shop", "prod").unwrap(),
            vec![
                "CREATE TABLE IF NOT EXISTS {db}.processor_state ON CLUSTER `prod` (stage String) \
                 ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/shop/processor_state', \
                 '{replica}') ORDER BY stage"
            ]
        );
    }

    #[test]
    fn a_new_table_without_placement_is_a_clear_error() {
        let sql =
            "CREATE TABLE IF NOT EXISTS {db}.feedback_x (a String) ENGINE = MergeTree ORDER BY a";
        let e = for_cluster("0099_x.sql", sql, "db", "c")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0099_x.sql")
                && e.contains("feedback_x")
                && e.contains("PLACEMENT in crates/clickhouse/src/cluster.rs"),
            "{e}"
        );
        let unknown = for_cluster("0099_x.sql", "OPTIMIZE TABLE {db}.events", "db", "c");
        assert!(unknown.is_err());
    }

    #[test]
    fn views_alters_and_materialized_views() {
        let mv = "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoints_by_day_mv TO {db}.touchpoints_by_day AS\n\
                  SELECT a FROM {db}.customer_touchpoints";
        assert_eq!(
            for_cluster("f", mv, "db", "c").unwrap(),
            vec![
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoints_by_day_mv ON CLUSTER `c` \
                 TO {db}.touchpoints_by_day_local AS\nSELECT a FROM {db}.customer_touchpoints_local"
            ]
        );
        let crossed = "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.x TO {db}.sessions AS SELECT a FROM {db}.events";
        assert!(for_cluster("f", crossed, "db", "c")
            .unwrap_err()
            .to_string()
            .contains("different keys"));
        let add = "ALTER TABLE {db}.funnel_attempts\n    ADD COLUMN b Array(String) AFTER a";
        let out = for_cluster("f", add, "db", "c").unwrap();
        assert_eq!(
            out[0],
            "ALTER TABLE {db}.funnel_attempts_local ON CLUSTER `c`\n    ADD COLUMN b Array(String) AFTER a"
        );
        assert_eq!(
            out[1],
            "DROP TABLE IF EXISTS {db}.funnel_attempts ON CLUSTER `c`"
        );
        assert!(out[2].contains(
            "ENGINE = Distributed(`c`, 'db', 'funnel_attempts_local', cityHash64(attempt_id))"
        ));
        let index = "ALTER TABLE {db}.events ADD INDEX IF NOT EXISTS i x TYPE minmax GRANULARITY 4";
        assert_eq!(for_cluster("f", index, "db", "c").unwrap().len(), 1);
        let view = "CREATE VIEW IF NOT EXISTS {db}.v AS SELECT 1 FROM {db}.events FINAL";
        assert_eq!(
            for_cluster("f", view, "db", "c").unwrap(),
            vec!["CREATE VIEW IF NOT EXISTS {db}.v ON CLUSTER `c` AS SELECT 1 FROM {db}.events FINAL"]
        );
        let drop = "DROP TABLE IF EXISTS {db}.touchpoints_daily";
        assert_eq!(
            for_cluster("f", drop, "db", "c").unwrap(),
            vec!["DROP TABLE IF EXISTS {db}.touchpoints_daily ON CLUSTER `c`"]
        );
    }
}
