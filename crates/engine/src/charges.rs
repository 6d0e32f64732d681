//! What providers charged: after a message's final status arrives without its price, the
//! provider is asked a little later (Twilio prices a message shortly after delivery), again
//! at 3× and 10× that delay if it could not say yet, and the answer is recorded as the
//! message's actual cost.
//!
//! One worker serves every message from a queue in due order (all waits are the same length,
//! so arrival order is due order): thousands of settled messages cost a queue entry each,
//! not a task each.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_providers::ReportSink;
use herald_store::ProviderReport;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::dispatcher::Router;
use crate::recorder::Recorder;

/// The waits, as multiples of the delay, before each question.
const ATTEMPTS: [u32; 3] = [1, 3, 10];
/// Questions in flight at once.
const CONCURRENCY: usize = 16;

struct Pending {
    due: Instant,
    attempt: usize,
    org_id: Uuid,
    report: ProviderReport,
}

/// The handle that queues messages whose charge to collect.
#[derive(Clone)]
pub struct Charges {
    queue: mpsc::UnboundedSender<Pending>,
    delay: Duration,
}

impl Charges {
    /// Start the worker (inside a Tokio runtime). It stops when every handle is dropped.
    pub fn spawn(router: Arc<Router>, recorder: Recorder, delay: Duration) -> Charges {
        let (queue, incoming) = mpsc::unbounded_channel();
        tokio::spawn(run(router, recorder, delay, incoming));
        Charges { queue, delay }
    }

    /// Collect the charge of the message `report` settled, unless the report carries it or
    /// the message is not settled. `org_id` finds an organization's own account by its name.
    pub fn collect(&self, org_id: Uuid, report: ProviderReport) {
        use herald_domain::status::ReportedStatus;
        let settled = matches!(
            report.status,
            ReportedStatus::Delivered | ReportedStatus::Undelivered | ReportedStatus::Failed
        );
        if settled && report.cost.is_none() {
            let _ = self.queue.send(Pending {
                due: Instant::now() + self.delay * ATTEMPTS[0],
                attempt: 0,
                org_id,
                report,
            });
        }
    }
}

async fn run(
    router: Arc<Router>,
    recorder: Recorder,
    delay: Duration,
    mut incoming: mpsc::UnboundedReceiver<Pending>,
) {
    // Due order per attempt: each attempt's waits are equal, so each queue is already sorted.
    let mut queues: [VecDeque<Pending>; 3] = Default::default();
    let mut open = true;
    loop {
        let next_due = queues.iter().filter_map(|q| q.front()).map(|p| p.due).min();
        if !open && next_due.is_none() {
            return;
        }
        tokio::select! {
            received = incoming.recv(), if open => match received {
                Some(pending) => queues[pending.attempt].push_back(pending),
                None => open = false,
            },
            _ = sleep_until(next_due) => {
                let now = Instant::now();
                let mut due = Vec::new();
                for queue in &mut queues {
                    while queue.front().is_some_and(|p| p.due <= now) {
                        due.extend(queue.pop_front());
                    }
                }
                let answers: Vec<(Pending, bool)> = futures::stream::iter(due)
                    .map(|pending| ask(&router, &recorder, pending))
                    .buffer_unordered(CONCURRENCY)
                    .collect()
                    .await;
                for (mut pending, done) in answers {
                    pending.attempt += 1;
                    if !done && pending.attempt < ATTEMPTS.len() {
                        pending.due = now
                            + delay * (ATTEMPTS[pending.attempt] - ATTEMPTS[pending.attempt - 1]);
                        queues[pending.attempt].push_back(pending);
                    }
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Ask once; `true` when the question is settled (answered, or the provider is gone).
async fn ask(router: &Router, recorder: &Recorder, pending: Pending) -> (Pending, bool) {
    let Some(provider) = router
        .provider_named(pending.org_id, &pending.report.provider)
        .await
    else {
        return (pending, true);
    };
    match provider.charged(&pending.report.provider_message_id).await {
        Ok(Some(cost)) => {
            let priced = ProviderReport {
                cost: Some(cost),
                ..pending.report.clone()
            };
            if let Err(error) = recorder.submit(vec![priced]).await {
                tracing::warn!(%error, "cannot record what a message cost");
            }
            (pending, true)
        }
        Ok(None) => (pending, false),
        Err(error) => {
            tracing::debug!(?error, "cannot ask what a message cost yet");
            (pending, false)
        }
    }
}
