//! `touchpoint_journey`: each event's customer, session, stage and channel (journey stage);
//! the `touchpoints` view joins it to `events`.

use touchstream_journey::TouchpointRow;

use super::Table;

/// The `touchpoint_journey` table. Its row is the stage's [`TouchpointRow`] as it is: the
/// journey crate declares the columns (see [`super`]).
pub struct TouchpointJourney;

impl Table for TouchpointJourney {
    const NAME: &'static str = "touchpoint_journey";
    type Row = TouchpointRow;
}
