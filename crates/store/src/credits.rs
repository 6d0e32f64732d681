//! Credits, spend limits, usage and the destinations an organization may send to.
//!
//! An organization is *unmetered* until credits are first granted to it: its messages reserve
//! nothing and no counter is touched, so the hot path costs nothing for it. Once metered, every
//! message queued reserves `segments` credits in the transaction that stores it; the provider
//! accepting it consumes them, and a cancel, a suppression or a failure before any provider
//! took it releases them. Test-mode messages never use credits: they only reach the simulator.
//! [`Ledger`] holds the reservation rules both backends share.

use std::collections::HashMap;

use async_trait::async_trait;
use herald_domain::message::{MessageType, Mode};
use herald_domain::money::{Amount, Currency};
use herald_domain::phone::Region;
use jiff::Timestamp;
use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{NewMessage, Scope};

/// An organization's credit account as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditAccount {
    pub org_id: Uuid,
    /// Whether sends reserve credits. Off until credits are first granted.
    pub metered: bool,
    /// Credits owned, including those reserved by queued messages.
    pub balance: i64,
    /// Credits held by messages not yet handed to a provider.
    pub reserved: i64,
    /// Most the organization may spend (estimated cost of metered messages) per calendar month
    /// (UTC), in its price currency.
    pub spend_limit: Option<Amount>,
    /// What metered messages accepted this month are estimated to cost (released ones excluded).
    pub month_spend: Amount,
}

impl CreditAccount {
    /// An organization that was never granted anything.
    pub fn unmetered(org_id: Uuid) -> CreditAccount {
        CreditAccount {
            org_id,
            metered: false,
            balance: 0,
            reserved: 0,
            spend_limit: None,
            month_spend: Amount::from_micros(0),
        }
    }

    /// Credits a new message may still reserve.
    pub fn available(&self) -> i64 {
        self.balance - self.reserved
    }
}

/// One entry of the credit ledger: who added (or removed) credits, when and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditGrant {
    pub id: Uuid,
    pub org_id: Uuid,
    /// Positive adds credits; negative takes unreserved credits back.
    pub credits: i64,
    pub reason: Option<String>,
    /// `operator` (API with the operator token) or `cli`.
    pub granted_by: String,
    pub created_at: Timestamp,
}

/// What a grant did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantOutcome {
    /// Recorded; the account as it now is.
    Granted(CreditAccount),
    /// The idempotency key was used before with the same request: its first response.
    Replayed { grant_id: Uuid, response: Vec<u8> },
    /// The key was used before with a different request; nothing was changed.
    KeyReused,
}

/// Why a grant was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantRefusal {
    NotFound,
    /// Taking credits back would leave fewer than are reserved (or a negative balance).
    WouldOverdraw {
        available: i64,
    },
}

/// Why messages were refused before anything was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreditRefusal {
    /// Not enough unreserved credits.
    InsufficientCredits { needed: i64, available: i64 },
    /// The month's estimated spend would pass the limit.
    SpendLimitReached {
        needed: Amount,
        spent: Amount,
        limit: Amount,
    },
}

impl std::fmt::Display for CreditRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreditRefusal::InsufficientCredits { needed, available } => write!(
                f,
                "this needs {needed} credits and {available} are available"
            ),
            CreditRefusal::SpendLimitReached {
                needed,
                spent,
                limit,
            } => write!(
                f,
                "this would cost {needed} more; {spent} of this month's limit of {limit} is spent"
            ),
        }
    }
}

/// Counts, segments and cost of one organization's messages of one month, for one destination
/// country and message type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub country: Option<Region>,
    pub kind: MessageType,
    pub currency: Currency,
    pub messages: u64,
    pub segments: u64,
    /// Of those, how many a provider accepted (sent, delivered, undelivered).
    pub sent: u64,
    pub estimated_cost: Amount,
    /// What providers reported; only messages with a reported cost count.
    pub actual_cost: Amount,
}

/// What the store keeps about an organization's credits and spending.
#[async_trait]
pub trait CreditStore: Send + Sync + 'static {
    /// The organization's account with this month's spend (`month` as `YYYY-MM`); `None` when
    /// there is no such organization.
    async fn credit_account(
        &self,
        org_id: Uuid,
        month: &str,
    ) -> Result<Option<CreditAccount>, StoreError>;

    /// Add `grant.credits` to the balance and record the grant, honouring an idempotency key
    /// (kept with the organization's live keys); the organization becomes metered.
    async fn grant_credits(
        &self,
        grant: &CreditGrant,
        idempotency: Option<&crate::model::IdempotencyRecord>,
        month: &str,
    ) -> Result<Result<GrantOutcome, GrantRefusal>, StoreError>;

    /// Turn metering on or off; `false` when there is no such organization. Messages already
    /// queued keep what they reserved.
    async fn set_metered(&self, org_id: Uuid, metered: bool) -> Result<bool, StoreError>;

    /// Set or clear the monthly spend limit; `false` when there is no such organization.
    async fn set_spend_limit(
        &self,
        org_id: Uuid,
        limit: Option<Amount>,
    ) -> Result<bool, StoreError>;

    /// The ledger, newest first.
    async fn list_credit_grants(
        &self,
        org_id: Uuid,
        limit: u32,
    ) -> Result<Vec<CreditGrant>, StoreError>;

    /// The destination countries the organization chose, sorted; `None` when it never chose
    /// (then only its own country is allowed).
    async fn allowed_countries(&self, org_id: Uuid) -> Result<Option<Vec<Region>>, StoreError>;

    /// Replace the allowed destination countries; `false` when there is no such organization.
    async fn set_allowed_countries(
        &self,
        org_id: Uuid,
        countries: &[Region],
    ) -> Result<bool, StoreError>;

    /// Usage of `scope` for messages created in `[from, until)`, by country and type.
    async fn usage(
        &self,
        scope: Scope,
        from: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<UsageRow>, StoreError>;
}

/// `YYYY-MM` of `at` in UTC: the month a spend counter belongs to.
pub fn month_of(at: Timestamp) -> String {
    let date = at.to_zoned(jiff::tz::TimeZone::UTC).date();
    format!("{:04}-{:02}", date.year(), date.month())
}

/// A metered organization's counters as loaded (and locked) inside an accept transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditState {
    pub org_id: Uuid,
    pub balance: i64,
    pub reserved: i64,
    pub spend_limit: Option<i64>,
    /// Estimated spend of the month being accepted into.
    pub spent: i64,
}

/// Reservations made over one accept transaction, applied in memory in order so that each
/// request sees what the earlier ones reserved; the backend writes the totals once at the end.
pub struct Ledger {
    states: HashMap<Uuid, CreditState>,
    /// `(reserved, spent)` added per organization.
    added: HashMap<Uuid, (i64, i64)>,
}

impl Ledger {
    /// Start over the metered organizations of the batch (others reserve nothing).
    pub fn new(states: impl IntoIterator<Item = CreditState>) -> Ledger {
        Ledger {
            states: states.into_iter().map(|s| (s.org_id, s)).collect(),
            added: HashMap::new(),
        }
    }

    /// Whether nothing in the batch is metered: the backend can skip all credit work.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Reserve for a group of messages all at once, or for none of them. Returns the credits
    /// each message reserved: 0 for unmetered organizations, for test-mode messages (they only
    /// ever reach the simulator, which costs nothing) and for `skip`ped ones (messages
    /// suppressed before queueing).
    pub fn reserve(
        &mut self,
        messages: &[&NewMessage],
        skip: impl Fn(&NewMessage) -> bool,
    ) -> Result<Vec<u32>, CreditRefusal> {
        let mut wanted: HashMap<Uuid, (i64, i64)> = HashMap::new();
        let mut credits = Vec::with_capacity(messages.len());
        for message in messages {
            let org = message.scope.org_id;
            if message.scope.mode == Mode::Test || skip(message) || !self.states.contains_key(&org)
            {
                credits.push(0);
                continue;
            }
            let entry = wanted.entry(org).or_default();
            entry.0 += i64::from(message.segments);
            entry.1 += message.estimated_cost.micros();
            credits.push(message.segments);
        }
        for (org, (needed, cost)) in &wanted {
            let state = &self.states[org];
            let available = state.balance - state.reserved;
            if *needed > available {
                return Err(CreditRefusal::InsufficientCredits {
                    needed: *needed,
                    available: available.max(0),
                });
            }
            if let Some(limit) = state.spend_limit
                && state.spent + cost > limit
            {
                return Err(CreditRefusal::SpendLimitReached {
                    needed: Amount::from_micros(*cost),
                    spent: Amount::from_micros(state.spent),
                    limit: Amount::from_micros(limit),
                });
            }
        }
        for (org, (needed, cost)) in wanted {
            let state = self.states.get_mut(&org).expect("checked above");
            state.reserved += needed;
            state.spent += cost;
            let added = self.added.entry(org).or_default();
            added.0 += needed;
            added.1 += cost;
        }
        Ok(credits)
    }

    /// `(org, reserved added, spend added)` for every organization that reserved something,
    /// in id order (the order rows are locked in).
    pub fn finish(self) -> Vec<(Uuid, i64, i64)> {
        let mut changes: Vec<_> = self
            .added
            .into_iter()
            .filter(|(_, (reserved, spent))| *reserved != 0 || *spent != 0)
            .map(|(org, (reserved, spent))| (org, reserved, spent))
            .collect();
        changes.sort_unstable();
        changes
    }
}

/// What status changes did to credits: consumed when a provider took a message, released when
/// it ended without one. Keyed by organization and the month the message was accepted in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreditMoves {
    pub moves: HashMap<(Uuid, String), CreditMove>,
}

/// One organization's and month's share of [`CreditMoves`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct CreditMove {
    /// Credits consumed: a provider took the message.
    pub consumed: i64,
    /// Credits released: the message ended without a provider.
    pub released: i64,
    /// The change to the month's spend, in micros: minus the cost of messages released, plus
    /// the difference between a provider's actual cost and the cost counted so far (the
    /// estimate, or an earlier actual cost).
    pub spend: i64,
}

impl CreditMoves {
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// Every move, sorted by organization so rows are locked in one order.
    pub fn sorted(&self) -> Vec<(Uuid, String, CreditMove)> {
        let mut moves: Vec<_> = self
            .moves
            .iter()
            .map(|((org, month), change)| (*org, month.clone(), *change))
            .collect();
        moves.sort();
        moves
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_utc_calendar_months() {
        let at: Timestamp = "2026-01-31T23:59:59Z".parse().unwrap();
        assert_eq!(month_of(at), "2026-01");
        let at: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(month_of(at), "2026-12");
    }
}
