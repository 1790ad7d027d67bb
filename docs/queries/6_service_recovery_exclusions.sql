-- Service recovery with refunded complaints left out: excluded attempts (a refund between
-- the follow-up and the next order) count neither as recovered nor as lost.
SELECT
    countIf(outcome = 'converted') AS recovered,
    countIf(outcome = 'dropped') AS lost,
    countIf(outcome = 'excluded') AS refunded,
    round(100 * recovered / (recovered + lost), 1) AS recovery_pct
FROM touchstream.funnel_attempts FINAL
WHERE funnel = 'service_recovery' AND is_deleted = 0
