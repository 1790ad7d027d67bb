-- The journey of one customer: every touchpoint in order, with stage, channel, session.
-- A primary-key range read of customer_touchpoints (ordered by customer, then time).
SELECT event_time, type, event, stage, channel, session_id
FROM touchstream.customer_touchpoints FINAL
WHERE customer_id = 'user-0' AND is_deleted = 0
ORDER BY event_time_ms, event_id
