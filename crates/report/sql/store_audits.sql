-- Report, stores: audits (store_audits, migration 0010) done in the period
-- (event_time in [since, until), epoch seconds), per store: how many, mean and lowest
-- score (0–100), checklist items passed of checked.
SELECT
    store_id,
    count() AS audits,
    avg(score) AS mean_score,
    min(score) AS min_score,
    sum(items_passed) AS items_passed,
    sum(items_checked) AS items_checked
FROM store_audits
WHERE event_time >= toDateTime(?) AND event_time < toDateTime(?)
GROUP BY store_id
ORDER BY store_id
