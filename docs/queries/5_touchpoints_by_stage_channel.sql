-- Touchpoints by day, journey stage and channel. touchpoints_by_day is ordered by day
-- first: add `AND event_date = '2026-11-30'` and only that day is read.
SELECT event_date, stage, channel, count() AS events, uniqExact(customer_id) AS customers
FROM touchstream.touchpoints_by_day FINAL
WHERE is_deleted = 0
GROUP BY event_date, stage, channel
ORDER BY event_date, events DESC, stage, channel
