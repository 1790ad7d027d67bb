-- Feedback, store footfall and audits, and the touchpoint scorecard (README "Feedback and
-- stores"). Runs on ClickHouse 18.16 and current releases. 18.16 has no ADD COLUMN IF NOT
-- EXISTS: the migrator counts an existing column as added there (see 0008).
--
-- 18.16 does not see a column that a lambda captures (`x -> x > t`) when it decides which
-- columns a subquery must return: every captured column is also selected by name at the
-- same level, so that it is asked for.

-- The store a touchpoint happened in (`properties.store_id`, '' when none): the
-- scorecard's store dimension. Written by the journey stage beside each row.
ALTER TABLE {db}.customer_touchpoints
    ADD COLUMN store_id String AFTER session_id;

-- One row per survey answer (`Survey Completed`, `NPS Submitted`, `CSAT Submitted`,
-- `CES Submitted`), written by the journey stage with the touchpoint it rates (README,
-- "Feedback attribution"). Keyed by the answer's event id alone: a re-attributed answer
-- (a late touchpoint, an anonymous customer linked to a user) is written again with a
-- higher version and replaces the earlier row under FINAL. An answer the stage could not
-- attribute is kept with attribution = 'none' and empty about_* columns.
CREATE TABLE IF NOT EXISTS {db}.feedback
(
    event_id        String,
    event_date      Date,
    answered_at     DateTime,
    answered_ms     Int64,
    customer_id     String,
    event           String,
    scale           String,
    score           Float64,
    attribution     String,
    about_event_id  String,
    about_event     String,
    about_stage     String,
    about_channel   String,
    about_store_id  String,
    about_date      Date,
    about_time_ms   Int64,
    delay_ms        Int64,
    is_late         UInt8,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(event_date)
ORDER BY event_id;

-- Store people-counter totals (`Footfall Counted`), from the stored events. A count sent
-- again for the same store and period (another message id) replaces the earlier one: the
-- one with the latest event time (`timestamp`) wins.
CREATE VIEW IF NOT EXISTS {db}.store_footfall AS
SELECT
    store_id,
    period_start,
    argMax(period_secs, event_time_ms) AS period_secs,
    argMax(footfall, event_time_ms) AS footfall
FROM
(
    SELECT
        visitParamExtractString(properties, 'store_id') AS store_id,
        parseDateTimeBestEffortOrZero(visitParamExtractString(properties, 'period_start'))
            AS period_start,
        visitParamExtractUInt(properties, 'period_secs') AS period_secs,
        visitParamExtractUInt(properties, 'count') AS footfall,
        event_time_ms
    FROM {db}.events FINAL
    WHERE type = 'track' AND event = 'Footfall Counted'
)
GROUP BY store_id, period_start;

-- Mystery-shopper and staff audits (`Audit Completed`), from the stored events.
CREATE VIEW IF NOT EXISTS {db}.store_audits AS
SELECT
    event_id,
    event_date,
    event_time,
    visitParamExtractString(properties, 'store_id') AS store_id,
    visitParamExtractFloat(properties, 'score') AS score,
    visitParamExtractUInt(properties, 'items_checked') AS items_checked,
    visitParamExtractUInt(properties, 'items_passed') AS items_passed,
    visitParamExtractString(properties, 'auditor') AS auditor
FROM {db}.events FINAL
WHERE type = 'track' AND event = 'Audit Completed';

-- Per store and hour: footfall (periods by their start hour) → identified visits
-- (distinct signed-in people with a `Store Visited` there) → purchases (`Order Completed`
-- with that store_id); conversion = purchases ÷ footfall (NULL without footfall). Audits
-- of the store on that day beside it (mean score and count).
CREATE VIEW IF NOT EXISTS {db}.store_hourly AS
SELECT
    store_id,
    hour,
    footfall,
    identified_visits,
    purchases,
    if(footfall = 0, NULL, purchases / footfall) AS conversion,
    audits_day,
    if(audits_day = 0, NULL, audit_score_sum / audits_day) AS audit_score_day
FROM
(
    SELECT store_id, hour, toDate(hour) AS day, footfall, identified_visits, purchases
    FROM
    (
        SELECT store_id, hour, sum(footfall) AS footfall
        FROM
        (
            SELECT store_id, toStartOfHour(period_start) AS hour, footfall
            FROM {db}.store_footfall
        )
        GROUP BY store_id, hour
    ) AS f
    ALL FULL OUTER JOIN
    (
        SELECT
            visitParamExtractString(properties, 'store_id') AS store_id,
            toStartOfHour(event_time) AS hour,
            uniqExactIf(user_id, event = 'Store Visited' AND user_id != '') AS identified_visits,
            countIf(event = 'Order Completed') AS purchases
        FROM {db}.events FINAL
        WHERE type = 'track' AND event IN ('Store Visited', 'Order Completed')
            AND properties LIKE '%"store_id"%'
        GROUP BY store_id, hour
    ) AS v USING (store_id, hour)
) AS h
ANY LEFT JOIN
(
    SELECT store_id, event_date AS day, count() AS audits_day, sum(score) AS audit_score_sum
    FROM {db}.store_audits
    GROUP BY store_id, day
) AS a USING (store_id, day);

-- Per day × touchpoint (event name) × stage × channel × store (README "Touchpoint
-- scorecard"; N = 7 days): how many events and customers; how many of those customers
-- reached a later journey stage, and how many filed a complaint (`Complaint Filed`),
-- within 7 days after the touchpoint; how many converted funnel attempts passed through
-- it (a touchpoint of the customer between the attempt's start and close) out of the
-- converted attempts open that day; the answers attributed to it (NPS = % promoters −
-- % detractors, mean CSAT, mean CES, with response counts). A view over stored rows,
-- not a table (README says why: the measured cost of both).
CREATE VIEW IF NOT EXISTS {db}.touchpoint_scorecard AS
SELECT
    event_date, event, stage, channel, store_id,
    events, customers,
    next_stage_customers,
    if(customers = 0, NULL, next_stage_customers / customers) AS next_stage_share,
    complaint_customers,
    converted_attempts,
    converted_attempts_day,
    if(converted_attempts_day = 0, NULL, converted_attempts / converted_attempts_day)
        AS converted_share,
    nps_responses, promoters, detractors,
    if(nps_responses = 0, NULL, 100 * (promoters - detractors) / nps_responses) AS nps,
    csat_responses,
    if(csat_responses = 0, NULL, csat_sum / csat_responses) AS csat_mean,
    ces_responses,
    if(ces_responses = 0, NULL, ces_sum / ces_responses) AS ces_mean
FROM
(
    SELECT *
    FROM
    (
        SELECT
            event_date, event, stage, channel, store_id,
            count() AS events,
            uniqExact(customer_id) AS customers,
            uniqExactIf(customer_id, next_stage) AS next_stage_customers,
            uniqExactIf(customer_id, complained) AS complaint_customers,
            uniqExactArray(through) AS converted_attempts
        FROM
        (
            SELECT
                customer_id,
                d AS event_date,
                n AS event,
                s AS stage,
                c AS channel,
                st AS store_id,
                t,
                r,
                arrayExists((x, y) -> x > t AND x <= t + 604800000 AND y > r, ts, ranks)
                    AS next_stage,
                arrayExists((x, y) -> x > t AND x <= t + 604800000 AND y = 'Complaint Filed',
                            ts, names) AS complained,
                arrayFilter((a, b, e) -> b <= t AND t <= e, conv_ids, conv_start, conv_close)
                    AS through
            FROM
            (
                SELECT customer_id, ts, names, stages, ranks, chans, stores, dates,
                       conv_ids, conv_start, conv_close
                FROM
                (
                    SELECT
                        customer_id,
                        groupArray(event_time_ms) AS ts,
                        groupArray(event) AS names,
                        groupArray(stage) AS stages,
                        groupArray(indexOf(['awareness', 'consideration', 'purchase',
                                            'service', 'feedback'], stage)) AS ranks,
                        groupArray(channel) AS chans,
                        groupArray(store_id) AS stores,
                        groupArray(event_date) AS dates
                    FROM {db}.customer_touchpoints FINAL
                    WHERE is_deleted = 0
                    GROUP BY customer_id
                ) AS j
                ANY LEFT JOIN
                (
                    SELECT
                        customer_id,
                        groupArray(attempt_id) AS conv_ids,
                        groupArray(start_ms) AS conv_start,
                        groupArray(closed_ms) AS conv_close
                    FROM {db}.funnel_attempts FINAL
                    WHERE is_deleted = 0 AND outcome = 'converted'
                    GROUP BY customer_id
                ) AS cv USING customer_id
            )
            ARRAY JOIN ts AS t, ranks AS r, names AS n, stages AS s, chans AS c,
                       stores AS st, dates AS d
        )
        GROUP BY event_date, event, stage, channel, store_id
    ) AS tp
    ANY LEFT JOIN
    (
        SELECT event_date, uniqExact(attempt_id) AS converted_attempts_day
        FROM
        (
            SELECT attempt_id, d0, arrayJoin(arrayMap(k -> d0 + k, range(toUInt32(d1 - d0) + 1)))
                AS event_date
            FROM
            (
                SELECT
                    attempt_id,
                    toDate(toDateTime(intDiv(start_ms, 1000)), 'UTC') AS d0,
                    toDate(toDateTime(intDiv(closed_ms, 1000)), 'UTC') AS d1
                FROM {db}.funnel_attempts FINAL
                WHERE is_deleted = 0 AND outcome = 'converted'
            )
        )
        GROUP BY event_date
    ) AS cd USING event_date
) AS tpc
ANY LEFT JOIN
(
    SELECT
        about_date AS event_date,
        about_event AS event,
        about_stage AS stage,
        about_channel AS channel,
        about_store_id AS store_id,
        countIf(scale = 'nps') AS nps_responses,
        countIf(scale = 'nps' AND score >= 9) AS promoters,
        countIf(scale = 'nps' AND score <= 6) AS detractors,
        countIf(scale = 'csat') AS csat_responses,
        sumIf(score, scale = 'csat') AS csat_sum,
        countIf(scale = 'ces') AS ces_responses,
        sumIf(score, scale = 'ces') AS ces_sum
    FROM {db}.feedback FINAL
    WHERE attribution != 'none'
    GROUP BY event_date, event, stage, channel, store_id
) AS fb USING (event_date, event, stage, channel, store_id);
