-- Report, stores: store_hourly (migration 0010) over the whole hours the period touches
-- (from the hour holding `since` to the last hour starting before `until`; epoch
-- seconds), per store: footfall → identified visits → purchases.
SELECT
    store_id,
    sum(footfall) AS footfall,
    sum(identified_visits) AS identified_visits,
    sum(purchases) AS purchases
FROM store_hourly
WHERE hour >= toStartOfHour(toDateTime(?)) AND hour < toDateTime(?)
GROUP BY store_id
ORDER BY store_id
