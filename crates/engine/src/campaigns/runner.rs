//! Running campaigns: starting runs when their time comes, writing each run's audience
//! snapshot, and releasing it to the queue under the campaign's throttle.
//!
//! Every process runs [`run_periodically`]. A run is worked on by the one process holding its
//! lease ([`LEASE`], renewed with every write); a process that dies leaves a lease that runs
//! out, and the next process to look takes the run over from what was stored. Every write is
//! refused unless the campaign is still running and the lease still held, so a pause, a cancel
//! or a take-over never lets a recipient be released twice.
//!
//! The throttle is counted in the database: a release stores at most `batch_size` messages,
//! never more than `send_rate_per_minute` in any sliding minute (messages of the run created in
//! the last minute are counted before each release), and the next release waits in proportion
//! to the batch, so sending is spread across the minute rather than bunched at its start.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_domain::message::MessageType;
use herald_store::{
    Campaign, CampaignRun, CampaignStatus, Contact, Lease, NewRecipient, Organization,
    RecipientState, ReleaseOutcome, RunEnd, RunPhase, Scope, StoreError, Transition,
};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::report::Bucket;
use super::{CampaignSpec, Checked, WinnerMetric, assign_variant, check, new_run, next_occurrence};
use crate::Engine;
use crate::broadcasts::{Position, next_targets, normalise};

/// How long a process's hold on a run lasts; renewed with every write.
pub const LEASE: SignedDuration = SignedDuration::from_secs(30);
/// Recipients held for an A/B test's winner, read and assigned per transaction.
const HELD_PAGE: u32 = 1_000;
/// How often each process looks for work when nothing wakes it.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Runs started (scheduled campaigns whose time came).
    pub started: usize,
    /// Recipients written to snapshots.
    pub snapshotted: u64,
    /// Recipients released to the queue.
    pub released: u64,
    /// Runs finished.
    pub finished: usize,
}

/// Look for work every [`TICK`] (or when woken) until `shutdown`.
pub async fn run_periodically(engine: Arc<Engine>, shutdown: CancellationToken) {
    loop {
        match tick(&engine).await {
            Ok(pass) if pass.released > 0 => engine.wake.notify_one(),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "campaign pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = engine.campaign_wake.notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One pass: start due runs, then work on every run this process holds or can take.
pub async fn tick(engine: &Arc<Engine>) -> Result<Pass, StoreError> {
    let mut pass = Pass::default();
    let now = engine.clock.now();
    for campaign in engine.store.due_campaigns(now, 16).await? {
        if start_due(engine, &campaign, now).await? {
            pass.started += 1;
        }
    }
    let lease = Lease {
        owner: engine.campaign_owner,
        until: now + LEASE,
    };
    for run in engine.store.take_runs(lease, now, 16).await? {
        let id = run.id;
        if let Err(error) = work(engine, run, &mut pass).await {
            tracing::error!(%error, run_id = %id, "a campaign run stopped on a store error; it will be taken up again");
        }
    }
    Ok(pass)
}

/// Start the run of a scheduled campaign whose time came.
async fn start_due(
    engine: &Arc<Engine>,
    campaign: &Campaign,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let Some(starts) = campaign.next_run_at else {
        return Ok(false);
    };
    let spec = CampaignSpec::from_campaign(campaign)?;
    let occurrence = spec
        .schedule
        .as_ref()
        .and_then(|s| s.occurrence_starting(starts))
        .map_or(starts, |o| o.at);
    let run = Box::new(new_run(engine, campaign, occurrence, now));
    let started = engine
        .store
        .transition_campaign(
            campaign.scope(),
            campaign.id,
            &Transition::Start { run },
            now,
        )
        .await?;
    Ok(started.is_ok())
}

/// Work on a run this process holds: write its snapshot, or release what is due, or finish it.
async fn work(
    engine: &Arc<Engine>,
    mut run: CampaignRun,
    pass: &mut Pass,
) -> Result<(), StoreError> {
    let scope = run.scope();
    let Some(campaign) = engine.store.get_campaign(scope, run.campaign_id).await? else {
        return Ok(());
    };
    if campaign.status != CampaignStatus::Running {
        return Ok(());
    }
    let Some(org) = engine.store.get_organization(run.org_id).await? else {
        return Ok(());
    };
    let worker = Worker {
        engine: engine.clone(),
        org,
        scope,
        spec: CampaignSpec::from_campaign(&campaign)?,
        campaign,
    };
    if run.phase == RunPhase::Snapshot {
        match worker.snapshot(&mut run).await? {
            Some(added) => pass.snapshotted += added,
            None => return Ok(()),
        }
    }
    if run.phase == RunPhase::Send && !worker.decide(&run).await? {
        return Ok(());
    }
    if run.phase == RunPhase::Send {
        let (released, finished) = worker.release(&mut run).await?;
        pass.released += released;
        pass.finished += usize::from(finished);
    }
    Ok(())
}

struct Worker {
    engine: Arc<Engine>,
    org: Organization,
    scope: Scope,
    campaign: Campaign,
    spec: CampaignSpec,
}

impl Worker {
    /// Write the rest of the snapshot, batch by batch; each batch is stored with the position
    /// after it, so a process taking over goes on from there. Answers how many recipients were
    /// added, or `None` once the run is no longer this process's (or it paused because what
    /// the audience or content names went away).
    async fn snapshot(&self, run: &mut CampaignRun) -> Result<Option<u64>, StoreError> {
        let engine = &self.engine;
        let store = engine.store.clone();
        // Resolving reads the templates, lists and segments the campaign names: check they
        // still stand (a template deleted or deactivated) and pause with the reason rather
        // than send something else.
        let checked = match check(
            engine,
            &self.org,
            self.scope,
            self.campaign.api_key_id,
            self.spec.clone(),
            false,
        )
        .await?
        {
            Ok(checked) => checked,
            Err(errors) => {
                let reason = errors
                    .first()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .unwrap_or_default();
                store
                    .pause_for(run, &format!("invalid: {reason}"), engine.clock.now())
                    .await?;
                return Ok(None);
            }
        };
        let entries = checked.spec.audience.entries();
        let excluded = excluded_numbers(engine, &self.org, &checked, engine.clock.now()).await?;
        let mut at: Position = run
            .position
            .clone()
            .and_then(|p| serde_json::from_value(p).ok())
            .unwrap_or_default();
        let mut added = 0;
        loop {
            let next = next_targets(
                store.as_ref(),
                self.org.id,
                &checked.audience,
                &entries,
                at,
                run.created_at,
            )
            .await?;
            let (recipients, next_at) = match next {
                Some((targets, next)) => {
                    let recipients = resolve_targets(
                        engine,
                        &self.org,
                        &self.campaign.id,
                        &checked,
                        run.occurrence,
                        targets,
                        &excluded,
                        &mut HashSet::new(),
                        &mut Tally::default(),
                    )
                    .await?;
                    (recipients, next)
                }
                None => (Vec::new(), at),
            };
            let done = next_at.entry >= entries.len();
            run.position = Some(serde_json::to_value(next_at).expect("a position serializes"));
            if done {
                run.phase = RunPhase::Send;
            }
            if let Some(lease) = &mut run.lease {
                lease.until = engine.clock.now() + LEASE;
            }
            match store.store_snapshot_batch(run, &recipients).await? {
                Some(n) => {
                    added += n;
                    run.audience += n;
                }
                None => return Ok(None),
            }
            if done {
                tracing::info!(run_id = %run.id, audience = run.audience, "campaign audience snapshotted");
                return Ok(Some(added));
            }
            at = next_at;
        }
    }

    /// With an A/B test whose wait is over, choose the winner and give it to everyone held for
    /// it. Answers whether the run may go on (`false` once it is no longer this process's).
    async fn decide(&self, run: &CampaignRun) -> Result<bool, StoreError> {
        let Some(test) = &self.spec.ab_test else {
            return Ok(true);
        };
        let engine = &self.engine;
        let store = engine.store.clone();
        let now = engine.clock.now();
        let Some(wait) = test.wait() else {
            return Ok(true);
        };
        if now < run.occurrence + wait {
            return Ok(true);
        }
        let mut held = store.held_recipients(run.id, None, HELD_PAGE).await?;
        if held.is_empty() {
            return Ok(true);
        }
        // A process taking over part-way goes on with the winner already chosen: every held
        // recipient gets the same variant, however the counts moved since.
        let winner = match run.ab_winner {
            Some((variant, _)) => variant,
            None => {
                let analytics =
                    super::report::analytics(engine, &self.campaign, Bucket::Hour).await?;
                winner(&analytics.variants, test.metric)
            }
        };
        let variants = self.spec.effective_variants();
        let Some(variant) = variants.get(usize::from(winner)) else {
            return Ok(true);
        };
        let template = match variant.template_id {
            None => None,
            Some(id) => {
                match crate::templates::sendable(store.as_ref(), self.org.id, id, "template_id")
                    .await?
                {
                    Ok((template, _)) => Some(template),
                    Err(error) => {
                        // Gone since the test began: pause rather than send something else.
                        store
                            .pause_for(run, &format!("ab_winner_{}", error.code), now)
                            .await?;
                        return Ok(false);
                    }
                }
            }
        };
        tracing::info!(run_id = %run.id, winner = %variant.name, "A/B test decided");
        while !held.is_empty() {
            let ids: Vec<Uuid> = held.iter().filter_map(|r| r.contact_id).collect();
            let contacts = crate::contacts::by_id(store.as_ref(), self.org.id, &ids).await?;
            let assigned: Vec<(u64, Option<String>)> = held
                .iter()
                .map(|r| {
                    let contact = r.contact_id.and_then(|id| contacts.get(&id));
                    let body = crate::templates::personalise(
                        template.as_ref(),
                        variant.body.as_ref(),
                        contact,
                        &self.spec.variables,
                    );
                    (r.seq, body)
                })
                .collect();
            let last = held.last().map(|r| r.seq);
            if store.assign_held(run, winner, &assigned, now).await? != ReleaseOutcome::Stored {
                return Ok(false);
            }
            held = store.held_recipients(run.id, last, HELD_PAGE).await?;
        }
        Ok(true)
    }

    /// Release what is due, within the throttle; finish the run when everything is settled.
    /// Bodies were rendered by the snapshot, so releasing reads nothing the campaign names.
    /// Answers how many were released and whether the run finished.
    async fn release(&self, run: &mut CampaignRun) -> Result<(u64, bool), StoreError> {
        let engine = &self.engine;
        let store = engine.store.clone();
        let spec = &self.spec;
        let now = engine.clock.now();
        if run.next_release_at.is_some_and(|at| at > now) {
            return Ok((0, false));
        }
        let mut budget = u64::from(spec.batch_size());
        if let Some(rate) = spec.throttle.send_rate_per_minute {
            let recent = store
                .released_since(run.id, now - SignedDuration::from_mins(1))
                .await?;
            budget = budget.min(u64::from(rate).saturating_sub(recent));
            if budget == 0 {
                return Ok((0, false));
            }
        }
        let due = store
            .due_recipients(run.id, now, u32::try_from(budget).unwrap_or(u32::MAX))
            .await?;
        if due.is_empty() {
            return self.finish_if_settled(run).await.map(|done| (0, done));
        }
        let kind = spec.message_type();
        // Quiet hours need promotional recipients' own zones.
        let contacts: HashMap<Uuid, Contact> = if kind == MessageType::Promotional {
            let ids: Vec<Uuid> = due.iter().filter_map(|r| r.contact_id).collect();
            crate::contacts::by_id(store.as_ref(), self.org.id, &ids).await?
        } else {
            HashMap::new()
        };
        let priority = kind.default_priority() + spec.priority.offset();
        let max_attempts = spec
            .max_retries
            .map(|n| n + 1)
            .unwrap_or(engine.config.intake.max_attempts);
        let mut messages = Vec::with_capacity(due.len());
        let mut unsendable = Vec::new();
        for recipient in &due {
            let send = spec.send_request(&recipient.phone, recipient.country, &recipient.body);
            match engine.prepare(&self.org, self.scope, self.campaign.api_key_id, &send) {
                Ok(mut message) => {
                    message.campaign_run_id = Some(run.id);
                    message.priority = priority;
                    message.max_attempts = max_attempts;
                    let contact = recipient.contact_id.and_then(|id| contacts.get(&id));
                    crate::hold_for_quiet_hours(
                        &engine.config.intake.quiet_hours,
                        contact,
                        &mut message,
                    );
                    messages.push((recipient.seq, message));
                }
                Err(errors) => {
                    let reason = errors
                        .first()
                        .map(|e| e.code.to_owned())
                        .unwrap_or_else(|| "invalid".into());
                    unsendable.push((recipient.seq, reason));
                }
            }
        }
        if !unsendable.is_empty()
            && store.suppress_recipients(run, &unsendable).await? == ReleaseOutcome::Lost
        {
            return Ok((0, false));
        }
        let count = messages.len() as u64;
        run.next_release_at = spec.throttle.send_rate_per_minute.map(|rate| {
            // Spread the minute's sends: the next release waits as long as this batch is worth.
            let per_message = 60_000_000 / i64::from(rate.max(1));
            now + SignedDuration::from_micros(per_message.saturating_mul(count as i64))
        });
        if let Some(lease) = &mut run.lease {
            lease.until = now + LEASE;
        }
        match store.release_recipients(run, &messages).await? {
            ReleaseOutcome::Stored => Ok((count, false)),
            ReleaseOutcome::Lost => Ok((0, false)),
            ReleaseOutcome::Refused(refusal) => {
                let code = crate::broadcasts::refusal_code(&refusal);
                tracing::warn!(run_id = %run.id, code, "campaign paused: its messages are refused");
                store.pause_for(run, &code, now).await?;
                Ok((0, false))
            }
        }
    }

    /// Finish the run if nothing of it is pending any more (the store checks, in the
    /// transaction that finishes it): the campaign completes, or waits for its next occurrence.
    async fn finish_if_settled(&self, run: &CampaignRun) -> Result<bool, StoreError> {
        let end = match next_occurrence(&self.spec, run.occurrence) {
            Some(next) => RunEnd::Next(next.starts),
            None => RunEnd::Completed,
        };
        let finished = self
            .engine
            .store
            .finish_run(run, end, self.engine.clock.now())
            .await?;
        if finished {
            tracing::info!(run_id = %run.id, campaign_id = %run.campaign_id, ?end, "campaign run finished");
        }
        Ok(finished)
    }
}

/// The numbers of everyone in the campaign's excluded lists and segments (segments as of
/// `as_of`).
pub(crate) async fn excluded_numbers(
    engine: &Engine,
    org: &Organization,
    checked: &Checked,
    as_of: Timestamp,
) -> Result<HashSet<String>, StoreError> {
    let store = engine.store.as_ref();
    let entries = checked.spec.audience.exclusions();
    let mut excluded = HashSet::new();
    let mut at = Position::default();
    while let Some((targets, next)) =
        next_targets(store, org.id, &checked.exclusions, &entries, at, as_of).await?
    {
        let (valid, _) = normalise(store, org, targets).await?;
        excluded.extend(valid.into_iter().map(|(phone, ..)| phone));
        at = next;
    }
    Ok(excluded)
}

/// Targets that never became recipients, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub invalid: u64,
    pub duplicates: u64,
    pub excluded: u64,
}

/// Resolve a batch of targets into recipients of a run for the occurrence at `occurrence`.
/// Numbers already in `seen` are duplicates; those resolved are added to it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn resolve_targets(
    engine: &Engine,
    org: &Organization,
    campaign_id: &Uuid,
    checked: &Checked,
    occurrence: Timestamp,
    targets: Vec<crate::broadcasts::Target>,
    excluded: &HashSet<String>,
    seen: &mut HashSet<String>,
    tally: &mut Tally,
) -> Result<Vec<NewRecipient>, StoreError> {
    let store = engine.store.as_ref();
    let (valid, invalid) = normalise(store, org, targets).await?;
    tally.invalid += invalid;
    let mut kept = Vec::with_capacity(valid.len());
    for entry in valid {
        if excluded.contains(&entry.0) {
            tally.excluded += 1;
        } else if !seen.insert(entry.0.clone()) {
            tally.duplicates += 1;
        } else {
            kept.push(entry);
        }
    }
    let valid = kept;
    let phones: Vec<String> = valid.iter().map(|(p, ..)| p.clone()).collect();
    let opted_out = crate::contacts::opted_out(store, org.id, &phones).await?;
    let spec = &checked.spec;
    let promotional = spec.message_type() == MessageType::Promotional;
    let weights: Vec<u32> = checked.variants.iter().map(|v| v.weight).collect();
    let schedule = spec.schedule.as_ref();
    let local = schedule.filter(|s| s.recipient_time_zone);
    let fallback_zone = schedule.and_then(|s| s.zone()).unwrap_or(TimeZone::UTC);
    let civil = local.map(|_| occurrence.to_zoned(fallback_zone.clone()).datetime());
    let now = engine.clock.now();
    let allowed = engine.allowed_countries(org).await?;
    let mut resolved = Vec::with_capacity(valid.len());
    for (phone, contact, number) in valid {
        let variant = assign_variant(*campaign_id, &phone, &weights);
        let due_at = match civil {
            Some(civil) => {
                let zone = crate::own_zone(contact.as_ref(), number.region())
                    .unwrap_or_else(|| fallback_zone.clone());
                civil
                    .to_zoned(zone)
                    .map(|z| z.timestamp())
                    .unwrap_or(occurrence)
                    .max(now)
            }
            None => occurrence.max(now),
        };
        let suppressed = if opted_out.contains(&phone) {
            Some("opted_out")
        } else if promotional && !contact.as_ref().is_some_and(|c| c.consent) {
            Some("no_consent")
        } else if !number.region().is_some_and(|r| allowed.contains(&r)) {
            Some("not_permitted")
        } else {
            None
        };
        let body = match suppressed {
            Some(_) => None,
            None => {
                let v = &checked.variants[usize::from(variant)];
                crate::templates::personalise(
                    v.template.as_ref(),
                    v.body.as_ref(),
                    contact.as_ref(),
                    &spec.variables,
                )
            }
        };
        let reason = match (suppressed, &body) {
            (Some(reason), _) => Some(reason),
            (None, None) => Some("missing_variables"),
            (None, Some(_)) => None,
        };
        // Outside an A/B test's fraction: held for the winner, whose body it then gets.
        let due_at = match &spec.ab_test {
            Some(test) if reason.is_none() && !test.in_test(*campaign_id, &phone) => {
                herald_store::held_until()
            }
            _ => due_at,
        };
        resolved.push(NewRecipient {
            phone,
            contact_id: contact.as_ref().map(|c| c.id),
            country: number.region(),
            variant,
            body,
            due_at,
            state: if reason.is_some() {
                RecipientState::Suppressed
            } else {
                RecipientState::Pending
            },
            reason: reason.map(str::to_owned),
        });
    }
    Ok(resolved)
}

/// The index of the variant that did best by `metric`; ties go to fewer opt-outs, then to the
/// first variant.
pub(crate) fn winner(variants: &[super::report::VariantStats], metric: WinnerMetric) -> u16 {
    let share = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let mut best: Option<(usize, f64, f64)> = None;
    for (i, v) in variants.iter().enumerate() {
        let score = match metric {
            WinnerMetric::Replies => share(v.replies, v.sent),
            WinnerMetric::DeliveryRate => share(v.delivered, v.sent),
        };
        let opt_outs = share(v.opt_outs, v.sent);
        let better = match best {
            None => true,
            Some((_, s, o)) => score > s || (score == s && opt_outs < o),
        };
        if better {
            best = Some((i, score, opt_outs));
        }
    }
    best.map_or(0, |(i, ..)| i as u16)
}
