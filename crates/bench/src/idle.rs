//! `idle`: the resident memory of a `herald serve` that has started and is doing nothing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::db::BenchDb;
use crate::report::Report;
use crate::{Options, process};

pub async fn run(options: &Options, db: &BenchDb) -> Result<Report> {
    let exe = match &options.herald_exe {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find the herald executable")?,
    };
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut child = Command::new(&exe)
        .current_dir(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ])
        .env("HERALD_LOG", "warn")
        .env_remove("HERALD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout")?;
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.starts_with("Herald is listening"))
    })
    .await?;
    let startup = started.elapsed();
    if !ready {
        let _ = child.kill();
        bail!("herald serve did not start");
    }
    // Let start-up work (migrations, first connections, the first maintenance ticks) settle.
    tokio::time::sleep(options.idle_settle).await;
    let rss = process::rss(pid).unwrap_or(0);
    let peak = process::peak_rss(pid).unwrap_or(0);
    let cpu = process::cpu_time(pid).unwrap_or_default();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            bail!("herald serve did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut report = Report {
        scenario: options.scenario.clone(),
        store: db.kind.as_str().into(),
        elapsed_seconds: startup.as_secs_f64(),
        cpu_seconds: cpu.as_secs_f64(),
        peak_rss_mb: peak as f64 / 1_048_576.0,
        ..Report::default()
    };
    report
        .metrics
        .insert("idle_rss_mb".into(), rss as f64 / 1_048_576.0);
    report
        .metrics
        .insert("startup_seconds".into(), startup.as_secs_f64());
    report.parameters.insert(
        "settle_seconds".into(),
        options.idle_settle.as_secs_f64().into(),
    );
    Ok(report)
}
