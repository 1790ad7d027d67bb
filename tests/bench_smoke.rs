//! `touchstream bench --size tiny` runs end to end against the local services and writes
//! a JSON report with every figure present and sane, the repeated ones (CPU side by side,
//! memory per customer) with one sample per repetition.
//!
//! Not a timed test: tiny figures are dominated by start-up costs (and this is a debug
//! build), so no threshold is checked, only that each phase produced its numbers. Runs
//! the real binary (target/debug/touchstream, built by tests/run.sh) because the bench
//! starts collector and processor children of that same binary.

use std::process::Command;

use serde_json::Value;
use touchstream_tests as support;

/// Figures that count or time real work: must be positive.
const POSITIVE: &[&str] = &[
    "raw_produce_msgs_per_sec",
    "raw_consume_msgs_per_sec",
    "raw_insert_events_per_sec",
    "collector_events_per_sec",
    "collector_cpu_secs_per_100k_events",
    "collector_rss_bytes",
    "processor_events_per_sec",
    "processor_cpu_secs_per_100k_events",
    "processor_total_secs",
    "processor_peak_rss_bytes",
    "processor_box_cpu_secs_per_100k_events",
    "processor_cores_at_ratio_target",
    "collector_box_cpu_secs_per_100k_events",
    "collector_cores_at_ratio_target",
    "latency_events_per_sec",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_enriched_p50_ms",
    "latency_enriched_p99_ms",
    "latency_processor_cpu_cores",
    // CPU phase: both sides of both comparisons measured some CPU (a tiny rep of a
    // few thousand events is still tens of clock ticks per side), so the ratios exist.
    "cpu_raw_produce_secs_per_100k_events",
    "cpu_collector_secs_per_100k_events",
    "cpu_collector_ratio",
    "cpu_raw_consume_insert_secs_per_100k_events",
    "cpu_processor_secs_per_100k_events",
    "cpu_processor_ratio",
    "memory_idle_rss_bytes",
    "memory_rss_bytes_2000",
    "memory_peak_rss_bytes_2000",
    // Analyst phase: it loaded rows, and the fast paths read some (their times are not
    // checked: tiny sizes time nothing but round trips).
    "analyst_events",
    "analyst_load_secs",
    "analyst_q4_customer_journey_rows_read",
    "analyst_q4_customer_journey_peak_memory_bytes",
    "analyst_one_day_stage_channel_rows_read",
    "analyst_view_funnel_step_minute_rows_read",
    "analyst_funnel_window_funnel_rows_read",
];

/// Figures that may legitimately be zero (or, for a difference of two RSS readings at a
/// tiny size, slightly negative): present and finite is all that is asked.
const FINITE: &[&str] = &[
    "collector_503_answers",
    "load_generator_cpu_secs_per_100k_events",
    "processor_startup_secs",
    "latency_collector_cpu_cores",
    "memory_bytes_per_customer_2000",
    // The local services' CPU (tests/run.sh runs them on this box): whole clock ticks,
    // so a tiny phase may see none.
    "raw_produce_broker_cpu_secs_per_100k_events",
    "raw_insert_clickhouse_cpu_secs_per_100k_events",
    "collector_broker_cpu_secs_per_100k_events",
    "processor_clickhouse_cpu_secs_per_100k_events",
    "processor_broker_cpu_secs_per_100k_events",
    // The raw client's steps apart: at a tiny size one may round to no tick.
    "cpu_raw_consume_secs_per_100k_events",
    "cpu_raw_rows_secs_per_100k_events",
    "cpu_raw_insert_secs_per_100k_events",
    "analyst_q4_customer_journey_warm_ms",
    "analyst_one_day_stage_channel_warm_ms",
    "analyst_view_funnel_step_minute_warm_ms",
    "analyst_funnel_window_funnel_warm_ms",
    // Present only when the precomputed funnel equalled windowFunnel's (else the phase
    // fails and `errors` is not empty).
    "analyst_funnel_speedup",
];

#[tokio::test]
async fn tiny_bench_reports_every_figure() {
    support::require_port("Kafka", &support::kafka_brokers());
    let ch = support::clickhouse_url();
    support::require_port("ClickHouse", ch.trim_start_matches("http://"));
    let bin = support::repo_root().join("target/debug/touchstream");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p touchstream` (tests/run.sh does)",
        bin.display()
    );
    let json = std::env::temp_dir().join(format!("{}.json", support::unique("bench-smoke")));
    // Blocking on purpose: this test does nothing else meanwhile.
    let out = Command::new(&bin)
        .current_dir(support::repo_root())
        .args(["bench", "--size", "tiny", "--json"])
        .arg(&json)
        .env("TOUCHSTREAM__KAFKA__BROKERS", support::kafka_brokers())
        .env("TOUCHSTREAM__CLICKHOUSE__URL", &ch)
        .output()
        .expect("run touchstream bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("× baseline"), "no table printed:\n{stdout}");

    let text = std::fs::read_to_string(&json).expect("JSON report written");
    let _ = std::fs::remove_file(&json);
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    assert_eq!(report["format"], 2);
    assert_eq!(report["options"]["size"], "tiny");
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(0), "{text}");
    assert!(report["machine"]["nproc"].as_u64().unwrap_or(0) >= 1);
    let figures = report["figures"].as_array().expect("figures");
    let value = |name: &str| -> f64 {
        let f = figures
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("figure {name} missing from {text}"));
        f["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("figure {name} has no finite value: {f}"))
    };
    for name in POSITIVE {
        let v = value(name);
        assert!(v.is_finite() && v > 0.0, "{name} = {v}");
    }
    for name in FINITE {
        assert!(value(name).is_finite(), "{name}");
    }
    // Repeated figures: one sample per repetition (the default, 3), min ≤ median ≤ max,
    // and the value is the median (CPU) or the worst repetition (memory per customer).
    let reps = report["options"]["reps"].as_u64().expect("reps");
    assert_eq!(reps, 3, "default repetitions");
    assert_eq!(value("cpu_reps"), reps as f64);
    let spread = |name: &str| -> (Vec<f64>, f64, f64, f64) {
        let f = figures.iter().find(|f| f["name"] == name).expect(name);
        let s = &f["spread"];
        let samples: Vec<f64> = s["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no spread: {f}"))
            .iter()
            .map(|v| v.as_f64().expect("finite sample"))
            .collect();
        let (min, median, max) = (
            s["min"].as_f64().expect("min"),
            s["median"].as_f64().expect("median"),
            s["max"].as_f64().expect("max"),
        );
        assert!(min <= median && median <= max, "{name}: {s}");
        (samples, min, median, max)
    };
    for name in [
        "cpu_raw_produce_secs_per_100k_events",
        "cpu_collector_secs_per_100k_events",
        "cpu_collector_ratio",
        "cpu_raw_consume_insert_secs_per_100k_events",
        "cpu_processor_secs_per_100k_events",
        "cpu_processor_ratio",
    ] {
        let (samples, min, median, _) = spread(name);
        assert_eq!(samples.len() as u64, reps, "{name}");
        assert!(min > 0.0, "{name}: a repetition measured no CPU");
        assert_eq!(value(name), median, "{name} is valued at its median");
    }
    // Idle shares: one per repetition, each a share of the box's cores (never timed).
    let cores = std::thread::available_parallelism().map_or(64, |n| n.get()) as f64;
    for name in [
        "cpu_collector_idle_core_share",
        "cpu_processor_idle_core_share",
    ] {
        let (samples, min, _, max) = spread(name);
        assert_eq!(samples.len() as u64, reps, "{name}");
        assert!(min >= 0.0 && max <= cores, "{name}: {samples:?}");
    }
    for (ratio, target) in [("cpu_collector_ratio", 2.0), ("cpu_processor_ratio", 3.0)] {
        let f = figures.iter().find(|f| f["name"] == ratio).expect(ratio);
        assert_eq!(f["targets"][0]["value"].as_f64(), Some(target), "{f}");
        // Judged (pass or miss, never how fast: tiny sizes measure start-up).
        assert!(f["pass"].is_boolean(), "{f}");
    }
    let (samples, _, _, max) = spread("memory_bytes_per_customer_2000");
    assert_eq!(samples.len() as u64, reps);
    assert_eq!(
        value("memory_bytes_per_customer_2000"),
        max,
        "worst repetition"
    );
    assert!(
        stdout.contains("collector vs raw producer") && stdout.contains("worst of 3 reps"),
        "no summary of the primary figures printed:\n{stdout}"
    );

    // Ratios are filled where the baselines ran.
    for name in ["collector_events_per_sec", "processor_events_per_sec"] {
        let f = figures.iter().find(|f| f["name"] == name).expect(name);
        let r = f["ratio"].as_f64().unwrap_or(f64::NAN);
        assert!(r.is_finite() && r > 0.0, "{name} ratio {r}");
    }
    // The run dropped its databases.
    let run_id = report["run_id"].as_str().expect("run_id");
    let cfg = touchstream_core::config::ClickHouseConfig {
        url: ch,
        ..Default::default()
    };
    let left: u64 = touchstream_clickhouse::server_client(&cfg)
        .query("SELECT count() FROM system.databases WHERE startsWith(name, ?)")
        .bind(format!("touchstream_bench_{run_id}"))
        .fetch_one()
        .await
        .expect("count databases");
    assert_eq!(left, 0, "bench databases left behind");
}
