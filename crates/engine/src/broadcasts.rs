//! Broadcasts: one body or template sent to a mixed set of recipients (phone numbers, contacts,
//! lists, segments, lead statuses).
//!
//! The request is validated whole before anything is stored. Recipients are then resolved in
//! batches of [`BATCH`]: numbers normalised to E.164, de-duplicated (within the broadcast, by the
//! database, so memory stays bounded for any audience), and dropped when invalid, opted out,
//! without consent (promotional only) or in a country the organization may not send to; the
//! rest are personalised, held for quiet hours and queued with the counts that include them.
//!
//! `requested` is the number of individual recipients resolved: one per phone or contact entry,
//! one per member of a list, segment or lead status. Each is counted in exactly one outcome, so
//! `requested = queued + duplicates + invalid + opted_out + no_consent + not_permitted +
//! not_sent` holds after every batch.
//!
//! A small audience (only phone and contact entries, at most [`BATCH`]) is resolved before the
//! answer and stored in one transaction with its messages: credits that do not cover it refuse
//! the whole broadcast and nothing is stored. Anything else is resolved in a background task;
//! each batch reserves its credits all or nothing, and the first refused batch stops the
//! broadcast: batches already queued stay queued, the refused batch's recipients are counted
//! `not_sent`, recipients never resolved are not counted at all, and the status becomes
//! `partially_queued` (or `failed` when nothing was queued) with the refusal as its error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_domain::message::MessageType;
use herald_domain::phone::PhoneNumber;
use herald_domain::template::Template;
use herald_store::segment::{Limits, Rule, parse_rule};
use herald_store::{
    Broadcast, BroadcastCounts, BroadcastCreation, BroadcastStatus, Contact, ContactFilter,
    CreditRefusal, IdempotencyRecord, NewMessage, Organization, Scope, StoreError,
};
use jiff::Timestamp;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::Engine;
use crate::accounts::FieldError;
use crate::intake::SendRequest;

/// Recipients resolved and queued per batch.
pub const BATCH: usize = 1_000;
/// Most entries one request may list (a list or segment entry counts one).
pub const MAX_ENTRIES: usize = 10_000;

/// One entry of a broadcast's recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A number in any format the API accepts; an invalid one is counted, not refused.
    Phone(String),
    Contact(Uuid),
    List(Uuid),
    Segment(Uuid),
    /// Every contact in this lead status.
    LeadStatus(String),
}

/// A broadcast request, its shape already checked by the caller.
#[derive(Clone, Debug, Default)]
pub struct BroadcastRequest {
    pub recipients: Vec<Recipient>,
    pub body: Option<String>,
    pub template_id: Option<Uuid>,
    pub variables: Map<String, Value>,
    pub kind: MessageType,
    pub from: Option<String>,
    pub send_at: Option<Timestamp>,
}

/// How a broadcast started.
#[derive(Debug)]
pub enum Started {
    /// Resolved and stored before answering: the broadcast is final.
    Done(Broadcast),
    /// Stored as `resolving`; a background task resolves and queues it.
    Background(Broadcast),
    /// The idempotency key was used before with the same request: the broadcast created then.
    Replayed(Uuid),
    /// The idempotency key was used before with a different request; nothing was stored.
    KeyReused,
}

/// Why a broadcast was not started; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// Credits or the spend limit do not cover the (small) broadcast.
    #[error("refused: {0}")]
    Refused(CreditRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn field(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        code,
        message: message.into(),
    }
}

/// What a valid request resolves with: the parsed template and the segments' rules.
struct Plan {
    template: Option<Template>,
    rules: HashMap<Uuid, Rule>,
    /// Contacts named by id, read while validating.
    contacts: HashMap<Uuid, Contact>,
}

/// Validate, then resolve now (small) or start resolving in the background. The idempotency
/// record's response is not used for a replay: the caller shows the broadcast as it now is.
pub async fn start(
    engine: &Arc<Engine>,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    request: BroadcastRequest,
    request_json: Value,
    idempotency: Option<IdempotencyRecord>,
) -> Result<Started, BroadcastError> {
    let plan = validate(engine, org, scope, api_key_id, &request).await?;
    let now = engine.clock.now();
    let small = request.recipients.len() <= BATCH
        && request
            .recipients
            .iter()
            .all(|r| matches!(r, Recipient::Phone(_) | Recipient::Contact(_)));
    let mut broadcast = Broadcast {
        id: Uuid::now_v7(),
        org_id: org.id,
        mode: scope.mode,
        status: BroadcastStatus::Resolving,
        request: request_json,
        counts: BroadcastCounts::default(),
        error: None,
        created_at: now,
        finished_at: None,
    };
    let mut resolver = Resolver {
        engine: engine.clone(),
        org: org.clone(),
        scope,
        api_key_id,
        request,
        plan,
        broadcast_id: broadcast.id,
        seen: small.then(HashSet::new),
        counts: BroadcastCounts::default(),
        saved: BroadcastCounts::default(),
    };
    if small {
        let targets = resolver.direct_targets(0..resolver.request.recipients.len());
        let messages = resolver.process(targets).await?;
        broadcast.counts = resolver.counts;
        broadcast.status = BroadcastStatus::Queued;
        broadcast.finished_at = Some(now);
        return match engine
            .store
            .create_broadcast(&broadcast, &messages, idempotency.as_ref(), now)
            .await?
        {
            BroadcastCreation::Created => {
                if !messages.is_empty() {
                    engine.wake.notify_one();
                }
                Ok(Started::Done(broadcast))
            }
            BroadcastCreation::Replayed { id, .. } => Ok(Started::Replayed(id)),
            BroadcastCreation::KeyReused => Ok(Started::KeyReused),
            BroadcastCreation::Refused(refusal) => Err(BroadcastError::Refused(refusal)),
        };
    }
    match engine
        .store
        .create_broadcast(&broadcast, &[], idempotency.as_ref(), now)
        .await?
    {
        BroadcastCreation::Created => {}
        BroadcastCreation::Replayed { id, .. } => return Ok(Started::Replayed(id)),
        BroadcastCreation::KeyReused => return Ok(Started::KeyReused),
        BroadcastCreation::Refused(refusal) => return Err(BroadcastError::Refused(refusal)),
    }
    let running = broadcast.clone();
    tokio::spawn(async move {
        let id = running.id;
        if let Err(error) = resolver.run(running).await {
            tracing::error!(%error, broadcast_id = %id, "a broadcast stopped on a store error");
        }
    });
    Ok(Started::Background(broadcast))
}

/// Every check that can refuse the request, all reported at once.
async fn validate(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    request: &BroadcastRequest,
) -> Result<Plan, BroadcastError> {
    let store = engine.store.as_ref();
    let mut errors = Vec::new();
    if request.recipients.is_empty() {
        errors.push(field(
            "recipients",
            "required",
            "`recipients` must list at least one recipient",
        ));
    }

    // The body, sender and schedule, checked once as intake would for any recipient.
    let sample_body = match (&request.body, request.template_id) {
        (Some(body), None) => Some(body.clone()),
        (None, Some(_)) => Some("x".to_owned()),
        _ => {
            errors.push(field(
                "body",
                "body_or_template",
                "give exactly one of `body` and `template_id`",
            ));
            None
        }
    };
    if let Some(body) = sample_body {
        let sample = SendRequest {
            to: Some("+12025550100".into()),
            body: Some(body),
            kind: request.kind,
            from: request.from.clone(),
            send_at: request.send_at,
            ..Default::default()
        };
        if let Err(found) = engine.prepare(org, scope, api_key_id, &sample) {
            errors.extend(
                found
                    .into_iter()
                    .filter(|e| e.field != "to")
                    .map(|e| field(e.field, e.code, e.message)),
            );
        }
    }

    let mut template = None;
    if let Some(id) = request.template_id {
        match store.get_template(org.id, id).await? {
            None => errors.push(field(
                "template_id",
                "unknown_template",
                "`template_id` names no template of this organization",
            )),
            Some(stored) if !stored.active => errors.push(field(
                "template_id",
                "inactive_template",
                "the template is inactive; activate it before sending with it",
            )),
            Some(stored) => {
                let parsed = Template::parse(&stored.body).map_err(|e| {
                    StoreError::Corrupt(format!("template {} no longer parses: {e}", stored.id))
                })?;
                template = Some(parsed);
            }
        }
    }
    if let Err(found) = crate::templates::variables(None, &request.variables) {
        errors.extend(found);
    }

    let contact_ids: Vec<Uuid> = request
        .recipients
        .iter()
        .filter_map(|r| match r {
            Recipient::Contact(id) => Some(*id),
            _ => None,
        })
        .collect();
    let contacts: HashMap<Uuid, Contact> = if contact_ids.is_empty() {
        HashMap::new()
    } else {
        store
            .contacts_by_id(org.id, &contact_ids)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect()
    };
    let statuses = if request
        .recipients
        .iter()
        .any(|r| matches!(r, Recipient::LeadStatus(_)))
    {
        store.lead_statuses(org.id).await?
    } else {
        Vec::new()
    };
    let mut rules = HashMap::new();
    for (i, recipient) in request.recipients.iter().enumerate() {
        match recipient {
            Recipient::Phone(_) => {}
            Recipient::Contact(id) if !contacts.contains_key(id) => errors.push(field(
                format!("recipients[{i}].id"),
                "unknown_contact",
                "names no contact of this organization",
            )),
            Recipient::Contact(_) => {}
            Recipient::List(id) => {
                if store.get_list(org.id, *id).await?.is_none() {
                    errors.push(field(
                        format!("recipients[{i}].id"),
                        "unknown_list",
                        "names no list of this organization",
                    ));
                }
            }
            Recipient::Segment(id) => match store.get_segment(org.id, *id).await? {
                Some(segment) => match parse_rule(&segment.rule, &Limits::default()) {
                    Ok(rule) => {
                        rules.insert(*id, rule);
                    }
                    Err(_) => {
                        return Err(StoreError::Corrupt(format!(
                            "segment {id} has a rule that no longer parses"
                        ))
                        .into());
                    }
                },
                None => errors.push(field(
                    format!("recipients[{i}].id"),
                    "unknown_segment",
                    "names no segment of this organization",
                )),
            },
            Recipient::LeadStatus(status) if !statuses.contains(status) => errors.push(field(
                format!("recipients[{i}].status"),
                "unknown_lead_status",
                format!(
                    "is not one of the organization's lead statuses ({})",
                    statuses.join(", ")
                ),
            )),
            Recipient::LeadStatus(_) => {}
        }
    }

    // A variable neither given nor a contact field can only come from a contact's custom
    // fields: with recipients that are all bare numbers of no contact, nothing can fill it.
    if let Some(template) = &template {
        let missing: Vec<&str> = template
            .required()
            .filter(|name| !request.variables.contains_key(*name) && *name != "phone")
            .collect();
        if !missing.is_empty() && errors.is_empty() && only_strangers(engine, org, request).await? {
            errors.push(field(
                "variables",
                "missing_variables",
                format!(
                    "no recipient is a contact, so the template needs a value for: {}",
                    missing.join(", ")
                ),
            ));
        }
    }

    if errors.is_empty() {
        Ok(Plan {
            template,
            rules,
            contacts,
        })
    } else {
        Err(BroadcastError::Invalid(errors))
    }
}

/// Whether every recipient is a phone number that is no contact of the organization.
async fn only_strangers(
    engine: &Engine,
    org: &Organization,
    request: &BroadcastRequest,
) -> Result<bool, StoreError> {
    for recipient in &request.recipients {
        let Recipient::Phone(raw) = recipient else {
            return Ok(false);
        };
        if let Ok(number) = PhoneNumber::parse(raw, Some(org.default_region))
            && engine
                .store
                .find_contact_by_phone(org.id, number.e164())
                .await?
                .is_some()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One recipient to resolve: a number as given (phone entries) or a contact.
struct Target {
    phone: String,
    contact: Option<Contact>,
    /// A bare number: look up whether it belongs to a contact.
    lookup: bool,
}

impl Target {
    fn of(contact: Contact) -> Target {
        Target {
            phone: contact.phone.clone(),
            contact: Some(contact),
            lookup: false,
        }
    }
}

struct Resolver {
    engine: Arc<Engine>,
    org: Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    request: BroadcastRequest,
    plan: Plan,
    broadcast_id: Uuid,
    /// Numbers reached so far, for a small broadcast resolved before it is stored; `None`
    /// de-duplicates in the database.
    seen: Option<HashSet<String>>,
    counts: BroadcastCounts,
    /// The counts last written with a batch: what a broadcast stopped by an error keeps, so a
    /// batch that was never stored is not counted.
    saved: BroadcastCounts,
}

impl Resolver {
    /// The phone and contact entries among `range`, as targets.
    fn direct_targets(&self, range: std::ops::Range<usize>) -> Vec<Target> {
        self.request.recipients[range]
            .iter()
            .filter_map(|r| match r {
                Recipient::Phone(phone) => Some(Target {
                    phone: phone.clone(),
                    contact: None,
                    lookup: true,
                }),
                Recipient::Contact(id) => self.plan.contacts.get(id).cloned().map(Target::of),
                _ => None,
            })
            .collect()
    }

    /// Resolve every entry in batches, queueing each batch with its counts, until done or
    /// refused by credits.
    async fn run(mut self, mut broadcast: Broadcast) -> Result<(), StoreError> {
        let result = self.resolve_all(&mut broadcast).await;
        if let Err(error) = &result {
            // Leave a final status behind rather than `resolving` forever.
            broadcast.counts = self.saved;
            broadcast.status = if self.saved.queued > 0 {
                BroadcastStatus::PartiallyQueued
            } else {
                BroadcastStatus::Failed
            };
            broadcast.error = Some(format!("internal_error: {error}"));
            broadcast.finished_at = Some(self.engine.clock.now());
            self.engine
                .store
                .queue_broadcast_batch(&broadcast, &[])
                .await?
                .ok();
        }
        result
    }

    async fn resolve_all(&mut self, broadcast: &mut Broadcast) -> Result<(), StoreError> {
        let store = self.engine.store.clone();
        let org_id = self.org.id;
        let entries = self.request.recipients.clone();
        let mut pending: Vec<Target> = Vec::new();
        for entry in &entries {
            match entry {
                Recipient::Phone(phone) => pending.push(Target {
                    phone: phone.clone(),
                    contact: None,
                    lookup: true,
                }),
                Recipient::Contact(id) => {
                    if let Some(contact) = self.plan.contacts.get(id).cloned() {
                        pending.push(Target::of(contact));
                    }
                }
                Recipient::List(id) => {
                    let mut after = None;
                    loop {
                        let Some(page) =
                            store.list_members(org_id, *id, after, BATCH as u32).await?
                        else {
                            break;
                        };
                        self.push_contacts(&mut pending, &page.items).await?;
                        if !self.flush(broadcast, &mut pending, false).await? {
                            return Ok(());
                        }
                        match page.next {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                }
                Recipient::Segment(id) => {
                    let Some(rule) = self.plan.rules.get(id).cloned() else {
                        continue;
                    };
                    let at = broadcast.created_at;
                    let mut after = None;
                    loop {
                        let page = store
                            .segment_members(org_id, &rule, at, after, BATCH as u32)
                            .await?;
                        self.push_contacts(&mut pending, &page.items).await?;
                        if !self.flush(broadcast, &mut pending, false).await? {
                            return Ok(());
                        }
                        match page.next {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                }
                Recipient::LeadStatus(status) => {
                    let filter = ContactFilter {
                        lead_status: Some(status.clone()),
                        ..Default::default()
                    };
                    let mut after = None;
                    loop {
                        let page = store
                            .list_contacts(org_id, &filter, after, BATCH as u32)
                            .await?;
                        pending.extend(page.items.into_iter().map(Target::of));
                        if !self.flush(broadcast, &mut pending, false).await? {
                            return Ok(());
                        }
                        match page.next {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                }
            }
            if !self.flush(broadcast, &mut pending, false).await? {
                return Ok(());
            }
        }
        self.flush(broadcast, &mut pending, true).await?;
        Ok(())
    }

    async fn push_contacts(
        &self,
        pending: &mut Vec<Target>,
        ids: &[Uuid],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // A contact deleted since the page was read is simply gone: not a recipient.
        let contacts = self.engine.store.contacts_by_id(self.org.id, ids).await?;
        pending.extend(contacts.into_iter().map(Target::of));
        Ok(())
    }

    /// Queue full batches of `pending` (all of it when `last`); `false` once credits refused a
    /// batch and the broadcast stopped.
    async fn flush(
        &mut self,
        broadcast: &mut Broadcast,
        pending: &mut Vec<Target>,
        last: bool,
    ) -> Result<bool, StoreError> {
        while pending.len() >= BATCH || (last && !pending.is_empty()) {
            let rest = pending.split_off(pending.len().min(BATCH));
            let batch = std::mem::replace(pending, rest);
            let before = self.counts;
            let messages = self.process(batch).await?;
            broadcast.counts = self.counts;
            let done = last && pending.is_empty();
            if done {
                self.finish(broadcast, BroadcastStatus::Queued, None);
            }
            match self
                .engine
                .store
                .queue_broadcast_batch(broadcast, &messages)
                .await?
            {
                Ok(()) => {
                    self.saved = self.counts;
                    if !messages.is_empty() {
                        self.engine.wake.notify_one();
                    }
                }
                Err(refusal) => {
                    // The refused batch's recipients were resolved but will never be sent.
                    let refused = self.counts.queued - before.queued;
                    self.counts.queued = before.queued;
                    self.counts.not_sent += refused;
                    broadcast.counts = self.counts;
                    let status = if self.counts.queued > 0 {
                        BroadcastStatus::PartiallyQueued
                    } else {
                        BroadcastStatus::Failed
                    };
                    self.finish(broadcast, status, Some(refusal_code(&refusal)));
                    self.engine
                        .store
                        .queue_broadcast_batch(broadcast, &[])
                        .await?
                        .ok();
                    return Ok(false);
                }
            }
        }
        if last && broadcast.status == BroadcastStatus::Resolving {
            // Nothing was left to queue in a final batch: record the end.
            broadcast.counts = self.counts;
            self.finish(broadcast, BroadcastStatus::Queued, None);
            self.engine
                .store
                .queue_broadcast_batch(broadcast, &[])
                .await?
                .ok();
        }
        Ok(true)
    }

    fn finish(&self, broadcast: &mut Broadcast, status: BroadcastStatus, error: Option<String>) {
        broadcast.status = status;
        broadcast.error = error;
        broadcast.finished_at = Some(self.engine.clock.now());
    }

    /// Count a batch of targets and turn those that can be sent into messages.
    async fn process(&mut self, targets: Vec<Target>) -> Result<Vec<NewMessage>, StoreError> {
        let store = self.engine.store.clone();
        let org_id = self.org.id;
        self.counts.requested += targets.len() as u64;

        // Normalise; a bare number may belong to a contact, whose fields and consent apply.
        let mut valid = Vec::with_capacity(targets.len());
        for target in targets {
            match PhoneNumber::parse(&target.phone, Some(self.org.default_region)) {
                Ok(number) => {
                    let e164 = number.e164().to_owned();
                    let contact = match target.contact {
                        Some(contact) => Some(contact),
                        None if target.lookup => store.find_contact_by_phone(org_id, &e164).await?,
                        None => None,
                    };
                    valid.push((e164, contact));
                }
                Err(_) => self.counts.invalid += 1,
            }
        }

        // De-duplicate within the batch, then against earlier batches.
        let mut in_batch = HashSet::with_capacity(valid.len());
        let before = valid.len();
        valid.retain(|(phone, _)| in_batch.insert(phone.clone()));
        let phones: Vec<String> = valid.iter().map(|(p, _)| p.clone()).collect();
        let fresh: HashSet<String> = match &mut self.seen {
            Some(seen) => phones
                .into_iter()
                .filter(|p| seen.insert(p.clone()))
                .collect(),
            None => store
                .claim_broadcast_recipients(self.broadcast_id, &phones)
                .await?
                .into_iter()
                .collect(),
        };
        valid.retain(|(phone, _)| fresh.contains(phone));
        self.counts.duplicates += (before - valid.len()) as u64;

        let phones: Vec<String> = valid.iter().map(|(p, _)| p.clone()).collect();
        let opted_out: HashSet<String> = if phones.is_empty() {
            HashSet::new()
        } else {
            store
                .opted_out_among(org_id, &phones)
                .await?
                .into_iter()
                .map(|o| o.phone)
                .collect()
        };

        let promotional = self.request.kind == MessageType::Promotional;
        let mut messages = Vec::with_capacity(valid.len());
        for (phone, contact) in valid {
            if opted_out.contains(&phone) {
                self.counts.opted_out += 1;
                continue;
            }
            // A number of no contact has no consent on record.
            if promotional && !contact.as_ref().is_some_and(|c| c.consent) {
                self.counts.no_consent += 1;
                continue;
            }
            let body = match (&self.plan.template, &self.request.body) {
                (Some(template), _) => {
                    match crate::templates::variables(contact.as_ref(), &self.request.variables)
                        .ok()
                        .and_then(|values| template.render(crate::templates::lookup(&values)).ok())
                    {
                        Some(body) => body,
                        None => {
                            self.counts.invalid += 1;
                            continue;
                        }
                    }
                }
                (None, Some(body)) => body.clone(),
                (None, None) => {
                    self.counts.invalid += 1;
                    continue;
                }
            };
            let send = SendRequest {
                to: Some(phone),
                body: Some(body),
                kind: self.request.kind,
                from: self.request.from.clone(),
                send_at: self.request.send_at,
                ..Default::default()
            };
            let Ok(mut message) =
                self.engine
                    .prepare(&self.org, self.scope, self.api_key_id, &send)
            else {
                self.counts.invalid += 1;
                continue;
            };
            if self
                .engine
                .check_destination(&self.org, &message)
                .await?
                .is_err()
            {
                self.counts.not_permitted += 1;
                continue;
            }
            message.broadcast_id = Some(self.broadcast_id);
            hold_for_quiet_hours(&self.engine, contact.as_ref(), &mut message);
            self.counts.queued += 1;
            messages.push(message);
        }
        Ok(messages)
    }
}

/// [`Engine::hold_for_quiet_hours`] with the contact already at hand, so a batch costs no
/// lookup per message.
fn hold_for_quiet_hours(engine: &Engine, contact: Option<&Contact>, message: &mut NewMessage) {
    use herald_domain::quiet_hours::Whereabouts;
    if message.kind != MessageType::Promotional {
        return;
    }
    let zone = contact
        .and_then(|c| c.time_zone.as_deref())
        .and_then(|name| jiff::tz::TimeZone::get(name).ok());
    let whereabouts = match (&zone, message.country) {
        (Some(zone), _) => Whereabouts::Zone(zone),
        (None, Some(country)) => Whereabouts::Country(country),
        (None, None) => Whereabouts::Unknown,
    };
    let due = message.send_at.unwrap_or(message.created_at);
    if let Some(allowed) =
        engine
            .config
            .intake
            .quiet_hours
            .next_allowed(due, whereabouts, message.country)
        && allowed > due
    {
        message.send_at = Some(allowed);
    }
}

/// The error a broadcast stopped by credits records.
fn refusal_code(refusal: &CreditRefusal) -> String {
    match refusal {
        CreditRefusal::InsufficientCredits { .. } => "insufficient_credits",
        CreditRefusal::SpendLimitReached { .. } => "spend_limit_reached",
    }
    .to_owned()
}
