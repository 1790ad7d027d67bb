-- Report, funnels by breakdown: per funnel, breakdown value and step, as
-- funnel_step_minute_by_breakdown (migration 0008, docs/queries/8) counts them — the
-- values the step is attributed to, joined by '/' in key order — with the report's bounds
-- (closed_ms in [since, until)). Only funnels that declare a breakdown are asked for.
SELECT
    funnel,
    breakdown,
    step,
    count() AS reached,
    countIf(outcome = 'dropped' AND reached_step = step) AS dropped
FROM
(
    SELECT
        funnel,
        outcome,
        reached_step,
        step,
        step_event_ids,
        arrayStringConcat(
            if(length(breakdown_values) > length(breakdown_keys),
               arraySlice(breakdown_values, (step - 1) * length(breakdown_keys) + 1,
                          length(breakdown_keys)),
               breakdown_values),
            '/') AS breakdown
    FROM funnel_attempts FINAL
    ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
    WHERE is_deleted = 0 AND outcome != 'excluded'
        AND closed_ms >= ? AND closed_ms < ? AND has(?, funnel)
)
WHERE step_event_ids[step] != ''
GROUP BY funnel, breakdown, step
ORDER BY funnel, breakdown, step
