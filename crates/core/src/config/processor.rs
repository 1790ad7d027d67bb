//! The `[processor]` section: consumer group, metrics address, the session and lateness
//! rules' parameters, batching and snapshot cadence, and the funnel and catalog files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Stream processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Kafka consumer group. Default `touchstream-processor`.
    pub group_id: String,
    /// Metrics listen address. Default `127.0.0.1:9464`.
    pub metrics_listen: String,
    /// Inactivity gap that starts a new session, seconds. Default 1800 (30 min).
    pub session_gap_secs: u64,
    /// How long events wait behind the partition watermark before their journey rows are
    /// first written, seconds. Default 300 (5 min). An event that arrives later still
    /// finds its place (see `correction_horizon_secs`); this only sets how soon rows appear
    /// and how often they are rewritten.
    pub allowed_lateness_secs: u64,
    /// The correction horizon, seconds: an event that arrives behind the release frontier
    /// (watermark − lateness) but no further back than this is placed in its customer's
    /// journey and the sessions and funnel attempts it changes are rewritten, so the
    /// tables equal a time-ordered run whatever the arrival order. Older events are stored
    /// as late (`is_late = 1`) and counted. Also how long an idle customer's state is kept.
    /// Default 0: the longest funnel window plus the session gap, at least 7 days.
    pub correction_horizon_secs: u64,
    /// Flush a ClickHouse batch at this many input messages (about as many rows per
    /// table). Default 50000: only a backlog fills it (at 5k ev/s `batch_max_ms` cuts
    /// first), and every insert makes a ClickHouse part that merges rewrite later; 50k
    /// instead of 10k cut ClickHouse's CPU during a 1M-event catch-up by about 35 %.
    pub batch_max_rows: usize,
    /// Flush a ClickHouse batch at least this often, ms. Default 300: a row is written
    /// within about twice this after its event reaches Kafka.
    pub batch_max_ms: u64,
    /// Save partition state snapshots and commit offsets at most this often, ms (flushes
    /// in between write rows only). Larger: less work per event; a crash replays up to
    /// this much input (rows are deduplicated, so results do not change). Default 5000.
    /// The pause after a snapshot is also at least 10× what encoding it took, so large
    /// states (a million customers: 0.3–2 s per snapshot) cost at most ~10 % of a stage.
    pub snapshot_interval_ms: u64,
    /// Between whole snapshots, a partition's save holds only what changed since its
    /// previous save (a delta, `processor_state_delta`); after this many deltas the next
    /// save is whole again (a compaction), and a restore reads the whole snapshot plus
    /// at most this many deltas. 0 saves whole snapshots only. Default 24 (2 minutes at
    /// the default interval).
    pub snapshot_compact_after_deltas: u32,
    /// Also compact once a partition's deltas since its whole snapshot add up to more
    /// than this share of that snapshot's bytes (stored, compressed): a partition where
    /// most keys change costs no more than whole snapshots would. Default 0.5.
    pub snapshot_compact_delta_share: f64,
    /// Cut batches a stage may be writing at once (rows to ClickHouse, records to
    /// Kafka) while it processes the next input. More overlap the inserts' round trips;
    /// each holds one batch in memory. A cut that saves snapshots and commits offsets
    /// does so only after every earlier write finished, so offsets never pass unstored
    /// rows. Default 4; 1 writes one batch at a time.
    pub writes_in_flight: usize,
    /// Funnel definitions file. Default `deploy/funnels.toml`.
    pub funnels_path: PathBuf,
    /// Touchpoint catalog file (event → stage, channel). Default `deploy/catalog.toml`.
    pub catalog_path: PathBuf,
    /// How far before a survey answer the touchpoint it rates may lie, seconds (README
    /// "Feedback attribution"). Default 259200 (3 days). Keep it within the correction
    /// horizon less the lateness of answers: older touchpoints are forgotten.
    pub feedback_window_secs: u64,
    /// After this many seconds without input, a journey partition's watermark moves to
    /// the wall clock so open funnel attempts still close as dropped. 0 turns it off
    /// (replays of old data). Default 30.
    pub idle_watermark_secs: u64,
    /// Pause before a stage that failed (e.g. Kafka produce errors, or a panic) restarts
    /// from its last saved state, ms; doubled for each failure in a row, at most 60 s.
    /// Default 1000.
    pub restart_backoff_ms: u64,
    /// After this many failed runs of a stage in a row (errors or panics, each restarted
    /// from its last saved state, with no batch stored in between), the processor's
    /// `/healthz` answers 503 naming the stage. Default 5.
    pub unhealthy_after_failures: u32,
    /// The hot-customer cap: at most this many events of one customer are placed into
    /// sessions and funnels per window of `session_gap_secs` of event time (windows
    /// aligned to the epoch), the first in `(event_time, event_id)` order, whatever the
    /// arrival order; the others are stored (touchpoint rows without a session) and
    /// counted in `touchstream_processor_hot_customer_events_total`. Bounds what one bot
    /// or shared kiosk id costs. 0: no cap. Default 1000.
    pub hot_customer_max_events: usize,
    /// Events kept per not-yet-linked anonymous id, to re-send under the user when the
    /// id is linked; past it the oldest are not re-sent (counted in
    /// `touchstream_processor_reattribution_skipped_total`). Default 500.
    pub unlinked_history_max_events: usize,
    /// An unlinked anonymous id's history is forgotten once its partition's newest event
    /// is this far past the id's last one, seconds. Default 691200 (8 days).
    pub unlinked_history_ttl_secs: u64,
    /// Memory budget of all unlinked histories of one identity partition, bytes
    /// (estimated); past it whole histories are evicted, the idlest first
    /// (`touchstream_processor_histories_evicted_total`). Default 268435456 (256 MiB).
    pub unlinked_history_max_bytes: usize,
    /// How often the processor reloads the erased people's ids (`suppressed_ids`, written
    /// by `touchstream erase`), ms; an erasure reaches a running processor's state within
    /// this plus `snapshot_interval_ms`. Default 5000.
    pub suppression_refresh_ms: u64,
    /// An identity link unused for this many days (of event time) leaves the identity
    /// stage's memory; the next event of its anonymous id looks it up in `identities`
    /// again, so the first link still wins. 0 keeps links in memory forever. Default 400.
    pub identity_link_ttl_days: u32,
    /// How often (wall clock) the identity stage looks for links unused past
    /// `identity_link_ttl_days`; a link leaves memory at the second look that finds it
    /// unused, so its `identities` row is long stored by then. Seconds. Default 60.
    pub identity_link_sweep_secs: u64,
    /// Stable name of this processor replica (e.g. the pod name of a StatefulSet), used
    /// as Kafka static group membership (`group.instance.id`, suffixed per stage): a
    /// replica that crashes and restarts under the same name gets its partitions back
    /// without the group waiting for the dead member's session to expire. Every running
    /// replica needs its own name. Default empty: dynamic membership.
    pub instance_id: String,
    /// Give free pages of the C heap (librdkafka's message buffers) back to the OS this
    /// often, ms; without it the buffers of a burst or a backlog stay resident (see
    /// `touchstream_core::memory`). 0 turns it off. Default 5000.
    pub release_memory_ms: u64,
    /// Shares of an open funnel attempt's time from start to due (`due_ms` in
    /// `funnel_open_attempts`) at which it counts as overdue in
    /// `touchstream_processor_funnel_open_attempts_overdue{share=...}` (the
    /// `ComplaintsAwaitingFollowUp` alert reads `0.5` and `0.9`). Each in (0, 1], at most
    /// [`MAX_OVERDUE_SHARES`] (one series per funnel, step and share). An attempt past
    /// 1.0 at the release frontier closes as dropped, so 1.0 counts the ones due right at
    /// the frontier. Default `[0.5, 0.9]`.
    pub open_attempt_overdue_shares: Vec<f64>,
}

/// Most entries in `open_attempt_overdue_shares`: keeps the gauge's series bounded.
pub const MAX_OVERDUE_SHARES: usize = 8;

impl ProcessorConfig {
    /// Range checks serde cannot express.
    pub(super) fn problem(&self) -> Option<String> {
        let share = self.snapshot_compact_delta_share;
        if share.is_nan() || share < 0.0 {
            return Some(format!(
                "processor.snapshot_compact_delta_share: {} is not a share >= 0",
                self.snapshot_compact_delta_share
            ));
        }
        let shares = &self.open_attempt_overdue_shares;
        if shares.len() > MAX_OVERDUE_SHARES {
            return Some(format!(
                "processor.open_attempt_overdue_shares: at most {MAX_OVERDUE_SHARES} shares, got {}",
                shares.len()
            ));
        }
        shares
            .iter()
            .find(|s| !(**s > 0.0 && **s <= 1.0))
            .map(|s| format!("processor.open_attempt_overdue_shares: {s} is not in (0, 1]"))
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            group_id: "touchstream-processor".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            session_gap_secs: 1800,
            allowed_lateness_secs: 300,
            correction_horizon_secs: 0,
            batch_max_rows: 50_000,
            batch_max_ms: 300,
            snapshot_interval_ms: 5000,
            snapshot_compact_after_deltas: 24,
            snapshot_compact_delta_share: 0.5,
            writes_in_flight: 4,
            funnels_path: PathBuf::from("deploy/funnels.toml"),
            catalog_path: PathBuf::from("deploy/catalog.toml"),
            feedback_window_secs: 3 * 24 * 3600,
            idle_watermark_secs: 30,
            restart_backoff_ms: 1000,
            unhealthy_after_failures: 5,
            hot_customer_max_events: 1000,
            unlinked_history_max_events: 500,
            unlinked_history_ttl_secs: 8 * 24 * 3600,
            unlinked_history_max_bytes: 256 << 20,
            suppression_refresh_ms: 5000,
            identity_link_ttl_days: 400,
            identity_link_sweep_secs: 60,
            instance_id: String::new(),
            release_memory_ms: 5000,
            open_attempt_overdue_shares: vec![0.5, 0.9],
        }
    }
}
