//! Broadcasts: one body or template sent to a mixed set of recipients (phone numbers, contacts,
//! lists, segments, lead statuses).
//!
//! The request is validated whole before anything is stored. Recipients are then resolved in
//! batches of at most [`BATCH`]: numbers normalised to E.164, de-duplicated (within the
//! broadcast, by the database, so memory stays bounded for any audience), and dropped when
//! invalid, opted out, without consent (promotional only) or in a country the organization may
//! not send to; the rest are personalised, held for quiet hours and queued with the counts that
//! include them.
//!
//! `requested` is the number of individual recipients resolved: one per phone or contact entry,
//! one per member of a list, segment or lead status. Each is counted in exactly one outcome, so
//! `requested = queued + duplicates + invalid + opted_out + no_consent + not_permitted +
//! not_sent` holds after every batch.
//!
//! A small audience (only phone and contact entries, at most [`BATCH`]) is resolved before the
//! answer and stored in one transaction with its messages: credits that do not cover it refuse
//! the whole broadcast and nothing is stored. Anything else is resolved in the background;
//! each batch reserves its credits all or nothing, and the first refused batch stops the
//! broadcast: batches already queued stay queued, the refused batch's recipients are counted
//! `not_sent`, recipients never resolved are not counted at all, and the status becomes
//! `partially_queued` (or `failed` when nothing was queued) with the refusal as its error.
//!
//! Background resolution survives the process that started it. The resolver holds a [`Lease`]
//! on the broadcast and stores, in the transaction of each batch, the batch's messages, the
//! numbers it reached, the counts and its [`Position`] in the recipients. When a process dies,
//! its lease runs out and [`resume_stalled`] (run by every process) takes the broadcast over
//! from the last stored position: each recipient is queued once, whatever the crash.
//! Canceling stops the resolver at its next batch (its write is refused) and cancels the
//! messages not yet handed to a provider.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_domain::message::MessageType;
use herald_domain::phone::PhoneNumber;
use herald_domain::template::Template;
use herald_store::segment::{Limits, Rule, parse_rule};
use herald_store::{
    BatchOutcome, Broadcast, BroadcastCounts, BroadcastCreation, BroadcastStatus, Contact,
    ContactFilter, CreditRefusal, IdempotencyRecord, Lease, NewMessage, Organization, Scope,
    StoreError,
};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::Engine;
use crate::accounts::FieldError;
use crate::intake::SendRequest;

/// Recipients resolved and queued per batch.
pub const BATCH: usize = 1_000;
/// Most entries one request may list (a list or segment entry counts one).
pub const MAX_ENTRIES: usize = 10_000;
/// How long a resolver's hold on a broadcast lasts; renewed with every batch. A broadcast whose
/// resolver stored nothing for this long is taken over by another process.
pub const LEASE: SignedDuration = SignedDuration::from_secs(60);
/// How often each process looks for broadcasts whose resolver died.
pub const RESUME_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// One entry of a broadcast's recipients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    /// A number in any format the API accepts; an invalid one is counted, not refused.
    Phone(String),
    Contact(Uuid),
    List(Uuid),
    Segment(Uuid),
    /// Every contact in this lead status.
    LeadStatus(String),
}

/// A broadcast request, its shape already checked by the caller. Stored with the broadcast (as
/// its `spec`) so another process can resume resolving it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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

/// How far resolution has come, stored with each batch: every recipient before it has been
/// counted. Entries are resolved in order; within a list, segment or lead status, contacts in
/// id order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The first entry not yet wholly resolved.
    pub entry: usize,
    /// Within a list, segment or lead-status entry: the last contact resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Uuid>,
}

/// What a valid request resolves with: the parsed template and the segments' rules.
struct Plan {
    template: Option<Template>,
    audience: Audience,
}

/// What a checked list of recipients resolves with: the segments' rules and the contacts named
/// by id. Shared with campaigns, whose audiences are the same entries.
#[derive(Default)]
pub(crate) struct Audience {
    pub rules: HashMap<Uuid, Rule>,
    /// Contacts named by id, read while checking.
    pub contacts: HashMap<Uuid, Contact>,
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
    let (plan, errors) = validate(engine, org, scope, api_key_id, &request).await?;
    if !errors.is_empty() {
        return Err(BroadcastError::Invalid(errors));
    }
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
        spec: None,
        api_key_id,
        position: None,
        lease: None,
        canceled: 0,
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
    };
    if small {
        let targets = direct_targets(&resolver.plan.audience, &resolver.request.recipients);
        let (messages, _) = resolver.process(targets).await?;
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
    broadcast.spec = Some(
        serde_json::to_value(&resolver.request)
            .map_err(|e| StoreError::Corrupt(format!("a broadcast request: {e}")))?,
    );
    broadcast.position = Some(position_json(Position::default()));
    broadcast.lease = Some(Lease {
        owner: Uuid::now_v7(),
        until: now + LEASE,
    });
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
        if let Err(error) = resolver.run(running, Position::default()).await {
            tracing::error!(%error, broadcast_id = %id, "a broadcast stopped on a store error; another pass will resume it");
        }
    });
    Ok(Started::Background(broadcast))
}

fn position_json(position: Position) -> Value {
    serde_json::to_value(position).expect("a position serializes")
}

/// Take over every broadcast whose resolver died (its lease ran out) and resolve the rest of
/// it from where the last stored batch left off. Answers how many were taken over; each is
/// resolved before this returns.
pub async fn resume_stalled(engine: &Arc<Engine>) -> Result<usize, StoreError> {
    let now = engine.clock.now();
    let stalled = engine.store.stalled_broadcasts(now, 16).await?;
    let mut resumed = 0;
    for id in stalled {
        let lease = Lease {
            owner: Uuid::now_v7(),
            until: now + LEASE,
        };
        let Some(broadcast) = engine.store.take_over_broadcast(id, lease, now).await? else {
            // Another process took it first, or it finished.
            continue;
        };
        resumed += 1;
        tracing::info!(broadcast_id = %id, position = ?broadcast.position, "resuming a broadcast whose resolver stopped");
        if let Err(error) = resume(engine, broadcast).await {
            tracing::error!(%error, broadcast_id = %id, "a resumed broadcast stopped on a store error; another pass will resume it");
        }
    }
    Ok(resumed)
}

/// Look for stalled broadcasts every [`RESUME_EVERY`] until `shutdown`.
pub async fn resume_periodically(
    engine: Arc<Engine>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(error) = resume_stalled(&engine).await {
            tracing::error!(%error, "failed to look for stalled broadcasts");
        }
        tokio::select! {
            _ = tokio::time::sleep(RESUME_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Resolve a broadcast taken over from a resolver that died.
async fn resume(engine: &Arc<Engine>, mut broadcast: Broadcast) -> Result<(), StoreError> {
    let store = engine.store.as_ref();
    let Some(org) = store.get_organization(broadcast.org_id).await? else {
        return Ok(());
    };
    let spec = broadcast
        .spec
        .clone()
        .and_then(|v| serde_json::from_value::<BroadcastRequest>(v).ok());
    let position = broadcast
        .position
        .clone()
        .and_then(|v| serde_json::from_value::<Position>(v).ok());
    let (Some(mut request), Some(position)) = (spec, position) else {
        return give_up(engine, &mut broadcast, "its request cannot be read").await;
    };
    // Its time has come while no one resolved it: the rest goes now.
    let now = engine.clock.now();
    request.send_at = request.send_at.filter(|at| *at > now);
    let (plan, errors) = validate(
        engine,
        &org,
        broadcast.scope(),
        broadcast.api_key_id,
        &request,
    )
    .await?;
    // Lists, segments and contacts deleted since are simply no longer recipients; anything
    // else (the template gone or inactive) stops the broadcast.
    if let Some(error) = errors.iter().find(|e| {
        !matches!(
            e.code,
            "unknown_list" | "unknown_segment" | "unknown_contact" | "unknown_lead_status"
        )
    }) {
        let reason = format!("{}: {}", error.field, error.message);
        return give_up(engine, &mut broadcast, &reason).await;
    }
    let resolver = Resolver {
        engine: engine.clone(),
        org,
        scope: broadcast.scope(),
        api_key_id: broadcast.api_key_id,
        request,
        plan,
        broadcast_id: broadcast.id,
        seen: None,
        counts: broadcast.counts,
    };
    resolver.run(broadcast, position).await
}

/// End a broadcast that cannot be resumed, keeping what it queued.
async fn give_up(
    engine: &Engine,
    broadcast: &mut Broadcast,
    reason: &str,
) -> Result<(), StoreError> {
    tracing::error!(broadcast_id = %broadcast.id, reason, "a broadcast cannot be resumed");
    broadcast.status = if broadcast.counts.queued > 0 {
        BroadcastStatus::PartiallyQueued
    } else {
        BroadcastStatus::Failed
    };
    broadcast.error = Some(format!("resume_failed: {reason}"));
    broadcast.finished_at = Some(engine.clock.now());
    engine
        .store
        .queue_broadcast_batch(broadcast, &[], &[])
        .await?;
    Ok(())
}

/// Every check that can refuse the request, all reported at once.
async fn validate(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    request: &BroadcastRequest,
) -> Result<(Plan, Vec<FieldError>), StoreError> {
    let store = engine.store.as_ref();
    let mut errors = Vec::new();
    if request.recipients.is_empty() {
        errors.push(FieldError::new(
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
            errors.push(FieldError::new(
                "body",
                "body_or_template",
                "give exactly one of `body` and `template_id`",
            ));
            None
        }
    };
    if let Some(body) = sample_body {
        let sample = SendRequest {
            body: Some(body),
            kind: request.kind,
            from: request.from.clone(),
            send_at: request.send_at,
            ..Default::default()
        };
        errors.extend(sample_problems(engine, org, scope, api_key_id, sample));
    }

    let mut template = None;
    if let Some(id) = request.template_id {
        match crate::templates::sendable(store, org.id, id, "template_id").await? {
            Ok((parsed, _)) => template = Some(parsed),
            Err(error) => errors.push(error),
        }
    }
    if let Err(found) = crate::templates::variables(None, &request.variables) {
        errors.extend(found);
    }

    let (audience, found) = check_recipients(store, org.id, &request.recipients, |i, sub| {
        format!("recipients[{i}].{sub}")
    })
    .await?;
    errors.extend(found);

    // A variable neither given nor a contact field can only come from a contact's custom
    // fields: with recipients that are all bare numbers of no contact, nothing can fill it.
    if let Some(template) = &template {
        let missing: Vec<&str> = template
            .required()
            .filter(|name| !request.variables.contains_key(*name) && *name != "phone")
            .collect();
        if !missing.is_empty() && errors.is_empty() && only_strangers(engine, org, request).await? {
            errors.push(FieldError::new(
                "variables",
                "missing_variables",
                format!(
                    "no recipient is a contact, so the template needs a value for: {}",
                    missing.join(", ")
                ),
            ));
        }
    }

    Ok((Plan { template, audience }, errors))
}

/// What intake would refuse about `sample` (its body, or a template's stand-in, its sender and
/// schedule) whatever the recipient: every problem but the number's.
pub(crate) fn sample_problems(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    sample: SendRequest,
) -> Vec<FieldError> {
    let sample = SendRequest {
        to: Some("+12025550100".into()),
        ..sample
    };
    match engine.prepare(org, scope, api_key_id, &sample) {
        Ok(_) => Vec::new(),
        Err(found) => found
            .into_iter()
            .filter(|e| e.field != "to")
            .map(|e| FieldError::new(e.field, e.code, e.message))
            .collect(),
    }
}

/// Check that every list, segment, contact and lead status named in `recipients` exists (the
/// fault with entry `i` is reported at `field(i, "id")`, or `field(i, "status")` for a lead
/// status), and read what resolving them needs.
pub(crate) async fn check_recipients(
    store: &dyn herald_store::Store,
    org_id: Uuid,
    recipients: &[Recipient],
    field: impl Fn(usize, &str) -> String,
) -> Result<(Audience, Vec<FieldError>), StoreError> {
    let mut errors = Vec::new();
    let contact_ids: Vec<Uuid> = recipients
        .iter()
        .filter_map(|r| match r {
            Recipient::Contact(id) => Some(*id),
            _ => None,
        })
        .collect();
    let contacts = crate::contacts::by_id(store, org_id, &contact_ids).await?;
    let statuses = if recipients
        .iter()
        .any(|r| matches!(r, Recipient::LeadStatus(_)))
    {
        store.lead_statuses(org_id).await?
    } else {
        Vec::new()
    };
    let mut rules = HashMap::new();
    for (i, recipient) in recipients.iter().enumerate() {
        match recipient {
            Recipient::Phone(_) => {}
            Recipient::Contact(id) if !contacts.contains_key(id) => errors.push(FieldError::new(
                field(i, "id"),
                "unknown_contact",
                "names no contact of this organization",
            )),
            Recipient::Contact(_) => {}
            Recipient::List(id) => {
                if store.get_list(org_id, *id).await?.is_none() {
                    errors.push(FieldError::new(
                        field(i, "id"),
                        "unknown_list",
                        "names no list of this organization",
                    ));
                }
            }
            Recipient::Segment(id) => match store.get_segment(org_id, *id).await? {
                Some(segment) => match parse_rule(&segment.rule, &Limits::default()) {
                    Ok(rule) => {
                        rules.insert(*id, rule);
                    }
                    Err(_) => {
                        return Err(StoreError::Corrupt(format!(
                            "segment {id} has a rule that no longer parses"
                        )));
                    }
                },
                None => errors.push(FieldError::new(
                    field(i, "id"),
                    "unknown_segment",
                    "names no segment of this organization",
                )),
            },
            Recipient::LeadStatus(status) if !statuses.contains(status) => {
                errors.push(FieldError::new(
                    field(i, "status"),
                    "unknown_lead_status",
                    format!(
                        "is not one of the organization's lead statuses ({})",
                        statuses.join(", ")
                    ),
                ))
            }
            Recipient::LeadStatus(_) => {}
        }
    }
    Ok((Audience { rules, contacts }, errors))
}

/// Whether every recipient is a phone number that is no contact of the organization.
async fn only_strangers(
    engine: &Engine,
    org: &Organization,
    request: &BroadcastRequest,
) -> Result<bool, StoreError> {
    let mut numbers = Vec::with_capacity(request.recipients.len());
    for recipient in &request.recipients {
        let Recipient::Phone(raw) = recipient else {
            return Ok(false);
        };
        if let Ok(number) = PhoneNumber::parse(raw, Some(org.default_region)) {
            numbers.push(number);
        }
    }
    let phones: Vec<&str> = numbers.iter().map(PhoneNumber::e164).collect();
    if !engine
        .store
        .find_contacts_by_phone(org.id, &phones)
        .await?
        .is_empty()
    {
        return Ok(false);
    }
    Ok(true)
}

/// The field of entry `index` of entries given in groups, in order (`lists[2]` for the third
/// list when `groups` is `[("contacts", n), ("lists", m), …]`).
pub(crate) fn entry_field(groups: &[(&str, usize)], index: usize) -> String {
    let mut at = index;
    for (name, len) in groups {
        if at < *len {
            return format!("{name}[{at}]");
        }
        at -= len;
    }
    groups
        .first()
        .map_or_else(String::new, |(name, _)| (*name).to_owned())
}

/// The phone and contact entries among `entries`, as targets.
fn direct_targets(audience: &Audience, entries: &[Recipient]) -> Vec<Target> {
    entries
        .iter()
        .filter_map(|r| match r {
            Recipient::Phone(phone) => Some(Target {
                phone: phone.clone(),
                contact: None,
                lookup: true,
            }),
            Recipient::Contact(id) => audience.contacts.get(id).cloned().map(Target::of),
            _ => None,
        })
        .collect()
}

/// The contacts of `ids` still there, as targets.
async fn contact_targets(
    store: &dyn herald_store::Store,
    org_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<Target>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // A contact deleted since the page was read is simply gone: not a recipient.
    let contacts = store.contacts_by_id(org_id, ids).await?;
    Ok(contacts.into_iter().map(Target::of).collect())
}

/// The next batch of at most [`BATCH`] targets from `at`, and the position after it; `None`
/// once every entry is resolved. Entries are walked in order; a list, segment or lead status
/// page by page in contact id order, segments evaluated as of `as_of`.
pub(crate) async fn next_targets(
    store: &dyn herald_store::Store,
    org_id: Uuid,
    audience: &Audience,
    entries: &[Recipient],
    at: Position,
    as_of: Timestamp,
) -> Result<Option<(Vec<Target>, Position)>, StoreError> {
    let Some(entry) = entries.get(at.entry) else {
        return Ok(None);
    };
    let whole = Position {
        entry: at.entry + 1,
        after: None,
    };
    let within = |next: Option<Uuid>| match next {
        Some(after) => Position {
            entry: at.entry,
            after: Some(after),
        },
        None => whole,
    };
    Ok(Some(match entry {
        Recipient::Phone(_) | Recipient::Contact(_) => {
            let end = entries[at.entry..]
                .iter()
                .take(BATCH)
                .take_while(|r| matches!(r, Recipient::Phone(_) | Recipient::Contact(_)))
                .count()
                + at.entry;
            let next = Position {
                entry: end,
                after: None,
            };
            (direct_targets(audience, &entries[at.entry..end]), next)
        }
        Recipient::List(id) => {
            match store
                .list_members(org_id, *id, at.after, BATCH as u32)
                .await?
            {
                // Deleted since: no longer a recipient.
                None => (Vec::new(), whole),
                Some(page) => (
                    contact_targets(store, org_id, &page.items).await?,
                    within(page.next),
                ),
            }
        }
        Recipient::Segment(id) => match audience.rules.get(id) {
            None => (Vec::new(), whole),
            Some(rule) => {
                let page = store
                    .segment_members(org_id, rule, as_of, at.after, BATCH as u32)
                    .await?;
                (
                    contact_targets(store, org_id, &page.items).await?,
                    within(page.next),
                )
            }
        },
        Recipient::LeadStatus(status) => {
            let filter = ContactFilter {
                lead_status: Some(status.clone()),
                ..Default::default()
            };
            let page = store
                .list_contacts(org_id, &filter, at.after, BATCH as u32)
                .await?;
            let targets = page.items.into_iter().map(Target::of).collect();
            (targets, within(page.next))
        }
    }))
}

/// Normalise targets to E.164, dropping (and counting) invalid numbers; a bare number that
/// belongs to a contact gets that contact, whose fields and consent apply.
pub(crate) async fn normalise(
    store: &dyn herald_store::Store,
    org: &Organization,
    targets: Vec<Target>,
) -> Result<(Vec<(String, Option<Contact>, PhoneNumber)>, u64), StoreError> {
    let mut invalid = 0;
    // Normalise; a bare number may belong to a contact, whose fields and consent apply.
    // A contact's number was validated when it was stored: it is not parsed again.
    let mut valid = Vec::with_capacity(targets.len());
    for target in targets {
        let stored = target
            .contact
            .as_ref()
            .and_then(|c| PhoneNumber::stored(&c.phone, c.country));
        let number = match stored {
            Some(number) => number,
            None => match PhoneNumber::parse(&target.phone, Some(org.default_region)) {
                Ok(number) => number,
                Err(_) => {
                    invalid += 1;
                    continue;
                }
            },
        };
        valid.push((
            number.e164().to_owned(),
            target.contact,
            number,
            target.lookup,
        ));
    }
    // Bare numbers that belong to contacts, found in one read.
    let wanted: Vec<&str> = valid
        .iter()
        .filter(|(_, contact, _, lookup)| contact.is_none() && *lookup)
        .map(|(phone, ..)| phone.as_str())
        .collect();
    let mut found = store.find_contacts_by_phone(org.id, &wanted).await?;
    let valid: Vec<(String, Option<Contact>, PhoneNumber)> = valid
        .into_iter()
        .map(|(phone, contact, number, lookup)| {
            let contact = match contact {
                Some(contact) => Some(contact),
                None if lookup => found.remove(&phone),
                None => None,
            };
            (phone, contact, number)
        })
        .collect();
    Ok((valid, invalid))
}

/// One recipient to resolve: a number as given (phone entries) or a contact.
pub(crate) struct Target {
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
}

impl Resolver {
    /// Resolve every entry from `at` in batches, storing each batch with its counts and the
    /// position after it, until done, refused by credits, or the broadcast is no longer ours
    /// (canceled or taken over). A store error stops it as it is: its lease runs out and
    /// another pass resumes it from the last stored batch.
    async fn run(mut self, mut broadcast: Broadcast, mut at: Position) -> Result<(), StoreError> {
        let store = self.engine.store.clone();
        let entries = self.request.recipients.clone();
        loop {
            let Some((targets, next)) = next_targets(
                store.as_ref(),
                self.org.id,
                &self.plan.audience,
                &entries,
                at,
                broadcast.created_at,
            )
            .await?
            else {
                // Nothing left: record the end (also when the last batch was exactly full).
                return self
                    .store_batch(&mut broadcast, Vec::new(), at, true)
                    .await
                    .map(drop);
            };
            let done = next.entry >= entries.len();
            if !self
                .store_batch(&mut broadcast, targets, next, done)
                .await?
                || done
            {
                return Ok(());
            }
            at = next;
        }
    }

    /// Resolve `targets` and store them as one batch with the counts and `next`, the position
    /// after them (and the end, when `done`). `false` once the broadcast stopped: refused by
    /// credits, canceled, or taken over.
    async fn store_batch(
        &mut self,
        broadcast: &mut Broadcast,
        targets: Vec<Target>,
        next: Position,
        done: bool,
    ) -> Result<bool, StoreError> {
        let before = self.counts;
        let (messages, reached) = self.process(targets).await?;
        broadcast.counts = self.counts;
        broadcast.position = Some(position_json(next));
        if let Some(lease) = &mut broadcast.lease {
            lease.until = self.engine.clock.now() + LEASE;
        }
        if done {
            self.finish(broadcast, BroadcastStatus::Queued, None);
        }
        match self
            .engine
            .store
            .queue_broadcast_batch(broadcast, &messages, &reached)
            .await?
        {
            BatchOutcome::Stored => {
                if !messages.is_empty() {
                    self.engine.wake.notify_one();
                }
                Ok(true)
            }
            BatchOutcome::Lost => {
                tracing::info!(broadcast_id = %broadcast.id, "broadcast canceled or taken over; this resolver stops");
                Ok(false)
            }
            BatchOutcome::Refused(refusal) => {
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
                    .queue_broadcast_batch(broadcast, &[], &[])
                    .await?;
                Ok(false)
            }
        }
    }

    fn finish(&self, broadcast: &mut Broadcast, status: BroadcastStatus, error: Option<String>) {
        broadcast.status = status;
        broadcast.error = error;
        broadcast.finished_at = Some(self.engine.clock.now());
    }

    /// Count a batch of targets and turn those that can be sent into messages; also answers the
    /// numbers the batch reaches for the first time, to record with it.
    async fn process(
        &mut self,
        targets: Vec<Target>,
    ) -> Result<(Vec<NewMessage>, Vec<String>), StoreError> {
        let store = self.engine.store.clone();
        let org_id = self.org.id;
        self.counts.requested += targets.len() as u64;

        let (mut valid, invalid) = normalise(store.as_ref(), &self.org, targets).await?;
        self.counts.invalid += invalid;

        // De-duplicate within the batch, then against earlier batches.
        let mut in_batch = HashSet::with_capacity(valid.len());
        let before = valid.len();
        valid.retain(|(phone, _, _)| in_batch.insert(phone.clone()));
        let phones: Vec<String> = valid.iter().map(|(p, _, _)| p.clone()).collect();
        let reached: Vec<String> = match &mut self.seen {
            Some(seen) => phones
                .into_iter()
                .filter(|p| seen.insert(p.clone()))
                .collect(),
            None => {
                let earlier: HashSet<String> = store
                    .reached_before(self.broadcast_id, &phones)
                    .await?
                    .into_iter()
                    .collect();
                phones
                    .into_iter()
                    .filter(|p| !earlier.contains(p))
                    .collect()
            }
        };
        let fresh: HashSet<&str> = reached.iter().map(String::as_str).collect();
        valid.retain(|(phone, _, _)| fresh.contains(phone.as_str()));
        self.counts.duplicates += (before - valid.len()) as u64;

        let phones: Vec<String> = valid.iter().map(|(p, _, _)| p.clone()).collect();
        let opted_out = crate::contacts::opted_out(store.as_ref(), org_id, &phones).await?;

        let promotional = self.request.kind == MessageType::Promotional;
        let mut messages = Vec::with_capacity(valid.len());
        for (phone, contact, number) in valid {
            if opted_out.contains(&phone) {
                self.counts.opted_out += 1;
                continue;
            }
            // A number of no contact has no consent on record.
            if promotional && !contact.as_ref().is_some_and(|c| c.consent) {
                self.counts.no_consent += 1;
                continue;
            }
            let Some(body) = crate::templates::personalise(
                self.plan.template.as_ref(),
                self.request.body.as_ref(),
                contact.as_ref(),
                &self.request.variables,
            ) else {
                self.counts.invalid += 1;
                continue;
            };
            let send = SendRequest {
                to: Some(phone),
                to_number: Some(number),
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
            crate::hold_for_quiet_hours(
                &self.engine.config.intake.quiet_hours,
                contact.as_ref(),
                &mut message,
            );
            self.counts.queued += 1;
            messages.push(message);
        }
        Ok((messages, reached))
    }
}

/// The error a broadcast stopped by credits records.
pub(crate) fn refusal_code(refusal: &CreditRefusal) -> String {
    match refusal {
        CreditRefusal::InsufficientCredits { .. } => "insufficient_credits",
        CreditRefusal::SpendLimitReached { .. } => "spend_limit_reached",
    }
    .to_owned()
}
