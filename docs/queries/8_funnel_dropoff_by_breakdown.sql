-- Funnel drop-off by step and breakdown value (e.g. web checkout by entry channel, service
-- recovery by call-centre team): of the attempts that reached a step with that value, how
-- many dropped there. Funnels without breakdown show one row per step with breakdown ''.
SELECT
    funnel,
    breakdown,
    step,
    sum(reached) AS attempts_reached,
    sum(dropped) AS attempts_dropped,
    round(100 * attempts_dropped / attempts_reached, 1) AS dropoff_pct
FROM touchstream.funnel_step_minute_by_breakdown
GROUP BY funnel, breakdown, step
ORDER BY funnel, breakdown, step
