//! Recording send results and provider status reports with group commit.
//!
//! Results come from the dispatcher's batches and reports from many places at once (the
//! simulator's reporter, provider callbacks on many HTTP connections). Each caller waits until
//! what it submitted is durably recorded — a provider callback must not be acknowledged before
//! that — but one transaction per caller would make the database's commit rate the ceiling, and
//! would load the same rows again and again, since a message's result and its reports arrive
//! close together. So callers queue their work to one writer task, which takes everything that
//! has accumulated, records it in one transaction, and answers every caller.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_providers::{ReportSink, SinkError};
use herald_store::{ProviderReport, ReportOutcome, SendResult, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::stats::Counters;

/// Results plus reports per transaction, at most.
const MAX_BATCH: usize = 4_000;

enum Work {
    Results(Vec<SendResult>),
    Reports(Vec<ProviderReport>),
}

impl Work {
    fn len(&self) -> usize {
        match self {
            Work::Results(results) => results.len(),
            Work::Reports(reports) => reports.len(),
        }
    }
}

struct Job {
    work: Work,
    done: oneshot::Sender<Result<Vec<ReportOutcome>, String>>,
}

/// The single entry point for results and reports. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    jobs: mpsc::Sender<Job>,
}

impl Recorder {
    /// Start the writer task; it ends when every clone of the recorder is dropped.
    pub fn spawn(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        counters: Arc<Counters>,
    ) -> Recorder {
        let (jobs, receiver) = mpsc::channel(1_024);
        tokio::spawn(write_loop(store, clock, counters, receiver));
        Recorder { jobs }
    }

    async fn submit(&self, work: Work) -> Result<Vec<ReportOutcome>, String> {
        let (done, answer) = oneshot::channel();
        let stopped = || "the recorder has stopped".to_owned();
        self.jobs
            .send(Job { work, done })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Record the results of provider calls; returns once they are durable.
    pub async fn record_results(&self, results: Vec<SendResult>) -> Result<(), StoreError> {
        if results.is_empty() {
            return Ok(());
        }
        self.submit(Work::Results(results))
            .await
            .map(|_| ())
            .map_err(|error| StoreError::Backend {
                context: "failed to record send results",
                source: error.into(),
            })
    }
}

#[async_trait]
impl ReportSink for Recorder {
    async fn submit(&self, reports: Vec<ProviderReport>) -> Result<Vec<ReportOutcome>, SinkError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        Recorder::submit(self, Work::Reports(reports))
            .await
            .map_err(SinkError)
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
    mut jobs: mpsc::Receiver<Job>,
) {
    while let Some(first) = jobs.recv().await {
        let mut count = first.work.len();
        let mut batch = vec![first];
        while count < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => {
                    count += job.work.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let mut results = Vec::new();
        let mut reports = Vec::new();
        for job in &batch {
            match &job.work {
                Work::Results(r) => results.extend(r.iter().cloned()),
                Work::Reports(r) => reports.extend(r.iter().cloned()),
            }
        }
        match record_with_retry(store.as_ref(), clock.as_ref(), &results, &reports).await {
            Ok(outcomes) => {
                counters.reports(&outcomes);
                let mut outcomes = outcomes.into_iter();
                for job in batch {
                    let mine = match &job.work {
                        Work::Results(_) => Vec::new(),
                        Work::Reports(r) => outcomes.by_ref().take(r.len()).collect(),
                    };
                    let _ = job.done.send(Ok(mine));
                }
            }
            Err(error) => {
                tracing::error!(%error, results = results.len(), reports = reports.len(), "failed to record results and reports");
                for job in batch {
                    let _ = job.done.send(Err(error.to_string()));
                }
            }
        }
    }
}

/// A few quick retries ride out a database hiccup; after that callers hear of the failure
/// (providers retry their callbacks, and unrecorded results are settled by lease expiry).
async fn record_with_retry(
    store: &dyn Store,
    clock: &dyn Clock,
    results: &[SendResult],
    reports: &[ProviderReport],
) -> Result<Vec<ReportOutcome>, StoreError> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match store.record(results, reports, clock.now()).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(error) if attempt < 4 => {
                tracing::warn!(%error, attempt, "recording failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
