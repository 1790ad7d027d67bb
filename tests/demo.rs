//! The main job on a smaller run: generated journeys through a real collector and
//! processor (local tansu and ClickHouse); the measured drop-off at every funnel step
//! must be within 2 percentage points of the generator's configured rates, overall and
//! per breakdown segment (service recovery by call-centre team).

use std::time::Duration;

use touchstream_core::Config;
use touchstream_demo::demo::{run, DemoOptions};
use touchstream_demo::generator::GeneratorConfig;
use touchstream_tests as support;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_report_matches_the_configured_rates() {
    support::require_port("Kafka", &support::kafka_brokers());
    let repo = support::repo_root();
    let mut config = Config {
        kafka: support::kafka_config("demo"),
        clickhouse: support::clickhouse_config("demo"),
        ..Config::default()
    };
    config.collector.listen = "127.0.0.1:0".into();
    config.processor.metrics_listen = "127.0.0.1:0".into();
    config.processor.group_id = support::unique("it-demo");
    config.processor.funnels_path = repo.join("deploy/funnels.toml");
    config.processor.catalog_path = repo.join("deploy/catalog.toml");
    config.processor.batch_max_ms = 200;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let generator = GeneratorConfig {
        customers: 300,
        seed: 7,
        checkout_dropoff: [0.5, 0.3, 0.2],
        service_dropoff: [0.25, 0.4],
        // Step 1 by team (deploy/funnels.toml breaks service_recovery down by
        // properties.team): 10 % and 40 % of 30 complaints each, 25 % overall.
        service_teams: vec![("north".into(), 0.1), ("south".into(), 0.4)],
        ..GeneratorConfig::new(now)
    };
    let result = run(
        config.clone(),
        DemoOptions {
            generator: generator.clone(),
            rate_per_sec: 0.0,
            wait: Duration::from_secs(240),
            progress: false,
            report_html: None,
        },
    )
    .await
    .expect("demo runs to the end");
    let m = &result.measured;
    println!("{}", result.report);

    for (funnel, rates) in [
        ("web_checkout", &generator.checkout_dropoff[..]),
        ("service_recovery", &generator.service_dropoff[..]),
    ] {
        for (k, want) in rates.iter().enumerate() {
            let step = (k + 1) as u8;
            let got = m
                .dropoff(funnel, step)
                .unwrap_or_else(|| panic!("{funnel} step {step} measured"));
            assert!(
                (got - want).abs() <= 0.02,
                "{funnel} step {step}: measured {got:.3}, configured {want}"
            );
        }
    }
    // Per segment: each team's measured follow-up drop-off beside its configured rate.
    assert_eq!(m.teams.len(), 2, "{:?}", m.teams);
    for (team, want) in &generator.service_teams {
        let got = m
            .team_dropoff(team)
            .unwrap_or_else(|| panic!("team {team} measured"));
        assert!(
            (got - want).abs() <= 0.02,
            "service_recovery team {team}: measured {got:.3}, configured {want}"
        );
    }
    assert!(
        result.report.contains("service_recovery by team"),
        "{}",
        result.report
    );
    let want_abandon =
        1.0 - (1.0 - generator.checkout_dropoff[1]) * (1.0 - generator.checkout_dropoff[2]);
    let got_abandon = m.cart_abandonment.expect("cart abandonment");
    assert!(
        (got_abandon - want_abandon).abs() <= 0.02,
        "cart abandonment {got_abandon} vs {want_abandon}"
    );
    assert_eq!(m.attempts, result.plan.attempts as u64);
    let (followed, median, p90) = m.follow_up;
    assert_eq!(followed as usize, result.plan.follow_up_minutes.len());
    assert!(
        (median - result.plan.follow_up_quantile(0.5).expect("median")).abs() < 0.1,
        "median {median}"
    );
    assert!(
        (p90 - result.plan.follow_up_quantile(0.9).expect("p90")).abs() < 0.1,
        "p90 {p90}"
    );
    assert!(result.report.contains("web_checkout") && result.report.contains("configured"));
    assert!(m
        .top
        .iter()
        .any(|r| r.stage == "service" && r.channel == "call_center"));

    support::drop_database(&config.clickhouse).await;
}
