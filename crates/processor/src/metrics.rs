//! The processor's Prometheus metrics, declared once (README, "Processor metrics"; docs/design.md §7).
//!
//! `touchstream_processor_<name>_<unit>`; labels are stage, table, topic partition number,
//! funnel name and step number: all bounded by configuration, never ids.

use std::sync::Arc;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All processor metrics.
pub struct Metrics {
    registry: Registry,
    /// Input messages by stage and outcome (`processed`, `skipped_replay`, `undecodable`).
    pub messages: IntCounterVec,
    /// Messages not yet committed (end offset − committed offset), by stage, topic and
    /// partition; measured every 5 s by [`crate::lag`].
    pub consumer_lag: IntGaugeVec,
    /// Rows per ClickHouse insert, by table.
    pub batch_rows: HistogramVec,
    /// ClickHouse insert latency, by table.
    pub insert_seconds: HistogramVec,
    /// Failed ClickHouse insert attempts (each retried), by table.
    pub insert_failures: IntCounterVec,
    /// Earlier anonymous events re-sent under a newly linked user.
    pub reattributed_events: IntCounterVec,
    /// Earlier anonymous events not re-sent at a link: their history had overflowed.
    pub reattribution_skipped: IntCounterVec,
    /// Unlinked anonymous histories forgotten by their TTL.
    pub histories_expired: IntCounterVec,
    /// Unlinked anonymous histories evicted to keep a partition within its byte budget.
    pub histories_evicted: IntCounterVec,
    /// Identity links that left memory unused ([`touchstream_core::config::ProcessorConfig::identity_link_ttl_days`]).
    pub links_evicted: IntCounterVec,
    /// Evicted identity links looked up again for a returning anonymous id.
    pub links_restored: IntCounterVec,
    /// Identity links held in memory per partition.
    pub identity_links: IntGaugeVec,
    /// Estimated memory of a partition's unlinked anonymous histories, bytes.
    pub unlinked_history_bytes: IntGaugeVec,
    /// Events of erased people dropped (never stored again), by stage.
    pub suppressed_events: IntCounterVec,
    /// Stage runs that failed and were restarted, by stage and cause (`error`, `panic`).
    pub stage_restarts: IntCounterVec,
    /// Rows ClickHouse refused for good, sent to the dead-letter topic, by table.
    pub rejected_rows: IntCounterVec,
    /// Partition snapshots saved, by stage and kind (`whole`, `delta`).
    pub snapshots: IntCounterVec,
    /// Their bytes as stored (compressed), by stage and kind.
    pub snapshot_bytes: IntCounterVec,
    /// Events stored late (`is_late`, not placed), by stage and cause: `beyond_horizon`
    /// (older than the correction horizon behind the release frontier),
    /// `before_checkpoint` (inside the horizon but before the customer's checkpoint),
    /// `reattributed_too_old` (a re-attributed copy older than the horizon).
    pub late_events: IntCounterVec,
    /// Events placed in their customer's history: with `late_events`, the denominator of
    /// the late share (docs/ops.md, LateEventsShareHigh).
    pub placed_events: IntCounterVec,
    /// Events over the hot-customer cap (`processor.hot_customer_max_events`): stored
    /// without a session, not placed, by stage.
    pub hot_customer_events: IntCounterVec,
    /// Events that arrived behind the release frontier but inside the horizon: placed,
    /// and the rows they change rewritten.
    pub corrected_events: IntCounterVec,
    /// Events an identity partition re-sent after restarting from its saved state,
    /// recognised as copies of events already processed and skipped.
    pub redelivered_events: IntCounterVec,
    /// Later conflicting identity links, recorded and not applied.
    pub identity_conflicts: IntCounterVec,
    /// Funnels found added, changed, removed or moved against a restored snapshot, by
    /// funnel and change (one per partition restored).
    pub funnel_definition_changes: IntCounterVec,
    /// Closed funnel attempts by funnel and outcome (`converted`, `dropped`).
    pub funnel_attempts: IntCounterVec,
    /// Closed attempts that reached a step, by funnel and step (1-based).
    pub funnel_step_reached: IntCounterVec,
    /// Closed attempts that dropped at a step (reached it, not the next), by funnel and step.
    pub funnel_step_dropped: IntCounterVec,
    /// Closed attempts that converted, by funnel.
    pub funnel_converted: IntCounterVec,
    /// Event-time watermark of each partition, seconds since the epoch.
    pub watermark_seconds: IntGaugeVec,
    /// Journey events held for the watermark, per partition.
    pub buffered_events: IntGaugeVec,
    /// Funnel attempts open at the release frontier, by funnel and step reached (every
    /// step but the last, 0 when none; summed over the partitions this process holds).
    pub funnel_open_attempts: IntGaugeVec,
    /// Of those, the ones that used at least `share` of their time from start to due, by
    /// funnel, step and share (`processor.open_attempt_overdue_shares`).
    pub funnel_open_attempts_overdue: IntGaugeVec,
    /// Touchpoints by event name (catalog events only; others by kind or `other`), stage
    /// and channel: complaint spikes and channel mix for dashboards.
    pub touchpoints: IntCounterVec,
    /// Time from step 1 to each later step of closed attempts (e.g. complaint → staff
    /// follow-up), seconds.
    pub step_delay_seconds: HistogramVec,
    /// Survey answers by the touchpoint they rate (catalog events; `other`) and scale,
    /// counted when first written (README "Feedback attribution").
    pub feedback_responses: IntCounterVec,
    /// Sum of those answers' scores, by touchpoint and scale.
    pub feedback_score_sum: CounterVec,
    /// NPS answers of 9–10, by touchpoint.
    pub feedback_promoters: IntCounterVec,
    /// NPS answers of 0–6, by touchpoint.
    pub feedback_detractors: IntCounterVec,
    /// Answers written without a touchpoint, and answers whose touchpoint changed after
    /// the first row, by `outcome` (`unattributed`, `reattributed`).
    pub feedback_attribution: IntCounterVec,
    /// The catalog's `floor` per touchpoint and measure (`csat`, `nps`, `ces`), for
    /// TouchpointBelowFloor.
    pub touchpoint_floor: GaugeVec,
    /// The catalog's `target` per touchpoint and measure.
    pub touchpoint_target: GaugeVec,
    /// The allocator's account of the heap by `kind` (`allocated`, `active`, `resident`,
    /// `metadata`, `retained`: [`touchstream_core::memory::HeapStats`]), read at each
    /// scrape; absent where the allocator cannot report (a build without jemalloc).
    pub allocator_bytes: IntGaugeVec,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let messages = counter(
            "touchstream_processor_messages_total",
            "Input messages by stage and outcome",
            &["stage", "outcome"],
        )?;
        let insert_failures = counter(
            "touchstream_processor_clickhouse_insert_failures_total",
            "Failed ClickHouse insert attempts (retried with backoff)",
            &["table"],
        )?;
        let reattributed_events = counter(
            "touchstream_processor_reattributed_events_total",
            "Earlier anonymous events re-sent under a newly linked user",
            &["stage"],
        )?;
        let reattribution_skipped = counter(
            "touchstream_processor_reattribution_skipped_total",
            "Earlier anonymous events not re-sent at a link because their id's history had overflowed (processor.unlinked_history_max_events)",
            &["stage"],
        )?;
        let histories_expired = counter(
            "touchstream_processor_histories_expired_total",
            "Unlinked anonymous histories forgotten by their TTL (processor.unlinked_history_ttl_secs)",
            &["stage"],
        )?;
        let histories_evicted = counter(
            "touchstream_processor_histories_evicted_total",
            "Unlinked anonymous histories evicted, idlest first, to keep a partition within processor.unlinked_history_max_bytes",
            &["stage"],
        )?;
        let links_evicted = counter(
            "touchstream_processor_identity_links_evicted_total",
            "Identity links that left memory after processor.identity_link_ttl_days unused",
            &["stage"],
        )?;
        let links_restored = counter(
            "touchstream_processor_identity_links_restored_total",
            "Evicted identity links looked up again in identities for a returning anonymous id",
            &["stage"],
        )?;
        let identity_links = IntGaugeVec::new(
            Opts::new(
                "touchstream_processor_identity_links",
                "Identity links held in memory by an identity partition",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(identity_links.clone()))?;
        let unlinked_history_bytes = IntGaugeVec::new(
            Opts::new(
                "touchstream_processor_unlinked_history_bytes",
                "Estimated memory of a partition's unlinked anonymous histories, bytes",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(unlinked_history_bytes.clone()))?;
        let suppressed_events = counter(
            "touchstream_processor_suppressed_events_total",
            "Events naming an erased person (suppressed_ids), dropped without storing",
            &["stage"],
        )?;
        let stage_restarts = counter(
            "touchstream_processor_stage_restarts_total",
            "Stage runs that failed (error) or panicked and were restarted from the last snapshots",
            &["stage", "cause"],
        )?;
        let rejected_rows = counter(
            "touchstream_processor_rejected_rows_total",
            "Rows ClickHouse refused for good (permanent insert errors), sent to the dead-letter topic",
            &["table"],
        )?;
        let snapshots = counter(
            "touchstream_processor_snapshots_total",
            "Partition state saves, by kind: whole snapshots and deltas (changes since the previous save)",
            &["stage", "kind"],
        )?;
        let snapshot_bytes = counter(
            "touchstream_processor_snapshot_bytes_total",
            "Bytes of partition state saved (compressed, as stored), by kind",
            &["stage", "kind"],
        )?;
        let late_events = counter(
            "touchstream_processor_late_events_total",
            "Events stored late (is_late, not placed in sessions or funnels), by cause",
            &["stage", "cause"],
        )?;
        let hot_customer_events = counter(
            "touchstream_processor_hot_customer_events_total",
            "Events over the hot-customer cap (events per customer per session-gap window): stored without a session, not placed",
            &["stage"],
        )?;
        let placed_events = counter(
            "touchstream_processor_placed_events_total",
            "Events placed in their customer's history (sessions, funnels)",
            &["stage"],
        )?;
        let corrected_events = counter(
            "touchstream_processor_corrected_events_total",
            "Events behind the release frontier but inside the correction horizon: placed, rows rewritten",
            &["stage"],
        )?;
        let redelivered_events = counter(
            "touchstream_processor_redelivered_events_total",
            "Re-sent copies of events already processed (after a restart upstream), skipped",
            &["stage"],
        )?;
        let identity_conflicts = counter(
            "touchstream_processor_identity_conflicts_total",
            "Conflicting anonymous-to-user links, recorded and not applied",
            &["stage"],
        )?;
        let funnel_definition_changes = counter(
            "touchstream_processor_funnel_definition_changes_total",
            "Funnels whose definition differs from a restored partition snapshot (changed/removed: saved state dropped)",
            &["funnel", "change"],
        )?;
        let funnel_attempts = counter(
            "touchstream_processor_funnel_attempts_total",
            "Closed funnel attempts by outcome",
            &["funnel", "outcome", "breakdown"],
        )?;
        let funnel_step_reached = counter(
            "touchstream_processor_funnel_step_reached_total",
            "Closed funnel attempts that reached a step",
            &["funnel", "step", "breakdown"],
        )?;
        let funnel_step_dropped = counter(
            "touchstream_processor_funnel_step_dropped_total",
            "Closed funnel attempts that dropped at a step",
            &["funnel", "step", "breakdown"],
        )?;
        let funnel_converted = counter(
            "touchstream_processor_funnel_converted_total",
            "Closed funnel attempts that converted",
            &["funnel", "breakdown"],
        )?;
        let touchpoints = counter(
            "touchstream_processor_touchpoints_total",
            "Touchpoints placed or stored by the journey stage, by catalog event, stage and channel",
            &["event", "stage", "channel"],
        )?;
        let step_delay_seconds = HistogramVec::new(
            HistogramOpts::new(
                "touchstream_processor_funnel_step_delay_seconds",
                "Time from a closed attempt's first step to each later step it reached",
            )
            .buckets(vec![
                60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0,
                345600.0, 604800.0,
            ]),
            &["funnel", "step"],
        )?;
        registry.register(Box::new(step_delay_seconds.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "touchstream_processor_consumer_lag",
                "Messages behind the partition's end",
            ),
            &["stage", "topic", "partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let watermark_seconds = IntGaugeVec::new(
            Opts::new(
                "touchstream_processor_watermark_seconds",
                "Event-time watermark per journey partition",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(watermark_seconds.clone()))?;
        let buffered_events = IntGaugeVec::new(
            Opts::new(
                "touchstream_processor_buffered_events",
                "Events a journey partition holds until the watermark releases them",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(buffered_events.clone()))?;
        let funnel_open_attempts = IntGaugeVec::new(
            Opts::new(
                "touchstream_processor_funnel_open_attempts",
                "Funnel attempts open at the release frontier, by step reached",
            ),
            &["funnel", "step"],
        )?;
        registry.register(Box::new(funnel_open_attempts.clone()))?;
        let funnel_open_attempts_overdue = IntGaugeVec::new(
            Opts::new(
                "touchstream_processor_funnel_open_attempts_overdue",
                "Open funnel attempts that used at least `share` of their time from start to due",
            ),
            &["funnel", "step", "share"],
        )?;
        registry.register(Box::new(funnel_open_attempts_overdue.clone()))?;
        let batch_rows = HistogramVec::new(
            HistogramOpts::new(
                "touchstream_processor_batch_rows",
                "Rows per ClickHouse insert",
            )
            .buckets(prometheus::exponential_buckets(1.0, 4.0, 10)?),
            &["table"],
        )?;
        registry.register(Box::new(batch_rows.clone()))?;
        let insert_seconds = HistogramVec::new(
            HistogramOpts::new(
                "touchstream_processor_clickhouse_insert_duration_seconds",
                "ClickHouse insert latency",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["table"],
        )?;
        registry.register(Box::new(insert_seconds.clone()))?;
        let feedback_responses = counter(
            "touchstream_processor_feedback_responses_total",
            "Survey answers by the touchpoint they rate and scale, counted when first written",
            &["touchpoint", "scale"],
        )?;
        let feedback_score_sum = CounterVec::new(
            Opts::new(
                "touchstream_processor_feedback_score_sum_total",
                "Sum of the scores of the answers in feedback_responses_total",
            ),
            &["touchpoint", "scale"],
        )?;
        registry.register(Box::new(feedback_score_sum.clone()))?;
        let feedback_promoters = counter(
            "touchstream_processor_feedback_promoters_total",
            "NPS answers of 9 or 10, by the touchpoint they rate",
            &["touchpoint"],
        )?;
        let feedback_detractors = counter(
            "touchstream_processor_feedback_detractors_total",
            "NPS answers of 0 to 6, by the touchpoint they rate",
            &["touchpoint"],
        )?;
        let feedback_attribution = counter(
            "touchstream_processor_feedback_attribution_total",
            "Answers written without a touchpoint (unattributed) or moved to another after the first row (reattributed)",
            &["outcome"],
        )?;
        let gauge = |name: &str, help: &str| -> Result<GaugeVec, prometheus::Error> {
            let g = GaugeVec::new(Opts::new(name, help), &["touchpoint", "measure"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let touchpoint_floor = gauge(
            "touchstream_processor_touchpoint_floor",
            "Catalog floor of a touchpoint's answers by measure (csat, nps, ces; ces: highest acceptable mean)",
        )?;
        let touchpoint_target = gauge(
            "touchstream_processor_touchpoint_target",
            "Catalog target of a touchpoint's answers by measure",
        )?;
        let allocator_bytes = IntGaugeVec::new(
            Opts::new(
                "touchstream_processor_allocator_bytes",
                "The heap allocator's own figures by kind: allocated (live data), active, resident, metadata, retained",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(allocator_bytes.clone()))?;
        Ok(Arc::new(Self {
            registry,
            messages,
            consumer_lag,
            batch_rows,
            insert_seconds,
            insert_failures,
            rejected_rows,
            snapshots,
            snapshot_bytes,
            stage_restarts,
            suppressed_events,
            reattributed_events,
            reattribution_skipped,
            histories_expired,
            histories_evicted,
            unlinked_history_bytes,
            links_evicted,
            links_restored,
            identity_links,
            late_events,
            placed_events,
            hot_customer_events,
            corrected_events,
            redelivered_events,
            identity_conflicts,
            funnel_definition_changes,
            funnel_attempts,
            funnel_step_reached,
            funnel_step_dropped,
            funnel_converted,
            watermark_seconds,
            buffered_events,
            funnel_open_attempts,
            funnel_open_attempts_overdue,
            touchpoints,
            step_delay_seconds,
            feedback_responses,
            feedback_score_sum,
            feedback_promoters,
            feedback_detractors,
            feedback_attribution,
            touchpoint_floor,
            touchpoint_target,
            allocator_bytes,
        }))
    }

    /// Set the floor and target gauges from the catalog (the answer measures only:
    /// `next_stage` is a query over stored rows, see README "Touchpoint scorecard").
    pub fn set_thresholds(&self, catalog: &touchstream_journey::Catalog) {
        for t in catalog.thresholds() {
            if t.measure == "next_stage" {
                continue;
            }
            if let Some(v) = t.floor {
                self.touchpoint_floor
                    .with_label_values(&[&t.event, t.measure])
                    .set(v);
            }
            if let Some(v) = t.target {
                self.touchpoint_target
                    .with_label_values(&[&t.event, t.measure])
                    .set(v);
            }
        }
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        if let Some(h) = touchstream_core::memory::heap_stats() {
            for (kind, v) in [
                ("allocated", h.allocated),
                ("active", h.active),
                ("resident", h.resident),
                ("metadata", h.metadata),
                ("retained", h.retained),
            ] {
                self.allocator_bytes
                    .with_label_values(&[kind])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
