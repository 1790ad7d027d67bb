//! Why a report could not be made. Every variant is permanent for this run: the command
//! says what to fix (start ClickHouse, migrate, name a configured funnel) and exits.

use std::path::PathBuf;

/// A failed report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// ClickHouse did not answer the first query: the server is down or the URL is wrong.
    #[error("ClickHouse at {url} did not answer ({source}); is it running (deploy/local/services.sh up) and is clickhouse.url right?")]
    Unreachable {
        /// The configured URL, password masked.
        url: String,
        /// The client's error.
        source: clickhouse::error::Error,
    },
    /// A section's query failed (e.g. a table is missing because migrations were not
    /// applied).
    #[error("the {section} query failed: {source} (a missing table means the migrations are not applied: `touchstream migrate`)")]
    Query {
        /// The report section whose query failed.
        section: &'static str,
        /// The client's error.
        source: clickhouse::error::Error,
    },
    /// `--funnel` named a funnel the funnels file does not define.
    #[error("unknown funnel `{name}`; the funnels file defines: {}", known.join(", "))]
    UnknownFunnel {
        /// The name asked for.
        name: String,
        /// The funnels the file defines, in file order.
        known: Vec<String>,
    },
    /// The funnels file (or catalog) could not be read or is invalid.
    #[error(transparent)]
    Definitions(#[from] touchstream_journey::JourneyError),
    /// `--since` is not before `--until`.
    #[error("empty period: --since must be before --until")]
    EmptyPeriod,
    /// The HTML file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
