//! `funnel_attempts`: closed funnel attempts, converted or dropped (journey stage).

use touchstream_journey::FunnelAttemptRow;

use super::Table;

/// The `funnel_attempts` table. Its row is the stage's [`FunnelAttemptRow`] as it is: the
/// journey crate declares the columns (see [`super`]).
pub struct FunnelAttempts;

impl Table for FunnelAttempts {
    const NAME: &'static str = "funnel_attempts";
    type Row = FunnelAttemptRow;
}
