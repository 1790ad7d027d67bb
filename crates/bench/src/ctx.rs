//! What every phase shares: the run's names (topics, databases, consumer groups are
//! fresh per phase, so the bench never reads or disturbs anyone else's data on the same
//! services), starting children with a config file, progress bars, and waiting for rows
//! to become visible in ClickHouse.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clickhouse::Row;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use touchstream_core::Config;

use crate::config::BenchOptions;
use crate::error::BenchError;
use crate::procs::ChildProc;

/// Shared state of one run.
pub struct Ctx {
    /// The deployment config the run started from (where the services are).
    pub base: Config,
    /// Sizes and knobs.
    pub opts: BenchOptions,
    /// Unique id of this run (in every name it creates).
    pub run_id: String,
    /// Child configs and logs.
    pub work_dir: PathBuf,
    /// This binary, started again as `collector` / `processor`.
    pub exe: PathBuf,
    /// Topics created, for cleanup.
    pub topics: Mutex<Vec<String>>,
    /// Databases created, for cleanup.
    pub databases: Mutex<Vec<String>>,
    /// The baseline phase's topic, already holding the workload's records: the processor
    /// phase reads it instead of producing them again.
    pub prefilled: Mutex<Option<String>>,
    /// Phase diagnostics for the report (where time and bytes went).
    pub diagnostics: Mutex<serde_json::Map<String, serde_json::Value>>,
    /// Notes for the report.
    pub notes: Mutex<Vec<String>>,
}

impl Ctx {
    /// The pipeline config of one phase: fresh topics, database and consumer group.
    pub fn phase_config(&self, tag: &str) -> Config {
        let mut c = self.base.clone();
        let prefix = format!("bench.{}.{tag}", self.run_id);
        c.kafka.raw_topic = format!("{prefix}.raw");
        c.kafka.dlq_topic = format!("{prefix}.dlq");
        c.kafka.aliases_topic = format!("{prefix}.aliases");
        c.kafka.routed_topic = format!("{prefix}.routed");
        c.clickhouse.database = format!(
            "touchstream_bench_{}_{}",
            self.run_id,
            tag.replace(['.', '-'], "_")
        );
        c.processor.group_id = format!("bench-{}-{tag}", self.run_id);
        c
    }

    /// Create the phase's topics and (when `migrate`) its database.
    pub async fn prepare(&self, c: &Config, migrate: bool) -> Result<(), BenchError> {
        if let Ok(mut t) = self.topics.lock() {
            for name in [
                &c.kafka.raw_topic,
                &c.kafka.dlq_topic,
                &c.kafka.aliases_topic,
                &c.kafka.routed_topic,
            ] {
                if !t.contains(name) {
                    t.push(name.clone());
                }
            }
        }
        touchstream_core::kafka::ensure_topics(&c.kafka, &[]).await?;
        if migrate {
            if let Ok(mut d) = self.databases.lock() {
                d.push(c.clickhouse.database.clone());
            }
            touchstream_clickhouse::migrate(&c.clickhouse).await?;
        }
        Ok(())
    }

    /// Start `touchstream <args>` with `config` written to `<work_dir>/<tag>.toml`; its
    /// log goes to `<work_dir>/<tag>.log`.
    pub fn spawn(
        &self,
        tag: &str,
        config: &Config,
        args: &[&str],
    ) -> Result<ChildProc, BenchError> {
        let path = self.work_dir.join(format!("{tag}.toml"));
        let text = toml::to_string(config).map_err(|e| {
            BenchError::io(
                format!("writing {}", path.display()),
                std::io::Error::other(e),
            )
        })?;
        write_private(&path, &text)?;
        ChildProc::spawn(
            tag,
            &self.exe,
            &path,
            args,
            self.work_dir.join(format!("{tag}.log")),
        )
    }

    /// A processor child with its metrics on a free port; also returns the metrics base
    /// URL (`http://127.0.0.1:PORT`).
    pub fn spawn_processor(
        &self,
        tag: &str,
        config: &Config,
    ) -> Result<(ChildProc, String), BenchError> {
        let addr = format!("127.0.0.1:{}", crate::procs::free_port()?);
        let child = self.spawn(tag, config, &["processor", "--metrics-listen", &addr])?;
        Ok((child, format!("http://{addr}")))
    }

    /// Record something worth keeping that is not a figure (JSON `diagnostics`).
    pub fn diagnose(&self, key: &str, value: serde_json::Value) {
        if let Ok(mut d) = self.diagnostics.lock() {
            d.insert(key.to_string(), value);
        }
    }

    /// Add a line to the report's notes.
    pub fn note(&self, line: String) {
        if let Ok(mut n) = self.notes.lock() {
            n.push(line);
        }
    }

    /// A progress bar (hidden unless progress is on).
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.opts.progress {
            return ProgressBar::hidden();
        }
        let b = ProgressBar::new(len);
        let style = ProgressStyle::with_template(
            "{msg:>30} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        b.set_style(style);
        b.set_message(what.to_string());
        b
    }

    /// A line above the progress bars.
    pub fn say(&self, line: &str) {
        if self.opts.progress {
            eprintln!("{line}");
        }
    }
}

/// Write a file only the owner can read (child configs may hold the ClickHouse password).
fn write_private(path: &std::path::Path, text: &str) -> Result<(), BenchError> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    o.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
}

/// How long to wait for `n` events to become visible: generous (2,000 ev/s) so that only
/// a stuck pipeline times out, never a slow one.
pub fn wait_limit(n: usize) -> Duration {
    Duration::from_secs(120 + (n / 2000) as u64)
}

/// When rows showed up while waiting for them.
pub struct Visible {
    /// When the first rows were seen, and how many.
    pub first: Option<(Instant, u64)>,
    /// The child's CPU seconds at that moment.
    pub first_cpu: f64,
    /// When all rows were visible.
    pub done: Instant,
    /// The child's CPU seconds then.
    pub done_cpu: f64,
    /// CPU seconds per thread name when the first rows were seen, and when all were.
    pub threads: (BTreeMap<String, f64>, BTreeMap<String, f64>),
    /// CPU seconds of the local services ([`crate::procs::service_cpu_secs`]) then.
    pub services: (BTreeMap<&'static str, f64>, BTreeMap<&'static str, f64>),
}

#[derive(Row, Deserialize)]
struct Count {
    n: u64,
}

async fn count(ch: &clickhouse::Client, sql: &str) -> Result<u64, BenchError> {
    ch.query(sql)
        .fetch_one::<Count>()
        .await
        .map(|c| c.n)
        .map_err(|e| BenchError::clickhouse(sql.to_string(), e))
}

/// Poll ClickHouse until `n` distinct events have a `touchpoint_journey` row (the
/// journey stage's output: customer, session, stage, channel), i.e. the whole processor
/// has handled them. `count()` (free: part metadata) is polled every 200 ms;
/// `uniqExact(event_id)` confirms once it is high enough, since a re-attributed event has
/// more than one row until merges.
pub async fn wait_journey_rows(
    config: &Config,
    child: &mut ChildProc,
    n: u64,
    bar: &ProgressBar,
) -> Result<Visible, BenchError> {
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let limit = wait_limit(n as usize);
    let started = Instant::now();
    let mut first = None;
    let mut first_cpu = 0.0;
    let mut first_threads = BTreeMap::new();
    let mut first_services = BTreeMap::new();
    loop {
        child.check_alive()?;
        let rows = count(&ch, "SELECT count() AS n FROM touchpoint_journey").await?;
        if rows > 0 && first.is_none() {
            first = Some((Instant::now(), rows));
            first_cpu = child.cpu_secs()?;
            first_threads = child.thread_cpu_secs();
            first_services = crate::procs::service_cpu_secs();
        }
        bar.set_position(rows.min(n));
        if rows >= n {
            let distinct = count(
                &ch,
                "SELECT uniqExact(event_id) AS n FROM touchpoint_journey",
            )
            .await?;
            if distinct >= n {
                return Ok(Visible {
                    first,
                    first_cpu,
                    done: Instant::now(),
                    done_cpu: child.cpu_secs()?,
                    threads: (first_threads, child.thread_cpu_secs()),
                    services: (first_services, crate::procs::service_cpu_secs()),
                });
            }
        }
        if started.elapsed() > limit {
            let events = count(&ch, "SELECT count() AS n FROM events")
                .await
                .unwrap_or(0);
            return Err(BenchError::Timeout {
                what: format!(
                    "{n} events in {}.touchpoint_journey (saw {rows} journey rows; \
                     {events} rows in events, the identity stage's output)",
                    config.clickhouse.database
                ),
                after: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
