-- Report, complaint → follow-up SLA: docs/queries/3_complaint_followup_delay.sql with the
-- report's bounds (attempts of the SLA funnel closed in [since, until)), for all
-- complaints (by_segment = 0) and per value of the funnel's first breakdown key
-- (by_segment = 1; '' for attempts without breakdown values), with the complaints never
-- followed up (dropped at step 1) and the follow-ups within the target (minutes, bound).
SELECT
    by_segment,
    if(by_segment = 1, if(length(breakdown_values) > 0, breakdown_values[1], ''), '') AS segment,
    count() AS complaints,
    countIf(reached_step >= 2) AS followed_up,
    countIf(outcome = 'dropped' AND reached_step = 1) AS never,
    countIf(reached_step >= 2 AND (step_times_ms[2] - step_times_ms[1]) / 60000 <= ?) AS within_target,
    toFloat64(quantileExactIf(0.5)((step_times_ms[2] - step_times_ms[1]) / 60000, reached_step >= 2)) AS median_minutes,
    toFloat64(quantileExactIf(0.9)((step_times_ms[2] - step_times_ms[1]) / 60000, reached_step >= 2)) AS p90_minutes
FROM funnel_attempts FINAL
ARRAY JOIN [0, 1] AS by_segment
WHERE funnel = ? AND is_deleted = 0 AND outcome != 'excluded'
    AND closed_ms >= ? AND closed_ms < ?
GROUP BY by_segment, segment
ORDER BY by_segment, segment
