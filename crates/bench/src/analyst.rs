//! The analyst phase: how fast the README's queries answer at a shop's first month of
//! traffic (README "Performance", docs/bench.md "Analyst phase").
//!
//! Loading 10M events through collector, Kafka and processor would take most of an hour
//! on 2 cores and measure the pipeline again, so the phase writes the rows the pipeline
//! would write straight into a fresh database, with `INSERT … SELECT` from `numbers()`:
//! `events` (identity stage), `touchpoint_journey` and `customer_touchpoints` (journey
//! stage; its materialized view fills `touchpoints_by_day`) and `funnel_attempts` for the
//! web checkout funnel. Each customer has ten events on one day of the last 30: a page
//! view, `Product Viewed`, then as far down the checkout as its reached step (1–4, a
//! quarter each) with unrelated events in between and after; one attempt per customer,
//! closed. A third of the customers are anonymous.
//!
//! Every query of `docs/queries/` then runs once cold (mark and uncompressed caches
//! dropped; the OS page cache cannot be dropped without root) and three times warm
//! (median), with `log_queries` on, and `system.query_log` gives the rows read and the
//! peak memory. Beside them: the journey and one day's counts the old way (the
//! `touchpoints` view), and the web checkout funnel computed at query time with
//! `windowFunnel` over `events`, whose per-step counts must equal those of query 1 (the
//! drop-off by step from `funnel_attempts`) — the phase fails otherwise.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use touchstream_core::config::ClickHouseConfig;

use crate::config::Phase;
use crate::ctx::Ctx;
use crate::error::BenchError;
use crate::report::{Figure, Target};

/// Where the README's queries live, relative to the working directory (the repo root).
const QUERIES_DIR: &str = "docs/queries";
/// Warm runs per query; the median is reported.
const WARM_RUNS: usize = 3;
/// Events per generated customer.
const EVENTS_PER_CUSTOMER: u64 = 10;
/// Days the generated traffic spans (ending yesterday).
const DAYS: u64 = 30;

/// One timed query.
struct Timed {
    /// Figure-name stem.
    key: String,
    /// Table label.
    label: String,
    sql: String,
    /// Issue target for the warm time, ms.
    target_ms: Option<f64>,
}

/// What `system.query_log` says about one run.
#[derive(Debug, Default, Deserialize)]
struct Logged {
    read_rows: u64,
    memory_usage: u64,
    query_duration_ms: u64,
}

/// Run the phase: load, time, compare.
pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>, BenchError> {
    let c = ctx.phase_config("analyst");
    if let Ok(mut d) = ctx.databases.lock() {
        d.push(c.clickhouse.database.clone());
    }
    touchstream_clickhouse::migrate(&c.clickhouse).await?;
    let ch = Http::new(&c.clickhouse);
    let db = c.clickhouse.database.clone();
    let events = ctx.opts.analyst_events.max(EVENTS_PER_CUSTOMER as usize) as u64;
    let customers = events / EVENTS_PER_CUSTOMER;
    let events = customers * EVENTS_PER_CUSTOMER;
    let day0 = yesterday_days() - (DAYS - 1);

    ctx.say(&format!(
        "loading {events} events of {customers} customers over {DAYS} days into {db}"
    ));
    let load_start = Instant::now();
    let statements = load_statements(&db, events, customers, day0);
    let bar = ctx.bar(statements.len() as u64, "analyst: loading tables");
    for (what, sql) in &statements {
        bar.set_message(format!("analyst: loading {what}"));
        ch.exec(sql, &[]).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let load_secs = load_start.elapsed().as_secs_f64();
    // Parts as the pipeline's many small inserts would have left them after merging:
    // every table the timed queries read, so neither side of a comparison reads merged
    // parts while the other does not (`funnel_attempts` was left out until 2026-12-04,
    // and query 1 merged its parts under FINAL at each run: docs/performance.md).
    for table in [
        "events",
        "touchpoint_journey",
        "customer_touchpoints",
        "touchpoints_by_day",
        "funnel_attempts",
    ] {
        ch.exec(&format!("OPTIMIZE TABLE `{db}`.{table} FINAL"), &[])
            .await?;
    }

    let one_day = days_to_date(day0 + DAYS / 2);
    let queries = timed_queries(Path::new(QUERIES_DIR), &db, &one_day)?;
    let mut figures = vec![
        Figure::info(
            Phase::Analyst,
            "analyst_events",
            "analyst: events loaded",
            events as f64,
            "events",
        ),
        Figure::info(
            Phase::Analyst,
            "analyst_load_secs",
            "analyst: load (INSERT … SELECT, all tables)",
            load_secs,
            "s",
        ),
    ];
    let bar = ctx.bar(queries.len() as u64, "analyst: timing queries");
    let mut warm_of = std::collections::BTreeMap::new();
    for q in &queries {
        bar.set_message(format!("analyst: {}", q.key));
        let cold = ch.timed(&q.sql, true).await?;
        let mut warm: Vec<(f64, Logged)> = Vec::with_capacity(WARM_RUNS);
        for _ in 0..WARM_RUNS {
            warm.push(ch.timed(&q.sql, false).await?);
        }
        warm.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (warm_ms, warm_log) = warm.swap_remove(WARM_RUNS / 2);
        warm_of.insert(q.key.clone(), warm_ms);
        figures.push(Figure::info(
            Phase::Analyst,
            &format!("analyst_{}_cold_ms", q.key),
            &format!("{} (cold)", q.label),
            cold.0,
            "ms",
        ));
        let mut f = Figure::info(
            Phase::Analyst,
            &format!("analyst_{}_warm_ms", q.key),
            &format!("{} (warm)", q.label),
            warm_ms,
            "ms",
        );
        if let Some(t) = q.target_ms {
            f = f.target(Target::AtMost(t));
        }
        figures.push(f);
        figures.push(Figure::info(
            Phase::Analyst,
            &format!("analyst_{}_rows_read", q.key),
            &format!("{}: rows read", q.label),
            warm_log.read_rows as f64,
            "rows",
        ));
        figures.push(Figure::info(
            Phase::Analyst,
            &format!("analyst_{}_peak_memory_bytes", q.key),
            &format!("{}: peak query memory", q.label),
            warm_log.memory_usage.max(cold.1.memory_usage) as f64,
            "bytes",
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();

    // The funnel both ways: equal per-step counts, and how much faster precomputed is.
    // Query 1's own result (funnel, step, reached, ...), web checkout's lines.
    let q1 = queries
        .iter()
        .find(|q| q.key.starts_with("q1_"))
        .ok_or_else(|| BenchError::Analyst(format!("no 1_*.sql in {QUERIES_DIR}")))?;
    let precomputed = ch
        .text(&q1.sql)
        .await?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.first() == Some(&"web_checkout") && f.len() > 2)
                .then(|| format!("{}\t{}", f[1], f[2]))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let query_time = ch.text(&window_funnel_sql(&db, true)).await?;
    if precomputed != query_time || precomputed.is_empty() {
        return Err(BenchError::Analyst(format!(
            "funnel per step differs: precomputed {precomputed:?}, windowFunnel {query_time:?}"
        )));
    }
    if let (Some(pre), Some(wf)) = (
        warm_of.get("q1_funnel_dropoff_by_step"),
        warm_of.get("funnel_window_funnel"),
    ) {
        figures.push(
            Figure::info(
                Phase::Analyst,
                "analyst_funnel_speedup",
                "analyst: funnel precomputed vs windowFunnel (warm, ×)",
                wf / pre.max(0.001),
                "×",
            )
            .target(Target::AtLeast(10.0)),
        );
    }
    ctx.diagnose(
        "analyst_funnel_reached_by_step",
        serde_json::json!(precomputed),
    );
    ctx.diagnose("analyst_one_day", serde_json::json!(one_day));
    Ok(figures)
}

/// The queries timed: every `docs/queries/*.sql` (on the run's database), then the old
/// and the fast path of one day's counts, the old journey, the per-minute funnel view
/// (what docs/ops.md reads during an incident) summed over the month, and the query-time
/// funnel.
fn timed_queries(dir: &Path, db: &str, one_day: &str) -> Result<Vec<Timed>, BenchError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| {
            BenchError::io(
                format!("reading {} (run from the repo root)", dir.display()),
                e,
            )
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| BenchError::io(format!("reading {}", path.display()), e))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("query")
            .to_string();
        let target_ms = stem.starts_with("4_").then_some(100.0);
        out.push(Timed {
            key: format!("q{stem}"),
            label: format!("analyst: docs/queries/{stem}"),
            sql: on_db(&text, db),
            target_ms,
        });
    }
    let day_filter = format!("WHERE event_date = '{one_day}'");
    out.push(Timed {
        key: "one_day_stage_channel".into(),
        label: "analyst: one day's stage × channel (touchpoints_by_day)".into(),
        sql: format!(
            "SELECT stage, channel, count() AS events, uniqExact(customer_id) AS customers \
             FROM `{db}`.touchpoints_by_day FINAL {day_filter} AND is_deleted = 0 \
             GROUP BY stage, channel ORDER BY events DESC, stage, channel"
        ),
        target_ms: Some(1000.0),
    });
    out.push(Timed {
        key: "view_one_day_stage_channel".into(),
        label: "analyst: one day's stage × channel (old: touchpoints view)".into(),
        sql: format!(
            "SELECT stage, channel, count() AS events, uniqExact(customer_id) AS customers \
             FROM `{db}`.touchpoints {day_filter} \
             GROUP BY stage, channel ORDER BY events DESC, stage, channel"
        ),
        target_ms: None,
    });
    out.push(Timed {
        key: "view_customer_journey".into(),
        label: "analyst: one customer's journey (old: touchpoints view)".into(),
        sql: format!(
            "SELECT event_time, type, event, stage, channel, session_id FROM `{db}`.touchpoints \
             WHERE customer_id = 'user-1' ORDER BY event_time_ms, event_id"
        ),
        target_ms: None,
    });
    out.push(Timed {
        key: "view_funnel_step_minute".into(),
        label: "analyst: funnel_step_minute over the month (view)".into(),
        sql: format!(
            "SELECT funnel, step, sum(reached) AS reached, sum(dropped) AS dropped, \
             sum(converted) AS converted FROM `{db}`.funnel_step_minute \
             GROUP BY funnel, step ORDER BY funnel, step"
        ),
        target_ms: None,
    });
    out.push(Timed {
        key: "funnel_window_funnel".into(),
        label: "analyst: funnel at query time (windowFunnel over events)".into(),
        sql: window_funnel_sql(db, false),
        target_ms: None,
    });
    Ok(out)
}

/// A README query on database `db`.
fn on_db(sql: &str, db: &str) -> String {
    sql.replace("touchstream.", &format!("`{db}`."))
}

/// The web checkout funnel computed at query time from `events`, as query-time tools do:
/// per user (user id, else anonymous id), the deepest step reached within the one-hour
/// window, then per step how many reached it (`bare`: `step\treached` lines only, to
/// compare with the precomputed funnel).
fn window_funnel_sql(db: &str, bare: bool) -> String {
    let per_user = format!(
        "SELECT if(user_id != '', user_id, anonymous_id) AS who, \
         windowFunnel(3600)(event_time, event = 'Product Viewed', event = 'Product Added', \
         event = 'Checkout Started', event = 'Order Completed') AS level \
         FROM `{db}`.events GROUP BY who"
    );
    if bare {
        format!(
            "SELECT step, countIf(level >= step) AS reached FROM ({per_user}) \
             ARRAY JOIN [1, 2, 3, 4] AS step GROUP BY step HAVING reached > 0 ORDER BY step"
        )
    } else {
        format!(
            "SELECT step, countIf(level >= step) AS reached, countIf(level = step) AS dropped \
             FROM ({per_user}) ARRAY JOIN [1, 2, 3, 4] AS step GROUP BY step ORDER BY step"
        )
    }
}

/// The rows the pipeline would write for the generated traffic, table by table. Event
/// `n` is customer `n % customers`'s event `n / customers`; the customer's reached step
/// is `1 + k % 4`, its day `day0 + k % 30`.
fn load_statements(
    db: &str,
    events: u64,
    customers: u64,
    day0: u64,
) -> Vec<(&'static str, String)> {
    // Columns derived from `number` (an event) shared by every table.
    let base = format!(
        "SELECT number AS n, n % {customers} AS k, intDiv(n, {customers}) AS j, \
         1 + k % 4 AS r, \
         toInt64(({day0} + k % {DAYS}) * 86400 + intHash32(k) % 79200 + j * 120) * 1000 AS t_ms, \
         concat('web:', lower(hex(MD5(toString(n))))) AS eid, \
         if(k % 3 = 0, concat('anon-', toString(k)), concat('user-', toString(k))) AS cust, \
         multiIf(j = 0, 'Home', j = 1, 'Product Viewed', j = 2 AND r >= 2, 'Product Added', \
           j = 3 AND r >= 3, 'Checkout Started', j = 4 AND r >= 4, 'Order Completed', \
           j = 5, 'Email Opened', j = 6, 'Store Visited', j = 7, 'Products Searched', \
           j = 8, 'Call Received', 'Product List Viewed') AS name, \
         if(j = 0, 'page', 'track') AS typ, \
         multiIf(j = 0, 'awareness', name IN ('Product Added', 'Checkout Started', \
           'Order Completed'), 'purchase', name IN ('Email Opened', 'Products Searched'), \
           'awareness', 'consideration') AS stg, \
         multiIf(name = 'Email Opened', 'email', name = 'Store Visited', 'store', \
           name = 'Call Received', 'call_center', 'web') AS chn, \
         lower(hex(MD5(concat(cust, '/', toString(k))))) AS sid \
         FROM numbers({events})"
    );
    let events_sql = format!(
        "INSERT INTO `{db}`.events (event_id, event_date, event_time, event_time_ms, \
         received_at_ms, type, event, anonymous_id, user_id, previous_id, source, \
         message_channel, properties, traits, context, ip, user_agent, extra, \
         kafka_partition, kafka_offset) \
         SELECT eid, toDate(toDateTime(intDiv(t_ms, 1000))), toDateTime(intDiv(t_ms, 1000)), \
         t_ms, t_ms + 150, typ, name, if(k % 3 = 0, cust, concat('device-', toString(k))), \
         if(k % 3 = 0, '', cust), '', 'web', '', \
         '{{\"product_id\":\"sku-1042\",\"price\":49.9,\"currency\":\"EUR\"}}', '{{}}', \
         '{{\"page\":{{\"path\":\"/products/sku-1042\"}},\"library\":{{\"name\":\"analytics.js\"}}}}', \
         '203.0.113.7', 'Mozilla/5.0 (X11; Linux x86_64)', '{{}}', toInt32(k % 8), toInt64(n) \
         FROM ({base})"
    );
    let journey_sql = format!(
        "INSERT INTO `{db}`.touchpoint_journey (event_id, event_date, customer_id, session_id, \
         stage, channel, is_late, version) \
         SELECT eid, toDate(toDateTime(intDiv(t_ms, 1000))), cust, sid, stg, chn, 0, \
         toUInt64(n + 1) * 65536 FROM ({base})"
    );
    // The journey stage's second row of each event; the materialized view copies it on
    // into touchpoints_by_day.
    let customer_sql = format!(
        "INSERT INTO `{db}`.customer_touchpoints (customer_id, event_date, event_time_ms, \
         event_id, event_time, type, event, stage, channel, session_id, is_late, is_deleted, \
         version) \
         SELECT cust, toDate(toDateTime(intDiv(t_ms, 1000))), t_ms, eid, \
         toDateTime(intDiv(t_ms, 1000)), typ, name, stg, chn, sid, 0, 0, \
         toUInt64(n + 1) * 65536 FROM ({base})"
    );
    // One closed web checkout attempt per customer: step j+1 is event j+1 (j < r).
    let attempts_sql = format!(
        "INSERT INTO `{db}`.funnel_attempts (attempt_id, funnel, customer_id, started_at, \
         start_ms, closed_at, closed_ms, outcome, reached_step, total_steps, step_times_ms, \
         step_event_ids, is_deleted, version) \
         SELECT lower(hex(MD5(concat('web_checkout/', cust)))), 'web_checkout', cust, \
         toDateTime(intDiv(s_ms, 1000)), s_ms, toDateTime(intDiv(c_ms, 1000)), c_ms, \
         if(r = 4, 'converted', 'dropped'), r, 4, times, ids, 0, toUInt64(k + 1) \
         FROM (SELECT k, r, cust, s_ms, if(r = 4, s_ms + 3 * 120000, s_ms + 3600000) AS c_ms, \
           arrayMap(i -> s_ms + i * 120000, range(r)) AS times, \
           arrayMap(i -> concat('web:', lower(hex(MD5(toString(k + (i + 1) * {customers}))))), \
             range(r)) AS ids \
           FROM (SELECT k, r, cust, t_ms AS s_ms FROM ({base}) WHERE j = 1))"
    );
    vec![
        ("events", events_sql),
        ("touchpoint_journey", journey_sql),
        ("customer_touchpoints", customer_sql),
        ("funnel_attempts", attempts_sql),
    ]
}

/// Days since 1970 of yesterday (UTC).
fn yesterday_days() -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 86_400).saturating_sub(1)
}

/// `YYYY-MM-DD` of a day number.
fn days_to_date(days: u64) -> String {
    let d = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(days as i64);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// ClickHouse over HTTP with per-query settings (`query_id`, `log_queries`), which the
/// phase needs to find each run in `system.query_log`.
struct Http {
    client: reqwest::Client,
    url: String,
    user: String,
    password: String,
}

impl Http {
    fn new(c: &ClickHouseConfig) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: c.url.clone(),
            user: c.user.clone(),
            password: c.password.clone(),
        }
    }

    /// Run `sql` with URL `params`; the response body.
    async fn exec(&self, sql: &str, params: &[(&str, &str)]) -> Result<String, BenchError> {
        let resp = self
            .client
            .post(&self.url)
            .basic_auth(&self.user, Some(&self.password))
            .query(params)
            .body(sql.to_string())
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            let head: String = sql.chars().take(120).collect();
            return Err(BenchError::Analyst(format!(
                "{head}…: ClickHouse answered {status}: {}",
                body.chars().take(400).collect::<String>()
            )));
        }
        Ok(body)
    }

    /// A result as trimmed TSV text.
    async fn text(&self, sql: &str) -> Result<String, BenchError> {
        Ok(self
            .exec(&format!("{sql} FORMAT TSV"), &[])
            .await?
            .trim()
            .to_string())
    }

    /// Run `sql` (after dropping ClickHouse's caches when `cold`): wall-clock ms and what
    /// `system.query_log` recorded for it.
    async fn timed(&self, sql: &str, cold: bool) -> Result<(f64, Logged), BenchError> {
        if cold {
            self.exec("SYSTEM DROP MARK CACHE", &[]).await?;
            self.exec("SYSTEM DROP UNCOMPRESSED CACHE", &[]).await?;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let start = Instant::now();
        self.exec(
            &format!("{sql} FORMAT Null"),
            &[("query_id", id.as_str()), ("log_queries", "1")],
        )
        .await?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        // The server may log the query's end just after the response: look again briefly
        // rather than read a missing entry as zero rows.
        let mut row = String::new();
        for _ in 0..20 {
            self.exec("SYSTEM FLUSH LOGS", &[]).await?;
            row = self
                .text(&format!(
                    "SELECT read_rows, memory_usage, query_duration_ms FROM system.query_log \
                     WHERE query_id = '{id}' AND type = 2 LIMIT 1"
                ))
                .await?;
            if !row.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut f = row.split('\t').map(|v| v.parse::<u64>().unwrap_or(0));
        let logged = Logged {
            read_rows: f.next().unwrap_or(0),
            memory_usage: f.next().unwrap_or(0),
            query_duration_ms: f.next().unwrap_or(0),
        };
        // The server's own duration when the log has it (no HTTP round trip).
        let ms = if logged.query_duration_ms > 0 {
            logged.query_duration_ms as f64
        } else {
            ms
        };
        Ok((ms, logged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_readme_query_is_timed_on_the_run_database() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/queries");
        let q = timed_queries(&dir, "bench_db", "2026-11-30").unwrap();
        let files = std::fs::read_dir(&dir).unwrap().count();
        // The docs/queries files, then the day's counts old and new, the old journey, the
        // per-minute funnel view and the query-time funnel.
        assert_eq!(q.len(), files + 5);
        assert!(q.iter().all(|t| !t.sql.contains("touchstream.")));
        assert!(q
            .iter()
            .any(|t| t.key == "view_funnel_step_minute" && t.sql.contains("`bench_db`.")));
        assert!(q
            .iter()
            .any(|t| t.key == "q4_customer_journey" && t.target_ms == Some(100.0)));
        assert_eq!(days_to_date(20_000), "2024-10-04");
    }
}
