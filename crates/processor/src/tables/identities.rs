//! `identities`: anonymous → user links, the first one per anonymous id (identity stage).

use touchstream_journey::Link;

use super::Table;

/// The `identities` table. Its row is the stage's [`Link`] as it is: the journey crate
/// declares the columns (see [`super`]).
pub struct Identities;

impl Table for Identities {
    const NAME: &'static str = "identities";
    type Row = Link;
}
