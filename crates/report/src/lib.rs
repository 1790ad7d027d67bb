//! `touchstream report --html FILE`: one self-contained HTML page that shows a person
//! which touchpoints lose customers and which delight them (README "Report").
//!
//! Data comes from ClickHouse (the tables of docs/design.md §6, read with the queries in
//! `crates/report/sql/`, each a docs/queries/ analyst query with the report's period
//! added) and from the funnels file (step names, declared breakdowns). It goes to one
//! HTML file: inline CSS, charts drawn here as inline SVG (the page needs no script and
//! no network to show a figure), and a small inline script that only sorts tables. Every
//! figure on the page also carries `data-key`/`data-value` attributes, so a test can
//! compare the page with ClickHouse.
//!
//! Sections, each bounded by the period (`since`..`until`) and each saying so when it
//! has nothing to show: highlights (drawn from the others), funnels (per step and per
//! breakdown segment), complaint → follow-up SLA, the touchpoint scorecard (with the
//! catalog's floors and targets), stores. The query modules ([`funnels`],
//! [`sla`], [`scorecard`], [`stores`]) return plain structs ([`Report`]); [`html`]
//! renders them, so rendering is tested without a server.

pub mod error;
pub mod funnels;
pub mod html;
pub mod period;
pub mod scorecard;
pub mod sla;
pub mod stores;
mod svg;
mod text;

use std::path::Path;
use std::time::Instant;

use touchstream_core::config::masked_url;
use touchstream_core::Config;
use touchstream_journey::{Catalog, FunnelSet};

pub use error::ReportError;
pub use funnels::{FunnelReport, Outcomes, Segment, StepCount};
pub use period::{parse_time, End, Period};
pub use scorecard::{Measure, Scorecard, ScorecardRow, Threshold};
pub use sla::{SlaBucket, SlaReport, SlaRow};
pub use stores::{AuditRow, StoreRow, Stores};

/// What to report on.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Bounds of every section (attempts by close time). Default: everything.
    pub period: Period,
    /// Only this funnel in the funnels section (`--funnel`); it must be defined in the
    /// funnels file. Default: every funnel of the file.
    pub funnel: Option<String>,
    /// The funnel whose steps 1 → 2 are complaint → follow-up. Default `service_recovery`
    /// (deploy/funnels.toml).
    pub sla_funnel: String,
    /// The follow-up target, minutes: follow-ups within it meet the SLA. Default 1440 (24 h).
    pub sla_target_minutes: f64,
    /// "Now" for complaints still waiting (epoch ms). Default: the wall clock.
    pub now_ms: i64,
}

impl ReportOptions {
    /// Defaults: all time, every funnel, SLA of `service_recovery` within 24 h, "now"
    /// as given.
    pub fn new(now_ms: i64) -> Self {
        Self {
            period: Period::default(),
            funnel: None,
            sla_funnel: "service_recovery".into(),
            sla_target_minutes: 1440.0,
            now_ms,
        }
    }
}

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// When the report was made (epoch ms).
    pub generated_ms: i64,
    /// The period every section is bounded by.
    pub period: Period,
    /// The ClickHouse database read.
    pub database: String,
    /// Funnels, in the funnels file's order (one, with `--funnel`).
    pub funnels: Vec<FunnelReport>,
    /// The complaint → follow-up section; `None` when the SLA funnel is not defined.
    pub sla: Option<SlaReport>,
    /// The SLA funnel's name (also when it is not defined, to say so).
    pub sla_funnel: String,
    /// The touchpoint scorecard.
    pub scorecard: Scorecard,
    /// Stores.
    pub stores: Stores,
}

/// Progress lines for long queries (the CLI prints them on stderr).
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// Query ClickHouse for every section.
pub async fn generate(
    config: &Config,
    options: &ReportOptions,
    progress: Progress<'_>,
) -> Result<Report, ReportError> {
    if options.period.is_empty() {
        return Err(ReportError::EmptyPeriod);
    }
    let set = FunnelSet::load(&config.processor.funnels_path)?;
    let thresholds = thresholds(&Catalog::load(&config.processor.catalog_path)?);
    let known: Vec<String> = set.funnels().iter().map(|f| f.name.clone()).collect();
    let chosen: Vec<_> = match &options.funnel {
        Some(name) => {
            let f = set
                .funnels()
                .iter()
                .find(|f| &f.name == name)
                .ok_or_else(|| ReportError::UnknownFunnel {
                    name: name.clone(),
                    known: known.clone(),
                })?;
            vec![f]
        }
        None => set.funnels().iter().collect(),
    };
    let ch = touchstream_clickhouse::client(&config.clickhouse);
    // One cheap query first, so a server that is down is named as such rather than as
    // a failed section.
    touchstream_clickhouse::server_version(&touchstream_clickhouse::server_client(
        &config.clickhouse,
    ))
    .await
    .map_err(|e| match e {
        touchstream_clickhouse::MigrateError::ClickHouse(source) => ReportError::Unreachable {
            url: masked_url(&config.clickhouse.url),
            source,
        },
        other => ReportError::Unreachable {
            url: masked_url(&config.clickhouse.url),
            source: clickhouse::error::Error::Custom(other.to_string()),
        },
    })?;

    let timed = |what: &str, started: Instant| {
        progress(&format!(
            "report: {what} ({:.1} s)",
            started.elapsed().as_secs_f64()
        ))
    };
    progress("report: querying funnels");
    let started = Instant::now();
    let funnels = funnels::query(&ch, &chosen, &options.period).await?;
    timed("funnels done", started);

    let sla = match set.funnels().iter().find(|f| f.name == options.sla_funnel) {
        Some(f) => {
            progress("report: querying complaint follow-ups");
            let started = Instant::now();
            let s = sla::query(&ch, f, options).await?;
            timed("complaint follow-ups done", started);
            Some(s)
        }
        None => None,
    };

    progress("report: querying the touchpoint scorecard");
    let started = Instant::now();
    let scorecard = scorecard::query(&ch, &options.period, &thresholds).await?;
    timed("touchpoint scorecard done", started);

    progress("report: querying stores");
    let started = Instant::now();
    let stores = stores::query(&ch, &options.period).await?;
    timed("stores done", started);

    Ok(Report {
        generated_ms: options.now_ms,
        period: options.period,
        database: config.clickhouse.database.clone(),
        funnels,
        sla,
        sla_funnel: options.sla_funnel.clone(),
        scorecard,
        stores,
    })
}

/// The catalog's floors and targets, for the scorecard (measures the report does not
/// know are left out).
fn thresholds(catalog: &Catalog) -> Vec<Threshold> {
    catalog
        .thresholds()
        .into_iter()
        .filter_map(|t| {
            Some(Threshold {
                measure: Measure::parse(t.measure)?,
                event: t.event,
                floor: t.floor,
                target: t.target,
            })
        })
        .collect()
}

/// Render the report and write it to `path` (parent folders created).
pub fn write_html(report: &Report, path: &Path) -> Result<(), ReportError> {
    let write = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    std::fs::write(path, html::render(report)).map_err(write)
}
