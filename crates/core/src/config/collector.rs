//! The `[collector]` section: the HTTP collector's listen address, write keys (sources),
//! request limits, CORS, route aliases and rate limit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One write key and the source it names.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Source name stored with every event (e.g. `web`, `ios`, `store-tablets`). It
    /// scopes the client's `messageId`: every event id starts with it and a `:`
    /// (README "Event ids and retries"), so it must be non-empty and hold no `:`. Write
    /// keys that share a name share the scope (e.g. an old and a new key of one source).
    pub name: String,
    /// Write key clients send (HTTP Basic username or `writeKey`). Secret.
    pub write_key: String,
    /// Channel for messages that do not name one (`context.channel` / `channel`).
    /// Default `web`.
    #[serde(default = "default_channel")]
    pub default_channel: String,
}

// Hand-written so the write key never reaches a log line.
impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("write_key", &"***")
            .field("default_channel", &self.default_channel)
            .finish()
    }
}

fn default_channel() -> String {
    "web".into()
}

/// HTTP collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Listen address. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Write keys. Default: one demo source `web` with key `demo-web-key` and one
    /// `call-center` source with key `demo-crm-key`, for local runs only.
    pub sources: Vec<SourceConfig>,
    /// Largest accepted message, bytes. Default 32768 (Segment's 32 KiB).
    pub max_message_bytes: usize,
    /// Largest accepted request body after gzip inflation, bytes. Default 512000 (500 KiB).
    pub max_request_bytes: usize,
    /// Most messages in one batch. Default 2500.
    pub max_batch_messages: usize,
    /// How long a request waits for broker acks before answering 503, ms. Default 5000.
    pub produce_timeout_ms: u64,
    /// Cap on request bytes being produced at once; beyond it requests get 503.
    /// Default 67108864 (64 MiB).
    pub max_in_flight_bytes: usize,
    /// `Retry-After` sent with 503, seconds. Default 5.
    pub retry_after_secs: u64,
    /// Origins allowed by CORS (exact match, or `*`). Default empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// First-party path aliases, alias → canonical route (e.g. `"/t/b" = "/v1/batch"`),
    /// so ad blockers do not drop the requests. Default empty.
    pub route_aliases: BTreeMap<String, String>,
    /// Header carrying the client IP when behind a trusted proxy (e.g.
    /// `x-forwarded-for`). Read only when the socket peer is in `trusted_proxies`, and
    /// then the right-most address that is not itself a trusted proxy is the client's
    /// (the left-most is whatever the client wrote). Default none: the socket peer address.
    pub trusted_proxy_header: Option<String>,
    /// CIDRs of the proxies in front of the collector (e.g. `["10.0.0.0/8"]`; a bare
    /// address is a /32 or /128). Required when `trusted_proxy_header` is set. Default
    /// empty.
    pub trusted_proxies: Vec<String>,
    /// Requests per second allowed per write key (token bucket, burst = 2× rate); 0 means
    /// unlimited. The outer fence: the web key is public, so `rate_limit_per_ip` is what
    /// stops one abuser. Default 0.
    pub rate_limit_per_key: u32,
    /// Requests per second allowed per client address (token bucket, burst = 2× rate;
    /// IPv6 counted per /64), checked before the body is read; 0 means unlimited.
    /// Default 0.
    pub rate_limit_per_ip: u32,
    /// Most client addresses with a bucket at once; beyond it the oldest bucket is
    /// dropped (that client starts again with a full bucket). Default 100000 (a few MiB).
    pub rate_limit_ip_table_size: usize,
    /// Allow the demo write keys (`demo-web-key`, `demo-crm-key`); without it the
    /// collector refuses to start with them (`--allow-demo-keys` sets it). Default false.
    pub allow_demo_keys: bool,
    /// Most body bytes (after gzip inflation) read before the write key is known when
    /// the request has no key in its `Authorization` header (the key is then in the
    /// body); beyond it 413. Browsers cap `sendBeacon`/keepalive bodies at 64 KiB.
    /// Default 65536.
    pub max_unauthenticated_bytes: usize,
    /// Earliest accepted event time (UTC date `YYYY-MM-DD`, or RFC 3339); older events
    /// are rejected with `event_time_before_floor` on every endpoint. Default
    /// `2000-01-01`.
    pub event_time_floor: String,
    /// Oldest accepted event time on the live endpoints (all but `/v1/import`), days
    /// before receipt; older events are rejected with `event_time_too_old`. 0 = no
    /// limit. Default 30.
    pub max_event_age_days: u32,
    /// How often the broker readiness behind `/readyz` is checked in the background, ms;
    /// `/readyz` answers from the last check and never waits for the broker. Default 2000.
    pub readiness_interval_ms: u64,
    /// How long a client may take to send a request's headers (also the wait for the
    /// next request on a kept-alive connection), ms; the connection is closed beyond it.
    /// Default 10000.
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a request's body, ms; 408 beyond it.
    /// Default 30000.
    pub body_read_timeout_ms: u64,
    /// Most connections served at once; further connections wait in the listen backlog
    /// until one closes. Default 1024.
    pub max_connections: usize,
    /// On shutdown, how long open connections get to finish before they are closed, ms.
    /// Default 10000.
    pub shutdown_grace_ms: u64,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            sources: vec![
                SourceConfig {
                    name: "web".into(),
                    write_key: "demo-web-key".into(),
                    default_channel: "web".into(),
                },
                SourceConfig {
                    name: "call-center".into(),
                    write_key: "demo-crm-key".into(),
                    default_channel: "call_center".into(),
                },
            ],
            max_message_bytes: 32 * 1024,
            max_request_bytes: 500 * 1024,
            max_batch_messages: 2500,
            produce_timeout_ms: 5000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            retry_after_secs: 5,
            cors_origins: Vec::new(),
            route_aliases: BTreeMap::new(),
            trusted_proxy_header: None,
            trusted_proxies: Vec::new(),
            rate_limit_per_key: 0,
            rate_limit_per_ip: 0,
            rate_limit_ip_table_size: 100_000,
            allow_demo_keys: false,
            max_unauthenticated_bytes: 64 * 1024,
            event_time_floor: "2000-01-01".into(),
            max_event_age_days: 30,
            readiness_interval_ms: 2000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 1024,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// The write keys of the default config, known to everyone who read the README: a
/// collector refuses them unless `allow_demo_keys` is set.
pub const DEMO_WRITE_KEYS: [&str; 2] = ["demo-web-key", "demo-crm-key"];

impl CollectorConfig {
    /// `trusted_proxies` parsed (a bare address is a single-host network), or the
    /// message naming the entry that is not a CIDR or an address.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        format!("collector.trusted_proxies: {s:?} is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address")
                    })
            })
            .collect()
    }

    /// `event_time_floor` as epoch ms (a date is its midnight UTC), or the message
    /// saying it does not parse.
    pub fn event_time_floor_ms(&self) -> Result<i64, String> {
        use time::format_description::well_known::Rfc3339;
        let s = self.event_time_floor.trim();
        let bad = || {
            format!(
                "collector.event_time_floor {s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"
            )
        };
        let at = match time::OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => t,
            Err(_) => {
                let fmt = time::macros::format_description!("[year]-[month]-[day]");
                time::Date::parse(s, &fmt)
                    .map_err(|_| bad())?
                    .midnight()
                    .assume_utc()
            }
        };
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
    }

    /// The demo write keys among `sources`, if any.
    pub fn demo_keys_in_use(&self) -> Vec<&str> {
        self.sources
            .iter()
            .filter(|s| DEMO_WRITE_KEYS.contains(&s.write_key.as_str()))
            .map(|s| s.name.as_str())
            .collect()
    }

    /// The first thing wrong with the section, if anything (the message names the key
    /// and the source): source names must be non-empty without `:`, write keys
    /// non-empty and unique, default channels known,
    /// route aliases must map a path to a `/v1/` route.
    pub(super) fn problem(&self) -> Option<String> {
        let mut keys = std::collections::HashSet::new();
        for s in &self.sources {
            if s.name.trim().is_empty() || s.name.contains(':') {
                return Some(format!(
                    "collector.sources: source name {:?} must be non-empty and hold no ':' (it prefixes event ids)",
                    s.name
                ));
            }
            if s.write_key.trim().is_empty() {
                return Some(format!(
                    "collector.sources: source {:?} has an empty write_key",
                    s.name
                ));
            }
            if !keys.insert(&s.write_key) {
                return Some(format!(
                    "collector.sources: source {:?} reuses a write_key",
                    s.name
                ));
            }
            if s.default_channel.parse::<crate::Channel>().is_err() {
                return Some(format!(
                    "collector.sources: source {:?} has unknown default_channel {:?}",
                    s.name, s.default_channel
                ));
            }
        }
        for (alias, target) in &self.route_aliases {
            if !alias.starts_with('/') || !target.starts_with("/v1/") {
                return Some(format!(
                    "collector.route_aliases: {alias:?} = {target:?} must map a /path to a /v1/ route"
                ));
            }
        }
        if self.max_connections == 0 {
            return Some("collector.max_connections must be at least 1".into());
        }
        if let Err(e) = self.trusted_proxy_nets() {
            return Some(e);
        }
        if self.trusted_proxy_header.is_some() && self.trusted_proxies.is_empty() {
            return Some(
                "collector.trusted_proxy_header is set but collector.trusted_proxies is empty: \
                 list the CIDRs of your proxies (the header is read only from them)"
                    .into(),
            );
        }
        if self.rate_limit_ip_table_size == 0 {
            return Some("collector.rate_limit_ip_table_size must be at least 1".into());
        }
        if let Err(e) = self.event_time_floor_ms() {
            return Some(e);
        }
        for (key, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("readiness_interval_ms", self.readiness_interval_ms),
        ] {
            if ms == 0 {
                return Some(format!("collector.{key} must be at least 1 ms"));
            }
        }
        None
    }
}
