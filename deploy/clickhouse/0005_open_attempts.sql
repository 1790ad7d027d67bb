-- Funnel attempts by when they started, and the attempts still open (README, "For
-- analysts": close time or entry cohort). Runs on ClickHouse 18.16 and current releases.

-- Attempts still open at the journey stage's release frontier: written when an attempt
-- opens, rewritten (higher version) when it advances, tombstoned (is_deleted = 1, same
-- key and started_at) when it closes — its funnel_attempts row, same attempt_id, appears
-- then — or when a late or re-attributed event removes it. `FINAL WHERE is_deleted = 0`
-- is the open attempts now. due_ms: when it drops unless it advances first.
CREATE TABLE IF NOT EXISTS {db}.funnel_open_attempts
(
    attempt_id      String,
    funnel          String,
    customer_id     String,
    started_at      DateTime,
    start_ms        Int64,
    reached_step    UInt8,
    total_steps     UInt8,
    reached_ms      Int64,
    due_at          DateTime,
    due_ms          Int64,
    step_times_ms   Array(Int64),
    step_event_ids  Array(String),
    is_deleted      UInt8,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(started_at)
ORDER BY (funnel, attempt_id);

-- Entry cohorts: per funnel, day the attempts started and step, how many reached the
-- step, dropped at it, converted, and are still open (reached it, not closed yet). A
-- cohort's numbers change until its last attempt closes, at most one window after the
-- day ends; `open` says how far from final it is. Closed attempts from funnel_attempts,
-- open ones from funnel_open_attempts, both FINAL without tombstones; like
-- funnel_step_minute (0004), `excluded` attempts and skipped optional steps (an empty
-- step_event_ids entry) are left out.
CREATE VIEW IF NOT EXISTS {db}.funnel_entry_cohort_day AS
SELECT
    funnel,
    day,
    step,
    count() AS reached,
    countIf(state = 'dropped' AND reached_step = step) AS dropped,
    countIf(state = 'converted') AS converted,
    countIf(state = 'open') AS open
FROM
(
    SELECT funnel, toDate(started_at) AS day, outcome AS state, reached_step, step_event_ids
    FROM {db}.funnel_attempts FINAL
    WHERE is_deleted = 0
    UNION ALL
    SELECT funnel, toDate(started_at) AS day, 'open' AS state, reached_step, step_event_ids
    FROM {db}.funnel_open_attempts FINAL
    WHERE is_deleted = 0
)
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE state != 'excluded' AND step_event_ids[step] != ''
GROUP BY funnel, day, step;

-- The same by the hour the attempts started (web checkout's one-hour window makes its
-- hourly cohorts final about two hours later).
CREATE VIEW IF NOT EXISTS {db}.funnel_entry_cohort_hour AS
SELECT
    funnel,
    hour,
    step,
    count() AS reached,
    countIf(state = 'dropped' AND reached_step = step) AS dropped,
    countIf(state = 'converted') AS converted,
    countIf(state = 'open') AS open
FROM
(
    SELECT funnel, toStartOfHour(started_at) AS hour, outcome AS state, reached_step, step_event_ids
    FROM {db}.funnel_attempts FINAL
    WHERE is_deleted = 0
    UNION ALL
    SELECT funnel, toStartOfHour(started_at) AS hour, 'open' AS state, reached_step, step_event_ids
    FROM {db}.funnel_open_attempts FINAL
    WHERE is_deleted = 0
)
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE state != 'excluded' AND step_event_ids[step] != ''
GROUP BY funnel, hour, step;
