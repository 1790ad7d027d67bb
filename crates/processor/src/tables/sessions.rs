//! `sessions`: sessions per customer, rewritten as they grow (journey stage).

use touchstream_journey::SessionRow;

use super::Table;

/// The `sessions` table. Its row is the stage's [`SessionRow`] as it is: the journey crate
/// declares the columns (see [`super`]).
pub struct Sessions;

impl Table for Sessions {
    const NAME: &'static str = "sessions";
    type Row = SessionRow;
}
