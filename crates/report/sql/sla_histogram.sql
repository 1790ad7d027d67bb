-- Report, complaint → follow-up SLA distribution: followed-up complaints (attempts of the
-- SLA funnel closed in [since, until) that reached step 2) per delay bucket. `bucket` is
-- the 1-based index of the first upper edge (minutes, bound as an array) the delay is
-- below; 0 for delays at or past the last edge.
SELECT
    arrayFirstIndex(e -> delay_minutes < e, ?) AS bucket,
    count() AS followed_up
FROM
(
    SELECT (step_times_ms[2] - step_times_ms[1]) / 60000 AS delay_minutes
    FROM funnel_attempts FINAL
    WHERE funnel = ? AND is_deleted = 0 AND outcome != 'excluded' AND reached_step >= 2
        AND closed_ms >= ? AND closed_ms < ?
)
GROUP BY bucket
ORDER BY bucket
