//! The dispatcher: claims due messages in batches, hands them to providers, records what
//! happened.
//!
//! A claim is one short transaction that marks messages `sending` with a lease and commits;
//! provider calls happen after it, outside any transaction; results are recorded in one
//! transaction per batch. No database lock is ever held across a network call. A provider call
//! never outlives its lease (the send timeout is shorter, and a message whose lease is nearly
//! spent goes back to the queue unsent), so when a lease expires the call is certainly over and
//! reconciliation can safely ask the provider what happened.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_domain::message::{MessageType, Mode};
use herald_domain::quiet_hours::QuietHours;
use herald_providers::{Outbound, Provider, SendError};
use herald_store::{
    CampaignStatus, Claimed, SendOutcome, SendResult, Store, StoreError, held_until,
};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::campaigns::CampaignHolds;
use crate::clock::Clock;
use crate::directory::{Candidates, Directory};
use crate::limits::{Limiter, Limits};
use crate::recorder::Recorder;
use crate::retry::RetryPolicy;
use crate::routing::{self, Breaker, BreakerConfig, Breakers, Choice, RouteTable};
use crate::stats::Counters;

/// Dispatcher tuning.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Messages per claim.
    pub batch_size: u32,
    /// Provider calls in flight at once, across all batches.
    pub max_in_flight: usize,
    /// Claimed batches being worked on at once; claiming runs ahead of sending by this much.
    pub max_batches: usize,
    /// How long a claim is good for.
    pub lease: Duration,
    /// How long a provider call may take before it counts as unanswered. Must be well under
    /// `lease`.
    pub send_timeout: Duration,
    /// How long an idle dispatcher sleeps before looking again (it also wakes on new work).
    pub idle_poll: Duration,
    pub retry: RetryPolicy,
    /// Limits per provider name, across every process sharing the database.
    pub rate_limits: HashMap<String, Limits>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            batch_size: 1_000,
            max_in_flight: 256,
            max_batches: 4,
            lease: Duration::from_secs(120),
            send_timeout: Duration::from_secs(15),
            idle_poll: Duration::from_millis(200),
            retry: RetryPolicy::default(),
            rate_limits: HashMap::new(),
        }
    }
}

/// Chooses the provider for a message: test traffic always goes to the simulator; live traffic
/// follows the route for its destination, with failover and circuit breakers (see
/// [`crate::routing`]).
pub struct Router {
    simulator: Arc<dyn Provider>,
    /// Live providers in the order they were configured; the first is the default.
    live: Vec<Arc<dyn Provider>>,
    table: RouteTable,
    breakers: Breakers,
    /// Organizations' own accounts and routes, which take precedence over `table`.
    directory: Option<Arc<Directory>>,
}

/// A route names a provider that is not configured.
#[derive(Debug, thiserror::Error)]
#[error("{place} names provider {name:?}, which is not configured")]
pub struct UnknownProvider {
    /// What names it: `the route for FR`, `a rate limit`.
    pub place: String,
    pub name: String,
}

/// The provider chosen for one send, and the breaker to tell how it went.
pub struct Chosen {
    pub provider: Arc<dyn Provider>,
    breaker: Option<Arc<Breaker>>,
    /// The account's own rate limits, for organizations' accounts.
    pub limits: Option<Arc<Limits>>,
}

impl Chosen {
    /// Tell the provider's breaker how the call went.
    fn settle(&self, health: CallHealth, now: Timestamp) {
        let Some(breaker) = &self.breaker else { return };
        match health {
            CallHealth::Answered => breaker.succeeded(),
            CallHealth::Failing => breaker.failed(now),
            CallHealth::AccountProblem => breaker.trip(now),
            CallHealth::NotCalled => breaker.abandon(now),
        }
    }
}

/// What a call said about the provider, for its breaker: judged by the provider's answer, not
/// by what became of the message (a last attempt's 503 fails the message but is still a
/// failing provider).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallHealth {
    /// It answered about the message, accepting or refusing it.
    Answered,
    /// A transient refusal, or no answer.
    Failing,
    /// The account cannot send at all (bad credentials, no permission): no point trying it
    /// again before the cool-down.
    AccountProblem,
    /// No call was made.
    NotCalled,
}

impl CallHealth {
    fn of(
        answer: &Result<Result<herald_providers::Accepted, SendError>, tokio::time::error::Elapsed>,
    ) -> CallHealth {
        match answer {
            Ok(Ok(_)) | Ok(Err(SendError::Permanent { .. })) => CallHealth::Answered,
            Ok(Err(SendError::Transient { code, .. })) if is_account_problem(code) => {
                CallHealth::AccountProblem
            }
            Ok(Err(_)) | Err(_) => CallHealth::Failing,
        }
    }
}

/// Codes with which providers refuse a message because its recipient opted out with them.
fn refused_as_opted_out(code: &str) -> bool {
    code == "21610" || code == herald_providers::sns::OPTED_OUT
}

/// Codes the adapters give a refusal of the account itself: SNS's authorization errors,
/// Twilio's 20003 (authentication) or a bare 401/403.
fn is_account_problem(code: &str) -> bool {
    matches!(
        code,
        herald_providers::sns::ACCOUNT_PROBLEM | "20003" | "401" | "403"
    )
}

impl Router {
    /// Live traffic goes through `live` by `table` (through the simulator when `live` is
    /// empty); every name in the table must be one of `live`'s (or `simulator`).
    pub fn with_routes(
        simulator: Arc<dyn Provider>,
        mut live: Vec<Arc<dyn Provider>>,
        mut table: RouteTable,
        breaker: BreakerConfig,
    ) -> Result<Router, UnknownProvider> {
        if live.is_empty() {
            live.push(simulator.clone());
        }
        if table.default.is_empty() {
            table.default = live.iter().map(|p| p.name().to_owned()).collect();
        }
        let known = |name: &str| live.iter().any(|p| p.name() == name) || name == simulator.name();
        let destinations = table
            .routes
            .iter()
            .map(|route| {
                let country = route
                    .country
                    .map_or("any country".into(), |c| c.to_string());
                let destination = match &route.prefix {
                    Some(prefix) => format!("{country} +{prefix}"),
                    None => country,
                };
                (destination, &route.providers)
            })
            .chain(std::iter::once(("the default".to_owned(), &table.default)));
        for (destination, providers) in destinations {
            if let Some(name) = providers.iter().find(|name| !known(name)) {
                return Err(UnknownProvider {
                    place: format!("the route for {destination}"),
                    name: name.clone(),
                });
            }
        }
        let breakers = Breakers::new(
            breaker,
            live.iter()
                .map(|p| p.name())
                .chain(std::iter::once(simulator.name())),
        );
        Ok(Router {
            simulator,
            live,
            table,
            breakers,
            directory: None,
        })
    }

    /// The default provider for `mode`.
    pub fn route(&self, mode: Mode) -> &Arc<dyn Provider> {
        match mode {
            Mode::Test => &self.simulator,
            Mode::Live => &self.live[0],
        }
    }

    /// Send organizations' live traffic through their own accounts where they have routes.
    pub fn with_directory(mut self, directory: Arc<Directory>) -> Router {
        self.directory = Some(directory);
        self
    }

    /// One of the server's providers by name.
    pub fn by_name(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.live
            .iter()
            .chain(std::iter::once(&self.simulator))
            .find(|p| p.name() == name)
    }

    /// The provider a message of `org_id` was recorded against, for reconciliation: one of the
    /// server's, or one of the organization's accounts.
    pub async fn provider_named(&self, org_id: Uuid, name: &str) -> Option<Arc<dyn Provider>> {
        if let Some(provider) = self.by_name(name) {
            return Some(provider.clone());
        }
        self.directory.as_ref()?.provider_named(org_id, name).await
    }

    /// The provider for this attempt at `message`, or the time to try again when every
    /// provider of its route is resting behind an open breaker (or none is usable).
    pub async fn choose(&self, message: &Claimed, now: Timestamp) -> Result<Chosen, Timestamp> {
        if message.scope.mode == Mode::Test {
            return Ok(Chosen {
                provider: self.simulator.clone(),
                breaker: None,
                limits: None,
            });
        }
        if let Some(directory) = &self.directory {
            match directory
                .candidates(message.scope.org_id, &message.to, message.country)
                .await
            {
                Candidates::NoRoute => {}
                Candidates::Accounts(accounts) => {
                    // The organization routes this recipient through its own accounts: never
                    // fall back to the server's, whose owner did not agree to carry it.
                    let names: Vec<String> = accounts
                        .iter()
                        .map(|a| a.provider.name().to_owned())
                        .collect();
                    if names.is_empty() {
                        return Err(now + SignedDuration::from_secs(60));
                    }
                    return match routing::choose(&self.breakers, &names, message.attempt, now) {
                        Choice::Send(index) => {
                            let account = &accounts[index];
                            Ok(Chosen {
                                breaker: Some(self.breakers.get_or_create(&names[index])),
                                provider: account.provider.clone(),
                                limits: Some(account.limits.clone()),
                            })
                        }
                        Choice::Wait(until) => Err(until),
                    };
                }
            }
        }
        let candidates = self.table.candidates(&message.to, message.country);
        match routing::choose(&self.breakers, candidates, message.attempt, now) {
            Choice::Send(index) => {
                let provider = candidates
                    .get(index)
                    .and_then(|name| self.by_name(name))
                    .unwrap_or(&self.live[0])
                    .clone();
                let breaker = Some(self.breakers.get_or_create(provider.name()));
                Ok(Chosen {
                    provider,
                    breaker,
                    limits: None,
                })
            }
            Choice::Wait(until) => Err(until),
        }
    }

    /// How each provider's breaker stands, for operators.
    pub fn health(&self) -> Vec<(String, routing::Health)> {
        self.live
            .iter()
            .filter_map(|p| {
                let breaker = self.breakers.get(p.name())?;
                Some((p.name().to_owned(), breaker.health()))
            })
            .collect()
    }
}

/// The code of a message suppressed because its recipient opted out.
pub const OPTED_OUT: &str = "opted_out";

/// What one dispatch step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchOutcome {
    pub claimed: usize,
    pub accepted: usize,
    pub retried: usize,
    pub failed: usize,
    pub unanswered: usize,
    pub unclaimed: usize,
    /// Promotional messages put back until their recipient's quiet hours end.
    pub deferred: usize,
    pub suppressed: usize,
}

impl DispatchOutcome {
    fn count(&mut self, outcome: &SendOutcome) {
        match outcome {
            SendOutcome::Accepted { .. } => self.accepted += 1,
            SendOutcome::Retry { .. } => self.retried += 1,
            SendOutcome::Failed { .. } => self.failed += 1,
            SendOutcome::Unanswered { .. } => self.unanswered += 1,
            SendOutcome::Unclaimed => self.unclaimed += 1,
            SendOutcome::Deferred { .. } => self.deferred += 1,
            SendOutcome::Suppressed { .. } => self.suppressed += 1,
        }
    }
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    router: Arc<Router>,
    limiter: Limiter,
    recorder: Recorder,
    clock: Arc<dyn Clock>,
    config: DispatcherConfig,
    in_flight: Arc<Semaphore>,
    counters: Arc<Counters>,
    quiet_hours: QuietHours,
    /// Campaign runs whose messages must not be handed over (paused or cancelled).
    holds: Arc<CampaignHolds>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        router: Arc<Router>,
        recorder: Recorder,
        clock: Arc<dyn Clock>,
        config: DispatcherConfig,
        counters: Arc<Counters>,
        quiet_hours: QuietHours,
    ) -> Dispatcher {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let limiter = Limiter::new(store.clone(), clock.clone(), &config.rate_limits);
        Dispatcher {
            store,
            router,
            limiter,
            recorder,
            clock,
            config,
            in_flight,
            counters,
            quiet_hours,
            holds: Arc::default(),
        }
    }

    /// Share the engine's campaign holds, so a pause in this process stops this dispatcher.
    pub fn with_campaign_holds(mut self, holds: Arc<CampaignHolds>) -> Dispatcher {
        self.holds = holds;
        self
    }

    /// Claim one batch, send it, record the results. Tests step the queue with this.
    pub async fn dispatch_once(&self) -> Result<DispatchOutcome, StoreError> {
        let claimed = self.claim().await?;
        self.process(claimed, &CancellationToken::new()).await
    }

    async fn claim(&self) -> Result<Vec<Claimed>, StoreError> {
        let now = self.clock.now();
        let lease_until = now + SignedDuration::try_from(self.config.lease).unwrap_or_default();
        self.store
            .claim_due(now, lease_until, self.config.batch_size)
            .await
    }

    /// Send a claimed batch and record the results. After `shutdown`, messages not yet handed
    /// to a provider go back to the queue.
    async fn process(
        &self,
        claimed: Vec<Claimed>,
        shutdown: &CancellationToken,
    ) -> Result<DispatchOutcome, StoreError> {
        self.counters.claimed(claimed.len());
        let mut outcome = DispatchOutcome {
            claimed: claimed.len(),
            ..DispatchOutcome::default()
        };
        if claimed.is_empty() {
            return Ok(outcome);
        }
        // Recipients on their organization's suppression list are never handed to a provider.
        let (suppressed, claimed) = match self.opted_out(&claimed).await {
            Ok(opted_out) if opted_out.is_empty() => (Vec::new(), claimed),
            Ok(opted_out) => {
                let mut to_send = Vec::with_capacity(claimed.len());
                let mut suppressed = Vec::new();
                for message in claimed {
                    let source = opted_out
                        .get(&message.scope.org_id)
                        .and_then(|numbers| numbers.get(&message.to));
                    match source {
                        Some(source) => suppressed.push(SendResult {
                            id: message.id,
                            attempt: message.attempt,
                            provider: None,
                            outcome: SendOutcome::Suppressed {
                                code: OPTED_OUT.into(),
                                message: format!("the recipient opted out ({source})"),
                            },
                        }),
                        None => to_send.push(message),
                    }
                }
                (suppressed, to_send)
            }
            Err(error) => {
                // Unsure who opted out: send nothing, and try again soon.
                tracing::error!(%error, "cannot read the suppression list; returning the batch to the queue");
                let results: Vec<SendResult> = claimed
                    .iter()
                    .map(|m| SendResult {
                        id: m.id,
                        attempt: m.attempt,
                        provider: None,
                        outcome: SendOutcome::Unclaimed,
                    })
                    .collect();
                self.record(&results).await?;
                outcome.unclaimed = results.len();
                return Ok(outcome);
            }
        };
        let (held, canceled, claimed) = self.hold_for_campaigns(claimed).await;
        let (mut deferred, claimed) = self.defer_for_quiet_hours(claimed).await;
        deferred.extend(held);
        let mut results: Vec<SendResult> = futures::stream::iter(claimed)
            .map(|message| self.send_one(message, shutdown))
            .buffer_unordered(self.config.max_in_flight.max(1))
            .collect()
            .await;
        results.extend(suppressed);
        results.extend(deferred);
        for result in &results {
            outcome.count(&result.outcome);
        }
        self.record(&results).await?;
        for result in &results {
            self.counters.outcome(&result.outcome);
        }
        for run in canceled {
            // Held back after their campaign was cancelled: cancel them now they are queued.
            if let Err(error) = self.store.sweep_canceled_run(run, self.clock.now()).await {
                tracing::error!(%error, run_id = %run, "cannot cancel a cancelled campaign's messages");
            }
        }
        Ok(outcome)
    }

    /// Messages of campaigns that are not running (paused, cancelled) go back to the queue,
    /// held until the campaign resumes; the attempt does not count. Answers them, the runs of
    /// cancelled campaigns among them, and the rest. The states are read for every batch that
    /// holds campaign messages, so a pause in another process is seen here too.
    async fn hold_for_campaigns(
        &self,
        claimed: Vec<Claimed>,
    ) -> (Vec<SendResult>, Vec<Uuid>, Vec<Claimed>) {
        let mut runs: Vec<Uuid> = claimed.iter().filter_map(|m| m.campaign_run_id).collect();
        if runs.is_empty() {
            return (Vec::new(), Vec::new(), claimed);
        }
        runs.sort_unstable();
        runs.dedup();
        let (held, canceled): (HashSet<Uuid>, Vec<Uuid>) = match self.store.held_runs(&runs).await {
            Ok(states) => {
                let held: HashSet<Uuid> = states.iter().map(|(run, _)| *run).collect();
                for run in &runs {
                    if held.contains(run) {
                        self.holds.hold(*run);
                    } else {
                        self.holds.release(*run);
                    }
                }
                let canceled = states
                    .iter()
                    .filter(|(_, status)| *status == CampaignStatus::Cancelled)
                    .map(|(run, _)| *run)
                    .collect();
                (held, canceled)
            }
            Err(error) => {
                // Unsure whether they may go: hold them all until the next look.
                tracing::error!(%error, "cannot read campaign states; holding their messages");
                (runs.iter().copied().collect(), Vec::new())
            }
        };
        let mut results = Vec::new();
        let mut rest = Vec::with_capacity(claimed.len());
        for message in claimed {
            match message.campaign_run_id {
                Some(run) if held.contains(&run) => results.push(SendResult {
                    id: message.id,
                    attempt: message.attempt,
                    provider: None,
                    outcome: SendOutcome::Deferred {
                        until: held_until(),
                    },
                }),
                _ => rest.push(message),
            }
        }
        (results, canceled, rest)
    }

    /// Promotional messages whose recipient's quiet hours began while they waited (a retry, a
    /// backlog) go back to the queue until the window opens, without using an attempt. The
    /// number's country decides at once when the window is open in all of it; otherwise the
    /// contact's own time zone, when it has one, decides.
    async fn defer_for_quiet_hours(
        &self,
        claimed: Vec<Claimed>,
    ) -> (Vec<SendResult>, Vec<Claimed>) {
        use herald_domain::quiet_hours::Whereabouts;
        let now = self.clock.now();
        // First by country: the window opens for each message at `opens` (`None`: open now).
        let closed = |message: &Claimed| {
            self.quiet_hours
                .next_allowed(now, Whereabouts::of(None, message.country), message.country)
                .filter(|at| *at > now)
        };
        let mut by_org: HashMap<Uuid, Vec<&str>> = HashMap::new();
        let mut opens = Vec::with_capacity(claimed.len());
        for message in &claimed {
            let at = (message.kind == MessageType::Promotional)
                .then(|| closed(message))
                .flatten();
            if at.is_some() {
                by_org
                    .entry(message.scope.org_id)
                    .or_default()
                    .push(&message.to);
            }
            opens.push(at);
        }
        // Then, for those the country holds back, the contact's own zone, one read per
        // organization.
        let mut zones: HashMap<(Uuid, String), jiff::tz::TimeZone> = HashMap::new();
        for (org_id, phones) in by_org {
            match self.store.find_contacts_by_phone(org_id, &phones).await {
                Ok(found) => zones.extend(found.into_values().filter_map(|contact| {
                    crate::contact_zone(&contact).map(|zone| ((org_id, contact.phone), zone))
                })),
                // Unsure where they are: the country's window holds.
                Err(error) => tracing::error!(%error, "cannot read contacts' time zones"),
            }
        }
        let mut deferred = Vec::new();
        let mut to_send = Vec::with_capacity(claimed.len());
        for (message, mut at) in claimed.into_iter().zip(opens) {
            if at.is_some()
                && let Some(zone) = zones.get(&(message.scope.org_id, message.to.clone()))
            {
                at = self
                    .quiet_hours
                    .next_allowed(now, Whereabouts::Zone(zone), message.country)
                    .filter(|at| *at > now);
            }
            match at {
                Some(until) => deferred.push(SendResult {
                    id: message.id,
                    attempt: message.attempt,
                    provider: None,
                    outcome: SendOutcome::Deferred { until },
                }),
                None => to_send.push(message),
            }
        }
        (deferred, to_send)
    }

    /// Who among the claimed messages' recipients opted out, by organization and number, with
    /// what said so (usually no one).
    async fn opted_out(
        &self,
        claimed: &[Claimed],
    ) -> Result<HashMap<Uuid, HashMap<String, String>>, StoreError> {
        let mut by_org: HashMap<Uuid, Vec<String>> = HashMap::new();
        for message in claimed {
            by_org
                .entry(message.scope.org_id)
                .or_default()
                .push(message.to.clone());
        }
        let mut opted_out = HashMap::new();
        for (org_id, phones) in by_org {
            let numbers: HashMap<String, String> = self
                .store
                .opted_out_among(org_id, &phones)
                .await?
                .into_iter()
                .map(|entry| (entry.phone, entry.source))
                .collect();
            if !numbers.is_empty() {
                opted_out.insert(org_id, numbers);
            }
        }
        Ok(opted_out)
    }

    /// Record results through the recorder, which group-commits them with provider reports.
    /// If the database stays away, the leases expire and reconciliation settles the messages, so
    /// nothing is lost either way.
    async fn record(&self, results: &[SendResult]) -> Result<(), StoreError> {
        self.recorder.record_results(results.to_vec()).await
    }

    async fn send_one(&self, message: Claimed, shutdown: &CancellationToken) -> SendResult {
        let result = |provider: Option<&str>, outcome| SendResult {
            id: message.id,
            attempt: message.attempt,
            provider: provider.map(str::to_owned),
            outcome,
        };
        if shutdown.is_cancelled() {
            return result(None, SendOutcome::Unclaimed);
        }
        let chosen = match self.router.choose(&message, self.clock.now()).await {
            Ok(chosen) => chosen,
            Err(until) => {
                let outcome = self.transient(
                    &message,
                    "providers_resting".into(),
                    "no provider for this destination can take it now (circuit breakers open, or \
                     the organization's accounts disabled)"
                        .into(),
                    until,
                );
                return result(None, outcome);
            }
        };
        let name = chosen.provider.name().to_owned();
        // From here every way out tells the breaker, so a probe is never left hanging.
        let unclaimed = |chosen: &Chosen| {
            chosen.settle(CallHealth::NotCalled, self.clock.now());
            result(None, SendOutcome::Unclaimed)
        };
        // Stop waiting for the rate limit while a call could still end within the lease: a
        // message held back longer goes back to the queue rather than spend a token late.
        let patience = SignedDuration::try_from(self.config.send_timeout)
            .ok()
            .map(|timeout| message.lease_expires_at - timeout)
            .and_then(|latest| Duration::try_from(latest - self.clock.now()).ok())
            .unwrap_or_default();
        let limited = self.limiter.acquire(
            &name,
            chosen.limits.as_deref(),
            message.segments,
            message.sender.as_deref(),
            shutdown,
        );
        if !matches!(tokio::time::timeout(patience, limited).await, Ok(true)) {
            return unclaimed(&chosen);
        }
        let permit = tokio::select! {
            permit = self.in_flight.acquire() => permit,
            _ = shutdown.cancelled() => return unclaimed(&chosen),
        };
        let Ok(_permit) = permit else {
            return unclaimed(&chosen);
        };
        if shutdown.is_cancelled() {
            return unclaimed(&chosen);
        }
        // Never start a call that could outlive the lease: once the lease ends, reconciliation
        // must be able to trust that the call is over.
        let deadline = self.clock.now()
            + SignedDuration::try_from(self.config.send_timeout).unwrap_or_default();
        if deadline >= message.lease_expires_at {
            return unclaimed(&chosen);
        }
        // A pause acknowledged while this message waited: it must not go.
        if message
            .campaign_run_id
            .is_some_and(|run| self.holds.is_held(run))
        {
            chosen.settle(CallHealth::NotCalled, self.clock.now());
            return result(
                None,
                SendOutcome::Deferred {
                    until: held_until(),
                },
            );
        }
        let provider = &chosen.provider;

        let outbound = Outbound {
            message_id: message.id,
            to: message.to.clone(),
            from: message.sender.clone(),
            body: message.body.clone(),
            encoding: message.encoding,
            segments: message.segments,
            kind: message.kind,
            attempt: message.attempt,
        };
        let answer = tokio::time::timeout(self.config.send_timeout, provider.send(&outbound)).await;
        chosen.settle(CallHealth::of(&answer), self.clock.now());
        let outcome = match answer {
            Ok(Ok(accepted)) => SendOutcome::Accepted {
                provider_message_id: accepted.provider_message_id,
                cost: accepted.cost,
            },
            Ok(Err(SendError::Permanent { code, message })) => {
                SendOutcome::Failed { code, message }
            }
            Ok(Err(SendError::Unanswered { code, message })) => {
                SendOutcome::Unanswered { code, message }
            }
            Err(_elapsed) => SendOutcome::Unanswered {
                code: "timeout".into(),
                message: format!("no answer within {:?}", self.config.send_timeout),
            },
            Ok(Err(SendError::Transient {
                code,
                message: reason,
                retry_after,
            })) => {
                let delay = self.config.retry.delay(message.attempt, retry_after);
                let retry_at =
                    self.clock.now() + SignedDuration::try_from(delay).unwrap_or_default();
                self.transient(&message, code, reason, retry_at)
            }
        };
        // The provider refused because the recipient opted out at the provider (Twilio 21610,
        // SNS's own list): put the number on the suppression list, so nothing more is tried.
        let outcome = match outcome {
            SendOutcome::Failed {
                code,
                message: reason,
            } if refused_as_opted_out(&code) => {
                let source = format!("{}:{code}", provider.name());
                if let Err(error) = self
                    .store
                    .opt_out(
                        message.scope.org_id,
                        &message.to,
                        &source,
                        None,
                        self.clock.now(),
                    )
                    .await
                {
                    tracing::error!(%error, "cannot record a provider's opt-out");
                }
                SendOutcome::Suppressed {
                    code,
                    message: reason,
                }
            }
            other => other,
        };
        if !matches!(outcome, SendOutcome::Accepted { .. }) {
            tracing::debug!(message_id = %message.id, attempt = message.attempt, provider = provider.name(), ?outcome, "send not accepted");
        }
        result(Some(provider.name()), outcome)
    }

    /// A transient refusal: another attempt at `retry_at` (on the route's next provider), or
    /// failure once the attempts are used up.
    fn transient(
        &self,
        message: &Claimed,
        code: String,
        reason: String,
        retry_at: Timestamp,
    ) -> SendOutcome {
        if message.attempt >= message.max_attempts {
            SendOutcome::Failed {
                code,
                message: format!("{reason} (gave up after {} attempts)", message.attempt),
            }
        } else {
            SendOutcome::Retry {
                retry_at,
                code,
                message: reason,
            }
        }
    }

    /// Dispatch until `shutdown`: claim while there is work (up to `max_batches` batches in
    /// flight), sleep when there is none until `wake`, the next due time or the poll interval.
    /// On shutdown, stop claiming, let calls in flight finish, return unsent messages to the
    /// queue, record everything, and return.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, wake: Arc<Notify>) {
        let batches = Arc::new(Semaphore::new(self.config.max_batches.max(1)));
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                permit = batches.clone().acquire_owned() => permit.expect("never closed"),
                _ = shutdown.cancelled() => break,
            };
            if shutdown.is_cancelled() {
                break;
            }
            match self.claim().await {
                Ok(claimed) if !claimed.is_empty() => {
                    let this = self.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        let _permit = permit;
                        if let Err(error) = this.process(claimed, &shutdown).await {
                            tracing::error!(%error, "failed to record a batch; its leases will expire and be reconciled");
                        }
                    });
                }
                Ok(_) => {
                    drop(permit);
                    // Wake on new work from this process; poll for work queued by others and
                    // for retries falling due.
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(self.config.idle_poll) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
                Err(error) => {
                    drop(permit);
                    tracing::error!(%error, "failed to claim messages");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!("dispatcher stopped");
    }
}
