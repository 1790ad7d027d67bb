-- Report, complaint → follow-up SLA: complaints still waiting for their follow-up (open
-- attempts of the SLA funnel at step 1, funnel_open_attempts) that started in
-- [since, until), and how many of them are already past the target (minutes, bound) at
-- `now_ms` (bound).
SELECT
    count() AS waiting,
    countIf(? - start_ms > ? * 60000) AS past_target
FROM funnel_open_attempts FINAL
WHERE funnel = ? AND is_deleted = 0 AND reached_step = 1
    AND start_ms >= ? AND start_ms < ?
