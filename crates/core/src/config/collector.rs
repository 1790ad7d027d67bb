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
    /// `x-forwarded-for`, first address used). Default none: the socket peer address.
    pub trusted_proxy_header: Option<String>,
    /// Requests per second allowed per write key (token bucket, burst = 2× rate); 0 means
    /// unlimited. Default 0.
    pub rate_limit_per_key: u32,
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
            rate_limit_per_key: 0,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 1024,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl CollectorConfig {
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
        for (key, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
        ] {
            if ms == 0 {
                return Some(format!("collector.{key} must be at least 1 ms"));
            }
        }
        None
    }
}
