-- Funnel by entry cohort: attempts by the day they started, per step: how many reached
-- it, dropped there, converted, and are still open. A day is final once nothing is open.
SELECT
    funnel,
    day,
    step,
    reached,
    dropped,
    converted,
    open AS still_open,
    round(100 * converted / reached, 1) AS conversion_pct
FROM touchstream.funnel_entry_cohort_day
ORDER BY funnel, day, step
