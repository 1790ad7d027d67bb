//! Criterion micro-benchmarks of the processor's pure journey logic (docs/microbench.md).
//!
//! A seeded stream of multi-channel journeys for many customers (default 10,000; set
//! `TS_BENCH_CUSTOMERS`), shaped like the demo generator's: anonymous web browsing with
//! product views, cart, sign-in, checkout and purchase with drop-off at each step,
//! call-centre complaints with follow-ups and repurchases, store visits. Events arrive in
//! event-time order with up to two minutes of disorder, as several frontends would send
//! them. The stages run as the processor runs them: `deploy/funnels.toml` and
//! `deploy/catalog.toml`, an external watermark advanced in-band every 100 input records
//! (`TS_BENCH_WATERMARK_EVERY`), output drained every 500 (`TS_BENCH_DRAIN_EVERY`), and at
//! the end a watermark far enough ahead that every session and funnel attempt closes.
//!
//! Run: `cargo bench -p touchstream-journey --bench engine -- --warm-up-time 1
//! --measurement-time 3`. Throughput is in input events. See `docs/microbench.md`.

use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use criterion::{BatchSize, Criterion, Throughput};
use serde_json::{json, Value};
use touchstream_journey::{
    Catalog, FunnelSet, IdentityConfig, IdentityOutput, IdentityStage, JourneyConfig, JourneyEvent,
    JourneyStage, MessageType, Properties, RoutedEvent,
};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// 2025-11-25T00:00:00Z: where the generated day starts.
const START_MS: i64 = 1_764_028_800_000;
/// Input records between two in-band watermarks (`TS_BENCH_WATERMARK_EVERY`, default 100).
fn watermark_every() -> u64 {
    static V: OnceLock<u64> = OnceLock::new();
    *V.get_or_init(|| env_or("TS_BENCH_WATERMARK_EVERY", 100))
}

/// Input records between two `take_output` drains, one processor batch
/// (`TS_BENCH_DRAIN_EVERY`, default 500).
fn drain_every() -> u64 {
    static V: OnceLock<u64> = OnceLock::new();
    *V.get_or_init(|| env_or("TS_BENCH_DRAIN_EVERY", 500))
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// splitmix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// As a decoded event carries them: the object's text, unparsed.
fn props(v: Value) -> Properties {
    match v {
        Value::Object(m) if !m.is_empty() => Properties::from_json(&Value::Object(m).to_string()),
        _ => Properties::default(),
    }
}

/// Who sends an event and through which channel.
#[derive(Clone, Copy)]
struct Who<'a> {
    anon: Option<&'a str>,
    user: Option<&'a str>,
    channel: Option<&'a str>,
}

struct Builder {
    rng: Rng,
    /// (arrival time, event).
    events: Vec<(i64, JourneyEvent)>,
    n: u64,
}

impl Builder {
    fn push(
        &mut self,
        t: i64,
        kind: MessageType,
        name: Option<&str>,
        who: Who<'_>,
        properties: Value,
    ) {
        self.n += 1;
        let event = JourneyEvent {
            event_id: format!("ajs-{:016x}", self.n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            kind,
            event: name.map(str::to_owned),
            anonymous_id: who.anon.map(str::to_owned),
            user_id: who.user.map(str::to_owned),
            previous_id: None,
            event_time_ms: t,
            channel: who.channel.map(str::to_owned),
            properties: props(properties),
        };
        // Arrival order: event time plus up to 2 min of delivery disorder (well inside the
        // default 5 min allowed lateness, so nothing is late).
        let arrival = t + self.rng.range(0, 2 * MIN);
        self.events.push((arrival, event));
    }

    fn track(&mut self, t: i64, name: &str, who: Who<'_>, properties: Value) {
        self.push(t, MessageType::Track, Some(name), who, properties);
    }

    /// 1 to 12 minutes: the pause between two steps of a visit.
    fn step(&mut self) -> i64 {
        self.rng.range(MIN, 12 * MIN)
    }
}

/// The input stream, in arrival order.
fn journeys(customers: usize, seed: u64) -> Vec<JourneyEvent> {
    let mut b = Builder {
        rng: Rng(seed),
        events: Vec::new(),
        n: 0,
    };
    for i in 0..customers {
        let anon = format!("0b9c3a1e-5d2f-4c8b-9e7a-{i:012x}");
        let user = format!("user-{i}");
        let web = Who {
            anon: Some(&anon),
            user: None,
            channel: None,
        };
        let signed_in = Who {
            user: Some(&user),
            ..web
        };
        let crm = Who {
            anon: None,
            user: Some(&user),
            channel: None,
        };
        let mut t = START_MS + b.rng.range(0, DAY);
        match i % 20 {
            // 75 %: web shoppers.
            0..=14 => {
                match b.rng.range(0, 3) {
                    0 => b.track(t, "Ad Clicked", web, json!({"campaign": "autumn"})),
                    1 => b.track(t, "Email Link Clicked", web, json!({"campaign": "news"})),
                    _ => b.push(
                        t,
                        MessageType::Page,
                        Some("Home"),
                        web,
                        json!({"path": "/"}),
                    ),
                }
                t += b.step();
                let list = json!({"path": "/shop/shoes", "title": "Shoes"});
                b.push(t, MessageType::Page, Some("Product List"), web, list);
                let sku = format!("SKU-{}", b.rng.range(1, 40));
                for _ in 0..b.rng.range(1, 4) {
                    t += b.step();
                    let p = json!({"sku": sku, "price": 89.9, "currency": "GBP"});
                    b.track(t, "Product Viewed", web, p);
                }
                let added = b.rng.chance(0.55);
                let checkout = added && b.rng.chance(0.65);
                let bought = checkout && b.rng.chance(0.75);
                if !checkout && b.rng.chance(0.3) {
                    t += b.step();
                    b.push(t, MessageType::Identify, None, signed_in, json!({}));
                }
                if added {
                    t += b.step();
                    let p = json!({"sku": sku, "quantity": 1, "price": 89.9});
                    b.track(t, "Product Added", web, p);
                    if !checkout {
                        t += b.step();
                        b.track(t, "Cart Abandoned", web, json!({"sku": sku}));
                    }
                }
                if checkout {
                    // Signing in to check out links the anonymous browsing to the user.
                    t += b.step();
                    b.push(t, MessageType::Identify, None, signed_in, json!({}));
                    t += 1000;
                    let p = json!({"value": 89.9, "currency": "GBP"});
                    b.track(t, "Checkout Started", signed_in, p);
                }
                if bought {
                    t += b.step();
                    let p = json!({"order_id": format!("O-{i}"), "revenue": 89.9});
                    b.track(t, "Order Completed", signed_in, p);
                    let email = Who {
                        channel: Some("email"),
                        ..crm
                    };
                    let p = json!({"order_id": format!("O-{i}")});
                    b.track(t + 6 * HOUR, "Order Shipped", email, p);
                }
            }
            // 15 %: service recovery through the call centre.
            15..=17 => {
                b.track(t, "Complaint Filed", crm, json!({"topic": "late delivery"}));
                if b.rng.chance(0.8) {
                    t += b.rng.range(15 * MIN, 36 * HOUR);
                    let p = json!({"agent": format!("staff-{}", i % 17)});
                    b.track(t, "Follow-up Completed", crm, p);
                    if b.rng.chance(0.5) {
                        t += b.rng.range(HOUR, 2 * DAY);
                        let p = json!({"order_id": format!("R-{i}"), "revenue": 45});
                        b.track(t, "Order Completed", crm, p);
                    }
                }
            }
            // 10 %: store visits.
            _ => {
                let store = Who {
                    channel: Some("store"),
                    ..crm
                };
                b.track(t, "Store Visited", store, json!({"store": "Leeds"}));
                if b.rng.chance(0.5) {
                    b.track(t + 30 * MIN, "Survey Completed", store, json!({"score": 4}));
                }
            }
        }
    }
    b.events.sort_by_key(|(arrival, _)| *arrival);
    b.events.into_iter().map(|(_, e)| e).collect()
}

/// Few, very active signed-in customers: `customers` × `per_customer` page and product
/// events over three days, in visits of about ten events. Every release replays a
/// customer's whole history inside the re-attribution horizon, so this shows how the cost
/// per event grows with history length.
fn heavy_journeys(customers: usize, per_customer: usize, seed: u64) -> Vec<RoutedEvent> {
    let mut b = Builder {
        rng: Rng(seed),
        events: Vec::new(),
        n: 0,
    };
    for i in 0..customers {
        let user = format!("user-{i}");
        let who = Who {
            anon: None,
            user: Some(&user),
            channel: None,
        };
        let mut t = START_MS + b.rng.range(0, HOUR);
        for k in 0..per_customer {
            t += if k % 10 == 0 {
                b.rng.range(2 * HOUR, 8 * HOUR)
            } else {
                b.step()
            };
            let p = json!({"sku": format!("SKU-{}", k % 40)});
            match k % 3 {
                0 => b.push(t, MessageType::Page, Some("Product List"), who, p),
                1 => b.track(t, "Product Viewed", who, p),
                _ => b.track(t, "Product Added", who, p),
            }
        }
    }
    b.events.sort_by_key(|(arrival, _)| *arrival);
    b.events
        .into_iter()
        .enumerate()
        .map(|(seq, (_, event))| RoutedEvent {
            customer_id: event.user_id.clone().unwrap_or_default(),
            event: event.into(),
            version: seq as u64 + 1,
            reattributed: false,
        })
        .collect()
}

fn config_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy"))
}

fn new_journey_stage() -> JourneyStage {
    let funnels = FunnelSet::load(&config_dir().join("funnels.toml")).expect("funnels.toml");
    let catalog = Catalog::load(&config_dir().join("catalog.toml")).expect("catalog.toml");
    let config = JourneyConfig {
        external_watermark: true,
        ..JourneyConfig::default()
    };
    JourneyStage::new(config, catalog, funnels)
}

/// What stage 1 sends to stage 2.
enum ToJourney {
    Event(RoutedEvent),
    Retract(touchstream_journey::Retract),
}

/// Stage 1 over the whole stream; also returns its outputs for stage 2.
fn run_identity(events: Vec<JourneyEvent>) -> (IdentityStage, Vec<ToJourney>) {
    let mut ids = IdentityStage::new(IdentityConfig::default());
    let mut out = Vec::with_capacity(events.len() + events.len() / 8);
    for (seq, e) in events.into_iter().enumerate() {
        for o in ids.process(e, seq as u64 + 1) {
            match o {
                IdentityOutput::Event(r) => out.push(ToJourney::Event(r)),
                IdentityOutput::Retract(r) => out.push(ToJourney::Retract(r)),
                _ => {}
            }
        }
    }
    (ids, out)
}

/// Stage 2 state plus what it emitted, for the summary line.
struct Journey {
    stage: JourneyStage,
    rows: [usize; 3],
    seq: u64,
    newest_ms: i64,
}

impl Journey {
    fn new() -> Self {
        Self {
            stage: new_journey_stage(),
            rows: [0; 3],
            seq: 0,
            newest_ms: i64::MIN,
        }
    }

    fn feed(&mut self, msg: ToJourney) {
        self.seq += 1;
        match msg {
            ToJourney::Event(r) => {
                if !r.reattributed {
                    self.newest_ms = self.newest_ms.max(r.event.event_time_ms);
                }
                self.stage.process(r, self.seq);
            }
            ToJourney::Retract(r) => self.stage.retract(&r, self.seq),
        }
        if self.seq % watermark_every() == 0 {
            // One upstream partition: its in-band watermark is its newest event time.
            self.stage.advance_watermark(self.newest_ms, self.seq);
        }
        if self.seq % drain_every() == 0 {
            self.drain();
        }
    }

    fn drain(&mut self) {
        let out = self.stage.take_output();
        self.rows[0] += out.touchpoints.len();
        self.rows[1] += out.sessions.len();
        self.rows[2] += out.attempts.len();
    }

    /// The wall clock moves past every window: all sessions and attempts close.
    fn close_all(&mut self) {
        self.seq += 1;
        self.stage
            .advance_watermark(self.newest_ms.saturating_add(8 * DAY), self.seq);
        self.drain();
    }
}

fn run_journey(input: Vec<ToJourney>) -> Journey {
    let mut j = Journey::new();
    for msg in input {
        j.feed(msg);
    }
    j.close_all();
    j
}

fn run_both(events: Vec<JourneyEvent>) -> (IdentityStage, Journey) {
    let mut ids = IdentityStage::new(IdentityConfig::default());
    let mut j = Journey::new();
    for (seq, e) in events.into_iter().enumerate() {
        for o in ids.process(e, seq as u64 + 1) {
            match o {
                IdentityOutput::Event(r) => j.feed(ToJourney::Event(r)),
                IdentityOutput::Retract(r) => j.feed(ToJourney::Retract(r)),
                _ => {}
            }
        }
    }
    j.close_all();
    (ids, j)
}

/// A deep copy: each event owned by its `RoutedEvent` alone, as after decoding it from the
/// repartition topic, so stage 2 pays for dropping it as the processor does.
fn clone_routed(input: &[ToJourney]) -> Vec<ToJourney> {
    input
        .iter()
        .map(|m| match m {
            ToJourney::Event(r) => ToJourney::Event(RoutedEvent {
                customer_id: r.customer_id.clone(),
                event: Arc::new(JourneyEvent::clone(&r.event)),
                version: r.version,
                reattributed: r.reattributed,
            }),
            ToJourney::Retract(r) => ToJourney::Retract(r.clone()),
        })
        .collect()
}

fn bench_engine(c: &mut Criterion) {
    let customers = usize::try_from(env_or("TS_BENCH_CUSTOMERS", 10_000)).unwrap_or(10_000);
    let events = journeys(customers, 42);
    let n = events.len() as u64;
    let (ids, routed) = run_identity(events.clone());
    let reattributed = routed
        .iter()
        .filter(|m| matches!(m, ToJourney::Event(r) if r.reattributed))
        .count();
    let j = run_journey(clone_routed(&routed));
    let counters = j.stage.counters();
    eprintln!(
        "engine: {customers} customers, {n} events, watermark every {}, drain every {}, \
         {} stage-2 inputs ({reattributed} \
         re-attributed), {} links; rows: {} touchpoint, {} session, {} attempt; \
         late {}, customers left {}",
        watermark_every(),
        drain_every(),
        routed.len(),
        ids.counters().links,
        j.rows[0],
        j.rows[1],
        j.rows[2],
        counters.late_events,
        j.stage.customer_count(),
    );
    assert_eq!(
        counters.late_events, 0,
        "the stream is meant to be in order"
    );

    let mut g = c.benchmark_group("journey");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function("identity_stage", |b| {
        b.iter_batched(|| events.clone(), run_identity, BatchSize::PerIteration)
    });
    g.bench_function("journey_stage", |b| {
        b.iter_batched(
            || clone_routed(&routed),
            run_journey,
            BatchSize::PerIteration,
        )
    });
    g.bench_function("both_stages", |b| {
        b.iter_batched(|| events.clone(), run_both, BatchSize::PerIteration)
    });
    g.finish();

    // Same number of events per customer history length: 10,000 light customers above
    // (about 5 events each) against a few heavy ones here.
    let mut g = c.benchmark_group("journey_history");
    g.sample_size(10);
    for per_customer in [20, 100, 500] {
        let heavy: Vec<ToJourney> = heavy_journeys(20_000 / per_customer, per_customer, 7)
            .into_iter()
            .map(ToJourney::Event)
            .collect();
        g.throughput(Throughput::Elements(heavy.len() as u64));
        g.bench_function(format!("events_per_customer_{per_customer}"), |b| {
            b.iter_batched(
                || clone_routed(&heavy),
                run_journey,
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();

    // Between the stages the processor ships each routed event as JSON through Kafka.
    let sample: Vec<RoutedEvent> = routed
        .iter()
        .filter_map(|m| match m {
            ToJourney::Event(r) => Some(r.clone()),
            ToJourney::Retract(_) => None,
        })
        .take(1000)
        .collect();
    let mut g = c.benchmark_group("journey_wire");
    g.throughput(Throughput::Elements(sample.len() as u64));
    g.bench_function("routed_json_roundtrip", |b| {
        b.iter(|| {
            black_box(&sample)
                .iter()
                .map(|r| {
                    let bytes = serde_json::to_vec(r).expect("serializable");
                    serde_json::from_slice::<RoutedEvent>(&bytes).expect("round trip")
                })
                .collect::<Vec<_>>()
        })
    });
    g.finish();

    // A partition's snapshot as the processor writes it: the whole state as JSON into an
    // LZ4 frame (`processor::state_codec::encode`), mid-stream (no closing watermark).
    // serde_json writes token by token: `unbuffered` hands each token to the encoder (the
    // processor until 2026-11-26), `buffered_64k` gathers them first (then the encoder
    // picks 64 KiB blocks from that first write; the processor until 2026-12-04).
    // `blocks_*` set the frame's block size (the processor now: 1 MiB), `no_checksum`
    // shows what the content checksum costs.
    let mut mid = Journey::new();
    for msg in clone_routed(&routed) {
        mid.feed(msg);
    }
    let json_len = serde_json::to_vec(&mid.stage.snapshot_ref())
        .expect("serializable")
        .len();
    let mut g = c.benchmark_group("journey_snapshot");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(json_len as u64));
    let lz4_with = |info: lz4_flex::frame::FrameInfo, write: &dyn Fn(&mut dyn std::io::Write)| {
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        write(&mut enc);
        enc.finish().expect("compressed").len()
    };
    let checked = || lz4_flex::frame::FrameInfo::new().content_checksum(true);
    let lz4 = |write: &dyn Fn(&mut dyn std::io::Write)| lz4_with(checked(), write);
    let buffered = |w: &mut dyn std::io::Write| {
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, w);
        serde_json::to_writer(&mut w, &mid.stage.snapshot_ref()).expect("written");
        std::io::Write::flush(&mut w).expect("flushed");
    };
    for (name, size) in [
        ("json_lz4_blocks_256k", lz4_flex::frame::BlockSize::Max256KB),
        ("json_lz4_blocks_1m", lz4_flex::frame::BlockSize::Max1MB),
        ("json_lz4_blocks_4m", lz4_flex::frame::BlockSize::Max4MB),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| lz4_with(checked().block_size(size), &buffered))
        });
    }
    g.bench_function("json_lz4_no_checksum", |b| {
        b.iter(|| lz4_with(lz4_flex::frame::FrameInfo::new(), &buffered))
    });
    g.bench_function("json_lz4_unbuffered", |b| {
        b.iter(|| lz4(&|w| serde_json::to_writer(w, &mid.stage.snapshot_ref()).expect("written")))
    });
    g.bench_function("json_lz4_buffered_64k", |b| {
        b.iter(|| {
            lz4(&|w| {
                let mut w = std::io::BufWriter::with_capacity(64 * 1024, w);
                serde_json::to_writer(&mut w, &mid.stage.snapshot_ref()).expect("written");
                std::io::Write::flush(&mut w).expect("flushed");
            })
        })
    });
    g.bench_function("json_only", |b| {
        b.iter(|| {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, std::io::sink());
            serde_json::to_writer(&mut w, &mid.stage.snapshot_ref()).expect("written");
        })
    });
    g.finish();
}

// `criterion_main!` by hand: the macro's generated `pub fn` trips `missing_docs`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_engine(&mut c);
    c.final_summary();
}
