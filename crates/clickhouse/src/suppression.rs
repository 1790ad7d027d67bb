//! The ids of erased people (`suppressed_ids`, written by `touchstream erase`), which the
//! processor never stores again and the collector can refuse (README, "Privacy").
//!
//! Why here and not only in the tables: an erasure deletes the person's rows, but their
//! events are still in the Kafka topics until retention removes them, and a replay, a
//! restarted consumer group or a late copy would bring the rows back. So both stages
//! drop any event naming a suppressed id, and purge the person from the state they hold
//! (links, histories, journeys), which the next snapshots then no longer contain.
//!
//! The list is loaded before the stages start and refreshed every
//! `processor.suppression_refresh_ms` (the collector: `collector.suppression_refresh_ms`,
//! when `collector.suppression` is on); each load that finds new ids bumps a generation,
//! which the stages compare with the one they last purged for.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// The suppressed ids and their generation.
#[derive(Debug, Default)]
pub struct Suppression {
    ids: RwLock<Arc<HashSet<String>>>,
    generation: AtomicU64,
}

#[derive(Row, Deserialize)]
struct IdRow {
    id: String,
}

impl Suppression {
    /// A list holding `ids` (generation 1 if any).
    pub fn with_ids(ids: HashSet<String>) -> Self {
        let s = Self::default();
        s.replace(ids);
        s
    }

    /// The current ids.
    pub fn ids(&self) -> Arc<HashSet<String>> {
        match self.ids.read() {
            Ok(ids) => Arc::clone(&ids),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Bumped whenever the list changes; 0 while it is empty and never loaded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether any of `ids` is suppressed (fast path: an empty list).
    pub fn any<'a>(&self, ids: impl IntoIterator<Item = Option<&'a str>>) -> bool {
        if self.generation() == 0 {
            return false;
        }
        let set = self.ids();
        ids.into_iter().flatten().any(|id| set.contains(id))
    }

    fn replace(&self, ids: HashSet<String>) {
        let changed = match self.ids.write() {
            Ok(mut cur) => {
                let changed = **cur != ids;
                if changed {
                    *cur = Arc::new(ids);
                }
                changed
            }
            Err(poisoned) => {
                *poisoned.into_inner() = Arc::new(ids);
                true
            }
        };
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Read `suppressed_ids` once.
    pub async fn load(&self, client: &clickhouse::Client) -> Result<(), clickhouse::error::Error> {
        let rows = client
            .query("SELECT id FROM suppressed_ids FINAL")
            .fetch_all::<IdRow>()
            .await?;
        self.replace(rows.into_iter().map(|r| r.id).collect());
        Ok(())
    }

    /// Reload every `every` until shutdown (a failed load keeps the list it has).
    pub async fn refresh(
        self: Arc<Self>,
        client: clickhouse::Client,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.load(&client).await {
                tracing::warn!(error = %e, "reloading suppressed ids failed; keeping the previous list");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_moves_only_when_the_ids_change() {
        let s = Suppression::default();
        assert_eq!(s.generation(), 0);
        assert!(!s.any([Some("u1")]));
        s.replace(HashSet::from(["u1".to_string()]));
        assert_eq!(s.generation(), 1);
        assert!(s.any([None, Some("u1")]));
        assert!(!s.any([Some("u2"), None]));
        s.replace(HashSet::from(["u1".to_string()]));
        assert_eq!(s.generation(), 1, "same ids: no change");
        s.replace(HashSet::from(["u1".to_string(), "a1".to_string()]));
        assert_eq!(s.generation(), 2);
    }
}
