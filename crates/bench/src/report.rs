//! The figures a run produced, their ratios to the baselines and targets, the printed
//! table and the JSON written so runs can be compared.
//!
//! Every figure has a stable `name` (the JSON key runs are compared by), a value and a
//! unit. A figure may name the baseline figures it is measured against (the ratio uses
//! the smallest of them: the tightest limit) and carry the issue's targets.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::{BenchOptions, Phase};
pub use crate::stats::Spread;
// Measured from /proc and git where the rest of the box's facts are read; reported here.
pub use crate::procs::Machine;

/// The primary figures, the cpu phase's ratios ([`crate::cpu`] names them): (ratio,
/// ours, theirs, what), for the printed summary.
pub const PRIMARY: [(&str, &str, &str, &str); 2] = [
    (
        "cpu_collector_ratio",
        "cpu_collector_secs_per_100k_events",
        "cpu_raw_produce_secs_per_100k_events",
        "collector vs raw producer",
    ),
    (
        "cpu_processor_ratio",
        "cpu_processor_secs_per_100k_events",
        "cpu_raw_consume_insert_secs_per_100k_events",
        "processor vs raw consume + insert",
    ),
];

/// A goal a figure should meet (the issue's targets, for 2 cores and `--size full`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Target {
    /// Value ≥ this.
    AtLeast(f64),
    /// Value ≤ this.
    AtMost(f64),
    /// Ratio to the baseline ≥ this.
    RatioAtLeast(f64),
    /// Value ≤ this, for a figure that is itself a ratio (printed as `≤ 2×`).
    TimesAtMost(f64),
}

impl Target {
    fn met(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::AtLeast(t) => Some(value >= t),
            Target::AtMost(t) | Target::TimesAtMost(t) => Some(value <= t),
            Target::RatioAtLeast(t) => ratio.map(|r| r >= t),
        }
    }

    fn describe(self) -> String {
        match self {
            Target::AtLeast(t) => format!("≥ {}", human(t)),
            Target::AtMost(t) => format!("≤ {}", human(t)),
            Target::RatioAtLeast(t) => format!("≥ {t}×"),
            Target::TimesAtMost(t) => format!("≤ {t}×"),
        }
    }
}

/// One measured number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Stable key, e.g. `collector_events_per_sec`.
    pub name: String,
    /// The phase that measured it.
    pub phase: Phase,
    /// What it is, for the table.
    pub label: String,
    /// The number.
    pub value: f64,
    /// Its unit (`ev/s`, `ms`, `bytes`, ...).
    pub unit: String,
    /// Baseline figures this one is compared with; the smallest present is used.
    pub baselines: Vec<String>,
    /// `value / baseline`, filled by [`Report::finish`].
    pub ratio: Option<f64>,
    /// Goals, all of which must hold.
    pub targets: Vec<Target>,
    /// Whether every target held (`None` without targets or without the baseline a
    /// ratio target needs).
    pub pass: Option<bool>,
    /// For a figure measured once per repetition: min / median / max and every
    /// repetition's value (`value` is the median, or the worst where the figure says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
}

impl Figure {
    /// A figure without baseline or target (informational).
    pub fn info(phase: Phase, name: &str, label: &str, value: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            phase,
            label: label.into(),
            value,
            unit: unit.into(),
            baselines: Vec::new(),
            ratio: None,
            targets: Vec::new(),
            pass: None,
            spread: None,
        }
    }

    /// A figure measured once per repetition, valued at the median of `samples`;
    /// `None` when there are no finite samples.
    pub fn repeated(
        phase: Phase,
        name: &str,
        label: &str,
        samples: &[f64],
        unit: &str,
    ) -> Option<Self> {
        Self::of_samples(phase, name, label, samples, unit, |s| s.median)
    }

    /// A figure measured once per repetition, valued at its worst (largest) sample: a
    /// limit that must hold in every repetition, not on average.
    pub fn worst_of(
        phase: Phase,
        name: &str,
        label: &str,
        samples: &[f64],
        unit: &str,
    ) -> Option<Self> {
        Self::of_samples(phase, name, label, samples, unit, |s| s.max)
    }

    /// A figure with the spread of `samples`, valued at `pick` of it.
    fn of_samples(
        phase: Phase,
        name: &str,
        label: &str,
        samples: &[f64],
        unit: &str,
        pick: fn(&Spread) -> f64,
    ) -> Option<Self> {
        let spread = Spread::of(samples)?;
        let mut f = Self::info(phase, name, label, pick(&spread), unit);
        f.spread = Some(spread);
        Some(f)
    }

    /// One figure per local service in `secs` (CPU seconds it spent over `events`
    /// events, from [`crate::procs::add_service_cpu`]), named
    /// `<prefix>_<service>_cpu_secs_per_100k_events` and labelled
    /// `<service> CPU per 100k events (<during>)`.
    pub fn service_cpu(
        phase: Phase,
        prefix: &str,
        during: &str,
        secs: &std::collections::BTreeMap<&'static str, f64>,
        events: f64,
    ) -> Vec<Figure> {
        crate::procs::SERVICES
            .iter()
            .filter_map(|(name, _, label)| {
                let s = secs.get(name)?;
                (events > 0.0).then(|| {
                    Figure::info(
                        phase,
                        &format!("{prefix}_{name}_cpu_secs_per_100k_events"),
                        &format!("{label} CPU per 100k events ({during})"),
                        s / events * 100_000.0,
                        "cpu-s",
                    )
                })
            })
            .collect()
    }

    /// Compare with these baseline figures (the smallest present counts).
    pub fn against(mut self, baselines: &[&str]) -> Self {
        self.baselines = baselines.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Add a target.
    pub fn target(mut self, t: Target) -> Self {
        self.targets.push(t);
        self
    }
}

/// A phase that failed, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseError {
    /// The phase.
    pub phase: Phase,
    /// The error, with its causes.
    pub error: String,
}

/// The value a figure's ratio is taken against: the smallest positive of its baselines
/// that `value_of` finds.
fn smallest_baseline(baselines: &[String], value_of: impl Fn(&str) -> Option<f64>) -> Option<f64> {
    baselines
        .iter()
        .filter_map(|b| value_of(b))
        .filter(|v| *v > 0.0)
        .reduce(f64::min)
}

/// (throughput figure, its phase's all-processes CPU per 100k events figure, what that
/// CPU covers) for [`Report::derive_core_budgets`].
pub const CORE_BUDGETS: [(&str, &str, &str); 2] = [
    (
        "collector_events_per_sec",
        "collector_box_cpu_secs_per_100k_events",
        "collector + broker + load generator",
    ),
    (
        "processor_events_per_sec",
        "processor_box_cpu_secs_per_100k_events",
        "processor + ClickHouse + broker",
    ),
];

/// The whole result of a run (this is the JSON file).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// JSON layout version; bump when a field changes meaning. 2: figures may carry a
    /// `spread` (repetitions), and `memory_bytes_per_customer_*` is the worst repetition.
    pub format: u32,
    /// Run id (also in database and topic names).
    pub run_id: String,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// Wall time of the whole run, seconds.
    pub duration_secs: f64,
    /// The box.
    pub machine: Machine,
    /// Sizes and knobs.
    pub options: BenchOptions,
    /// Workload facts (message and payload sizes).
    pub workload: serde_json::Map<String, serde_json::Value>,
    /// Where time and bytes went (e.g. the processor's ClickHouse insert time and bytes
    /// by table), for finding bottlenecks; not compared between runs.
    pub diagnostics: serde_json::Map<String, serde_json::Value>,
    /// The numbers.
    pub figures: Vec<Figure>,
    /// Phases that failed.
    pub errors: Vec<PhaseError>,
    /// Things worth knowing that are not figures (cleanup failures, caveats).
    pub notes: Vec<String>,
}

impl Report {
    /// Fill ratios and pass/miss from the baselines present.
    pub fn finish(&mut self) {
        let values: Vec<(String, f64)> = self
            .figures
            .iter()
            .map(|f| (f.name.clone(), f.value))
            .collect();
        for f in &mut self.figures {
            let base = smallest_baseline(&f.baselines, |b| {
                values.iter().find(|(n, _)| n == b).map(|(_, v)| *v)
            });
            f.ratio = base.map(|b| f.value / b);
            f.pass = f
                .targets
                .iter()
                .map(|t| t.met(f.value, f.ratio))
                .try_fold(true, |acc, m| m.map(|m| acc && m))
                .filter(|_| !f.targets.is_empty());
        }
    }

    /// For each throughput figure with a ratio target and a "CPU per 100k events on the
    /// box" figure of its phase ([`CORE_BUDGETS`]): how many cores that CPU per event
    /// would take at the ratio target, inserted after the CPU figure. More cores than
    /// the box has means the target is out of reach here unless the per-event work of
    /// some process on the box gets cheaper — which process, the phase's other CPU
    /// figures say. Call after every phase, before [`Report::finish`].
    pub fn derive_core_budgets(&mut self) {
        for (rate_name, box_name, what) in CORE_BUDGETS {
            let Some(rate) = self.figure(rate_name) else {
                continue;
            };
            let Some(ratio) = rate.targets.iter().find_map(|t| match t {
                Target::RatioAtLeast(r) => Some(*r),
                _ => None,
            }) else {
                continue;
            };
            let base = smallest_baseline(&rate.baselines, |b| self.figure(b).map(|f| f.value));
            let Some(at) = self.figures.iter().position(|f| f.name == box_name) else {
                continue;
            };
            let Some(base) = base else {
                continue;
            };
            let (phase, per_100k) = (self.figures[at].phase, self.figures[at].value);
            let target = ratio * base;
            let name = box_name.replace("_box_cpu_secs_per_100k_events", "_cores_at_ratio_target");
            self.figures.insert(
                at + 1,
                Figure::info(
                    phase,
                    &name,
                    &format!(
                        "cores {what} needs at {ratio}× baseline ({} ev/s; this box: {})",
                        human(target),
                        self.machine.nproc
                    ),
                    target * per_100k / 100_000.0,
                    "cores",
                ),
            );
        }
    }

    /// The primary figures, for the lines printed above the table: each CPU ratio of
    /// [`PRIMARY`] with both sides' min / median / max and whether the
    /// target holds at the median, and the memory limit's worst repetition. Empty when
    /// neither phase ran.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let spread = |f: &Figure| {
            f.spread.as_ref().map_or_else(
                || human(f.value),
                |s| format!("{} / {} / {}", human(s.min), human(s.median), human(s.max)),
            )
        };
        for (ratio, ours, theirs, what) in PRIMARY {
            let (Some(r), Some(o), Some(t)) =
                (self.figure(ratio), self.figure(ours), self.figure(theirs))
            else {
                continue;
            };
            let reps = r.spread.as_ref().map_or(1, |s| s.samples.len());
            let _ = writeln!(
                out,
                "{what}, CPU per 100k events over {reps} reps (min / median / max): \
                 {} cpu-s vs {} cpu-s; ratio {} (target {} at the median: {})",
                spread(o),
                spread(t),
                spread(r),
                r.targets
                    .iter()
                    .map(|t| t.describe())
                    .collect::<Vec<_>>()
                    .join(", "),
                match r.pass {
                    Some(true) => "pass",
                    Some(false) => "MISS",
                    None => "n/a",
                }
            );
        }
        for f in self
            .figures
            .iter()
            .filter(|f| f.name.starts_with("memory_bytes_per_customer_"))
        {
            let reps = f.spread.as_ref().map_or(1, |s| s.samples.len());
            let _ = writeln!(
                out,
                "{}: worst of {reps} reps {} B (all: {}; target {} in every rep: {})",
                f.label,
                human(f.value),
                f.spread.as_ref().map_or_else(
                    || human(f.value),
                    |s| s
                        .samples
                        .iter()
                        .map(|v| human(*v))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                f.targets
                    .iter()
                    .map(|t| t.describe())
                    .collect::<Vec<_>>()
                    .join(", "),
                match f.pass {
                    Some(true) => "pass",
                    Some(false) => "MISS",
                    None => "n/a",
                }
            );
        }
        out
    }

    /// A figure by name.
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 7]> = vec![[
            "phase".into(),
            "figure".into(),
            "value".into(),
            "unit".into(),
            "× baseline".into(),
            "target".into(),
            "result".into(),
        ]];
        for f in &self.figures {
            let value = match &f.spread {
                Some(s) if s.samples.len() > 1 => {
                    format!("{} [{}–{}]", human(f.value), human(s.min), human(s.max))
                }
                _ => human(f.value),
            };
            rows.push([
                f.phase.to_string(),
                f.label.clone(),
                value,
                f.unit.clone(),
                f.ratio.map_or_else(String::new, |r| format!("{r:.2}×")),
                f.targets
                    .iter()
                    .map(|t| t.describe())
                    .collect::<Vec<_>>()
                    .join(", "),
                match f.pass {
                    Some(true) => "pass".into(),
                    Some(false) => "MISS".into(),
                    None => String::new(),
                },
            ]);
        }
        let mut widths = [0usize; 7];
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            let mut line = String::new();
            for (j, (c, w)) in r.iter().zip(widths).enumerate() {
                let pad = w - c.chars().count();
                // Numbers right-aligned, text left-aligned.
                if j == 2 || j == 4 {
                    let _ = write!(line, "{}{c}  ", " ".repeat(pad));
                } else {
                    let _ = write!(line, "{c}{}  ", " ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        for e in &self.errors {
            let _ = writeln!(out, "FAILED {}: {}", e.phase, e.error);
        }
        out
    }
}

/// A number for people: thousands separators, 3 significant decimals for small values.
pub fn human(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.abs() >= 1000.0 {
        let n = v.round() as i128;
        let s = n.abs().to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if n < 0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Size;

    fn report(figures: Vec<Figure>) -> Report {
        Report {
            format: 1,
            run_id: "r".into(),
            started_at: "t".into(),
            duration_secs: 1.0,
            machine: Machine::default(),
            options: BenchOptions::preset(Size::Tiny),
            workload: serde_json::Map::new(),
            diagnostics: serde_json::Map::new(),
            figures,
            errors: Vec::new(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn core_budget_follows_the_cpu_figure_and_the_smallest_baseline() {
        let mut r = report(vec![
            Figure::info(
                Phase::Baseline,
                "raw_consume_msgs_per_sec",
                "c",
                400_000.0,
                "msg/s",
            ),
            Figure::info(
                Phase::Baseline,
                "raw_insert_events_per_sec",
                "i",
                200_000.0,
                "ev/s",
            ),
            Figure::info(
                Phase::Processor,
                "processor_events_per_sec",
                "p",
                50_000.0,
                "ev/s",
            )
            .against(&["raw_consume_msgs_per_sec", "raw_insert_events_per_sec"])
            .target(Target::RatioAtLeast(0.5)),
            Figure::info(
                Phase::Processor,
                "processor_box_cpu_secs_per_100k_events",
                "b",
                2.0,
                "cpu-s",
            ),
            Figure::info(Phase::Latency, "after", "a", 1.0, "ms"),
            // No CPU figure for the collector: no budget for it.
            Figure::info(
                Phase::Collector,
                "collector_events_per_sec",
                "c",
                1.0,
                "ev/s",
            )
            .against(&["raw_consume_msgs_per_sec"])
            .target(Target::RatioAtLeast(0.5)),
        ]);
        r.derive_core_budgets();
        // 0.5 × 200k ev/s × 2 cpu-s per 100k events = 2 cores, right after the CPU figure.
        let names: Vec<&str> = r.figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names[4], "processor_cores_at_ratio_target");
        assert_eq!(names[5], "after");
        assert_eq!(r.figures[4].value, 2.0);
        assert_eq!(r.figures[4].phase, Phase::Processor);
        assert!(r.figure("collector_cores_at_ratio_target").is_none());
    }

    #[test]
    fn ratios_use_the_smallest_baseline_and_targets_combine() {
        let mut r = report(vec![
            Figure::info(Phase::Baseline, "a", "a", 100.0, "ev/s"),
            Figure::info(Phase::Baseline, "b", "b", 80.0, "ev/s"),
            Figure::info(Phase::Processor, "p", "p", 60.0, "ev/s")
                .against(&["a", "b", "missing"])
                .target(Target::RatioAtLeast(0.5))
                .target(Target::AtLeast(50.0)),
            Figure::info(Phase::Processor, "q", "q", 10.0, "ev/s")
                .against(&["missing"])
                .target(Target::RatioAtLeast(0.5)),
            Figure::info(Phase::Latency, "l", "l", 3.0, "ms").target(Target::AtMost(2.0)),
        ]);
        r.finish();
        let p = r.figure("p").unwrap();
        assert_eq!(p.ratio, Some(0.75));
        assert_eq!(p.pass, Some(true));
        assert_eq!(r.figure("q").unwrap().pass, None);
        assert_eq!(r.figure("l").unwrap().pass, Some(false));
        assert_eq!(r.figure("a").unwrap().pass, None);
        let t = r.table();
        assert!(
            t.contains("0.75×") && t.contains("MISS") && t.contains("pass"),
            "{t}"
        );
    }

    #[test]
    fn repeated_figures_are_judged_at_the_median_or_the_worst_and_summarised() {
        let cpu = |name: &str, samples: &[f64]| {
            Figure::repeated(Phase::Cpu, name, name, samples, "cpu-s").unwrap()
        };
        let mut r = report(vec![
            cpu("cpu_collector_secs_per_100k_events", &[0.5, 0.9, 0.6]),
            cpu("cpu_raw_produce_secs_per_100k_events", &[0.2, 0.3, 0.3]),
            // Per rep 2.5, 3.0, 2.0: median 2.5 misses ≤ 2× though one rep met it.
            Figure::repeated(
                Phase::Cpu,
                "cpu_collector_ratio",
                "r",
                &[2.5, 3.0, 2.0],
                "×",
            )
            .unwrap()
            .target(Target::TimesAtMost(2.0)),
            Figure::worst_of(
                Phase::Memory,
                "memory_bytes_per_customer_10000",
                "per customer",
                &[700.0, 1100.0, 800.0],
                "bytes",
            )
            .unwrap()
            .target(Target::AtMost(1024.0)),
        ]);
        r.finish();
        let ratio = r.figure("cpu_collector_ratio").unwrap();
        assert_eq!(ratio.value, 2.5);
        assert_eq!(ratio.pass, Some(false));
        let mem = r.figure("memory_bytes_per_customer_10000").unwrap();
        // One rep over the limit fails the figure, though the median (800) is under.
        assert_eq!((mem.value, mem.pass), (1100.0, Some(false)));
        assert_eq!(
            mem.spread.as_ref().unwrap().samples,
            vec![700.0, 1100.0, 800.0]
        );
        let table = r.table();
        assert!(table.contains("0.600 [0.500–0.900]"), "{table}");
        let summary = r.summary();
        assert!(
            summary.contains("collector vs raw producer")
                && summary.contains("over 3 reps")
                && summary.contains("2.000 / 2.500 / 3.000")
                && summary.contains("≤ 2× at the median: MISS"),
            "{summary}"
        );
        assert!(summary.contains("worst of 3 reps 1,100 B"), "{summary}");
        // Without the phases, no summary lines.
        assert!(report(Vec::new()).summary().is_empty());
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1_234_567.4), "1,234,567");
        assert_eq!(human(1000.4), "1,000");
        assert_eq!(human(-12_345.0), "-12,345");
        assert_eq!(human(0.12345), "0.123");
        assert_eq!(human(12.34), "12.3");
    }
}
