-- Funnel drop-off by step: of the attempts that reached a step, how many dropped there.
-- One pass over funnel_attempts: attempts are counted per funnel, outcome, reached step
-- and the steps an event reached (`steps_hit`, a bit per step; a skipped optional step
-- has none), then spread over their steps. Excluded attempts left the funnel and count
-- nowhere.
SELECT
    funnel,
    step,
    sum(n) AS attempts_reached,
    sumIf(n, outcome = 'dropped' AND reached_step = step) AS attempts_dropped,
    round(100 * attempts_dropped / attempts_reached, 1) AS dropoff_pct
FROM
(
    SELECT funnel, outcome, reached_step, steps_hit, count() AS n
    FROM touchstream.funnel_attempts FINAL
    WHERE is_deleted = 0 AND outcome != 'excluded'
    GROUP BY funnel, outcome, reached_step, steps_hit
)
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE bitAnd(steps_hit, bitShiftLeft(toUInt32(1), step - 1)) != 0
GROUP BY funnel, step
ORDER BY funnel, step
