-- Report, funnels: per funnel, attempts closed in [since, until) by outcome.
SELECT
    funnel,
    count() AS attempts,
    countIf(outcome = 'converted') AS converted,
    countIf(outcome = 'dropped') AS dropped,
    countIf(outcome = 'excluded') AS excluded
FROM funnel_attempts FINAL
WHERE is_deleted = 0 AND closed_ms >= ? AND closed_ms < ? AND has(?, funnel)
GROUP BY funnel
ORDER BY funnel
