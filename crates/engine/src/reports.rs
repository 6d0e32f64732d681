//! Recording provider status reports with group commit.
//!
//! Reports arrive from many places at once (the simulator's reporter, and provider callbacks on
//! many HTTP connections). Each caller waits until its reports are durably recorded — a provider
//! callback must not be acknowledged before that — but writing each one in its own transaction
//! would make the database's commit rate the ceiling. So callers queue their reports to one
//! writer task, which takes whatever has accumulated, records it in one transaction, and answers
//! every caller.

use std::sync::Arc;

use async_trait::async_trait;
use herald_providers::{ReportSink, SinkError};
use herald_store::{ProviderReport, ReportOutcome, Store};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;

/// Reports per transaction at most.
const MAX_BATCH: usize = 4_000;

struct Job {
    reports: Vec<ProviderReport>,
    done: oneshot::Sender<Result<Vec<ReportOutcome>, SinkError>>,
}

/// The entry point for provider reports. Cheap to clone.
#[derive(Clone)]
pub struct ReportIngestor {
    jobs: mpsc::Sender<Job>,
}

impl ReportIngestor {
    /// Start the writer task; it ends when every clone of the ingestor is dropped.
    pub fn spawn(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> ReportIngestor {
        let (jobs, receiver) = mpsc::channel(1_024);
        tokio::spawn(write_loop(store, clock, receiver));
        ReportIngestor { jobs }
    }
}

#[async_trait]
impl ReportSink for ReportIngestor {
    async fn submit(&self, reports: Vec<ProviderReport>) -> Result<Vec<ReportOutcome>, SinkError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { reports, done })
            .await
            .map_err(|_| SinkError("the report writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| SinkError("the report writer has stopped".into()))?
    }
}

async fn write_loop(store: Arc<dyn Store>, clock: Arc<dyn Clock>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].reports.len();
        while count < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => {
                    count += job.reports.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let reports: Vec<ProviderReport> = batch
            .iter()
            .flat_map(|job| job.reports.iter().cloned())
            .collect();
        match store.apply_reports(&reports, clock.now()).await {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for job in batch {
                    let mine = outcomes.by_ref().take(job.reports.len()).collect();
                    let _ = job.done.send(Ok(mine));
                }
            }
            Err(error) => {
                tracing::error!(%error, reports = reports.len(), "failed to record provider reports");
                for job in batch {
                    let _ = job.done.send(Err(SinkError(error.to_string())));
                }
            }
        }
    }
}
