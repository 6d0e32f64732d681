//! The built-in simulator provider: the default until real credentials are configured, the only
//! provider test keys ever reach, and the fault injector for Herald's own tests.
//!
//! It behaves like a real provider seen from outside: it accepts a message and names it with a
//! Twilio-style id, then reports `sent` and, after a delay, `delivered` (or `undelivered` with a
//! carrier error code at the configured failure rate) through the [`ReportSink`] that real
//! provider callbacks use. It remembers each message until its final report is recorded, so
//! reconciliation can ask it what became of a message whose send result was lost.
//!
//! Faults come from three places: scripted ones queued with [`Simulator::inject`] (exact, for
//! tests), random ones at configured rates (for experiments), and Twilio's magic test numbers
//! (`+15005550001` invalid, `+15005550004` blocked, …), so a client can provoke a failure with a
//! test key the same way it would with Twilio's test credentials.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use herald_domain::status::ReportedStatus;
use herald_store::ProviderReport;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{Accepted, Lookup, LookupQuery, Outbound, Provider, ReportSink, SendError};

/// The name recorded on messages the simulator sends.
pub const NAME: &str = "simulator";

/// How the simulator behaves.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// From acceptance to the final delivery report.
    pub delivery_delay: Duration,
    /// Added to every send, like a provider's response time.
    pub latency: Duration,
    /// Share of accepted messages that end `undelivered` (0.0–1.0).
    pub failure_rate: f64,
    /// Carrier errors for undelivered messages, picked at random: `(code, message)`.
    pub failure_codes: Vec<(String, String)>,
    /// Share of sends refused with a transient error (503 or 429), for chaos experiments.
    pub transient_error_rate: f64,
    /// Share of sends that time out after accepting the message.
    pub timeout_rate: f64,
    /// Deliver reports on a background task when due. Off, reports wait for
    /// [`Simulator::flush_reports`], so tests decide exactly when they arrive.
    pub auto_report: bool,
    /// Seed for the random choices, for reproducible runs.
    pub seed: Option<u64>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            delivery_delay: Duration::from_millis(300),
            latency: Duration::ZERO,
            failure_rate: 0.0,
            failure_codes: vec![
                ("30003".into(), "Unreachable destination handset".into()),
                ("30005".into(), "Unknown destination handset".into()),
                ("30006".into(), "Landline or unreachable carrier".into()),
            ],
            transient_error_rate: 0.0,
            timeout_rate: 0.0,
            auto_report: true,
            seed: None,
        }
    }
}

/// A fault to inject into the next send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `503 Service Unavailable`.
    ServerError,
    /// `429 Too Many Requests` with a `Retry-After`.
    RateLimited { retry_after: Duration },
    /// The call gets no answer. With `accepted`, the simulator took the message first, as when
    /// a response is lost on the way back.
    Timeout { accepted: bool },
    /// Refused for good.
    Reject { code: String, message: String },
    /// Answer only after this long; the dispatcher's timeout may fire first.
    Delay(Duration),
}

/// What the simulator remembers of an accepted message until its final report is recorded.
#[derive(Clone, Debug)]
struct Record {
    provider_message_id: String,
    status: ReportedStatus,
    error_code: Option<String>,
}

struct Pending {
    due: Instant,
    seq: u64,
    report: ProviderReport,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Inner {
    rng: SmallRng,
    faults: VecDeque<Fault>,
    records: HashMap<Uuid, Record>,
    pending: BinaryHeap<Reverse<Pending>>,
    next_seq: u64,
    /// How many times each message was accepted; a message accepted twice was sent twice.
    accepted: HashMap<Uuid, u32>,
}

/// The simulator provider. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Simulator {
    config: Arc<SimulatorConfig>,
    sink: Arc<dyn ReportSink>,
    inner: Arc<Mutex<Inner>>,
    wake: Arc<Notify>,
}

impl Simulator {
    /// A simulator reporting to `sink`. With `auto_report`, this spawns the reporting task, so
    /// it must be called inside a Tokio runtime; the task ends when the last clone is dropped.
    pub fn new(config: SimulatorConfig, sink: Arc<dyn ReportSink>) -> Simulator {
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        let simulator = Simulator {
            config: Arc::new(config),
            sink,
            inner: Arc::new(Mutex::new(Inner {
                rng,
                faults: VecDeque::new(),
                records: HashMap::new(),
                pending: BinaryHeap::new(),
                next_seq: 0,
                accepted: HashMap::new(),
            })),
            wake: Arc::new(Notify::new()),
        };
        if simulator.config.auto_report {
            tokio::spawn(report_loop(
                Arc::downgrade(&simulator.inner),
                simulator.clone_parts(),
            ));
        }
        simulator
    }

    pub fn config(&self) -> &SimulatorConfig {
        &self.config
    }

    /// Queue a fault for the next send (faults apply in the order injected).
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// How many times the message was accepted.
    pub fn times_accepted(&self, message_id: Uuid) -> u32 {
        self.lock().accepted.get(&message_id).copied().unwrap_or(0)
    }

    /// Messages accepted in all, counting repeats.
    pub fn total_accepted(&self) -> u64 {
        self.lock().accepted.values().map(|&n| u64::from(n)).sum()
    }

    /// Injected faults not yet taken by a send: a send takes its fault as it starts, so this
    /// tells a test that a call is under way.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Reports not yet delivered to the sink.
    pub fn pending_reports(&self) -> usize {
        self.lock().pending.len()
    }

    /// Deliver every pending report now, due or not; returns how many were recorded.
    pub async fn flush_reports(&self) -> Result<usize, crate::SinkError> {
        let batch: Vec<Pending> = {
            let mut inner = self.lock();
            std::iter::from_fn(|| inner.pending.pop().map(|Reverse(p)| p)).collect()
        };
        let count = batch.len();
        deliver(&self.inner, self.sink.as_ref(), batch).await?;
        Ok(count)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn clone_parts(&self) -> (Arc<dyn ReportSink>, Arc<Notify>) {
        (self.sink.clone(), self.wake.clone())
    }

    /// Take the message: remember it and schedule its reports.
    fn accept(&self, message: &Outbound) -> Accepted {
        let provider_message_id = format!("SM{}", Uuid::new_v4().simple());
        let now = Instant::now();
        let mut inner = self.lock();
        let failed = inner
            .rng
            .random_bool(self.config.failure_rate.clamp(0.0, 1.0));
        let final_error = match (failed, self.config.failure_codes.len()) {
            (true, n) if n > 0 => {
                let pick = inner.rng.random_range(0..n);
                Some(self.config.failure_codes[pick].clone())
            }
            (true, _) => Some(("30008".to_owned(), "Unknown error".to_owned())),
            (false, _) => None,
        };
        *inner.accepted.entry(message.message_id).or_default() += 1;
        inner.records.insert(
            message.message_id,
            Record {
                provider_message_id: provider_message_id.clone(),
                status: ReportedStatus::Sent,
                error_code: None,
            },
        );
        let report = |status, error: Option<(String, String)>| ProviderReport {
            provider: NAME.to_owned(),
            message_id: Some(message.message_id),
            provider_message_id: provider_message_id.clone(),
            status,
            error_code: error.as_ref().map(|(code, _)| code.clone()),
            error_message: error.map(|(_, message)| message),
            cost: None,
        };
        let final_status = if final_error.is_some() {
            ReportedStatus::Undelivered
        } else {
            ReportedStatus::Delivered
        };
        let sent = report(ReportedStatus::Sent, None);
        let done = report(final_status, final_error);
        inner.schedule(now, sent);
        inner.schedule(now + self.config.delivery_delay, done);
        drop(inner);
        self.wake.notify_one();
        Accepted {
            provider_message_id,
            cost: None,
        }
    }

    /// The fault to apply to this send, if any: scripted first, then magic numbers, then chance.
    fn fault_for(&self, message: &Outbound) -> Option<Fault> {
        let mut inner = self.lock();
        if let Some(fault) = inner.faults.pop_front() {
            return Some(fault);
        }
        if let Some(fault) = magic_number(&message.to) {
            return Some(fault);
        }
        let roll: f64 = inner.rng.random();
        let transient = self.config.transient_error_rate.clamp(0.0, 1.0);
        if roll < transient {
            return Some(if inner.rng.random_bool(0.5) {
                Fault::ServerError
            } else {
                Fault::RateLimited {
                    retry_after: Duration::from_secs(1),
                }
            });
        }
        if roll < transient + self.config.timeout_rate.clamp(0.0, 1.0) {
            return Some(Fault::Timeout { accepted: true });
        }
        None
    }
}

impl Inner {
    fn schedule(&mut self, due: Instant, report: ProviderReport) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push(Reverse(Pending { due, seq, report }));
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // The state stays consistent even if a holder panicked: every update is a single step.
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Twilio's magic test recipients, honoured so clients can provoke the same failures.
fn magic_number(to: &str) -> Option<Fault> {
    let reject = |code: &str, message: &str| {
        Some(Fault::Reject {
            code: code.to_owned(),
            message: message.to_owned(),
        })
    };
    match to {
        "+15005550001" => reject("21211", "The 'To' number is not a valid phone number"),
        "+15005550002" => reject("21612", "The 'To' phone number is not currently reachable"),
        "+15005550003" => reject("21408", "Permission to send an SMS has not been enabled"),
        "+15005550004" => reject("21610", "Attempt to send to unsubscribed recipient"),
        "+15005550009" => reject("21614", "'To' number is not a valid mobile number"),
        _ => None,
    }
}

#[async_trait]
impl Provider for Simulator {
    fn name(&self) -> &str {
        NAME
    }

    async fn send(&self, message: &Outbound) -> Result<Accepted, SendError> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        match self.fault_for(message) {
            None => Ok(self.accept(message)),
            Some(Fault::ServerError) => Err(SendError::Transient {
                code: "503".into(),
                message: "Service Unavailable".into(),
                retry_after: None,
            }),
            Some(Fault::RateLimited { retry_after }) => Err(SendError::Transient {
                code: "429".into(),
                message: "Too Many Requests".into(),
                retry_after: Some(retry_after),
            }),
            Some(Fault::Timeout { accepted }) => {
                if accepted {
                    self.accept(message);
                }
                Err(SendError::Unanswered {
                    code: "timeout".into(),
                    message: "the simulator did not answer".into(),
                })
            }
            Some(Fault::Reject { code, message }) => Err(SendError::Permanent { code, message }),
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(self.accept(message))
            }
        }
    }

    async fn lookup(&self, query: &LookupQuery) -> Result<Lookup, SendError> {
        Ok(match self.lock().records.get(&query.message_id) {
            Some(record) => Lookup::Found {
                provider_message_id: record.provider_message_id.clone(),
                status: record.status,
                error_code: record.error_code.clone(),
            },
            None => Lookup::NotFound,
        })
    }
}

/// Hand reports to the sink; once a final report is recorded the simulator forgets the message.
/// On failure the reports go back in the queue, as a provider retries a failed callback.
async fn deliver(
    inner: &Mutex<Inner>,
    sink: &dyn ReportSink,
    batch: Vec<Pending>,
) -> Result<(), crate::SinkError> {
    if batch.is_empty() {
        return Ok(());
    }
    let reports: Vec<ProviderReport> = batch.iter().map(|p| p.report.clone()).collect();
    match sink.submit(reports).await {
        Ok(_) => {
            let mut inner = lock(inner);
            for pending in batch {
                match pending.report.message_id {
                    Some(id) if pending.report.status != ReportedStatus::Sent => {
                        inner.records.remove(&id);
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        Err(error) => {
            let mut inner = lock(inner);
            let retry_at = Instant::now() + Duration::from_millis(500);
            for pending in batch {
                inner.schedule(retry_at, pending.report);
            }
            Err(error)
        }
    }
}

/// Deliver reports as they fall due, in batches. Ends when the simulator is dropped.
async fn report_loop(
    inner: std::sync::Weak<Mutex<Inner>>,
    (sink, wake): (Arc<dyn ReportSink>, Arc<Notify>),
) {
    // How many reports one sink call carries at most; larger batches amortise the commit.
    const MAX_BATCH: usize = 2_000;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (batch, next_due) = {
            let mut state = lock(&strong);
            let mut batch = Vec::new();
            while batch.len() < MAX_BATCH {
                match state.pending.peek() {
                    Some(Reverse(p)) if p.due <= now => {
                        batch.extend(state.pending.pop().map(|Reverse(p)| p));
                    }
                    _ => break,
                }
            }
            (batch, state.pending.peek().map(|Reverse(p)| p.due))
        };
        if !batch.is_empty() {
            if let Err(error) = deliver(&strong, sink.as_ref(), batch).await {
                tracing::warn!(%error, "simulator reports will be retried");
            }
            continue;
        }
        drop(strong);
        // Wake when a report falls due, when a new one is scheduled, or every second to notice
        // that the simulator was dropped.
        let sleep_until = next_due
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SinkError;
    use herald_domain::encoding::Encoding;
    use herald_domain::message::MessageType;
    use herald_store::ReportOutcome;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<ProviderReport>>);

    #[async_trait]
    impl ReportSink for Recorder {
        async fn submit(
            &self,
            reports: Vec<ProviderReport>,
        ) -> Result<Vec<ReportOutcome>, SinkError> {
            let n = reports.len();
            self.0.lock().unwrap().extend(reports);
            Ok(vec![ReportOutcome::Applied; n])
        }
    }

    fn outbound(to: &str) -> Outbound {
        Outbound {
            message_id: Uuid::now_v7(),
            to: to.into(),
            from: None,
            body: "Hi".into(),
            encoding: Encoding::Gsm7,
            segments: 1,
            kind: MessageType::Transactional,
            attempt: 1,
        }
    }

    fn manual(config: SimulatorConfig) -> (Simulator, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let config = SimulatorConfig {
            auto_report: false,
            seed: Some(7),
            ..config
        };
        (Simulator::new(config, recorder.clone()), recorder)
    }

    #[tokio::test]
    async fn an_accepted_message_is_reported_sent_then_delivered() {
        let (sim, recorder) = manual(SimulatorConfig::default());
        let message = outbound("+14155550100");
        let accepted = sim.send(&message).await.unwrap();
        assert!(accepted.provider_message_id.starts_with("SM"));
        assert_eq!(sim.flush_reports().await.unwrap(), 2);
        let reports = recorder.0.lock().unwrap().clone();
        let statuses: Vec<_> = reports.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            vec![ReportedStatus::Sent, ReportedStatus::Delivered]
        );
        assert!(
            reports
                .iter()
                .all(|r| r.message_id == Some(message.message_id))
        );
        assert!(
            reports
                .iter()
                .all(|r| r.provider_message_id == accepted.provider_message_id)
        );
    }

    #[tokio::test]
    async fn lookups_find_a_message_until_its_final_report_is_recorded() {
        let (sim, _) = manual(SimulatorConfig::default());
        let message = outbound("+14155550100");
        let query = LookupQuery {
            message_id: message.message_id,
            provider_message_id: None,
            to: message.to.clone(),
        };
        assert_eq!(sim.lookup(&query).await.unwrap(), Lookup::NotFound);
        sim.send(&message).await.unwrap();
        assert!(matches!(
            sim.lookup(&query).await.unwrap(),
            Lookup::Found {
                status: ReportedStatus::Sent,
                ..
            }
        ));
        sim.flush_reports().await.unwrap();
        assert_eq!(sim.lookup(&query).await.unwrap(), Lookup::NotFound);
    }

    #[tokio::test]
    async fn injected_faults_apply_in_order_then_sends_succeed() {
        let (sim, _) = manual(SimulatorConfig::default());
        sim.inject(Fault::ServerError);
        sim.inject(Fault::RateLimited {
            retry_after: Duration::from_secs(3),
        });
        sim.inject(Fault::Timeout { accepted: true });
        sim.inject(Fault::Reject {
            code: "21211".into(),
            message: "invalid".into(),
        });
        let message = outbound("+14155550100");
        assert!(
            matches!(sim.send(&message).await, Err(SendError::Transient { code, .. }) if code == "503")
        );
        assert!(matches!(
            sim.send(&message).await,
            Err(SendError::Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            sim.send(&message).await,
            Err(SendError::Unanswered { .. })
        ));
        assert_eq!(
            sim.times_accepted(message.message_id),
            1,
            "a timeout after accepting still took it"
        );
        assert!(
            matches!(sim.send(&message).await, Err(SendError::Permanent { code, .. }) if code == "21211")
        );
        assert!(sim.send(&message).await.is_ok());
        assert_eq!(sim.times_accepted(message.message_id), 2);
    }

    #[tokio::test]
    async fn twilios_magic_numbers_fail_the_way_twilio_does() {
        let (sim, _) = manual(SimulatorConfig::default());
        let refused = sim.send(&outbound("+15005550004")).await;
        assert!(matches!(refused, Err(SendError::Permanent { code, .. }) if code == "21610"));
    }

    #[tokio::test]
    async fn the_failure_rate_turns_deliveries_into_carrier_errors() {
        let (sim, recorder) = manual(SimulatorConfig {
            failure_rate: 1.0,
            ..SimulatorConfig::default()
        });
        sim.send(&outbound("+14155550100")).await.unwrap();
        sim.flush_reports().await.unwrap();
        let last = recorder.0.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.status, ReportedStatus::Undelivered);
        assert!(["30003", "30005", "30006"].contains(&last.error_code.as_deref().unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn reports_arrive_on_their_own_after_the_delivery_delay() {
        let recorder = Arc::new(Recorder::default());
        let config = SimulatorConfig {
            delivery_delay: Duration::from_millis(200),
            ..SimulatorConfig::default()
        };
        let sim = Simulator::new(config, recorder.clone());
        sim.send(&outbound("+14155550100")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            recorder.0.lock().unwrap().len(),
            1,
            "sent is reported at once"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            recorder.0.lock().unwrap().len(),
            2,
            "delivered after the delay"
        );
        assert_eq!(sim.pending_reports(), 0);
    }
}
