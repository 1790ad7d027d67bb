//! The ClickHouse tables the processor writes: one module per table, each holding the
//! table's name, its row type and how a stage's output becomes a row.
//!
//! Where the columns are declared: a table whose rows a journey state machine decides
//! (`identities`, `identity_conflicts`, `touchpoint_journey`, `customer_touchpoints`, `sessions`,
//! `funnel_attempts`, `funnel_open_attempts`, `feedback`) uses that crate's output struct as its row, as it is — the journey
//! crate derives `clickhouse::Row` on it (feature `clickhouse`) and stores enums, flags
//! and partition times the way the table holds them (`touchstream_journey::columns`).
//! Converting instead would declare every such table's columns twice, once per crate,
//! with a field-by-field copy in between. Tables fed from elsewhere (`events`, from the
//! Avro touchpoint; `processor_state`, the runner's snapshots) declare their row here.
//!
//! Adding a table: a migration in `deploy/clickhouse/`, a module here with its [`Table`]
//! impl, and its line in the list of tables in [`crate::batch`]; the batch then carries
//! its rows and every flush writes them together with the others.

pub mod customer_touchpoints;
pub mod events;
pub mod feedback;
pub mod funnel_attempts;
pub mod funnel_open_attempts;
pub mod identities;
pub mod identity_conflicts;
pub mod processor_state;
pub mod processor_state_delta;
pub mod sessions;
pub mod touchpoint_journey;

use clickhouse::{RowOwned, RowWrite};
use serde::Serialize;

/// A ClickHouse table: its name and the row type inserted into it.
pub trait Table {
    /// The table's name in the configured database (also the metrics' `table` label).
    const NAME: &'static str;
    /// One row, its fields the table's columns in insert order.
    type Row: RowOwned + RowWrite + Serialize + Send + Sync;
}
