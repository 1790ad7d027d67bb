//! The collector's Prometheus metrics, declared once (README, "Collector metrics"; docs/design.md §7).
//!
//! Names follow `touchstream_collector_<name>_<unit>`; label values are bounded (endpoint
//! names, status codes, reason codes), never ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// All collector metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Requests by endpoint and HTTP status.
    pub requests: IntCounterVec,
    /// Events by outcome (`accepted`, `rejected`) and reason (`ok` or a reject code).
    pub events: IntCounterVec,
    /// Request body bytes received (before inflation).
    pub bytes: IntCounter,
    /// Time from produce call to broker ack (or failure), per request.
    pub produce_seconds: Histogram,
    /// Request handling time by endpoint.
    pub request_seconds: HistogramVec,
    /// Request bytes currently being produced.
    pub in_flight_bytes: IntGauge,
    /// Kafka produce failures by kind (`timeout`, `queue_full`, `delivery`).
    pub broker_errors: IntCounterVec,
    /// Requests refused because the in-flight byte cap or rate limit was reached, by cause.
    pub throttled: IntCounterVec,
    /// Messages naming an erased person, by action (`rejected`, `dropped`).
    pub suppressed: IntCounterVec,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "touchstream_collector_requests_total",
                "HTTP requests by endpoint and status",
            ),
            &["endpoint", "status"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "touchstream_collector_events_total",
                "Messages by outcome and reason",
            ),
            &["outcome", "reason"],
        )?;
        let bytes = IntCounter::new(
            "touchstream_collector_received_bytes_total",
            "Request body bytes received, before gzip inflation",
        )?;
        let produce_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "touchstream_collector_produce_duration_seconds",
                "Kafka produce latency per request, until every message is acknowledged",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "touchstream_collector_request_duration_seconds",
                "Request handling time",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["endpoint"],
        )?;
        let in_flight_bytes = IntGauge::new(
            "touchstream_collector_in_flight_bytes",
            "Request bytes currently being produced to Kafka",
        )?;
        let broker_errors = IntCounterVec::new(
            Opts::new(
                "touchstream_collector_broker_errors_total",
                "Kafka produce failures by kind",
            ),
            &["kind"],
        )?;
        let throttled = IntCounterVec::new(
            Opts::new(
                "touchstream_collector_throttled_requests_total",
                "Requests refused: in_flight_bytes (503), rate_limit_ip and rate_limit_key (429)",
            ),
            &["cause"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(produce_seconds.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(in_flight_bytes.clone()))?;
        registry.register(Box::new(broker_errors.clone()))?;
        registry.register(Box::new(throttled.clone()))?;
        let suppressed = IntCounterVec::new(
            Opts::new(
                "touchstream_collector_suppressed_messages_total",
                "Messages naming an erased person (collector.suppression), by action",
            ),
            &["action"],
        )?;
        registry.register(Box::new(suppressed.clone()))?;
        Ok(Self {
            registry,
            requests,
            events,
            bytes,
            produce_seconds,
            request_seconds,
            in_flight_bytes,
            broker_errors,
            throttled,
            suppressed,
        })
    }

    /// Text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own registry into a Vec cannot fail short of a bug in prometheus.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
