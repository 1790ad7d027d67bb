-- Funnel drop-off by step: of the attempts that reached a step, how many dropped there.
SELECT
    funnel,
    step,
    sum(reached) AS attempts_reached,
    sum(dropped) AS attempts_dropped,
    round(100 * attempts_dropped / attempts_reached, 1) AS dropoff_pct
FROM touchstream.funnel_step_minute
GROUP BY funnel, step
ORDER BY funnel, step
