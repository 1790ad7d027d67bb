//! The collector and processor under test, as child processes of this binary, and what
//! Linux's /proc says about them (CPU time, RSS) and about the machine.
//!
//! Children rather than tasks in this process so that CPU time and memory are the
//! component's own, exactly as an operator would see them with `top`. A [`ChildProc`]
//! kills its process when dropped, so no exit path (error, panic, Ctrl-C) leaves one
//! running.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::BenchError;

/// A running `touchstream collector` or `touchstream processor`.
pub struct ChildProc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildProc {
    /// Start `exe --config <config> <args>` with stderr to `log`. Environment overrides
    /// (`TOUCHSTREAM__*`, `TOUCHSTREAM_CONFIG`) are removed: the config file already is
    /// the effective configuration, and applying them twice could undo the bench's own
    /// settings (topic names, database).
    pub fn spawn(
        name: &str,
        exe: &Path,
        config: &Path,
        args: &[&str],
        log: PathBuf,
    ) -> Result<Self, BenchError> {
        let file = std::fs::File::create(&log)
            .map_err(|e| BenchError::io(format!("creating {}", log.display()), e))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--config").arg(config).args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TOUCHSTREAM_") {
                cmd.env_remove(&k);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {} {name}", exe.display()), e))?;
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fail if the process has exited (it never should during a phase).
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::ChildExited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
                tail: log_tail(&self.log, 4096),
            }),
            Err(e) => Err(BenchError::io(format!("checking {}", self.name), e)),
        }
    }

    /// User + system CPU time so far, seconds (all threads, librdkafka's included).
    pub fn cpu_secs(&self) -> Result<f64, BenchError> {
        cpu_secs_of(&format!("/proc/{}/stat", self.pid()))
    }

    /// CPU seconds so far per thread name (`comm`, e.g. `tokio-runtime-w`,
    /// `rdk:broker1`), threads of one name summed. Threads that exited are missing, so
    /// compare two readings only for long-lived threads.
    pub fn thread_cpu_secs(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return out;
        };
        for entry in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let name = parse_stat_comm(&stat).unwrap_or_default().to_string();
            if let Some(ticks) = parse_stat_cpu_ticks(&stat) {
                *out.entry(name).or_insert(0.0) += ticks as f64 / clk_tck();
            }
        }
        out
    }

    /// Resident set size now, bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> Result<u64, BenchError> {
        status_kib(self.pid(), "VmRSS:").map(|k| k * 1024)
    }

    /// Peak resident set size, bytes (`VmHWM`).
    pub fn peak_rss_bytes(&self) -> Result<u64, BenchError> {
        status_kib(self.pid(), "VmHWM:").map(|k| k * 1024)
    }

    /// SIGTERM (clean shutdown: drain, flush, commit), then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Drop kills.
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The last `max` bytes of a log file, for error messages.
pub fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

/// Clock ticks per second of /proc CPU times (`getconf CLK_TCK`, 100 on Linux).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

fn cpu_secs_of(stat_path: &str) -> Result<f64, BenchError> {
    let text = std::fs::read_to_string(stat_path)
        .map_err(|e| BenchError::io(format!("reading {stat_path}"), e))?;
    parse_stat_cpu_ticks(&text)
        .map(|t| t as f64 / clk_tck())
        .ok_or_else(|| {
            BenchError::io(
                format!("parsing {stat_path}"),
                std::io::Error::other("unexpected format"),
            )
        })
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line, in ticks. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted after the
/// last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds per thread name between two [`ChildProc::thread_cpu_secs`] readings
/// (names absent from the first reading count from zero: threads started in between).
pub fn thread_cpu_diff(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, a)| {
            (
                name.clone(),
                (a - before.get(name).copied().unwrap_or(0.0)).max(0.0),
            )
        })
        .collect()
}

/// The local services a phase leans on, as (name in figures, command name in /proc, label):
/// ClickHouse's server and the broker (tansu; Apache Kafka would show as `java`, which is
/// too vague to count).
pub const SERVICES: [(&str, &str, &str); 2] = [
    ("clickhouse", "clickhouse-serv", "ClickHouse"),
    ("broker", "tansu", "broker (tansu)"),
];

/// CPU seconds used so far by each of [`SERVICES`] running on this host, summed over its
/// processes; a service that is not running here (another host, a container runtime
/// that hides it) is missing. Compare two readings: a difference is what the service
/// spent in between, including work for others (so keep other load off the box).
pub fn service_cpu_secs() -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let pid = entry.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(comm) = parse_stat_comm(&stat) else {
            continue;
        };
        let Some((name, _, _)) = SERVICES.iter().find(|(_, c, _)| *c == comm) else {
            continue;
        };
        if let Some(ticks) = parse_stat_cpu_ticks(&stat) {
            *out.entry(*name).or_insert(0.0) += ticks as f64 / clk_tck();
        }
    }
    out
}

/// What each service of [`SERVICES`] spent between two [`service_cpu_secs`] readings,
/// seconds, added to `into`; only services seen both times count.
pub fn add_service_cpu(
    into: &mut BTreeMap<&'static str, f64>,
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
) {
    for (name, a) in after {
        if let Some(b) = before.get(name) {
            *into.entry(*name).or_insert(0.0) += (a - b).max(0.0);
        }
    }
}

/// The command name (field 2) of a /proc/<pid>/stat line: between the first `(` and the
/// last `)`, since it may contain either.
fn parse_stat_comm(stat: &str) -> Option<&str> {
    let (_, rest) = stat.split_once('(')?;
    rest.rsplit_once(')').map(|(name, _)| name)
}

/// CPU time of this process (the load generator, or the raw clients of the baselines),
/// seconds: user + system of every thread, those that ended included
/// (`CLOCK_PROCESS_CPUTIME_ID`, nanoseconds, where `/proc/self/stat` counts 10 ms ticks
/// and a tiny run's raw client takes only a few).
pub fn self_cpu_secs() -> Result<f64, BenchError> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Ok(t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
}

fn status_kib(pid: u32, key: &str) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text =
        std::fs::read_to_string(&path).map_err(|e| BenchError::io(format!("reading {path}"), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            BenchError::io(
                format!("reading {key} from {path}"),
                std::io::Error::other("field missing"),
            )
        })
}

/// Where the run happened, so figures from different boxes are not mixed up.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub nproc: usize,
    /// `MemTotal` from /proc/meminfo, bytes.
    pub memory_bytes: u64,
    /// Kernel release.
    pub kernel: String,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// `git rev-parse HEAD` of the working directory, when it is a checkout.
    pub git_commit: Option<String>,
    /// Whether the checkout had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// ClickHouse `version()`.
    pub clickhouse_version: String,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// Whether the binary was built with optimizations (debug figures mean little).
    pub release_build: bool,
}

/// Facts about the box (what /proc and git say; blanks where they say nothing).
pub fn machine(clickhouse_version: String, kafka_brokers: String) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let memory_bytes = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |k| k * 1024);
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let git_commit = git(&["rev-parse", "HEAD"]);
    let git_dirty = git_commit
        .as_ref()
        .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_bytes,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu_model,
        git_commit,
        git_dirty,
        clickhouse_version,
        kafka_brokers,
        release_build: !cfg!(debug_assertions),
    }
}

/// A free TCP port on loopback (bind to 0, read it, release it).
pub fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::io("finding a free port", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_tricky_command_name() {
        let line = "1234 (touch (stream) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 100 1000 200";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
        assert_eq!(parse_stat_comm(line), Some("touch (stream) x"));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn service_cpu_adds_up_differences() {
        let before = BTreeMap::from([("clickhouse", 10.0), ("broker", 1.0)]);
        let after = BTreeMap::from([("clickhouse", 12.5), ("broker", 1.5)]);
        let mut total = BTreeMap::new();
        add_service_cpu(&mut total, &before, &after);
        add_service_cpu(&mut total, &before, &after);
        assert_eq!(total.get("clickhouse"), Some(&5.0));
        assert_eq!(total.get("broker"), Some(&1.0));
        // A service seen only once (started or stopped in between) is left out.
        let mut once = BTreeMap::new();
        add_service_cpu(&mut once, &BTreeMap::new(), &after);
        assert!(once.is_empty());
        // Every service found here is a real process with a readable CPU time.
        assert!(service_cpu_secs().values().all(|v| *v >= 0.0));
    }

    #[test]
    fn own_process_is_readable() {
        assert!(self_cpu_secs().unwrap() >= 0.0);
        let m = machine(String::new(), String::new());
        assert!(m.nproc >= 1);
        assert!(m.memory_bytes > 0);
    }
}
