//! The collector's errors: [`ApiError`], why one request is refused, with its one mapping to
//! HTTP status and body (README, "Collector API"); and [`CollectorError`], why the service could not start.
//!
//! Per-message problems are not errors here: they become DLQ records and are listed in a
//! 200 response. [`ApiError`] covers the cases where the request as a whole is refused.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why the collector could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Kafka client could not be created.
    #[error(transparent)]
    Kafka(#[from] touchstream_core::kafka::KafkaSetupError),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A route alias names an unknown route.
    #[error("collector.route_aliases: {0}")]
    Alias(String),
    /// The demo write keys are configured and `allow_demo_keys` is not set.
    #[error(
        "collector.sources uses the demo write keys (sources {0}), which anyone who read the README knows; \
         configure your own keys, or pass --allow-demo-keys (collector.allow_demo_keys = true) for a local run"
    )]
    DemoKeys(String),
    /// A source's privacy options cannot be applied (README "Privacy").
    #[error("collector.sources: {0}")]
    Privacy(#[from] crate::privacy::PrivacyError),
    /// The catalog (`collector.catalog_path`) could not be read or parsed.
    #[error("collector.catalog_path: {0}")]
    Catalog(#[from] touchstream_journey::JourneyError),
    /// The server failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a whole request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No write key, or one no source has.
    #[error("missing or unknown write key")]
    Unauthorized,
    /// Body, inflated body or one message over its limit, or too many messages.
    #[error("{0}")]
    TooLarge(String),
    /// The body is not JSON of the expected shape.
    #[error("{0}")]
    BadRequest(String),
    /// The body did not arrive within `body_read_timeout_ms` (a slow or stalled client).
    #[error("request body not received within {0} ms")]
    BodyTimeout(u64),
    /// A content encoding other than gzip/identity.
    #[error("unsupported content encoding {0:?}; send gzip or none")]
    UnsupportedEncoding(String),
    /// The client address or the write key exceeded its configured request rate.
    #[error("rate limit exceeded for this {scope}")]
    RateLimited {
        /// What ran out: `client address` or `write key`.
        scope: &'static str,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// Kafka did not acknowledge in time, or the collector is saturated or shutting down.
    /// Retryable: the client should send the same request again later.
    #[error("{reason}; retry later")]
    Unavailable {
        /// What happened.
        reason: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
}

impl ApiError {
    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the client should retry the same request.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::Unavailable { .. } | ApiError::RateLimited { .. }
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body =
            json!({"success": false, "error": self.to_string(), "retryable": self.is_retryable()});
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::TooLarge(_) | ApiError::BodyTimeout(_) = self {
            // The rest of an oversized body may be unread: say the connection ends here,
            // so a keep-alive client does not send its next request into it.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::Unavailable {
            retry_after_secs, ..
        }
        | ApiError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
