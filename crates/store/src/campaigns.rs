//! Campaigns: their lifecycle, their runs and each run's audience snapshot.
//!
//! A campaign moves `draft → scheduled → running ⇄ paused → completed | cancelled`; every
//! change is a compare-and-set on the status, so two callers never both win. Each occurrence
//! of a campaign is a [`CampaignRun`]: its audience is written first (the snapshot, one
//! [`NewRecipient`] per number, de-duplicated by the database), then released to the message
//! queue in batches. A release stores the messages, marks their recipients released and renews
//! the releaser's lease in one transaction, and only while the campaign is `running` and the
//! run is still the releaser's: a pause, a cancel or a crash can never leave a recipient both
//! pending and sent, so the books ([`RunBooks`]) always add up to the audience.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_domain::status::MessageStatus;
use jiff::Timestamp;
use uuid::Uuid;

use crate::broadcasts::Lease;
use crate::credits::CreditRefusal;
use crate::error::StoreError;
use crate::model::{IdempotencyRecord, NewMessage, Page, Scope};

/// Where a campaign stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CampaignStatus {
    Draft,
    Scheduled,
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl CampaignStatus {
    pub const ALL: [CampaignStatus; 6] = [
        CampaignStatus::Draft,
        CampaignStatus::Scheduled,
        CampaignStatus::Running,
        CampaignStatus::Paused,
        CampaignStatus::Completed,
        CampaignStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Draft => "draft",
            CampaignStatus::Scheduled => "scheduled",
            CampaignStatus::Running => "running",
            CampaignStatus::Paused => "paused",
            CampaignStatus::Completed => "completed",
            CampaignStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the campaign's settings may still change.
    pub fn editable(self) -> bool {
        matches!(self, CampaignStatus::Draft | CampaignStatus::Scheduled)
    }

    pub fn is_final(self) -> bool {
        matches!(self, CampaignStatus::Completed | CampaignStatus::Cancelled)
    }
}

impl fmt::Display for CampaignStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CampaignStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CampaignStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown campaign status {s:?}"))
    }
}

/// A campaign as stored. What it sends and to whom lives in `spec`, which the engine reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Campaign {
    pub id: Uuid,
    pub org_id: Uuid,
    pub mode: Mode,
    pub name: String,
    pub status: CampaignStatus,
    pub spec: serde_json::Value,
    pub api_key_id: Option<Uuid>,
    /// When the next run starts, while `scheduled`.
    pub next_run_at: Option<Timestamp>,
    /// The run under way or the last one.
    pub current_run: Option<Uuid>,
    /// Runs started so far.
    pub runs: u32,
    /// Why the campaign stopped or paused by itself (`insufficient_credits`, …).
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Campaign {
    pub fn scope(&self) -> Scope {
        Scope {
            org_id: self.org_id,
            mode: self.mode,
        }
    }
}

/// What a run is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunPhase {
    /// Writing its audience.
    Snapshot,
    /// Releasing its audience to the queue.
    Send,
    /// Everything released and settled.
    Done,
    Canceled,
}

impl RunPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Snapshot => "snapshot",
            RunPhase::Send => "send",
            RunPhase::Done => "done",
            RunPhase::Canceled => "canceled",
        }
    }
}

impl FromStr for RunPhase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "snapshot" => RunPhase::Snapshot,
            "send" => RunPhase::Send,
            "done" => RunPhase::Done,
            "canceled" => RunPhase::Canceled,
            other => return Err(format!("unknown run phase {other:?}")),
        })
    }
}

/// One occurrence of a campaign.
#[derive(Clone, Debug, PartialEq)]
pub struct CampaignRun {
    pub id: Uuid,
    pub campaign_id: Uuid,
    pub org_id: Uuid,
    pub mode: Mode,
    /// The occurrence it is for (the schedule's instant).
    pub occurrence: Timestamp,
    pub phase: RunPhase,
    /// Recipients written so far (all of them once the phase is past `snapshot`).
    pub audience: u64,
    /// Where the snapshot has come to, so another process can carry it on.
    pub position: Option<serde_json::Value>,
    /// The process working on the run, and until when.
    pub lease: Option<Lease>,
    /// The throttle: no release before this.
    pub next_release_at: Option<Timestamp>,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// The variant an A/B test chose for the rest of the audience, and when.
    pub ab_winner: Option<(u16, Timestamp)>,
}

impl CampaignRun {
    pub fn scope(&self) -> Scope {
        Scope {
            org_id: self.org_id,
            mode: self.mode,
        }
    }
}

/// Where a recipient of a run stands before (or instead of) becoming a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientState {
    Pending,
    Released,
    Suppressed,
    Canceled,
}

impl RecipientState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientState::Pending => "pending",
            RecipientState::Released => "released",
            RecipientState::Suppressed => "suppressed",
            RecipientState::Canceled => "canceled",
        }
    }
}

impl FromStr for RecipientState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => RecipientState::Pending,
            "released" => RecipientState::Released,
            "suppressed" => RecipientState::Suppressed,
            "canceled" => RecipientState::Canceled,
            other => return Err(format!("unknown recipient state {other:?}")),
        })
    }
}

/// A recipient written by the snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRecipient {
    /// E.164; unique within the run.
    pub phone: String,
    pub contact_id: Option<Uuid>,
    pub country: Option<Region>,
    /// Index of the variant it was assigned.
    pub variant: u16,
    /// The body rendered for it (`None` when suppressed).
    pub body: Option<String>,
    /// When it may be released (its local send time, or the run's start).
    pub due_at: Timestamp,
    /// `Pending`, or `Suppressed` with a `reason`.
    pub state: RecipientState,
    pub reason: Option<String>,
}

/// A recipient as stored, with what became of its message.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecipient {
    pub seq: u64,
    pub phone: String,
    pub contact_id: Option<Uuid>,
    pub country: Option<Region>,
    pub variant: u16,
    pub body: Option<String>,
    pub due_at: Timestamp,
    pub state: RecipientState,
    pub reason: Option<String>,
    pub message_id: Option<Uuid>,
    /// The message's status, once released.
    pub status: Option<MessageStatus>,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub estimated_cost: Option<i64>,
    pub actual_cost: Option<i64>,
    pub error_code: Option<String>,
    pub attempts: u32,
    pub sent_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
}

/// The bucket of a run's books a recipient counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Book {
    /// Not yet released, or released and not yet settled (queued, sending, unknown).
    Pending,
    /// Accepted by a provider, no delivery report yet.
    Sent,
    Delivered,
    /// Failed or undelivered.
    Failed,
    Suppressed,
    Canceled,
}

impl Book {
    pub fn as_str(self) -> &'static str {
        match self {
            Book::Pending => "pending",
            Book::Sent => "sent",
            Book::Delivered => "delivered",
            Book::Failed => "failed",
            Book::Suppressed => "suppressed",
            Book::Canceled => "canceled",
        }
    }

    /// Where a released recipient whose message is in `status` counts.
    pub fn of_message(status: MessageStatus) -> Book {
        use MessageStatus::*;
        match status {
            Scheduled | Queued | Sending | Unknown => Book::Pending,
            Sent => Book::Sent,
            Delivered => Book::Delivered,
            Undelivered | Failed => Book::Failed,
            Suppressed => Book::Suppressed,
            Canceled => Book::Canceled,
        }
    }

    /// Where a recipient in `state` counts; `None` once released (its message says).
    pub fn of_recipient(state: RecipientState) -> Option<Book> {
        match state {
            RecipientState::Pending => Some(Book::Pending),
            RecipientState::Suppressed => Some(Book::Suppressed),
            RecipientState::Canceled => Some(Book::Canceled),
            RecipientState::Released => None,
        }
    }
}

/// A run's books: every recipient in exactly one [`Book`], so they add up to `audience`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunBooks {
    pub audience: u64,
    pub pending: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub canceled: u64,
}

impl RunBooks {
    /// The buckets added up.
    pub fn accounted(&self) -> u64 {
        self.pending + self.sent + self.delivered + self.failed + self.suppressed + self.canceled
    }

    pub fn count(&mut self, book: Book, n: u64) {
        let bucket = match book {
            Book::Pending => &mut self.pending,
            Book::Sent => &mut self.sent,
            Book::Delivered => &mut self.delivered,
            Book::Failed => &mut self.failed,
            Book::Suppressed => &mut self.suppressed,
            Book::Canceled => &mut self.canceled,
        };
        *bucket += n;
    }

    /// Add released recipients whose messages are in `status`.
    pub fn count_message(&mut self, status: MessageStatus, n: u64) {
        self.count(Book::of_message(status), n);
    }

    /// Add recipients in `state` (released ones are counted by their message instead).
    pub fn count_recipients(&mut self, state: RecipientState, n: u64) {
        if let Some(book) = Book::of_recipient(state) {
            self.count(book, n);
        }
    }

    pub fn add(&mut self, other: &RunBooks) {
        self.audience += other.audience;
        self.pending += other.pending;
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.suppressed += other.suppressed;
        self.canceled += other.canceled;
    }
}

/// What [`CampaignStore::create_campaign`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum CampaignCreation {
    Created,
    /// The key was used before with the same request: the campaign created then.
    Replayed(Uuid),
    /// The key was used before with a different request; nothing was stored.
    KeyReused,
}

impl CampaignCreation {
    /// What a key already taken answers for a create: the object it created, or a refusal
    /// when it came with another request.
    pub fn of_earlier(previous: crate::model::Insertion) -> CampaignCreation {
        match previous {
            crate::model::Insertion::Replayed { message_id, .. } => {
                CampaignCreation::Replayed(message_id)
            }
            _ => CampaignCreation::KeyReused,
        }
    }
}

/// Why a change to a campaign was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignRefusal {
    NotFound,
    /// Not allowed from the campaign's current status.
    State(CampaignStatus),
}

/// A lifecycle change, with what it does besides setting the status.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// `draft → scheduled`, to start at `next_run_at`.
    Schedule { next_run_at: Timestamp },
    /// `draft | scheduled → running`, or a scheduled campaign's time came: start `run`.
    Start { run: Box<CampaignRun> },
    /// `running → paused`: nothing more is released, queued messages are held.
    Pause,
    /// `paused → running`: held messages go back to the queue.
    Resume,
    /// Anything not final `→ cancelled`: pending recipients and unsent messages are canceled,
    /// releasing their credits.
    Cancel,
}

impl Transition {
    /// The statuses it may start from.
    pub fn from(&self) -> &'static [CampaignStatus] {
        use CampaignStatus::*;
        match self {
            Transition::Schedule { .. } => &[Draft],
            Transition::Start { .. } => &[Draft, Scheduled],
            Transition::Pause => &[Running],
            Transition::Resume => &[Paused],
            Transition::Cancel => &[Draft, Scheduled, Running, Paused],
        }
    }

    /// The status it ends in.
    pub fn to(&self) -> CampaignStatus {
        match self {
            Transition::Schedule { .. } => CampaignStatus::Scheduled,
            Transition::Start { .. } | Transition::Resume => CampaignStatus::Running,
            Transition::Pause => CampaignStatus::Paused,
            Transition::Cancel => CampaignStatus::Cancelled,
        }
    }
}

/// What a releaser's write did.
#[derive(Clone, Debug, PartialEq)]
pub enum ReleaseOutcome {
    Stored,
    /// Credits or the spend limit refused the messages; nothing was written.
    Refused(CreditRefusal),
    /// The campaign is not running or the run is no longer this process's: nothing was written.
    Lost,
}

/// How a finished run leaves its campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// No more occurrences: the campaign is `completed`.
    Completed,
    /// The campaign waits (`scheduled`) for its next occurrence.
    Next(Timestamp),
}

/// One released message of a campaign, for analytics.
#[derive(Clone, Debug, PartialEq)]
pub struct CampaignMessageFact {
    pub run_id: Uuid,
    pub variant: u16,
    pub phone: String,
    pub country: Option<Region>,
    pub status: MessageStatus,
    pub provider: Option<String>,
    pub segments: u32,
    pub estimated_cost: i64,
    pub actual_cost: Option<i64>,
    pub currency: String,
    pub created_at: Timestamp,
    /// When a provider accepted it.
    pub sent_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
}

/// Storage of campaigns, their runs and audiences.
#[async_trait]
pub trait CampaignStore: Send + Sync {
    /// Store a new campaign, honouring an idempotency key kept with its scope.
    async fn create_campaign(
        &self,
        campaign: &Campaign,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<CampaignCreation, StoreError>;

    async fn get_campaign(&self, scope: Scope, id: Uuid) -> Result<Option<Campaign>, StoreError>;

    /// Newest first; `after` is the last id of the previous page.
    async fn list_campaigns(
        &self,
        scope: Scope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Campaign>, StoreError>;

    /// Replace the campaign's name, spec and next run, only while it is editable (`draft` or
    /// `scheduled`) and unchanged since `read_at` (its `updated_at` when read).
    async fn update_campaign(
        &self,
        campaign: &Campaign,
        read_at: Timestamp,
    ) -> Result<Result<Campaign, CampaignRefusal>, StoreError>;

    /// Delete a campaign that never ran (`draft` or `scheduled`), or one that is over.
    async fn delete_campaign(
        &self,
        scope: Scope,
        id: Uuid,
    ) -> Result<Result<(), CampaignRefusal>, StoreError>;

    /// Make a lifecycle change in one transaction, only from one of `transition.from()`.
    /// Answers the campaign as it now is, or the status that refused the change.
    async fn transition_campaign(
        &self,
        scope: Scope,
        id: Uuid,
        transition: &Transition,
        now: Timestamp,
    ) -> Result<Result<Campaign, CampaignRefusal>, StoreError>;

    /// `scheduled` campaigns (of any organization) whose next run is due by `now`.
    async fn due_campaigns(&self, now: Timestamp, limit: u32) -> Result<Vec<Campaign>, StoreError>;

    async fn get_run(&self, scope: Scope, id: Uuid) -> Result<Option<CampaignRun>, StoreError>;

    /// A campaign's runs, newest first.
    async fn list_runs(
        &self,
        scope: Scope,
        campaign_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<CampaignRun>, StoreError>;

    /// Take the runs of `running` campaigns that need work (a snapshot to write or recipients
    /// to release) and that no live process holds (or that `lease.owner` holds already), with
    /// `lease`.
    async fn take_runs(
        &self,
        lease: Lease,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<CampaignRun>, StoreError>;

    /// Store a batch of the snapshot (duplicates of numbers already in the run are dropped)
    /// with the run's new position, phase and lease. Answers how many were new, or `None`
    /// when the run is no longer held by `run.lease`'s owner (nothing written).
    async fn store_snapshot_batch(
        &self,
        run: &CampaignRun,
        recipients: &[NewRecipient],
    ) -> Result<Option<u64>, StoreError>;

    /// Pending recipients of a run due by `now`, in due order.
    async fn due_recipients(
        &self,
        run_id: Uuid,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<RunRecipient>, StoreError>;

    /// Pending recipients of a run held for its A/B test's winner (due at [`held_until`]), in
    /// seq order after `after`.
    async fn held_recipients(
        &self,
        run_id: Uuid,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<RunRecipient>, StoreError>;

    /// Give held recipients the A/B test's winner: each `(seq, body)` gets `variant` and its
    /// body rendered, due at `due_at`, or is suppressed as `missing_variables` without one;
    /// the run records the winner (and the first time it was given). Only while the campaign
    /// runs and `run.lease` holds.
    async fn assign_held(
        &self,
        run: &CampaignRun,
        variant: u16,
        assigned: &[(u64, Option<String>)],
        due_at: Timestamp,
    ) -> Result<ReleaseOutcome, StoreError>;

    /// Messages of the run created after `since` (the throttle's window).
    async fn released_since(&self, run_id: Uuid, since: Timestamp) -> Result<u64, StoreError>;

    /// Release recipients: store `messages` (each `(seq, message)`; suppressed on arrival when
    /// the number opted out since), mark them released, and write the run's `next_release_at`
    /// and lease, in one transaction; only while the campaign runs and `run.lease` holds.
    async fn release_recipients(
        &self,
        run: &CampaignRun,
        messages: &[(u64, NewMessage)],
    ) -> Result<ReleaseOutcome, StoreError>;

    /// Suppress pending recipients found unsendable at release (`(seq, reason)`).
    async fn suppress_recipients(
        &self,
        run: &CampaignRun,
        recipients: &[(u64, String)],
    ) -> Result<ReleaseOutcome, StoreError>;

    /// Pause a running campaign by itself (credits ran out), with `error`.
    async fn pause_for(
        &self,
        run: &CampaignRun,
        error: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Queue again the run's messages still held although its campaign runs (a dispatcher held
    /// one back as the campaign resumed); answers how many. Does nothing unless the campaign is
    /// running.
    async fn unhold_run(&self, run_id: Uuid, now: Timestamp) -> Result<u64, StoreError>;

    /// The run's books, read in one snapshot.
    async fn run_books(&self, run_id: Uuid) -> Result<RunBooks, StoreError>;

    /// Messages of the run being handed to a provider now.
    async fn in_flight(&self, run_id: Uuid) -> Result<u64, StoreError>;

    /// Of `runs`, those whose campaign is not `running` (their messages must wait), with the
    /// campaign's status.
    async fn held_runs(&self, runs: &[Uuid]) -> Result<Vec<(Uuid, CampaignStatus)>, StoreError>;

    /// End a run whose recipients are all settled, and move its campaign on (completed, or
    /// scheduled for the next occurrence). Only while held by `run.lease`'s owner and the
    /// campaign is running; answers whether it was written.
    async fn finish_run(
        &self,
        run: &CampaignRun,
        end: RunEnd,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Cancel what a canceled run still has unsent (messages held or queued after the cancel),
    /// releasing their credits; answers how many.
    async fn sweep_canceled_run(&self, run_id: Uuid, now: Timestamp) -> Result<u64, StoreError>;

    /// Recipients of a run in seq order, after `after`.
    async fn list_recipients(
        &self,
        scope: Scope,
        run_id: Uuid,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<RunRecipient>, StoreError>;

    /// Released messages of a campaign's runs, for analytics, in (run, seq) order after
    /// `after`; answers the key of the last one.
    async fn campaign_facts(
        &self,
        scope: Scope,
        campaign_id: Uuid,
        after: Option<(Uuid, u64)>,
        limit: u32,
    ) -> Result<(Vec<CampaignMessageFact>, Option<(Uuid, u64)>), StoreError>;

    /// Replies (inbound messages) and opt-outs from a campaign's recipients after its first
    /// message to them: `(variant, replies, opt_outs)` per variant.
    async fn campaign_responses(
        &self,
        scope: Scope,
        campaign_id: Uuid,
    ) -> Result<Vec<(u16, u64, u64)>, StoreError>;
}

/// When a held message is due: never, until its campaign resumes.
pub fn held_until() -> Timestamp {
    Timestamp::MAX
}
