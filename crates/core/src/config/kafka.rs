//! The `[kafka]` section: where the brokers are, the topic layout, and the librdkafka
//! properties passed through to every client (TLS, SASL). Secrets among those properties
//! are hidden from `Debug`, which `touchstream config` prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Replication factor for created topics. Default 3, the production shape (a topic
    /// survives one broker down while `min_insync_replicas` still accept writes). On a
    /// cluster with fewer brokers (a local single broker) `touchstream topics` creates
    /// them with as many replicas as there are brokers and says so.
    pub replication_factor: i32,
    /// `min.insync.replicas` of created topics: with the producers' `acks=all`, a write
    /// succeeds only once this many replicas have it. Default 2 (at most the replicas a
    /// topic gets).
    pub min_insync_replicas: i32,
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
            replication_factor: 3,
            min_insync_replicas: 2,
            client_properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// What is wrong with the section, if anything (the message names the key).
    pub(super) fn problem(&self) -> Option<String> {
        if self.partitions < 1 {
            return Some("kafka.partitions must be at least 1".into());
        }
        self.client_properties
            .iter()
            .find_map(|(k, v)| weakens_durability(k, v))
    }
}

/// Why a `client_properties` entry would weaken the producers' durability, if it does.
///
/// Every producer is idempotent with `acks=all` (README "200 means durable"): a 200
/// means the broker's in-sync replicas hold the records, and retries cannot duplicate or
/// reorder them. The properties that would quietly undo that are refused at start
/// instead: `acks` (and its alias `request.required.acks`) other than `all`/`-1`,
/// `enable.idempotence` other than `true`, more than 5 requests in flight per connection
/// (idempotence allows at most 5), and no retries.
fn weakens_durability(key: &str, value: &str) -> Option<String> {
    let v = value.trim();
    let refuse = |why: &str| {
        Some(format!(
            "kafka.client_properties: {key} = {v:?} would weaken the producer's acks=all / idempotence ({why}); remove it"
        ))
    };
    match key.trim() {
        "acks" | "request.required.acks" if !(v.eq_ignore_ascii_case("all") || v == "-1") => {
            refuse("a 200 must mean every in-sync replica has the records")
        }
        "enable.idempotence" if !v.eq_ignore_ascii_case("true") => {
            refuse("retries must not duplicate or reorder records")
        }
        "max.in.flight.requests.per.connection" | "max.in.flight"
            if v.parse::<u32>().map_or(true, |n| n > 5) =>
        {
            refuse("an idempotent producer allows at most 5 requests in flight")
        }
        "retries" | "message.send.max.retries" if v.parse::<u64>().map_or(true, |n| n == 0) => {
            refuse("a transient broker error must be retried, not turned into a 503")
        }
        _ => None,
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
