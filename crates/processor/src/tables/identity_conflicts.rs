//! `identity_conflicts`: later links that were refused because the anonymous id was linked
//! already (identity stage).

use touchstream_journey::Conflict;

use super::Table;

/// The `identity_conflicts` table. Its row is the stage's [`Conflict`] as it is: the
/// journey crate declares the columns (see [`super`]).
pub struct IdentityConflicts;

impl Table for IdentityConflicts {
    const NAME: &'static str = "identity_conflicts";
    type Row = Conflict;
}
