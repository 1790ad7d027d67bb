-- Report, touchpoint scorecard: touchpoint_scorecard (migration 0010, README "Touchpoint
-- scorecard") over the days of the period (event_date in [since_day, until_day), whole
-- UTC days), per touchpoint: event × stage × channel, stores together. Shares are over
-- the customers of each day (a customer active on two days counts twice); scores are
-- exact over the answers: NPS = 100 × (promoters − detractors) ÷ responses, CSAT and
-- CES means weighted by responses.
SELECT
    event,
    stage,
    channel,
    sum(events) AS events,
    sum(customers) AS customer_days,
    sum(next_stage_customers) AS next_stage_customers,
    sum(complaint_customers) AS complaint_customers,
    sum(converted_attempts) AS converted_attempts,
    sum(nps_responses) AS nps_n,
    sum(promoters) AS promoters,
    sum(detractors) AS detractors,
    sum(csat_responses) AS csat_n,
    toFloat64(sum(ifNull(csat_mean * csat_responses, 0))) AS csat_sum,
    sum(ces_responses) AS ces_n,
    toFloat64(sum(ifNull(ces_mean * ces_responses, 0))) AS ces_sum
FROM touchpoint_scorecard
WHERE event_date >= toDate(?) AND event_date < toDate(?)
GROUP BY event, stage, channel
ORDER BY events DESC, event, stage, channel
