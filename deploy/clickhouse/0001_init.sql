-- Touchstream core tables (SPEC §6). Runs on ClickHouse 18.16 and current releases:
-- no DateTime64 (times are Int64 epoch ms plus a DateTime for partitioning and readable
-- queries), no TTL, no codecs, no Map, no LowCardinality.
--
-- Every table is a ReplacingMergeTree keyed by a deterministic id so that replaying Kafka
-- offsets, or a crash between insert and offset commit, leaves one row per key after
-- FINAL / background merges. `version` (a processing epoch in ms) lets a corrected row
-- (e.g. an anonymous event re-attributed to a user) replace the earlier one.
-- `{db}` is replaced by the configured database.

CREATE TABLE IF NOT EXISTS {db}.touchpoints
(
    event_id        String,
    event_date      Date,
    event_time      DateTime,
    event_time_ms   Int64,
    received_at_ms  Int64,
    type            String,
    event           String,
    anonymous_id    String,
    user_id         String,
    customer_id     String,
    session_id      String,
    stage           String,
    channel         String,
    source          String,
    properties      String,
    traits          String,
    context         String,
    ip              String,
    user_agent      String,
    is_late         UInt8,
    kafka_partition Int32,
    kafka_offset    Int64,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_date)
ORDER BY event_id;

CREATE TABLE IF NOT EXISTS {db}.identities
(
    anonymous_id   String,
    user_id        String,
    linked_at_ms   Int64,
    link_event_id  String,
    link_type      String,
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY anonymous_id;

CREATE TABLE IF NOT EXISTS {db}.identity_conflicts
(
    anonymous_id         String,
    linked_user_id       String,
    conflicting_user_id  String,
    event_id             String,
    event_time_ms        Int64,
    version              UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (anonymous_id, event_id);

CREATE TABLE IF NOT EXISTS {db}.sessions
(
    session_id      String,
    customer_id     String,
    started_at      DateTime,
    start_ms        Int64,
    end_ms          Int64,
    event_count     UInt32,
    first_event_id  String,
    entry_event     String,
    exit_event      String,
    channels        Array(String),
    is_deleted      UInt8,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(started_at)
ORDER BY session_id;

CREATE TABLE IF NOT EXISTS {db}.funnel_attempts
(
    attempt_id      String,
    funnel          String,
    customer_id     String,
    started_at      DateTime,
    start_ms        Int64,
    closed_at       DateTime,
    closed_ms       Int64,
    outcome         String,
    reached_step    UInt8,
    total_steps     UInt8,
    step_times_ms   Array(Int64),
    step_event_ids  Array(String),
    is_deleted      UInt8,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(closed_at)
ORDER BY (funnel, attempt_id);

-- Dashboard aggregate: per funnel, minute (by close time) and step, how many attempts
-- reached the step, dropped at it, and converted. A view over FINAL rather than a
-- materialized view, because a materialized view would count replayed inserts twice.
CREATE VIEW IF NOT EXISTS {db}.funnel_step_minute AS
SELECT
    funnel,
    toStartOfMinute(closed_at) AS minute,
    step,
    count() AS reached,
    countIf(outcome = 'dropped' AND reached_step = step) AS dropped,
    countIf(outcome = 'converted') AS converted
FROM {db}.funnel_attempts FINAL
ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step
WHERE is_deleted = 0
GROUP BY funnel, minute, step;

-- Dashboard aggregate: touchpoints per day, stage and channel.
CREATE VIEW IF NOT EXISTS {db}.touchpoints_daily AS
SELECT
    event_date,
    stage,
    channel,
    count() AS events,
    uniqExact(customer_id) AS customers
FROM {db}.touchpoints FINAL
GROUP BY event_date, stage, channel;
