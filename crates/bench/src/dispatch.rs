//! `dispatch-sim` and `dispatch-http`: N queued messages dispatched as fast as the engine can,
//! measured from the first claim to the last recorded result, from the durable history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use herald_engine::clock::SystemClock;
use herald_engine::{Engine, EngineConfig};
use herald_providers::Provider;
use herald_store::{Scope, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::BenchDb;
use crate::report::{Percentiles, Report};
use crate::{Options, process, workload};

/// What the messages are sent to, and the status a message ends in when all went well.
pub struct Target {
    pub name: &'static str,
    pub live: Option<Arc<dyn Provider>>,
    pub final_status: &'static str,
}

pub async fn run(options: &Options, db: &BenchDb, target: Target) -> Result<Report> {
    let n = options.messages;
    let (org, scope) = db.organization().await?;
    let mut config = EngineConfig::default();
    config.simulator.delivery_delay = Duration::ZERO;
    config.dispatcher.batch_size = options.batch_size;
    config.dispatcher.max_in_flight = options.max_in_flight;

    let setup = Instant::now();
    workload::enqueue(db.store.as_ref(), &config.intake, scope, n).await?;
    let setup_seconds = setup.elapsed().as_secs_f64();

    let engine = Arc::new(Engine::new(
        db.store.clone(),
        Arc::new(SystemClock),
        config,
        target.live,
    ));
    let pid = process::own_pid();
    process::reset_peak(pid);
    let cpu_before = process::cpu_time(pid).unwrap_or_default();
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let mut workers = engine.start(shutdown.clone());
    let accounted =
        wait_until_final(&engine, db.store.as_ref(), scope, n, target.final_status).await;
    shutdown.cancel();
    while workers.join_next().await.is_some() {}
    let wall = started.elapsed();
    let cpu = process::cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let peak = process::peak_rss(pid).unwrap_or(0);
    let accounted = accounted?;

    // The durable record: when each message was claimed, sent, delivered.
    let claimed = first_per_message(db.events(org.id, "sending").await?);
    let sent = first_per_message(db.events(org.id, "sent").await?);
    let delivered = first_per_message(db.events(org.id, "delivered").await?);
    let first_claim = claimed.values().copied().min().unwrap_or(0);
    let last_sent = sent.values().copied().max().unwrap_or(first_claim);
    let span = |last: i64| Duration::from_micros((last - first_claim).max(1) as u64).as_secs_f64();
    let latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| {
            claimed
                .get(id)
                .map(|claim| Duration::from_micros((at - claim).max(0) as u64))
        })
        .collect();

    let mut report = Report {
        scenario: options.scenario.clone(),
        store: db.kind.as_str().into(),
        messages: n,
        elapsed_seconds: span(last_sent),
        messages_per_second: n as f64 / span(last_sent),
        latency_ms: Percentiles::of(latencies),
        latency_of: Some("claim to recorded send result".into()),
        cpu_seconds: cpu.as_secs_f64(),
        peak_rss_mb: peak as f64 / 1_048_576.0,
        accounted,
        ..Report::default()
    };
    if let Some(last_delivered) = delivered.values().copied().max() {
        report.metrics.insert(
            "delivered_per_second".into(),
            n as f64 / span(last_delivered),
        );
    }
    report.metrics.insert("setup_seconds".into(), setup_seconds);
    report
        .metrics
        .insert("wall_seconds".into(), wall.as_secs_f64());
    report
        .parameters
        .insert("provider".into(), target.name.into());
    report
        .parameters
        .insert("batch_size".into(), options.batch_size.into());
    report
        .parameters
        .insert("max_in_flight".into(), options.max_in_flight.into());
    Ok(report)
}

/// A message claimed twice (a retry) counts from its first claim.
fn first_per_message(events: Vec<(Uuid, i64)>) -> HashMap<Uuid, i64> {
    let mut first = HashMap::with_capacity(events.len());
    for (id, at) in events {
        first
            .entry(id)
            .and_modify(|t: &mut i64| *t = (*t).min(at))
            .or_insert(at);
    }
    first
}

/// Wait until every message has reached `final_status` (or another final status), watching the
/// engine's counters and then confirming from the store. Returns the final status counts.
async fn wait_until_final(
    engine: &Engine,
    store: &dyn Store,
    scope: Scope,
    n: u64,
    final_status: &str,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let deadline = Instant::now() + Duration::from_secs(60 + n / 500);
    loop {
        let stats = engine.counters.snapshot();
        if stats.accepted + stats.failed >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("gave up waiting: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loop {
        let counts = store.status_counts(scope.org_id).await?;
        let done: u64 = counts
            .iter()
            .filter(|(status, _)| status.as_str() == final_status || status.is_terminal())
            .map(|(_, count)| count)
            .sum();
        if done >= n {
            return Ok(counts
                .into_iter()
                .map(|(s, c)| (s.as_str().to_owned(), c))
                .collect());
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {final_status}: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `dispatch-http`: the same through Herald's Twilio adapter to the provider stub, run as its
/// own process. The stub's count of accepted sends must equal N: each message sent once.
pub async fn run_http(options: &Options, db: &BenchDb) -> Result<Report> {
    let stub = crate::child::stub(&options.exe()?, Duration::ZERO, None).await?;
    let base = format!("http://{}", stub.address);
    let mut twilio = herald_providers::twilio::TwilioConfig::new(
        "ACbench00000000000000000000000000",
        crate::stub::StubConfig::default().auth_token,
    );
    twilio.base_url = base.clone();
    twilio.from = Some("+15005550006".into());
    let live: Arc<dyn Provider> = Arc::new(herald_providers::twilio::Twilio::new(twilio)?);
    let target = Target {
        name: "twilio adapter -> stub",
        live: Some(live),
        final_status: "sent",
    };
    let result = run(options, db, target).await;
    let stats = crate::stub::fetch_stats(&reqwest::Client::new(), &base).await;
    let stub_cpu = process::cpu_time(stub.pid()).unwrap_or_default();
    stub.stop()?;
    let mut report = result?;
    let stats = stats?;
    if stats.twilio_submits.count != options.messages {
        bail!(
            "the stub accepted {} sends for {} messages",
            stats.twilio_submits.count,
            options.messages
        );
    }
    report
        .metrics
        .insert("stub_accepted".into(), stats.twilio_submits.count as f64);
    report
        .metrics
        .insert("stub_cpu_seconds".into(), stub_cpu.as_secs_f64());
    Ok(report)
}
