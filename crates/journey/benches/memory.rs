//! Memory per active customer of both stages (docs/bench.md), measured as resident set growth.
//!
//! Shaped like the `touchstream bench` memory phase (`tests/support/memory_shape.rs`, shared
//! with the counting test): customer `i` sends one signed-in `Product Viewed`, so stage 1
//! holds a link and stage 2 an open session and an open `web_checkout` attempt.
//!
//! Each (stage, customer count) runs in a child process of this binary: RSS is read from
//! `/proc/self/status` before and after feeding the events, and the growth divided by the
//! customer count. Outputs are drained and dropped every 500 events, as the processor does,
//! so what remains is the state (plus allocator slack, which the processor pays too). The
//! allocator is the processor's (jemalloc), read after its purge of unused pages.
//!
//! Run: `cargo bench -p touchstream-journey --bench memory` (counts from
//! `TS_BENCH_MEMORY_CUSTOMERS`, comma-separated, default `10000,100000,1000000`). Linux
//! only (reads `/proc`). See `docs/microbench.md`.

use std::process::Command;

use touchstream_journey::{IdentityConfig, IdentityOutput, IdentityStage, RoutedEvent};

#[path = "../tests/support/memory_shape.rs"]
mod memory_shape;

/// The processor's allocator (crates/cli/src/main.rs), with the settings
/// `.cargo/config.toml` compiles in: size classes and purging decide what a customer
/// costs in resident memory, and glibc's differ.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CHILD_ENV: &str = "TS_BENCH_MEMORY_CHILD";

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Feed `n` customers through `stage` ("identity", "journey" or "both"); returns the RSS
/// growth and keeps the state alive until then.
fn child(stage: &str, n: usize) -> u64 {
    let mut identity = IdentityStage::new(IdentityConfig::default());
    let mut journey = memory_shape::journey_stage();
    let before = rss_bytes();
    let mut seq = 0u64;
    for i in 0..n {
        let e = memory_shape::event(i, n);
        seq += 1;
        let routed = match stage {
            "journey" => vec![RoutedEvent {
                customer_id: e.user_id.clone().unwrap_or_default(),
                event: e.into(),
                version: seq,
                reattributed: false,
            }],
            _ => identity
                .process(e, seq)
                .into_iter()
                .filter_map(|o| match o {
                    IdentityOutput::Event(r) => Some(r),
                    _ => None,
                })
                .collect(),
        };
        if stage != "identity" {
            for r in routed {
                journey.process(r, seq);
            }
            memory_shape::after_event(&mut journey, i, n, seq);
        }
    }
    memory_shape::finish(&mut journey, seq);
    // jemalloc's background thread purges pages unused for 1 s (`dirty_decay_ms`): what
    // the processing freed is given back before the reading, as in the processor bench.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(
        journey.customer_count(),
        if stage == "identity" { 0 } else { n },
        "every customer active"
    );
    assert_eq!(journey.buffered_events(), 0, "every event released");
    std::hint::black_box((&identity, &journey));
    grown
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (stage, n) = spec.split_once(':').expect("stage:count");
        let n: usize = n.parse().expect("count");
        println!("{}", child(stage, n));
        return;
    }
    // `cargo bench` passes `--bench`; a name filter is not supported here.
    let counts: Vec<usize> = std::env::var("TS_BENCH_MEMORY_CUSTOMERS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    let exe = std::env::current_exe().expect("own path");
    println!("bytes per active customer (RSS growth / customers)");
    println!(
        "{:>10} {:>10} {:>10} {:>10}",
        "customers", "identity", "journey", "both"
    );
    for n in counts {
        let per: Vec<String> = ["identity", "journey", "both"]
            .iter()
            .map(|stage| {
                let out = Command::new(&exe)
                    .env(CHILD_ENV, format!("{stage}:{n}"))
                    .output()
                    .expect("child runs");
                let grown: u64 = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0);
                format!("{:.0}", grown as f64 / n as f64)
            })
            .collect();
        println!("{:>10} {:>10} {:>10} {:>10}", n, per[0], per[1], per[2]);
    }
}
