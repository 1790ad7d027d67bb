//! Kafka client settings and topic administration shared by collector and processor.
//!
//! All clients start from [`client_config`], so pass-through properties (TLS, SASL) set
//! once in config reach every producer, consumer and admin client. A client's own
//! settings (the producers' idempotence and acks, the consumers' fetch wait, a caller's
//! extras through [`consumer_config_with`]) are defaults under one rule: a key set in
//! `kafka.client_properties` wins.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;

pub mod acks;

/// What went wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// Client creation failed (bad property, unreachable library state).
    #[error("creating kafka client: {0}")]
    Client(#[source] KafkaError),
    /// The broker refused or timed out a topic creation.
    #[error("creating topic {topic}: {reason}")]
    CreateTopic {
        /// Topic name.
        topic: String,
        /// Broker's answer.
        reason: String,
    },
    /// The producer's polling thread could not be started.
    #[error("starting the kafka producer's polling thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Base client settings: brokers plus the configured pass-through properties.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    client_config_with(cfg, &[])
}

/// [`client_config`] over `defaults`: each default holds unless the configured
/// properties set the same key, so an operator can override any of them. The one rule
/// for every client's own settings (producers, consumers, and a caller's extras).
pub(crate) fn client_config_with(cfg: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.client_properties {
        c.set(k, v);
    }
    c
}

/// How long a fetch may wait at the broker for data (`fetch.wait.max.ms`) in
/// [`consumer_config`], ms: librdkafka's default is 500.
///
/// tansu (0.6) sleeps after gathering a fetch response — half of the remaining
/// `max_wait` while more than 250 ms remain, else all of it — even when the response
/// already holds data, so every fetch takes about `max_wait / 2` and a consumer gets at
/// most ~4 responses a second at the default (`touchstream bench`: raw consume 0.3M msg/s
/// at 500 ms, 1.2–1.5M at 25 ms; the processor +25 %). On Kafka it only bounds how long
/// an idle consumer's fetch is parked: 25 ms means ~40 empty fetches a second per
/// consumer when there is nothing to read. Set `fetch.wait.max.ms` in
/// `kafka.client_properties` to override.
pub const CONSUMER_FETCH_WAIT_MS: u32 = 25;

/// [`client_config`] for a consumer: adds `fetch.wait.max.ms` =
/// [`CONSUMER_FETCH_WAIT_MS`] unless the configured properties set it.
pub fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    consumer_config_with(cfg, &[])
}

/// [`consumer_config`] plus a caller's own consumer defaults (e.g. a smaller prefetch),
/// which the configured properties override like every default.
pub fn consumer_config_with(cfg: &KafkaConfig, extra: &[(&str, &str)]) -> ClientConfig {
    let fetch_wait = CONSUMER_FETCH_WAIT_MS.to_string();
    let mut defaults = vec![("fetch.wait.max.ms", fetch_wait.as_str())];
    defaults.extend_from_slice(extra);
    client_config_with(cfg, &defaults)
}

/// An idempotent, acks=all producer (docs/design.md §2: 200 only after a durable ack) with a
/// future per record, for tools and tests that produce a few records. The collector and
/// the processor use the same settings through [`acks::group_producer`], which counts a
/// group's acknowledgements instead.
///
/// `linger.ms` 0: a caller that answers someone once its records are acknowledged (the
/// collector answers a request only then) pays every millisecond spent filling a batch
/// on every request. A request's records still leave in one produce request (they are
/// enqueued together), and records that queue up while a produce request is in flight
/// are sent together after it. Measured with tansu: one sequential client's 100-message
/// request waited 3.4 ms for its acks at `linger.ms` 1 and 1.1 ms at 0; 8 keep-alive
/// clients in `touchstream bench` went from 204–224k to 246–261k ev/s (three
/// alternating pairs; 75k at 5 ms before that).
///
/// `message_timeout_ms` bounds how long librdkafka retries one message before failing it,
/// so callers learn of a dead broker in bounded time.
pub fn producer(
    cfg: &KafkaConfig,
    message_timeout_ms: u64,
) -> Result<FutureProducer, KafkaSetupError> {
    producer_with_linger(cfg, message_timeout_ms, 0)
}

/// [`producer`] with another `linger.ms` (the processor's, 5 ms, for tests that stand in
/// for it).
pub fn producer_with_linger(
    cfg: &KafkaConfig,
    message_timeout_ms: u64,
    linger_ms: u32,
) -> Result<FutureProducer, KafkaSetupError> {
    create_producer(cfg, message_timeout_ms, linger_ms, DefaultClientContext)
}

/// A producer of any kind (`FutureProducer`, or the counting
/// [`acks::GroupProducer`]'s) with [`producer_config`].
pub(crate) fn create_producer<C, P>(
    cfg: &KafkaConfig,
    message_timeout_ms: u64,
    linger_ms: u32,
    context: C,
) -> Result<P, KafkaSetupError>
where
    C: ClientContext,
    P: FromClientConfigAndContext<C>,
{
    producer_config(cfg, message_timeout_ms, linger_ms)
        .create_with_context(context)
        .map_err(KafkaSetupError::Client)
}

/// The settings of every producer: idempotent, acks=all, lz4, then the configured
/// properties, last so an operator can override any of them.
fn producer_config(cfg: &KafkaConfig, message_timeout_ms: u64, linger_ms: u32) -> ClientConfig {
    let linger_ms = linger_ms.to_string();
    let message_timeout_ms = message_timeout_ms.to_string();
    client_config_with(
        cfg,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", &linger_ms),
            ("message.timeout.ms", &message_timeout_ms),
            ("queue.buffering.max.kbytes", "262144"),
        ],
    )
}

/// One topic as `touchstream topics` left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    /// Topic name.
    pub name: String,
    /// Created now (else it existed).
    pub created: bool,
    /// Partitions it has.
    pub partitions: i32,
    /// Replicas of its partitions (the fewest, if they differ).
    pub replication: i32,
    /// Where it differs from the configuration (an existing topic is never changed).
    pub warnings: Vec<String>,
}

/// How an existing topic differs from what the configuration asks (`replication` is what
/// the cluster can give: the configured factor, at most the brokers).
pub fn topic_mismatches(
    name: &str,
    partitions: i32,
    replicas: i32,
    want_partitions: i32,
    want_replicas: i32,
) -> Vec<String> {
    let mut w = Vec::new();
    if partitions != want_partitions {
        w.push(format!(
            "{name} has {partitions} partitions, kafka.partitions is {want_partitions}: processor parallelism follows the topic; \
             add partitions with kafka-topics --alter (keys move partitions: do it with the processors stopped and drained)"
        ));
    }
    if replicas < want_replicas {
        w.push(format!(
            "{name} has {replicas} replica(s), kafka.replication_factor asks {want_replicas}: a broker loss can lose acknowledged events; \
             reassign replicas with kafka-reassign-partitions"
        ));
    }
    w
}

/// Create the pipeline's topics (and `extra` ones) where missing, with
/// `kafka.partitions`, `kafka.replication_factor` (at most the brokers the cluster has,
/// with a warning when fewer) and `kafka.min_insync_replicas`; check existing ones
/// against the same settings and warn on a mismatch (they are never changed).
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    extra: &[&str],
) -> Result<Vec<TopicStatus>, KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)
        .create()
        .map_err(KafkaSetupError::Client)?;
    let mut names: Vec<&str> = vec![
        cfg.raw_topic.as_str(),
        cfg.dlq_topic.as_str(),
        cfg.aliases_topic.as_str(),
        cfg.routed_topic.as_str(),
    ];
    names.extend_from_slice(extra);
    let brokers = {
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(KafkaSetupError::Client)?;
        i32::try_from(md.brokers().len()).unwrap_or(i32::MAX).max(1)
    };
    let replication = cfg.replication_factor.clamp(1, brokers);
    let min_insync = cfg.min_insync_replicas.clamp(1, replication).to_string();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(n, cfg.partitions, TopicReplication::Fixed(replication))
                .set("min.insync.replicas", &min_insync)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .map_err(KafkaSetupError::Client)?;
    let mut created = std::collections::BTreeSet::new();
    for r in results {
        match r {
            Ok(name) => {
                created.insert(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaSetupError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(KafkaSetupError::Client)?;
    let mut out = Vec::new();
    for name in names {
        let topic = md.topics().iter().find(|t| t.name() == name);
        let partitions = topic.map_or(0, |t| {
            i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)
        });
        let replicas = topic
            .and_then(|t| t.partitions().iter().map(|p| p.replicas().len()).min())
            .map_or(0, |r| i32::try_from(r).unwrap_or(i32::MAX));
        let mut warnings =
            topic_mismatches(name, partitions, replicas, cfg.partitions, replication);
        if replication < cfg.replication_factor && created.contains(name) {
            warnings.push(format!(
                "{name} created with {replication} replica(s): kafka.replication_factor is {} but the cluster has {brokers} broker(s) \
                 (fine for a local broker; not for production)",
                cfg.replication_factor
            ));
        }
        out.push(TopicStatus {
            name: name.to_string(),
            created: created.contains(name),
            partitions,
            replication: replicas,
            warnings,
        });
    }
    // The identity stage reads both co-partitioned: an alias must land in the partition
    // that owns its previousId (docs/design.md §4).
    let count = |n: &str| out.iter().find(|t| t.name == n).map(|t| t.partitions);
    if let (Some(raw), Some(aliases)) = (count(&cfg.raw_topic), count(&cfg.aliases_topic)) {
        if raw != aliases {
            if let Some(t) = out.iter_mut().find(|t| t.name == cfg.aliases_topic) {
                t.warnings.push(format!(
                    "{} has {aliases} partitions and {} has {raw}: they must match (the identity stage reads them co-partitioned)",
                    cfg.aliases_topic, cfg.raw_topic
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(props: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            client_properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..KafkaConfig::default()
        }
    }

    /// The bundled librdkafka is built with OpenSSL (rdkafka's `ssl-vendored`): without
    /// it, creating any client with these properties fails ("OpenSSL not available at
    /// build time"), so TLS and SCRAM settings in config would be useless.
    #[test]
    fn tls_and_sasl_scram_clients_can_be_created() {
        for props in [
            vec![("security.protocol", "ssl")],
            vec![
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.username", "touchstream"),
                ("sasl.password", "secret"),
                ("ssl.endpoint.identification.algorithm", "https"),
            ],
            vec![
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanisms", "PLAIN"),
                ("sasl.username", "touchstream"),
                ("sasl.password", "secret"),
            ],
        ] {
            let cfg = with(&props);
            drop(producer(&cfg, 1000).unwrap_or_else(|e| panic!("{props:?}: {e}")));
            let consumer: Result<rdkafka::consumer::BaseConsumer, _> =
                client_config(&cfg).set("group.id", "tls-test").create();
            consumer.unwrap_or_else(|e| panic!("{props:?}: {e}"));
        }
    }

    #[test]
    fn configured_properties_override_every_default() {
        let cfg = with(&[("fetch.wait.max.ms", "7"), ("linger.ms", "9")]);
        let consumer = consumer_config_with(&cfg, &[("queued.max.messages.kbytes", "16384")]);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(consumer.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        let defaults = consumer_config(&KafkaConfig::default());
        assert_eq!(
            defaults.get("fetch.wait.max.ms"),
            Some(CONSUMER_FETCH_WAIT_MS.to_string().as_str())
        );
        let producer = producer_config(&cfg, 1000, 0);
        assert_eq!(producer.get("linger.ms"), Some("9"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("message.timeout.ms"), Some("1000"));
    }

    #[test]
    fn unknown_properties_are_refused_at_creation() {
        let err = producer(&with(&[("no.such.property", "1")]), 1000)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("no.such.property"), "{err}");
    }
}
