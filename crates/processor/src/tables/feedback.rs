//! `feedback`: survey answers with the touchpoint each rates (journey stage; README
//! "Feedback attribution", `deploy/clickhouse/0010_feedback.sql`).

use touchstream_journey::FeedbackRow;

use super::Table;

/// The `feedback` table. Its row is the stage's [`FeedbackRow`] as it is: the journey
/// crate declares the columns (see [`super`]).
pub struct Feedback;

impl Table for Feedback {
    const NAME: &'static str = "feedback";
    type Row = FeedbackRow;
}
