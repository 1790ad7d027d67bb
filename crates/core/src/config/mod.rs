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
//!
//! Each section's struct, with its documented defaults, lives in the submodule named after
//! it (`kafka`, `clickhouse`, `collector`, `processor`) together with its own checks;
//! this module holds the whole [`Config`] and loading, and `env` applies the overrides.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod clickhouse;
mod collector;
mod env;
mod kafka;
mod processor;

pub use clickhouse::{masked_url, ClickHouseConfig, RETENTION_TABLES};
pub use collector::{
    CollectorConfig, IpMode, PiiMode, SourceConfig, SuppressionMode, UserAgentMode,
    DEMO_WRITE_KEYS, MIN_PRIVACY_HASH_KEY_BYTES,
};
pub use kafka::{is_secret_property, KafkaConfig};
pub use processor::ProcessorConfig;

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
            env::apply_override(&mut root, key, &env[key])?;
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

    /// The checks serde cannot express (ranges, unique write keys, known channels), each
    /// section's in its own module, in section order.
    fn validate(&self) -> Result<(), ConfigError> {
        let problem = self
            .kafka
            .problem()
            .or_else(|| self.clickhouse.problem())
            .or_else(|| self.collector.problem())
            .or_else(|| self.processor.problem());
        match problem {
            Some(message) => Err(ConfigError::Invalid {
                origin: None,
                message,
            }),
            None => Ok(()),
        }
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
        let text = include_str!("../../../../deploy/touchstream.example.toml");
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
        c.collector.privacy_hash_key = "hash-hunter2-0123456789".into();
        c.collector.sources[0].write_key = "wk-hunter2".into();
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("privacy_hash_key: \"***\""), "{shown}");
        assert!(
            shown.contains("touchstream"),
            "non-secret properties stay visible"
        );
    }

    #[test]
    fn client_properties_that_weaken_durability_are_refused() {
        for (key, value) in [
            ("acks", "1"),
            ("acks", "0"),
            ("request.required.acks", "1"),
            ("enable.idempotence", "false"),
            ("max.in.flight.requests.per.connection", "6"),
            ("max.in.flight", "100"),
            ("retries", "0"),
            ("message.send.max.retries", "0"),
        ] {
            let e = Config::from_toml_and_env(
                &format!("[kafka.client_properties]\n\"{key}\" = \"{value}\"\n"),
                None,
                &env(&[]),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(key) && e.contains("acks=all"),
                "{key}={value}: {e}"
            );
        }
        // The safe values, and unrelated properties, pass.
        Config::from_toml_and_env(
            "[kafka.client_properties]\nacks = \"all\"\n\"enable.idempotence\" = true\n\
             \"max.in.flight.requests.per.connection\" = 5\nretries = 10\n\"linger.ms\" = 5\n",
            None,
            &env(&[]),
        )
        .unwrap();
    }

    #[test]
    fn trusted_proxies_and_event_time_floor_parse() {
        let c = Config::from_toml_and_env(
            "[collector]\ntrusted_proxy_header = \"x-forwarded-for\"\n\
             trusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\", \"fd00::/8\"]\n\
             event_time_floor = \"2010-06-01\"\n",
            None,
            &env(&[]),
        )
        .unwrap();
        let nets = c.collector.trusted_proxy_nets().unwrap();
        assert_eq!(nets.len(), 3);
        assert!(nets[1].contains(&"192.168.1.7".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(
            c.collector.event_time_floor_ms().unwrap(),
            1_275_350_400_000
        );
        assert_eq!(
            CollectorConfig::default().event_time_floor_ms().unwrap(),
            946_684_800_000,
            "2000-01-01T00:00:00Z"
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
    fn privacy_options_parse_per_source() {
        let c = Config::from_toml_and_env(
            "[collector]\nprivacy_hash_key = \"0123456789abcdef\"\n\
             [[collector.sources]]\nname = \"web\"\nwrite_key = \"k\"\nip = \"truncate\"\n\
             user_agent = \"drop\"\npii_keys = [\"email\"]\npii = \"drop\"\n\
             [[collector.sources]]\nname = \"pos\"\nwrite_key = \"k2\"\nip = \"hash\"\n",
            None,
            &env(&[]),
        )
        .unwrap();
        let [web, pos] = &c.collector.sources[..] else {
            panic!("two sources")
        };
        assert_eq!(
            (web.ip, web.user_agent, web.pii),
            (IpMode::Truncate, UserAgentMode::Drop, PiiMode::Drop)
        );
        assert_eq!(web.pii_keys, vec!["email"]);
        assert_eq!(
            (pos.ip, pos.user_agent, pos.pii),
            (IpMode::Hash, UserAgentMode::Store, PiiMode::Hash)
        );
        assert!(pos.pii_keys.is_empty() && !pos.stores_everything());
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
                "[[collector.sources]]\nname = \"crm:eu\"\nwrite_key = \"k\"\n",
                vec![],
                "crm:eu",
            ),
            (
                "[collector.route_aliases]\n\"/t/b\" = \"/elsewhere\"\n",
                vec![],
                "route_aliases",
            ),
            (
                "[processor]\nopen_attempt_overdue_shares = [0.5, 1.5]\n",
                vec![],
                "1.5 is not in (0, 1]",
            ),
            (
                "",
                vec![("TOUCHSTREAM__PROCESSOR__OPEN_ATTEMPT_OVERDUE_SHARES", "[0]")],
                "open_attempt_overdue_shares",
            ),
            (
                "[collector]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
                vec![],
                "10.0.0.0/33",
            ),
            (
                "[collector]\ntrusted_proxy_header = \"x-forwarded-for\"\n",
                vec![],
                "trusted_proxies is empty",
            ),
            (
                "[collector]\nevent_time_floor = \"yesterday\"\n",
                vec![],
                "event_time_floor",
            ),
            (
                "[[collector.sources]]\nname = \"a\"\nwrite_key = \"k\"\nip = \"hash\"\n",
                vec![],
                "privacy_hash_key is empty",
            ),
            (
                "[[collector.sources]]\nname = \"a\"\nwrite_key = \"k\"\npii_keys = [\"email\"]\n",
                vec![],
                "privacy_hash_key is empty",
            ),
            (
                "[[collector.sources]]\nname = \"a\"\nwrite_key = \"k\"\nip = \"mask\"\n",
                vec![],
                "mask",
            ),
            (
                "[collector]\nprivacy_hash_key = \"short\"\n",
                vec![],
                "at least 16 bytes",
            ),
            (
                "[clickhouse.retention_days]\nidentities = 30\n",
                vec![],
                "\"identities\" is not a partitioned table",
            ),
            (
                "[clickhouse.retention_days]\nevents = 0\n",
                vec![],
                "events = 0",
            ),
            (
                "[clickhouse]\ncluster = \"two shards\"\n",
                vec![],
                "is not a cluster name",
            ),
        ] {
            let e = Config::from_toml_and_env(text, Some("f.toml".into()), &env(&envs))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        }
    }
}
