//! Smoke runs of every built-in benchmark scenario with a tiny N, so the harness cannot rot.
//! They check that each run completed and accounted for every message — never a speed.

use std::process::Command;

use serde_json::Value;

const N: u64 = 300;

fn bench(scenario: &str, store: &str, database_url: Option<&str>) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args([
            "bench",
            scenario,
            "--store",
            store,
            "--messages",
            &N.to_string(),
            "--json",
        ])
        .env("HERALD_LOG", "warn")
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_DATABASE_URL");
    if let Some(url) = database_url {
        command.args(["--database-url", url]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{scenario} on {store}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn accounted(report: &Value, status: &str) -> u64 {
    report["accounted"][status].as_u64().unwrap_or(0)
}

fn check_dispatch_sim(report: &Value) {
    assert_eq!(report["messages"], N);
    assert_eq!(accounted(report, "delivered"), N, "{report}");
    assert!(report["messages_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["latency_ms"]["p99"].as_f64().is_some());
}

fn check_dispatch_http(report: &Value) {
    assert_eq!(accounted(report, "sent"), N, "{report}");
    assert_eq!(
        report["metrics"]["stub_accepted"].as_f64(),
        Some(N as f64),
        "each message sent exactly once"
    );
}

fn check_fanout(report: &Value) {
    assert_eq!(accounted(report, "queued"), N, "{report}");
}

/// One generated row in 50 is broken; every row is either a contact or reported.
fn check_import(report: &Value) {
    assert_eq!(accounted(report, "invalid"), N / 50, "{report}");
    assert_eq!(accounted(report, "created"), N - N / 50, "{report}");
}

/// Every contact is requested once; one in 100 opted out; the rest are queued.
fn check_broadcast(report: &Value) {
    let opted_out = N.div_ceil(100);
    assert_eq!(accounted(report, "requested"), N, "{report}");
    assert_eq!(accounted(report, "opted_out"), opted_out, "{report}");
    assert_eq!(accounted(report, "queued"), N - opted_out, "{report}");
    assert_eq!(
        accounted(report, "messages_queued"),
        N - opted_out,
        "{report}"
    );
}

/// Every contact is in the audience once; one in 100 is suppressed; the rest are released.
fn check_campaign(report: &Value) {
    let opted_out = N.div_ceil(100);
    assert_eq!(accounted(report, "audience"), N, "{report}");
    assert_eq!(accounted(report, "suppressed"), opted_out, "{report}");
    assert_eq!(accounted(report, "released"), N - opted_out, "{report}");
    assert_eq!(accounted(report, "pending"), N - opted_out, "{report}");
}

/// Every contact is enrolled once; one in 100 opted out and left; the rest took the first step.
fn check_drip(report: &Value) {
    let opted_out = N.div_ceil(100);
    assert_eq!(accounted(report, "enrolled"), N, "{report}");
    assert_eq!(accounted(report, "exited"), opted_out, "{report}");
    assert_eq!(accounted(report, "steps"), N - opted_out, "{report}");
}

#[test]
fn dispatch_sim_fanout_dispatch_http_and_import_account_for_everything_on_sqlite() {
    check_dispatch_sim(&bench("dispatch-sim", "sqlite", None));
    check_dispatch_http(&bench("dispatch-http", "sqlite", None));
    check_fanout(&bench("fanout", "sqlite", None));
    check_import(&bench("import", "sqlite", None));
    check_broadcast(&bench("broadcast", "sqlite", None));
    check_campaign(&bench("campaign", "sqlite", None));
    check_drip(&bench("drip", "sqlite", None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenarios_run_on_postgresql_too() {
    // Probe the server the way every PostgreSQL test does (skipped, loudly, when absent and
    // not required); the harness then makes its own throwaway databases there.
    let Some(probe) = herald_store_postgres::test_support::fresh_database().await else {
        return;
    };
    probe.drop_database().await;
    let admin = std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    check_dispatch_sim(&bench("dispatch-sim", "postgres", Some(&admin)));
    check_dispatch_http(&bench("dispatch-http", "postgres", Some(&admin)));
    check_fanout(&bench("fanout", "postgres", Some(&admin)));
    check_import(&bench("import", "postgres", Some(&admin)));
    check_broadcast(&bench("broadcast", "postgres", Some(&admin)));
    check_campaign(&bench("campaign", "postgres", Some(&admin)));
    check_drip(&bench("drip", "postgres", Some(&admin)));
    let idle = bench("idle", "postgres", Some(&admin));
    assert!(idle["metrics"]["idle_rss_mb"].as_f64().unwrap() > 0.0);
}

#[test]
fn idle_and_the_stub_measure_their_processes() {
    let idle = bench("idle", "sqlite", None);
    assert!(
        idle["metrics"]["idle_rss_mb"].as_f64().unwrap() > 1.0,
        "{idle}"
    );
    let stub = bench("stub", "sqlite", None);
    assert_eq!(stub["messages"], N);
    assert!(stub["peak_rss_mb"].as_f64().unwrap() > 1.0, "{stub}");
}

#[test]
fn unknown_scenarios_are_refused_with_the_list() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["bench", "nonsense"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("dispatch-sim"));
}
