-- Report, funnels by breakdown: per funnel, breakdown value and step, as docs/queries/8
-- counts them — the values the step is attributed to, joined by '/' in key order — with
-- the report's bounds (closed_ms in [since, until)). Only funnels that declare a
-- breakdown are asked for.
SELECT
    funnel,
    arrayStringConcat(
        if(length(breakdown_values) > length(breakdown_keys),
           arraySlice(breakdown_values, (step - 1) * length(breakdown_keys) + 1,
                      length(breakdown_keys)),
           breakdown_values),
        '/') AS breakdown,
    step,
    sum(n) AS reached,
    sumIf(n, outcome = 'dropped' AND reached_step = step) AS dropped
FROM
(
    SELECT funnel, outcome, reached_step, steps_hit, breakdown_keys, breakdown_values,
        count() AS n
    FROM funnel_attempts FINAL
    WHERE is_deleted = 0 AND outcome != 'excluded'
        AND closed_ms >= ? AND closed_ms < ? AND has(?, funnel)
    GROUP BY funnel, outcome, reached_step, steps_hit, breakdown_keys, breakdown_values
)
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE bitAnd(steps_hit, bitShiftLeft(toUInt32(1), step - 1)) != 0
GROUP BY funnel, breakdown, step
ORDER BY funnel, breakdown, step
