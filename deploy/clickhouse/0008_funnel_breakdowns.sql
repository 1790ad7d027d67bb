-- Funnel breakdowns (README "Funnels", Breakdowns): each attempt carries the breakdown
-- keys its funnel declares (`channel`, `source`, `properties.<name>`) and their values
-- under the funnel's attribution: one value per key for `first_step` (the step-1
-- event's) and `last_step` (the last reached step's); for `each_step` one value per key
-- for each reached step, step-major (`breakdown_values[(step - 1) * length(keys) + k]`,
-- `''` for a skipped optional step). Funnels without breakdown: both arrays empty.
-- Runs on ClickHouse 18.16 and current releases. 18.16 has no ADD COLUMN IF NOT EXISTS:
-- the migrator counts an existing column as added there, and sends ADD COLUMN IF NOT
-- EXISTS to servers that have it (20.1+), so a half-finished run repeats safely.

ALTER TABLE {db}.funnel_attempts
    ADD COLUMN breakdown_keys Array(String) AFTER step_event_ids;

ALTER TABLE {db}.funnel_attempts
    ADD COLUMN breakdown_values Array(String) AFTER breakdown_keys;

ALTER TABLE {db}.funnel_open_attempts
    ADD COLUMN breakdown_keys Array(String) AFTER step_event_ids;

ALTER TABLE {db}.funnel_open_attempts
    ADD COLUMN breakdown_values Array(String) AFTER breakdown_keys;

-- funnel_step_minute (0004) by breakdown: `breakdown` is the values the step is
-- attributed to, joined by '/' in key order (for `each_step`, the step's own values;
-- '' for funnels without breakdown). Same rules as funnel_step_minute: `excluded`
-- attempts and skipped optional steps are left out. Unlike the metrics' `breakdown`
-- label, values are not folded into `other`: group further in the query if needed.
CREATE VIEW IF NOT EXISTS {db}.funnel_step_minute_by_breakdown AS
SELECT
    funnel,
    toStartOfMinute(closed_at) AS minute,
    step,
    breakdown,
    count() AS reached,
    countIf(outcome = 'dropped' AND reached_step = step) AS dropped,
    countIf(outcome = 'converted') AS converted
FROM
(
    SELECT
        funnel,
        closed_at,
        outcome,
        reached_step,
        step,
        step_event_ids,
        arrayStringConcat(
            if(length(breakdown_values) > length(breakdown_keys),
               arraySlice(breakdown_values, (step - 1) * length(breakdown_keys) + 1,
                          length(breakdown_keys)),
               breakdown_values),
            '/') AS breakdown
    FROM {db}.funnel_attempts FINAL
    ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
    WHERE is_deleted = 0 AND outcome != 'excluded'
)
WHERE step_event_ids[step] != ''
GROUP BY funnel, minute, step, breakdown;
