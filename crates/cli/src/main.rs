//! `touchstream`: the one command that runs every part of the pipeline.
//!
//! Thin by design: parse arguments, load config, init tracing, call into the library
//! crates. Everything worth testing lives in those crates.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use touchstream_core::Config;

#[derive(Parser)]
#[command(
    name = "touchstream",
    version,
    about = "Touchstream: customer touchpoint analytics pipeline (collector → Kafka → processor → ClickHouse)",
    long_about = "Touchstream collects touchpoint events over a Segment-compatible HTTP API (collector), \
                  writes them to Kafka as Avro, builds identities, sessions, journeys and funnels \
                  (processor) and stores them in ClickHouse for analysts.\n\n\
                  Typical first run on a dev machine:\n  \
                  deploy/local/services.sh up     # Kafka (tansu), ClickHouse, Prometheus, Alertmanager\n  \
                  touchstream migrate             # create the ClickHouse tables\n  \
                  touchstream topics              # create the Kafka topics\n  \
                  touchstream collector &         # HTTP API on 127.0.0.1:8080\n  \
                  touchstream processor           # Kafka → ClickHouse\n\n\
                  Configuration: --config FILE (see deploy/touchstream.example.toml); every key can be \
                  overridden with TOUCHSTREAM__SECTION__KEY environment variables."
)]
struct Cli {
    /// Config file (TOML). Without it, documented defaults apply (local services on loopback).
    #[arg(long, short, global = true, env = "TOUCHSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TOUCHSTREAM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Apply ClickHouse migrations from deploy/clickhouse (idempotent; safe to run twice).
    Migrate {
        /// Print, as a JSON array, the SQL a fresh database on a server of this version
        /// (e.g. 18.16, 26.9) would get, instead of connecting.
        #[arg(long, value_name = "VERSION")]
        print_sql_for: Option<String>,
    },
    /// Create the Kafka topics (touchpoints.raw, touchpoints.dlq, internal topics); safe to run twice.
    Topics,
    /// Run the HTTP collector (Segment-compatible API → Kafka). Stops cleanly on SIGTERM/Ctrl-C.
    Collector {
        /// Listen address; overrides collector.listen.
        #[arg(long)]
        listen: Option<String>,
        /// Accept the demo write keys (`demo-web-key`, `demo-crm-key`) for a local run;
        /// sets collector.allow_demo_keys. Without it the collector refuses to start with them.
        #[arg(long)]
        allow_demo_keys: bool,
    },
    /// Run the stream processor (Kafka → identity, sessions, funnels → ClickHouse). Run
    /// several copies for more throughput; stops cleanly on SIGTERM/Ctrl-C.
    Processor {
        /// Metrics listen address; overrides processor.metrics_listen.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// The main job: migrate, create topics, run a collector and a processor, send
    /// generated journeys through the HTTP API, print a funnel report from ClickHouse
    /// and write the HTML report (README "Report").
    /// Needs the local services (deploy/local/demo.sh starts them first).
    Demo {
        #[command(flatten)]
        gen: GenArgs,
        /// Target events per second; 0 = as fast as the collector answers.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Seconds to wait for the pipeline to catch up after sending.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        /// Where to write the run's HTML report (README "Report").
        #[arg(
            long,
            value_name = "FILE",
            default_value = "target/touchstream-report.html"
        )]
        html: PathBuf,
        /// Also print the in-process collector's and processor's info logs (stderr).
        /// Without it only warnings and errors are logged, so the report reads clean;
        /// RUST_LOG, when set, decides either way.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Send generated customer journeys to any collector (test data, load).
    Generate {
        #[command(flatten)]
        gen: GenArgs,
        /// Collector base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Write key of the web source.
        #[arg(long, default_value = "demo-web-key")]
        web_key: String,
        /// Write key of the call-centre source.
        #[arg(long, default_value = "demo-crm-key")]
        crm_key: String,
        /// Target events per second; 0 = as fast as the collector answers.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Measure the pipeline on the local services: raw Kafka/ClickHouse baselines,
    /// collector and processor throughput, latency at a fixed rate, processor memory per
    /// customer. Prints a table and writes JSON (see docs/bench.md).
    Bench(BenchArgs),
    /// Write the report (README "Report"): one self-contained HTML page with the funnels
    /// (drop-off per step and per breakdown segment) and the complaint → follow-up SLA,
    /// read from ClickHouse. Prints the file's path; progress on stderr.
    Report {
        /// The HTML file to write (folders are created).
        #[arg(long, value_name = "FILE")]
        html: PathBuf,
        /// Start of the period, inclusive: a UTC date (YYYY-MM-DD) or an RFC 3339 time
        /// (2026-11-30T12:00:00Z). Default: all history.
        #[arg(long, value_parser = parse_report_since)]
        since: Option<i64>,
        /// End of the period, exclusive: an RFC 3339 time, or a UTC date (the whole day
        /// is in). Default: no end.
        #[arg(long, value_parser = parse_report_until)]
        until: Option<i64>,
        /// Only this funnel (as named in the funnels file) in the funnels section.
        #[arg(long)]
        funnel: Option<String>,
        /// The complaint follow-up target, hours.
        #[arg(long, default_value_t = 24.0)]
        sla_hours: f64,
    },
    /// Print the effective configuration (defaults + file + env), secrets masked.
    Config,
    /// Funnel maintenance (README, "Changing funnels").
    Funnels {
        #[command(subcommand)]
        command: FunnelsCommand,
    },
    /// Drop the monthly partitions older than each table's clickhouse.retention_days
    /// (README, "Privacy"); prints each partition as it goes. Idempotent: run it daily.
    Retention {
        /// Print what would be dropped, drop nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Erase a person everywhere (README, "Privacy"): resolve their linked ids, suppress
    /// them (processors never store them again, even on a replay), delete their rows from
    /// every table, wait for running processors to purge their saved state, and log the
    /// erasure in `erasures` (no personal data). Idempotent: run it again for the same
    /// person and it finds the same ids.
    Erase {
        /// The user id to erase, with every anonymous id linked to it.
        #[arg(
            long,
            conflicts_with = "anonymous_id",
            required_unless_present = "anonymous_id"
        )]
        user: Option<String>,
        /// The anonymous id to erase (with its user and the user's other ids, if linked).
        #[arg(long)]
        anonymous_id: Option<String>,
        /// Who asked (an operator or ticket reference; stored in `erasures`).
        #[arg(long, default_value = "cli")]
        requested_by: String,
        /// Seconds to wait for running processors to re-save their state without the
        /// person.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
}

#[derive(Subcommand)]
enum FunnelsCommand {
    /// Recompute one funnel's attempts from the history stored in ClickHouse after its
    /// definition changed or it was added: writes the rows the stream would have written
    /// (same attempt ids, superseding versions, old rows tombstoned) and updates the
    /// processor's saved state so it continues from them. Stop the processors first.
    Backfill {
        /// Funnel name, as in the funnels file.
        name: String,
        /// Only attempts that started on or after this date (YYYY-MM-DD, UTC) or time
        /// (RFC 3339); earlier ones stay as they are. Default: all history.
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
    },
}

/// `--since`: a UTC date or an RFC 3339 time, as epoch ms.
fn parse_since(text: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    let at = match time::OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            time::Date::parse(text, &format)
                .map_err(|e| format!("expected YYYY-MM-DD or an RFC 3339 time: {e}"))?
                .midnight()
                .assume_utc()
        }
    };
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|e| e.to_string())
}

/// `report --since`: a date is its day's start.
fn parse_report_since(text: &str) -> Result<i64, String> {
    touchstream_report::parse_time(text, touchstream_report::End::Start)
}

/// `report --until`: a date is the next day's start (the whole day is in).
fn parse_report_until(text: &str) -> Result<i64, String> {
    touchstream_report::parse_time(text, touchstream_report::End::End)
}

/// `touchstream bench` options; unset sizes come from `--size`.
#[derive(clap::Args)]
struct BenchArgs {
    /// Preset sizes: tiny (seconds, what CI runs), small (minutes), full (the issue's:
    /// 1M events, memory at 10k/100k/1M customers, analyst queries at 10M events),
    /// analyst (the analyst phase alone at 10M events).
    #[arg(long, default_value = "small")]
    size: touchstream_bench::Size,
    /// Events of the baseline, collector and processor phases.
    #[arg(long)]
    events: Option<usize>,
    /// Active-customer counts of the memory phase, comma separated.
    #[arg(long, value_delimiter = ',')]
    customers: Option<Vec<usize>>,
    /// Concurrent HTTP keep-alive clients of the collector phase.
    #[arg(long)]
    clients: Option<usize>,
    /// Offered rate of the latency phase, events/s.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Seconds the latency phase sends for.
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Events the analyst phase loads (a tenth as many customers, over 30 days).
    #[arg(long)]
    analyst_events: Option<usize>,
    /// Repetitions of the cpu and memory phases (min / median / max; memory: worst).
    #[arg(long)]
    reps: Option<usize>,
    /// Phases to run, comma separated: baseline, collector, processor, cpu, latency,
    /// memory, analyst.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<touchstream_bench::Phase>>,
    /// Where to write the JSON report (default target/bench/bench-<run id>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the run's databases, topics, child configs and logs for inspection.
    #[arg(long)]
    keep: bool,
}

impl BenchArgs {
    fn options(&self) -> touchstream_bench::BenchOptions {
        let mut o = touchstream_bench::BenchOptions::preset(self.size);
        if let Some(n) = self.events {
            o.events = n;
        }
        if let Some(c) = &self.customers {
            o.customers.clone_from(c);
        }
        if let Some(n) = self.clients {
            o.clients = n;
        }
        if let Some(r) = self.latency_rate {
            o.latency_rate = r;
        }
        if let Some(s) = self.latency_secs {
            o.latency_secs = s;
        }
        if let Some(n) = self.analyst_events {
            o.analyst_events = n;
        }
        if let Some(n) = self.reps {
            o.reps = n;
        }
        if let Some(p) = &self.only {
            o.phases.clone_from(p);
        }
        o.keep = self.keep;
        o
    }
}

/// Journey generator settings shared by `demo` and `generate`.
#[derive(clap::Args)]
struct GenArgs {
    /// Customers to generate.
    #[arg(long, default_value_t = 2000)]
    customers: usize,
    /// Seed: the same seed gives the same journeys.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Days over which journeys start (they end 8 days before now, so every window closes).
    /// Journeys older than the collector's `max_event_age_days` (default 30) are rejected
    /// by `touchstream generate`'s collector as `event_time_too_old`; the demo widens its
    /// own collector's limit to fit.
    #[arg(long, default_value_t = 7)]
    days: i64,
    /// Web checkout drop-off at steps 1-3 (Product Viewed, Product Added, Checkout Started).
    #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [0.45, 0.35, 0.25])]
    checkout_dropoff: Vec<f64>,
    /// Service recovery drop-off at steps 1-2 (Complaint Filed, Follow-up Completed).
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [0.2, 0.5])]
    service_dropoff: Vec<f64>,
}

impl GenArgs {
    fn config(&self) -> anyhow::Result<touchstream_demo::generator::GeneratorConfig> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let mut c = touchstream_demo::generator::GeneratorConfig::new(now);
        c.customers = self.customers;
        c.seed = self.seed;
        c.days = self.days;
        c.checkout_dropoff = <[f64; 3]>::try_from(self.checkout_dropoff.as_slice())
            .map_err(|_| anyhow::anyhow!("--checkout-dropoff takes 3 values"))?;
        c.service_dropoff = <[f64; 2]>::try_from(self.service_dropoff.as_slice())
            .map_err(|_| anyhow::anyhow!("--service-dropoff takes 2 values"))?;
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

/// The wall clock, epoch ms.
fn now_ms() -> anyhow::Result<i64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64)
}

/// One token for the whole process, cancelled on SIGTERM or Ctrl-C (README, the CLI).
fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// jemalloc instead of the system allocator: the per-event paths allocate a lot (JSON,
/// Avro, rows), and glibc's per-thread arenas keep what a burst freed. jemalloc is as fast
/// here as mimalloc was (processor bench: 1.2–1.5 vs 1.4–1.5 cpu-s per 100k events) and,
/// with a background thread purging pages unused for 1 s (`.cargo/config.toml` compiles
/// `background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_max:4096` in; `MALLOC_CONF`
/// overrides it at run time), gives a backlog's memory back where mimalloc kept it
/// (bench memory phase at 10k customers: 34 vs 78 MB resting). It replaces `malloc`
/// for the whole process (`unprefixed_malloc_on_supported_platforms`), so librdkafka's
/// per-message allocations use it too instead of glibc's arenas, which kept a backlog's
/// fetch buffers at rest (docs/performance.md, memory per active customer). Build with
/// `--no-default-features` for the system allocator (heap profilers).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before any Kafka client starts its threads (see touchstream_core::memory): with
    // jemalloc serving `malloc` too, glibc's arenas are left alone.
    #[cfg(feature = "jemalloc")]
    touchstream_core::memory::malloc_replaced();
    touchstream_core::memory::limit_c_heap_arenas();
    let cli = Cli::parse();
    // The bench and the demo draw progress bars and print a report; info lines (the
    // bench's migrations, the demo's in-process collector and processor) would only
    // break them. The services themselves log at info.
    let default_level = match cli.command {
        Command::Bench(_) | Command::Demo { verbose: false, .. } | Command::Report { .. } => "warn",
        _ => "info",
    };
    init_tracing(cli.log_format, default_level);
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(cli.config.as_deref(), &env).context("loading configuration")?;

    match cli.command {
        Command::Migrate {
            print_sql_for: Some(version),
        } => {
            let version = version.parse().map_err(|e| {
                anyhow::anyhow!(
                    "--print-sql-for takes a ClickHouse server version, major.minor \
                     (e.g. 18.16 or 26.9): {e}"
                )
            })?;
            let sql = touchstream_clickhouse::plan_sql(
                &config.clickhouse.database,
                version,
                config.clickhouse.cluster.as_deref(),
            )?;
            println!("{}", serde_json::to_string_pretty(&sql)?);
        }
        Command::Migrate {
            print_sql_for: None,
        } => {
            let report = touchstream_clickhouse::migrate(&config.clickhouse)
                .await
                .with_context(|| {
                    format!(
                        "migrating ClickHouse at {}",
                        touchstream_core::config::masked_url(&config.clickhouse.url)
                    )
                })?;
            println!(
                "ClickHouse {} at {}, database {}:",
                report.server, config.clickhouse.url, config.clickhouse.database
            );
            for (file, outcome) in &report.files {
                let what = match outcome {
                    touchstream_clickhouse::MigrationOutcome::Applied => "applied".to_string(),
                    touchstream_clickhouse::MigrationOutcome::AlreadyApplied => {
                        "already applied".to_string()
                    }
                    touchstream_clickhouse::MigrationOutcome::Skipped { requires } => {
                        format!("skipped (needs ClickHouse {requires}+)")
                    }
                };
                println!("  {file:<32} {what}");
            }
        }
        Command::Topics => {
            let created = touchstream_core::kafka::ensure_topics(&config.kafka, &[])
                .await
                .with_context(|| format!("creating topics on {}", config.kafka.brokers))?;
            for t in created {
                println!(
                    "  {:<32} {:<15} {} partitions, {} replica(s)",
                    t.name,
                    if t.created {
                        "created"
                    } else {
                        "already exists"
                    },
                    t.partitions,
                    t.replication
                );
                for w in &t.warnings {
                    eprintln!("  warning: {w}");
                }
            }
        }
        Command::Collector {
            listen,
            allow_demo_keys,
        } => {
            let mut config = config;
            config.collector.allow_demo_keys |= allow_demo_keys;
            let addr = listen.unwrap_or_else(|| config.collector.listen.clone());
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("binding the collector to {addr}"))?;
            let shutdown = shutdown_on_signal();
            touchstream_collector::run(config, listener, shutdown).await?;
        }
        Command::Processor { metrics_listen } => {
            let addr = metrics_listen.unwrap_or_else(|| config.processor.metrics_listen.clone());
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("binding processor metrics to {addr}"))?;
            let shutdown = shutdown_on_signal();
            touchstream_processor::run(config, Some(listener), shutdown).await?;
        }
        Command::Demo {
            gen,
            rate,
            wait_secs,
            html,
            verbose: _,
        } => {
            let opts = touchstream_demo::demo::DemoOptions {
                generator: gen.config()?,
                rate_per_sec: rate,
                wait: std::time::Duration::from_secs(wait_secs),
                progress: true,
                report_html: Some(html),
            };
            let clickhouse = config.clickhouse.clone();
            let result = touchstream_demo::demo::run(config, opts).await?;
            println!("{}", result.report);
            if let Some(path) = &result.report_html {
                println!("HTML report: {}", path.display());
            }
            println!(
                "Query ClickHouse: clickhouse-client --port 9000 -d {} (or HTTP {}); example queries in docs/queries/ and the README.\n\
                 Metrics: run `touchstream collector` / `touchstream processor` and scrape :8080/metrics and :9464/metrics; \
                 Prometheus http://127.0.0.1:9090, Alertmanager http://127.0.0.1:9093.",
                clickhouse.database, clickhouse.url
            );
        }
        Command::Generate {
            gen,
            url,
            web_key,
            crm_key,
            rate,
        } => {
            let g = gen.config()?;
            let (messages, summary) = touchstream_demo::generator::plan(&g);
            let bar = indicatif::ProgressBar::new(summary.messages as u64);
            let stats = touchstream_demo::sender::send(
                &messages,
                &touchstream_demo::sender::SendConfig {
                    url,
                    web_key,
                    crm_key,
                    rate_per_sec: rate,
                    batch: 100,
                    sent_at: true,
                },
                Some(&bar),
            )
            .await?;
            bar.finish();
            println!(
                "sent {} messages ({} accepted, {} rejected) in {} requests",
                summary.messages, stats.accepted, stats.rejected, stats.requests
            );
        }
        Command::Bench(args) => {
            let report =
                touchstream_bench::run(config, args.options(), shutdown_on_signal()).await?;
            println!("{}", report.table());
            let summary = report.summary();
            if !summary.is_empty() {
                println!("{summary}");
            }
            for note in &report.notes {
                println!("note: {note}");
            }
            let path = args
                .json
                .clone()
                .unwrap_or_else(|| touchstream_bench::default_json_path(&report));
            touchstream_bench::write_json(&report, &path)?;
            println!("JSON report: {}", path.display());
            if !report.errors.is_empty() {
                anyhow::bail!("{} bench phase(s) failed (see above)", report.errors.len());
            }
        }
        Command::Config => {
            println!("{config:#?}");
        }
        Command::Report {
            html,
            since,
            until,
            funnel,
            sla_hours,
        } => {
            if !(sla_hours > 0.0 && sla_hours.is_finite()) {
                anyhow::bail!("--sla-hours must be a positive number of hours, got {sla_hours}");
            }
            let mut options = touchstream_report::ReportOptions::new(now_ms()?);
            options.period = touchstream_report::Period {
                since_ms: since,
                until_ms: until,
            };
            options.funnel = funnel;
            options.sla_target_minutes = sla_hours * 60.0;
            let progress = |line: &str| eprintln!("{line}");
            let report = touchstream_report::generate(&config, &options, &progress).await?;
            touchstream_report::write_html(&report, &html)?;
            println!("{}", html.display());
        }
        Command::Retention { dry_run } => {
            use touchstream_clickhouse::retention::{self, Progress};
            refuse_on_cluster(&config, "retention")?;
            if config.clickhouse.retention_days.is_empty() {
                println!("no table has clickhouse.retention_days: every table keeps everything");
                return Ok(());
            }
            let verb = if dry_run { "would drop" } else { "dropping" };
            let progress = |p: Progress<'_>| match p {
                Progress::Table {
                    table,
                    days,
                    keeps_from,
                } => eprintln!("{table}: {days} days, keeping partitions from {keeps_from}"),
                Progress::Partition(e) => {
                    eprintln!(
                        "  {verb} {} partition {} ({} rows)",
                        e.table, e.partition, e.rows
                    )
                }
            };
            let today = time::OffsetDateTime::now_utc().date();
            let report = retention::run(&config.clickhouse, today, dry_run, &progress)
                .await
                .with_context(|| {
                    format!(
                        "retention on ClickHouse at {}",
                        touchstream_core::config::masked_url(&config.clickhouse.url)
                    )
                })?;
            let rows: u64 = report.expired.iter().map(|e| e.rows).sum();
            println!(
                "{} {} partition(s), {rows} rows{}",
                if dry_run { "would drop" } else { "dropped" },
                report.expired.len(),
                if dry_run {
                    " (dry run: nothing dropped)"
                } else {
                    ""
                }
            );
        }
        Command::Erase {
            user,
            anonymous_id,
            requested_by,
            wait_secs,
        } => {
            use touchstream_processor::erase::{erase, EraseOptions, Person, Progress};
            refuse_on_cluster(&config, "erase")?;
            let person = match (user, anonymous_id) {
                (Some(u), _) => Person::User(u),
                (None, Some(a)) => Person::Anonymous(a),
                (None, None) => anyhow::bail!("give --user or --anonymous-id"),
            };
            let progress = |p: Progress| match p {
                Progress::Resolved(n) => eprintln!("{n} linked ids resolved and suppressed"),
                Progress::Deleted { table, rows } => eprintln!("  {table}: {rows} rows deleted"),
                Progress::WaitingForState { snapshots } => eprintln!(
                    "  waiting for processors to re-save {snapshots} snapshot(s) without them"
                ),
            };
            let options = EraseOptions {
                requested_by,
                state_wait: std::time::Duration::from_secs(wait_secs),
            };
            let report = erase(&config, &person, &options, &progress)
                .await
                .context("erasing")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.snapshots_pending > 0 {
                eprintln!(
                    "note: {} saved processor snapshot(s) still hold the person: no running \
                     processor holds those partitions; they are purged when one loads them",
                    report.snapshots_pending
                );
            }
        }
        Command::Funnels {
            command: FunnelsCommand::Backfill { name, since },
        } => {
            use touchstream_processor::backfill::{backfill, BackfillOptions, Progress};
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("backfilling {name}"));
            let progress = |p: Progress| match p {
                Progress::Started { events, customers } => {
                    bar.set_length(events);
                    bar.println(format!(
                        "{events} stored events of {customers} customers to read"
                    ));
                }
                Progress::Events(n) => bar.set_position(n),
            };
            let options = BackfillOptions {
                funnel: name.clone(),
                since_ms: since.unwrap_or(i64::MIN),
            };
            let report = backfill(&config, &options, &progress)
                .await
                .with_context(|| format!("backfilling funnel {name}"))?;
            bar.finish_and_clear();
            println!(
                "backfilled {name}: {} customers, {} events, {} attempt rows written \
                 (tombstones included), {} journey partition states updated",
                report.customers, report.events, report.attempt_rows, report.partitions
            );
            if report.missing_events > 0 {
                println!(
                    "note: {} held events had no stored copy and match no step",
                    report.missing_events
                );
            }
        }
    }
    Ok(())
}

/// `erase` and `retention` change tables by mutation and `DROP PARTITION`, which on a
/// cluster must go to every shard's `_local` table; until they do, they refuse to run
/// rather than fail half-way (README "Running on a cluster").
fn refuse_on_cluster(config: &Config, command: &str) -> anyhow::Result<()> {
    match &config.clickhouse.cluster {
        Some(c) => anyhow::bail!(
            "touchstream {command} does not run on a cluster yet (clickhouse.cluster = {c:?}); \
             see README \"Running on a cluster\""
        ),
        None => Ok(()),
    }
}
