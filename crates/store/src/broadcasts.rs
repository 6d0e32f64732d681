//! Broadcasts: one body or template sent to a mixed set of recipients, resolved in batches.
//!
//! A broadcast keeps counts that always add up: every recipient resolved is counted once, in
//! `requested` and in exactly one outcome (queued, or the reason it was not). Each batch of
//! messages is stored in the same transaction as the counts that include it, so a reader never
//! sees messages the counts do not explain.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use herald_domain::message::Mode;
use jiff::Timestamp;
use uuid::Uuid;

use crate::credits::CreditRefusal;
use crate::error::StoreError;
use crate::model::{IdempotencyRecord, NewMessage, Page, Scope};

/// Where a broadcast stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BroadcastStatus {
    /// Recipients are still being resolved and queued in the background.
    Resolving,
    /// Every recipient was resolved; every one that could be was queued.
    Queued,
    /// Stopped part way (credits ran out): some batches were queued, the rest `not_sent`.
    PartiallyQueued,
    /// Stopped before anything was queued.
    Failed,
    Canceled,
}

impl BroadcastStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BroadcastStatus::Resolving => "resolving",
            BroadcastStatus::Queued => "queued",
            BroadcastStatus::PartiallyQueued => "partially_queued",
            BroadcastStatus::Failed => "failed",
            BroadcastStatus::Canceled => "canceled",
        }
    }

    /// Whether nothing more will happen to the broadcast.
    pub fn is_final(self) -> bool {
        self != BroadcastStatus::Resolving
    }
}

impl fmt::Display for BroadcastStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BroadcastStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "resolving" => BroadcastStatus::Resolving,
            "queued" => BroadcastStatus::Queued,
            "partially_queued" => BroadcastStatus::PartiallyQueued,
            "failed" => BroadcastStatus::Failed,
            "canceled" => BroadcastStatus::Canceled,
            other => return Err(format!("unknown broadcast status {other:?}")),
        })
    }
}

/// What became of a broadcast's recipients. `requested` is the number of individual
/// recipients resolved (a list or segment counts each of its members, a phone or contact
/// entry counts one); each is counted in exactly one of the other fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BroadcastCounts {
    pub requested: u64,
    pub queued: u64,
    /// A number already reached by an earlier recipient of the same broadcast.
    pub duplicates: u64,
    /// Not a valid phone number, or the message could not be made (a template variable the
    /// contact has no value for).
    pub invalid: u64,
    pub opted_out: u64,
    /// Promotional broadcast, and the contact did not consent.
    pub no_consent: u64,
    /// A destination country the organization may not send to.
    pub not_permitted: u64,
    /// Resolved but never queued because the broadcast stopped (credits ran out).
    pub not_sent: u64,
}

impl BroadcastCounts {
    /// The outcomes added up: equal to `requested` whenever the counts are consistent.
    pub fn accounted(&self) -> u64 {
        self.queued
            + self.duplicates
            + self.invalid
            + self.opted_out
            + self.no_consent
            + self.not_permitted
            + self.not_sent
    }
}

/// A broadcast as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Broadcast {
    pub id: Uuid,
    pub org_id: Uuid,
    pub mode: Mode,
    pub status: BroadcastStatus,
    /// The request as accepted (recipients, body or template, variables, type, from,
    /// send_at), kept to resolve it and to show it back.
    pub request: serde_json::Value,
    pub counts: BroadcastCounts,
    /// Why it stopped, when it did (`insufficient_credits`, …).
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// The request in the resolver's own form, so another process can take it over.
    pub spec: Option<serde_json::Value>,
    /// The key that sent it.
    pub api_key_id: Option<Uuid>,
    /// How far resolution has come: every recipient before it is counted (and queued, when it
    /// could be). Written with each batch.
    pub position: Option<serde_json::Value>,
    /// The resolver that holds the broadcast while it is `resolving`, and until when.
    pub lease: Option<Lease>,
    /// Queued messages canceled with the broadcast before they were sent. Not one of the
    /// outcomes `requested` adds up to: they were queued first.
    pub canceled: u64,
}

/// A resolver's hold on a `resolving` broadcast. Writes by any other owner are refused, so two
/// processes never queue the same recipients; a lease that ran out may be taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: Uuid,
    pub until: Timestamp,
}

/// What [`BroadcastStore::queue_broadcast_batch`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchOutcome {
    Stored,
    /// The messages would overdraw the organization's credits or spend limit; nothing was
    /// written.
    Refused(CreditRefusal),
    /// The broadcast is no longer this resolver's (canceled, or taken over after its lease ran
    /// out); nothing was written and the resolver must stop.
    Lost,
}

/// Why [`BroadcastStore::cancel_broadcast`] did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BroadcastCancelRefusal {
    NotFound,
    /// Already canceled, or failed before anything was queued.
    Final(BroadcastStatus),
}

impl Broadcast {
    pub fn scope(&self) -> Scope {
        Scope {
            org_id: self.org_id,
            mode: self.mode,
        }
    }
}

/// What [`BroadcastStore::create_broadcast`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum BroadcastCreation {
    Created,
    /// The key was used before with the same request: the broadcast created then and the
    /// response given.
    Replayed {
        id: Uuid,
        response: Vec<u8>,
    },
    /// The key was used before with a different request; nothing was stored.
    KeyReused,
    /// The messages would overdraw the organization's credits or spend limit; nothing was
    /// stored, the key included.
    Refused(CreditRefusal),
}

/// Storage of broadcasts.
#[async_trait]
pub trait BroadcastStore: Send + Sync {
    /// Store a new broadcast with its first `messages` (each naming the broadcast) in one
    /// transaction, honouring an idempotency key kept with the broadcast's scope. The messages
    /// reserve credits all or nothing: refused, nothing at all is stored.
    async fn create_broadcast(
        &self,
        broadcast: &Broadcast,
        messages: &[NewMessage],
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<BroadcastCreation, StoreError>;

    /// Store one more batch of a broadcast's messages together with the broadcast's new status,
    /// counts, error, end, position and lease, and record that it reached `reached` (E.164
    /// numbers), in one transaction. Written only while the broadcast is `resolving` and held
    /// by `broadcast.lease`'s owner; otherwise [`BatchOutcome::Lost`] and nothing is written.
    /// Refused by credits, nothing is written (the caller then records the end with an empty
    /// batch).
    async fn queue_broadcast_batch(
        &self,
        broadcast: &Broadcast,
        messages: &[NewMessage],
        reached: &[String],
    ) -> Result<BatchOutcome, StoreError>;

    async fn get_broadcast(&self, scope: Scope, id: Uuid) -> Result<Option<Broadcast>, StoreError>;

    /// Newest first; `after` is the last id of the previous page.
    async fn list_broadcasts(
        &self,
        scope: Scope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Broadcast>, StoreError>;

    /// Those of `phones` the broadcast reached in an earlier batch, in the order given.
    async fn reached_before(
        &self,
        broadcast_id: Uuid,
        phones: &[String],
    ) -> Result<Vec<String>, StoreError>;

    /// `resolving` broadcasts of any organization whose lease ran out by `now` (their resolver
    /// died), oldest first.
    async fn stalled_broadcasts(&self, now: Timestamp, limit: u32)
    -> Result<Vec<Uuid>, StoreError>;

    /// Take over a stalled broadcast with `lease`: only if it is still `resolving` and its lease
    /// ran out by `now`. Answers the broadcast as taken, or `None` when another process took it
    /// first or it finished.
    async fn take_over_broadcast(
        &self,
        id: Uuid,
        lease: Lease,
        now: Timestamp,
    ) -> Result<Option<Broadcast>, StoreError>;

    /// Cancel a broadcast: it stops resolving (its resolver's next batch is refused) and every
    /// message of it not yet handed to a provider (queued or scheduled) is canceled, releasing
    /// its credits. Messages already being sent are not recalled.
    async fn cancel_broadcast(
        &self,
        scope: Scope,
        id: Uuid,
        now: Timestamp,
    ) -> Result<Result<Broadcast, BroadcastCancelRefusal>, StoreError>;
}
