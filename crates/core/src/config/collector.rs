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
    /// What is kept of the client IP (the `ip` column and `context.ip`): `store`,
    /// `truncate` (IPv4 to its /24, IPv6 to its /48), `hash` (keyed HMAC-SHA256, hex; needs
    /// `collector.privacy_hash_key`) or `drop`. Applied before anything is written to
    /// Kafka, DLQ records included (README "Privacy"). Default `store`.
    #[serde(default)]
    pub ip: IpMode,
    /// What is kept of the user agent (the `user_agent` column and `context.userAgent`):
    /// `store` or `drop`. Default `store`.
    #[serde(default)]
    pub user_agent: UserAgentMode,
    /// Top-level keys of `properties`, `traits` and `context.traits` that hold personal
    /// data (e.g. `["email", "phone"]`), treated as `pii` says (exact, case-sensitive
    /// match). Default empty.
    #[serde(default)]
    pub pii_keys: Vec<String>,
    /// What happens to the values of `pii_keys`: `hash` (keyed HMAC-SHA256 of the string,
    /// or of the JSON text of a non-string value, hex; needs
    /// `collector.privacy_hash_key`) or `drop` (the key is removed). Default `hash`.
    #[serde(default)]
    pub pii: PiiMode,
}

/// What a source keeps of the client IP (`[[collector.sources]] ip`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpMode {
    /// Keep the address as received.
    #[default]
    Store,
    /// IPv4 to its /24 (`203.0.113.0`), IPv6 to its /48 (`2001:db8:1::`).
    Truncate,
    /// Keyed HMAC-SHA256 of the address text, hex.
    Hash,
    /// Keep nothing.
    Drop,
}

/// What a source keeps of the user agent (`[[collector.sources]] user_agent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserAgentMode {
    /// Keep it as received.
    #[default]
    Store,
    /// Keep nothing.
    Drop,
}

/// What happens to the values of a source's `pii_keys` (`[[collector.sources]] pii`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    /// Keyed HMAC-SHA256, hex: the same value hashes the same, so it still joins.
    #[default]
    Hash,
    /// The key is removed.
    Drop,
}

impl SourceConfig {
    /// A source with this name, key and default channel, storing everything (the
    /// privacy options at their defaults).
    pub fn new(name: &str, write_key: &str, default_channel: &str) -> Self {
        Self {
            name: name.into(),
            write_key: write_key.into(),
            default_channel: default_channel.into(),
            ip: IpMode::default(),
            user_agent: UserAgentMode::default(),
            pii_keys: Vec::new(),
            pii: PiiMode::default(),
        }
    }

    /// Whether the source keeps everything as received (no privacy option set): the
    /// collector then does no extra work for it.
    pub fn stores_everything(&self) -> bool {
        self.ip == IpMode::Store
            && self.user_agent == UserAgentMode::Store
            && self.pii_keys.is_empty()
    }

    /// Whether one of the source's options hashes (and so needs the hash key).
    pub fn needs_hash_key(&self) -> bool {
        self.ip == IpMode::Hash || (!self.pii_keys.is_empty() && self.pii == PiiMode::Hash)
    }
}

// Hand-written so the write key never reaches a log line.
impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("write_key", &"***")
            .field("default_channel", &self.default_channel)
            .field("ip", &self.ip)
            .field("user_agent", &self.user_agent)
            .field("pii_keys", &self.pii_keys)
            .field("pii", &self.pii)
            .finish()
    }
}

fn default_channel() -> String {
    "web".into()
}

/// HTTP collector.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
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
    /// Secret key of the HMAC-SHA256 that sources with `ip = "hash"` or `pii = "hash"` use
    /// (at least 16 bytes; the collector refuses to start without it when one does).
    /// Changing it changes every hash from then on. Secret: prefer
    /// `TOUCHSTREAM__COLLECTOR__PRIVACY_HASH_KEY_FILE`. Default empty.
    pub privacy_hash_key: String,
    /// What the collector does with a message naming an erased person (an id in
    /// ClickHouse `suppressed_ids`, written by `touchstream erase`): `off` (forward it;
    /// the processor drops it anyway), `reject` (refused with reason `suppressed`, listed
    /// in the response, not dead-lettered: that would store the person again) or `drop`
    /// (answered as accepted, written nowhere). The list is read from `[clickhouse]`.
    /// Default `off`.
    pub suppression: SuppressionMode,
    /// How often the collector reloads the list when `suppression` is on, ms. Default 5000.
    pub suppression_refresh_ms: u64,
    /// Touchpoint catalog whose per-event property schemas the collector checks
    /// (README "Feedback and stores"; violations: `invalid_property`). Default: the
    /// processor's `processor.catalog_path`, so both read one catalog.
    pub catalog_path: Option<std::path::PathBuf>,
}

/// `collector.suppression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionMode {
    /// Forward every message (the processor still never stores an erased person).
    #[default]
    Off,
    /// Refuse the message with reason `suppressed`.
    Reject,
    /// Answer as accepted and write nothing.
    Drop,
}

// Hand-written so the write keys and the hash key never reach a log line (`touchstream
// config` prints this).
impl std::fmt::Debug for CollectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            listen,
            sources,
            max_message_bytes,
            max_request_bytes,
            max_batch_messages,
            produce_timeout_ms,
            max_in_flight_bytes,
            retry_after_secs,
            cors_origins,
            route_aliases,
            trusted_proxy_header,
            trusted_proxies,
            rate_limit_per_key,
            rate_limit_per_ip,
            rate_limit_ip_table_size,
            allow_demo_keys,
            max_unauthenticated_bytes,
            event_time_floor,
            max_event_age_days,
            readiness_interval_ms,
            header_read_timeout_ms,
            body_read_timeout_ms,
            max_connections,
            shutdown_grace_ms,
            privacy_hash_key,
            suppression,
            suppression_refresh_ms,
            catalog_path,
        } = self;
        f.debug_struct("CollectorConfig")
            .field("listen", listen)
            .field("sources", sources)
            .field("max_message_bytes", max_message_bytes)
            .field("max_request_bytes", max_request_bytes)
            .field("max_batch_messages", max_batch_messages)
            .field("produce_timeout_ms", produce_timeout_ms)
            .field("max_in_flight_bytes", max_in_flight_bytes)
            .field("retry_after_secs", retry_after_secs)
            .field("cors_origins", cors_origins)
            .field("route_aliases", route_aliases)
            .field("trusted_proxy_header", trusted_proxy_header)
            .field("trusted_proxies", trusted_proxies)
            .field("rate_limit_per_key", rate_limit_per_key)
            .field("rate_limit_per_ip", rate_limit_per_ip)
            .field("rate_limit_ip_table_size", rate_limit_ip_table_size)
            .field("allow_demo_keys", allow_demo_keys)
            .field("max_unauthenticated_bytes", max_unauthenticated_bytes)
            .field("event_time_floor", event_time_floor)
            .field("max_event_age_days", max_event_age_days)
            .field("readiness_interval_ms", readiness_interval_ms)
            .field("header_read_timeout_ms", header_read_timeout_ms)
            .field("body_read_timeout_ms", body_read_timeout_ms)
            .field("max_connections", max_connections)
            .field("shutdown_grace_ms", shutdown_grace_ms)
            .field("suppression", suppression)
            .field("suppression_refresh_ms", suppression_refresh_ms)
            .field("catalog_path", catalog_path)
            .field(
                "privacy_hash_key",
                &if privacy_hash_key.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .finish()
    }
}

/// Fewest bytes of `privacy_hash_key`: a short key is guessable, and then so is every
/// hashed IP (there are only 2^32 IPv4 addresses).
pub const MIN_PRIVACY_HASH_KEY_BYTES: usize = 16;

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            sources: vec![
                SourceConfig::new("web", "demo-web-key", "web"),
                SourceConfig::new("call-center", "demo-crm-key", "call_center"),
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
            privacy_hash_key: String::new(),
            suppression: SuppressionMode::Off,
            suppression_refresh_ms: 5000,
            catalog_path: None,
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
            if s.needs_hash_key() && self.privacy_hash_key.is_empty() {
                return Some(format!(
                    "collector.sources: source {:?} hashes (ip or pii = \"hash\") but \
                     collector.privacy_hash_key is empty: set it (e.g. \
                     TOUCHSTREAM__COLLECTOR__PRIVACY_HASH_KEY_FILE) or choose another mode",
                    s.name
                ));
            }
            if let Some(k) = s.pii_keys.iter().find(|k| k.is_empty()) {
                return Some(format!(
                    "collector.sources: source {:?} lists an empty pii_keys entry {k:?}",
                    s.name
                ));
            }
        }
        if !self.privacy_hash_key.is_empty()
            && self.privacy_hash_key.len() < MIN_PRIVACY_HASH_KEY_BYTES
        {
            return Some(format!(
                "collector.privacy_hash_key must be at least {MIN_PRIVACY_HASH_KEY_BYTES} bytes"
            ));
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
