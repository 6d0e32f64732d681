//! Drip sequences: what a drip says ([`DripSpec`]), checking it, enrolling numbers, and
//! deciding each enrolment's next step.
//!
//! Each step waits `delay` after the previous one (after enrolment, for the first), then,
//! with `at`, until that time of day in the recipient's own zone. A contact leaves when they
//! opt out, when they reply (unless `exit_on_reply` is off), or after the last step; the
//! check is made when each step comes due, so a reply at any time before a step stops it.

use std::collections::HashSet;

use herald_domain::message::{MessageType, Mode};
use herald_store::{
    Advanced, Drip, DripStatus, Enrollment, EnrollmentState, IdempotencyRecord, Next, Organization,
    Scope, StoreError,
};
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    Content, Ready, Recipient, Sender, check_content, merge_patch, next_time, parse_delay,
    parse_json,
};
use crate::Engine;
use crate::accounts::FieldError;
use crate::broadcasts::{self, Position, Recipient as Entry};

/// Most steps a drip may have.
pub const MAX_STEPS: usize = 50;
/// Longest delay of one step.
pub const MAX_DELAY_DAYS: i64 = 366;
/// Enrolments written per transaction.
const ENROL_BATCH: usize = 500;

/// One step: wait, then send.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An ISO 8601 duration after the previous step (or enrolment): `P2D`, `PT30M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// The time of day in the recipient's zone (`10:00`) on the day the delay ends (the next
    /// day if that is not after the previous step): "day 2 at 10:00".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub variables: Map<String, Value>,
}

impl Step {
    pub(crate) fn content(&self) -> Content<'_> {
        Content {
            template_id: self.template_id,
            body: self.body.as_ref(),
            variables: &self.variables,
        }
    }
}

/// Everything a drip says, as the API takes and shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DripSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `transactional` unless said otherwise; promotional steps need the contact's consent and
    /// wait out quiet hours.
    #[serde(default)]
    pub message_type: MessageType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Leave the drip when the contact replies (anything but an opt-out, which always does).
    #[serde(default = "yes")]
    pub exit_on_reply: bool,
    /// The zone for `at` times of recipients whose own zone is unknown.
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub steps: Vec<Step>,
}

impl Default for DripSpec {
    /// As an empty request reads.
    fn default() -> DripSpec {
        DripSpec {
            name: String::new(),
            description: None,
            message_type: MessageType::default(),
            from: None,
            exit_on_reply: yes(),
            timezone: utc(),
            steps: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

fn utc() -> String {
    "UTC".into()
}

impl DripSpec {
    pub fn zone(&self) -> TimeZone {
        TimeZone::get(&self.timezone).unwrap_or(TimeZone::UTC)
    }

    /// When step `index` comes due for `to`, counting from `from`.
    pub fn due(&self, index: usize, from: Timestamp, to: &Recipient) -> Option<Timestamp> {
        let step = self.steps.get(index)?;
        let delay = step
            .delay
            .as_deref()
            .and_then(|d| parse_delay(d, MAX_DELAY_DAYS).ok())
            .unwrap_or_else(Span::new);
        Some(next_time(from, delay, step.at, &to.zone(&self.zone())))
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a drip spec serializes")
    }

    pub fn of(drip: &Drip) -> Result<DripSpec, StoreError> {
        serde_json::from_value(drip.spec.clone())
            .map_err(|e| StoreError::Corrupt(format!("drip {} spec: {e}", drip.id)))
    }
}

/// A drip spec that passed every check, with each step's content ready to render.
#[derive(Clone, Debug)]
pub struct Checked {
    pub spec: DripSpec,
    pub steps: Vec<Ready>,
}

/// Every check that can refuse a drip spec, all reported at once.
pub async fn check(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    spec: DripSpec,
) -> Result<Result<Checked, Vec<FieldError>>, StoreError> {
    let mut errors = Vec::new();
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        errors.push(FieldError::new(
            "name",
            "invalid_name",
            "`name` must be 1 to 200 characters",
        ));
    }
    if TimeZone::get(&spec.timezone).is_err() {
        errors.push(FieldError::new(
            "timezone",
            "unknown_time_zone",
            "`timezone` must be an IANA time zone such as Europe/Paris",
        ));
    }
    if spec.steps.is_empty() || spec.steps.len() > MAX_STEPS {
        errors.push(FieldError::new(
            "steps",
            "step_count",
            format!("a drip has 1 to {MAX_STEPS} steps"),
        ));
    }
    let mut steps = Vec::with_capacity(spec.steps.len());
    for (i, step) in spec.steps.iter().enumerate() {
        if let Some(delay) = &step.delay
            && let Err(message) = parse_delay(delay, MAX_DELAY_DAYS)
        {
            errors.push(FieldError::new(
                format!("steps[{i}].delay"),
                "invalid_delay",
                message,
            ));
        }
        let sender = Sender {
            org,
            scope,
            api_key_id,
            kind: spec.message_type,
            from: spec.from.as_ref(),
        };
        match check_content(engine, sender, step.content(), &format!("steps[{i}].")).await? {
            Ok(ready) => steps.push(ready),
            Err(found) => errors.extend(found),
        }
    }
    Ok(if errors.is_empty() {
        Ok(Checked { spec, steps })
    } else {
        Err(errors)
    })
}

/// How [`create`] went.
pub type Created = crate::Created<Drip>;

/// Create a drip; it takes steps from the start (`active`).
pub async fn create(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    spec: DripSpec,
    idempotency: Option<IdempotencyRecord>,
) -> Result<Result<Created, Vec<FieldError>>, StoreError> {
    let checked = match check(engine, org, scope, api_key_id, spec).await? {
        Ok(checked) => checked,
        Err(errors) => return Ok(Err(errors)),
    };
    let now = engine.clock.now();
    let drip = Drip {
        id: Uuid::now_v7(),
        org_id: org.id,
        mode: scope.mode,
        name: checked.spec.name.trim().to_owned(),
        status: DripStatus::Active,
        spec: checked.spec.to_json(),
        api_key_id,
        created_at: now,
        updated_at: now,
    };
    let creation = engine
        .store
        .create_drip(&drip, idempotency.as_ref(), now)
        .await?;
    Ok(Ok(Created::of(creation, drip)))
}

/// Why a change to a drip was refused.
#[derive(Debug)]
pub enum Refused {
    NotFound,
    Invalid(Vec<FieldError>),
}

/// Replace a drip's fields with those in `patch` (top-level fields replace; `status` pauses or
/// activates it). Enrolments keep their place: step `n` is whatever step `n` now says.
pub async fn update(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    id: Uuid,
    mut patch: Map<String, Value>,
) -> Result<Result<Drip, Refused>, StoreError> {
    let status = match patch.remove("status") {
        None => None,
        Some(value) => match value.as_str().map(str::parse::<DripStatus>) {
            Some(Ok(status)) => Some(status),
            _ => {
                return Ok(Err(Refused::Invalid(vec![FieldError::new(
                    "status",
                    "invalid",
                    "`status` is `active` or `paused`",
                )])));
            }
        },
    };
    for _ in 0..8 {
        let Some(current) = engine.store.get_drip(scope, id).await? else {
            return Ok(Err(Refused::NotFound));
        };
        let spec: DripSpec = match parse_json(merge_patch(&current.spec, &patch)) {
            Ok(spec) => spec,
            Err(error) => return Ok(Err(Refused::Invalid(vec![error]))),
        };
        let checked = match check(engine, org, scope, current.api_key_id, spec).await? {
            Ok(checked) => checked,
            Err(errors) => return Ok(Err(Refused::Invalid(errors))),
        };
        let updated = Drip {
            name: checked.spec.name.trim().to_owned(),
            status: status.unwrap_or(current.status),
            spec: checked.spec.to_json(),
            updated_at: engine
                .clock
                .now()
                .max(current.updated_at + SignedDuration::from_micros(1)),
            ..current.clone()
        };
        if engine
            .store
            .update_drip(&updated, current.updated_at)
            .await?
        {
            return Ok(Ok(updated));
        }
        // Changed by someone else since it was read: read it again and re-apply.
    }
    Err(StoreError::Conflict(
        "the drip kept changing; try again".into(),
    ))
}

/// Who to enrol: contacts, numbers, and the members of lists and segments as they are now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrolRequest {
    pub lists: Vec<Uuid>,
    pub segments: Vec<Uuid>,
    pub contacts: Vec<Uuid>,
    pub phones: Vec<String>,
}

impl EnrolRequest {
    fn entries(&self) -> Vec<Entry> {
        let mut entries: Vec<Entry> = self.lists.iter().map(|id| Entry::List(*id)).collect();
        entries.extend(self.segments.iter().map(|id| Entry::Segment(*id)));
        entries.extend(self.contacts.iter().map(|id| Entry::Contact(*id)));
        entries.extend(self.phones.iter().map(|p| Entry::Phone(p.clone())));
        entries
    }
}

/// What an enrolment request did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Enrolled {
    /// Numbers enrolled now.
    pub enrolled: u64,
    /// Numbers already in the drip (in it, done with it, or left it): not enrolled again.
    pub already: u64,
    /// Numbers that are not valid phone numbers.
    pub invalid: u64,
}

/// Enrol everyone `request` names who is not in the drip yet. Each starts at the first step,
/// due after its delay from now.
pub async fn enrol(
    engine: &Engine,
    org: &Organization,
    drip: &Drip,
    request: &EnrolRequest,
) -> Result<Result<Enrolled, Vec<FieldError>>, StoreError> {
    let entries = request.entries();
    if entries.is_empty() || entries.len() > broadcasts::MAX_ENTRIES {
        return Ok(Err(vec![FieldError::new(
            "contacts",
            "no_recipients",
            format!(
                "name 1 to {} lists, segments, contacts or phones",
                broadcasts::MAX_ENTRIES
            ),
        )]));
    }
    let store = engine.store.as_ref();
    let groups = [
        ("lists", request.lists.len()),
        ("segments", request.segments.len()),
        ("contacts", request.contacts.len()),
        ("phones", request.phones.len()),
    ];
    let (audience, errors) = broadcasts::check_recipients(store, org.id, &entries, |i, sub| {
        format!("{}.{sub}", broadcasts::entry_field(&groups, i))
    })
    .await?;
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    let spec = DripSpec::of(drip)?;
    let now = engine.clock.now();
    let mut done = Enrolled::default();
    let mut seen = HashSet::new();
    let mut at = Position::default();
    while let Some((targets, next)) =
        broadcasts::next_targets(store, org.id, &audience, &entries, at, now).await?
    {
        at = next;
        let (valid, invalid) = broadcasts::normalise(store, org, targets).await?;
        done.invalid += invalid;
        let mut batch = Vec::new();
        for (phone, contact, number) in valid {
            if !seen.insert(phone.clone()) {
                continue;
            }
            let to = Recipient {
                phone: phone.clone(),
                country: number.region(),
                contact,
            };
            batch.push(enrollment(drip, &spec, &to, source_of(&to), now));
        }
        for chunk in batch.chunks(ENROL_BATCH) {
            let enrolled = store.enrol(chunk).await?;
            done.enrolled += enrolled;
            done.already += chunk.len() as u64 - enrolled;
        }
    }
    Ok(Ok(done))
}

fn source_of(to: &Recipient) -> &'static str {
    if to.contact.is_some() {
        "contact"
    } else {
        "phone"
    }
}

/// A new enrolment of `to` in `drip` at its first step.
pub(crate) fn enrollment(
    drip: &Drip,
    spec: &DripSpec,
    to: &Recipient,
    source: &str,
    now: Timestamp,
) -> Enrollment {
    Enrollment {
        id: Uuid::now_v7(),
        org_id: drip.org_id,
        drip_id: drip.id,
        phone: to.phone.clone(),
        contact_id: to.contact.as_ref().map(|c| c.id),
        source: source.to_owned(),
        step: 0,
        next_at: Some(spec.due(0, now, to).unwrap_or(now)),
        state: EnrollmentState::Active,
        reason: None,
        error: None,
        enrolled_at: now,
        updated_at: now,
    }
}

/// The drip an enrolment is in, with its spec (an enrolment knows its organization, not the
/// mode its drip was made in).
pub(crate) async fn drip_of(
    engine: &Engine,
    e: &Enrollment,
) -> Result<Option<(Drip, DripSpec)>, StoreError> {
    for mode in [Mode::Live, Mode::Test] {
        let scope = Scope {
            org_id: e.org_id,
            mode,
        };
        if let Some(drip) = engine.store.get_drip(scope, e.drip_id).await? {
            let spec = DripSpec::of(&drip)?;
            return Ok(Some((drip, spec)));
        }
    }
    Ok(None)
}

/// `phone` texted the organization: it leaves at once every drip it is in that an opt-out
/// (`opted_out`) or a reply ends. Answers how many it left. (A step coming due checks the same,
/// so a message this misses, say while its drip is paused, still ends the enrolment.)
pub async fn on_inbound(
    engine: &Engine,
    org_id: Uuid,
    phone: &str,
    opted_out: bool,
) -> Result<u64, StoreError> {
    let store = engine.store.as_ref();
    let now = engine.clock.now();
    let mut left = 0;
    for e in store.active_enrollments(org_id, phone).await? {
        let reason = if opted_out {
            "opted_out"
        } else {
            match drip_of(engine, &e).await? {
                Some((_, spec)) if spec.exit_on_reply => "replied",
                _ => continue,
            }
        };
        let exit = Next::Exited(reason.to_owned());
        if store.advance_enrollment(&e, None, exit, now).await? == Advanced::Done {
            left += 1;
        }
    }
    Ok(left)
}
