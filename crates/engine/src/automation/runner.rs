//! Running automation: taking drip steps when they come due, and sweeping contacts for the
//! `contact.created` and `contact.age` triggers.
//!
//! Every process runs [`run_periodically`]. No lease is needed: a step is taken by a
//! compare-and-set on the enrolment's step in the same transaction as its message, and a
//! firing is unique per trigger and key, so two processes working at once send each thing
//! once. A sweep records how far it got (`swept_until`) only when it finished, so a crash
//! mid-sweep means the next sweep looks again, and firings already made are not repeated.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use herald_domain::phone::PhoneNumber;
use herald_store::{
    Advance, Advanced, Drip, Enrollment, Fired, Next, Organization, StepTaken, StoreError, Trigger,
    TriggerKind,
};
use jiff::{SignedDuration, Timestamp};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::drips::DripSpec;
use super::triggers::{AGE_SLACK, TriggerSpec, fire, ready};
use super::{Ready, Recipient, Sender, check_content, compose_checked};
use crate::Engine;

/// How often each process looks for due steps and new contacts.
pub const TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// Enrolments read per batch, and batches per pass (the rest wait for the next pass).
const BATCH: u32 = 500;
const BATCHES: usize = 10;
/// Contacts read per page of a sweep, and pages per trigger per pass.
const PAGE: u32 = 200;
const PAGES: usize = 25;
/// A `contact.age` sweep re-reads the contacts of its window not due yet, so it reads its
/// whole window each time (up to this many pages).
const AGE_PAGES: usize = 500;
/// A sweep looks back this far before where the last one ended, for contacts committed late
/// (a long import's transaction) with an earlier creation time.
const OVERLAP: SignedDuration = SignedDuration::from_secs(5 * 60);
/// `contact.age` fires at a time of day: looking once a minute is enough.
const AGE_SWEEP_EVERY: SignedDuration = SignedDuration::from_secs(60);
/// How often a sweep records how far it got.
const SWEPT_WRITE_EVERY: SignedDuration = SignedDuration::from_secs(60);
/// When a step could not be sent (credits, a template since deactivated), it is tried again
/// after this.
const RETRY_AFTER: SignedDuration = SignedDuration::from_secs(10 * 60);

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Drip steps taken (sent or passed over).
    pub steps: u64,
    /// Enrolments that left their drip (opted out, replied, contact deleted).
    pub exited: u64,
    /// Enrolments that finished their drip.
    pub completed: u64,
    /// Trigger firings from the contact sweeps.
    pub fired: u64,
}

/// Take due steps and sweep contacts every [`TICK`] until `shutdown`.
pub async fn run_periodically(engine: Arc<Engine>, shutdown: CancellationToken) {
    loop {
        if let Err(error) = tick(&engine).await {
            tracing::error!(%error, "automation pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// One pass: due drip steps, then the contact triggers.
pub async fn tick(engine: &Arc<Engine>) -> Result<Pass, StoreError> {
    let mut pass = Pass::default();
    let mut cache = Cache::default();
    for _ in 0..BATCHES {
        let now = engine.clock.now();
        let due = engine.store.due_enrollments(now, BATCH).await?;
        let full = due.len() == BATCH as usize;
        take_steps(engine, &mut cache, due, now, &mut pass).await?;
        if !full {
            break;
        }
    }
    for kind in [TriggerKind::ContactCreated, TriggerKind::ContactAge] {
        for trigger in engine.store.active_triggers(kind).await? {
            pass.fired += sweep(engine, &mut cache, &trigger).await?;
        }
    }
    if pass.steps > 0 || pass.fired > 0 {
        engine.wake.notify_one();
    }
    Ok(pass)
}

/// What one pass reads once: organizations, drips and their steps ready to render.
#[derive(Default)]
struct Cache {
    orgs: HashMap<Uuid, Option<Organization>>,
    drips: HashMap<Uuid, Option<(Drip, DripSpec)>>,
    /// Each drip step's content, or why it cannot be sent now.
    steps: HashMap<(Uuid, u32), Result<Ready, String>>,
}

impl Cache {
    async fn org(&mut self, engine: &Engine, id: Uuid) -> Result<Option<Organization>, StoreError> {
        if let Some(org) = self.orgs.get(&id) {
            return Ok(org.clone());
        }
        let org = engine.store.get_organization(id).await?;
        self.orgs.insert(id, org.clone());
        Ok(org)
    }

    async fn drip(
        &mut self,
        engine: &Engine,
        e: &Enrollment,
    ) -> Result<Option<(Drip, DripSpec)>, StoreError> {
        if let Some(drip) = self.drips.get(&e.drip_id) {
            return Ok(drip.clone());
        }
        let found = super::drips::drip_of(engine, e).await?;
        self.drips.insert(e.drip_id, found.clone());
        Ok(found)
    }

    async fn step(
        &mut self,
        engine: &Engine,
        org: &Organization,
        drip: &Drip,
        spec: &DripSpec,
        index: u32,
    ) -> Result<Result<Ready, String>, StoreError> {
        let key = (drip.id, index);
        if let Some(ready) = self.steps.get(&key) {
            return Ok(ready.clone());
        }
        let step = &spec.steps[index as usize];
        let ready = check_content(engine, drip_sender(org, drip, spec), step.content(), "")
            .await?
            .map_err(|errors| {
                let code = errors.first().map_or("invalid", |e| e.code);
                format!("step_unavailable: {code}")
            });
        self.steps.insert(key, ready.clone());
        Ok(ready)
    }
}

fn drip_sender<'a>(org: &'a Organization, drip: &Drip, spec: &'a DripSpec) -> Sender<'a> {
    Sender {
        org,
        scope: drip.scope(),
        api_key_id: drip.api_key_id,
        kind: spec.message_type,
        from: spec.from.as_ref(),
    }
}

/// Take the due steps of `due` (or let the enrolments leave), all stored in one transaction.
async fn take_steps(
    engine: &Engine,
    cache: &mut Cache,
    due: Vec<Enrollment>,
    now: Timestamp,
    pass: &mut Pass,
) -> Result<(), StoreError> {
    let store = engine.store.as_ref();
    let mut by_org: BTreeMap<Uuid, Vec<Enrollment>> = BTreeMap::new();
    for e in due {
        by_org.entry(e.org_id).or_default().push(e);
    }
    let mut planned = Vec::new();
    for (org_id, group) in by_org {
        let Some(org) = cache.org(engine, org_id).await? else {
            continue;
        };
        let recipients = recipients(engine, &org, &group).await?;
        let phones: Vec<String> = recipients
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|r| r.phone.clone()))
            .collect();
        let opted_out = crate::contacts::opted_out(store, org_id, &phones).await?;
        let replies = store.last_replies(org_id, &phones).await?;
        for (e, to) in group.into_iter().zip(recipients) {
            let Some((drip, spec)) = cache.drip(engine, &e).await? else {
                continue;
            };
            let exit = |reason: &str| (None, Next::Exited(reason.to_owned()));
            let replied = |to: &Recipient| {
                spec.exit_on_reply && replies.get(&to.phone).is_some_and(|at| *at > e.enrolled_at)
            };
            let (taken, next) = match to {
                Err(reason) => exit(reason),
                Ok(to) if opted_out.contains(&to.phone) => exit("opted_out"),
                Ok(to) if replied(&to) => exit("replied"),
                Ok(_) if e.step as usize >= spec.steps.len() => (None, Next::Completed),
                Ok(to) => match cache.step(engine, &org, &drip, &spec, e.step).await? {
                    Err(error) => (
                        None,
                        Next::Retry {
                            at: now + RETRY_AFTER,
                            error,
                        },
                    ),
                    Ok(ready) => {
                        let sender = drip_sender(&org, &drip, &spec);
                        // Opt-outs were read for the whole batch above.
                        let taken = match compose_checked(engine, sender, &ready, None, &to).await?
                        {
                            Ok(message) => StepTaken::Sent(Box::new(message)),
                            Err(skip) => StepTaken::Skipped(skip),
                        };
                        let next = match spec.due(e.step as usize + 1, now, &to) {
                            Some(at) => Next::Step {
                                step: e.step + 1,
                                at,
                            },
                            None => Next::Completed,
                        };
                        (Some(taken), next)
                    }
                },
            };
            planned.push(Advance {
                enrollment: e,
                taken,
                next,
            });
        }
    }
    if planned.is_empty() {
        return Ok(());
    }
    let outcomes = store.advance_enrollments(&planned, now).await?;
    if !outcomes.iter().any(|o| matches!(o, Advanced::Refused(_))) {
        for (a, outcome) in planned.iter().zip(outcomes) {
            count(pass, a, &outcome);
        }
        return Ok(());
    }
    // The credits do not cover the whole batch: one by one, so those they cover go out and
    // the rest wait.
    for a in planned {
        let e = &a.enrollment;
        match store
            .advance_enrollment(e, a.taken.clone(), a.next.clone(), now)
            .await?
        {
            Advanced::Refused(refusal) => {
                let retry = Next::Retry {
                    at: now + RETRY_AFTER,
                    error: crate::broadcasts::refusal_code(&refusal),
                };
                store.advance_enrollment(e, None, retry, now).await?;
            }
            outcome => count(pass, &a, &outcome),
        }
    }
    Ok(())
}

fn count(pass: &mut Pass, a: &Advance, outcome: &Advanced) {
    if *outcome != Advanced::Done {
        return;
    }
    pass.steps += u64::from(a.taken.is_some());
    match a.next {
        Next::Completed => pass.completed += 1,
        Next::Exited(_) => pass.exited += 1,
        Next::Step { .. } | Next::Retry { .. } => {}
    }
}

/// Whom each enrolment's next step goes to, or why it leaves: its contact (deleted since:
/// `contact_deleted`), or its number with the contact that now has it.
async fn recipients(
    engine: &Engine,
    org: &Organization,
    group: &[Enrollment],
) -> Result<Vec<Result<Recipient, &'static str>>, StoreError> {
    let store = engine.store.as_ref();
    let ids: Vec<Uuid> = group.iter().filter_map(|e| e.contact_id).collect();
    let contacts = crate::contacts::by_id(store, org.id, &ids).await?;
    let bare: Vec<&str> = group
        .iter()
        .filter(|e| e.contact_id.is_none())
        .map(|e| e.phone.as_str())
        .collect();
    let by_phone = if bare.is_empty() {
        HashMap::new()
    } else {
        store.find_contacts_by_phone(org.id, &bare).await?
    };
    Ok(group
        .iter()
        .map(|e| match e.contact_id {
            Some(id) => contacts
                .get(&id)
                .cloned()
                .map(Recipient::of)
                .ok_or("contact_deleted"),
            None => match by_phone.get(&e.phone) {
                Some(contact) => Ok(Recipient::of(contact.clone())),
                None => PhoneNumber::parse(&e.phone, Some(org.default_region))
                    .map(|number| Recipient {
                        phone: e.phone.clone(),
                        country: number.region(),
                        contact: None,
                    })
                    .map_err(|_| "invalid_phone"),
            },
        })
        .collect())
}

/// Sweep one contact trigger: fire it for every contact whose moment came since the last
/// sweep. Answers how many firings it made.
async fn sweep(engine: &Engine, cache: &mut Cache, trigger: &Trigger) -> Result<u64, StoreError> {
    let now = engine.clock.now();
    let age = trigger.kind == TriggerKind::ContactAge;
    if age && now.duration_since(trigger.swept_until) < AGE_SWEEP_EVERY {
        return Ok(0);
    }
    let spec = TriggerSpec::of(trigger)?;
    let rule = spec.rule();
    // Due times in [lower, now] are fired; never one before the trigger existed.
    let lower = (trigger.swept_until - OVERLAP).max(trigger.created_at);
    let (from, to) = if age {
        let days = SignedDuration::from_hours(24 * i64::from(spec.days.unwrap_or(0)));
        (lower - days - AGE_SLACK, now - days + AGE_SLACK)
    } else {
        (lower, now + SignedDuration::from_micros(1))
    };
    // What it sends is read and checked only once there is someone to send it to.
    let mut ready_to_fire = None;
    let mut fired = 0;
    let mut after = None;
    for _ in 0..if age { AGE_PAGES } else { PAGES } {
        let contacts = engine
            .store
            .trigger_candidates(trigger, rule.as_ref(), from, to, after, now, PAGE)
            .await?;
        let last_page = contacts.len() < PAGE as usize;
        for contact in contacts {
            after = Some((contact.created_at, contact.id));
            if age && !age_due(&spec, &contact, lower, now) {
                continue;
            }
            if ready_to_fire.is_none() {
                let Some(org) = cache.org(engine, trigger.org_id).await? else {
                    return Ok(fired);
                };
                let Some(checked) = ready(engine, &org, trigger).await? else {
                    // What it sends is gone; contacts meanwhile are not caught up on later.
                    engine.store.set_swept(trigger.id, now).await?;
                    return Ok(fired);
                };
                ready_to_fire = Some((org, checked));
            }
            let Some((org, checked)) = &ready_to_fire else {
                continue;
            };
            // Candidates have no firing yet: fire without looking again.
            let key = contact.id.to_string();
            let to = Recipient::of(contact);
            if let Fired::New(_) = fire(engine, org, trigger, checked, &to, &key, None).await? {
                fired += 1;
            }
        }
        if last_page {
            // Written at most once a minute: the next sweep's window starts [`OVERLAP`]
            // before it anyway, and firings already made are not repeated.
            if now.duration_since(trigger.swept_until) >= SWEPT_WRITE_EVERY {
                engine.store.set_swept(trigger.id, now).await?;
            }
            return Ok(fired);
        }
    }
    // More than a pass's worth: the next pass goes on (firings made are not repeated).
    Ok(fired)
}

/// Whether a `contact.age` trigger's moment for `contact` is in `[lower, now]`.
fn age_due(
    spec: &TriggerSpec,
    contact: &herald_store::Contact,
    lower: Timestamp,
    now: Timestamp,
) -> bool {
    let zone = Recipient::of(contact.clone()).zone(&spec.zone());
    let due = spec.age_due(contact.created_at, &zone);
    lower <= due && due <= now
}
