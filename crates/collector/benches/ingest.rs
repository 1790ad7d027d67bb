//! Criterion micro-benchmarks of the collector's per-request CPU work (docs/microbench.md).
//!
//! One `/v1/batch` body of 100 analytics.js-shaped messages (track, page and identify with
//! properties, traits, context, timestamps and `messageId`, about 300 B each) goes through
//! exactly what the ingest pipeline (`server/ingest.rs`) does before publishing: UTF-8 check, envelope split,
//! per-message validation (a `Validator` handing out borrowed touchpoints), Avro
//! single-object encoding into the request's `Records`. No socket, no broker: this is the
//! CPU cost that bounds one core's ingest rate.
//!
//! Run: `cargo bench -p touchstream-collector --bench ingest -- --warm-up-time 1
//! --measurement-time 3`. Throughput is in events (messages). See `docs/microbench.md`.

use std::hint::black_box;
use std::io::Write as _;

use axum::http::{header, HeaderMap};
use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput};
use serde_json::{json, Value};
use touchstream_collector::body;
use touchstream_collector::message::{to_touchpoint, BatchContext, RequestMeta, Validator};
use touchstream_collector::server::{split, Endpoint};
use touchstream_collector::sink::Records;
use touchstream_core::config::CollectorConfig;
use touchstream_core::{avro, Channel, Touchpoint};

/// Messages per request: analytics.js flushes at most this many, the demo sender too.
const BATCH: usize = 100;
/// Collector clock at receipt: 2025-11-25T12:00:00Z.
const RECEIVED_MS: i64 = 1_764_072_000_000;
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0";

use touchstream_collector::message::format_timestamp as iso;

/// Message `i` of a web batch: 60 % track (product/cart/checkout/order), 30 % page,
/// 10 % identify, each with the context analytics.js sends.
fn message(i: usize) -> Value {
    let anon = format!("0b9c3a1e-5d2f-4c8b-9e7a-{:012x}", 0x5eed_0000 + i % 17);
    let user = format!("user-{}", 40_000 + i % 17);
    let t = RECEIVED_MS - 5_000 + i as i64 * 37;
    let context = json!({
        "library": {"name": "analytics.js", "version": "next-1.70.0"},
        "locale": "en-GB",
    });
    let mut m = match i % 10 {
        0..=5 => {
            let (event, props) = match i % 4 {
                0 => (
                    "Product Viewed",
                    json!({"sku": format!("SKU-{}", i % 40), "name": "Trail Runner 2", "price": 89.9, "currency": "GBP"}),
                ),
                1 => (
                    "Product Added",
                    json!({"sku": format!("SKU-{}", i % 40), "quantity": 1, "price": 89.9, "currency": "GBP"}),
                ),
                2 => (
                    "Checkout Started",
                    json!({"order_id": format!("O-{i}"), "value": 179.8, "currency": "GBP"}),
                ),
                _ => (
                    "Order Completed",
                    json!({"order_id": format!("O-{i}"), "revenue": 179.8, "currency": "GBP", "products": 2}),
                ),
            };
            json!({"type": "track", "event": event, "properties": props})
        }
        6..=8 => json!({
            "type": "page",
            "name": "Product List",
            "properties": {"path": "/shop/shoes", "title": "Shoes | Example", "url": "https://www.example.com/shop/shoes"},
        }),
        _ => json!({
            "type": "identify",
            "userId": user,
            "traits": {"email": format!("{user}@example.com"), "plan": "free", "newsletter": true},
        }),
    };
    m["anonymousId"] = json!(anon);
    m["messageId"] = json!(format!(
        "ajs-next-{}-{:08x}",
        RECEIVED_MS,
        i * 2_654_435_761
    ));
    m["timestamp"] = json!(iso(t));
    m["context"] = context;
    m
}

/// A `/v1/batch` body as analytics.js sends it (`sentAt` on the envelope).
fn batch_body() -> String {
    let messages: Vec<Value> = (0..BATCH).map(message).collect();
    json!({"batch": messages, "sentAt": iso(RECEIVED_MS - 50)}).to_string()
}

fn gzip(data: &[u8]) -> Bytes {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("in-memory gzip");
    Bytes::from(e.finish().expect("in-memory gzip"))
}

fn meta<'a>(
    batch_sent_at_ms: Option<i64>,
    batch_context: Option<&'a BatchContext>,
) -> RequestMeta<'a> {
    RequestMeta {
        source: "web",
        default_channel: Channel::Web,
        received_at_ms: RECEIVED_MS,
        ip: Some("203.0.113.7".to_string()),
        user_agent: Some(UA.to_string()),
        batch_sent_at_ms,
        batch_context,
    }
}

/// The validating half of a request: body → touchpoints (owned, as `to_touchpoint` gives
/// them; for the `avro_encode` input).
fn touchpoints(text: &str, cfg: &CollectorConfig) -> Vec<Touchpoint> {
    let (messages, sent_at, context, _key) =
        split(text, Endpoint::Batch, cfg).expect("valid envelope");
    let context = context.map(BatchContext::new);
    let meta = meta(sent_at, context.as_ref());
    messages
        .iter()
        .map(|raw| to_touchpoint(raw, None, &meta).expect("valid message"))
        .collect()
}

/// The validating half of a request as the server runs it: split, then one [`Validator`]
/// over every message (borrowed touchpoints; returns the number of valid messages).
fn parse_validate(text: &str, cfg: &CollectorConfig) -> usize {
    let (messages, sent_at, context, _key) =
        split(text, Endpoint::Batch, cfg).expect("valid envelope");
    let context = context.map(BatchContext::new);
    let meta = meta(sent_at, context.as_ref());
    let mut validator = Validator::new();
    messages
        .iter()
        .filter(|raw| black_box(validator.validate(raw, None, &meta)).is_ok())
        .count()
}

/// What the ingest pipeline (`server/ingest.rs`) does between reading the body and
/// publishing.
fn pipeline<'t>(
    raw: Bytes,
    headers: &HeaderMap,
    cfg: &CollectorConfig,
    topic: &'t str,
) -> Records<'t> {
    let text = body::decode(
        raw,
        headers,
        cfg.max_request_bytes,
        || touchstream_collector::error::ApiError::TooLarge("over the limit".into()),
        |_| Ok(()),
    )
    .expect("decodable body");
    let text = std::str::from_utf8(&text).expect("UTF-8");
    let (messages, sent_at, context, _key) =
        split(text, Endpoint::Batch, cfg).expect("valid envelope");
    let context = context.map(BatchContext::new);
    let meta = meta(sent_at, context.as_ref());
    let per_message = "web".len() + "203.0.113.7".len() + UA.len() + 96;
    let mut records =
        Records::with_capacity(messages.len(), text.len() + messages.len() * per_message);
    let mut validator = Validator::new();
    for raw in &messages {
        let tp = validator.validate(raw, None, &meta).expect("valid message");
        records.push(topic, Some(tp.identity_key()), |out| {
            avro::encode_ref(&tp, out)
        });
    }
    records
}

fn bench_ingest(c: &mut Criterion) {
    let cfg = CollectorConfig::default();
    let text = batch_body();
    let touchpoints = touchpoints(&text, &cfg);
    assert_eq!(parse_validate(&text, &cfg), BATCH);
    assert_eq!(touchpoints.len(), BATCH);
    let encoded: usize = touchpoints
        .iter()
        .map(|tp| avro::encode(tp).expect("encodable").len())
        .sum();
    eprintln!(
        "ingest: {BATCH} messages, body {} B ({} B/message), Avro {} B/record",
        text.len(),
        text.len() / BATCH,
        encoded / BATCH
    );
    let plain = Bytes::from(text.clone());
    let gz = gzip(text.as_bytes());
    let mut gz_headers = HeaderMap::new();
    gz_headers.insert(header::CONTENT_ENCODING, "gzip".parse().expect("header"));
    let no_headers = HeaderMap::new();
    let topic = "touchpoints.raw";

    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("split", |b| {
        b.iter(|| split(black_box(&text), Endpoint::Batch, &cfg).expect("valid"))
    });
    g.bench_function("parse_validate", |b| {
        b.iter(|| parse_validate(black_box(&text), &cfg))
    });
    g.bench_function("avro_encode", |b| {
        b.iter(|| {
            black_box(&touchpoints)
                .iter()
                .map(|tp| avro::encode(tp).expect("encodable"))
                .collect::<Vec<_>>()
        })
    });
    // One request at a time, as the server allocates and frees a request's buffers:
    // batched inputs (`SmallInput`) would free hundreds of outputs at once, making glibc
    // hand the heap top back to the kernel and fault it in again on every batch.
    g.bench_function("pipeline", |b| {
        b.iter_batched(
            || plain.clone(),
            |raw| pipeline(raw, &no_headers, &cfg, topic),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("pipeline_gzip", |b| {
        b.iter_batched(
            || gz.clone(),
            |raw| pipeline(raw, &gz_headers, &cfg, topic),
            BatchSize::PerIteration,
        )
    });
    // Diagnostics: the pieces of `to_touchpoint` that the profile points at.
    let (messages, ..) = split(&text, Endpoint::Batch, &cfg).expect("valid");
    g.bench_function("diag_json_dom_parse", |b| {
        b.iter(|| {
            black_box(&messages)
                .iter()
                .map(|m| serde_json::from_str::<Value>(m).expect("JSON"))
                .collect::<Vec<_>>()
        })
    });
    g.finish();

    let mut one = c.benchmark_group("ingest_one");
    one.throughput(Throughput::Elements(1));
    let track = &touchpoints[1];
    one.bench_function("avro_encode_track", |b| {
        b.iter(|| avro::encode(black_box(track)).expect("encodable"))
    });
    let meta = meta(touchpoints[1].sent_at_ms, None);
    let raw = messages[1];
    one.bench_function("to_touchpoint_track", |b| {
        b.iter(|| to_touchpoint(black_box(raw), None, &meta).expect("valid"))
    });
    let mut validator = Validator::new();
    one.bench_function("validate_encode_track", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            let tp = validator
                .validate(black_box(raw), None, &meta)
                .expect("valid");
            avro::encode_ref(&tp, &mut out);
            out.len()
        })
    });
    one.finish();
}

// `criterion_main!` by hand: the macro's generated `pub fn` trips `missing_docs`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_ingest(&mut c);
    c.final_summary();
}
