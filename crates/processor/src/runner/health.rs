//! Whether each stage is working: a stage whose runs keep failing (an error or a panic,
//! restart after restart, with no batch stored in between) makes the processor's
//! `/healthz` answer 503, so an orchestrator restarts the process or pages someone
//! instead of leaving it half alive (README, "Processor health").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// One stage's run record: failures since its last stored batch, and the last one.
#[derive(Debug, Default)]
pub struct StageHealth {
    consecutive_failures: AtomicU32,
    last_error: Mutex<String>,
}

impl StageHealth {
    /// A run failed (or panicked) with `error`; returns the failures in a row.
    pub fn failed(&self, error: &str) -> u32 {
        match self.last_error.lock() {
            Ok(mut e) => *e = error.to_string(),
            Err(poisoned) => *poisoned.into_inner() = error.to_string(),
        }
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A batch was stored: the stage works again.
    pub fn progressed(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Failures since the last stored batch.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    fn last_error(&self) -> String {
        match self.last_error.lock() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Every stage's health, as `/healthz` reports it.
#[derive(Debug, Clone)]
pub struct Health {
    stages: Arc<Mutex<BTreeMap<&'static str, Arc<StageHealth>>>>,
    /// Failures in a row after which a stage counts as failing.
    unhealthy_after: u32,
}

impl Health {
    /// Health where a stage fails after `unhealthy_after` failed runs in a row (at least 1).
    pub fn new(unhealthy_after: u32) -> Self {
        Self {
            stages: Arc::default(),
            unhealthy_after: unhealthy_after.max(1),
        }
    }

    /// The record of stage `name` (created on first use).
    pub fn stage(&self, name: &'static str) -> Arc<StageHealth> {
        let mut stages = match self.stages.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        stages.entry(name).or_default().clone()
    }

    /// The failing stages with their failures in a row and last error; empty when healthy.
    pub fn failing(&self) -> Vec<(&'static str, u32, String)> {
        let stages = match self.stages.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        stages
            .iter()
            .filter(|(_, h)| h.consecutive_failures() >= self.unhealthy_after)
            .map(|(name, h)| (*name, h.consecutive_failures(), h.last_error()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_fails_after_enough_failures_in_a_row_and_recovers_on_progress() {
        let health = Health::new(3);
        let journey = health.stage("journey");
        assert!(health.failing().is_empty());
        journey.failed("boom 1");
        journey.failed("boom 2");
        assert!(health.failing().is_empty(), "two in a row: not yet");
        journey.progressed();
        journey.failed("boom 3");
        journey.failed("boom 4");
        assert!(health.failing().is_empty(), "progress reset the count");
        journey.failed("boom 5");
        assert_eq!(health.failing(), vec![("journey", 3, "boom 5".to_string())]);
        health.stage("journey").progressed();
        assert!(health.failing().is_empty());
    }
}
