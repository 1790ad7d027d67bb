-- Touchstream core tables (SPEC §6). Runs on ClickHouse 18.16 and current releases:
-- no DateTime64 (times are Int64 epoch ms plus a DateTime for partitioning and readable
-- queries), no TTL, no codecs, no Map, no LowCardinality.
--
-- Every table is a ReplacingMergeTree keyed by a deterministic id so that replaying Kafka
-- offsets, or a crash between insert and offset commit, leaves one row per key after
-- FINAL / background merges. `version` (derived from input sequence numbers) lets a corrected row
-- (e.g. an anonymous event re-attributed to a user) replace the earlier one.
-- `{db}` is replaced by the configured database.

-- Every accepted event as the collector received it (written once by the identity stage).
CREATE TABLE IF NOT EXISTS {db}.events
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
    previous_id     String,
    source          String,
    message_channel String,
    properties      String,
    traits          String,
    context         String,
    ip              String,
    user_agent      String,
    extra           String,
    kafka_partition Int32,
    kafka_offset    Int64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY event_id;

-- What the journey stage decided for each event. Rewritten (higher version) when an
-- anonymous event is re-attributed to a user or its session changes.
CREATE TABLE IF NOT EXISTS {db}.touchpoint_journey
(
    event_id        String,
    event_date      Date,
    customer_id     String,
    session_id      String,
    stage           String,
    channel         String,
    is_late         UInt8,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_date)
ORDER BY event_id;

-- SPEC §6 `touchpoints`: every accepted event enriched with customer_id, session_id,
-- stage and channel. Deduplicated (FINAL) on both sides.
CREATE VIEW IF NOT EXISTS {db}.touchpoints AS
SELECT
    event_id, event_date, event_time, event_time_ms, received_at_ms, type, event,
    anonymous_id, user_id, previous_id, source, properties, traits, context, ip, user_agent,
    extra, kafka_partition, kafka_offset,
    customer_id, session_id, stage, channel, is_late
FROM
(
    SELECT event_id, event_date, event_time, event_time_ms, received_at_ms, type, event,
           anonymous_id, user_id, previous_id, source, properties, traits, context, ip,
           user_agent, extra, kafka_partition, kafka_offset
    FROM {db}.events FINAL
) AS e
ANY LEFT JOIN
(
    SELECT event_id, customer_id, session_id, stage, channel, is_late
    FROM {db}.touchpoint_journey FINAL
) AS j USING event_id;

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

-- Processor state snapshots, one live row per (stage, partition): the position in the
-- input topics and the stage's serialized state at that position. A restarted or newly
-- assigned processor resumes from here (see schemas/README.md).
CREATE TABLE IF NOT EXISTS {db}.processor_state
(
    stage       String,
    partition   Int32,
    offsets     String,
    snapshot    String,
    saved_at_ms Int64,
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (stage, partition);

-- Dashboard aggregate: touchpoints per day, stage and channel.
CREATE VIEW IF NOT EXISTS {db}.touchpoints_daily AS
SELECT
    event_date,
    stage,
    channel,
    count() AS events,
    uniqExact(customer_id) AS customers
FROM {db}.touchpoints
GROUP BY event_date, stage, channel;
