//! Contacts on SQLite. Tags and custom fields are JSON text; every statement names the
//! organization, so another organization's contact is simply not found.

use async_trait::async_trait;
use herald_store::*;
use jiff::Timestamp;
use serde_json::{Map, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use crate::SqliteStore;
use crate::audience::live;
use crate::convert::{self, Ctx, micros};
use crate::messages;

/// Columns read into a [`Contact`], in the order [`contact`] expects.
pub(crate) const COLUMNS: &str = "id, org_id, phone, country, first_name, last_name, email, time_zone, \
     language, lead_status, tags, custom, consent, consent_source, consent_at, created_at, \
     updated_at";

/// What stands in for a phone number and a body once their person is erased.
const REDACTED: &str = "redacted";

pub(crate) fn contact(row: &SqliteRow) -> Result<Contact, StoreError> {
    let tags: String = row.get(10);
    let custom: String = row.get(11);
    Ok(Contact {
        id: row.get(0),
        org_id: row.get(1),
        phone: row.get(2),
        country: convert::opt_region(row.get(3))?,
        first_name: row.get(4),
        last_name: row.get(5),
        email: row.get(6),
        time_zone: row.get(7),
        language: row.get(8),
        lead_status: row.get(9),
        tags: serde_json::from_str(&tags)
            .map_err(|e| StoreError::Corrupt(format!("contact tags: {e}")))?,
        custom: serde_json::from_str::<Map<String, Value>>(&custom)
            .map_err(|e| StoreError::Corrupt(format!("contact custom fields: {e}")))?,
        consent: row.get(12),
        consent_source: row.get(13),
        consent_at: convert::opt_timestamp(row.get(14))?,
        created_at: convert::timestamp(row.get(15))?,
        updated_at: convert::timestamp(row.get(16))?,
    })
}

fn json(value: Value) -> String {
    value.to_string()
}

fn strings(items: &[String]) -> String {
    json(Value::from(items.to_vec()))
}

async fn by_phone(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    phone: &str,
) -> Result<Option<Contact>, StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM contacts WHERE org_id = ?1 AND phone = ?2"
    )))
    .bind(org_id)
    .bind(phone)
    .fetch_optional(conn)
    .await
    .ctx("failed to find a contact by phone")?
    .as_ref()
    .map(contact)
    .transpose()
}

/// The organization's contacts with these numbers, by number.
async fn by_phones(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    phones: &[&str],
) -> Result<std::collections::HashMap<String, Contact>, StoreError> {
    let list = serde_json::to_string(phones).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM contacts WHERE org_id = ?1 \
         AND phone IN (SELECT value FROM json_each(?2))"
    )))
    .bind(org_id)
    .bind(list)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to find contacts by phone")?;
    rows.iter()
        .map(|row| contact(row).map(|c| (c.phone.clone(), c)))
        .collect()
}

/// Insert new contacts, many to a statement (17 binds each, well within SQLite's limit).
async fn insert_many(conn: &mut SqliteConnection, contacts: &[Contact]) -> Result<(), StoreError> {
    for chunk in contacts.chunks(1_000) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO contacts (id, org_id, phone, country, first_name, last_name, email, \
             time_zone, language, lead_status, tags, custom, consent, consent_source, consent_at, \
             created_at, updated_at) ",
        );
        query.push_values(chunk, |mut row, c| {
            row.push_bind(c.id)
                .push_bind(c.org_id)
                .push_bind(c.phone.clone())
                .push_bind(c.country.as_ref().map(|r| r.as_str().to_owned()))
                .push_bind(c.first_name.clone())
                .push_bind(c.last_name.clone())
                .push_bind(c.email.clone())
                .push_bind(c.time_zone.clone())
                .push_bind(c.language.clone())
                .push_bind(c.lead_status.clone())
                .push_bind(strings(&c.tags))
                .push_bind(json(Value::Object(c.custom.clone())))
                .push_bind(c.consent)
                .push_bind(c.consent_source.clone())
                .push_bind(c.consent_at.map(micros))
                .push_bind(micros(c.created_at))
                .push_bind(micros(c.updated_at));
        });
        query
            .build()
            .execute(&mut *conn)
            .await
            .ctx("failed to store contacts")?;
    }
    Ok(())
}

async fn insert(conn: &mut SqliteConnection, c: &Contact) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO contacts (id, org_id, phone, country, first_name, last_name, email, \
         time_zone, language, lead_status, tags, custom, consent, consent_source, consent_at, \
         created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )
    .bind(c.id)
    .bind(c.org_id)
    .bind(&c.phone)
    .bind(c.country.as_ref().map(|r| r.as_str().to_owned()))
    .bind(&c.first_name)
    .bind(&c.last_name)
    .bind(&c.email)
    .bind(&c.time_zone)
    .bind(&c.language)
    .bind(&c.lead_status)
    .bind(strings(&c.tags))
    .bind(json(Value::Object(c.custom.clone())))
    .bind(c.consent)
    .bind(&c.consent_source)
    .bind(c.consent_at.map(micros))
    .bind(micros(c.created_at))
    .bind(micros(c.updated_at))
    .execute(conn)
    .await
    .ctx("failed to store a contact")?;
    Ok(())
}

/// Write every field but the id, organization and creation time; returns whether a row with
/// `updated_at = read_at` was there to write.
async fn update(
    conn: &mut SqliteConnection,
    c: &Contact,
    read_at: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE contacts SET phone = ?3, country = ?4, first_name = ?5, last_name = ?6, \
         email = ?7, time_zone = ?8, language = ?9, lead_status = ?10, tags = ?11, custom = ?12, \
         consent = ?13, consent_source = ?14, consent_at = ?15, updated_at = ?16 \
         WHERE org_id = ?1 AND id = ?2 AND updated_at = ?17",
    )
    .bind(c.org_id)
    .bind(c.id)
    .bind(&c.phone)
    .bind(c.country.as_ref().map(|r| r.as_str().to_owned()))
    .bind(&c.first_name)
    .bind(&c.last_name)
    .bind(&c.email)
    .bind(&c.time_zone)
    .bind(&c.language)
    .bind(&c.lead_status)
    .bind(strings(&c.tags))
    .bind(json(Value::Object(c.custom.clone())))
    .bind(c.consent)
    .bind(&c.consent_source)
    .bind(c.consent_at.map(micros))
    .bind(micros(c.updated_at))
    .bind(micros(read_at))
    .execute(conn)
    .await
    .ctx("failed to update a contact")?;
    Ok(done.rows_affected() == 1)
}

/// Counts are INTEGER; beyond `i64` they cannot come from a real file.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl ContactStore for SqliteStore {
    async fn create_contact(
        &self,
        contact: &Contact,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AudienceCreation, ContactRefusal>, StoreError> {
        let scope = live(contact.org_id);
        let mut tx = self.write().await?;
        // The key is checked before the number: a retry of a create that succeeded finds its
        // number taken by the contact it made, and must replay rather than be refused.
        if let Some(record) = idempotency
            && let Some(previous) = messages::check_key(&mut tx, scope, record, now).await?
        {
            return Ok(Ok(match previous {
                Insertion::Replayed {
                    message_id,
                    response,
                } => AudienceCreation::Replayed {
                    id: message_id,
                    response,
                },
                _ => AudienceCreation::KeyReused,
            }));
        }
        if let Some(existing) = by_phone(&mut tx, contact.org_id, &contact.phone).await? {
            // Dropping the transaction keeps no key for a create that did nothing.
            return Ok(Err(ContactRefusal::PhoneTaken {
                existing: existing.id,
            }));
        }
        insert(&mut tx, contact).await?;
        if let Some(record) = idempotency {
            messages::store_key(&mut tx, scope, contact.id, record, now).await?;
        }
        tx.commit().await.ctx("failed to commit a contact")?;
        Ok(Ok(AudienceCreation::Created))
    }

    async fn get_contact(&self, org_id: Uuid, id: Uuid) -> Result<Option<Contact>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM contacts WHERE org_id = ?1 AND id = ?2"
        )))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .ctx("failed to read a contact")?
        .as_ref()
        .map(contact)
        .transpose()
    }

    async fn find_contact_by_phone(
        &self,
        org_id: Uuid,
        phone: &str,
    ) -> Result<Option<Contact>, StoreError> {
        let mut conn = self
            .reader
            .acquire()
            .await
            .ctx("failed to reach the database")?;
        by_phone(&mut conn, org_id, phone).await
    }

    async fn find_contacts_by_phone(
        &self,
        org_id: Uuid,
        phones: &[&str],
    ) -> Result<std::collections::HashMap<String, Contact>, StoreError> {
        if phones.is_empty() {
            return Ok(Default::default());
        }
        let mut conn = self
            .reader
            .acquire()
            .await
            .ctx("failed to reach the database")?;
        by_phones(&mut conn, org_id, phones).await
    }

    async fn contacts_by_id(&self, org_id: Uuid, ids: &[Uuid]) -> Result<Vec<Contact>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Ids travel as one JSON array of hex strings: one statement whatever their number.
        let list = strings(
            &ids.iter()
                .map(|id| id.simple().to_string())
                .collect::<Vec<_>>(),
        );
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM contacts WHERE org_id = ?1 \
             AND id IN (SELECT unhex(value) FROM json_each(?2)) ORDER BY id"
        )))
        .bind(org_id)
        .bind(list)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read contacts")?
        .iter()
        .map(contact)
        .collect()
    }

    async fn update_contact(
        &self,
        contact: &Contact,
        read_at: Timestamp,
    ) -> Result<Result<(), ContactRefusal>, StoreError> {
        let mut tx = self.write().await?;
        if let Some(other) = by_phone(&mut tx, contact.org_id, &contact.phone).await?
            && other.id != contact.id
        {
            return Ok(Err(ContactRefusal::PhoneTaken { existing: other.id }));
        }
        if !update(&mut tx, contact, read_at).await? {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM contacts WHERE org_id = ?1 AND id = ?2")
                    .bind(contact.org_id)
                    .bind(contact.id)
                    .fetch_optional(&mut *tx)
                    .await
                    .ctx("failed to read a contact")?;
            return Ok(Err(if exists.is_some() {
                ContactRefusal::Stale
            } else {
                ContactRefusal::NotFound
            }));
        }
        tx.commit().await.ctx("failed to commit a contact")?;
        Ok(Ok(()))
    }

    async fn delete_contact(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = sqlx::query("DELETE FROM contacts WHERE org_id = ?1 AND id = ?2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .ctx("failed to delete a contact")?;
        tx.commit().await.ctx("failed to commit a deletion")?;
        Ok(done.rows_affected() == 1)
    }

    async fn erase_contact(
        &self,
        org_id: Uuid,
        id: Uuid,
        _now: Timestamp,
    ) -> Result<Option<Erasure>, StoreError> {
        let mut tx = self.write().await?;
        let phone: Option<String> =
            sqlx::query_scalar("SELECT phone FROM contacts WHERE org_id = ?1 AND id = ?2")
                .bind(org_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .ctx("failed to read a contact")?;
        let Some(phone) = phone else {
            return Ok(None);
        };
        // Replayed API responses quote the recipient: the keys go with the messages' numbers,
        // and so does the key that created the contact (keys name what they created by id).
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE org_id = ?1 AND (message_id = ?3 OR message_id IN \
             (SELECT id FROM messages WHERE org_id = ?1 AND recipient = ?2))",
        )
        .bind(org_id)
        .bind(&phone)
        .bind(id)
        .execute(&mut *tx)
        .await
        .ctx("failed to forget a contact's idempotency keys")?;
        // Provider error texts sometimes quote the number.
        sqlx::query(
            "UPDATE message_events SET error_message = replace(error_message, ?2, ?3) \
             WHERE message_id IN (SELECT id FROM messages WHERE org_id = ?1 AND recipient = ?2) \
             AND error_message IS NOT NULL",
        )
        .bind(org_id)
        .bind(&phone)
        .bind(REDACTED)
        .execute(&mut *tx)
        .await
        .ctx("failed to redact a contact's message history")?;
        let messages = sqlx::query(
            "UPDATE messages SET recipient = ?3, body = ?3, \
             error_message = replace(error_message, ?2, ?3) \
             WHERE org_id = ?1 AND recipient = ?2",
        )
        .bind(org_id)
        .bind(&phone)
        .bind(REDACTED)
        .execute(&mut *tx)
        .await
        .ctx("failed to redact a contact's messages")?
        .rows_affected();
        let inbound = sqlx::query(
            "UPDATE inbound_messages SET from_number = ?3, body = ?3 \
             WHERE org_id = ?1 AND from_number = ?2",
        )
        .bind(org_id)
        .bind(&phone)
        .bind(REDACTED)
        .execute(&mut *tx)
        .await
        .ctx("failed to redact a contact's inbound messages")?
        .rows_affected();
        crate::opt_outs::forget(&mut tx, org_id, &phone).await?;
        sqlx::query("DELETE FROM contacts WHERE org_id = ?1 AND id = ?2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .ctx("failed to delete a contact")?;
        tx.commit().await.ctx("failed to commit an erasure")?;
        Ok(Some(Erasure { messages, inbound }))
    }

    async fn list_contacts(
        &self,
        org_id: Uuid,
        filter: &ContactFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Contact>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM contacts WHERE org_id = ?1 \
             AND id > coalesce(?2, x'') \
             AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?3)) \
             AND (?4 IS NULL OR lead_status = ?4) \
             AND (?5 IS NULL OR instr(lower(coalesce(first_name, '') || ' ' || \
                  coalesce(last_name, '') || ' ' || phone), lower(?5)) > 0) \
             AND (?6 IS NULL OR created_at >= ?6) \
             AND (?7 IS NULL OR created_at < ?7) \
             ORDER BY id LIMIT ?8"
        )))
        .bind(org_id)
        .bind(after)
        .bind(&filter.tag)
        .bind(&filter.lead_status)
        .bind(&filter.search)
        .bind(filter.created_from.map(micros))
        .bind(filter.created_to.map(micros))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to list contacts")?;
        let items = rows.iter().map(contact).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |c| c.id))
    }

    async fn upsert_contacts(
        &self,
        org_id: Uuid,
        rows: &[ContactUpsert],
        default_lead_status: &str,
        now: Timestamp,
    ) -> Result<Vec<Upserted>, StoreError> {
        let mut tx = self.write().await?;
        let phones: Vec<&str> = rows.iter().map(|row| row.phone.as_str()).collect();
        let existing = by_phones(&mut tx, org_id, &phones).await?;
        let plan = UpsertPlan::of(org_id, rows, default_lead_status, now, existing);
        insert_many(&mut tx, &plan.created).await?;
        // The single writer holds the database: nothing can have changed them since the read.
        for (contact, read_at) in &plan.updated {
            update(&mut tx, contact, *read_at).await?;
        }
        let outcomes = plan.outcomes;
        tx.commit()
            .await
            .ctx("failed to commit imported contacts")?;
        Ok(outcomes)
    }

    async fn save_contact_import(
        &self,
        import: &ContactImport,
        errors: &[RowError],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO contact_imports (id, org_id, status, rows, created, updated, unchanged, \
             invalid, error, created_at, finished_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, rows = excluded.rows, \
             created = excluded.created, updated = excluded.updated, \
             unchanged = excluded.unchanged, invalid = excluded.invalid, error = excluded.error, \
             finished_at = excluded.finished_at WHERE contact_imports.org_id = excluded.org_id",
        )
        .bind(import.id)
        .bind(import.org_id)
        .bind(import.status.as_str())
        .bind(count(import.rows))
        .bind(count(import.created))
        .bind(count(import.updated))
        .bind(count(import.unchanged))
        .bind(count(import.invalid))
        .bind(&import.error)
        .bind(micros(import.created_at))
        .bind(import.finished_at.map(micros))
        .execute(&mut *tx)
        .await
        .ctx("failed to save an import")?;
        for error in errors {
            sqlx::query(
                "INSERT INTO contact_import_errors (import_id, row, field, code, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .bind(import.id)
            .bind(count(error.row))
            .bind(&error.field)
            .bind(&error.code)
            .bind(&error.message)
            .execute(&mut *tx)
            .await
            .ctx("failed to save an import's row errors")?;
        }
        tx.commit().await.ctx("failed to commit an import")
    }

    async fn get_contact_import(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<ContactImport>, StoreError> {
        let row = sqlx::query(
            "SELECT id, org_id, status, rows, created, updated, unchanged, invalid, error, \
             created_at, finished_at FROM contact_imports WHERE org_id = ?1 AND id = ?2",
        )
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .ctx("failed to read an import")?;
        let Some(row) = row else { return Ok(None) };
        let number = |i: usize| u64::try_from(row.get::<i64, _>(i)).unwrap_or_default();
        Ok(Some(ContactImport {
            id: row.get(0),
            org_id: row.get(1),
            status: ImportStatus::parse(row.get(2))
                .ok_or_else(|| StoreError::Corrupt("unknown import status".into()))?,
            rows: number(3),
            created: number(4),
            updated: number(5),
            unchanged: number(6),
            invalid: number(7),
            error: row.get(8),
            created_at: convert::timestamp(row.get(9))?,
            finished_at: convert::opt_timestamp(row.get(10))?,
        }))
    }

    async fn list_contact_import_errors(
        &self,
        org_id: Uuid,
        id: Uuid,
        after: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<RowError>, Option<u64>), StoreError> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT e.row, e.field, e.code, e.message FROM contact_import_errors e \
             JOIN contact_imports i ON i.id = e.import_id \
             WHERE i.org_id = ?1 AND e.import_id = ?2 AND e.row > coalesce(?3, -1) \
             ORDER BY e.row, e.field LIMIT ?4",
        )
        .bind(org_id)
        .bind(id)
        .bind(after.map(count))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read an import's row errors")?;
        let mut errors: Vec<RowError> = rows
            .into_iter()
            .map(|(row, field, code, message)| RowError {
                row: u64::try_from(row).unwrap_or_default(),
                field,
                code,
                message,
            })
            .collect();
        let next = cut_page(&mut errors, limit, |e| e.row);
        Ok((errors, next))
    }

    async fn lead_statuses(&self, org_id: Uuid) -> Result<Vec<String>, StoreError> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT lead_statuses FROM organizations WHERE id = ?1")
                .bind(org_id)
                .fetch_optional(&self.reader)
                .await
                .ctx("failed to read lead statuses")?;
        match text {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("lead statuses: {e}"))),
            None => Ok(Vec::new()),
        }
    }

    async fn set_lead_statuses(&self, org_id: Uuid, statuses: &[String]) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE organizations SET lead_statuses = ?2 WHERE id = ?1")
            .bind(org_id)
            .bind(strings(statuses))
            .execute(&mut *tx)
            .await
            .ctx("failed to set lead statuses")?;
        tx.commit().await.ctx("failed to commit lead statuses")
    }
}
