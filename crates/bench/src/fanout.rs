//! `fanout`: materialise a very large send — for every recipient a personalised body, its
//! encoding and segments, its estimated cost, and the message stored queued with its first
//! status — in bounded memory. Recipients are already normalised, as stored contacts are.
//! Broadcasts and campaigns will add resolving the audience, de-duplication and opt-out
//! filtering in front of this; until they exist this measures the store's bulk path under the
//! per-message work they will share.

use std::time::Instant;

use anyhow::Result;
use herald_engine::EngineConfig;

use crate::db::BenchDb;
use crate::report::Report;
use crate::{Options, process, workload};

pub async fn run(options: &Options, db: &BenchDb) -> Result<Report> {
    let n = options.messages;
    let (org, scope) = db.organization().await?;
    let config = EngineConfig::default();
    let pid = process::own_pid();
    process::reset_peak(pid);
    let cpu_before = process::cpu_time(pid).unwrap_or_default();
    let started = Instant::now();
    workload::enqueue(db.store.as_ref(), &config.intake, scope, n).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process::cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let peak = process::peak_rss(pid).unwrap_or(0);

    let counts = db.store.status_counts(org.id).await?;
    let mut report = Report {
        scenario: options.scenario.clone(),
        store: db.kind.as_str().into(),
        messages: n,
        elapsed_seconds: elapsed,
        messages_per_second: n as f64 / elapsed.max(1e-9),
        cpu_seconds: cpu.as_secs_f64(),
        peak_rss_mb: peak as f64 / 1_048_576.0,
        accounted: counts
            .into_iter()
            .map(|(s, c)| (s.as_str().to_owned(), c))
            .collect(),
        ..Report::default()
    };
    report.parameters.insert(
        "work".into(),
        "parse, encode, price, store queued with history".into(),
    );
    Ok(report)
}
