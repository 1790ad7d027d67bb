//! `touchstream demo`: migrate, create topics, run a collector and a processor in this
//! process, play generated journeys through the collector's HTTP API, wait for the
//! pipeline to catch up, and report from ClickHouse.
//!
//! The local services must be up (`deploy/local/services.sh up`, which
//! `deploy/local/demo.sh` runs first).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use touchstream_core::Config;

use crate::generator::{plan, GeneratorConfig};
use crate::report::{closed_attempts, measure, render, Measured};
use crate::sender::{send, SendConfig};

/// Demo settings beyond the deployment config.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// What to generate.
    pub generator: GeneratorConfig,
    /// Target events per second (0: as fast as the collector answers).
    pub rate_per_sec: f64,
    /// How long to wait for the pipeline after sending.
    pub wait: Duration,
    /// Show progress bars (off in tests).
    pub progress: bool,
    /// Where to write the HTML report of the run (README "Report"); `None`: none.
    pub report_html: Option<std::path::PathBuf>,
}

/// The outcome, for callers that check it (the demo test).
pub struct DemoResult {
    /// The printed report.
    pub report: String,
    /// The measured figures.
    pub measured: Measured,
    /// What the generator planned.
    pub plan: crate::generator::PlanSummary,
    /// The HTML report written, if one was asked for.
    pub report_html: Option<std::path::PathBuf>,
}

fn bar(progress: bool, len: u64, what: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    b.set_style(style);
    b.set_message(what.to_string());
    b
}

fn key_for(config: &Config, channel: &str) -> anyhow::Result<String> {
    config
        .collector
        .sources
        .iter()
        .find(|s| s.default_channel == channel)
        .or_else(|| config.collector.sources.first())
        .map(|s| s.write_key.clone())
        .context("collector.sources is empty: the demo needs a write key")
}

/// Run the demo end to end. The processor uses short lateness (60 s) and a 5 s idle
/// watermark so that the backdated journeys close as soon as the input stops.
pub async fn run(mut config: Config, opts: DemoOptions) -> anyhow::Result<DemoResult> {
    opts.generator.validate().map_err(anyhow::Error::msg)?;
    // The demo is a local run: its own in-process collector takes the demo keys, and the
    // generated journeys, backdated by up to `days` + 8 days, are live traffic to it
    // (README "Time correction": max_event_age_days).
    config.collector.allow_demo_keys = true;
    if config.collector.max_event_age_days > 0 {
        let oldest_days = u32::try_from(opts.generator.days.saturating_add(9)).unwrap_or(u32::MAX);
        config.collector.max_event_age_days = config.collector.max_event_age_days.max(oldest_days);
    }
    config.processor.allowed_lateness_secs = 60;
    config.processor.idle_watermark_secs = 5;
    // Topics and a consumer group of this run's own: the journeys are backdated by days,
    // so a processor that had already seen newer traffic on the shared topics (an earlier
    // demo, whose idle watermark followed the clock, or real events) would store them as
    // late and the demo would wait for ever. The rows still go to the configured
    // database; the report reads this run's customers only.
    let run = format!("demo-{}", opts.generator.now_ms);
    let kafka = &mut config.kafka;
    for topic in [
        &mut kafka.raw_topic,
        &mut kafka.dlq_topic,
        &mut kafka.aliases_topic,
        &mut kafka.routed_topic,
    ] {
        *topic = format!("{run}.{topic}");
    }
    config.processor.group_id = format!("{}-{run}", config.processor.group_id);

    let report = touchstream_clickhouse::migrate(&config.clickhouse)
        .await
        .with_context(|| {
            format!(
                "migrating ClickHouse at {} (are the local services up?)",
                config.clickhouse.url
            )
        })?;
    println!(
        "ClickHouse {} migrated ({} migration files)",
        report.server,
        report.files.len()
    );
    let topics = touchstream_core::kafka::ensure_topics(&config.kafka, &[])
        .await
        .with_context(|| format!("creating topics on {}", config.kafka.brokers))?;
    for w in topics.iter().flat_map(|t| &t.warnings) {
        // The local single broker cannot hold 3 replicas: expected here, not worth a line.
        if !w.contains("created with") {
            eprintln!("warning: {w}");
        }
    }
    println!("Kafka topics ready on {}", config.kafka.brokers);

    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind(&config.collector.listen)
        .await
        .with_context(|| {
            format!(
                "binding the collector to {} (is another collector running?)",
                config.collector.listen
            )
        })?;
    let base = format!("http://{}", listener.local_addr()?);
    let collector = tokio::spawn(touchstream_collector::run(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    let metrics = TcpListener::bind(&config.processor.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "binding processor metrics to {}",
                config.processor.metrics_listen
            )
        })?;
    let processor = tokio::spawn(touchstream_processor::run(
        config.clone(),
        Some(metrics),
        shutdown.clone(),
    ));
    println!(
        "collector on {base}, processor metrics on http://{}",
        config.processor.metrics_listen
    );

    let result = drive(&config, &opts, &base).await;

    shutdown.cancel();
    let _ = collector.await;
    let _ = processor.await;
    println!("collector and processor stopped");
    result
}

async fn drive(config: &Config, opts: &DemoOptions, base: &str) -> anyhow::Result<DemoResult> {
    let g = &opts.generator;
    let (messages, summary) = plan(g);
    let start_ms = messages.first().map_or(g.now_ms, |m| m.time_ms);
    println!(
        "generating {} customers (seed {}): {} messages over {} simulated days",
        g.customers, g.seed, summary.messages, g.days
    );
    let send_cfg = SendConfig {
        url: base.to_string(),
        web_key: key_for(config, "web")?,
        crm_key: key_for(config, "call_center")?,
        rate_per_sec: opts.rate_per_sec,
        batch: 100,
        sent_at: true,
    };
    let b = bar(opts.progress, summary.messages as u64, "events sent");
    let stats = send(&messages, &send_cfg, Some(&b)).await?;
    b.finish();
    if stats.rejected > 0 {
        bail!(
            "the collector rejected {} generated messages (see touchpoints.dlq)",
            stats.rejected
        );
    }
    println!(
        "sent {} events in {} requests",
        stats.accepted, stats.requests
    );

    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let b = bar(
        opts.progress,
        summary.attempts as u64,
        "funnel attempts closed",
    );
    let deadline = Instant::now() + opts.wait;
    loop {
        let closed = closed_attempts(&ch, g, start_ms).await.unwrap_or(0);
        b.set_position(closed.min(summary.attempts as u64));
        if closed >= summary.attempts as u64 {
            break;
        }
        if Instant::now() > deadline {
            b.abandon();
            bail!(
                "the pipeline closed {closed} of {} funnel attempts within {:?}; see .local/log, the processor metrics and its log (`touchstream demo --verbose`)",
                summary.attempts,
                opts.wait
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.finish();
    // Let the last journey rows land (they are written in the same batches, but a
    // touchpoint may trail its attempt by one flush).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let measured = measure(&ch, g, start_ms).await?;
    let text = render(g, &summary, &measured);
    let report_html = match &opts.report_html {
        Some(path) => {
            write_html_report(config, start_ms, path).await?;
            Some(path.clone())
        }
        None => None,
    };
    Ok(DemoResult {
        report: text,
        measured,
        plan: summary,
        report_html,
    })
}

/// The HTML report of the run (README "Report"), over the period of its journeys: from
/// the first generated event to now. Rows of other runs in the same database that fall in
/// that period are in it too (the text report reads this run's customers only).
async fn write_html_report(
    config: &Config,
    start_ms: i64,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut options = touchstream_report::ReportOptions::new(now_ms);
    options.period = touchstream_report::Period {
        since_ms: Some(start_ms),
        until_ms: Some(now_ms + 1),
    };
    let quiet = |_: &str| {};
    let report = touchstream_report::generate(config, &options, &quiet)
        .await
        .context("querying ClickHouse for the HTML report")?;
    touchstream_report::write_html(&report, path)?;
    Ok(())
}
