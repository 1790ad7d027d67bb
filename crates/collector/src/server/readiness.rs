//! `/readyz`'s broker check, run in the background and served from its last result.
//!
//! Why cached: a readiness probe that asks the broker inline waits as long as the broker
//! takes to answer (up to the metadata timeout when it is unreachable or silent), so
//! probes pile up exactly when the broker is in trouble, and an orchestrator with a short
//! probe timeout marks a working collector dead. The check runs every
//! `readiness_interval_ms` in the background (and, when the cached result is older than
//! that, a probe starts one without waiting for it); `/readyz` only reads the result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The last broker check and whether one is running.
pub(super) struct Readiness {
    /// Result and time of the last finished check; `None` before the first.
    last: Mutex<Option<(bool, Instant)>>,
    /// A check is running: at most one at a time.
    pub(super) checking: AtomicBool,
    /// `readiness_interval_ms`.
    pub(super) interval: Duration,
}

/// What `/readyz` reports about the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BrokerState {
    /// The last check reached the broker.
    Reachable,
    /// The last check did not.
    Unreachable,
    /// No check has finished yet.
    Unknown,
}

impl Readiness {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            last: Mutex::new(None),
            checking: AtomicBool::new(false),
            interval,
        }
    }

    pub(super) fn last(&self) -> std::sync::MutexGuard<'_, Option<(bool, Instant)>> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached state, and whether it is older than the interval (or missing).
    pub(super) fn cached(&self) -> (BrokerState, bool) {
        match *self.last() {
            None => (BrokerState::Unknown, true),
            Some((ok, at)) => (
                if ok {
                    BrokerState::Reachable
                } else {
                    BrokerState::Unreachable
                },
                at.elapsed() >= self.interval,
            ),
        }
    }
}

/// Clears `checking` when a check ends, even if it panicked.
pub(super) struct Running<'a>(pub(super) &'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}
