//! Giving freed memory back to the operating system.
//!
//! The `touchstream` binary's default build replaces `malloc` process-wide with jemalloc,
//! which purges on its own and reports its figures ([`heap_stats`]; docs/ops.md
//! "Memory"). What follows is for a build without it (`--no-default-features`, for heap
//! profilers), where librdkafka, which is C, allocates through glibc's `malloc`: every message
//! fetched by a consumer and every record queued by a producer is a glibc allocation.
//! glibc returns freed memory to the kernel only from the top of each arena, so after a
//! burst (a processor catching up on a backlog, a traffic spike) the freed message
//! buffers in the middle of its arenas stay resident for the life of the process. Measured with `touchstream bench`: a
//! processor that read a backlog of 100k events still held ~100 MB of such freed pages
//! (the resting RSS fell from ~230 MB to ~130 MB after one `malloc_trim`).
//!
//! [`limit_c_heap_arenas`] keeps glibc to a couple of arenas for the same reason.
//! [`release_free_memory`] asks glibc to hand every whole free page back
//! (`malloc_trim(0)`); [`trim_periodically`] does it on an interval from a blocking
//! thread. It takes each arena's lock in turn while it walks that arena's free lists
//! (milliseconds), and memory given back costs a page fault when it is used again, so it
//! runs every few seconds, not after every batch. Elsewhere than glibc it does nothing,
//! and so does a process whose binary said that it replaced `malloc`
//! ([`malloc_replaced`]): glibc's arenas are then empty and there is nothing to trim.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Set once the binary's global allocator also serves C code's `malloc` (the
/// `touchstream` binary's default jemalloc build): see [`malloc_replaced`].
static MALLOC_REPLACED: AtomicBool = AtomicBool::new(false);

/// Tell this module that `malloc` itself is replaced for the whole process (jemalloc
/// with unprefixed symbols, as the `touchstream` binary's default build links it), so
/// librdkafka allocates through it too: glibc's arenas then hold nothing, and
/// [`limit_c_heap_arenas`] and [`trim_periodically`] do nothing instead of tuning and
/// walking them. jemalloc purges freed pages on its own (docs/ops.md "Memory"). Call
/// at start, before either.
pub fn malloc_replaced() {
    MALLOC_REPLACED.store(true, Ordering::Relaxed);
}

fn is_malloc_replaced() -> bool {
    MALLOC_REPLACED.load(Ordering::Relaxed)
}

/// Return free pages of the C heap to the OS. Returns whether anything was released
/// (always `false` where there is no `malloc_trim`).
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu"),
    expect(unsafe_code, reason = "malloc_trim is a C function (FFI)")
)]
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it has
        // no preconditions on the caller.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// glibc arenas for C code when `MALLOC_ARENA_MAX` is not set. glibc gives every thread
/// that mallocs under contention an arena of its own, up to 8 per core; librdkafka runs a
/// thread per broker connection and client, and each arena keeps memory that
/// `malloc_trim` cannot return (its live blocks, the pages around them). Measured with
/// `touchstream bench` at 10k customers: 940 instead of ~1,050 bytes per customer at
/// rest. librdkafka's allocations are few next to the Rust side's (jemalloc), so two
/// arenas do not make its threads wait on each other noticeably.
pub const C_HEAP_ARENAS: i32 = 2;

/// Limit glibc to [`C_HEAP_ARENAS`] arenas unless `MALLOC_ARENA_MAX` is set (then glibc
/// has already applied it) or `malloc` is replaced ([`malloc_replaced`]). Call at
/// start, before the Kafka clients' threads exist. Returns whether the limit was set
/// here.
#[cfg_attr(
    all(target_os = "linux", target_env = "gnu"),
    expect(unsafe_code, reason = "mallopt is a C function (FFI)")
)]
pub fn limit_c_heap_arenas() -> bool {
    if is_malloc_replaced() || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's tuning parameters under its own lock.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, C_HEAP_ARENAS) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Call [`release_free_memory`] every `every` until `shutdown`. `every` of zero, or
/// `malloc` replaced ([`malloc_replaced`]): never, and it returns at once.
pub async fn trim_periodically(every: Duration, shutdown: CancellationToken) {
    if every.is_zero() || is_malloc_replaced() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let released = tokio::task::spawn_blocking(release_free_memory)
            .await
            .unwrap_or(false);
        tracing::debug!(
            released,
            took_ms = started.elapsed().as_secs_f64() * 1000.0,
            "returned free C heap pages to the OS"
        );
    }
}

/// The global allocator's own account of the heap, in bytes (jemalloc's `stats.*`).
/// Next to the RSS it tells live data from allocator overhead: `allocated` is what the
/// program holds, `active` the pages those allocations sit in (the gap is fragmentation
/// within pages), `resident` what the allocator keeps mapped in RAM (freed pages not yet
/// given back count here), `metadata` the allocator's own bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in the pages that hold live allocations.
    pub active: u64,
    /// Bytes the allocator keeps resident (active, freed-not-yet-returned, metadata).
    pub resident: u64,
    /// The allocator's own bookkeeping.
    pub metadata: u64,
    /// Address space kept mapped but not resident (returned to the OS).
    pub retained: u64,
}

/// The allocator's figures now, where the binary's global allocator is jemalloc (the
/// `jemalloc-stats` feature, set by the `touchstream` binary's default build); `None`
/// otherwise. Refreshes jemalloc's cached statistics first (`epoch`), a few microseconds.
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(feature = "jemalloc-stats")]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().ok()?;
        let n = |r: Result<usize, tikv_jemalloc_ctl::Error>| r.ok().map(|v| v as u64);
        Some(HeapStats {
            allocated: n(stats::allocated::read())?,
            active: n(stats::active::read())?,
            resident: n(stats::resident::read())?,
            metadata: n(stats::metadata::read())?,
            retained: n(stats::retained::read())?,
        })
    }
    #[cfg(not(feature = "jemalloc-stats"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(unsafe_code, reason = "the test needs blocks from the C heap")]
    fn release_after_freeing_a_large_c_heap_block_reports_it() {
        // Many mid-sized blocks from the C heap (below the mmap threshold, so they live
        // in the arena), then free all but the last: the freed pages sit below a live
        // block, where only malloc_trim can return them.
        //
        // Where jemalloc replaces `malloc` in this test binary (the workspace build
        // unifies the binary's `jemalloc` feature into this crate), the blocks come from
        // jemalloc, which reports them, and glibc's arenas have nothing to trim: then
        // there is nothing of glibc's to check.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe {
            let before = heap_stats();
            let blocks: Vec<*mut libc::c_void> =
                (0..256).map(|_| libc::malloc(64 * 1024)).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            let c_heap_is_jemalloc = matches!(
                (before, heap_stats()),
                (Some(b), Some(a)) if a.allocated >= b.allocated + 8 * 1024 * 1024
            );
            for p in &blocks[..blocks.len() - 1] {
                libc::free(*p);
            }
            if !c_heap_is_jemalloc {
                assert!(
                    release_free_memory(),
                    "16 MB of free pages below a live block"
                );
            }
            libc::free(blocks[blocks.len() - 1]);
        }
    }

    #[test]
    fn arena_limit_is_set_unless_the_environment_sets_one() {
        let set_here = limit_c_heap_arenas();
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            assert!(!set_here);
        } else {
            assert_eq!(set_here, cfg!(all(target_os = "linux", target_env = "gnu")));
        }
    }

    #[tokio::test]
    async fn zero_interval_returns_at_once_and_shutdown_stops_the_loop() {
        trim_periodically(Duration::ZERO, CancellationToken::new()).await;
        let token = CancellationToken::new();
        let task = tokio::spawn(trim_periodically(Duration::from_millis(10), token.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops on shutdown")
            .expect("no panic");
    }
}
