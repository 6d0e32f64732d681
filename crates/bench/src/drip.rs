//! `drip`: N contacts enrolled in a two-step drip through a segment, then the first step taken
//! for every one of them by the automation runner as the server runs it (exit checks for
//! opt-out and reply, the message composed through intake, the step and its message stored in
//! one transaction). The contacts are stored first (not timed); one in 100 has opted out and
//! leaves the drip instead. Enrolment and steps are timed apart; every enrolment must be
//! accounted for.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use herald_engine::automation::drips::{self, DripSpec, EnrolRequest, Step};
use herald_engine::automation::runner;
use herald_engine::clock::{Clock, SystemClock};
use herald_engine::{Engine, EngineConfig};
use herald_store::Segment;
use serde_json::json;
use uuid::Uuid;

use crate::db::BenchDb;
use crate::report::Report;
use crate::{Options, process};

fn phone(i: u64) -> String {
    // 415-300-0000 onwards: valid US numbers, all distinct.
    format!("+1415{}", 3_000_000 + i)
}

pub async fn run(options: &Options, db: &BenchDb) -> Result<Report> {
    let n = options.messages;
    let (org, scope) = db.organization().await?;
    let clock = SystemClock;

    let seeding = Instant::now();
    let opted_out = db.seed_contacts(org.id, n, phone).await?;
    let segment = Segment {
        id: Uuid::now_v7(),
        org_id: org.id,
        name: "new leads".into(),
        description: None,
        rule: json!({"field": "lead_status", "op": "eq", "value": "new"}),
        created_at: clock.now(),
        updated_at: clock.now(),
    };
    if let Err(refusal) = db.store.create_segment(&segment, None, clock.now()).await? {
        bail!("the segment was refused: {refusal:?}");
    }
    let setup = seeding.elapsed().as_secs_f64();

    let engine = Arc::new(Engine::new(
        db.store.clone(),
        Arc::new(SystemClock),
        EngineConfig::default(),
        None,
    ));
    let spec = DripSpec {
        name: "benchmark".into(),
        steps: vec![
            Step {
                body: Some("Welcome to the course".into()),
                ..Step::default()
            },
            Step {
                delay: Some("P1D".into()),
                body: Some("Day two: your first lesson".into()),
                ..Step::default()
            },
        ],
        ..DripSpec::default()
    };
    let drip = match drips::create(&engine, &org, scope, None, spec, None).await? {
        Ok(drips::Created::Created(drip)) => drip,
        Ok(other) => bail!("the drip was not created: {other:?}"),
        Err(errors) => bail!("the drip was refused: {errors:?}"),
    };
    let pid = process::own_pid();
    process::reset_peak(pid);
    let cpu_before = process::cpu_time(pid).unwrap_or_default();
    let started = Instant::now();
    let request = EnrolRequest {
        segments: vec![segment.id],
        ..EnrolRequest::default()
    };
    let enrolled = match drips::enrol(&engine, &org, &drip, &request).await? {
        Ok(enrolled) => enrolled,
        Err(errors) => bail!("the enrolment was refused: {errors:?}"),
    };
    let enrolment = started.elapsed().as_secs_f64();
    let (mut steps, mut exited) = (0, 0);
    while steps + exited < n {
        let pass = runner::tick(&engine).await?;
        if pass.steps + pass.exited == 0 {
            bail!("the drip stalled at {steps} steps and {exited} exits");
        }
        steps += pass.steps;
        exited += pass.exited;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process::cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let peak = process::peak_rss(pid).unwrap_or(0);
    let stats = db.store.drip_stats(org.id, drip.id).await?;
    let taken = stats.steps.first().map_or(0, |s| s.taken);
    if stats.enrolled != n || taken != steps || stats.active != steps {
        bail!("the drip does not add up: {stats:?}");
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
            ("enrolled".to_owned(), enrolled.enrolled),
            ("steps".to_owned(), steps),
            ("exited".to_owned(), exited),
            ("opted_out".to_owned(), opted_out),
        ]
        .into(),
        ..Report::default()
    };
    report.metrics.insert("setup_seconds".into(), setup);
    report.metrics.insert("enrol_seconds".into(), enrolment);
    report
        .metrics
        .insert("step_seconds".into(), elapsed - enrolment);
    report.metrics.insert(
        "steps_per_second".into(),
        (steps + exited) as f64 / (elapsed - enrolment).max(1e-9),
    );
    report.parameters.insert(
        "work".into(),
        "enrol a segment in a two-step drip, then take the first step for everyone (exit checks, intake, step and message in one transaction)"
            .into(),
    );
    Ok(report)
}
