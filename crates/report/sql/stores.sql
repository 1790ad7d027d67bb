-- Report, stores: store_hourly (migration 0010) over the hours of the period (hour in
-- [since, until), epoch seconds), per store: footfall → identified visits → purchases.
SELECT
    store_id,
    sum(footfall) AS footfall,
    sum(identified_visits) AS identified_visits,
    sum(purchases) AS purchases
FROM store_hourly
WHERE hour >= toDateTime(?) AND hour < toDateTime(?)
GROUP BY store_id
ORDER BY store_id
