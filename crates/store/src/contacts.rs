//! Contacts: the people an organization sends to, one per phone number.

use async_trait::async_trait;
use herald_domain::phone::Region;
use jiff::Timestamp;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::audience::AudienceCreation;
use crate::error::StoreError;
use crate::model::{IdempotencyRecord, Page};

/// The lead statuses an organization starts with.
pub const DEFAULT_LEAD_STATUSES: [&str; 5] = ["new", "contacted", "qualified", "customer", "lost"];

/// A contact as stored. The phone number is E.164 and unique within the organization.
#[derive(Clone, Debug, PartialEq)]
pub struct Contact {
    pub id: Uuid,
    pub org_id: Uuid,
    pub phone: String,
    /// The phone number's country.
    pub country: Option<Region>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    /// IANA time zone (`Europe/Paris`).
    pub time_zone: Option<String>,
    /// BCP 47 language tag (`fr`, `pt-BR`).
    pub language: Option<String>,
    /// One of the organization's lead statuses.
    pub lead_status: String,
    /// Distinct, sorted.
    pub tags: Vec<String>,
    pub custom: Map<String, Value>,
    /// Whether the person agreed to promotional messages.
    pub consent: bool,
    /// Where the consent (or its withdrawal) was recorded: a form, an import, the API…
    pub consent_source: Option<String>,
    pub consent_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Contact {
    /// A contact with only its number, as of `now`, in the first default lead status.
    pub fn new(org_id: Uuid, phone: &str, country: Option<Region>, now: Timestamp) -> Contact {
        Contact {
            id: Uuid::now_v7(),
            org_id,
            phone: phone.to_owned(),
            country,
            first_name: None,
            last_name: None,
            email: None,
            time_zone: None,
            language: None,
            lead_status: DEFAULT_LEAD_STATUSES[0].to_owned(),
            tags: Vec::new(),
            custom: Map::new(),
            consent: false,
            consent_source: None,
            consent_at: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// Changes to some of a contact's fields; `None` leaves a field as it is, `Some(None)` clears
/// it. Custom fields merge key by key, and a `null` value removes the key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContactPatch {
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub time_zone: Option<Option<String>>,
    pub language: Option<Option<String>>,
    pub lead_status: Option<String>,
    pub tags: Option<Vec<String>>,
    pub custom: Option<Map<String, Value>>,
    /// Consent with its source; the time is the time of the change.
    pub consent: Option<(bool, Option<String>)>,
}

impl ContactPatch {
    /// Apply the changes to `contact` as of `now`; `updated_at` moves only if something
    /// changed. Returns whether something did.
    pub fn apply(&self, contact: &mut Contact, now: Timestamp) -> bool {
        let before = contact.clone();
        let set = |field: &mut Option<String>, value: &Option<Option<String>>| {
            if let Some(value) = value {
                field.clone_from(value);
            }
        };
        set(&mut contact.first_name, &self.first_name);
        set(&mut contact.last_name, &self.last_name);
        set(&mut contact.email, &self.email);
        set(&mut contact.time_zone, &self.time_zone);
        set(&mut contact.language, &self.language);
        if let Some(status) = &self.lead_status {
            contact.lead_status.clone_from(status);
        }
        if let Some(tags) = &self.tags {
            contact.tags = normalize_tags(tags.iter().cloned());
        }
        if let Some(custom) = &self.custom {
            for (key, value) in custom {
                if value.is_null() {
                    contact.custom.remove(key);
                } else {
                    contact.custom.insert(key.clone(), value.clone());
                }
            }
        }
        if let Some((consent, source)) = &self.consent
            && (*consent != contact.consent || *source != contact.consent_source)
        {
            contact.consent = *consent;
            contact.consent_source.clone_from(source);
            contact.consent_at = Some(now);
        }
        let changed = *contact != before;
        if changed {
            contact.updated_at = now;
        }
        changed
    }
}

/// Tags as stored: trimmed, distinct, sorted, empty ones dropped.
pub fn normalize_tags(tags: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut tags: Vec<String> = tags
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// What narrows a contact listing. Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContactFilter {
    pub tag: Option<String>,
    pub lead_status: Option<String>,
    /// Case-insensitive substring of the first name, last name, or phone number.
    pub search: Option<String>,
    pub created_from: Option<Timestamp>,
    /// Exclusive.
    pub created_to: Option<Timestamp>,
}

/// Why a contact change was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContactRefusal {
    /// Another contact of the organization has this phone number.
    PhoneTaken {
        existing: Uuid,
    },
    NotFound,
    /// The contact changed since it was read.
    Stale,
}

/// What an import did with one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upserted {
    Created(Uuid),
    Updated(Uuid),
    /// The row matched a contact and changed nothing.
    Unchanged(Uuid),
}

/// How a batch of import rows lands on the contacts already there: what to insert, what to
/// write back, and what became of each row. Both backends read the batch's numbers in one
/// query, plan with this, and write in bulk.
#[derive(Debug, Default)]
pub struct UpsertPlan {
    /// Each row's outcome, in order.
    pub outcomes: Vec<Upserted>,
    /// New contacts, in the order their numbers first appeared.
    pub created: Vec<Contact>,
    /// Changed contacts, each with the `updated_at` it was read with.
    pub updated: Vec<(Contact, Timestamp)>,
}

impl UpsertPlan {
    /// Apply `rows` in order to `existing` (the organization's contacts with the rows' numbers,
    /// by number). A number given twice in the batch is created (or read) once, and the later
    /// row updates it, as if the rows had been written one by one.
    pub fn of(
        org_id: Uuid,
        rows: &[ContactUpsert],
        default_lead_status: &str,
        now: Timestamp,
        mut existing: std::collections::HashMap<String, Contact>,
    ) -> UpsertPlan {
        struct Pending {
            contact: Contact,
            /// `None` for a contact this batch creates.
            read_at: Option<Timestamp>,
            changed: bool,
        }
        let mut pending: std::collections::HashMap<&str, Pending> =
            std::collections::HashMap::with_capacity(rows.len());
        let mut order: Vec<&str> = Vec::with_capacity(rows.len());
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            let entry = match pending.entry(row.phone.as_str()) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    order.push(row.phone.as_str());
                    match existing.remove(&row.phone) {
                        Some(contact) => entry.insert(Pending {
                            read_at: Some(contact.updated_at),
                            contact,
                            changed: false,
                        }),
                        None => {
                            let mut fresh = Contact::new(org_id, &row.phone, row.country, now);
                            fresh.lead_status = default_lead_status.to_owned();
                            row.patch.apply(&mut fresh, now);
                            fresh.updated_at = now;
                            outcomes.push(Upserted::Created(fresh.id));
                            entry.insert(Pending {
                                contact: fresh,
                                read_at: None,
                                changed: true,
                            });
                            continue;
                        }
                    }
                }
            };
            if row.patch.apply(&mut entry.contact, now) {
                entry.changed = true;
                outcomes.push(Upserted::Updated(entry.contact.id));
            } else {
                outcomes.push(Upserted::Unchanged(entry.contact.id));
            }
        }
        let mut plan = UpsertPlan {
            outcomes,
            ..UpsertPlan::default()
        };
        for phone in order {
            let Some(entry) = pending.remove(phone) else {
                continue;
            };
            match entry.read_at {
                None => plan.created.push(entry.contact),
                Some(read_at) if entry.changed => plan.updated.push((entry.contact, read_at)),
                Some(_) => {}
            }
        }
        plan
    }
}

/// One row of an import: a phone number (E.164) with the fields the file gave.
#[derive(Clone, Debug, PartialEq)]
pub struct ContactUpsert {
    pub phone: String,
    pub country: Option<Region>,
    pub patch: ContactPatch,
}

/// What an erasure removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Messages whose recipient and body were redacted.
    pub messages: u64,
    /// Inbound messages whose sender and body were redacted.
    pub inbound: u64,
}

/// Where an import stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportStatus {
    Running,
    Completed,
    /// Stopped part-way (an unreadable file, a lost connection); rows before the failure are
    /// committed.
    Failed,
}

impl ImportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportStatus::Running => "running",
            ImportStatus::Completed => "completed",
            ImportStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<ImportStatus> {
        [
            ImportStatus::Running,
            ImportStatus::Completed,
            ImportStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A CSV import of contacts and what it did so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactImport {
    pub id: Uuid,
    pub org_id: Uuid,
    pub status: ImportStatus,
    /// Data rows read (the header is not counted).
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub invalid: u64,
    /// Why a failed import stopped.
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

/// One problem with one row of an import. Messages never quote the row's values, so the
/// report holds no personal data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    /// The line's number in the file, the header being line 1.
    pub row: u64,
    pub field: String,
    pub code: String,
    pub message: String,
}

/// What the store keeps about contacts.
#[async_trait]
pub trait ContactStore: Send + Sync + 'static {
    /// Store a new contact, keeping `idempotency` (if any) in the same transaction. A key
    /// already used with the same request answers the contact it created instead; refused
    /// when the organization already has the phone number, and then no key is kept.
    async fn create_contact(
        &self,
        contact: &Contact,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AudienceCreation, ContactRefusal>, StoreError>;

    async fn get_contact(&self, org_id: Uuid, id: Uuid) -> Result<Option<Contact>, StoreError>;

    async fn find_contact_by_phone(
        &self,
        org_id: Uuid,
        phone: &str,
    ) -> Result<Option<Contact>, StoreError>;

    /// The organization's contacts with these numbers (E.164), by number, in one read.
    async fn find_contacts_by_phone(
        &self,
        org_id: Uuid,
        phones: &[&str],
    ) -> Result<std::collections::HashMap<String, Contact>, StoreError>;

    /// The organization's contacts among `ids` (others are left out).
    async fn contacts_by_id(&self, org_id: Uuid, ids: &[Uuid]) -> Result<Vec<Contact>, StoreError>;

    /// Replace every field but the id, organization and creation time, only while the stored
    /// `updated_at` is still `read_at`.
    async fn update_contact(
        &self,
        contact: &Contact,
        read_at: Timestamp,
    ) -> Result<Result<(), ContactRefusal>, StoreError>;

    /// Delete a contact (and its list memberships); `false` when there was none.
    async fn delete_contact(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError>;

    /// Delete a contact and remove its phone number from everything else the organization
    /// holds: messages to it and from it keep their counts, status and cost, but their number
    /// and body are redacted; idempotency keys whose replayed response quotes the number (the
    /// contact's creation, messages to it) are forgotten. `None` when there is no such contact.
    async fn erase_contact(
        &self,
        org_id: Uuid,
        id: Uuid,
        now: Timestamp,
    ) -> Result<Option<Erasure>, StoreError>;

    /// Contacts in creation order (oldest first); `after` is the last id of the previous page.
    async fn list_contacts(
        &self,
        org_id: Uuid,
        filter: &ContactFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Contact>, StoreError>;

    /// Create or update contacts by phone number in one transaction: a new number becomes a
    /// contact with `lead_status` unless the row names one; a known number gets the row's
    /// fields. Answers each row in order.
    async fn upsert_contacts(
        &self,
        org_id: Uuid,
        rows: &[ContactUpsert],
        default_lead_status: &str,
        now: Timestamp,
    ) -> Result<Vec<Upserted>, StoreError>;

    /// Store an import as it now stands (created on first save), with row errors found since
    /// the last save.
    async fn save_contact_import(
        &self,
        import: &ContactImport,
        errors: &[RowError],
    ) -> Result<(), StoreError>;

    async fn get_contact_import(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<ContactImport>, StoreError>;

    /// An import's row errors by row; `after` is the last row of the previous page.
    async fn list_contact_import_errors(
        &self,
        org_id: Uuid,
        id: Uuid,
        after: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<RowError>, Option<u64>), StoreError>;

    /// The organization's lead statuses, in order.
    async fn lead_statuses(&self, org_id: Uuid) -> Result<Vec<String>, StoreError>;

    /// Replace the organization's lead statuses.
    async fn set_lead_statuses(&self, org_id: Uuid, statuses: &[String]) -> Result<(), StoreError>;
}
