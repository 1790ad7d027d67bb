//! `touchstream retention`: drop the monthly partitions whose whole month is older than
//! a table's `clickhouse.retention_days` (README "Privacy").
//!
//! ClickHouse 18.16 has no table TTL, and every partitioned table is cut by month
//! (`toYYYYMM`), so expiring data is `ALTER TABLE … DROP PARTITION` of whole months: a
//! month is dropped once its last day is more than `retention_days` days before today
//! (UTC), never earlier, so rows are kept at least as long as configured and at most a
//! month longer. Dropping a partition is cheap (its files are removed) and a run finds
//! only the partitions still there, so running it daily from cron is idempotent.

use clickhouse::Row;
use serde::Deserialize;
use time::{Date, Duration, Month};
use touchstream_core::config::{ClickHouseConfig, RETENTION_TABLES};

use crate::client;

/// Why retention could not run.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The server rejected a statement or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// One partition past its table's retention.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Expired {
    /// Table.
    pub table: String,
    /// Partition: its month as `YYYYMM`.
    pub partition: u32,
    /// Rows in its active parts (before merges collapse versions).
    pub rows: u64,
}

/// What a run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    /// Partitions past retention, oldest first per table, in table order.
    pub expired: Vec<Expired>,
    /// Whether they were dropped (`false` for a dry run).
    pub dropped: bool,
}

/// Progress of a run, for the CLI to print as it goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A table's retention and the partitions it keeps from (`YYYYMM`).
    Table {
        /// Table.
        table: &'a str,
        /// `retention_days`.
        days: u32,
        /// First month kept.
        keeps_from: u32,
    },
    /// A partition about to be dropped (or that would be, in a dry run).
    Partition(&'a Expired),
}

#[derive(Row, Deserialize)]
struct PartRow {
    partition: String,
    rows: u64,
}

/// The first month (`YYYYMM`) a table with `days` of retention keeps on `today`: the
/// month holding the day `days` before today, since a month goes only once all of it is
/// older than that.
pub fn first_kept_month(today: Date, days: u32) -> u32 {
    let cutoff = today
        .checked_sub(Duration::days(i64::from(days)))
        .unwrap_or(Date::MIN);
    // The cutoff day itself is within retention, so its month stays; every earlier
    // month is wholly older.
    month_id(cutoff.year(), cutoff.month())
}

fn month_id(year: i32, month: Month) -> u32 {
    u32::try_from(year).unwrap_or(0) * 100 + u32::from(u8::from(month))
}

/// Find the partitions past retention on `today` and, unless `dry_run`, drop them;
/// `progress` hears of each as it goes. Tables without `retention_days` are not looked
/// at.
pub async fn run(
    cfg: &ClickHouseConfig,
    today: Date,
    dry_run: bool,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<RetentionReport, RetentionError> {
    let ch = client(cfg);
    let mut report = RetentionReport {
        expired: Vec::new(),
        dropped: !dry_run,
    };
    for (table, _) in RETENTION_TABLES {
        let Some(&days) = cfg.retention_days.get(table) else {
            continue;
        };
        let keeps_from = first_kept_month(today, days);
        progress(Progress::Table {
            table,
            days,
            keeps_from,
        });
        let parts: Vec<PartRow> = ch
            .query(
                "SELECT partition, sum(rows) AS rows FROM system.parts \
                 WHERE database = ? AND table = ? AND active \
                 GROUP BY partition ORDER BY partition",
            )
            .bind(&cfg.database)
            .bind(table)
            .fetch_all()
            .await?;
        for part in parts {
            // toYYYYMM partitions are named by their number; anything else is not ours
            // to judge.
            let Ok(month) = part.partition.trim_matches('\'').parse::<u32>() else {
                continue;
            };
            if month >= keeps_from {
                continue;
            }
            let expired = Expired {
                table: table.to_string(),
                partition: month,
                rows: part.rows,
            };
            progress(Progress::Partition(&expired));
            if !dry_run {
                ch.query(&format!("ALTER TABLE {table} DROP PARTITION {month}"))
                    .execute()
                    .await?;
            }
            report.expired.push(expired);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn a_month_goes_only_when_all_of_it_is_past_retention() {
        // 400 days before 2026-12-03 is 2025-10-29: October 2025 still has kept days.
        assert_eq!(first_kept_month(date!(2026 - 12 - 03), 400), 202510);
        // 30 days before 2026-03-31 is 2026-03-01: February is wholly older.
        assert_eq!(first_kept_month(date!(2026 - 03 - 31), 30), 202603);
        // 30 days before 2026-03-30 is 2026-02-28, February's last day: kept.
        assert_eq!(first_kept_month(date!(2026 - 03 - 30), 30), 202602);
        assert_eq!(first_kept_month(date!(2026 - 01 - 15), 1), 202601);
        assert_eq!(first_kept_month(date!(2026 - 01 - 01), 1), 202512);
    }
}
