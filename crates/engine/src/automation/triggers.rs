//! Triggers: what a trigger says ([`TriggerSpec`]), checking it, and firing it.
//!
//! A trigger listens for one event: `contact.created`, `contact.age` (a number of days after a
//! contact was created, at a local time of day), or any other name posted to `/v1/events`. When
//! it fires it sends a message (a template filled with the contact's fields, the trigger's
//! fixed variables and the event's `data`) or enrols the contact in a drip. It fires once per
//! key: the contact's id for the contact events, the request's idempotency key for named ones.

use herald_domain::message::MessageType;
use herald_store::segment::{Limits, Rule, parse_rule};
use herald_store::{
    Drip, Fired, Firing, FiringAction, IdempotencyRecord, Organization, Scope, StoreError, Trigger,
    TriggerKind,
};
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::drips::{DripSpec, enrollment};
use super::{
    Content, Ready, Recipient, Sender, check_content, compose, merge_patch, parse_json,
    recipient_of_phone,
};
use crate::Engine;
use crate::accounts::FieldError;

/// Longest `contact.age` wait.
pub const MAX_AGE_DAYS: u32 = 3_650;
/// Longest event name and idempotency key.
pub const MAX_NAME: usize = 100;
pub const MAX_KEY: usize = 255;

/// Everything a trigger says, as the API takes and shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    #[serde(default)]
    pub name: String,
    /// `contact.created`, `contact.age`, or the name of an event posted to `/v1/events`.
    #[serde(default)]
    pub event: String,
    /// For the contact events: only contacts matching this segment rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    /// For `contact.age`: days after the contact was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
    /// For `contact.age`: the time of day in the contact's zone (09:00 unless given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
    /// The zone for `at` when a contact's own zone is unknown.
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub message_type: MessageType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub variables: Map<String, Value>,
    /// Enrol the contact in this drip instead of sending a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drip_id: Option<Uuid>,
}

impl Default for TriggerSpec {
    /// As an empty request reads.
    fn default() -> TriggerSpec {
        TriggerSpec {
            name: String::new(),
            event: String::new(),
            filter: None,
            days: None,
            at: None,
            timezone: utc(),
            message_type: MessageType::default(),
            from: None,
            template_id: None,
            body: None,
            variables: Map::new(),
            drip_id: None,
        }
    }
}

fn utc() -> String {
    "UTC".into()
}

impl TriggerSpec {
    pub fn kind(&self) -> TriggerKind {
        match self.event.as_str() {
            "contact.created" => TriggerKind::ContactCreated,
            "contact.age" => TriggerKind::ContactAge,
            _ => TriggerKind::Event,
        }
    }

    pub fn zone(&self) -> TimeZone {
        TimeZone::get(&self.timezone).unwrap_or(TimeZone::UTC)
    }

    /// The local time of day a `contact.age` trigger fires at.
    pub fn at_time(&self) -> Time {
        self.at.unwrap_or(Time::constant(9, 0, 0, 0))
    }

    /// When a `contact.age` trigger fires for a contact created at `created` in `zone`: that
    /// day plus `days`, at [`TriggerSpec::at_time`] there.
    pub fn age_due(&self, created: Timestamp, zone: &TimeZone) -> Timestamp {
        let date = created.to_zoned(zone.clone()).date();
        let day = date
            .checked_add(i64::from(self.days.unwrap_or(0)).days())
            .unwrap_or(date);
        day.to_datetime(self.at_time())
            .to_zoned(zone.clone())
            .map(|z| z.timestamp())
            .unwrap_or(created)
    }

    fn sender<'a>(
        &'a self,
        org: &'a Organization,
        scope: Scope,
        api_key_id: Option<Uuid>,
    ) -> Sender<'a> {
        Sender {
            org,
            scope,
            api_key_id,
            kind: self.message_type,
            from: self.from.as_ref(),
        }
    }

    /// The filter as a rule; `None` without one, or when it no longer parses (then
    /// [`ready`] refuses the trigger).
    pub(crate) fn rule(&self) -> Option<Rule> {
        self.filter
            .as_ref()
            .and_then(|raw| parse_rule(raw, &Limits::default()).ok())
    }

    fn content(&self) -> Content<'_> {
        Content {
            template_id: self.template_id,
            body: self.body.as_ref(),
            variables: &self.variables,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a trigger spec serializes")
    }

    pub fn of(trigger: &Trigger) -> Result<TriggerSpec, StoreError> {
        serde_json::from_value(trigger.spec.clone())
            .map_err(|e| StoreError::Corrupt(format!("trigger {} spec: {e}", trigger.id)))
    }
}

/// What a firing does, read and ready.
#[derive(Clone, Debug)]
pub enum Act {
    Send(Ready),
    Enrol(Box<Drip>, DripSpec),
}

/// A trigger spec that passed every check.
#[derive(Clone, Debug)]
pub struct Checked {
    pub spec: TriggerSpec,
    pub rule: Option<Rule>,
    pub act: Act,
}

/// Whether `name` may name an event: 1 to 100 letters, digits and `._:-`.
fn event_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Every check that can refuse a trigger spec, all reported at once.
pub async fn check(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    spec: TriggerSpec,
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
    let kind = spec.kind();
    if !event_name_ok(&spec.event)
        || (kind == TriggerKind::Event && spec.event.starts_with("contact."))
    {
        errors.push(FieldError::new(
            "event",
            "invalid_event",
            "`event` is `contact.created`, `contact.age`, or an event name of 1 to 100 letters, \
             digits and `._:-` (names starting `contact.` are reserved)",
        ));
    }
    let mut rule = None;
    match (&spec.filter, kind) {
        (None, _) => {}
        (Some(_), TriggerKind::Event) => errors.push(FieldError::new(
            "filter",
            "filter_not_allowed",
            "a filter applies to `contact.created` and `contact.age` triggers",
        )),
        (Some(raw), _) => match parse_rule(raw, &Limits::default()) {
            Ok(parsed) => rule = Some(parsed),
            Err(found) => errors.extend(
                found
                    .into_iter()
                    .map(|e| FieldError::new(format!("filter{}", e.path), e.code, e.message)),
            ),
        },
    }
    match (kind, spec.days) {
        (TriggerKind::ContactAge, None) => errors.push(FieldError::new(
            "days",
            "required",
            "a `contact.age` trigger says how many `days` after creation it fires",
        )),
        (TriggerKind::ContactAge, Some(days)) if days > MAX_AGE_DAYS => {
            errors.push(FieldError::new(
                "days",
                "out_of_range",
                format!("`days` is 0 to {MAX_AGE_DAYS}"),
            ))
        }
        (TriggerKind::ContactAge, Some(_)) => {}
        (_, Some(_)) => errors.push(FieldError::new(
            "days",
            "not_allowed",
            "`days` applies to `contact.age` triggers",
        )),
        (_, None) => {}
    }
    if spec.at.is_some() && kind != TriggerKind::ContactAge {
        errors.push(FieldError::new(
            "at",
            "not_allowed",
            "`at` applies to `contact.age` triggers",
        ));
    }
    if TimeZone::get(&spec.timezone).is_err() {
        errors.push(FieldError::new(
            "timezone",
            "unknown_time_zone",
            "`timezone` must be an IANA time zone such as Europe/Paris",
        ));
    }
    let act = match spec.drip_id {
        Some(drip_id) => {
            if spec.template_id.is_some() || spec.body.is_some() || !spec.variables.is_empty() {
                errors.push(FieldError::new(
                    "drip_id",
                    "drip_or_message",
                    "give `drip_id`, or `template_id` or `body`, not both",
                ));
            }
            match engine.store.get_drip(scope, drip_id).await? {
                Some(drip) => {
                    let drip_spec = DripSpec::of(&drip)?;
                    Some(Act::Enrol(Box::new(drip), drip_spec))
                }
                None => {
                    errors.push(FieldError::new(
                        "drip_id",
                        "unknown_drip",
                        "names no drip of this organization",
                    ));
                    None
                }
            }
        }
        None => match check_content(
            engine,
            spec.sender(org, scope, api_key_id),
            spec.content(),
            "",
        )
        .await?
        {
            Ok(ready) => Some(Act::Send(ready)),
            Err(found) => {
                errors.extend(found);
                None
            }
        },
    };
    Ok(match act {
        Some(act) if errors.is_empty() => Ok(Checked { spec, rule, act }),
        _ => Err(errors),
    })
}

/// How [`create`] went.
pub type Created = crate::Created<Trigger>;

/// Create a trigger, active. A contact trigger looks at contacts created from now on.
pub async fn create(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    spec: TriggerSpec,
    idempotency: Option<IdempotencyRecord>,
) -> Result<Result<Created, Vec<FieldError>>, StoreError> {
    let checked = match check(engine, org, scope, api_key_id, spec).await? {
        Ok(checked) => checked,
        Err(errors) => return Ok(Err(errors)),
    };
    let now = engine.clock.now();
    let kind = checked.spec.kind();
    let trigger = Trigger {
        id: Uuid::now_v7(),
        org_id: org.id,
        mode: scope.mode,
        name: checked.spec.name.trim().to_owned(),
        kind,
        event: (kind == TriggerKind::Event).then(|| checked.spec.event.clone()),
        active: true,
        spec: checked.spec.to_json(),
        api_key_id,
        swept_until: now,
        created_at: now,
        updated_at: now,
    };
    let creation = engine
        .store
        .create_trigger(&trigger, idempotency.as_ref(), now)
        .await?;
    Ok(Ok(Created::of(creation, trigger)))
}

/// Why a change to a trigger was refused.
#[derive(Debug)]
pub enum Refused {
    NotFound,
    Invalid(Vec<FieldError>),
}

/// Replace a trigger's fields with those in `patch` (`active` switches it off and on). What
/// it listens for (`event`) stays as created.
pub async fn update(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    id: Uuid,
    mut patch: Map<String, Value>,
) -> Result<Result<Trigger, Refused>, StoreError> {
    let active = match patch.remove("active") {
        None => None,
        Some(Value::Bool(active)) => Some(active),
        Some(_) => {
            return Ok(Err(Refused::Invalid(vec![FieldError::new(
                "active",
                "invalid",
                "`active` is true or false",
            )])));
        }
    };
    for _ in 0..8 {
        let Some(current) = engine.store.get_trigger(scope, id).await? else {
            return Ok(Err(Refused::NotFound));
        };
        if patch
            .get("event")
            .is_some_and(|e| current.spec.get("event") != Some(e))
        {
            return Ok(Err(Refused::Invalid(vec![FieldError::new(
                "event",
                "immutable",
                "what a trigger listens for cannot change; create another trigger",
            )])));
        }
        let spec: TriggerSpec = match parse_json(merge_patch(&current.spec, &patch)) {
            Ok(spec) => spec,
            Err(error) => return Ok(Err(Refused::Invalid(vec![error]))),
        };
        let checked = match check(engine, org, scope, current.api_key_id, spec).await? {
            Ok(checked) => checked,
            Err(errors) => return Ok(Err(Refused::Invalid(errors))),
        };
        let now = engine.clock.now();
        let active = active.unwrap_or(current.active);
        let updated = Trigger {
            name: checked.spec.name.trim().to_owned(),
            active,
            spec: checked.spec.to_json(),
            updated_at: now.max(current.updated_at + SignedDuration::from_micros(1)),
            ..current.clone()
        };
        if engine
            .store
            .update_trigger(&updated, current.updated_at)
            .await?
        {
            if active && !current.active {
                // Switched back on: contacts that came or aged while it was off are not
                // caught up on.
                engine.store.set_swept(updated.id, now).await?;
            }
            return Ok(Ok(updated));
        }
    }
    Err(StoreError::Conflict(
        "the trigger kept changing; try again".into(),
    ))
}

/// Fire `checked` (the spec of `trigger`) for `to` with `key`, unless it already fired with
/// that key (the store decides; callers that may repeat a key look first, to spare the
/// composing); `data` fills the template after the trigger's own variables.
pub(crate) async fn fire(
    engine: &Engine,
    org: &Organization,
    trigger: &Trigger,
    checked: &Checked,
    to: &Recipient,
    key: &str,
    data: Option<&Map<String, Value>>,
) -> Result<Fired, StoreError> {
    let store = engine.store.as_ref();
    let now = engine.clock.now();
    let mut firing = Firing {
        id: Uuid::now_v7(),
        org_id: org.id,
        trigger_id: trigger.id,
        key: key.to_owned(),
        contact_id: to.contact.as_ref().map(|c| c.id),
        phone: Some(to.phone.clone()),
        outcome: String::new(),
        message_id: None,
        enrollment_id: None,
        created_at: now,
    };
    let spec = &checked.spec;
    let action = match &checked.act {
        Act::Enrol(drip, drip_spec) => {
            firing.outcome = "enrolled".into();
            FiringAction::Enrol(Box::new(enrollment(drip, drip_spec, to, "trigger", now)))
        }
        Act::Send(ready) => match compose(
            engine,
            spec.sender(org, trigger.scope(), trigger.api_key_id),
            ready,
            data,
            to,
        )
        .await?
        {
            Ok(message) => {
                firing.outcome = "sent".into();
                FiringAction::Send(Box::new(message))
            }
            Err(skip) => {
                firing.outcome = skip;
                FiringAction::Nothing
            }
        },
    };
    match store.fire(&firing, action).await? {
        Fired::Refused(refusal) => {
            // Recorded as not sent: a firing is about a moment, not worth sending late.
            firing.outcome = crate::broadcasts::refusal_code(&refusal);
            store.fire(&firing, FiringAction::Nothing).await
        }
        fired => {
            if let Fired::New(f) = &fired
                && f.message_id.is_some()
            {
                engine.wake.notify_one();
            }
            Ok(fired)
        }
    }
}

/// A named event as posted to `/v1/events`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub contact_id: Option<Uuid>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub data: Map<String, Value>,
}

/// What an event did: each trigger it set off, and what that firing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventOutcome {
    pub key: String,
    /// Each firing, and whether it happened before (the same key was posted already).
    pub firings: Vec<(Firing, bool)>,
}

/// Record a named event for a contact or number: every active trigger listening for it fires,
/// once per `key` (a fresh key when none is given, so each such post fires).
pub async fn record_event(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    event: EventRequest,
    key: Option<String>,
) -> Result<Result<EventOutcome, Vec<FieldError>>, StoreError> {
    let mut errors = Vec::new();
    if !event_name_ok(&event.name) || event.name.starts_with("contact.") {
        errors.push(FieldError::new(
            "name",
            "invalid_event",
            "`name` is 1 to 100 letters, digits and `._:-`, not starting `contact.`",
        ));
    }
    if let Some(key) = &key
        && (key.is_empty() || key.len() > MAX_KEY)
    {
        errors.push(FieldError::new(
            "Idempotency-Key",
            "invalid",
            format!("an idempotency key is 1 to {MAX_KEY} characters"),
        ));
    }
    if let Err(found) = crate::templates::variables(None, &event.data) {
        errors.extend(found.into_iter().map(|e| {
            let field = e.field.replacen("variables", "data", 1);
            FieldError::new(field, e.code, e.message.replacen("variables", "data", 1))
        }));
    }
    let to = match (event.contact_id, &event.phone) {
        (Some(id), None) => match engine.store.contacts_by_id(org.id, &[id]).await?.pop() {
            Some(contact) => Some(Recipient::of(contact)),
            None => {
                errors.push(FieldError::new(
                    "contact_id",
                    "unknown_contact",
                    "names no contact of this organization",
                ));
                None
            }
        },
        (None, Some(phone)) => match recipient_of_phone(engine, org, phone).await? {
            Some(to) => Some(to),
            None => {
                errors.push(FieldError::new(
                    "phone",
                    "invalid_phone",
                    "`phone` is not a valid phone number",
                ));
                None
            }
        },
        _ => {
            errors.push(FieldError::new(
                "contact_id",
                "contact_or_phone",
                "give exactly one of `contact_id` and `phone`",
            ));
            None
        }
    };
    let Some(to) = to.filter(|_| errors.is_empty()) else {
        return Ok(Err(errors));
    };
    let key = key.unwrap_or_else(|| Uuid::now_v7().to_string());
    let mut firings = Vec::new();
    for trigger in engine.store.event_triggers(scope, &event.name).await? {
        let Some(checked) = ready(engine, org, &trigger).await? else {
            continue;
        };
        // A repeated key answers the first firing without composing anything.
        if let Some(previous) = engine.store.get_firing(org.id, trigger.id, &key).await? {
            firings.push((previous, true));
            continue;
        }
        match fire(
            engine,
            org,
            &trigger,
            &checked,
            &to,
            &key,
            Some(&event.data),
        )
        .await?
        {
            Fired::New(firing) => firings.push((firing, false)),
            Fired::Already(firing) => firings.push((firing, true)),
            Fired::Refused(_) => {}
        }
    }
    Ok(Ok(EventOutcome { key, firings }))
}

/// A stored trigger checked again for firing; `None` (and a warning) when what it names is gone
/// (its template deleted or deactivated, its drip deleted).
pub(crate) async fn ready(
    engine: &Engine,
    org: &Organization,
    trigger: &Trigger,
) -> Result<Option<Checked>, StoreError> {
    let spec = TriggerSpec::of(trigger)?;
    match check(engine, org, trigger.scope(), trigger.api_key_id, spec).await? {
        Ok(checked) => Ok(Some(checked)),
        Err(errors) => {
            tracing::warn!(trigger_id = %trigger.id, ?errors, "trigger cannot fire");
            Ok(None)
        }
    }
}

/// How far a `contact.age` sweep looks beyond the trigger's days: a contact's due time is its
/// creation day plus `days` at a time of day, in a zone up to 14 hours away.
pub(crate) const AGE_SLACK: SignedDuration = SignedDuration::from_hours(24 + 14 + 2);
