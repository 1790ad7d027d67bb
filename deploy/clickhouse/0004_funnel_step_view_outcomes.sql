-- funnel_step_minute counts only attempts that stayed in the funnel and only steps an
-- event reached (README "Funnels"): an `excluded` attempt left the funnel (neither
-- converted nor dropped, so not in the drop-off ratio's denominator either), and a skipped
-- optional step (an empty `step_event_ids` entry) was not reached. Views cannot be
-- altered on 18.16, so it is dropped and created again; it holds no data.

DROP TABLE IF EXISTS {db}.funnel_step_minute;

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
WHERE is_deleted = 0 AND outcome != 'excluded' AND step_event_ids[step] != ''
GROUP BY funnel, minute, step;
