//! Attempts still open at the release frontier, counted for the processor's gauges
//! (README, "Processor metrics": `touchstream_processor_funnel_open_attempts`,
//! `..._overdue`).
//!
//! Why from the written rows: every open attempt already has a `funnel_open_attempts`
//! row in its customer's [`LiveRow`](super::LiveRow)s (start, due time and reached step),
//! so the counts need no state of their own and always agree with the table.

use super::JourneyStage;

/// Open attempts of one funnel at one reached step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAttemptCount {
    /// Funnel index, as in [`crate::FunnelSet::funnels`].
    pub funnel: usize,
    /// Step reached so far, 1-based.
    pub step: u8,
    /// Attempts open at the release frontier.
    pub open: u64,
    /// For each share asked for, in order: how many of them have used at least that share
    /// of their time from start to due (`frontier − start ≥ share × (due − start)`).
    pub overdue: Vec<u64>,
}

impl JourneyStage {
    /// Open attempts per funnel and reached step (sorted, only pairs with one open), and
    /// how many are past each of `shares` of their time to due, as of the release
    /// frontier. Walks every customer: call it once per flush, not per event.
    pub fn open_attempts(&self, shares: &[f64]) -> Vec<OpenAttemptCount> {
        let Some(frontier) = self.frontier_ms else {
            return Vec::new();
        };
        let mut counts: Vec<OpenAttemptCount> = Vec::new();
        for customer in self.customers.values() {
            for row in customer.live.iter().filter(|r| r.open_step > 0) {
                let Some(funnel) = row.funnel.map(usize::from) else {
                    continue;
                };
                let at = match counts
                    .binary_search_by(|c| (c.funnel, c.step).cmp(&(funnel, row.open_step)))
                {
                    Ok(i) => i,
                    Err(i) => {
                        counts.insert(
                            i,
                            OpenAttemptCount {
                                funnel,
                                step: row.open_step,
                                open: 0,
                                overdue: vec![0; shares.len()],
                            },
                        );
                        i
                    }
                };
                let count = &mut counts[at];
                count.open += 1;
                let (start, due) = (row.partition_ms, row.closed_by_ms);
                let elapsed = frontier.saturating_sub(start) as f64;
                let allowed = due.saturating_sub(start) as f64;
                for (n, share) in count.overdue.iter_mut().zip(shares) {
                    if elapsed >= share * allowed {
                        *n += 1;
                    }
                }
            }
        }
        counts
    }
}
