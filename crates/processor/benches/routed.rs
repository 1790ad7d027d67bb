//! Criterion micro-benchmark of the `touchpoints.by_customer` event codec (docs/microbench.md).
//!
//! Every event crosses the topic once: the identity stage encodes it, the journey stage
//! decodes it. `binary_*` is `processor::routed_codec` (what the processor writes since
//! 2026-11-26), `json_*` the serde JSON it replaced (still read). Events are shaped like
//! the bench workload's: ids like analytics.js's, a track name, a channel, and 0–2
//! properties.
//!
//! Run: `cargo bench -p touchstream-processor --bench routed -- --warm-up-time 1
//! --measurement-time 3`. Throughput is in events. See `docs/microbench.md`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use serde_json::{json, Map, Value};
use touchstream_journey::{JourneyEvent, MessageType, Properties, RoutedEvent};
use touchstream_processor::routed_codec;
use touchstream_processor::routed_codec::Routed;

fn events(n: usize) -> Vec<Routed> {
    (0..n)
        .map(|i| {
            let mut properties = Map::new();
            if i % 3 > 0 {
                properties.insert("sku".into(), json!(format!("SKU-{}", i % 40)));
            }
            if i % 3 > 1 {
                properties.insert("quantity".into(), json!(1 + i % 4));
            }
            let anon = format!("0b9c3a1e-5d2f-4c8b-9e7a-{i:012}");
            let user = (i % 2 == 0).then(|| format!("u-{i:08}"));
            Routed::Event(RoutedEvent {
                customer_id: user.clone().unwrap_or_else(|| anon.clone()),
                event: Arc::new(JourneyEvent {
                    event_id: format!("ajs-next-1764072000000-{i:08x}"),
                    kind: MessageType::Track,
                    event: Some(
                        ["Product Viewed", "Product Added", "Checkout Started"][i % 3].into(),
                    ),
                    anonymous_id: Some(anon),
                    user_id: user,
                    previous_id: None,
                    event_time_ms: 1_764_071_995_037 + i as i64,
                    channel: Some("web".into()),
                    properties: Properties::from_json(&Value::Object(properties).to_string()),
                }),
                version: i as u64,
                reattributed: i % 7 == 0,
            })
        })
        .collect()
}

fn bench_routed(c: &mut Criterion) {
    let sample = events(1000);
    let json: Vec<Vec<u8>> = sample
        .iter()
        .map(|r| serde_json::to_vec(r).expect("serializable"))
        .collect();
    let binary: Vec<Vec<u8>> = sample.iter().map(routed_codec::encode).collect();
    let mut g = c.benchmark_group("routed");
    g.throughput(Throughput::Elements(sample.len() as u64));
    g.bench_function("json_encode", |b| {
        b.iter(|| {
            black_box(&sample)
                .iter()
                .map(|r| serde_json::to_vec(r).expect("serializable"))
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("binary_encode", |b| {
        b.iter(|| {
            black_box(&sample)
                .iter()
                .map(routed_codec::encode)
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("json_decode", |b| {
        b.iter(|| {
            black_box(&json)
                .iter()
                .map(|v| serde_json::from_slice::<Routed>(v).expect("decodable"))
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("binary_decode", |b| {
        b.iter(|| {
            black_box(&binary)
                .iter()
                .map(|v| routed_codec::decode(v).expect("decodable"))
                .collect::<Vec<_>>()
        })
    });
    g.finish();
    let size = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() / v.len();
    eprintln!(
        "routed: average record {} B as JSON, {} B binary",
        size(&json),
        size(&binary)
    );
}

// `criterion_main!` by hand: the macro's generated `pub fn` trips `missing_docs`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_routed(&mut c);
    c.final_summary();
}
