//! The journey tables of a test run, read back for comparison: two runs of the same log
//! (uninterrupted and faulty, or in two arrival orders) must give equal `Tables`.

// Row fields are the columns of the same name (deploy/clickhouse/0001_init.sql).
#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use touchstream_core::Config;
use touchstream_demo::generator::{GeneratorConfig, PlanSummary, Planned};
use touchstream_demo::report::closed_attempts;
use touchstream_demo::sender::SendConfig;

/// A `touchpoints` row.
#[derive(Row, Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
pub struct Tp {
    pub event_id: String,
    pub customer_id: String,
    pub session_id: String,
    pub stage: String,
    pub channel: String,
    pub is_late: u8,
}

/// A live `sessions` row.
#[derive(Row, Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
pub struct Sess {
    pub session_id: String,
    pub customer_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub event_count: u32,
}

/// A live `funnel_attempts` row.
#[derive(Row, Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
pub struct Att {
    pub attempt_id: String,
    pub funnel: String,
    pub customer_id: String,
    pub outcome: String,
    pub reached_step: u8,
    pub closed_ms: i64,
}

/// An `identities` link.
#[derive(Row, Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
pub struct Link {
    pub anonymous_id: String,
    pub user_id: String,
}

/// Everything compared.
#[derive(Debug, PartialEq)]
pub struct Tables {
    pub touchpoints: BTreeSet<Tp>,
    pub sessions: BTreeSet<Sess>,
    pub attempts: BTreeSet<Att>,
    pub links: BTreeSet<Link>,
    pub events: u64,
}

/// The journey-derived tables of a test's database, deduplicated (`FINAL`, no tombstones),
/// versions left out: what two runs of the same log must agree on.
pub async fn tables(c: &Config) -> Tables {
    let ch = touchstream_clickhouse::client(&c.clickhouse);
    Tables {
        touchpoints: ch
            .query("SELECT event_id, customer_id, session_id, stage, channel, is_late FROM touchpoints")
            .fetch_all()
            .await
            .expect("touchpoints")
            .into_iter()
            .collect(),
        sessions: ch
            .query("SELECT session_id, customer_id, start_ms, end_ms, event_count FROM sessions FINAL WHERE is_deleted = 0")
            .fetch_all()
            .await
            .expect("sessions")
            .into_iter()
            .collect(),
        attempts: ch
            .query("SELECT attempt_id, funnel, customer_id, outcome, reached_step, closed_ms FROM funnel_attempts FINAL WHERE is_deleted = 0")
            .fetch_all()
            .await
            .expect("attempts")
            .into_iter()
            .collect(),
        links: ch
            .query("SELECT anonymous_id, user_id FROM identities FINAL")
            .fetch_all()
            .await
            .expect("identities")
            .into_iter()
            .collect(),
        events: ch.query("SELECT count() FROM events FINAL").fetch_one().await.expect("events"),
    }
}

/// Wait until every planned funnel attempt of a generated log is closed and the tables
/// stop changing (two equal readings 2 s apart); at most 240 s.
pub async fn settle(
    c: &Config,
    g: &GeneratorConfig,
    start_ms: i64,
    summary: &PlanSummary,
) -> Tables {
    let ch = touchstream_clickhouse::client(&c.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last: Option<Tables> = None;
    loop {
        let closed = closed_attempts(&ch, g, start_ms).await.unwrap_or(0);
        if closed >= summary.attempts as u64 {
            let t = tables(c).await;
            if t.events == summary.messages as u64
                && t.touchpoints.iter().all(|r| !r.customer_id.is_empty())
                && last.as_ref() == Some(&t)
            {
                return t;
            }
            last = Some(t);
        }
        assert!(
            Instant::now() < deadline,
            "{} closed {closed} of {} attempts",
            c.clickhouse.database,
            summary.attempts
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The same log customer after customer (each customer's messages in time order), as a
/// backfill, a server-side import or a mobile app's offline queue sends it. A customer is
/// its sender's id: the anonymous id, else the user id.
pub fn customer_after_customer(messages: &[Planned]) -> Vec<Planned> {
    let sender = |m: &Planned| -> String {
        ["anonymousId", "userId"]
            .iter()
            .find_map(|k| m.message.get(*k).and_then(|v| v.as_str()))
            .unwrap_or_default()
            .to_string()
    };
    let mut order: Vec<String> = Vec::new();
    let mut by_sender: std::collections::HashMap<String, Vec<Planned>> = Default::default();
    for m in messages {
        let s = sender(m);
        if !by_sender.contains_key(&s) {
            order.push(s.clone());
        }
        by_sender.entry(s).or_default().push(m.clone());
    }
    let out: Vec<Planned> = order
        .iter()
        .flat_map(|s| by_sender[s].iter().cloned())
        .collect();
    assert_eq!(out.len(), messages.len());
    out
}

/// How the journey tests send a generated log: the demo write keys, batches of 20, no
/// `sentAt` (event times exactly the planned ones, so two runs compare to the ms), at
/// `rate` events/s (0: as fast as the collector answers).
pub fn sender(base: &str, rate: f64) -> SendConfig {
    SendConfig {
        url: base.to_string(),
        web_key: "demo-web-key".into(),
        crm_key: "demo-crm-key".into(),
        rate_per_sec: rate,
        batch: 20,
        sent_at: false,
    }
}
