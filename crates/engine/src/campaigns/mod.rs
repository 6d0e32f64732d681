//! Campaigns: what a campaign says (its [`CampaignSpec`]), checking it, and its lifecycle.
//!
//! A campaign is created as a `draft`, edited while `draft` or `scheduled`, and moved through
//! `scheduled → running ⇄ paused → completed | cancelled` by [`act`]. Running is done by
//! [`runner`]: each occurrence becomes a run whose audience is snapshotted, then released to
//! the queue under the campaign's throttle. [`report`] answers estimates and analytics.
//!
//! Pause and cancel are exact. The status change commits first (from then on no release is
//! stored, and queued messages are held), then every dispatcher holds back the run's messages
//! it had claimed but not yet handed over, and the answer waits until the run has nothing in
//! flight (at most [`SETTLE`]). So once a pause is acknowledged, no message of the campaign
//! reaches a provider until it is resumed.

pub mod report;
pub mod runner;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use herald_domain::message::MessageType;
use herald_domain::recurrence::Recurrence;
use herald_domain::template::Template;
use herald_store::{
    Campaign, CampaignRefusal, CampaignRun, CampaignStatus, IdempotencyRecord, Lease, Organization,
    RunPhase, Scope, StoreError, Transition,
};
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::Engine;
use crate::accounts::FieldError;
use crate::broadcasts::{self, Audience as Resolvable, Recipient};
use crate::intake::SendRequest;

/// How long a pause or cancel waits for the run's messages already in a provider call.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
/// Most variants a campaign may have.
pub const MAX_VARIANTS: usize = 10;
/// Most entries an audience may name (a list or segment counts one).
pub const MAX_ENTRIES: usize = broadcasts::MAX_ENTRIES;
/// Released per batch when the campaign sets no batch size.
pub const DEFAULT_BATCH: u32 = 500;
/// Largest batch a campaign may set.
pub const MAX_BATCH: u32 = 5_000;

/// What kind of campaign it is; `promotional` campaigns send promotional messages (consent and
/// quiet hours apply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignKind {
    #[default]
    Blast,
    Drip,
    Reminder,
    Promotional,
}

/// How a campaign's messages rank in the queue against other traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    /// Added to the message type's own priority.
    fn offset(self) -> i16 {
        match self {
            Priority::Low => -5,
            Priority::Normal => 0,
            Priority::High => 5,
        }
    }
}

/// Who a campaign goes to. Every entry is resolved when a run starts; a number reached twice
/// counts once; anyone in an excluded list or segment is left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudienceSpec {
    pub lists: Vec<Uuid>,
    pub segments: Vec<Uuid>,
    pub contacts: Vec<Uuid>,
    pub lead_statuses: Vec<String>,
    pub phones: Vec<String>,
    pub exclude_lists: Vec<Uuid>,
    pub exclude_segments: Vec<Uuid>,
}

impl AudienceSpec {
    /// The entries to resolve, in the order they are resolved.
    pub fn entries(&self) -> Vec<Recipient> {
        let mut entries = Vec::new();
        entries.extend(self.contacts.iter().copied().map(Recipient::Contact));
        entries.extend(self.phones.iter().cloned().map(Recipient::Phone));
        entries.extend(self.lists.iter().copied().map(Recipient::List));
        entries.extend(self.segments.iter().copied().map(Recipient::Segment));
        entries.extend(
            self.lead_statuses
                .iter()
                .cloned()
                .map(Recipient::LeadStatus),
        );
        entries
    }

    /// The excluded lists and segments, as entries.
    pub fn exclusions(&self) -> Vec<Recipient> {
        let mut entries: Vec<Recipient> = self
            .exclude_lists
            .iter()
            .copied()
            .map(Recipient::List)
            .collect();
        entries.extend(
            self.exclude_segments
                .iter()
                .copied()
                .map(Recipient::Segment),
        );
        entries
    }

    fn len(&self) -> usize {
        self.lists.len()
            + self.segments.len()
            + self.contacts.len()
            + self.lead_statuses.len()
            + self.phones.len()
            + self.exclude_lists.len()
            + self.exclude_segments.len()
    }
}

/// One version of the message, sent to a share of the audience given by its weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<Uuid>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// When a campaign runs: `at` (a wall-clock time) in `timezone`, or, with
/// `recipient_time_zone`, at that wall-clock time in each recipient's own zone (the contact's
/// zone, else their number's country when it has a single zone, else `timezone`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub at: DateTime,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub recipient_time_zone: bool,
}

fn utc() -> String {
    "UTC".into()
}

/// Repeats of a scheduled campaign: an RFC 5545 RRULE anchored at the schedule's time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurrenceSpec {
    pub rrule: String,
}

/// What picks an A/B test's winner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WinnerMetric {
    /// The most replies per message sent.
    #[default]
    Replies,
    /// The highest share of messages delivered.
    DeliveryRate,
}

/// Send the variants to a test fraction of the audience first; after `wait`, the variant that
/// did best goes to everyone else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbTest {
    /// Share of the audience in the test, above 0 and at most 0.5.
    pub fraction: f64,
    /// An ISO 8601 duration from the run's time to choosing the winner (`PT4H`).
    pub wait: String,
    #[serde(default)]
    pub metric: WinnerMetric,
}

impl AbTest {
    /// How long after the occurrence the winner is chosen.
    pub fn wait(&self) -> Option<SignedDuration> {
        crate::automation::parse_delay(&self.wait, MAX_AB_WAIT_DAYS)
            .ok()
            .and_then(|span| {
                span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
                    .ok()
            })
    }

    /// Whether `phone` is in the test group (deterministic, like the variant).
    pub fn in_test(&self, campaign_id: Uuid, phone: &str) -> bool {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(b"ab-test")
            .chain_update(campaign_id.as_bytes())
            .chain_update(phone.as_bytes())
            .finalize();
        let draw = u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"));
        (draw as f64 / u64::MAX as f64) < self.fraction
    }
}

/// Longest wait for an A/B test's winner.
pub const MAX_AB_WAIT_DAYS: i64 = 7;

/// How fast a campaign releases its messages, on top of any provider's own limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Throttle {
    pub send_rate_per_minute: Option<u32>,
    pub batch_size: Option<u32>,
}

/// Everything a campaign says, as the API takes and shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub kind: CampaignKind,
    #[serde(default)]
    pub priority: Priority,
    /// Defaults to `promotional` for promotional campaigns and `transactional` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<MessageType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<Uuid>,
    /// Fixed template variables; a contact's own fields fill the rest.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub variables: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
    /// Test the variants on a fraction first, then send the winner to the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_test: Option<AbTest>,
    #[serde(default)]
    pub audience: AudienceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurrence: Option<RecurrenceSpec>,
    #[serde(default)]
    pub throttle: Throttle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl CampaignSpec {
    pub fn message_type(&self) -> MessageType {
        self.message_type.unwrap_or(match self.kind {
            CampaignKind::Promotional => MessageType::Promotional,
            _ => MessageType::Transactional,
        })
    }

    /// The variants to send: those given, or the one body or template.
    pub fn effective_variants(&self) -> Vec<Variant> {
        if !self.variants.is_empty() {
            return self.variants.clone();
        }
        vec![Variant {
            name: "default".into(),
            body: self.body.clone(),
            template_id: self.template_id,
            weight: 1,
        }]
    }

    /// The send of `body` to a recipient's stored number (valid when it was snapshotted, so
    /// not parsed again).
    pub(crate) fn send_request(
        &self,
        phone: &str,
        country: Option<herald_domain::phone::Region>,
        body: &Option<String>,
    ) -> SendRequest {
        SendRequest {
            to: Some(phone.to_owned()),
            to_number: herald_domain::phone::PhoneNumber::stored(phone, country),
            body: body.clone(),
            kind: self.message_type(),
            from: self.from.clone(),
            ..Default::default()
        }
    }

    pub fn batch_size(&self) -> u32 {
        self.throttle
            .batch_size
            .unwrap_or(DEFAULT_BATCH)
            .clamp(1, MAX_BATCH)
    }

    /// The schedule's recurrence, when it has one.
    pub fn recurrence(&self) -> Option<Recurrence> {
        let schedule = self.schedule.as_ref()?;
        let rule = self.recurrence.as_ref()?;
        Recurrence::new(&rule.rrule, schedule.at, &schedule.timezone).ok()
    }

    /// The spec as stored.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a campaign spec serializes")
    }

    pub fn from_campaign(campaign: &Campaign) -> Result<CampaignSpec, StoreError> {
        serde_json::from_value(campaign.spec.clone())
            .map_err(|e| StoreError::Corrupt(format!("campaign {} spec: {e}", campaign.id)))
    }
}

/// The zone farthest ahead of UTC: the first place any wall-clock time happens.
fn earliest_zone() -> TimeZone {
    TimeZone::fixed(jiff::tz::offset(14))
}

/// An occurrence of the schedule: its instant in the schedule's zone, and the instant its run
/// starts (earlier, when each recipient gets it at that wall-clock time in their own zone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub at: Timestamp,
    pub starts: Timestamp,
}

impl Schedule {
    pub fn zone(&self) -> Option<TimeZone> {
        TimeZone::get(&self.timezone).ok()
    }

    /// The occurrence whose wall-clock time is `civil`.
    pub fn occurrence(&self, civil: DateTime) -> Option<Occurrence> {
        let at = civil.to_zoned(self.zone()?).ok()?.timestamp();
        let starts = if self.recipient_time_zone {
            civil.to_zoned(earliest_zone()).ok()?.timestamp()
        } else {
            at
        };
        Some(Occurrence { at, starts })
    }

    /// The occurrence whose run starts at `starts` (the inverse of [`Schedule::occurrence`]).
    pub fn occurrence_starting(&self, starts: Timestamp) -> Option<Occurrence> {
        let civil = if self.recipient_time_zone {
            starts.to_zoned(earliest_zone()).datetime()
        } else {
            starts.to_zoned(self.zone()?).datetime()
        };
        self.occurrence(civil)
    }
}

/// The occurrences of a campaign's schedule from `after` (exclusive), at most `limit`.
pub fn occurrences_after(spec: &CampaignSpec, after: Timestamp, limit: usize) -> Vec<Occurrence> {
    let Some(schedule) = &spec.schedule else {
        return Vec::new();
    };
    let Some(zone) = schedule.zone() else {
        return Vec::new();
    };
    match spec.recurrence() {
        Some(recurrence) => {
            // Runs start up to a day before the occurrence (recipient time zones): look from a
            // day earlier and keep those whose run starts after `after`.
            let from = after - SignedDuration::from_hours(26);
            recurrence
                .after(from, limit + 64)
                .into_iter()
                .filter_map(|at| schedule.occurrence(at.to_zoned(zone.clone()).datetime()))
                .filter(|o| o.starts > after)
                .take(limit)
                .collect()
        }
        None => schedule
            .occurrence(schedule.at)
            .filter(|o| o.starts > after)
            .into_iter()
            .collect(),
    }
}

/// The occurrence after the one at `at` (a run's), when the schedule recurs. Its run may be
/// due at once: a run that ends late never makes the campaign skip an occurrence.
pub fn next_occurrence(spec: &CampaignSpec, at: Timestamp) -> Option<Occurrence> {
    let schedule = spec.schedule.as_ref()?;
    let zone = schedule.zone()?;
    let next = spec.recurrence()?.after(at, 1).into_iter().next()?;
    schedule.occurrence(next.to_zoned(zone).datetime())
}

/// Runs whose messages dispatchers in this process must hold back (their campaign is paused or
/// cancelled). Filled by this process's pauses and by dispatchers reading campaign states.
#[derive(Debug, Default)]
pub struct CampaignHolds {
    held: Mutex<HashSet<Uuid>>,
}

impl CampaignHolds {
    pub fn hold(&self, run: Uuid) {
        self.held.lock().expect("holds lock").insert(run);
    }

    pub fn release(&self, run: Uuid) {
        self.held.lock().expect("holds lock").remove(&run);
    }

    pub fn is_held(&self, run: Uuid) -> bool {
        self.held.lock().expect("holds lock").contains(&run)
    }
}

/// A spec checked against the organization's data, ready to resolve.
pub(crate) struct Checked {
    pub spec: CampaignSpec,
    pub variants: Vec<CheckedVariant>,
    pub audience: Resolvable,
    pub exclusions: Resolvable,
}

pub(crate) struct CheckedVariant {
    pub body: Option<String>,
    pub template: Option<Template>,
    pub weight: u32,
}

fn invalid(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, code, message)
}

/// Every check that can refuse a campaign spec, all reported at once. `require_audience`
/// asks for at least one recipient entry (to schedule or start; a draft may be empty).
pub(crate) async fn check(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    spec: CampaignSpec,
    require_audience: bool,
) -> Result<Result<Checked, Vec<FieldError>>, StoreError> {
    let store = engine.store.as_ref();
    let mut errors = Vec::new();
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        errors.push(invalid(
            "name",
            "invalid_name",
            "`name` must be 1 to 200 characters",
        ));
    }
    if spec
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 2_000)
    {
        errors.push(invalid(
            "description",
            "too_long",
            "`description` is at most 2,000 characters",
        ));
    }
    if spec.kind == CampaignKind::Promotional
        && spec.message_type == Some(MessageType::Transactional)
    {
        errors.push(invalid(
            "message_type",
            "promotional_campaign",
            "a promotional campaign sends promotional messages",
        ));
    }

    // Content: one body or template, or variants each with one.
    let has_content = spec.body.is_some() || spec.template_id.is_some();
    if !spec.variants.is_empty() && has_content {
        errors.push(invalid(
            "variants",
            "variants_or_body",
            "give `variants`, or one `body` or `template_id`, not both",
        ));
    }
    if spec.variants.is_empty() && spec.body.is_some() == spec.template_id.is_some() {
        errors.push(invalid(
            "body",
            "body_or_template",
            "give exactly one of `body` and `template_id` (or `variants`)",
        ));
    }
    if let Some(test) = &spec.ab_test {
        if spec.variants.is_empty() {
            errors.push(invalid(
                "ab_test",
                "variants_required",
                "an A/B test needs `variants`",
            ));
        }
        if !(test.fraction > 0.0 && test.fraction <= 0.5) {
            errors.push(invalid(
                "ab_test.fraction",
                "out_of_range",
                "`fraction` is above 0 and at most 0.5",
            ));
        }
        if let Err(message) = crate::automation::parse_delay(&test.wait, MAX_AB_WAIT_DAYS) {
            errors.push(invalid("ab_test.wait", "invalid_wait", message));
        }
    }
    if spec.variants.len() == 1 || spec.variants.len() > MAX_VARIANTS {
        errors.push(invalid(
            "variants",
            "variant_count",
            format!("an A/B test has 2 to {MAX_VARIANTS} variants"),
        ));
    }
    let mut names = HashSet::new();
    let mut variants = Vec::new();
    let kind = spec.message_type();
    for (i, variant) in spec.effective_variants().iter().enumerate() {
        let field = |name: &str| {
            if spec.variants.is_empty() {
                name.to_owned()
            } else {
                format!("variants[{i}].{name}")
            }
        };
        if !spec.variants.is_empty() {
            if variant.name.trim().is_empty() || !names.insert(variant.name.clone()) {
                errors.push(invalid(
                    field("name"),
                    "invalid_variant_name",
                    "each variant needs its own non-empty name",
                ));
            }
            if variant.weight == 0 || variant.weight > 10_000 {
                errors.push(invalid(
                    field("weight"),
                    "invalid_weight",
                    "`weight` is 1 to 10,000",
                ));
            }
            if variant.body.is_some() == variant.template_id.is_some() {
                errors.push(invalid(
                    field("body"),
                    "body_or_template",
                    "give exactly one of `body` and `template_id`",
                ));
            }
        }
        let mut template = None;
        if let Some(id) = variant.template_id {
            match crate::templates::sendable(store, org.id, id, &field("template_id")).await? {
                Ok((parsed, _)) => template = Some(parsed),
                Err(error) => errors.push(error),
            }
        }
        // The body (or a stand-in for a template) checked as intake would for any recipient.
        let sample_body = variant
            .body
            .clone()
            .or_else(|| variant.template_id.map(|_| "x".to_owned()));
        if let Some(body) = sample_body {
            let sample = SendRequest {
                body: Some(body),
                kind,
                from: spec.from.clone(),
                ..Default::default()
            };
            for mut e in broadcasts::sample_problems(engine, org, scope, api_key_id, sample) {
                if e.field == "body" {
                    e.field = field("body");
                }
                errors.push(e);
            }
        }
        variants.push(CheckedVariant {
            body: variant.body.clone(),
            template,
            weight: variant.weight,
        });
    }
    if let Err(found) = crate::templates::variables(None, &spec.variables) {
        errors.extend(found);
    }

    // Audience.
    if spec.audience.len() > MAX_ENTRIES {
        errors.push(invalid(
            "audience",
            "too_many_entries",
            format!("an audience names at most {MAX_ENTRIES} entries"),
        ));
    }
    if require_audience && spec.audience.entries().is_empty() {
        errors.push(invalid(
            "audience",
            "required",
            "the audience names no one: give lists, segments, contacts, lead statuses or phones",
        ));
    }
    let a = &spec.audience;
    let included = [
        ("audience.contacts", a.contacts.len()),
        ("audience.phones", a.phones.len()),
        ("audience.lists", a.lists.len()),
        ("audience.segments", a.segments.len()),
        ("audience.lead_statuses", a.lead_statuses.len()),
    ];
    // A lead status is named by the entry itself: there is no `.status` in the audience.
    let (audience, found) = broadcasts::check_recipients(store, org.id, &a.entries(), |i, sub| {
        let entry = broadcasts::entry_field(&included, i);
        if sub == "status" {
            entry
        } else {
            format!("{entry}.{sub}")
        }
    })
    .await?;
    errors.extend(found);
    let excluded = [
        ("audience.exclude_lists", a.exclude_lists.len()),
        ("audience.exclude_segments", a.exclude_segments.len()),
    ];
    let (exclusions, found) =
        broadcasts::check_recipients(store, org.id, &a.exclusions(), |i, sub| {
            format!("{}.{sub}", broadcasts::entry_field(&excluded, i))
        })
        .await?;
    errors.extend(found);

    // Schedule and recurrence.
    if let Some(schedule) = &spec.schedule
        && schedule.zone().is_none()
    {
        errors.push(invalid(
            "schedule.timezone",
            "unknown_time_zone",
            format!("{:?} is not an IANA time zone", schedule.timezone),
        ));
    }
    if let Some(recurrence) = &spec.recurrence {
        match &spec.schedule {
            None => errors.push(invalid(
                "recurrence",
                "schedule_required",
                "a recurrence repeats the schedule: give `schedule.at` too",
            )),
            Some(schedule) if schedule.zone().is_some() => {
                if let Err(e) = Recurrence::new(&recurrence.rrule, schedule.at, &schedule.timezone)
                {
                    errors.push(invalid("recurrence.rrule", "invalid_rrule", e.to_string()));
                }
            }
            Some(_) => {}
        }
    }

    // Throttle and retries.
    if let Some(rate) = spec.throttle.send_rate_per_minute
        && !(1..=1_000_000).contains(&rate)
    {
        errors.push(invalid(
            "throttle.send_rate_per_minute",
            "out_of_range",
            "`send_rate_per_minute` is 1 to 1,000,000",
        ));
    }
    if let Some(size) = spec.throttle.batch_size
        && !(1..=MAX_BATCH).contains(&size)
    {
        errors.push(invalid(
            "throttle.batch_size",
            "out_of_range",
            format!("`batch_size` is 1 to {MAX_BATCH}"),
        ));
    }
    if spec.max_retries.is_some_and(|n| n > 20) {
        errors.push(invalid(
            "max_retries",
            "out_of_range",
            "`max_retries` is 0 to 20",
        ));
    }

    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    Ok(Ok(Checked {
        spec,
        variants,
        audience,
        exclusions,
    }))
}

/// `audience[i]` as resolved names the entry by its place in [`AudienceSpec::entries`]; the
/// client named it by its own field.
/// How [`create`] went.
pub type Created = crate::Created<Campaign>;

/// Create a campaign as a draft.
pub async fn create(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    spec: CampaignSpec,
    idempotency: Option<IdempotencyRecord>,
) -> Result<Result<Created, Vec<FieldError>>, StoreError> {
    let checked = match check(engine, org, scope, api_key_id, spec, false).await? {
        Ok(checked) => checked,
        Err(errors) => return Ok(Err(errors)),
    };
    let now = engine.clock.now();
    let campaign = Campaign {
        id: Uuid::now_v7(),
        org_id: org.id,
        mode: scope.mode,
        name: checked.spec.name.trim().to_owned(),
        status: CampaignStatus::Draft,
        spec: checked.spec.to_json(),
        api_key_id,
        next_run_at: None,
        current_run: None,
        runs: 0,
        error: None,
        created_at: now,
        updated_at: now,
    };
    let creation = engine
        .store
        .create_campaign(&campaign, idempotency.as_ref(), now)
        .await?;
    Ok(Ok(Created::of(creation, campaign)))
}

/// Why a change to a campaign was refused.
#[derive(Debug)]
pub enum Refused {
    NotFound,
    /// Not allowed in the campaign's current status.
    State(CampaignStatus),
    Invalid(Vec<FieldError>),
}

impl From<CampaignRefusal> for Refused {
    fn from(refusal: CampaignRefusal) -> Refused {
        match refusal {
            CampaignRefusal::NotFound => Refused::NotFound,
            CampaignRefusal::State(status) => Refused::State(status),
        }
    }
}

/// Replace a campaign's spec with `patch` merged into it (top-level fields replace), while it
/// is `draft` or `scheduled`. A scheduled campaign's next run follows its new schedule.
pub async fn update(
    engine: &Engine,
    org: &Organization,
    scope: Scope,
    id: Uuid,
    patch: Map<String, Value>,
) -> Result<Result<Campaign, Refused>, StoreError> {
    for _ in 0..8 {
        let Some(current) = engine.store.get_campaign(scope, id).await? else {
            return Ok(Err(Refused::NotFound));
        };
        if !current.status.editable() {
            return Ok(Err(Refused::State(current.status)));
        }
        let merged = crate::automation::merge_patch(&current.spec, &patch);
        let spec: CampaignSpec = match parse_spec(merged) {
            Ok(spec) => spec,
            Err(error) => return Ok(Err(Refused::Invalid(vec![error]))),
        };
        let scheduled = current.status == CampaignStatus::Scheduled;
        let checked = match check(engine, org, scope, current.api_key_id, spec, scheduled).await? {
            Ok(checked) => checked,
            Err(errors) => return Ok(Err(Refused::Invalid(errors))),
        };
        let next_run_at = if scheduled {
            match first_occurrence(&checked.spec, engine.clock.now()) {
                Ok(at) => Some(at),
                Err(error) => return Ok(Err(Refused::Invalid(vec![error]))),
            }
        } else {
            None
        };
        let updated = Campaign {
            name: checked.spec.name.trim().to_owned(),
            spec: checked.spec.to_json(),
            next_run_at,
            updated_at: engine
                .clock
                .now()
                .max(current.updated_at + SignedDuration::from_micros(1)),
            ..current.clone()
        };
        match engine
            .store
            .update_campaign(&updated, current.updated_at)
            .await?
        {
            Ok(campaign) => return Ok(Ok(campaign)),
            Err(CampaignRefusal::State(status)) if status.editable() => {
                // Changed by someone else since it was read: read it again and re-apply.
                continue;
            }
            Err(refusal) => return Ok(Err(refusal.into())),
        }
    }
    Err(StoreError::Conflict(
        "the campaign kept changing; try again".into(),
    ))
}

/// Parse a spec, naming the field at fault.
pub fn parse_spec(value: Value) -> Result<CampaignSpec, FieldError> {
    crate::automation::parse_json(value)
}

/// When the next run of a campaign about to be scheduled starts.
fn first_occurrence(spec: &CampaignSpec, now: Timestamp) -> Result<Timestamp, FieldError> {
    if spec.schedule.is_none() {
        return Err(FieldError::new(
            "schedule",
            "schedule_required",
            "a campaign is scheduled for `schedule.at`; give it, or start the campaign now",
        ));
    }
    // A one-off schedule in the past would never run; a recurrence runs from its next time.
    occurrences_after(spec, now - SignedDuration::from_micros(1), 1)
        .first()
        .map(|o| o.starts)
        .ok_or_else(|| {
            FieldError::new(
                "schedule.at",
                "in_the_past",
                "the schedule has no time left in the future",
            )
        })
}

/// A lifecycle action asked for through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Schedule,
    Start,
    Pause,
    Resume,
    Cancel,
}

impl Action {
    pub fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "schedule" => Action::Schedule,
            "start" => Action::Start,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "cancel" => Action::Cancel,
            _ => return None,
        })
    }
}

/// Make a lifecycle change. Pause and cancel answer once nothing of the campaign is in a
/// provider call any more (or after [`SETTLE`]).
pub async fn act(
    engine: &Arc<Engine>,
    org: &Organization,
    scope: Scope,
    id: Uuid,
    action: Action,
) -> Result<Result<Campaign, Refused>, StoreError> {
    let Some(current) = engine.store.get_campaign(scope, id).await? else {
        return Ok(Err(Refused::NotFound));
    };
    let now = engine.clock.now();
    let transition = match action {
        Action::Schedule | Action::Start => {
            // Only a campaign that can run may be scheduled or started.
            let spec = CampaignSpec::from_campaign(&current)?;
            if let Err(errors) =
                check(engine, org, scope, current.api_key_id, spec.clone(), true).await?
            {
                if !current.status.editable() {
                    return Ok(Err(Refused::State(current.status)));
                }
                return Ok(Err(Refused::Invalid(errors)));
            }
            if action == Action::Schedule {
                match first_occurrence(&spec, now) {
                    Ok(next_run_at) => Transition::Schedule { next_run_at },
                    Err(error) if current.status == CampaignStatus::Draft => {
                        return Ok(Err(Refused::Invalid(vec![error])));
                    }
                    Err(_) => return Ok(Err(Refused::State(current.status))),
                }
            } else {
                Transition::Start {
                    run: Box::new(new_run(engine, &current, now, now)),
                }
            }
        }
        Action::Pause => Transition::Pause,
        Action::Resume => Transition::Resume,
        Action::Cancel => Transition::Cancel,
    };
    // This process's dispatchers stop handing the run's messages over before the pause
    // commits, so none slips through while the answer waits.
    let run = current.current_run;
    if let (Some(run), Action::Pause | Action::Cancel) = (run, action) {
        engine.campaign_holds.hold(run);
    }
    let changed = engine
        .store
        .transition_campaign(scope, id, &transition, now)
        .await?;
    let campaign = match changed {
        Ok(campaign) => campaign,
        Err(refusal) => {
            if let (Some(run), Action::Pause | Action::Cancel) = (run, action) {
                // Refused: the hold goes only if the campaign is not paused or cancelled.
                if let Some(c) = engine.store.get_campaign(scope, id).await?
                    && c.status == CampaignStatus::Running
                {
                    engine.campaign_holds.release(run);
                }
            }
            return Ok(Err(refusal.into()));
        }
    };
    match action {
        Action::Pause | Action::Cancel => {
            if let Some(run) = run {
                settle(engine, run).await?;
                if action == Action::Cancel {
                    // Messages handed back by dispatchers after the cancel are canceled too.
                    engine
                        .store
                        .sweep_canceled_run(run, engine.clock.now())
                        .await?;
                }
            }
        }
        Action::Resume => {
            if let Some(run) = run {
                engine.campaign_holds.release(run);
                // A dispatcher that read the campaign as paused just before this may still
                // hand a message back held, after the resume queued the others again: once
                // its result is surely recorded, queue any such message again.
                let engine = engine.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(SETTLE * 2).await;
                    match engine.store.unhold_run(run, engine.clock.now()).await {
                        Ok(0) => {}
                        Ok(_) => engine.wake.notify_one(),
                        Err(error) => {
                            tracing::error!(%error, run_id = %run, "cannot queue held messages again")
                        }
                    }
                });
            }
            engine.campaign_wake.notify_one();
            engine.wake.notify_one();
        }
        Action::Start => engine.campaign_wake.notify_one(),
        Action::Schedule => {}
    }
    Ok(Ok(campaign))
}

/// Wait until none of the run's messages is in a provider call (bounded by [`SETTLE`]).
async fn settle(engine: &Engine, run: Uuid) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        if engine.store.in_flight(run).await? == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(run_id = %run, "messages of a paused campaign are still in a provider call");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A new run of `campaign` for the occurrence at `occurrence`, held by this process.
pub(crate) fn new_run(
    engine: &Engine,
    campaign: &Campaign,
    occurrence: Timestamp,
    now: Timestamp,
) -> CampaignRun {
    CampaignRun {
        id: Uuid::now_v7(),
        campaign_id: campaign.id,
        org_id: campaign.org_id,
        mode: campaign.mode,
        occurrence,
        phase: RunPhase::Snapshot,
        audience: 0,
        position: Some(
            serde_json::to_value(broadcasts::Position::default()).expect("a position serializes"),
        ),
        lease: Some(Lease {
            owner: engine.campaign_owner,
            until: now + runner::LEASE,
        }),
        next_release_at: None,
        error: None,
        created_at: now,
        finished_at: None,
        ab_winner: None,
    }
}

/// The index of the variant `phone` gets in `campaign`: the same every time, and spread over
/// the variants in proportion to their weights.
pub fn assign_variant(campaign_id: Uuid, phone: &str, weights: &[u32]) -> u16 {
    use sha2::{Digest, Sha256};
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if weights.len() < 2 || total == 0 {
        return 0;
    }
    let digest = Sha256::new()
        .chain_update(campaign_id.as_bytes())
        .chain_update(phone.as_bytes())
        .finalize();
    let draw = u64::from_be_bytes(digest[..8].try_into().expect("eight bytes")) % total;
    let mut upto = 0;
    for (i, weight) in weights.iter().enumerate() {
        upto += u64::from(*weight);
        if draw < upto {
            return i as u16;
        }
    }
    (weights.len() - 1) as u16
}
