-- The analyst fast path (README "Performance", analyst queries). The `touchpoints` view
-- deduplicates and joins two whole tables keyed by event_id before any filter applies,
-- so one customer's journey or one day's counts read every event. The journey stage
-- writes each event once more, enriched, keyed the way analysts read it.
-- Runs on ClickHouse 18.16 and current releases.

-- Every event with its journey, ordered by customer then time: one customer's journey is
-- a primary-key range read. Written beside each touchpoint_journey row (same version).
-- A re-attribution moves the event to another customer, so the stage also writes a
-- tombstone (is_deleted = 1, the old customer's key and partition, a version above every
-- row the old customer got). `FINAL WHERE is_deleted = 0` equals the touchpoints view.
CREATE TABLE IF NOT EXISTS {db}.customer_touchpoints
(
    customer_id     String,
    event_date      Date,
    event_time_ms   Int64,
    event_id        String,
    event_time      DateTime,
    type            String,
    event           String,
    stage           String,
    channel         String,
    session_id      String,
    is_late         UInt8,
    is_deleted      UInt8,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_date)
ORDER BY (customer_id, event_time_ms, event_id);

-- The same rows ordered by day first, for per-day counts (a day is a primary-key range).
-- Fed by the materialized view below with the columns the counts need. The target is a
-- ReplacingMergeTree with the same key columns and version as customer_touchpoints, so a
-- replayed insert or a re-emitted row (higher version) replaces the earlier copy instead
-- of adding to it: counts read it with FINAL and never double.
CREATE TABLE IF NOT EXISTS {db}.touchpoints_by_day
(
    event_date      Date,
    customer_id     String,
    event_time_ms   Int64,
    event_id        String,
    stage           String,
    channel         String,
    is_late         UInt8,
    is_deleted      UInt8,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, customer_id, event_time_ms, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touchpoints_by_day_mv TO {db}.touchpoints_by_day AS
SELECT event_date, customer_id, event_time_ms, event_id, stage, channel, is_late, is_deleted, version
FROM {db}.customer_touchpoints;

-- Existing journeys: copied once from the two tables the view joins (the current row of
-- each event). The materialized view copies them on into touchpoints_by_day. Running it
-- again writes the same keys and versions, which FINAL deduplicates.
INSERT INTO {db}.customer_touchpoints
    (customer_id, event_date, event_time_ms, event_id, event_time, type, event, stage,
     channel, session_id, is_late, is_deleted, version)
SELECT customer_id, event_date, event_time_ms, event_id, event_time, type, event, stage,
       channel, session_id, is_late, 0, version
FROM
(
    SELECT event_id, event_date, event_time, event_time_ms, type, event
    FROM {db}.events FINAL
) AS e
ANY INNER JOIN
(
    SELECT event_id, customer_id, session_id, stage, channel, is_late, version
    FROM {db}.touchpoint_journey FINAL
) AS j USING event_id;

-- Dashboard aggregate (0001) rebuilt over touchpoints_by_day: one day reads one day.
-- Views cannot be altered on 18.16, so it is dropped and created again (it holds no data).
DROP TABLE IF EXISTS {db}.touchpoints_daily;

CREATE VIEW IF NOT EXISTS {db}.touchpoints_daily AS
SELECT
    event_date,
    stage,
    channel,
    count() AS events,
    uniqExact(customer_id) AS customers
FROM {db}.touchpoints_by_day FINAL
WHERE is_deleted = 0
GROUP BY event_date, stage, channel;
