//! The demo's report: what the pipeline measured in ClickHouse, beside what the generator
//! was configured to produce.
//!
//! Every query is restricted to the demo's own customers (`customer_id` carries the seed)
//! and attempts started within the plan, so earlier runs in the same database do not
//! blur the comparison.

use std::fmt::Write as _;

use clickhouse::Row;
use serde::Deserialize;

use crate::generator::{GeneratorConfig, PlanSummary};

/// One funnel step as measured.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct StepRow {
    /// Funnel name.
    pub funnel: String,
    /// Step, 1-based.
    pub step: u8,
    /// Closed attempts that reached it.
    pub reached: u64,
    /// Closed attempts that dropped at it.
    pub dropped: u64,
}

/// Touchpoints of one stage and channel.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct StageChannelRow {
    /// Journey stage.
    pub stage: String,
    /// Channel.
    pub channel: String,
    /// Events.
    pub events: u64,
    /// Distinct customers.
    pub customers: u64,
}

/// Service recovery step 1 of one call-centre team (the funnel's `properties.team`
/// breakdown), as measured.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct TeamRow {
    /// The team (`breakdown_values[1]`).
    pub team: String,
    /// Closed, not excluded attempts (complaints).
    pub reached: u64,
    /// Of those, dropped at step 1 (never followed up).
    pub dropped: u64,
}

#[derive(Row, Deserialize)]
struct FollowUp {
    followed_up: u64,
    median: f64,
    p90: f64,
}

#[derive(Row, Deserialize)]
struct Abandonment {
    abandoned: u64,
    carts: u64,
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Steps of every funnel.
    pub steps: Vec<StepRow>,
    /// Web checkout attempts dropped after Product Added / attempts that reached it.
    pub cart_abandonment: Option<f64>,
    /// Complaints followed up (closed attempts), median and p90 delay in minutes.
    pub follow_up: (u64, f64, f64),
    /// Top stages × channels.
    pub top: Vec<StageChannelRow>,
    /// Closed, live funnel attempts of the demo's customers.
    pub attempts: u64,
    /// Service recovery step 1 by team (breakdown).
    pub teams: Vec<TeamRow>,
}

impl Measured {
    /// Measured follow-up drop-off (service recovery step 1) of a team.
    pub fn team_dropoff(&self, team: &str) -> Option<f64> {
        self.teams
            .iter()
            .find(|t| t.team == team)
            .filter(|t| t.reached > 0)
            .map(|t| t.dropped as f64 / t.reached as f64)
    }

    /// Measured drop-off at a step of a funnel.
    pub fn dropoff(&self, funnel: &str, step: u8) -> Option<f64> {
        self.steps
            .iter()
            .find(|s| s.funnel == funnel && s.step == step)
            .filter(|s| s.reached > 0)
            .map(|s| s.dropped as f64 / s.reached as f64)
    }
}

fn filter(cfg: &GeneratorConfig, start_ms: i64) -> String {
    format!(
        "customer_id LIKE '%-{}-%' AND start_ms >= {start_ms} AND is_deleted = 0",
        cfg.seed
    )
}

/// Closed attempts of the demo's customers so far (for progress while waiting).
pub async fn closed_attempts(
    ch: &clickhouse::Client,
    cfg: &GeneratorConfig,
    start_ms: i64,
) -> Result<u64, clickhouse::error::Error> {
    ch.query(&format!(
        "SELECT count() FROM funnel_attempts FINAL WHERE {}",
        filter(cfg, start_ms)
    ))
    .fetch_one()
    .await
}

/// Query ClickHouse for the measured figures.
pub async fn measure(
    ch: &clickhouse::Client,
    cfg: &GeneratorConfig,
    start_ms: i64,
) -> Result<Measured, clickhouse::error::Error> {
    let f = filter(cfg, start_ms);
    let steps: Vec<StepRow> = ch
        .query(&format!(
            "SELECT funnel, step, count() AS reached, countIf(outcome = 'dropped' AND reached_step = step) AS dropped \
             FROM funnel_attempts FINAL ARRAY JOIN arrayMap(x -> toUInt8(x + 1), range(reached_step)) AS step \
             WHERE {f} GROUP BY funnel, step ORDER BY funnel, step"
        ))
        .fetch_all()
        .await?;
    let ab: Abandonment = ch
        .query(&format!(
            "SELECT countIf(outcome = 'dropped' AND reached_step >= 2) AS abandoned, countIf(reached_step >= 2) AS carts \
             FROM funnel_attempts FINAL WHERE funnel = 'web_checkout' AND {f}"
        ))
        .fetch_one()
        .await?;
    let fu: FollowUp = ch
        .query(&format!(
            "SELECT count() AS followed_up, \
             toFloat64(quantileExact(0.5)((step_times_ms[2] - step_times_ms[1]) / 60000)) AS median, \
             toFloat64(quantileExact(0.9)((step_times_ms[2] - step_times_ms[1]) / 60000)) AS p90 \
             FROM funnel_attempts FINAL WHERE funnel = 'service_recovery' AND reached_step >= 2 AND {f}"
        ))
        .fetch_one()
        .await?;
    let top: Vec<StageChannelRow> = ch
        .query(&format!(
            "SELECT stage, channel, count() AS events, uniqExact(customer_id) AS customers FROM touchpoints \
             WHERE customer_id LIKE '%-{}-%' AND event_time_ms >= {start_ms} \
             GROUP BY stage, channel ORDER BY events DESC, stage, channel LIMIT 10",
            cfg.seed
        ))
        .fetch_all()
        .await?;
    // By the breakdown the funnel declares (first_step: the complaint's team), as
    // docs/queries/8 reads it, restricted to the demo's customers.
    let teams: Vec<TeamRow> = ch
        .query(&format!(
            "SELECT breakdown_values[1] AS team, count() AS reached, \
             countIf(outcome = 'dropped' AND reached_step = 1) AS dropped \
             FROM funnel_attempts FINAL WHERE funnel = 'service_recovery' \
             AND outcome != 'excluded' AND {f} GROUP BY team ORDER BY team"
        ))
        .fetch_all()
        .await?;
    let attempts = closed_attempts(ch, cfg, start_ms).await?;
    Ok(Measured {
        teams,
        steps,
        cart_abandonment: (ab.carts > 0).then(|| ab.abandoned as f64 / ab.carts as f64),
        follow_up: (fu.followed_up, fu.median, fu.p90),
        top,
        attempts,
    })
}

const CHECKOUT: [&str; 4] = [
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
];
const SERVICE: [&str; 3] = ["Complaint Filed", "Follow-up Completed", "Order Completed"];

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.1} %", v * 100.0))
}

/// The report as text.
pub fn render(cfg: &GeneratorConfig, plan: &PlanSummary, m: &Measured) -> String {
    let mut out = String::new();
    let mut funnel = |name: &str, steps: &[&str], configured: &[f64], reached: &[usize]| {
        let _ = writeln!(out, "\n{name}");
        let _ = writeln!(
            out,
            "  {:<4} {:<22} {:>9} {:>9} {:>12} {:>12}",
            "step", "event", "reached", "dropped", "drop-off", "configured"
        );
        for (k, event) in steps.iter().enumerate() {
            let step = (k + 1) as u8;
            let row = m.steps.iter().find(|s| s.funnel == name && s.step == step);
            let conf = configured.get(k).copied().or(Some(0.0));
            let _ = writeln!(
                out,
                "  {:<4} {:<22} {:>9} {:>9} {:>12} {:>12}",
                step,
                event,
                row.map_or(0, |r| r.reached),
                row.map_or(0, |r| r.dropped),
                pct(m.dropoff(name, step)),
                pct(conf)
            );
        }
        let _ = writeln!(
            out,
            "  (generator planned {reached:?} attempts reaching each step)"
        );
    };
    funnel(
        "web_checkout",
        &CHECKOUT,
        &cfg.checkout_dropoff,
        &plan.checkout_reached,
    );
    // With teams, step 1's configured rate is theirs, weighted by their complaints.
    let mut service = cfg.service_dropoff;
    let complaints: usize = plan.service_teams.iter().map(|t| t.2).sum();
    if complaints > 0 {
        service[0] = plan
            .service_teams
            .iter()
            .map(|(_, rate, n, _)| rate * *n as f64)
            .sum::<f64>()
            / complaints as f64;
    }
    funnel(
        "service_recovery",
        &SERVICE,
        &service,
        &plan.service_reached,
    );
    if !plan.service_teams.is_empty() {
        let _ = writeln!(
            out,
            "\nservice_recovery by team (breakdown properties.team): complaints not followed up"
        );
        let _ = writeln!(
            out,
            "  {:<10} {:>9} {:>9} {:>12} {:>12}",
            "team", "reached", "dropped", "drop-off", "configured"
        );
        for (team, rate, _, _) in &plan.service_teams {
            let row = m.teams.iter().find(|t| &t.team == team);
            let _ = writeln!(
                out,
                "  {:<10} {:>9} {:>9} {:>12} {:>12}",
                team,
                row.map_or(0, |r| r.reached),
                row.map_or(0, |r| r.dropped),
                pct(m.team_dropoff(team)),
                pct(Some(*rate))
            );
        }
    }
    let conf_abandon = 1.0 - (1.0 - cfg.checkout_dropoff[1]) * (1.0 - cfg.checkout_dropoff[2]);
    let _ = writeln!(
        out,
        "\ncart abandonment (dropped after Product Added): {}   configured {}",
        pct(m.cart_abandonment),
        pct(Some(conf_abandon))
    );
    let (n, median, p90) = m.follow_up;
    let _ = writeln!(
        out,
        "complaint → staff follow-up: {n} followed up, median {median:.0} min, p90 {p90:.0} min   generated median {:.0} min, p90 {:.0} min",
        plan.follow_up_quantile(0.5).unwrap_or(0.0),
        plan.follow_up_quantile(0.9).unwrap_or(0.0)
    );
    let _ = writeln!(out, "\ntop touchpoints by stage and channel");
    let _ = writeln!(
        out,
        "  {:<14} {:<12} {:>8} {:>10}",
        "stage", "channel", "events", "customers"
    );
    for r in &m.top {
        let _ = writeln!(
            out,
            "  {:<14} {:<12} {:>8} {:>10}",
            r.stage, r.channel, r.events, r.customers
        );
    }
    out
}
