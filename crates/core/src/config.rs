//! One configuration file per deployment, with environment overrides.
//!
//! Every component reads the same TOML file (`deploy/touchstream.example.toml` documents
//! every key and its default) so a deployment has one place to look. Any key can be
//! overridden by an environment variable `TOUCHSTREAM__<SECTION>__<KEY>` (double
//! underscores separate path segments, names are case-insensitive), and a secret can be
//! read from a file with `TOUCHSTREAM__<SECTION>__<KEY>_FILE=/path`. The loader is handed
//! the environment as a map so tests can exercise it without touching the process env.
//!
//! An override value is read as a TOML value when it parses as one (`3`, `true`,
//! `["a","b"]`, `"quoted"`), otherwise as a plain string; quote a string that looks like a
//! number (`'"123"'`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "TOUCHSTREAM__";

/// Why configuration could not be loaded. Always permanent: fix the file or the env.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the expected keys and types.
    #[error("invalid config{}: {message}", .origin.as_deref().map(|o| format!(" in {o}")).unwrap_or_default())]
    Invalid {
        /// File or env var the problem came from, when known.
        origin: Option<String>,
        /// What is wrong (names the key).
        message: String,
    },
}

/// The whole deployment configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// HTTP collector.
    pub collector: CollectorConfig,
    /// Stream processor.
    pub processor: ProcessorConfig,
}

/// Kafka connection and topic layout.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated. Default `127.0.0.1:9092` (the local tansu broker).
    pub brokers: String,
    /// Topic of accepted touchpoints (Avro). Default `touchpoints.raw`.
    pub raw_topic: String,
    /// Dead-letter topic (JSON). Default `touchpoints.dlq`.
    pub dlq_topic: String,
    /// Internal topic: aliases without `anonymousId`, re-keyed by `previousId` so the
    /// identity stage that owns that id decides the link. Default `touchpoints.aliases`.
    pub aliases_topic: String,
    /// Internal topic: events routed by customer id, from the identity stage to the
    /// journey stage (JSON, see schemas/README.md). Default `touchpoints.by_customer`.
    pub routed_topic: String,
    /// Partitions created for each topic by `touchstream topics`. Default 6: the unit of
    /// processor parallelism, so more than the processors you expect to run.
    pub partitions: i32,
    /// Replication factor for created topics. Default 1 (single local broker).
    pub replication_factor: i32,
    /// Extra librdkafka properties passed through verbatim to every client, e.g.
    /// `security.protocol = "SASL_SSL"`, `sasl.mechanism`, `sasl.username`,
    /// `sasl.password` (set it through the env, never in the file), `ssl.ca.location`.
    /// Default empty. Numbers and booleans are taken as their text (`linger.ms = 5`, or
    /// `TOUCHSTREAM__KAFKA__CLIENT_PROPERTIES__linger.ms=5`), since librdkafka reads text.
    #[serde(deserialize_with = "properties_as_text")]
    pub client_properties: BTreeMap<String, String>,
}

/// `client_properties` values: strings as they are, numbers and booleans as their text.
fn properties_as_text<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Str(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let raw = BTreeMap::<String, Text>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Text::Str(s) => s,
                Text::Int(i) => i.to_string(),
                Text::Float(f) => f.to_string(),
                Text::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            raw_topic: "touchpoints.raw".into(),
            dlq_topic: "touchpoints.dlq".into(),
            aliases_topic: "touchpoints.aliases".into(),
            routed_topic: "touchpoints.by_customer".into(),
            partitions: 6,
            replication_factor: 1,
            client_properties: BTreeMap::new(),
        }
    }
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, ...): never printed.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".pem") || k.contains("token")
}

// Hand-written so secrets among the pass-through properties never reach a log line
// (`touchstream config` prints this).
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .client_properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("raw_topic", &self.raw_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("aliases_topic", &self.aliases_topic)
            .field("routed_topic", &self.routed_topic)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("client_properties", &props)
            .finish()
    }
}

/// ClickHouse connection.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP(S) endpoint. Default `http://127.0.0.1:8123`. Use `https://` for TLS.
    pub url: String,
    /// Database holding Touchstream's tables; created by `touchstream migrate`.
    /// Default `touchstream`.
    pub database: String,
    /// User. Default `default`.
    pub user: String,
    /// Password. Default empty. Prefer `TOUCHSTREAM__CLICKHOUSE__PASSWORD_FILE`.
    pub password: String,
}

// Hand-written so the password never reaches a log line.
impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .finish()
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "touchstream".into(),
            user: "default".into(),
            password: String::new(),
        }
    }
}

/// One write key and the source it names.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Source name stored with every event (e.g. `web`, `ios`, `store-tablets`).
    pub name: String,
    /// Write key clients send (HTTP Basic username or `writeKey`). Secret.
    pub write_key: String,
    /// Channel for messages that do not name one (`context.channel` / `channel`).
    /// Default `web`.
    #[serde(default = "default_channel")]
    pub default_channel: String,
}

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
        }
    }
}

/// Stream processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Kafka consumer group. Default `touchstream-processor`.
    pub group_id: String,
    /// Metrics listen address. Default `127.0.0.1:9464`.
    pub metrics_listen: String,
    /// Inactivity gap that starts a new session, seconds. Default 1800 (30 min).
    pub session_gap_secs: u64,
    /// How far behind the partition watermark an event may arrive and still be placed in
    /// order, seconds. Default 300 (5 min).
    pub allowed_lateness_secs: u64,
    /// Flush a ClickHouse batch at this many input messages (about as many rows per
    /// table). Default 50000: only a backlog fills it (at 5k ev/s `batch_max_ms` cuts
    /// first), and every insert makes a ClickHouse part that merges rewrite later; 50k
    /// instead of 10k cut ClickHouse's CPU during a 1M-event catch-up by about 35 %.
    pub batch_max_rows: usize,
    /// Flush a ClickHouse batch at least this often, ms. Default 300: a row is written
    /// within about twice this after its event reaches Kafka.
    pub batch_max_ms: u64,
    /// Save partition state snapshots and commit offsets at most this often, ms (flushes
    /// in between write rows only). Larger: less work per event; a crash replays up to
    /// this much input (rows are deduplicated, so results do not change). Default 5000.
    /// The pause after a snapshot is also at least 10× what encoding it took, so large
    /// states (a million customers: 0.3–2 s per snapshot) cost at most ~10 % of a stage.
    pub snapshot_interval_ms: u64,
    /// Cut batches a stage may be writing at once (rows to ClickHouse, records to
    /// Kafka) while it processes the next input. More overlap the inserts' round trips;
    /// each holds one batch in memory. A cut that saves snapshots and commits offsets
    /// does so only after every earlier write finished, so offsets never pass unstored
    /// rows. Default
    /// 4; 1 writes one batch at a time.
    pub writes_in_flight: usize,
    /// Funnel definitions file. Default `deploy/funnels.toml`.
    pub funnels_path: PathBuf,
    /// Touchpoint catalog file (event → stage, channel). Default `deploy/catalog.toml`.
    pub catalog_path: PathBuf,
    /// After this many seconds without input, a journey partition's watermark moves to
    /// the wall clock so open funnel attempts still close as dropped. 0 turns it off
    /// (replays of old data). Default 30.
    pub idle_watermark_secs: u64,
    /// Pause before a stage that failed (e.g. Kafka produce errors) restarts from its last
    /// saved state, ms. Default 1000.
    pub restart_backoff_ms: u64,
    /// Stable name of this processor replica (e.g. the pod name of a StatefulSet), used
    /// as Kafka static group membership (`group.instance.id`, suffixed per stage): a
    /// replica that crashes and restarts under the same name gets its partitions back
    /// without the group waiting for the dead member's session to expire. Every running
    /// replica needs its own name. Default empty: dynamic membership.
    pub instance_id: String,
    /// Give free pages of the C heap (librdkafka's message buffers) back to the OS this
    /// often, ms; without it the buffers of a burst or a backlog stay resident (see
    /// `touchstream_core::memory`). 0 turns it off. Default 5000.
    pub release_memory_ms: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            group_id: "touchstream-processor".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            session_gap_secs: 1800,
            allowed_lateness_secs: 300,
            batch_max_rows: 50_000,
            batch_max_ms: 300,
            snapshot_interval_ms: 5000,
            writes_in_flight: 4,
            funnels_path: PathBuf::from("deploy/funnels.toml"),
            catalog_path: PathBuf::from("deploy/catalog.toml"),
            idle_watermark_secs: 30,
            restart_backoff_ms: 1000,
            instance_id: String::new(),
            release_memory_ms: 5000,
        }
    }
}

impl Config {
    /// Load from an optional TOML file, then apply `TOUCHSTREAM__*` overrides from `env`.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
                Some(p.display().to_string()),
            ),
            None => (String::new(), None),
        };
        Self::from_toml_and_env(&text, origin, env)
    }

    /// Parse TOML text and apply env overrides; `origin` names the text in errors.
    pub fn from_toml_and_env(
        text: &str,
        origin: Option<String>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut root: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let mut keys: Vec<&String> = env.keys().filter(|k| k.starts_with(ENV_PREFIX)).collect();
        keys.sort();
        for key in keys {
            apply_override(&mut root, key, &env[key])?;
        }
        let cfg: Config = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin: origin.or_else(|| Some("environment overrides".into())),
                message: e.to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| {
            Err(ConfigError::Invalid {
                origin: None,
                message,
            })
        };
        if self.kafka.partitions < 1 {
            return bad("kafka.partitions must be at least 1".into());
        }
        let mut keys = std::collections::HashSet::new();
        for s in &self.collector.sources {
            if s.write_key.trim().is_empty() {
                return bad(format!(
                    "collector.sources: source {:?} has an empty write_key",
                    s.name
                ));
            }
            if !keys.insert(&s.write_key) {
                return bad(format!(
                    "collector.sources: source {:?} reuses a write_key",
                    s.name
                ));
            }
            if s.default_channel.parse::<crate::Channel>().is_err() {
                return bad(format!(
                    "collector.sources: source {:?} has unknown default_channel {:?}",
                    s.name, s.default_channel
                ));
            }
        }
        for (alias, target) in &self.collector.route_aliases {
            if !alias.starts_with('/') || !target.starts_with("/v1/") {
                return bad(format!(
                    "collector.route_aliases: {alias:?} = {target:?} must map a /path to a /v1/ route"
                ));
            }
        }
        Ok(())
    }
}

fn apply_override(root: &mut toml::Table, key: &str, raw: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Invalid {
        origin: Some(key.to_string()),
        message,
    };
    let rest = &key[ENV_PREFIX.len()..];
    let mut path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(err("empty path segment".into()));
    }
    let value = match path.last().and_then(|l| l.strip_suffix("_file")) {
        Some(stripped) => {
            let stripped = stripped.to_string();
            let contents = std::fs::read_to_string(raw)
                .map_err(|e| err(format!("reading secret file {raw}: {e}")))?;
            if let Some(last) = path.last_mut() {
                *last = stripped;
            }
            toml::Value::String(contents.trim_end_matches(['\n', '\r']).to_string())
        }
        None => parse_scalar(raw),
    };
    let (last, parents) = path.split_last().ok_or_else(|| err("empty key".into()))?;
    let mut table = root;
    for seg in parents {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| err(format!("{seg} is not a table")))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

fn parse_scalar(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::from_toml_and_env("", None, &env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.collector.max_message_bytes, 32768);
        assert_eq!(c.processor.session_gap_secs, 1800);
    }

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let text = include_str!("../../../deploy/touchstream.example.toml");
        let c = Config::from_toml_and_env(text, None, &env(&[])).unwrap();
        assert_eq!(
            c,
            Config::default(),
            "the example must document the defaults"
        );
    }

    #[test]
    fn env_overrides_file_and_types() {
        let c = Config::from_toml_and_env(
            "[kafka]\nbrokers = \"a:1\"\n",
            None,
            &env(&[
                ("TOUCHSTREAM__KAFKA__BROKERS", "b:2"),
                ("TOUCHSTREAM__KAFKA__PARTITIONS", "12"),
                (
                    "TOUCHSTREAM__COLLECTOR__CORS_ORIGINS",
                    r#"["https://shop.example"]"#,
                ),
                ("TOUCHSTREAM__CLICKHOUSE__PASSWORD", r#""123""#),
                (
                    "TOUCHSTREAM__KAFKA__CLIENT_PROPERTIES__security.protocol",
                    "SASL_SSL",
                ),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "b:2");
        assert_eq!(c.kafka.partitions, 12);
        assert_eq!(c.collector.cors_origins, vec!["https://shop.example"]);
        assert_eq!(c.clickhouse.password, "123");
        assert_eq!(c.kafka.client_properties["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn client_properties_take_numbers_and_booleans_as_text() {
        let c = Config::from_toml_and_env(
            "[kafka.client_properties]\n\"linger.ms\" = 5\n",
            None,
            &env(&[
                (
                    "TOUCHSTREAM__KAFKA__CLIENT_PROPERTIES__fetch.wait.max.ms",
                    "5",
                ),
                (
                    "TOUCHSTREAM__KAFKA__CLIENT_PROPERTIES__enable.idempotence",
                    "true",
                ),
                (
                    "TOUCHSTREAM__KAFKA__CLIENT_PROPERTIES__compression.level",
                    "-1",
                ),
                (
                    "TOUCHSTREAM__KAFKA__CLIENT_PROPERTIES__client.id",
                    r#""42""#,
                ),
            ]),
        )
        .unwrap();
        let p = &c.kafka.client_properties;
        assert_eq!(p["fetch.wait.max.ms"], "5");
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["compression.level"], "-1");
        assert_eq!(p["client.id"], "42");
        assert_eq!(p["linger.ms"], "5", "from the file");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut c = Config::default();
        c.clickhouse.password = "ch-hunter2".into();
        for (k, v) in [
            ("sasl.password", "kafka-hunter2"),
            ("ssl.key.password", "key-hunter2"),
            ("sasl.oauthbearer.client.secret", "oauth-hunter2"),
            ("sasl.username", "touchstream"),
        ] {
            c.kafka.client_properties.insert(k.into(), v.into());
        }
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("touchstream"),
            "non-secret properties stay visible"
        );
    }

    #[test]
    fn secret_from_file() {
        let dir = std::env::temp_dir().join(format!("ts-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = Config::from_toml_and_env(
            "",
            None,
            &env(&[(
                "TOUCHSTREAM__CLICKHOUSE__PASSWORD_FILE",
                f.to_str().unwrap(),
            )]),
        )
        .unwrap();
        assert_eq!(c.clickhouse.password, "s3cret");
        assert!(!format!("{:?}", c.clickhouse).contains("s3cret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_fixtures_name_the_problem() {
        for (text, envs, needle) in [
            ("[kafka]\nbrokerz = \"x\"\n", vec![], "brokerz"),
            ("[kafka]\npartitions = \"many\"\n", vec![], "partitions"),
            ("[kafka]\npartitions = 0\n", vec![], "partitions"),
            ("not toml [", vec![], "invalid config"),
            ("", vec![("TOUCHSTREAM__NOPE__X", "1")], "nope"),
            (
                "[[collector.sources]]\nname = \"a\"\nwrite_key = \"k\"\ndefault_channel = \"fax\"\n",
                vec![],
                "fax",
            ),
            (
                "[collector.route_aliases]\n\"/t/b\" = \"/elsewhere\"\n",
                vec![],
                "route_aliases",
            ),
        ] {
            let e = Config::from_toml_and_env(text, Some("f.toml".into()), &env(&envs))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        }
    }
}
