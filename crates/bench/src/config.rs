//! What a bench run measures and how big it is.
//!
//! Three presets ([`Size`]) fill [`BenchOptions`]; the CLI can override single fields.
//! `tiny` is what CI runs (it only proves the bench works: its figures are dominated by
//! start-up costs), `full` is the sizes, `small` sits between them for a quick
//! look on a laptop.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A preset of sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// Seconds; what CI runs. Proves every phase works, not how fast.
    Tiny,
    /// A couple of minutes on 2 cores.
    Small,
    /// The sizes (1M events, memory at 10k/100k/1M customers).
    Full,
    /// The analyst phase alone at 10M events (≈ 1M customers over 30 days).
    Analyst,
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tiny" => Ok(Size::Tiny),
            "small" => Ok(Size::Small),
            "full" => Ok(Size::Full),
            "analyst" => Ok(Size::Analyst),
            other => Err(format!(
                "unknown size {other:?} (tiny, small, full, analyst)"
            )),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Size::Tiny => "tiny",
            Size::Small => "small",
            Size::Full => "full",
            Size::Analyst => "analyst",
        })
    }
}

/// One part of the bench; they run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Raw Kafka produce and consume, raw ClickHouse insert: the box's limits.
    Baseline,
    /// HTTP collector throughput and CPU.
    Collector,
    /// Processor throughput from `touchpoints.raw` to ClickHouse rows.
    Processor,
    /// CPU per event of collector and processor against the bare clients, side by side
    /// ([`crate::cpu`]).
    Cpu,
    /// Receive-to-visible latency at a fixed offered rate.
    Latency,
    /// Processor memory per active customer.
    Memory,
    /// The README's analyst queries over a month of generated rows ([`crate::analyst`]).
    Analyst,
}

impl Phase {
    /// Every phase, in run order.
    pub const ALL: [Phase; 7] = [
        Phase::Baseline,
        Phase::Collector,
        Phase::Processor,
        Phase::Cpu,
        Phase::Latency,
        Phase::Memory,
        Phase::Analyst,
    ];

    /// Lowercase name (CLI, JSON, topic and database names).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::Collector => "collector",
            Phase::Processor => "processor",
            Phase::Cpu => "cpu",
            Phase::Latency => "latency",
            Phase::Memory => "memory",
            Phase::Analyst => "analyst",
        }
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown phase {s:?} (baseline, collector, processor, cpu, latency, memory, analyst)"
                )
            })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a run needs beyond the deployment [`touchstream_core::Config`] (which says
/// where Kafka and ClickHouse are). Defaults below are those of [`Size::Small`] unless
/// a preset is named.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchOptions {
    /// The preset the sizes came from, recorded in the JSON so runs compare like with like.
    pub size: Size,
    /// Events of the baseline, collector and processor phases. tiny 5,000, small
    /// 200,000, full 1,000,000.
    pub events: usize,
    /// Concurrent HTTP keep-alive clients in the collector phase. tiny 4, otherwise 8:
    /// enough to keep 2 cores busy without the load generator starving the collector.
    pub clients: usize,
    /// Messages per `/v1/batch` request. Default 100 (the batch).
    pub batch_messages: usize,
    /// Active-customer counts of the memory phase. tiny 2,000; small 10,000 and
    /// 100,000; full 10,000, 100,000 and 1,000,000.
    pub customers: Vec<usize>,
    /// Customers of the memory phase's idle baseline, whose RSS is subtracted. Default 1:
    /// the processor has run one full cycle (consume, write, snapshot, commit) but holds
    /// no state to speak of.
    pub idle_customers: usize,
    /// Offered rate of the latency phase, events/s. Default 5,000 (the issue's).
    pub latency_rate: f64,
    /// Seconds the latency phase sends for. tiny 2, small 10, full 30.
    pub latency_secs: f64,
    /// Every n-th latency event is a tracer whose visibility is timed. Default 50.
    pub tracer_every: usize,
    /// `processor.allowed_lateness_secs` of the latency phase's processor, seconds.
    /// Default 1. An enriched row (customer, session) is written only once the
    /// watermark is this far past its event time, so with the production default of
    /// 300 s the enriched latency would be five minutes by design; the raw row (what the
    /// `touchpoints` view shows first) does not wait for it.
    pub latency_lateness_secs: u64,
    /// How often the latency phase asks ClickHouse which tracers are visible, ms.
    /// Default 50; it bounds the latency resolution.
    pub poll_ms: u64,
    /// `processor.idle_watermark_secs` of the processor and memory phases, seconds.
    /// Default 1: after the input ends, the last events (held back for lateness) are
    /// released after 1 s instead of the production 30 s, which would only add idle time.
    pub idle_watermark_secs: u64,
    /// Events the analyst phase loads (customers: a tenth of them, over 30 days). tiny
    /// 5,000, small 1,000,000, full and analyst 10,000,000.
    pub analyst_events: usize,
    /// Repetitions of the CPU phase (each runs both sides of both comparisons, one
    /// after the other) and of the memory phase (each measures every customer count).
    /// Default 3: min / median / max need at least three.
    pub reps: usize,
    /// Phases to run. Default all, in [`Phase::ALL`] order; `--size analyst` only the
    /// analyst phase.
    pub phases: Vec<Phase>,
    /// Seed of the journey generator. Default 42.
    pub seed: u64,
    /// Draw progress bars (stderr). Default true; off in tests.
    pub progress: bool,
    /// Keep the run's databases, topics and work folder (child logs, configs) for
    /// inspection. Default false: everything the run created is dropped.
    pub keep: bool,
}

impl BenchOptions {
    /// The options of a preset.
    pub fn preset(size: Size) -> Self {
        let (events, clients, customers, latency_secs) = match size {
            Size::Tiny => (5_000, 4, vec![2_000], 2.0),
            Size::Small => (200_000, 8, vec![10_000, 100_000], 10.0),
            Size::Full | Size::Analyst => (1_000_000, 8, vec![10_000, 100_000, 1_000_000], 30.0),
        };
        let analyst_events = match size {
            Size::Tiny => 5_000,
            Size::Small => 1_000_000,
            Size::Full | Size::Analyst => 10_000_000,
        };
        let phases = match size {
            Size::Analyst => vec![Phase::Analyst],
            _ => Phase::ALL.to_vec(),
        };
        Self {
            size,
            events,
            clients,
            batch_messages: 100,
            customers,
            idle_customers: 1,
            latency_rate: 5_000.0,
            latency_secs,
            tracer_every: 50,
            latency_lateness_secs: 1,
            poll_ms: 50,
            idle_watermark_secs: 1,
            analyst_events,
            reps: 3,
            phases,
            seed: 42,
            progress: true,
            keep: false,
        }
    }

    /// Refuse sizes that cannot produce a figure.
    pub fn validate(&self) -> Result<(), String> {
        // One batch per client opens the connections untimed; at least as many are timed.
        if self.events < 2 * self.batch_messages.max(1) * self.clients.max(1) {
            return Err(format!(
                "events ({}) must be at least 2 × batch_messages × clients (2 × {} × {})",
                self.events, self.batch_messages, self.clients
            ));
        }
        if self.clients == 0 || self.batch_messages == 0 || self.tracer_every == 0 {
            return Err("clients, batch_messages and tracer_every must be at least 1".into());
        }
        if !(self.latency_rate > 0.0 && self.latency_secs > 0.0) {
            return Err("latency rate and seconds must be positive".into());
        }
        if self.customers.is_empty() || self.customers.contains(&0) || self.idle_customers == 0 {
            return Err("memory customer counts must be at least 1".into());
        }
        if self.reps == 0 {
            return Err("reps must be at least 1".into());
        }
        if self.phases.is_empty() {
            return Err("no phase selected".into());
        }
        Ok(())
    }

    /// Whether `phase` is selected.
    pub fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self::preset(Size::Small)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_names_round_trip() {
        for size in [Size::Tiny, Size::Small, Size::Full, Size::Analyst] {
            BenchOptions::preset(size).validate().unwrap();
            assert_eq!(size.to_string().parse::<Size>().unwrap(), size);
        }
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
        }
        assert!("huge".parse::<Size>().is_err());
        assert_eq!(
            BenchOptions::preset(Size::Full).customers,
            vec![10_000, 100_000, 1_000_000]
        );
    }

    #[test]
    fn bad_sizes_are_refused() {
        let mut o = BenchOptions::preset(Size::Tiny);
        o.events = 10;
        assert!(o.validate().is_err());
        let mut o = BenchOptions::preset(Size::Tiny);
        o.customers = vec![0];
        assert!(o.validate().is_err());
    }
}
