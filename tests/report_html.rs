//! The HTML report (README "Report") on a demo run through the real collector, processor
//! and ClickHouse: `touchstream demo` writes it; `touchstream report --html` writes it
//! again, whole and for a shorter period; headless Chromium (Debian's `chromium`) opens
//! each page, which must run its script without errors, takes a screenshot, and sorts the
//! scorecard from a `#sort=` link; every figure on the page (its `data-key` /
//! `data-value`) must equal what this test's own queries — the analyst queries of
//! docs/queries/ — return from ClickHouse.
//!
//! Needs the `touchstream` binary, built after the report's last change (`cargo build -p
//! touchstream`; tests/run.sh builds it first; an older one fails the test), and
//! `chromium` (deploy/local/services.sh installs it); without either it fails and says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use touchstream_core::Config;
use touchstream_demo::demo::{run, DemoOptions};
use touchstream_demo::generator::GeneratorConfig;
use touchstream_tests as support;

/// The browser: `TS_CHROMIUM`, else `chromium` on PATH.
fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("TS_CHROMIUM") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("chromium"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed: this test opens the report in headless Chromium. \
                 Install Debian's package (deploy/local/services.sh up does; by hand: \
                 apt-get install chromium) or point TS_CHROMIUM at a Chromium binary."
            )
        })
}

/// Run headless Chromium on `url` with `args`, at most 120 s; its stdout.
fn browse(url: &str, args: &[&str]) -> String {
    let profile = std::env::temp_dir().join(support::unique("report-chromium"));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            // Give the inline script time to run before the DOM is dumped.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting chromium: {e}"));
    let started = Instant::now();
    loop {
        if child.try_wait().expect("chromium status").is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn file_url(path: &Path) -> String {
    format!(
        "file://{}",
        path.canonicalize().expect("report path").display()
    )
}

/// The DOM after the page's script ran; panics on script errors.
fn dom_of(path: &Path, fragment: &str) -> String {
    let dom = browse(&format!("{}{fragment}", file_url(path)), &["--dump-dom"]);
    assert!(
        dom.contains(r#"data-script-ready="1""#),
        "the page's script did not finish: {}",
        &dom[..dom.len().min(600)]
    );
    assert!(
        !dom.contains(r#"data-script-errors=""#),
        "the page had script errors: {}",
        dom.split(r#"data-script-error=""#)
            .nth(1)
            .map_or("", |s| &s[..s.len().min(200)])
    );
    dom
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Every `data-key` with its `data-value` ("" when the figure is undefined).
fn figures(dom: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for part in dom.split(r#"data-key=""#).skip(1) {
        let Some(end) = part.find('"') else { continue };
        let key = unescape(&part[..end]);
        let rest = &part[end + 1..];
        let tag_end = rest.find('>').unwrap_or(rest.len());
        let value = rest[..tag_end]
            .split(r#"data-value=""#)
            .nth(1)
            .and_then(|v| v.split('"').next())
            .map(unescape)
            .unwrap_or_default();
        out.insert(key, value);
    }
    out
}

fn num(figs: &BTreeMap<String, String>, key: &str) -> f64 {
    let v = figs
        .get(key)
        .unwrap_or_else(|| panic!("the page has no figure {key}"));
    v.parse()
        .unwrap_or_else(|_| panic!("figure {key} is {v:?}, not a number"))
}

/// Run `sql` (its `touchstream.` database renamed), TSV rows split into columns.
async fn rows(ch: &clickhouse::Client, db: &str, sql: &str) -> Vec<Vec<String>> {
    let sql = sql.replace("touchstream.", &format!("`{db}`."));
    support::tsv(ch, &sql)
        .await
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn query_file(name: &str) -> String {
    std::fs::read_to_string(support::repo_path(&format!("docs/queries/{name}")))
        .expect("query file")
}

/// Insert `condition` into the WHERE clause(s) that read `funnel_attempts FINAL`.
fn bounded(sql: &str, condition: &str) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("funnel_attempts FINAL") {
        let (head, tail) = rest.split_at(at);
        out.push_str(head);
        let Some(w) = tail.find("WHERE ") else {
            out.push_str(tail);
            return out;
        };
        out.push_str(&tail[..w + "WHERE ".len()]);
        out.push_str(&format!("{condition} AND "));
        rest = &tail[w + "WHERE ".len()..];
    }
    out.push_str(rest);
    out
}

struct Bin {
    path: PathBuf,
    config: Config,
}

impl Bin {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.path)
            .current_dir(support::repo_root())
            .env("TOUCHSTREAM__CLICKHOUSE__URL", &self.config.clickhouse.url)
            .env(
                "TOUCHSTREAM__CLICKHOUSE__DATABASE",
                &self.config.clickhouse.database,
            )
            .env(
                "TOUCHSTREAM__PROCESSOR__FUNNELS_PATH",
                self.config.processor.funnels_path.display().to_string(),
            )
            .args(args)
            .output()
            .expect("running touchstream")
    }
}

/// The funnel and SLA figures of a page against docs/queries/1, 3 and 8, with `condition`
/// (on funnel_attempts) as the page's period.
async fn check_funnels(
    figs: &BTreeMap<String, String>,
    ch: &clickhouse::Client,
    db: &str,
    condition: &str,
) {
    let steps = rows(
        ch,
        db,
        &bounded(&query_file("1_funnel_dropoff_by_step.sql"), condition),
    )
    .await;
    assert!(!steps.is_empty(), "no funnel steps to compare");
    for r in &steps {
        let (f, step) = (&r[0], &r[1]);
        let base = format!("funnel/{f}/step/{step}");
        assert_eq!(
            num(figs, &format!("{base}/reached")),
            r[2].parse::<f64>().unwrap(),
            "{base}"
        );
        assert_eq!(
            num(figs, &format!("{base}/dropped")),
            r[3].parse::<f64>().unwrap(),
            "{base}"
        );
        let pct: f64 = r[4].parse().unwrap();
        let page = num(figs, &format!("{base}/dropoff"));
        assert!(
            (page * 100.0 - pct).abs() <= 0.0501,
            "{base}: page {page}, query {pct} %"
        );
    }
    let by_segment = rows(
        ch,
        db,
        &bounded(&query_file("8_funnel_dropoff_by_breakdown.sql"), condition),
    )
    .await;
    assert!(!by_segment.is_empty(), "no breakdown segments to compare");
    for r in &by_segment {
        let base = format!("funnel/{}/segment/{}/step/{}", r[0], r[1], r[2]);
        assert_eq!(
            num(figs, &format!("{base}/reached")),
            r[3].parse::<f64>().unwrap(),
            "{base}"
        );
    }
    let sla = rows(
        ch,
        db,
        &bounded(&query_file("3_complaint_followup_delay.sql"), condition),
    )
    .await;
    let (n, median, p90): (f64, f64, f64) = (
        sla[0][0].parse().unwrap(),
        sla[0][1].parse().unwrap(),
        sla[0][2].parse().unwrap(),
    );
    assert!(n > 0.0, "no follow-ups to compare");
    assert_eq!(num(figs, "sla/followed_up"), n);
    assert!((num(figs, "sla/median_minutes") - median).abs() <= 0.051);
    assert!((num(figs, "sla/p90_minutes") - p90).abs() <= 0.051);
    // The delay distribution, bucket by bucket (edges in minutes, README "Report").
    let edges = [
        0.0,
        15.0,
        30.0,
        60.0,
        120.0,
        240.0,
        480.0,
        1440.0,
        2880.0,
        10080.0,
        f64::MAX,
    ];
    let counts = edges
        .windows(2)
        .map(|w| format!("countIf(d >= {} AND d < {})", w[0], w[1]))
        .collect::<Vec<_>>()
        .join(", ");
    let buckets = rows(
        ch,
        db,
        &bounded(
            &format!(
                "SELECT {counts} FROM (SELECT (step_times_ms[2] - step_times_ms[1]) / 60000 AS d \
                 FROM touchstream.funnel_attempts FINAL WHERE funnel = 'service_recovery' \
                 AND is_deleted = 0 AND outcome != 'excluded' AND reached_step >= 2)"
            ),
            condition,
        ),
    )
    .await;
    for (i, c) in buckets[0].iter().enumerate() {
        assert_eq!(
            num(figs, &format!("sla/bucket/{i}")),
            c.parse::<f64>().unwrap(),
            "follow-ups in delay bucket {i}"
        );
    }
}

/// The scorecard's events and the stores' footfall against the tables they come from.
async fn check_scorecard_and_stores(
    figs: &BTreeMap<String, String>,
    ch: &clickhouse::Client,
    db: &str,
) {
    let touchpoints = rows(
        ch,
        db,
        "SELECT event, stage, channel, count() FROM touchstream.customer_touchpoints FINAL \
         WHERE is_deleted = 0 GROUP BY event, stage, channel",
    )
    .await;
    assert!(!touchpoints.is_empty(), "no touchpoints to compare");
    for r in &touchpoints {
        let key = format!("scorecard/{}/{}/{}/events", r[0], r[1], r[2]);
        assert_eq!(num(figs, &key), r[3].parse::<f64>().unwrap(), "{key}");
    }
    let on_page = figs
        .keys()
        .filter(|k| k.starts_with("scorecard/") && k.ends_with("/events"))
        .count();
    assert_eq!(
        on_page,
        touchpoints.len(),
        "one scorecard row per touchpoint"
    );
    let footfall = rows(
        ch,
        db,
        "SELECT store_id, sum(footfall) FROM touchstream.store_footfall \
         WHERE store_id != '' GROUP BY store_id",
    )
    .await;
    assert!(!footfall.is_empty(), "no store footfall to compare");
    for r in &footfall {
        let key = format!("store/{}/footfall", r[0]);
        assert_eq!(num(figs, &key), r[1].parse::<f64>().unwrap(), "{key}");
    }
    let on_page = figs
        .keys()
        .filter(|k| k.starts_with("store/") && k.ends_with("/footfall"))
        .count();
    assert_eq!(
        on_page,
        footfall.len(),
        "one store row per store with footfall"
    );
    let by_hour: f64 = figs
        .iter()
        .filter(|(k, _)| k.starts_with("store_hour/") && k.ends_with("/footfall"))
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum();
    let total: f64 = footfall.iter().map(|r| r[1].parse::<f64>().unwrap()).sum();
    assert_eq!(by_hour, total, "the hours of the day hold all the footfall");
    let audits = rows(
        ch,
        db,
        "SELECT store_id, count(), avg(score) FROM touchstream.store_audits \
         WHERE store_id != '' GROUP BY store_id",
    )
    .await;
    assert!(!audits.is_empty(), "no audits to compare");
    for r in &audits {
        let key = format!("store/{}/audits", r[0]);
        assert_eq!(num(figs, &key), r[1].parse::<f64>().unwrap(), "{key}");
        let key = format!("store/{}/audit_mean", r[0]);
        assert!(
            (num(figs, &key) - r[2].parse::<f64>().unwrap()).abs() < 1e-9,
            "{key}"
        );
    }
}

/// The survey scores the demo's generator configured, as the page shows them: per rated
/// touchpoint and scale, the answers on the page (all of them attributed) and the score
/// they give, equal to the test's own query on `feedback` and within the tolerance the
/// generator states (`FeedbackExpectation::tolerance`), widened where a touchpoint has
/// few answers by how far rounding each share of the distribution to whole answers can
/// move the score (the generator's allocation; its stated tolerance assumes ≥ 60 answers).
async fn check_feedback(
    figs: &BTreeMap<String, String>,
    dom: &str,
    ch: &clickhouse::Client,
    db: &str,
    answers: &[usize],
) {
    use touchstream_demo::generator::{feedback_expectations, FEEDBACK_PLAN};
    let measured = rows(
        ch,
        db,
        "SELECT about_event, scale, count(), \
         if(scale = 'nps', 100 * (countIf(score >= 9) - countIf(score <= 6)) / count(), avg(score)) \
         FROM touchstream.feedback FINAL WHERE attribution != 'none' GROUP BY about_event, scale",
    )
    .await;
    for (k, e) in feedback_expectations().iter().enumerate() {
        // The touchpoint's rows on the page (one per stage × channel it occurred in).
        let prefix = format!("scorecard/{}/", e.touchpoint);
        let (mut n, mut weighted) = (0.0, 0.0);
        for (key, value) in figs {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            if rest.ends_with(&format!("/{}_responses", e.scale)) && value != "0" {
                let row = key.trim_end_matches("_responses");
                let count: f64 = value.parse().unwrap();
                n += count;
                weighted += count * num(figs, row);
            }
        }
        assert_eq!(
            n, answers[k] as f64,
            "{} {}: every answer sent is on the page",
            e.touchpoint, e.scale
        );
        let got = weighted / n;
        let own = measured
            .iter()
            .find(|r| r[0] == e.touchpoint && r[1] == e.scale)
            .unwrap_or_else(|| panic!("no {} answers about {}", e.scale, e.touchpoint));
        assert!(
            (got - own[3].parse::<f64>().unwrap()).abs() < 1e-9,
            "{} {}: page {got}, feedback table {}",
            e.touchpoint,
            e.scale,
            own[3]
        );
        let plan = &FEEDBACK_PLAN[k];
        let value = |s: f64| match e.scale {
            "nps" if s >= 9.0 => 100.0,
            "nps" if s <= 6.0 => -100.0,
            "nps" => 0.0,
            _ => s,
        };
        let last = value(plan.distribution.last().unwrap().0);
        let rounding: f64 = plan.distribution[..plan.distribution.len() - 1]
            .iter()
            .map(|(s, _)| 0.5 * (value(*s) - last).abs() / n)
            .sum();
        let tolerance = e.tolerance.max(rounding);
        println!(
            "{} {}: recovered {got:.3} from {n} answers, configured {} ± {tolerance:.3}",
            e.touchpoint, e.scale, e.expected
        );
        assert!(
            (got - e.expected).abs() <= tolerance,
            "{} {}: recovered {got:.3}, configured {} ± {tolerance:.3} ({n} answers)",
            e.touchpoint,
            e.scale,
            e.expected
        );
    }
    // The catalog's floor: Order Completed's CSAT (3.6 configured) is below its 3.8 floor
    // and marked so.
    let marked = dom
        .split(r#"class="num below" data-key=""#)
        .skip(1)
        .filter_map(|p| p.split('"').next())
        .any(|k| k.starts_with("scorecard/Order Completed/") && k.ends_with("/csat"));
    assert!(marked, "Order Completed's CSAT is marked below its floor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn report_page_renders_and_equals_clickhouse() {
    support::require_port("Kafka", &support::kafka_brokers());
    let browser = chromium();
    assert!(browser.is_file(), "{} missing", browser.display());
    let bin = support::repo_root().join("target/debug/touchstream");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p touchstream` (tests/run.sh does)",
        bin.display()
    );
    // The binary is built separately (tests/run.sh builds it first): refuse an older one
    // than the report's code, which would test yesterday's page.
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .expect("binary time");
    for dir in [
        "crates/report/src",
        "crates/report/src/html",
        "crates/report/sql",
        "crates/cli/src",
    ] {
        for entry in std::fs::read_dir(support::repo_path(dir)).expect("source folder") {
            let path = entry.expect("entry").path();
            let changed = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .expect("source time");
            // Test-only modules (`tests.rs`) are not part of the binary.
            let test_only = path.file_name().is_some_and(|n| n == "tests.rs");
            assert!(
                path.is_dir() || test_only || changed <= built,
                "{} is newer than {}: run `cargo build -p touchstream` first",
                path.display(),
                bin.display()
            );
        }
    }
    let repo = support::repo_root();
    let mut config = Config {
        kafka: support::kafka_config("report"),
        clickhouse: support::clickhouse_config("report"),
        ..Config::default()
    };
    config.collector.listen = "127.0.0.1:0".into();
    config.processor.metrics_listen = "127.0.0.1:0".into();
    config.processor.group_id = support::unique("it-report");
    config.processor.funnels_path = repo.join("deploy/funnels.toml");
    config.processor.catalog_path = repo.join("deploy/catalog.toml");
    config.processor.batch_max_ms = 200;
    let out = support::artifacts_dir().join(support::unique("report"));
    std::fs::create_dir_all(&out).expect("artifacts folder");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let generator = GeneratorConfig {
        customers: 240,
        seed: 11,
        ..GeneratorConfig::new(now)
    };
    let demo_page = out.join("demo.html");
    let result = run(
        config.clone(),
        DemoOptions {
            generator,
            rate_per_sec: 0.0,
            wait: Duration::from_secs(240),
            progress: false,
            report_html: Some(demo_page.clone()),
        },
    )
    .await
    .expect("demo runs to the end");
    assert_eq!(result.report_html.as_deref(), Some(demo_page.as_path()));
    let demo_figs = figures(&dom_of(&demo_page, ""));
    assert!(
        num(&demo_figs, "funnel/web_checkout/attempts") > 0.0,
        "the demo's page shows its funnels"
    );

    let ch = touchstream_clickhouse::client(&config.clickhouse);
    let db = config.clickhouse.database.clone();
    let touchstream = Bin {
        path: bin,
        config: config.clone(),
    };

    // The whole history: the page equals the analyst queries as documented.
    let page = out.join("report.html");
    let o = touchstream.run(&["report", "--html", page.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "touchstream report failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        page.display().to_string(),
        "it prints the page's path"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("report: querying funnels"),
        "progress on stderr"
    );
    let html = std::fs::read_to_string(&page).expect("page");
    for external in ["src=\"http", "href=\"http", "@import", "<link"] {
        assert!(!html.contains(external), "the page loads {external}");
    }
    let dom = dom_of(&page, "");
    let figs = figures(&dom);
    check_funnels(&figs, &ch, &db, "1 = 1").await;
    // Highlights: each funnel's largest drop-off is its worst step's (the last step aside).
    for funnel in ["web_checkout", "service_recovery"] {
        let steps = figs
            .keys()
            .filter(|k| k.starts_with(&format!("funnel/{funnel}/step/")) && k.ends_with("/reached"))
            .count();
        let worst = (1..steps)
            .map(|k| num(&figs, &format!("funnel/{funnel}/step/{k}/dropoff")))
            .fold(0.0, f64::max);
        assert_eq!(
            num(&figs, &format!("highlight/{funnel}/largest_dropoff")),
            worst,
            "{funnel}"
        );
    }
    check_scorecard_and_stores(&figs, &ch, &db).await;
    check_feedback(&figs, &dom, &ch, &db, &result.plan.answers).await;

    let shot = out.join("report.png");
    browse(
        &file_url(&page),
        &[
            "--window-size=1280,2400",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.len() > 20_000 && png.starts_with(b"\x89PNG"),
        "screenshot {} is not a real page ({} bytes)",
        shot.display(),
        png.len()
    );

    // A shorter period: closed before the median close time (on a second edge, as
    // `--until` is given in seconds).
    let median = rows(
        &ch,
        &db,
        "SELECT toInt64(intDiv(toInt64(quantileExact(0.5)(closed_ms)), 1000) * 1000) FROM touchstream.funnel_attempts FINAL WHERE is_deleted = 0",
    )
    .await[0][0]
        .parse::<i64>()
        .unwrap();
    let until = time::OffsetDateTime::from_unix_timestamp(median / 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let part = out.join("until.html");
    let o = touchstream.run(&[
        "report",
        "--html",
        part.to_str().unwrap(),
        "--until",
        &until,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let part_figs = figures(&dom_of(&part, ""));
    check_funnels(&part_figs, &ch, &db, &format!("closed_ms < {median}")).await;
    assert!(
        num(&part_figs, "funnel/web_checkout/step/1/reached")
            < num(&figs, "funnel/web_checkout/step/1/reached"),
        "--until leaves attempts out"
    );

    // One funnel; an unknown one is an error naming the known ones.
    let one = out.join("one.html");
    let o = touchstream.run(&[
        "report",
        "--html",
        one.to_str().unwrap(),
        "--funnel",
        "service_recovery",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let one_figs = figures(&dom_of(&one, ""));
    assert!(one_figs.contains_key("funnel/service_recovery/attempts"));
    assert!(!one_figs
        .keys()
        .any(|k| k.starts_with("funnel/web_checkout/")));
    let o = touchstream.run(&["report", "--html", "/dev/null", "--funnel", "nope"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown funnel `nope`") && err.contains("web_checkout"),
        "{err}"
    );

    // An empty period and a server that does not answer are errors that say so.
    let o = touchstream.run(&[
        "report",
        "--html",
        "/dev/null",
        "--since",
        "2026-11-02",
        "--until",
        "2026-11-01",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--since must be before --until"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let down = Bin {
        path: touchstream.path.clone(),
        config: Config {
            clickhouse: touchstream_core::config::ClickHouseConfig {
                url: format!("http://127.0.0.1:{}", support::free_port()),
                ..config.clickhouse.clone()
            },
            ..config.clone()
        },
    };
    let o = down.run(&["report", "--html", "/dev/null"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did not answer"), "{err}");

    // The script's error hook works: the same page with a failing script says so.
    let broken = out.join("broken.html");
    std::fs::write(
        &broken,
        html.replace("</body>", "<script>no_such_function();</script></body>"),
    )
    .expect("broken page");
    let broken_dom = browse(&file_url(&broken), &["--dump-dom"]);
    assert!(
        broken_dom.contains(r#"data-script-errors="1""#),
        "a script error is recorded on the page"
    );

    // Sorting: a #sort= link orders the scorecard by events, most first.
    let sorted = dom_of(&page, "#sort=scorecard-table:3:desc");
    {
        assert!(
            sorted.contains(r#"data-sorted="3:desc""#),
            "the table was sorted"
        );
        let events: Vec<f64> = sorted
            .split("id=\"scorecard-table\"")
            .nth(1)
            .unwrap_or("")
            .split("</table>")
            .next()
            .unwrap_or("")
            .split(r#"data-key=""#)
            .filter(|p| p.split('"').next().is_some_and(|k| k.ends_with("/events")))
            .filter_map(|p| p.split(r#"data-value=""#).nth(1))
            .filter_map(|v| v.split('"').next())
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(events.len() > 1, "scorecard rows: {events:?}");
        assert!(
            events.windows(2).all(|w| w[0] >= w[1]),
            "sorted by events, descending: {events:?}"
        );
    }

    support::drop_database(&config.clickhouse).await;
}
