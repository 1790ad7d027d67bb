//! What the journey stage keeps per active customer, counted allocation by allocation
//! (docs/performance.md, "memory per active customer").
//!
//! The shape of the memory bench (`benches/memory.rs`, `touchstream bench --only
//! memory`): customer `i` sends one signed-in `Product Viewed`, so the stage holds an open
//! session and an open `web_checkout` attempt for each. A counting global allocator sums
//! the allocations still live after the last event, each rounded up to its jemalloc size
//! class (the processor's allocator keeps no header, but rounds every small allocation up
//! to a class), so the figure is exact and the same on every run, unlike resident memory.

#![expect(unsafe_code, reason = "a counting global allocator")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use touchstream_journey::{IdentityConfig, IdentityStage, JourneyStage, RoutedEvent};

#[path = "support/memory_shape.rs"]
mod memory_shape;

/// Bytes of live allocations, each in its jemalloc size class, and their number.
static BYTES: AtomicI64 = AtomicI64::new(0);
static COUNT: AtomicI64 = AtomicI64::new(0);
/// Allocations made, freed or not.
static MADE: AtomicI64 = AtomicI64::new(0);
/// The counters are global: one measurement at a time (tests run in parallel).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(size_class(l.size()), Relaxed);
        COUNT.fetch_add(1, Relaxed);
        MADE.fetch_add(1, Relaxed);
        // SAFETY: the caller's layout, as received.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BYTES.fetch_sub(size_class(l.size()), Relaxed);
        COUNT.fetch_sub(1, Relaxed);
        // SAFETY: allocated above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// jemalloc's size class of an allocation of `size` bytes: 8, 16, then steps of 16 up to
/// 128, then four classes per doubling (160, 192, 224, 256, 320, ...); pages beyond.
fn size_class(size: usize) -> i64 {
    let class = if size <= 8 {
        8
    } else if size <= 128 {
        size.div_ceil(16) * 16
    } else if size <= 16 * 1024 {
        let group = size.next_power_of_two() / 2;
        let step = group / 4;
        size.div_ceil(step) * step
    } else {
        size.div_ceil(4096) * 4096
    };
    i64::try_from(class).unwrap_or(i64::MAX)
}

/// Customer `i`'s event (of `n`), routed to its customer as stage 1 routes it.
fn routed(i: usize, n: usize) -> RoutedEvent {
    let event = memory_shape::event(i, n);
    RoutedEvent {
        customer_id: format!("u-7f3a9c21-{i}"),
        event: event.into(),
        version: i as u64 + 1,
        reattributed: false,
    }
}

/// The memory bench's journey stage, tracking changes as the processor's does.
fn journey_stage() -> JourneyStage {
    let mut stage = memory_shape::journey_stage();
    stage.track_changes();
    stage
}

/// (bytes, allocations) per customer the stage keeps after `n` customers.
fn kept_per_customer(n: usize) -> (f64, f64) {
    let mut stage = journey_stage();
    let kept = live_per_customer(n, || {
        fill_journey(&mut stage, n);
        stage.mark_saved();
    });
    assert_eq!(stage.customer_count(), n, "every customer active");
    assert_eq!(stage.buffered_events(), 0, "every event released");
    drop(stage);
    kept
}

/// (bytes, allocations) per customer that `fill` left live, for `n` customers.
fn live_per_customer(n: usize, fill: impl FnOnce()) -> (f64, f64) {
    let (bytes, count) = (BYTES.load(Relaxed), COUNT.load(Relaxed));
    fill();
    (
        (BYTES.load(Relaxed) - bytes) as f64 / n as f64,
        (COUNT.load(Relaxed) - count) as f64 / n as f64,
    )
}

/// Customer `i`'s one event for each of `n` customers, the watermark moved along and the
/// output taken as the processor does.
fn fill_journey(stage: &mut JourneyStage, n: usize) {
    for i in 0..n {
        let seq = i as u64 + 1;
        stage.process(routed(i, n), seq);
        memory_shape::after_event(stage, i, n, seq);
    }
    memory_shape::finish(stage, n as u64);
}

/// The state per customer (10k customers, the bench's smaller count): its id and its
/// event's id (32 bytes each), the boxed customer (96), its one history event (88, in
/// 96), its two written rows (96), its timer entry (BTree nodes, ~49), its share of the
/// customer map (25 bytes a bucket at 61 % load, ~41) and of the change set's room kept
/// between saves: 468 bytes. 516 with the 120-byte customer struct and room for 4,096
/// changed ids before; the bound leaves room for a few bytes, not for a size class.
#[test]
fn the_journey_state_per_customer_stays_under_480_bytes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (bytes, allocations) = kept_per_customer(10_000);
    println!("{bytes:.1} bytes in {allocations:.2} allocations per customer");
    assert!(
        bytes <= 480.0,
        "{bytes:.1} bytes per customer ({allocations:.2} allocations)"
    );
    assert!(
        allocations <= 5.2,
        "{allocations:.2} allocations per customer"
    );
}

/// (bytes, allocations) per customer the identity stage keeps after `n` customers, each
/// linked by one signed-in event (the memory bench's shape).
fn identity_kept_per_customer(n: usize) -> (f64, f64) {
    let mut stage = IdentityStage::new(IdentityConfig::default());
    stage.track_changes();
    let kept = live_per_customer(n, || {
        for i in 0..n {
            let seq = i as u64 + 1;
            let event = std::sync::Arc::unwrap_or_clone(routed(i, n).event);
            drop(stage.process(event, seq));
        }
        stage.mark_saved();
    });
    assert_eq!(stage.link_count(), n, "every customer linked");
    drop(stage);
    kept
}

/// A link is one allocation (both ids, 64 bytes here) plus its share of the link map
/// (32-byte entries): ~88 bytes in 1.0 allocations. Two small allocations per link
/// before (anonymous id and user apart) left a burst's short-lived strings' pages
/// half-full around them: ~260 of the ~1,050 resting bytes per customer at 10k in the
/// bench were such pages (docs/performance.md "2026-12-04").
#[test]
fn an_identity_link_is_one_allocation() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (bytes, allocations) = identity_kept_per_customer(10_000);
    println!("{bytes:.1} bytes in {allocations:.2} allocations per linked customer");
    assert!(allocations <= 1.05, "{allocations:.2} allocations per link");
    assert!(bytes <= 100.0, "{bytes:.1} bytes per link");
}

/// Allocations `take_output` makes per event when each customer's one event is released:
/// its `touchpoint_journey` and `customer_touchpoints` rows and its session row share the
/// ids and names the state holds (each allocates only its hex id), then the customer's
/// open-attempt row: 13 per event. 24 when every row copied its strings; a backlog's
/// short-lived allocations cost CPU and leave pages half full behind them
/// (docs/performance.md).
#[test]
fn the_touchpoint_rows_share_the_states_strings() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let n = 10_000;
    let mut stage = journey_stage();
    for i in 0..n {
        stage.process(routed(i, n), i as u64 + 1);
    }
    memory_shape::release_all(&mut stage, n as u64);
    let made = MADE.load(Relaxed);
    let out = stage.take_output();
    let per_event = (MADE.load(Relaxed) - made) as f64 / n as f64;
    assert_eq!(out.touchpoints.len(), n);
    assert_eq!(out.customer_touchpoints.len(), n);
    println!("{per_event:.2} allocations per event in take_output");
    assert!(per_event <= 13.05, "{per_event:.2} allocations per event");
}
