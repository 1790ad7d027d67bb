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

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use touchstream_core::Config;

mod dlq;
mod endpoint;
mod envelope;
mod ingest;
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
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), CollectorError> {
    let metrics = Arc::new(Metrics::new()?);
    let sink = KafkaSink::new(
        &config.kafka,
        config.collector.produce_timeout_ms,
        metrics.clone(),
    )?;
    Collector::new(&config, sink, metrics)?
        .serve(listener, shutdown)
        .await
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
    pub fn new(config: &Config, sink: S, metrics: Arc<Metrics>) -> Result<Self, CollectorError> {
        let state = Arc::new(AppState::new(config, sink, metrics));
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
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), CollectorError> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, sources = self.state.cfg.sources.len(), "collector listening");
        let app = self.router();
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown({
            let state = self.state.clone();
            async move {
                shutdown.cancelled().await;
                state.begin_shutdown();
            }
        })
        .await?;
        // Every request has been answered; settle whatever the sink still holds.
        self.state.sink.flush().await;
        tracing::info!("collector stopped");
        Ok(())
    }
}
