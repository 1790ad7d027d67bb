//! Plays a generated plan against a collector over HTTP, the way frontends would:
//! web batches with the web source's key (HTTP Basic), CRM batches with the call-centre
//! key, and cart-abandonment beacons as `text/plain` with `writeKey` in the body.
//!
//! Messages go out in event-time order, one request at a time (so each Kafka partition
//! receives them in order), at an optional target rate. A 503 is retried after its
//! `Retry-After`; any other refusal stops the run with the collector's answer.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde_json::{json, Value};

use crate::generator::{Planned, Transport};

/// Where and how fast to send.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Collector base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Write key of the web source.
    pub web_key: String,
    /// Write key of the call-centre source.
    pub crm_key: String,
    /// Target events per second; 0 sends as fast as the collector answers.
    pub rate_per_sec: f64,
    /// Messages per batch request. Default 100.
    pub batch: usize,
    /// Send `sentAt` (as SDKs do, for clock-skew correction). Off makes event times
    /// exactly the planned ones, so two runs of one plan are comparable to the ms.
    pub sent_at: bool,
}

/// Why sending stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The collector could not be reached.
    #[error("collector unreachable at {url}: {source}")]
    Http {
        /// Base URL.
        url: String,
        /// Transport error.
        source: reqwest::Error,
    },
    /// The collector refused a request (not a retryable 503).
    #[error("collector answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// 503 too many times in a row.
    #[error("collector kept answering 503 (Kafka unavailable?)")]
    Unavailable,
}

/// What was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendStats {
    /// Messages accepted by the collector.
    pub accepted: usize,
    /// Messages the collector rejected (DLQ).
    pub rejected: usize,
    /// Requests made (including retries).
    pub requests: usize,
}

/// RFC 3339 UTC with milliseconds, as Segment SDKs write timestamps (the collector's
/// own formatter, the inverse of the parser it validates with).
pub use touchstream_collector::message::format_timestamp as iso;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Send the whole plan; `progress` (if any) advances per message.
pub async fn send(
    plan: &[Planned],
    cfg: &SendConfig,
    progress: Option<&ProgressBar>,
) -> Result<SendStats, SendError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|source| SendError::Http {
            url: cfg.url.clone(),
            source,
        })?;
    let started = Instant::now();
    let mut stats = SendStats::default();
    let mut sent = 0usize;
    let mut i = 0;
    while i < plan.len() {
        let transport = plan[i].transport;
        let max = if transport == Transport::Beacon {
            1
        } else {
            cfg.batch.max(1)
        };
        let mut messages: Vec<Value> = Vec::with_capacity(max);
        while i < plan.len() && plan[i].transport == transport && messages.len() < max {
            let mut m = plan[i].message.clone();
            m["timestamp"] = json!(iso(plan[i].time_ms));
            messages.push(m);
            i += 1;
        }
        let n = messages.len();
        let answer = post(&client, cfg, transport, messages, &mut stats).await?;
        stats.accepted += answer.get("accepted").and_then(Value::as_u64).unwrap_or(0) as usize;
        stats.rejected += answer
            .get("rejected")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        sent += n;
        if let Some(p) = progress {
            p.inc(n as u64);
        }
        if cfg.rate_per_sec > 0.0 {
            let due = Duration::from_secs_f64(sent as f64 / cfg.rate_per_sec);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(stats)
}

async fn post(
    client: &reqwest::Client,
    cfg: &SendConfig,
    transport: Transport,
    messages: Vec<Value>,
    stats: &mut SendStats,
) -> Result<Value, SendError> {
    for _attempt in 0..20 {
        stats.requests += 1;
        let sent_at = iso(now_ms());
        let req = match transport {
            Transport::Beacon => {
                let mut m = messages.first().cloned().unwrap_or(Value::Null);
                m["writeKey"] = json!(cfg.web_key);
                if cfg.sent_at {
                    m["sentAt"] = json!(sent_at);
                }
                client
                    .post(format!("{}/v1/track", cfg.url))
                    .header("content-type", "text/plain;charset=UTF-8")
                    .body(m.to_string())
            }
            Transport::Web | Transport::Crm => {
                let key = if transport == Transport::Web {
                    &cfg.web_key
                } else {
                    &cfg.crm_key
                };
                client
                    .post(format!("{}/v1/batch", cfg.url))
                    .basic_auth(key, Some(""))
                    .json(&if cfg.sent_at {
                        json!({"batch": messages, "sentAt": sent_at})
                    } else {
                        json!({"batch": messages})
                    })
            }
        };
        let resp = req.send().await.map_err(|source| SendError::Http {
            url: cfg.url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        if status == 503 {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait.min(5))).await;
            continue;
        }
        let body = resp.text().await.unwrap_or_default();
        if status != 200 {
            return Err(SendError::Refused { status, body });
        }
        return Ok(serde_json::from_str(&body).unwrap_or(Value::Null));
    }
    Err(SendError::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_has_millis_and_z() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_764_072_000_123), "2025-11-25T12:00:00.123Z");
    }
}
