//! `broadcast`: a broadcast to a lead status of N contacts, resolved in the background as
//! `POST /v1/broadcasts` resolves it: paged through the contacts, de-duplicated in the
//! database, checked against the suppression list and queued in batches. The contacts are
//! stored first (not timed); one in 100 has opted out and is counted, not queued. The time is
//! from the request to the broadcast's final status; the peak memory is the resolution's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use herald_engine::broadcasts::{self, BroadcastRequest, Recipient, Started};
use herald_engine::clock::SystemClock;
use herald_engine::{Engine, EngineConfig};
use herald_store::BroadcastStatus;

use crate::db::BenchDb;
use crate::report::Report;
use crate::{Options, process};

fn phone(i: u64) -> String {
    // 415-200-0000 onwards: valid US numbers, all distinct.
    format!("+1415{}", 2_000_000 + i)
}

pub async fn run(options: &Options, db: &BenchDb) -> Result<Report> {
    let n = options.messages;
    let (org, scope) = db.organization().await?;

    let seeding = Instant::now();
    let opted_out = db.seed_contacts(org.id, n, phone).await?;
    let setup = seeding.elapsed().as_secs_f64();

    let engine = Arc::new(Engine::new(
        db.store.clone(),
        Arc::new(SystemClock),
        EngineConfig::default(),
        None,
    ));
    let pid = process::own_pid();
    process::reset_peak(pid);
    let cpu_before = process::cpu_time(pid).unwrap_or_default();
    let started = Instant::now();
    let request = BroadcastRequest {
        recipients: vec![Recipient::LeadStatus("new".into())],
        body: Some("Hello {{first_name | default: \"there\"}}, class starts at 10:00".into()),
        ..BroadcastRequest::default()
    };
    let request_json =
        serde_json::json!({"recipients": [{"type": "lead_status", "status": "new"}]});
    let id = match broadcasts::start(&engine, &org, scope, None, request, request_json, None).await
    {
        Ok(Started::Background(broadcast) | Started::Done(broadcast)) => broadcast.id,
        Ok(other) => bail!("the broadcast did not start: {other:?}"),
        Err(error) => bail!("the broadcast was refused: {error}"),
    };
    let broadcast = loop {
        let Some(broadcast) = db.store.get_broadcast(scope, id).await? else {
            bail!("the broadcast vanished");
        };
        if broadcast.status != BroadcastStatus::Resolving {
            break broadcast;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process::cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let peak = process::peak_rss(pid).unwrap_or(0);
    if broadcast.status != BroadcastStatus::Queued {
        bail!(
            "the broadcast ended {} ({:?})",
            broadcast.status,
            broadcast.error
        );
    }
    let counts = broadcast.counts;
    if counts.requested != n || counts.opted_out != opted_out {
        bail!("the broadcast's counts do not match its audience: {counts:?}");
    }
    let queued = db
        .store
        .status_counts(org.id)
        .await?
        .into_iter()
        .find(|(status, _)| status.as_str() == "queued")
        .map_or(0, |(_, count)| count);

    let mut report = Report {
        scenario: options.scenario.clone(),
        store: db.kind.as_str().into(),
        messages: n,
        elapsed_seconds: elapsed,
        messages_per_second: n as f64 / elapsed.max(1e-9),
        cpu_seconds: cpu.as_secs_f64(),
        peak_rss_mb: peak as f64 / 1_048_576.0,
        accounted: [
            ("requested".to_owned(), counts.requested),
            ("queued".to_owned(), counts.queued),
            ("opted_out".to_owned(), counts.opted_out),
            ("duplicates".to_owned(), counts.duplicates),
            ("messages_queued".to_owned(), queued),
        ]
        .into(),
        ..Report::default()
    };
    report.metrics.insert("setup_seconds".into(), setup);
    report.parameters.insert(
        "work".into(),
        "page a lead status, de-duplicate in the database, check opt-outs, personalise, queue in batches of 1,000"
            .into(),
    );
    Ok(report)
}
