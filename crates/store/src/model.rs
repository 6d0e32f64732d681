//! The records the store reads and writes.

use herald_domain::encoding::Encoding;
use herald_domain::message::{MessageType, Mode};
use herald_domain::money::{Amount, Currency};
use herald_domain::phone::Region;
use herald_domain::status::{MessageStatus, ReportedStatus};
use jiff::Timestamp;
use uuid::Uuid;

/// A tenant. Everything else belongs to exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    /// Region used to read national-format numbers (`(202) 555-0123`).
    pub default_region: Region,
    pub created_at: Timestamp,
}

/// An API key as the store knows it: never the secret, only its hash and visible prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Uuid,
    pub org_id: Uuid,
    pub mode: Mode,
    /// The first characters of the key (`sk_live_AbCd`), shown so people can tell keys apart.
    pub prefix: String,
    pub name: Option<String>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub id: Uuid,
    pub org_id: Uuid,
    pub mode: Mode,
    pub prefix: String,
    /// SHA-256 of the whole key.
    pub hash: [u8; 32],
    pub name: Option<String>,
    pub created_at: Timestamp,
}

/// Whose data a request may touch: one organization, and within it live or test traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    pub org_id: Uuid,
    pub mode: Mode,
}

/// A message ready to be stored: validated, priced and encoded by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub id: Uuid,
    pub scope: Scope,
    pub api_key_id: Option<Uuid>,
    /// E.164.
    pub to: String,
    pub country: Option<Region>,
    pub sender: Option<String>,
    pub body: String,
    pub encoding: Encoding,
    pub segments: u32,
    pub kind: MessageType,
    pub priority: i16,
    pub estimated_cost: Amount,
    pub currency: Currency,
    /// When set in the future the message starts `scheduled`; otherwise `queued`.
    pub send_at: Option<Timestamp>,
    pub max_attempts: u32,
    pub created_at: Timestamp,
    /// The broadcast that sent it, if any.
    pub broadcast_id: Option<Uuid>,
    /// The campaign run that released it, if any.
    pub campaign_run_id: Option<Uuid>,
}

impl NewMessage {
    /// The status a message starts in.
    pub fn initial_status(&self) -> MessageStatus {
        match self.send_at {
            Some(at) if at > self.created_at => MessageStatus::Scheduled,
            _ => MessageStatus::Queued,
        }
    }

    /// The message exactly as the store records it on insert, before anything happens to it.
    pub fn initial_record(&self) -> Message {
        let status = self.initial_status();
        let mut message = Message {
            id: self.id,
            scope: self.scope,
            api_key_id: self.api_key_id,
            to: self.to.clone(),
            country: self.country,
            sender: self.sender.clone(),
            body: self.body.clone(),
            encoding: self.encoding,
            segments: self.segments,
            kind: self.kind,
            priority: self.priority,
            status,
            provider: None,
            provider_message_id: None,
            error_code: None,
            error_message: None,
            estimated_cost: self.estimated_cost,
            actual_cost: None,
            currency: self.currency,
            attempts: 0,
            max_attempts: self.max_attempts,
            send_at: self.send_at,
            created_at: self.created_at,
            updated_at: self.created_at,
            broadcast_id: self.broadcast_id,
            history: Vec::new(),
        };
        message.set_history(Vec::new());
        message
    }

    /// When the message first becomes eligible for dispatch.
    pub fn due_at(&self) -> Timestamp {
        match self.send_at {
            Some(at) if at > self.created_at => at,
            _ => self.created_at,
        }
    }
}

/// One step in a message's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    /// 1 for the first status, then one more per change: lets a consumer of events spot gaps.
    pub seq: u32,
    pub status: MessageStatus,
    pub at: Timestamp,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// A stored message with its full history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: Uuid,
    pub scope: Scope,
    pub api_key_id: Option<Uuid>,
    pub to: String,
    pub country: Option<Region>,
    pub sender: Option<String>,
    pub body: String,
    pub encoding: Encoding,
    pub segments: u32,
    pub kind: MessageType,
    pub priority: i16,
    pub status: MessageStatus,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub estimated_cost: Amount,
    pub actual_cost: Option<Amount>,
    pub currency: Currency,
    pub attempts: u32,
    pub max_attempts: u32,
    pub send_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The broadcast that sent it, if any.
    pub broadcast_id: Option<Uuid>,
    /// Oldest first.
    pub history: Vec<StatusChange>,
}

impl Message {
    /// The first entry of the history, which the message row itself records: the status it was
    /// created in (`scheduled` when `send_at` was ahead, else `queued`) at its creation time.
    /// Stores keep only the entries after it.
    pub fn first_change(&self) -> StatusChange {
        let scheduled = self.send_at.is_some_and(|at| at > self.created_at);
        StatusChange {
            seq: 1,
            status: if scheduled {
                MessageStatus::Scheduled
            } else {
                MessageStatus::Queued
            },
            at: self.created_at,
            error_code: None,
            error_message: None,
        }
    }

    /// Set the history from the stored entries that follow the first.
    pub fn set_history(&mut self, later: Vec<StatusChange>) {
        let mut history = Vec::with_capacity(later.len() + 1);
        history.push(self.first_change());
        history.extend(later);
        self.history = history;
    }
}

/// An `Idempotency-Key` to remember with the message it created.
#[derive(Clone, Debug)]
pub struct IdempotencyRecord {
    pub key: String,
    /// Hash of the request as parsed, so the same request with other whitespace still matches.
    pub request_hash: [u8; 32],
    /// The response body given the first time, replayed byte for byte.
    pub response: Vec<u8>,
    pub expires_at: Timestamp,
}

/// What happened to an insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Insertion {
    Created(Box<Message>),
    /// The key was used before with the same request: here is the original response.
    Replayed {
        message_id: Uuid,
        response: Vec<u8>,
    },
    /// The key was used before with a different request; nothing was stored.
    KeyReused,
    /// The organization's credits or spend limit do not cover it; nothing was stored.
    Refused(crate::credits::CreditRefusal),
}

/// Filters for listing messages; all optional and combined with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageFilter {
    pub status: Option<MessageStatus>,
    pub to: Option<String>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    /// Only the messages of this broadcast.
    pub broadcast_id: Option<Uuid>,
}

/// One page of a newest-first listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `after` to get the next page; `None` on the last page.
    pub next: Option<Uuid>,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` rows read: the extra row only tells that a next page
    /// exists, which is cheaper than counting.
    pub fn from_overfetch(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> Uuid) -> Page<T> {
        let next = cut_page(&mut items, limit, id);
        Page { items, next }
    }
}

/// Cut `limit + 1` rows read down to a page of `limit`, answering the key of its last row when
/// there is a next page (the extra row says so).
pub fn cut_page<T, K>(items: &mut Vec<T>, limit: u32, key: impl Fn(&T) -> K) -> Option<K> {
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(key)
    } else {
        None
    }
}

/// Why a cancel was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelRefusal {
    NotFound,
    /// Already handed to a provider (or otherwise past the point of no return).
    TooLate(MessageStatus),
}

/// A message claimed by a dispatcher, with what it needs to call a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub id: Uuid,
    pub scope: Scope,
    pub to: String,
    pub country: Option<Region>,
    pub sender: Option<String>,
    pub body: String,
    pub encoding: Encoding,
    pub segments: u32,
    pub kind: MessageType,
    /// This claim's attempt number (1 for the first). Results carry it back so a result from an
    /// older claim can be told apart.
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease_expires_at: Timestamp,
    /// The campaign run that released it: sent only while its campaign runs.
    pub campaign_run_id: Option<Uuid>,
}

/// What became of one claimed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The provider took it.
    Accepted {
        provider_message_id: String,
        cost: Option<Amount>,
    },
    /// A transient refusal: back to the queue until `retry_at`.
    Retry {
        retry_at: Timestamp,
        code: String,
        message: String,
    },
    /// Permanent refusal, or out of attempts.
    Failed { code: String, message: String },
    /// Not sent because the recipient opted out: found before the call, or the provider's
    /// refusal said so.
    Suppressed { code: String, message: String },
    /// The call ended without an answer: the provider may have it. Reconcile, never resend blindly.
    Unanswered { code: String, message: String },
    /// Never sent (shutdown): back to the queue, and the attempt does not count.
    Unclaimed,
    /// Not sent: the recipient's quiet hours began while it waited (a promotional message).
    /// Back to the queue until the window opens; the attempt does not count.
    Deferred { until: jiff::Timestamp },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendResult {
    pub id: Uuid,
    pub attempt: u32,
    /// The provider called; `None` when no call was made (suppressed, returned unsent, or
    /// every provider resting).
    pub provider: Option<String>,
    pub outcome: SendOutcome,
}

/// A status report from a provider (a callback, or the simulator's equivalent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderReport {
    pub provider: String,
    /// Herald's id when the provider echoes it back (e.g. in the callback URL); lets a report
    /// that overtakes the send result still find its message.
    pub message_id: Option<Uuid>,
    pub provider_message_id: String,
    pub status: ReportedStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub cost: Option<Amount>,
}

/// What a report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The message moved.
    Applied,
    /// Duplicate, late or out of order: nothing changed.
    Unchanged,
    /// No such message for that provider.
    NotFound,
}

/// A message in `unknown`, to be settled by asking its provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsettled {
    pub id: Uuid,
    pub scope: Scope,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub to: String,
    pub attempt: u32,
}

/// What reconciliation learned about an `unknown` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The provider has it, in this state.
    Found {
        provider: String,
        provider_message_id: String,
        status: ReportedStatus,
        error_code: Option<String>,
    },
    /// The provider never received it: sending again is safe.
    NotFound,
    /// The provider could not say; ask again at `retry_at`.
    Undecided { retry_at: Timestamp },
}
