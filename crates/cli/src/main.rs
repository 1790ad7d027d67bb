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
    },
    /// Run the stream processor (Kafka → identity, sessions, funnels → ClickHouse). Run
    /// several copies for more throughput; stops cleanly on SIGTERM/Ctrl-C.
    Processor {
        /// Metrics listen address; overrides processor.metrics_listen.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Print the effective configuration (defaults + file + env), secrets masked.
    Config,
}

/// One token for the whole process, cancelled on SIGTERM or Ctrl-C (STYLE §7).
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

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(cli.config.as_deref(), &env).context("loading configuration")?;

    match cli.command {
        Command::Migrate {
            print_sql_for: Some(version),
        } => {
            let version = version.parse().map_err(anyhow::Error::msg)?;
            let sql = touchstream_clickhouse::plan_sql(&config.clickhouse.database, version)?;
            println!("{}", serde_json::to_string_pretty(&sql)?);
        }
        Command::Migrate {
            print_sql_for: None,
        } => {
            let report = touchstream_clickhouse::migrate(&config.clickhouse)
                .await
                .with_context(|| format!("migrating ClickHouse at {}", config.clickhouse.url))?;
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
            for (topic, new) in created {
                println!(
                    "  {topic:<32} {}",
                    if new { "created" } else { "already exists" }
                );
            }
        }
        Command::Collector { listen } => {
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
        Command::Config => {
            println!("{config:#?}");
        }
    }
    Ok(())
}
