//! Criterion micro-benchmarks of the `touchpoints.raw` Avro codec (docs/microbench.md).
//!
//! `encode` is the collector's per-message cost, `decode` the processor's per-record
//! cost; `decode_then_properties` adds the `serde_json` parse of `properties` that the
//! processor's `JourneyEvent::from(&Touchpoint)` (crates/journey/src/event.rs) used to do right after decoding (mimicked here, since
//! core cannot depend on the processor).
//!
//! Run: `cargo bench -p touchstream-core --bench avro -- --warm-up-time 1
//! --measurement-time 3`. Throughput is in records. See `docs/microbench.md`.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use touchstream_core::{avro, MessageType, Touchpoint};

/// A web `Product Viewed` as the collector builds it from an analytics.js message.
fn touchpoint() -> Touchpoint {
    Touchpoint {
        event_id: "ajs-next-1764072000000-9e3779b1".into(),
        message_type: MessageType::Track,
        event: Some("Product Viewed".into()),
        anonymous_id: Some("0b9c3a1e-5d2f-4c8b-9e7a-00005eed0001".into()),
        user_id: None,
        previous_id: None,
        event_time_ms: 1_764_071_995_037,
        timestamp_ms: Some(1_764_071_995_037),
        sent_at_ms: Some(1_764_071_999_950),
        received_at_ms: 1_764_072_000_000,
        source: "web".into(),
        channel: "web".into(),
        properties: r#"{"currency":"GBP","name":"Trail Runner 2","price":89.9,"sku":"SKU-1"}"#
            .into(),
        traits: "{}".into(),
        context: r#"{"library":{"name":"analytics.js","version":"next-1.70.0"},"locale":"en-GB"}"#
            .into(),
        ip: Some("203.0.113.7".into()),
        user_agent: Some(
            "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0".into(),
        ),
        extra: "{}".into(),
    }
}

fn bench_avro(c: &mut Criterion) {
    let tp = touchpoint();
    let bytes = avro::encode(&tp).expect("encodable");
    eprintln!("avro: record {} B", bytes.len());
    let mut g = c.benchmark_group("avro");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        b.iter(|| avro::encode(black_box(&tp)).expect("encodable"))
    });
    g.bench_function("decode", |b| {
        b.iter(|| avro::decode(black_box(&bytes)).expect("decodable"))
    });
    g.bench_function("decode_generic", |b| {
        b.iter(|| avro::decode_generic(black_box(&bytes)).expect("decodable"))
    });
    g.bench_function("decode_then_properties", |b| {
        b.iter(|| {
            let tp = avro::decode(black_box(&bytes)).expect("decodable");
            let props = serde_json::from_str::<serde_json::Value>(&tp.properties).ok();
            (tp, props)
        })
    });
    g.bench_function("clone_touchpoint", |b| b.iter(|| black_box(&tp).clone()));
    g.finish();
}

// `criterion_main!` by hand: the macro's generated `pub fn` trips `missing_docs`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_avro(&mut c);
    c.final_summary();
}
