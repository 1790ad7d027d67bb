-- Touchpoints by journey stage and channel.
SELECT stage, channel, count() AS events, uniqExact(customer_id) AS customers
FROM touchstream.touchpoints
GROUP BY stage, channel
ORDER BY events DESC, stage, channel
