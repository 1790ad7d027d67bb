//! Why a bench phase (or the whole run) failed.
//!
//! A failing phase does not stop the run: its error is recorded in the report and the
//! other phases still measure. Only set-up failures (no ClickHouse, no broker, bad
//! options) end the run early. Nothing here is retried: a bench that needs retries to
//! finish is reporting a problem.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options cannot produce figures.
    #[error("invalid bench options: {0}")]
    Options(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Kafka client or broker error.
    #[error("kafka ({what}): {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// Topic creation failed.
    #[error(transparent)]
    KafkaSetup(#[from] touchstream_core::kafka::KafkaSetupError),
    /// A ClickHouse query or insert failed.
    #[error("clickhouse ({what}): {source}")]
    ClickHouse {
        /// What was being done.
        what: String,
        /// The client's error.
        source: clickhouse::error::Error,
    },
    /// Migrating a bench database failed.
    #[error(transparent)]
    Migrate(#[from] touchstream_clickhouse::MigrateError),
    /// An HTTP request to the collector failed at the transport level.
    #[error("http to the collector: {0}")]
    Http(#[from] reqwest::Error),
    /// The collector answered something other than 200 or a retryable 503.
    #[error("collector answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// An analyst-phase query failed or its results disagree.
    #[error("analyst phase: {0}")]
    Analyst(String),
    /// A generated message was not one the collector accepts (a generator bug).
    #[error("generated message rejected: {0}")]
    Workload(String),
    /// A child process (collector or processor under test) exited on its own.
    #[error("{name} exited ({status}); last log lines from {}:\n{tail}", log.display())]
    ChildExited {
        /// `collector` or `processor`.
        name: String,
        /// Exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {:.0?} waiting for {what}", after)]
    Timeout {
        /// What was awaited, with the progress reached.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// A background task panicked.
    #[error("bench task failed: {0}")]
    Task(String),
    /// Ctrl-C / SIGTERM.
    #[error("cancelled")]
    Cancelled,
}

impl BenchError {
    /// Shorthand for [`BenchError::Io`].
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    /// Shorthand for [`BenchError::Kafka`].
    pub fn kafka(what: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        BenchError::Kafka {
            what: what.into(),
            source,
        }
    }

    /// Shorthand for [`BenchError::ClickHouse`].
    pub fn clickhouse(what: impl Into<String>, source: clickhouse::error::Error) -> Self {
        BenchError::ClickHouse {
            what: what.into(),
            source,
        }
    }
}
