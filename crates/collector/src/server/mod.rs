//! The collector's HTTP service: a [`Collector`] over a [`Sink`], served until shutdown.
//!
//! - `endpoint`: the Segment endpoints and their paths;
//! - `routes`: the router (ingest routes and aliases, `/healthz`, `/readyz`, `/metrics`,
//!   CORS);
//! - `ingest`: the ingest pipeline as named steps, admit → authenticate → read body →
//!   parse → validate and encode → publish → answer;
//! - `envelope`: a body split into raw messages under the limits;
//! - `dlq`: the DLQ record of a rejected message;
//! - `state`: what every request shares.
//!
//! [`run`] is the service `touchstream collector` runs: a [`Collector`] over a
//! [`KafkaSink`]. Tests and embedders build one over a [`MemorySink`](crate::sink::MemorySink).

use std::sync::Arc;

use std::time::Duration;

use touchstream_core::config::SuppressionMode;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use touchstream_core::Config;
use tower::ServiceExt;

mod client_addr;
mod dlq;
mod endpoint;
mod envelope;
mod ingest;
mod ip_limit;
mod readiness;
mod routes;
mod state;
#[cfg(test)]
mod tests;

pub use crate::error::CollectorError;
pub use endpoint::{Endpoint, ROUTES};
#[doc(hidden)]
pub use envelope::split;

use crate::metrics::Metrics;
use crate::sink::{KafkaSink, Sink};
use state::AppState;

/// Serve the collector on `listener` until `shutdown` is cancelled, then drain in-flight
/// requests and flush the producer.
pub async fn run(
    mut config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), CollectorError> {
    // One catalog for collector and processor unless configured apart.
    if config.collector.catalog_path.is_none() {
        config.collector.catalog_path = Some(config.processor.catalog_path.clone());
    }
    let metrics = Arc::new(Metrics::new()?);
    let sink = KafkaSink::new(
        &config.kafka,
        config.collector.produce_timeout_ms,
        metrics.clone(),
    )?;
    let collector = Collector::new(&config, sink, metrics)?;
    if config.collector.suppression != SuppressionMode::Off {
        // README, "Privacy": the erased people's ids, read from ClickHouse and refreshed.
        let ch = touchstream_clickhouse::client(&config.clickhouse);
        let list = collector.state.suppression.clone();
        if let Err(e) = list.load(&ch).await {
            tracing::error!(error = %e, "reading suppressed ids failed; retrying in the background (the processor still drops their events)");
        }
        tokio::spawn(list.refresh(
            ch,
            Duration::from_millis(config.collector.suppression_refresh_ms.max(100)),
            shutdown.clone(),
        ));
    }
    collector.serve(listener, shutdown).await
}

/// One collector: its routes over a sink, and its shutdown switch.
pub struct Collector<S> {
    state: Arc<AppState<S>>,
    router: Router,
}

impl<S: Sink> Collector<S> {
    /// A collector with the `collector` config of `config`, publishing valid messages to
    /// `kafka.raw_topic` and rejected ones to `kafka.dlq_topic` through `sink`; requests
    /// are counted in `metrics` (served at `/metrics`).
    ///
    /// Refuses the demo write keys unless `collector.allow_demo_keys` is set, and a
    /// source that hashes (README "Privacy") without `collector.privacy_hash_key`.
    pub fn new(config: &Config, sink: S, metrics: Arc<Metrics>) -> Result<Self, CollectorError> {
        let demo = config.collector.demo_keys_in_use();
        if !demo.is_empty() && !config.collector.allow_demo_keys {
            return Err(CollectorError::DemoKeys(demo.join(", ")));
        }
        let state = Arc::new(AppState::new(config, sink, metrics)?);
        let router = routes::router(state.clone())?;
        Ok(Self { state, router })
    }

    /// The routes. Ingest handlers read the client address from `ConnectInfo<SocketAddr>`:
    /// serve with `into_make_service_with_connect_info::<SocketAddr>()` (or, in tests,
    /// add `axum::extract::connect_info::MockConnectInfo`).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Begin shutdown: from now on ingest answers 503 (retryable) and `/readyz` 503.
    pub fn shut_down(&self) {
        self.state.begin_shutdown();
    }

    /// Serve on `listener` until `shutdown` is cancelled, then drain in-flight requests
    /// and flush the sink.
    ///
    /// Hostile or broken clients cannot hold the collector (README "Slow clients"): headers
    /// must arrive within `header_read_timeout_ms` (also the idle limit of a kept-alive
    /// connection), bodies within `body_read_timeout_ms` (408), at most `max_connections`
    /// are served at once (the rest wait in the listen backlog), and on shutdown open
    /// connections get `shutdown_grace_ms` to finish before they are closed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), CollectorError> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, sources = self.state.cfg.sources.len(), "collector listening");
        let cfg = &self.state.cfg;
        let max_connections = cfg.max_connections.max(1);
        let slots = Arc::new(Semaphore::new(max_connections));
        // HTTP/1 only: the version sniffing of a dual-protocol server waits for bytes
        // with no deadline, which a silent client could hold forever.
        let mut http = auto::Builder::new(TokioExecutor::new()).http1_only();
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms));
        let grace = Duration::from_millis(cfg.shutdown_grace_ms);
        // Cancelled when the grace period is over: connections still open are dropped.
        let hard_stop = CancellationToken::new();
        // `/readyz` answers from this background check (README "Collector API").
        let checks = CancellationToken::new();
        tokio::spawn(self.state.clone().keep_ready_fresh(checks.clone()));
        loop {
            // A free slot first, then accept: beyond the cap, connections wait unaccepted.
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = shutdown.cancelled() => break,
            };
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        // e.g. EMFILE: wait a moment instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let app = self
                .router()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req
                });
            let http = http.clone();
            let shutdown = shutdown.clone();
            let hard_stop = hard_stop.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let conn = http.serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    TowerToHyperService::new(app),
                );
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
                }
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = hard_stop.cancelled() => {
                        tracing::debug!(%peer, "connection closed at the end of the shutdown grace period");
                    }
                }
            });
        }
        self.state.begin_shutdown();
        checks.cancel();
        drop(listener);
        // Every connection returns its slot when it ends; wait for all, within the grace.
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                open = max_connections - slots.available_permits(),
                "shutdown grace period over; closing the remaining connections"
            );
            hard_stop.cancel();
        }
        // Every request has been answered (or its connection closed); settle whatever
        // the sink still holds.
        self.state.sink.flush().await;
        tracing::info!("collector stopped");
        Ok(())
    }
}
