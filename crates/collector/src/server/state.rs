//! What every request of one collector shares: config, write keys, the sink, metrics and
//! the overload limits.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
use touchstream_core::config::CollectorConfig;
use touchstream_core::Config;

use super::client_addr::ClientAddr;
use super::ip_limit::IpLimiter;
use super::readiness::{Readiness, Running};
use crate::auth::Sources;
use crate::error::CollectorError;
use crate::metrics::Metrics;

/// The state behind every route of one collector.
pub(super) struct AppState<S> {
    pub(super) cfg: CollectorConfig,
    /// Topic of valid messages (Avro).
    pub(super) raw_topic: String,
    /// Topic of rejected messages (JSON).
    pub(super) dlq_topic: String,
    pub(super) sources: Sources,
    pub(super) sink: S,
    pub(super) metrics: Arc<Metrics>,
    /// Request bytes being handled, bounded by `max_in_flight_bytes`.
    pub(super) in_flight: Semaphore,
    /// Per-write-key request rate (`rate_limit_per_key`; `None` when 0).
    pub(super) limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Per-client-address request rate (`rate_limit_per_ip`; `None` when 0).
    pub(super) ip_limiter: Option<IpLimiter>,
    /// How a request's client address is found (`trusted_proxy_header`, `trusted_proxies`).
    pub(super) client_addr: ClientAddr,
    /// `event_time_floor`, epoch ms.
    pub(super) event_time_floor_ms: i64,
    /// The background broker check `/readyz` answers from.
    pub(super) readiness: Readiness,
    /// Set once shutdown begins: ingest and `/readyz` answer 503 from then on.
    pub(super) shutting_down: AtomicBool,
    /// Erased people's ids (`collector.suppression`; empty while it is `off`).
    pub(super) suppression: Arc<touchstream_clickhouse::suppression::Suppression>,
    /// The catalog's property schemas (`collector.catalog_path`); `None` when it is not
    /// set or no event has one.
    pub(super) catalog: Option<touchstream_journey::Catalog>,
}

impl<S> AppState<S> {
    pub(super) fn new(
        config: &Config,
        sink: S,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CollectorError> {
        let cfg = config.collector.clone();
        let catalog = match &cfg.catalog_path {
            Some(path) => Some(touchstream_journey::Catalog::load(path)?)
                .filter(touchstream_journey::Catalog::has_property_rules),
            None => None,
        };
        // Burst of twice the per-second rate.
        let limiter = NonZeroU32::new(cfg.rate_limit_per_key).map(|rate| {
            let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let permits = cfg.max_in_flight_bytes.min(Semaphore::MAX_PERMITS);
        Ok(Self {
            raw_topic: config.kafka.raw_topic.clone(),
            dlq_topic: config.kafka.dlq_topic.clone(),
            sources: Sources::new(&cfg.sources, &cfg.privacy_hash_key)?,
            sink,
            metrics,
            in_flight: Semaphore::new(permits),
            suppression: Arc::default(),
            limiter,
            ip_limiter: (cfg.rate_limit_per_ip > 0)
                .then(|| IpLimiter::new(cfg.rate_limit_per_ip, cfg.rate_limit_ip_table_size)),
            client_addr: ClientAddr::new(&cfg),
            // Validated when the config was loaded; a hand-built config that does not
            // parse gets the documented default floor, 2000-01-01.
            event_time_floor_ms: cfg.event_time_floor_ms().unwrap_or(946_684_800_000),
            readiness: Readiness::new(std::time::Duration::from_millis(
                cfg.readiness_interval_ms.max(1),
            )),
            shutting_down: AtomicBool::new(false),
            catalog,
            cfg,
        })
    }

    /// Refuse new ingest requests and report unready from now on.
    pub(super) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        tracing::info!("collector shutting down: draining requests");
    }
}

impl<S: crate::sink::Sink> AppState<S> {
    /// Start a broker check in the background unless one is running; never waits for it
    /// (`readiness`).
    pub(super) fn refresh_readiness(self: &Arc<Self>) {
        if self.readiness.checking.swap(true, Ordering::SeqCst) {
            return;
        }
        let st = self.clone();
        tokio::spawn(async move {
            let _running = Running(&st.readiness.checking);
            let ok = st.sink.ready().await;
            *st.readiness.last() = Some((ok, std::time::Instant::now()));
        });
    }

    /// Check every interval until `stop` is cancelled (runs beside the accept loop).
    pub(super) async fn keep_ready_fresh(
        self: Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            self.refresh_readiness();
            tokio::select! {
                _ = tokio::time::sleep(self.readiness.interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
