//! The [`Store`] trait.

use async_trait::async_trait;
use jiff::Timestamp;
use uuid::Uuid;

use crate::error::StoreError;
use herald_domain::status::MessageStatus;

use crate::accounts::*;
use crate::audience::AudienceStore;
use crate::automation::AutomationStore;
use crate::broadcasts::BroadcastStore;
use crate::campaigns::CampaignStore;
use crate::contacts::ContactStore;
use crate::credits::CreditStore;
use crate::inbound::InboundMessage;
use crate::model::*;
use crate::opt_outs::OptOut;
use crate::templates::TemplateStore;

/// Everything Herald persists. Implemented for SQLite and PostgreSQL; both pass
/// [`crate::conformance`].
#[async_trait]
pub trait Store:
    ContactStore
    + AudienceStore
    + TemplateStore
    + CreditStore
    + BroadcastStore
    + CampaignStore
    + AutomationStore
    + Send
    + Sync
    + 'static
{
    /// Bring the schema up to date. Safe to run concurrently and repeatedly.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Check the database answers (for `/health`).
    async fn ping(&self) -> Result<(), StoreError>;

    // --- organizations and keys -------------------------------------------------------------

    async fn create_organization(
        &self,
        org: &Organization,
        keys: &[NewApiKey],
    ) -> Result<(), StoreError>;

    /// Create `org` with `keys` only if there is no organization at all yet; returns whether it
    /// did. Two servers starting at once on an empty database create one organization, not two.
    async fn bootstrap_organization(
        &self,
        org: &Organization,
        keys: &[NewApiKey],
    ) -> Result<bool, StoreError>;

    async fn get_organization(&self, id: Uuid) -> Result<Option<Organization>, StoreError>;

    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError>;

    /// Revoke a key; returns the key as it now is, or `None` if there is no such key.
    async fn revoke_api_key(&self, id: Uuid, at: Timestamp) -> Result<Option<ApiKey>, StoreError>;

    async fn list_api_keys(&self, org_id: Uuid) -> Result<Vec<ApiKey>, StoreError>;

    /// The key with this hash and its organization, revoked or not (the caller decides).
    async fn find_api_key(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<(ApiKey, Organization)>, StoreError>;

    async fn touch_api_key(&self, id: Uuid, at: Timestamp) -> Result<(), StoreError>;

    // --- provider accounts and routes ---------------------------------------------------------

    /// Store a new account with its sealed credentials (empty when it has none), honouring an
    /// idempotency key (kept with the organization's live keys: accounts are live settings).
    /// Refused with [`AccountRefusal::NameTaken`], or [`AccountRefusal::NotFound`] when the
    /// organization does not exist.
    async fn create_provider_account(
        &self,
        account: &ProviderAccount,
        sealed_credentials: &[u8],
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AccountCreation, AccountRefusal>, StoreError>;

    async fn get_provider_account(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<ProviderAccount>, StoreError>;

    /// An account of any organization, for operators (`herald provider remove ID`).
    async fn find_provider_account(&self, id: Uuid) -> Result<Option<ProviderAccount>, StoreError>;

    /// Every account of `kind`, of every organization: `(org_id, account_id)`, for work the
    /// server does on all of them (importing SNS opt-out lists).
    async fn accounts_of_kind(&self, kind: ProviderKind) -> Result<Vec<(Uuid, Uuid)>, StoreError>;

    /// An account with its sealed credentials: only for building a provider client.
    async fn provider_account_credentials(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<(ProviderAccount, Vec<u8>)>, StoreError>;

    /// An organization's accounts in the order they were created. `after` is the last id of
    /// the previous page.
    async fn list_provider_accounts(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<ProviderAccount>, StoreError>;

    /// Replace everything but the id, organization, kind and creation time; the credentials
    /// too when `sealed_credentials` is given. Only while the stored `updated_at` is still
    /// `read_at`, so a concurrent change is never overwritten unseen:
    /// [`AccountRefusal::Stale`] otherwise.
    async fn update_provider_account(
        &self,
        account: &ProviderAccount,
        sealed_credentials: Option<&[u8]>,
        read_at: Timestamp,
    ) -> Result<Result<(), AccountRefusal>, StoreError>;

    /// Delete an account no route names; otherwise [`AccountRefusal::InUse`] with the routes.
    async fn delete_provider_account(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Result<(), AccountRefusal>, StoreError>;

    /// Keep a segment price learned from `source`'s pricing API.
    async fn cache_price(
        &self,
        source: &str,
        country: herald_domain::phone::Region,
        price: herald_domain::money::Amount,
        fetched_at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Every price kept from `source`, with when it was fetched.
    async fn cached_prices(
        &self,
        source: &str,
    ) -> Result<
        Vec<(
            herald_domain::phone::Region,
            herald_domain::money::Amount,
            Timestamp,
        )>,
        StoreError,
    >;

    /// Put `phone` (E.164) on the organization's suppression list; `false` when it was already
    /// there (the first source is kept). A change is recorded in the number's history with its
    /// source and the inbound message that caused it, if any.
    async fn opt_out(
        &self,
        org_id: Uuid,
        phone: &str,
        source: &str,
        cause: Option<Uuid>,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Take `phone` off the suppression list; `false` when it was not on it. Recorded like
    /// [`Store::opt_out`].
    async fn opt_in(
        &self,
        org_id: Uuid,
        phone: &str,
        source: &str,
        cause: Option<Uuid>,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// How the organization answers keywords; `None` when there is no such organization.
    async fn keyword_settings(
        &self,
        org_id: Uuid,
    ) -> Result<Option<crate::opt_outs::KeywordSettings>, StoreError>;

    async fn set_keyword_settings(
        &self,
        org_id: Uuid,
        settings: &crate::opt_outs::KeywordSettings,
    ) -> Result<(), StoreError>;

    /// Every change to `phone`'s place on the suppression list, oldest first.
    async fn opt_out_history(
        &self,
        org_id: Uuid,
        phone: &str,
    ) -> Result<Vec<crate::opt_outs::OptOutEvent>, StoreError>;

    /// Which of `phones` are on the organization's suppression list.
    async fn opted_out_among(
        &self,
        org_id: Uuid,
        phones: &[String],
    ) -> Result<Vec<OptOut>, StoreError>;

    /// The suppression list by number; `after` is the last number of the previous page.
    async fn list_opt_outs(
        &self,
        org_id: Uuid,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<OptOut>, Option<String>), StoreError>;

    /// Store an inbound message; `false` when the provider delivered it before (nothing new
    /// is written).
    async fn insert_inbound(&self, message: &InboundMessage) -> Result<bool, StoreError>;

    /// An organization's inbound messages, newest first; `after` is the last id of the
    /// previous page.
    async fn list_inbound(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<InboundMessage>, StoreError>;

    /// The organization and account whose senders include the phone number `number`, among
    /// accounts of `kind`: who owns a number an inbound message was sent to.
    async fn find_number_owner(
        &self,
        kind: ProviderKind,
        number: &str,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError>;

    /// Every route of an organization: the default route first, then by country and prefix.
    async fn list_routes(&self, org_id: Uuid) -> Result<Vec<Route>, StoreError>;

    /// Create or replace the route for `route.key`. Refused with
    /// [`AccountRefusal::UnknownAccounts`] when an id is not one of the organization's accounts.
    async fn set_route(
        &self,
        org_id: Uuid,
        route: &Route,
    ) -> Result<Result<(), AccountRefusal>, StoreError>;

    /// Remove a route; returns whether there was one.
    async fn delete_route(&self, org_id: Uuid, key: &RouteKey) -> Result<bool, StoreError>;

    // --- accepting and reading messages -------------------------------------------------------

    /// Store messages with their idempotency keys in one transaction, in order: a key used
    /// twice in the batch replays the first. Returns what happened to each.
    async fn accept_messages(
        &self,
        items: &[(NewMessage, Option<IdempotencyRecord>)],
        now: Timestamp,
    ) -> Result<Vec<Insertion>, StoreError>;

    /// Store one message, honouring an idempotency key.
    async fn insert_message(
        &self,
        message: &NewMessage,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Insertion, StoreError> {
        let item = (message.clone(), idempotency.cloned());
        let mut insertions = self
            .accept_messages(std::slice::from_ref(&item), now)
            .await?;
        insertions
            .pop()
            .ok_or_else(|| StoreError::Corrupt("an accepted message vanished".into()))
    }

    /// Store many prepared messages at once, each with its first status, without idempotency
    /// keys: for broadcasts, campaigns and benchmarks. Committed in chunks, so a huge batch
    /// never holds the write lock for long; returns how many were stored.
    async fn insert_messages(&self, messages: &[NewMessage]) -> Result<u64, StoreError>;

    async fn get_message(&self, scope: Scope, id: Uuid) -> Result<Option<Message>, StoreError>;

    /// Newest first. `after` is the last id of the previous page.
    async fn list_messages(
        &self,
        scope: Scope,
        filter: &MessageFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Message>, StoreError>;

    /// Number of messages of an organization (all modes); for operators and tests.
    async fn count_messages(&self, org_id: Uuid) -> Result<u64, StoreError>;

    /// How many of an organization's messages (all modes) are in each status; statuses with
    /// none are left out.
    async fn status_counts(&self, org_id: Uuid) -> Result<Vec<(MessageStatus, u64)>, StoreError>;

    async fn cancel_message(
        &self,
        scope: Scope,
        id: Uuid,
        now: Timestamp,
    ) -> Result<Result<Message, CancelRefusal>, StoreError>;

    // --- the dispatcher's queue ---------------------------------------------------------------

    /// Move scheduled messages whose time has come to `queued`; returns how many.
    async fn release_due(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// Take up to `wanted` tokens from the token bucket `bucket` (created full on first use),
    /// refilled at `rate` until `now`; answers how many were granted. One transaction with the
    /// bucket's row locked, so processes sharing the database share the limit.
    async fn take_tokens(
        &self,
        bucket: &str,
        rate: crate::rate::Rate,
        wanted: u32,
        now: Timestamp,
    ) -> Result<u32, StoreError>;

    /// The earliest `send_at` of a scheduled message, if any, so the scheduler can sleep until
    /// exactly then.
    async fn next_scheduled_at(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Claim up to `limit` due messages, highest priority and oldest first: mark them `sending`
    /// with a lease until `lease_until`, count the attempt, commit. Concurrent claimers never
    /// receive the same message.
    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Record what providers answered to send calls and what they reported since, in one
    /// transaction: results first, then reports. Duplicate and late reports change nothing, and
    /// a result for an attempt that is no longer current is ignored unless it tells us the
    /// provider has the message. Returns what each report did.
    async fn record(
        &self,
        results: &[SendResult],
        reports: &[ProviderReport],
        now: Timestamp,
    ) -> Result<Vec<ReportOutcome>, StoreError>;

    /// [`Store::record`] with results only.
    async fn record_results(
        &self,
        results: &[SendResult],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.record(results, &[], now).await.map(|_| ())
    }

    /// [`Store::record`] with reports only.
    async fn apply_reports(
        &self,
        reports: &[ProviderReport],
        now: Timestamp,
    ) -> Result<Vec<ReportOutcome>, StoreError> {
        self.record(&[], reports, now).await
    }

    /// Messages still `sending` after their lease ran out become `unknown`; returns how many.
    async fn expire_leases(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// `unknown` messages due for reconciliation.
    async fn unsettled(&self, now: Timestamp, limit: u32) -> Result<Vec<Unsettled>, StoreError>;

    /// Record what reconciliation learned.
    async fn settle(
        &self,
        settlements: &[(Uuid, Settlement)],
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Forget idempotency keys past their expiry; returns how many.
    async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError>;
}
