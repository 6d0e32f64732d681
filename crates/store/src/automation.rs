//! Automation: drip sequences with their enrolments, and triggers with their firings.
//!
//! A drip is an ordered list of steps (the engine reads them from `spec`). Each contact in it
//! is an [`Enrollment`] that waits for its next step's time. Taking a step is one transaction
//! ([`AutomationStore::advance_enrollment`]): a compare-and-set on the enrolment's step, the
//! step's message (credits reserved as for any send) and the step's record. Two processes that
//! take the same step both render it, but only one commits, so a step is sent at most once and,
//! since nothing moves until it commits, at least once.
//!
//! A trigger fires once per key ([`AutomationStore::fire`]): the contact's id for
//! `contact.created` and `contact.age`, the event's idempotency key for named events. The
//! firing, and the message or enrolment it makes, are stored in one transaction under a unique
//! key, so a repeated event, a retried request or two processes sweeping at once fire once.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use herald_domain::message::Mode;
use herald_domain::status::MessageStatus;
use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

use crate::campaigns::{Book, CampaignCreation};
use crate::contacts::Contact;
use crate::credits::CreditRefusal;
use crate::error::StoreError;
use crate::model::{IdempotencyRecord, NewMessage, Page, Scope};
use crate::segment::Rule;

/// Whether a drip takes its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DripStatus {
    /// Steps are taken when due.
    Active,
    /// Nothing is sent; enrolments wait and go on from where they were when resumed.
    Paused,
}

impl DripStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DripStatus::Active => "active",
            DripStatus::Paused => "paused",
        }
    }
}

impl FromStr for DripStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(DripStatus::Active),
            "paused" => Ok(DripStatus::Paused),
            _ => Err(format!("unknown drip status {s:?}")),
        }
    }
}

/// A drip as stored; its steps and exit rules live in `spec`, which the engine reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Drip {
    pub id: Uuid,
    pub org_id: Uuid,
    pub mode: Mode,
    pub name: String,
    pub status: DripStatus,
    pub spec: serde_json::Value,
    pub api_key_id: Option<Uuid>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Drip {
    pub fn scope(&self) -> Scope {
        Scope {
            org_id: self.org_id,
            mode: self.mode,
        }
    }
}

/// Where a contact stands in a drip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentState {
    /// Waiting for its next step.
    Active,
    /// Every step was taken.
    Completed,
    /// Left before the end; `reason` says why (`opted_out`, `replied`, `removed`).
    Exited,
}

impl EnrollmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentState::Active => "active",
            EnrollmentState::Completed => "completed",
            EnrollmentState::Exited => "exited",
        }
    }
}

impl fmt::Display for EnrollmentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnrollmentState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(EnrollmentState::Active),
            "completed" => Ok(EnrollmentState::Completed),
            "exited" => Ok(EnrollmentState::Exited),
            _ => Err(format!("unknown enrollment state {s:?}")),
        }
    }
}

/// One number's way through a drip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrollment {
    pub id: Uuid,
    pub org_id: Uuid,
    pub drip_id: Uuid,
    /// E.164; a number is enrolled in a drip at most once.
    pub phone: String,
    pub contact_id: Option<Uuid>,
    /// How it came in: `list`, `segment`, `contact`, `phone` or `trigger`.
    pub source: String,
    /// The index of the next step to take (the number of steps taken, once over).
    pub step: u32,
    /// When the next step is due, while active.
    pub next_at: Option<Timestamp>,
    pub state: EnrollmentState,
    pub reason: Option<String>,
    /// Why the last attempt at a step did not go out (`insufficient_credits`, …); it is
    /// tried again later.
    pub error: Option<String>,
    pub enrolled_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What the caller decided about an enrolment's current step.
#[derive(Clone, Debug)]
pub enum StepTaken {
    /// The step's message goes out.
    Sent(Box<NewMessage>),
    /// The step is passed over without a message, for this reason (`missing_variables`, …).
    Skipped(String),
}

/// Where an enrolment goes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait for step `step` until `at`.
    Step { step: u32, at: Timestamp },
    /// Done: `step` moves past the step taken now (stays, when none was taken).
    Completed,
    /// Leave the drip without taking the step.
    Exited(String),
    /// Try the same step again at `at`; `error` says why it did not go out now.
    Retry { at: Timestamp, error: String },
}

impl Next {
    /// What the enrolment's row becomes: `(step, next_at, state, reason, error)`. `taken` says
    /// whether the current step was taken now.
    pub fn target<'a>(
        &'a self,
        e: &Enrollment,
        taken: bool,
    ) -> (
        u32,
        Option<Timestamp>,
        EnrollmentState,
        Option<&'a str>,
        Option<&'a str>,
    ) {
        match self {
            Next::Step { step, at } => (*step, Some(*at), EnrollmentState::Active, None, None),
            // The last step taken now, or none left (steps removed since).
            Next::Completed => (
                e.step + u32::from(taken),
                None,
                EnrollmentState::Completed,
                None,
                None,
            ),
            Next::Exited(reason) => (e.step, None, EnrollmentState::Exited, Some(reason), None),
            Next::Retry { at, error } => (
                e.step,
                Some(*at),
                EnrollmentState::Active,
                None,
                Some(error),
            ),
        }
    }
}

/// One enrolment's step for [`AutomationStore::advance_enrollments`].
#[derive(Clone, Debug)]
pub struct Advance {
    /// As read: the step it is at is the one taken.
    pub enrollment: Enrollment,
    /// `None` when it leaves or retries without taking the step.
    pub taken: Option<StepTaken>,
    pub next: Next,
}

/// The outcome of [`AutomationStore::advance_enrollments`] for one enrolment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Advanced {
    Done,
    /// The enrolment was no longer at that step (taken elsewhere, or it left); nothing changed.
    Moved,
    /// Credits or the spend limit do not cover the message; nothing changed.
    Refused(CreditRefusal),
}

/// Counts of one drip step's sends: how many enrolments took it, and where each stands (by
/// its message, as a campaign's books count them; `skipped` when passed over without one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StepStats {
    pub step: u32,
    pub taken: u64,
    pub pending: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub canceled: u64,
    pub skipped: u64,
}

impl StepStats {
    /// Count `n` sends whose message is in `status` (`None`: the step was passed over).
    pub fn count(&mut self, status: Option<MessageStatus>, n: u64) {
        self.taken += n;
        let bucket = match status.map(Book::of_message) {
            None => &mut self.skipped,
            Some(Book::Pending) => &mut self.pending,
            Some(Book::Sent) => &mut self.sent,
            Some(Book::Delivered) => &mut self.delivered,
            Some(Book::Failed) => &mut self.failed,
            Some(Book::Suppressed) => &mut self.suppressed,
            Some(Book::Canceled) => &mut self.canceled,
        };
        *bucket += n;
    }
}

/// A drip's enrolments by state and its steps' sends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DripStats {
    pub enrolled: u64,
    pub active: u64,
    pub completed: u64,
    /// Exits by reason.
    pub exited: std::collections::BTreeMap<String, u64>,
    /// Only steps with at least one send, in step order.
    pub steps: Vec<StepStats>,
}

/// What sets a trigger off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TriggerKind {
    /// A contact was created (by the API or an import).
    #[serde(rename = "contact.created")]
    ContactCreated,
    /// A number of days after a contact was created, at a local time of day.
    #[serde(rename = "contact.age")]
    ContactAge,
    /// A named event posted to `/v1/events`.
    #[serde(rename = "event")]
    Event,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::ContactCreated => "contact.created",
            TriggerKind::ContactAge => "contact.age",
            TriggerKind::Event => "event",
        }
    }
}

impl FromStr for TriggerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "contact.created" => Ok(TriggerKind::ContactCreated),
            "contact.age" => Ok(TriggerKind::ContactAge),
            "event" => Ok(TriggerKind::Event),
            _ => Err(format!("unknown trigger kind {s:?}")),
        }
    }
}

/// A trigger as stored; its filter and action live in `spec`, which the engine reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub id: Uuid,
    pub org_id: Uuid,
    pub mode: Mode,
    pub name: String,
    pub kind: TriggerKind,
    /// The event's name, for [`TriggerKind::Event`].
    pub event: Option<String>,
    pub active: bool,
    pub spec: serde_json::Value,
    pub api_key_id: Option<Uuid>,
    /// Contact sweeps have looked at everything due before this.
    pub swept_until: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Trigger {
    pub fn scope(&self) -> Scope {
        Scope {
            org_id: self.org_id,
            mode: self.mode,
        }
    }
}

/// One firing of a trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    pub id: Uuid,
    pub org_id: Uuid,
    pub trigger_id: Uuid,
    /// Unique per trigger: a second firing with the same key is the first one.
    pub key: String,
    pub contact_id: Option<Uuid>,
    pub phone: Option<String>,
    /// `sent`, `enrolled`, `already_enrolled`, or why nothing went out (`opted_out`,
    /// `missing_variables`, `insufficient_credits`, …).
    pub outcome: String,
    pub message_id: Option<Uuid>,
    pub enrollment_id: Option<Uuid>,
    pub created_at: Timestamp,
}

/// What a firing does besides being recorded.
#[derive(Clone, Debug)]
pub enum FiringAction {
    Send(Box<NewMessage>),
    Enrol(Box<Enrollment>),
    /// Nothing; the firing's outcome says why.
    Nothing,
}

/// The outcome of [`AutomationStore::fire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fired {
    New(Firing),
    /// It fired before with this key: that firing; nothing changed.
    Already(Firing),
    /// Credits or the spend limit do not cover the message; nothing was stored.
    Refused(CreditRefusal),
}

/// Drips, their enrolments, triggers and their firings.
#[async_trait]
pub trait AutomationStore {
    // --- drips --------------------------------------------------------------------------------

    async fn create_drip(
        &self,
        drip: &Drip,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<CampaignCreation, StoreError>;

    async fn get_drip(&self, scope: Scope, id: Uuid) -> Result<Option<Drip>, StoreError>;

    /// Newest first; `after` is the last id of the previous page.
    async fn list_drips(
        &self,
        scope: Scope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Drip>, StoreError>;

    /// Replace name, status and spec, only if unchanged since `read_at` (its `updated_at` when
    /// read); `false` when it changed or is gone.
    async fn update_drip(&self, drip: &Drip, read_at: Timestamp) -> Result<bool, StoreError>;

    /// Delete a drip with its enrolments (the messages sent stay).
    async fn delete_drip(&self, scope: Scope, id: Uuid) -> Result<bool, StoreError>;

    /// Enrol numbers in their drip; a number already in it (whatever its state) is left as it
    /// is. Answers how many were enrolled now.
    async fn enrol(&self, enrollments: &[Enrollment]) -> Result<u64, StoreError>;

    /// Active enrolments of active drips whose next step is due at `now`, oldest due first.
    async fn due_enrollments(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Enrollment>, StoreError>;

    /// Take each enrolment's current step (still `enrollment.step` and active, in a drip still
    /// active, else [`Advanced::Moved`] for it) and move it to its `next`, all in one
    /// transaction: the messages of the steps taken are stored together. When the credits do
    /// not cover them all, nothing changes and every one answers [`Advanced::Refused`].
    async fn advance_enrollments(
        &self,
        steps: &[Advance],
        now: Timestamp,
    ) -> Result<Vec<Advanced>, StoreError>;

    /// [`AutomationStore::advance_enrollments`] for one enrolment.
    async fn advance_enrollment(
        &self,
        enrollment: &Enrollment,
        taken: Option<StepTaken>,
        next: Next,
        now: Timestamp,
    ) -> Result<Advanced, StoreError> {
        let step = Advance {
            enrollment: enrollment.clone(),
            taken,
            next,
        };
        let mut done = self.advance_enrollments(&[step], now).await?;
        done.pop()
            .ok_or_else(|| StoreError::Corrupt("no outcome for a step".into()))
    }

    /// The active enrolments of `phone` in the organization's drips.
    async fn active_enrollments(
        &self,
        org_id: Uuid,
        phone: &str,
    ) -> Result<Vec<Enrollment>, StoreError>;

    async fn get_enrollment(
        &self,
        org_id: Uuid,
        drip_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Enrollment>, StoreError>;

    /// A drip's enrolments in id order; `after` is the last id of the previous page.
    async fn list_enrollments(
        &self,
        org_id: Uuid,
        drip_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Enrollment>, StoreError>;

    /// The message each step of an enrolment sent (`None` for a step passed over), by step.
    async fn enrollment_sends(
        &self,
        org_id: Uuid,
        enrollment_id: Uuid,
    ) -> Result<Vec<(u32, Option<Uuid>, String)>, StoreError>;

    async fn drip_stats(&self, org_id: Uuid, drip_id: Uuid) -> Result<DripStats, StoreError>;

    /// When each of `phones` last sent the organization anything (those that never did are
    /// absent).
    async fn last_replies(
        &self,
        org_id: Uuid,
        phones: &[String],
    ) -> Result<std::collections::HashMap<String, Timestamp>, StoreError>;

    /// Whether `phone` sent the organization anything after `since`.
    async fn replied_since(
        &self,
        org_id: Uuid,
        phone: &str,
        since: Timestamp,
    ) -> Result<bool, StoreError> {
        let last = self.last_replies(org_id, &[phone.to_owned()]).await?;
        Ok(last.get(phone).is_some_and(|at| *at > since))
    }

    // --- triggers -----------------------------------------------------------------------------

    async fn create_trigger(
        &self,
        trigger: &Trigger,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<CampaignCreation, StoreError>;

    async fn get_trigger(&self, scope: Scope, id: Uuid) -> Result<Option<Trigger>, StoreError>;

    /// Newest first; `after` is the last id of the previous page.
    async fn list_triggers(
        &self,
        scope: Scope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Trigger>, StoreError>;

    /// Replace name, active and spec, only if unchanged since `read_at`; `false` when it
    /// changed or is gone.
    async fn update_trigger(
        &self,
        trigger: &Trigger,
        read_at: Timestamp,
    ) -> Result<bool, StoreError>;

    async fn delete_trigger(&self, scope: Scope, id: Uuid) -> Result<bool, StoreError>;

    /// Active triggers of `kind`, of every organization (for the contact sweeps).
    async fn active_triggers(&self, kind: TriggerKind) -> Result<Vec<Trigger>, StoreError>;

    /// The organization's active triggers for the named event.
    async fn event_triggers(&self, scope: Scope, event: &str) -> Result<Vec<Trigger>, StoreError>;

    /// Contacts of the trigger's organization created in `[from, to)` that match `rule` (all
    /// when `None`) at `now` and have no firing of the trigger yet (keyed by contact id), in
    /// creation order after `after` (creation time, id).
    #[allow(clippy::too_many_arguments)]
    async fn trigger_candidates(
        &self,
        trigger: &Trigger,
        rule: Option<&Rule>,
        from: Timestamp,
        to: Timestamp,
        after: Option<(Timestamp, Uuid)>,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Contact>, StoreError>;

    /// Record that the trigger's sweeps have seen everything due before `until`.
    async fn set_swept(&self, trigger_id: Uuid, until: Timestamp) -> Result<(), StoreError>;

    /// Record `firing` and do `action`, in one transaction, unless the trigger already fired
    /// with that key (then nothing changes). An enrolment whose number is already in the drip
    /// is recorded with outcome `already_enrolled`.
    async fn fire(&self, firing: &Firing, action: FiringAction) -> Result<Fired, StoreError>;

    /// The firing of `trigger_id` with `key`, if any.
    async fn get_firing(
        &self,
        org_id: Uuid,
        trigger_id: Uuid,
        key: &str,
    ) -> Result<Option<Firing>, StoreError>;

    /// A trigger's firings, newest first; `after` is the last id of the previous page.
    async fn list_firings(
        &self,
        org_id: Uuid,
        trigger_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Firing>, StoreError>;
}
