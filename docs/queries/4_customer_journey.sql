-- The journey of one customer: every touchpoint in order, with stage, channel, session.
SELECT event_time, type, event, stage, channel, session_id
FROM touchstream.touchpoints
WHERE customer_id = 'user-0'
ORDER BY event_time_ms, event_id
