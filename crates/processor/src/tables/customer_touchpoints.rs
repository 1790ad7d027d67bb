//! `customer_touchpoints`: each event with its journey, keyed by customer and time (journey
//! stage), so that one customer's journey is a primary-key range read; its materialized
//! view fills `touchpoints_by_day` (`deploy/clickhouse/0007_customer_touchpoints.sql`).

use touchstream_journey::CustomerTouchpointRow;

use super::Table;

/// The `customer_touchpoints` table. Its row is the stage's [`CustomerTouchpointRow`] as it
/// is: the journey crate declares the columns (see [`super`]).
pub struct CustomerTouchpoints;

impl Table for CustomerTouchpoints {
    const NAME: &'static str = "customer_touchpoints";
    type Row = CustomerTouchpointRow;
}
