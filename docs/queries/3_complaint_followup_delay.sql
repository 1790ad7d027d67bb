-- Complaint → staff follow-up delay, in minutes, over closed service-recovery attempts.
SELECT
    count() AS followed_up,
    round(quantileExact(0.5)((step_times_ms[2] - step_times_ms[1]) / 60000), 1) AS median_minutes,
    round(quantileExact(0.9)((step_times_ms[2] - step_times_ms[1]) / 60000), 1) AS p90_minutes
FROM touchstream.funnel_attempts FINAL
WHERE funnel = 'service_recovery' AND is_deleted = 0 AND reached_step >= 2
