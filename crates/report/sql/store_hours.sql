-- Report, stores: store_hourly (migration 0010) over the same whole hours as stores.sql,
-- all stores together by hour of the day (UTC): when people come in and when they buy.
SELECT
    toUInt8(toHour(hour)) AS hour_of_day,
    sum(footfall) AS footfall,
    sum(identified_visits) AS identified_visits,
    sum(purchases) AS purchases
FROM store_hourly
WHERE hour >= toStartOfHour(toDateTime(?)) AND hour < toDateTime(?) AND store_id != ''
GROUP BY hour_of_day
ORDER BY hour_of_day
