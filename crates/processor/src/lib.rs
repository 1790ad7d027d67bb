//! The processor: Touchstream's stream processor (docs/design.md §4–6).
//!
//! Two Kafka consumer-group stages run in every processor process (see
//! `schemas/README.md` for the topology):
//! 1. [`identity_stage`] reads `touchpoints.raw`, stitches identities and routes each
//!    event to `touchpoints.by_customer` keyed by customer id;
//! 2. [`journey_stage`] reads that topic and builds sessions, journeys and funnel attempts.
//!
//! The pure state machines live in `touchstream-journey`; this crate is the I/O around
//! them ([`runner`]): consuming, batching ([`batch`]), writing ClickHouse ([`store`], one
//! module per table in [`tables`]), snapshotting state ([`state_codec`]) and committing
//! offsets only after the rows are stored. Run N processes with the
//! same config and Kafka spreads the partitions over them; results are the same as with one.

pub mod backfill;
pub mod batch;
pub mod erase;
pub mod identity_stage;
pub mod journey_stage;
pub mod lag;
pub mod metrics;
pub mod routed_codec;
pub mod runner;
pub mod state_codec;
pub mod store;
pub use touchstream_clickhouse::suppression;
pub mod tables;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use touchstream_core::Config;
use touchstream_journey::{Catalog, FunnelSet, IdentityConfig, JourneyConfig, JourneyError};

use crate::metrics::Metrics;
use crate::runner::{run_stage, RunCtx};
use crate::store::Store;

/// Why the processor (or one stage run) failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// Catalog or funnel file invalid. Permanent.
    #[error(transparent)]
    Journey(#[from] JourneyError),
    /// `kafka.client_properties` sets a partitioner other than the one the identity stage
    /// computes for its packed records. Permanent.
    #[error("kafka.client_properties sets partitioner = {0:?}: the processor places the records of touchpoints.by_customer as librdkafka's default (consistent_random) would, so a customer's events would be split between partitions; remove the setting or set consistent_random")]
    Partitioner(String),
    /// Kafka client error. Retryable (the stage restarts).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Kafka client could not be created. Permanent.
    #[error(transparent)]
    KafkaSetup(#[from] touchstream_core::kafka::KafkaSetupError),
    /// Producing to an internal topic failed. Retryable.
    #[error("producing to an internal topic: {0}")]
    Produce(#[source] rdkafka::error::KafkaError),
    /// A partition's saved state could not be read or written. Permanent until fixed.
    #[error("processor state: {at} {source}")]
    State {
        /// `<group>/<stage>/<partition>`.
        at: String,
        /// What failed.
        #[source]
        source: StateError,
    },
    /// An input topic has no partitions (not created yet). At start the processor waits
    /// for it (retrying); afterwards permanent until fixed.
    #[error("topic {0} has no partitions; run `touchstream topics` first")]
    NoPartitions(String),
    /// Seeks back to a partition's saved position kept not taking; the position was
    /// committed instead. Retryable: the restarted stage starts there.
    #[error(
        "{stage} partition {partition}: {seeks} seeks back to {topic} offset {next} did not \
         take; committed offset {target}, restarting the stage"
    )]
    SeeksFailed {
        /// Stage name.
        stage: &'static str,
        /// Input partition.
        partition: i32,
        /// Input topic.
        topic: String,
        /// The saved position.
        next: i64,
        /// Seeks tried.
        seeks: u32,
        /// The offset committed instead.
        target: i64,
    },
    /// A ClickHouse query (not an insert, which retries) failed: `touchstream funnels
    /// backfill` reading the stored history.
    #[error("clickhouse query: {0}")]
    Query(#[from] clickhouse::error::Error),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Metrics listener failed.
    #[error("metrics server: {0}")]
    Io(#[from] std::io::Error),
    /// Shutdown was requested while waiting.
    #[error("shutting down")]
    ShuttingDown,
    /// A stage task panicked or was cancelled.
    #[error("stage task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An earlier cut's write failed or was dropped, so a later one must not save or
    /// commit anything. Retryable (the stage restarts).
    #[error("stage task: an earlier cut's write did not finish")]
    EarlierWrite(#[source] tokio::sync::oneshot::error::RecvError),
    /// ClickHouse refused a row for good where every row must land (a snapshot, a
    /// backfill's rows).
    #[error("clickhouse refused a row of {table} for good: {error}")]
    Refused {
        /// Table.
        table: String,
        /// The server's reason.
        error: String,
    },
    /// A stage run panicked (caught; the stage restarts from its snapshots).
    #[error("stage panicked: {0}")]
    Panicked(String),
    /// The stage's consumer has not completed joining its group for too long.
    /// Retryable: the stage restarts with a new consumer (as a dynamic member).
    #[error("consumer group join not completed for {0:?}")]
    GroupStalled(std::time::Duration),
}

/// What went wrong with a partition's saved state ([`ProcessorError::State`]).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The position (`processor_state.offsets`) did not serialize or parse.
    #[error("offsets: {0}")]
    Offsets(#[source] serde_json::Error),
    /// The snapshot did not encode or decode ([`state_codec`]).
    #[error("snapshot: {0}")]
    Snapshot(#[source] state_codec::CodecError),
    /// The snapshot's JSON is not a state of this stage.
    #[error("snapshot: {0}")]
    Restore(#[source] serde_json::Error),
}

/// Run both stages until `shutdown`; serve `/metrics` on `metrics_listener` if given.
pub async fn run(
    config: Config,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ProcessorError> {
    let pc = &config.processor;
    // The identity stage places packed records itself (routed_codec::partition_for).
    if let Some(p) = config.kafka.client_properties.get("partitioner") {
        if !matches!(p.as_str(), "consistent_random" | "consistent") {
            return Err(ProcessorError::Partitioner(p.clone()));
        }
    }
    let catalog = Catalog::load(&pc.catalog_path)?;
    let funnels = FunnelSet::load(&pc.funnels_path)?;
    let metrics = Metrics::new()?;
    metrics.set_thresholds(&catalog);
    let health = runner::Health::new(pc.unhealthy_after_failures);

    let server = match metrics_listener {
        Some(listener) => {
            let m = metrics.clone();
            let h = health.clone();
            let app = Router::new()
                .route("/metrics", get(move || async move { m.render() }))
                .route("/healthz", get(move || async move { healthz(&h) }));
            let token = shutdown.clone();
            tracing::info!(addr = %listener.local_addr()?, "processor metrics listening");
            Some(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await
            }))
        }
        None => None,
    };

    let ch = touchstream_clickhouse::client(&config.clickhouse);
    // Wait for ClickHouse and a database migrated to this binary's migrations, then load
    // the erased people's ids before any input is read, so not one of their events is
    // stored again (README, "Privacy").
    let suppression = Arc::new(suppression::Suppression::default());
    let clickhouse_ready = || async {
        let status = touchstream_clickhouse::status(&config.clickhouse)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(first) = status.pending.first() {
            return Err(format!(
                "the database lacks {} migration(s), first {first}: run `touchstream migrate`",
                status.pending.len()
            ));
        }
        suppression.load(&ch).await.map_err(|e| e.to_string())?;
        Ok(status.server)
    };
    let Some(clickhouse_version) = retry_at_start(
        "ClickHouse is not ready (down, or the database not migrated)",
        &health.stage("start"),
        &shutdown,
        || async { Ok::<_, ProcessorError>(clickhouse_ready().await) },
    )
    .await?
    else {
        return Ok(());
    };
    let dedup_tokens = clickhouse_version >= store::DEDUP_TOKEN_SINCE;
    tokio::spawn(Arc::clone(&suppression).refresh(
        ch.clone(),
        Duration::from_millis(pc.suppression_refresh_ms.max(100)),
        shutdown.clone(),
    ));
    let store = Store::new(ch.clone(), metrics.clone(), shutdown.clone(), dedup_tokens);
    let ctx = |stage: &'static str| -> Result<RunCtx, ProcessorError> {
        Ok(RunCtx {
            kafka: config.kafka.clone(),
            group_id: format!("{}-{stage}", pc.group_id),
            instance_id: (!pc.instance_id.is_empty())
                .then(|| format!("{}-{stage}", pc.instance_id)),
            producer: std::sync::Mutex::new(touchstream_core::kafka::acks::group_producer(
                &config.kafka,
                runner::PRODUCE_TIMEOUT_MS,
                runner::PRODUCER_LINGER_MS,
            )?),
            store: store.clone(),
            metrics: metrics.clone(),
            batch_max_rows: pc.batch_max_rows.max(1),
            batch_max: Duration::from_millis(pc.batch_max_ms.max(10)),
            snapshot_every: Duration::from_millis(pc.snapshot_interval_ms),
            compaction: runner::Compaction::from_config(pc),
            writes_in_flight: pc.writes_in_flight.max(1),
            restart_backoff: Duration::from_millis(pc.restart_backoff_ms),
            health: health.stage(stage),
            shutdown: shutdown.clone(),
        })
    };
    // Partition counts drive the in-band watermarks between the stages.
    let Some((source_partitions, routed_partitions)) =
        wait_for_partition_counts(&config.kafka, &health.stage("start"), &shutdown).await?
    else {
        return Ok(());
    };
    let idle_watermark =
        (pc.idle_watermark_secs > 0).then(|| Duration::from_secs(pc.idle_watermark_secs));
    let identity = identity_stage::Identity {
        raw_topic: config.kafka.raw_topic.clone(),
        aliases_topic: config.kafka.aliases_topic.clone(),
        routed_topic: config.kafka.routed_topic.clone(),
        dlq_topic: config.kafka.dlq_topic.clone(),
        config: IdentityConfig {
            max_unlinked_history_events: pc.unlinked_history_max_events,
            unlinked_history_ttl_secs: pc.unlinked_history_ttl_secs,
            max_unlinked_history_bytes: pc.unlinked_history_max_bytes,
            link_ttl_days: pc.identity_link_ttl_days,
        },
        links_from: Some(ch.clone()),
        link_sweep: Duration::from_secs(pc.identity_link_sweep_secs.max(1)),
        routed_partitions,
        idle_watermark,
        suppression: Arc::clone(&suppression),
        metrics: metrics.clone(),
    };
    let journey = journey_stage::Journey {
        routed_topic: config.kafka.routed_topic.clone(),
        dlq_topic: config.kafka.dlq_topic.clone(),
        config: JourneyConfig {
            session_gap_secs: pc.session_gap_secs,
            allowed_lateness_secs: pc.allowed_lateness_secs,
            reattribution_horizon_secs: Some(correction_horizon_secs(pc, &funnels)),
            external_watermark: true,
            feedback_window_secs: pc.feedback_window_secs,
            hot_customer_max_events: pc.hot_customer_max_events,
        },
        catalog,
        funnels,
        source_partitions,
        overdue_shares: pc.open_attempt_overdue_shares.clone(),
        open_counts: Arc::default(),
        suppression: Arc::clone(&suppression),
        metrics: metrics.clone(),
    };
    for (stage, topics) in [
        (
            "identity",
            vec![
                config.kafka.raw_topic.clone(),
                config.kafka.aliases_topic.clone(),
            ],
        ),
        ("journey", vec![config.kafka.routed_topic.clone()]),
    ] {
        tokio::spawn(lag::monitor(
            config.kafka.clone(),
            format!("{}-{stage}", pc.group_id),
            topics,
            stage,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(touchstream_core::memory::trim_periodically(
        Duration::from_millis(pc.release_memory_ms),
        shutdown.clone(),
    ));
    let s1 = tokio::spawn(run_stage(identity, ctx("identity")?));
    let s2 = tokio::spawn(run_stage(journey, ctx("journey")?));
    let (r1, r2) = tokio::join!(s1, s2);
    r1??;
    r2??;

    if let Some(s) = server {
        let _ = s.await;
    }
    tracing::info!("processor stopped");
    Ok(())
}

/// `/healthz`: `200 ok`, or `503` naming each stage that failed
/// `processor.unhealthy_after_failures` runs in a row and its last error.
fn healthz(health: &runner::Health) -> (axum::http::StatusCode, String) {
    let failing = health.failing();
    if failing.is_empty() {
        return (axum::http::StatusCode::OK, "ok".into());
    }
    let text = failing
        .iter()
        .map(|(stage, n, error)| format!("stage {stage} failed {n} runs in a row; last: {error}"))
        .collect::<Vec<_>>()
        .join("\n");
    (axum::http::StatusCode::SERVICE_UNAVAILABLE, text)
}

/// Retry `attempt` at start, with backoff from 200 ms doubling to 10 s, until it succeeds
/// (`Some`) or shutdown comes first (`None`, also while an attempt is in flight). An
/// attempt's inner error is worth waiting out: it is logged after `what` and counts in
/// `health`, so `/healthz` names the `start` stage once
/// `processor.unhealthy_after_failures` attempts failed in a row and a processor stuck at
/// start (ClickHouse or Kafka away, a database not migrated, topics not created) does
/// not look healthy; it waits instead of exiting (README "Guarantees", Start in any
/// order). Its outer error (a bug, such as a panicked read) ends the start.
async fn retry_at_start<T, E, F, Fut>(
    what: &str,
    health: &runner::StageHealth,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, ProcessorError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, E>, ProcessorError>>,
{
    let mut backoff = START_FIRST_BACKOFF;
    loop {
        let error = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            result = attempt() => match result? {
                Ok(value) => {
                    health.progressed();
                    return Ok(Some(value));
                }
                Err(e) => e.to_string(),
            },
        };
        let in_a_row = health.failed(&error);
        tracing::warn!(
            error = %error,
            failures_in_a_row = in_a_row,
            retry_in_ms = backoff.as_millis() as u64,
            "{what}; waiting"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// The pause after a start attempt's first failure (then doubling, at most 10 s).
const START_FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Partition counts of the raw and routed topics, asked of the broker again
/// ([`retry_at_start`]) while it is unreachable or the topics do not exist yet: a
/// processor started before Kafka, or before `touchstream topics`, waits for them as its
/// stages do after a broker outage, instead of exiting. `None` if shutdown came first. A
/// Kafka client that cannot be created (a bad property) fails at once, as does a read
/// that panicked.
async fn wait_for_partition_counts(
    kafka: &touchstream_core::config::KafkaConfig,
    health: &runner::StageHealth,
    shutdown: &CancellationToken,
) -> Result<Option<(i32, i32)>, ProcessorError> {
    let consumer: Arc<rdkafka::consumer::BaseConsumer> =
        Arc::new(touchstream_core::kafka::client_config(kafka).create()?);
    let topics = [kafka.raw_topic.clone(), kafka.routed_topic.clone()];
    let read = || {
        let (c, t, stop) = (Arc::clone(&consumer), topics.clone(), shutdown.clone());
        async move { Ok(tokio::task::spawn_blocking(move || partition_counts(&c, &t, &stop)).await?) }
    };
    retry_at_start(
        "reading the topics' partition counts failed (Kafka down, or the topics not created yet: `touchstream topics`)",
        health,
        shutdown,
        read,
    )
    .await
}

/// How long one metadata read at start may wait for the broker. Short because the read
/// blocks a thread that the exiting runtime waits for: SIGTERM during the start wait
/// ends the process at most about this long later (twice, were it inside the first of
/// the two reads). A live broker answers in milliseconds; a slower answer is retried.
const START_METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// Partition counts of the raw and routed topics (`topics`), from broker metadata. Stops
/// between the two reads once `stop` is cancelled (shutdown).
fn partition_counts(
    consumer: &rdkafka::consumer::BaseConsumer,
    [raw, routed]: &[String; 2],
    stop: &CancellationToken,
) -> Result<(i32, i32), ProcessorError> {
    let count = |topic: &str| -> Result<i32, ProcessorError> {
        if stop.is_cancelled() {
            return Err(ProcessorError::ShuttingDown);
        }
        let md = rdkafka::consumer::Consumer::fetch_metadata(
            consumer,
            Some(topic),
            START_METADATA_TIMEOUT,
        )?;
        let n = md.topics().first().map_or(0, |t| t.partitions().len());
        if n == 0 {
            return Err(ProcessorError::NoPartitions(topic.to_string()));
        }
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    };
    Ok((count(raw)?, count(routed)?))
}

/// Shared so tests can hold it.
pub type SharedMetrics = Arc<Metrics>;

/// The correction horizon the journey stage uses, seconds: `processor.correction_horizon_secs`,
/// or by default the longest funnel window plus the session gap, at least 7 days
/// (docs/design.md §4, Lateness).
pub fn correction_horizon_secs(
    pc: &touchstream_core::config::ProcessorConfig,
    funnels: &FunnelSet,
) -> u64 {
    const WEEK_SECS: u64 = 7 * 24 * 3600;
    if pc.correction_horizon_secs > 0 {
        return pc.correction_horizon_secs;
    }
    let window_secs = u64::try_from(funnels.max_window_ms() / 1000).unwrap_or(0);
    window_secs
        .saturating_add(pc.session_gap_secs)
        .max(WEEK_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn funnels(window_secs: u64) -> FunnelSet {
        FunnelSet::from_toml_str(
            &format!(
                "[[funnel]]\nname = \"f\"\nwindow_secs = {window_secs}\nsteps = [{{ event = \"A\" }}, {{ event = \"B\" }}]\n"
            ),
            None,
        )
        .expect("funnels")
    }

    #[test]
    fn healthz_names_a_stage_that_keeps_failing() {
        let health = runner::Health::new(2);
        health.stage("journey").failed("boom");
        assert_eq!(healthz(&health), (axum::http::StatusCode::OK, "ok".into()));
        health.stage("journey").failed("boom again");
        let (status, text) = healthz(&health);
        assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            text,
            "stage journey failed 2 runs in a row; last: boom again"
        );
    }

    #[tokio::test]
    async fn another_partitioner_is_refused_at_start() {
        let mut config = Config::default();
        config
            .kafka
            .client_properties
            .insert("partitioner".into(), "murmur2_random".into());
        let err = run(config, None, CancellationToken::new())
            .await
            .expect_err("refused");
        assert!(matches!(&err, ProcessorError::Partitioner(p) if p == "murmur2_random"));
        assert!(err.to_string().contains("consistent_random"), "{err}");
    }

    #[tokio::test]
    async fn a_start_wait_counts_failures_until_it_succeeds_and_ends_on_shutdown() {
        let health = runner::Health::new(1);
        let start = health.stage("start");
        let shutdown = CancellationToken::new();
        let mut tries = 0;
        let seen = std::sync::Mutex::new(Vec::new());
        let got = retry_at_start("test", &start, &shutdown, || {
            tries += 1;
            let n = tries;
            let (health, seen) = (&health, &seen);
            async move {
                seen.lock().expect("seen").push(healthz(health).0);
                Ok::<_, ProcessorError>(if n < 3 {
                    Err(format!("not yet {n}"))
                } else {
                    Ok(n)
                })
            }
        })
        .await
        .expect("no fatal error");
        assert_eq!(got, Some(3));
        // Healthy before the first failure, unhealthy after it, healthy once it succeeded.
        let unavailable = axum::http::StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            *seen.lock().expect("seen"),
            [axum::http::StatusCode::OK, unavailable, unavailable]
        );
        assert_eq!(healthz(&health).0, axum::http::StatusCode::OK);

        // A fatal error ends the wait at once.
        let fatal = retry_at_start("test", &start, &shutdown, || async {
            Err::<Result<(), String>, _>(ProcessorError::ShuttingDown)
        })
        .await;
        assert!(
            matches!(fatal, Err(ProcessorError::ShuttingDown)),
            "{fatal:?}"
        );

        // Shutdown ends it while an attempt is still in flight.
        shutdown.cancel();
        let stopped = retry_at_start("test", &start, &shutdown, || {
            std::future::pending::<Result<Result<(), String>, ProcessorError>>()
        })
        .await
        .expect("no fatal error");
        assert_eq!(stopped, None);
    }

    #[test]
    fn the_correction_horizon_defaults_to_window_plus_gap_at_least_a_week() {
        let week = 7 * 24 * 3600;
        let mut pc = touchstream_core::config::ProcessorConfig::default();
        assert_eq!(correction_horizon_secs(&pc, &funnels(3600)), week);
        assert_eq!(
            correction_horizon_secs(&pc, &funnels(week)),
            week + pc.session_gap_secs
        );
        pc.correction_horizon_secs = 600;
        assert_eq!(correction_horizon_secs(&pc, &funnels(week)), 600);
    }
}
