//! `stub`: how fast the provider stub answers on its own, so a scenario that sends to it can
//! tell whether the stub was its limit. The load comes from an in-process client with the same
//! concurrency the dispatcher uses.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;

use crate::report::{Percentiles, Report};
use crate::{Options, child, process};

pub async fn run(options: &Options) -> Result<Report> {
    let stub = child::stub(&options.exe()?, Duration::ZERO, None).await?;
    let url = format!(
        "http://{}/2010-04-01/Accounts/ACbench/Messages.json",
        stub.address
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.max_in_flight)
        .build()?;
    let started = Instant::now();
    let latencies: Vec<Result<Duration>> = futures::stream::iter(0..options.messages)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let sent = Instant::now();
                let form = [
                    ("To", crate::workload::recipient(i)),
                    ("From", "+15005550006".into()),
                    ("Body", crate::workload::body(i)),
                ];
                let response = client
                    .post(&url)
                    .basic_auth("ACbench", Some("token"))
                    .form(&form)
                    .send()
                    .await?;
                if response.status().as_u16() != 201 {
                    bail!("the stub answered {}", response.status());
                }
                response.bytes().await?;
                Ok(sent.elapsed())
            }
        })
        .buffer_unordered(options.max_in_flight)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let stub_cpu = process::cpu_time(stub.pid()).unwrap_or_default();
    let stub_peak = process::peak_rss(stub.pid()).unwrap_or(0);
    stub.stop()?;
    let latencies = latencies.into_iter().collect::<Result<Vec<_>>>()?;

    let mut report = Report {
        scenario: options.scenario.clone(),
        store: "none".into(),
        messages: options.messages,
        elapsed_seconds: elapsed,
        messages_per_second: options.messages as f64 / elapsed.max(1e-9),
        latency_ms: Percentiles::of(latencies),
        latency_of: Some("request to response".into()),
        cpu_seconds: stub_cpu.as_secs_f64(),
        peak_rss_mb: stub_peak as f64 / 1_048_576.0,
        ..Report::default()
    };
    report
        .parameters
        .insert("concurrency".into(), options.max_in_flight.into());
    report
        .parameters
        .insert("measured".into(), "the stub process (cpu, rss)".into());
    Ok(report)
}
