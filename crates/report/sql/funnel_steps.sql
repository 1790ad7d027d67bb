-- Report, funnels: per funnel and step, the attempts that reached the step and dropped
-- there. docs/queries/1_funnel_dropoff_by_step.sql with the report's bounds:
-- attempts counted by the time they closed (closed_ms in [since, until)), the funnels
-- asked for, excluded attempts and skipped optional steps nowhere.
SELECT
    funnel,
    step,
    sum(n) AS reached,
    sumIf(n, outcome = 'dropped' AND reached_step = step) AS dropped
FROM
(
    SELECT funnel, outcome, reached_step, steps_hit, count() AS n
    FROM funnel_attempts FINAL
    WHERE is_deleted = 0 AND outcome != 'excluded'
        AND closed_ms >= ? AND closed_ms < ? AND has(?, funnel)
    GROUP BY funnel, outcome, reached_step, steps_hit
)
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE bitAnd(steps_hit, bitShiftLeft(toUInt32(1), step - 1)) != 0
GROUP BY funnel, step
ORDER BY funnel, step
