//! Lists (static memberships of contacts) and segments (saved rules that select contacts).

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::Value;
use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{IdempotencyRecord, Page};
use crate::segment::Rule;

/// A static list of an organization's contacts (a course's participants, an event's guests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List {
    pub id: Uuid,
    pub org_id: Uuid,
    /// Unique within the organization.
    pub name: String,
    pub description: Option<String>,
    /// Contacts in the list, as read (ignored when writing).
    pub member_count: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A saved rule. The rule is kept as the JSON it was given, validated before it is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub id: Uuid,
    pub org_id: Uuid,
    /// Unique within the organization.
    pub name: String,
    pub description: Option<String>,
    pub rule: Value,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Why a list or segment write was refused; nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudienceRefusal {
    NotFound,
    /// The organization already has a list (or segment) with this name.
    NameTaken,
    /// The list (or segment) changed since the caller read it.
    Stale,
}

/// What creating a contact, list or segment did with its `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AudienceCreation {
    Created,
    /// The key was used before with the same request: the id created then and the response
    /// given.
    Replayed {
        id: Uuid,
        response: Vec<u8>,
    },
    /// The key was used before with a different request; nothing was stored.
    KeyReused,
}

/// What a bulk membership change did, contact by contact (duplicates in the request counted
/// once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Added (or removed).
    pub changed: u64,
    /// Already members when adding; not members when removing.
    pub unchanged: u64,
    /// Ids that are not contacts of the organization: never added.
    pub unknown: Vec<Uuid>,
}

/// What the store keeps about lists and segments. Every method is scoped by organization:
/// another organization's list, segment or contact is not found.
#[async_trait]
pub trait AudienceStore: Send + Sync + 'static {
    async fn create_list(
        &self,
        list: &List,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AudienceCreation, AudienceRefusal>, StoreError>;

    async fn get_list(&self, org_id: Uuid, id: Uuid) -> Result<Option<List>, StoreError>;

    /// Lists in creation order; `after` is the last id of the previous page.
    async fn list_lists(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<List>, StoreError>;

    /// Write the name, description and `updated_at`, only while the stored `updated_at` is
    /// still `read_at` ([`AudienceRefusal::Stale`] otherwise), so a change made since the read
    /// is never overwritten.
    async fn update_list(
        &self,
        list: &List,
        read_at: Timestamp,
    ) -> Result<Result<(), AudienceRefusal>, StoreError>;

    /// Delete a list with its memberships (never the contacts); `false` when there was none.
    async fn delete_list(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError>;

    /// Add the organization's contacts among `contact_ids` to the list in one transaction.
    /// `None` when there is no such list.
    async fn add_list_members(
        &self,
        org_id: Uuid,
        list_id: Uuid,
        contact_ids: &[Uuid],
        now: Timestamp,
    ) -> Result<Option<Membership>, StoreError>;

    /// Remove contacts from the list in one transaction. `None` when there is no such list.
    async fn remove_list_members(
        &self,
        org_id: Uuid,
        list_id: Uuid,
        contact_ids: &[Uuid],
    ) -> Result<Option<Membership>, StoreError>;

    /// Member contact ids in id order; `None` when there is no such list.
    async fn list_members(
        &self,
        org_id: Uuid,
        list_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Option<Page<Uuid>>, StoreError>;

    async fn create_segment(
        &self,
        segment: &Segment,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AudienceCreation, AudienceRefusal>, StoreError>;

    async fn get_segment(&self, org_id: Uuid, id: Uuid) -> Result<Option<Segment>, StoreError>;

    /// Segments in creation order; `after` is the last id of the previous page.
    async fn list_segments(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Segment>, StoreError>;

    /// Write the name, description, rule and `updated_at`, only while the stored `updated_at`
    /// is still `read_at` ([`AudienceRefusal::Stale`] otherwise).
    async fn update_segment(
        &self,
        segment: &Segment,
        read_at: Timestamp,
    ) -> Result<Result<(), AudienceRefusal>, StoreError>;

    async fn delete_segment(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError>;

    /// Ids of the organization's contacts matching `rule` at `now`, in id order; `after` is the
    /// last id of the previous page.
    async fn segment_members(
        &self,
        org_id: Uuid,
        rule: &Rule,
        now: Timestamp,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Uuid>, StoreError>;

    /// How many of the organization's contacts match `rule` at `now`.
    async fn count_segment(
        &self,
        org_id: Uuid,
        rule: &Rule,
        now: Timestamp,
    ) -> Result<u64, StoreError>;
}
