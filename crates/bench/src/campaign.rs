//! `campaign`: a campaign to a lead status of N contacts, run as the server runs it: the
//! audience snapshotted (one row per recipient, de-duplicated in the database, checked against
//! the suppression list, each given its A/B variant and body), then released to the queue in
//! batches of 5,000 with no throttle. The contacts are stored first (not timed); one in 100 has
//! opted out and is suppressed. Snapshot and release are timed apart; the books must balance.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use herald_engine::campaigns::{
    self, Action, AudienceSpec, CampaignSpec, Created, Throttle, Variant, runner,
};
use herald_engine::clock::SystemClock;
use herald_engine::{Engine, EngineConfig};
use herald_store::CampaignStatus;

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
    let spec = CampaignSpec {
        name: "benchmark".into(),
        variants: vec![
            Variant {
                name: "a".into(),
                body: Some("Class starts at 10:00".into()),
                template_id: None,
                weight: 1,
            },
            Variant {
                name: "b".into(),
                body: Some("Reminder: class at 10:00 today".into()),
                template_id: None,
                weight: 1,
            },
        ],
        audience: AudienceSpec {
            lead_statuses: vec!["new".into()],
            ..AudienceSpec::default()
        },
        throttle: Throttle {
            send_rate_per_minute: None,
            batch_size: Some(campaigns::MAX_BATCH),
        },
        ..CampaignSpec::default()
    };
    let campaign = match campaigns::create(&engine, &org, scope, None, spec, None).await? {
        Ok(Created::Created(campaign)) => campaign,
        Ok(other) => bail!("the campaign was not created: {other:?}"),
        Err(errors) => bail!("the campaign was refused: {errors:?}"),
    };
    let pid = process::own_pid();
    process::reset_peak(pid);
    let cpu_before = process::cpu_time(pid).unwrap_or_default();
    let started = Instant::now();
    if let Err(refused) = campaigns::act(&engine, &org, scope, campaign.id, Action::Start).await? {
        bail!("the campaign did not start: {refused:?}");
    }
    // The first pass writes the whole snapshot, then releases the first batch.
    let first = runner::tick(&engine).await?;
    let snapshot = started.elapsed().as_secs_f64();
    let mut released = first.released;
    while released < n - opted_out {
        let pass = runner::tick(&engine).await?;
        if pass.released == 0 {
            bail!("the release stalled at {released}");
        }
        released += pass.released;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process::cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let peak = process::peak_rss(pid).unwrap_or(0);
    let campaign = db
        .store
        .get_campaign(scope, campaign.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the campaign vanished"))?;
    if campaign.status != CampaignStatus::Running {
        bail!("the campaign is {}", campaign.status);
    }
    let run = campaign
        .current_run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    let books = db.store.run_books(run).await?;
    if books.accounted() != books.audience || books.audience != n {
        bail!("the books do not balance: {books:?}");
    }

    let mut report = Report {
        scenario: options.scenario.clone(),
        store: db.kind.as_str().into(),
        messages: n,
        elapsed_seconds: elapsed,
        messages_per_second: n as f64 / elapsed.max(1e-9),
        cpu_seconds: cpu.as_secs_f64(),
        peak_rss_mb: peak as f64 / 1_048_576.0,
        accounted: [
            ("audience".to_owned(), books.audience),
            ("pending".to_owned(), books.pending),
            ("suppressed".to_owned(), books.suppressed),
            ("released".to_owned(), released),
            ("opted_out".to_owned(), opted_out),
        ]
        .into(),
        ..Report::default()
    };
    report.metrics.insert("setup_seconds".into(), setup);
    report.metrics.insert("snapshot_seconds".into(), snapshot);
    report
        .metrics
        .insert("release_seconds".into(), elapsed - snapshot);
    report.parameters.insert(
        "work".into(),
        "snapshot a lead status (de-duplicate in the database, opt-outs, A/B variant, body), then release in batches of 5,000"
            .into(),
    );
    Ok(report)
}
