//! Storing accepted messages with group commit.
//!
//! Every API send must be durable before it is answered, and one transaction per request
//! would make the database's commit rate the API's ceiling (SQLite has one writer, shared with
//! the dispatcher). So requests hand their prepared messages to one writer task, which stores
//! everything that has accumulated in one transaction and answers each request once it is
//! committed. Items keep their order, so two requests with the same idempotency key in one
//! batch still replay rather than both sending.

use std::sync::Arc;

use herald_store::{IdempotencyRecord, Insertion, NewMessage, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;

/// Messages per transaction at most.
const MAX_BATCH: usize = 512;

struct Job {
    message: NewMessage,
    idempotency: Option<IdempotencyRecord>,
    done: oneshot::Sender<Result<Insertion, String>>,
}

/// The entry point for new messages. Cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    jobs: mpsc::Sender<Job>,
}

impl Acceptor {
    /// Start the writer task; it ends when every clone is dropped.
    pub fn spawn(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Acceptor {
        let (jobs, receiver) = mpsc::channel(4_096);
        tokio::spawn(write_loop(store, clock, receiver));
        Acceptor { jobs }
    }

    /// Store `message` durably; returns once it is committed.
    pub async fn accept(
        &self,
        message: NewMessage,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<Insertion, StoreError> {
        let stopped = || StoreError::Backend {
            context: "failed to accept a message",
            source: "the acceptor has stopped".into(),
        };
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                message,
                idempotency,
                done,
            })
            .await
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(|error| StoreError::Backend {
                context: "failed to accept a message",
                source: error.into(),
            })
    }
}

async fn write_loop(store: Arc<dyn Store>, clock: Arc<dyn Clock>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (items, answers): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|job| ((job.message, job.idempotency), job.done))
            .unzip();
        match store.accept_messages(&items, clock.now()).await {
            Ok(insertions) => {
                for (insertion, done) in insertions.into_iter().zip(answers) {
                    let _ = done.send(Ok(insertion));
                }
            }
            Err(error) => {
                tracing::error!(%error, messages = items.len(), "failed to store accepted messages");
                for done in answers {
                    let _ = done.send(Err(error.to_string()));
                }
            }
        }
    }
}
