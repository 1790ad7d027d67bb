//! `funnel_open_attempts`: funnel attempts still open at the journey stage's release
//! frontier, rewritten as they advance and tombstoned when they close (journey stage).

use touchstream_journey::FunnelOpenAttemptRow;

use super::Table;

/// The `funnel_open_attempts` table (`deploy/clickhouse/0005_open_attempts.sql`). Its row
/// is the stage's [`FunnelOpenAttemptRow`] as it is (see [`super`]).
pub struct FunnelOpenAttempts;

impl Table for FunnelOpenAttempts {
    const NAME: &'static str = "funnel_open_attempts";
    type Row = FunnelOpenAttemptRow;
}
