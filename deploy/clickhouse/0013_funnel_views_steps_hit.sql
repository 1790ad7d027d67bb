-- The funnel views count from `steps_hit` (0012) and count attempts before spreading them
-- over their steps, as docs/queries/1 does: attempts are grouped by what the counts need
-- (funnel, time bucket, outcome, reached step, steps hit, breakdown), so one row per
-- group, not per attempt, is spread over its steps, and `step_event_ids` (every step's
-- event id) is not read at all. The rows are the same as before (tests/
-- clickhouse_migrations.rs checks each view's). At 1M attempts on ClickHouse 18.16,
-- docs/queries/7 over funnel_entry_cohort_day went from ~0.85 to ~0.15 s and
-- funnel_step_minute summed over a month from ~1.5 to ~0.5 s (docs/performance.md,
-- "2026-12-04 (night)").
--
-- funnel_open_attempts gets `steps_hit` like funnel_attempts: a DEFAULT from its
-- `step_event_ids`, so every writer gets it without sending it, and parts written before
-- this migration compute it when read. Views cannot be altered on 18.16, so each is
-- dropped and created again; they hold no data. Runs on ClickHouse 18.16 and current
-- releases (see 0008 for ADD COLUMN repeated).

ALTER TABLE {db}.funnel_open_attempts
    ADD COLUMN steps_hit UInt32 DEFAULT arraySum(arrayMap((id, i) -> if(id != '', bitShiftLeft(toUInt32(1), i - 1), toUInt32(0)), step_event_ids, arrayEnumerate(step_event_ids))) AFTER step_event_ids;

-- As 0004: attempts that stayed in the funnel (not `excluded`), steps an event reached.
DROP TABLE IF EXISTS {db}.funnel_step_minute;

CREATE VIEW IF NOT EXISTS {db}.funnel_step_minute AS
SELECT
    funnel,
    minute,
    step,
    sum(n) AS reached,
    sumIf(n, outcome = 'dropped' AND reached_step = step) AS dropped,
    sumIf(n, outcome = 'converted') AS converted
FROM
(
    SELECT funnel, toStartOfMinute(closed_at) AS minute, outcome, reached_step, steps_hit, count() AS n
    FROM {db}.funnel_attempts FINAL
    WHERE is_deleted = 0 AND outcome != 'excluded'
    GROUP BY funnel, minute, outcome, reached_step, steps_hit
)
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE bitAnd(steps_hit, bitShiftLeft(toUInt32(1), step - 1)) != 0
GROUP BY funnel, minute, step;

-- As 0008: per breakdown, the values the step is attributed to, joined by '/'.
DROP TABLE IF EXISTS {db}.funnel_step_minute_by_breakdown;

CREATE VIEW IF NOT EXISTS {db}.funnel_step_minute_by_breakdown AS
SELECT
    funnel,
    minute,
    step,
    arrayStringConcat(
        if(length(breakdown_values) > length(breakdown_keys),
           arraySlice(breakdown_values, (step - 1) * length(breakdown_keys) + 1,
                      length(breakdown_keys)),
           breakdown_values),
        '/') AS breakdown,
    sum(n) AS reached,
    sumIf(n, outcome = 'dropped' AND reached_step = step) AS dropped,
    sumIf(n, outcome = 'converted') AS converted
FROM
(
    SELECT funnel, toStartOfMinute(closed_at) AS minute, outcome, reached_step, steps_hit,
        breakdown_keys, breakdown_values, count() AS n
    FROM {db}.funnel_attempts FINAL
    WHERE is_deleted = 0 AND outcome != 'excluded'
    GROUP BY funnel, minute, outcome, reached_step, steps_hit, breakdown_keys, breakdown_values
)
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE bitAnd(steps_hit, bitShiftLeft(toUInt32(1), step - 1)) != 0
GROUP BY funnel, minute, step, breakdown;

-- As 0005: entry cohorts, closed attempts and the open ones, by the hour they started;
-- the day's are the sums of its hours (every count is of attempts, each in one hour), so
-- the grouping is written once. The hour view is created first: a view's query is
-- checked when it is created.
DROP TABLE IF EXISTS {db}.funnel_entry_cohort_day;

DROP TABLE IF EXISTS {db}.funnel_entry_cohort_hour;

CREATE VIEW IF NOT EXISTS {db}.funnel_entry_cohort_hour AS
SELECT
    funnel,
    hour,
    step,
    sum(n) AS reached,
    sumIf(n, state = 'dropped' AND reached_step = step) AS dropped,
    sumIf(n, state = 'converted') AS converted,
    sumIf(n, state = 'open') AS open
FROM
(
    SELECT funnel, hour, state, reached_step, steps_hit, count() AS n
    FROM
    (
        SELECT funnel, toStartOfHour(started_at) AS hour, outcome AS state, reached_step, steps_hit
        FROM {db}.funnel_attempts FINAL
        WHERE is_deleted = 0 AND outcome != 'excluded'
        UNION ALL
        SELECT funnel, toStartOfHour(started_at) AS hour, 'open' AS state, reached_step, steps_hit
        FROM {db}.funnel_open_attempts FINAL
        WHERE is_deleted = 0
    )
    GROUP BY funnel, hour, state, reached_step, steps_hit
)
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE bitAnd(steps_hit, bitShiftLeft(toUInt32(1), step - 1)) != 0
GROUP BY funnel, hour, step;

CREATE VIEW IF NOT EXISTS {db}.funnel_entry_cohort_day AS
SELECT
    funnel,
    toDate(hour) AS day,
    step,
    sum(reached) AS reached,
    sum(dropped) AS dropped,
    sum(converted) AS converted,
    sum(open) AS open
FROM {db}.funnel_entry_cohort_hour
GROUP BY funnel, day, step;
