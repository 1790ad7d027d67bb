-- Funnel drop-off by step and breakdown value (e.g. web checkout by entry channel, service
-- recovery by call-centre team): of the attempts that reached a step with that value, how
-- many dropped there. Funnels without breakdown show one row per step with breakdown ''.
-- Like query 1, one pass over funnel_attempts: attempts are counted per outcome, reached
-- step, steps hit and breakdown values, then spread over their steps; a step's breakdown
-- is the values it is attributed to, joined by '/' (funnel_step_minute_by_breakdown
-- gives the same per minute).
SELECT
    funnel,
    arrayStringConcat(
        if(length(breakdown_values) > length(breakdown_keys),
           arraySlice(breakdown_values, (step - 1) * length(breakdown_keys) + 1,
                      length(breakdown_keys)),
           breakdown_values),
        '/') AS breakdown,
    step,
    sum(n) AS attempts_reached,
    sumIf(n, outcome = 'dropped' AND reached_step = step) AS attempts_dropped,
    round(100 * attempts_dropped / attempts_reached, 1) AS dropoff_pct
FROM
(
    SELECT funnel, outcome, reached_step, steps_hit, breakdown_keys, breakdown_values,
        count() AS n
    FROM touchstream.funnel_attempts FINAL
    WHERE is_deleted = 0 AND outcome != 'excluded'
    GROUP BY funnel, outcome, reached_step, steps_hit, breakdown_keys, breakdown_values
)
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE bitAnd(steps_hit, bitShiftLeft(toUInt32(1), step - 1)) != 0
GROUP BY funnel, breakdown, step
ORDER BY funnel, breakdown, step
