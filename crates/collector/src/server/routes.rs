//! The collector's routes: every ingest path (and its configured aliases) onto the ingest
//! pipeline, the health routes, and CORS.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::endpoint::{Endpoint, IMPORT_ROUTE, ROUTES};
use super::ingest::ingest;
use super::readiness::BrokerState;
use super::state::AppState;
use crate::error::CollectorError;
use crate::sink::Sink;

/// All routes over `state`; an alias naming an unknown route is an error.
pub(super) fn router<S: Sink>(state: Arc<AppState<S>>) -> Result<Router, CollectorError> {
    let mut app = Router::new();
    // `/v1/import` (and its aliases) takes history: only the event-time floor applies.
    let add = |app: Router<Arc<AppState<S>>>, path: &str, ep: Endpoint, canonical: &str| {
        let history = canonical == IMPORT_ROUTE;
        app.route(
            path,
            post(
                move |st: State<Arc<AppState<S>>>,
                      ci: ConnectInfo<SocketAddr>,
                      h: HeaderMap,
                      b: Body| async move { ingest(st, ci, h, b, ep, history).await },
            ),
        )
    };
    for (path, ep) in ROUTES {
        app = add(app, path, ep, path);
    }
    for (alias, target) in &state.cfg.route_aliases {
        if let Some((_, ep)) = ROUTES.iter().find(|(p, _)| p == target) {
            app = add(app, alias, *ep, target);
        } else {
            return Err(CollectorError::Alias(format!(
                "{alias:?} points at unknown route {target:?}"
            )));
        }
    }
    app = app
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>));
    if let Some(cors) = cors_layer(&state.cfg.cors_origins) {
        app = app.layer(cors);
    }
    Ok(app.with_state(state))
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::CONTENT_ENCODING,
            ])
            .max_age(Duration::from_secs(86_400)),
    )
}

async fn metrics<S>(State(st): State<Arc<AppState<S>>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

/// Ready when not shutting down and the last background broker check succeeded
/// (`readiness`); never waits for the broker. A stale result starts a new check.
async fn readyz<S: Sink>(State(st): State<Arc<AppState<S>>>) -> Response {
    if st.shutting_down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "shutting down"})),
        )
            .into_response();
    }
    let (broker, stale) = st.readiness.cached();
    if stale {
        st.refresh_readiness();
    }
    let reason = match broker {
        BrokerState::Reachable => return Json(json!({"ready": true})).into_response(),
        BrokerState::Unreachable => "kafka unreachable",
        BrokerState::Unknown => "kafka not checked yet",
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"ready": false, "reason": reason})),
    )
        .into_response()
}
