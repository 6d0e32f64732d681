//! Counters of what the engine has done since it started, readable without touching the
//! database: for progress reporting, benchmarks, and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use herald_store::{ReportOutcome, SendOutcome};

/// Live counters; cheap to update from many tasks.
#[derive(Debug, Default)]
pub struct Counters {
    claimed: AtomicU64,
    accepted: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    unanswered: AtomicU64,
    unclaimed: AtomicU64,
    deferred: AtomicU64,
    suppressed: AtomicU64,
    reports_applied: AtomicU64,
    reports_unchanged: AtomicU64,
    reports_unmatched: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub claimed: u64,
    pub accepted: u64,
    pub retried: u64,
    pub failed: u64,
    pub unanswered: u64,
    pub unclaimed: u64,
    /// Promotional messages put back until their recipient's quiet hours end.
    pub deferred: u64,
    pub suppressed: u64,
    pub reports_applied: u64,
    pub reports_unchanged: u64,
    pub reports_unmatched: u64,
}

impl Counters {
    pub(crate) fn claimed(&self, n: usize) {
        self.claimed.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn outcome(&self, outcome: &SendOutcome) {
        let counter = match outcome {
            SendOutcome::Accepted { .. } => &self.accepted,
            SendOutcome::Retry { .. } => &self.retried,
            SendOutcome::Failed { .. } => &self.failed,
            SendOutcome::Suppressed { .. } => &self.suppressed,
            SendOutcome::Unanswered { .. } => &self.unanswered,
            SendOutcome::Unclaimed => &self.unclaimed,
            SendOutcome::Deferred { .. } => &self.deferred,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reports(&self, outcomes: &[ReportOutcome]) {
        for outcome in outcomes {
            let counter = match outcome {
                ReportOutcome::Applied => &self.reports_applied,
                ReportOutcome::Unchanged => &self.reports_unchanged,
                ReportOutcome::NotFound => &self.reports_unmatched,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Stats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            claimed: get(&self.claimed),
            accepted: get(&self.accepted),
            retried: get(&self.retried),
            failed: get(&self.failed),
            unanswered: get(&self.unanswered),
            unclaimed: get(&self.unclaimed),
            deferred: get(&self.deferred),
            suppressed: get(&self.suppressed),
            reports_applied: get(&self.reports_applied),
            reports_unchanged: get(&self.reports_unchanged),
            reports_unmatched: get(&self.reports_unmatched),
        }
    }
}
