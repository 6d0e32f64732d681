//! Contacts on PostgreSQL. Tags and custom fields are `jsonb`; every statement names the
//! organization, so another organization's contact is simply not found. Creating and
//! importing rely on the `(org_id, phone)` unique constraint, so concurrent writers of the same
//! number never make two contacts.

use async_trait::async_trait;
use herald_store::*;
use jiff::Timestamp;
use serde_json::{Map, Value};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use uuid::Uuid;

use crate::PostgresStore;
use crate::audience::live;
use crate::convert::{self, Ctx, col, ts};
use crate::messages;

/// Columns read into a [`Contact`], in the order [`contact`] expects.
pub(crate) const COLUMNS: &str = "id, org_id, phone, country, first_name, last_name, email, time_zone, \
     language, lead_status, tags, custom, consent, consent_source, consent_at, created_at, \
     updated_at";

/// What stands in for a phone number and a body once their person is erased.
const REDACTED: &str = "redacted";

pub(crate) fn contact(row: &PgRow) -> Result<Contact, StoreError> {
    let Json(tags): Json<Vec<String>> = col(row, 10)?;
    let Json(custom): Json<Map<String, Value>> = col(row, 11)?;
    Ok(Contact {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        phone: col(row, 2)?,
        country: col::<Option<String>>(row, 3)?
            .as_deref()
            .map(convert::parse_region)
            .transpose()?,
        first_name: col(row, 4)?,
        last_name: col(row, 5)?,
        email: col(row, 6)?,
        time_zone: col(row, 7)?,
        language: col(row, 8)?,
        lead_status: col(row, 9)?,
        tags,
        custom,
        consent: col(row, 12)?,
        consent_source: col(row, 13)?,
        consent_at: convert::opt_timestamp(row, 14)?,
        created_at: convert::timestamp(row, 15)?,
        updated_at: convert::timestamp(row, 16)?,
    })
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

async fn by_phone(
    conn: &mut PgConnection,
    org_id: Uuid,
    phone: &str,
    lock: bool,
) -> Result<Option<Contact>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM contacts WHERE org_id = $1 AND phone = $2{lock}"
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

/// The organization's contacts with these numbers, by number; with `lock`, locked for this
/// transaction in number order, so two imports lock shared rows in the same order. Each number is one probe of
/// the unique index (a lateral subquery the planner cannot turn into a scan): `phone = ANY($2)`
/// or a join may be planned as a scan of every contact of the organization, seconds per batch
/// at half a million contacts.
async fn by_phones(
    conn: &mut PgConnection,
    org_id: Uuid,
    phones: &[&str],
    lock: bool,
) -> Result<std::collections::HashMap<String, Contact>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let mut phones = phones.to_vec();
    phones.sort_unstable();
    phones.dedup();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT c.* FROM unnest($2::text[]) WITH ORDINALITY AS w (wanted, n) \
         CROSS JOIN LATERAL (SELECT {COLUMNS} FROM contacts \
             WHERE org_id = $1 AND phone = w.wanted LIMIT 1{lock}) c \
         ORDER BY w.n"
    )))
    .bind(org_id)
    .bind(&phones)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to find contacts by phone")?;
    rows.iter()
        .map(|row| contact(row).map(|c| (c.phone.clone(), c)))
        .collect()
}

/// Insert new contacts, many to a statement, skipping numbers taken meanwhile; returns how
/// many were inserted.
async fn insert_many(conn: &mut PgConnection, contacts: &[Contact]) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for chunk in contacts.chunks(1_000) {
        let mut query = sqlx::QueryBuilder::<sqlx::Postgres>::new(
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
                .push_bind(Json(c.tags.clone()))
                .push_bind(Json(c.custom.clone()))
                .push_bind(c.consent)
                .push_bind(c.consent_source.clone())
                .push_bind(c.consent_at.map(ts))
                .push_bind(ts(c.created_at))
                .push_bind(ts(c.updated_at));
        });
        query.push(" ON CONFLICT (org_id, phone) DO NOTHING");
        inserted += query
            .build()
            .execute(&mut *conn)
            .await
            .ctx("failed to store contacts")?
            .rows_affected();
    }
    Ok(inserted)
}

/// Insert `c` unless its number is taken; returns whether it was inserted.
async fn insert(conn: &mut PgConnection, c: &Contact) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO contacts (id, org_id, phone, country, first_name, last_name, email, \
         time_zone, language, lead_status, tags, custom, consent, consent_source, consent_at, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         ON CONFLICT (org_id, phone) DO NOTHING",
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
    .bind(Json(&c.tags))
    .bind(Json(&c.custom))
    .bind(c.consent)
    .bind(&c.consent_source)
    .bind(c.consent_at.map(ts))
    .bind(ts(c.created_at))
    .bind(ts(c.updated_at))
    .execute(conn)
    .await
    .ctx("failed to store a contact")?;
    Ok(done.rows_affected() == 1)
}

/// Write every field but the id, organization and creation time while `updated_at` is still
/// `read_at`: `Ok(true)` when written, `Ok(false)` when no such row, `Err` with the refusal
/// when another contact has the number.
async fn update(
    conn: &mut PgConnection,
    c: &Contact,
    read_at: Timestamp,
) -> Result<Result<bool, ContactRefusal>, StoreError> {
    let result = sqlx::query(
        "UPDATE contacts SET phone = $3, country = $4, first_name = $5, last_name = $6, \
         email = $7, time_zone = $8, language = $9, lead_status = $10, tags = $11, custom = $12, \
         consent = $13, consent_source = $14, consent_at = $15, updated_at = $16 \
         WHERE org_id = $1 AND id = $2 AND updated_at = $17",
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
    .bind(Json(&c.tags))
    .bind(Json(&c.custom))
    .bind(c.consent)
    .bind(&c.consent_source)
    .bind(c.consent_at.map(ts))
    .bind(ts(c.updated_at))
    .bind(ts(read_at))
    .execute(&mut *conn)
    .await;
    match result {
        Ok(done) => Ok(Ok(done.rows_affected() == 1)),
        Err(error) if is_unique_violation(&error) => {
            let existing: Uuid =
                sqlx::query_scalar("SELECT id FROM contacts WHERE org_id = $1 AND phone = $2")
                    .bind(c.org_id)
                    .bind(&c.phone)
                    .fetch_one(conn)
                    .await
                    .ctx("failed to find a contact by phone")?;
            Ok(Err(ContactRefusal::PhoneTaken { existing }))
        }
        Err(error) => Err(StoreError::backend("failed to update a contact", error)),
    }
}

/// Counts are bigint; beyond `i64` they cannot come from a real file.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// [`ContactStore::upsert_contacts`] one row at a time: each number inserted unless taken (a
/// concurrent import's insert makes this one wait for it), else locked and updated.
async fn upsert_one_by_one(
    store: &PostgresStore,
    org_id: Uuid,
    rows: &[ContactUpsert],
    default_lead_status: &str,
    now: Timestamp,
) -> Result<Vec<Upserted>, StoreError> {
    let mut tx = store.begin().await?;
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        let mut fresh = Contact::new(org_id, &row.phone, row.country, now);
        fresh.lead_status = default_lead_status.to_owned();
        row.patch.apply(&mut fresh, now);
        fresh.updated_at = now;
        if insert(&mut tx, &fresh).await? {
            outcomes.push(Upserted::Created(fresh.id));
            continue;
        }
        let Some(mut existing) = by_phone(&mut tx, org_id, &row.phone, true).await? else {
            return Err(StoreError::Corrupt(
                "a contact's number was taken, then vanished".into(),
            ));
        };
        let read_at = existing.updated_at;
        if row.patch.apply(&mut existing, now) {
            if let Err(refusal) = update(&mut tx, &existing, read_at).await? {
                return Err(StoreError::Corrupt(format!(
                    "an import changed a contact's number: {refusal:?}"
                )));
            }
            outcomes.push(Upserted::Updated(existing.id));
        } else {
            outcomes.push(Upserted::Unchanged(existing.id));
        }
    }
    tx.commit()
        .await
        .ctx("failed to commit imported contacts")?;
    Ok(outcomes)
}

#[async_trait]
impl ContactStore for PostgresStore {
    async fn create_contact(
        &self,
        contact: &Contact,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AudienceCreation, ContactRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        // The key is taken before the number: a retry of a create that succeeded finds its
        // number taken by the contact it made, and must replay rather than be refused; a
        // concurrent retry waits here for this transaction.
        if let Some(record) = idempotency {
            match messages::take_key(&mut tx, live(contact.org_id), contact.id, record, now).await?
            {
                None => {}
                Some(Insertion::Replayed {
                    message_id,
                    response,
                }) => {
                    return Ok(Ok(AudienceCreation::Replayed {
                        id: message_id,
                        response,
                    }));
                }
                Some(_) => return Ok(Ok(AudienceCreation::KeyReused)),
            }
        }
        if !insert(&mut tx, contact).await? {
            // Dropping the transaction gives back the key taken for a create that did nothing.
            return match by_phone(&mut tx, contact.org_id, &contact.phone, false).await? {
                Some(existing) => Ok(Err(ContactRefusal::PhoneTaken {
                    existing: existing.id,
                })),
                None => Err(StoreError::Corrupt(
                    "a contact's number was taken, then vanished".into(),
                )),
            };
        }
        tx.commit().await.ctx("failed to commit a contact")?;
        Ok(Ok(AudienceCreation::Created))
    }

    async fn get_contact(&self, org_id: Uuid, id: Uuid) -> Result<Option<Contact>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM contacts WHERE org_id = $1 AND id = $2"
        )))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
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
            .pool
            .acquire()
            .await
            .ctx("failed to reach the database")?;
        by_phone(&mut conn, org_id, phone, false).await
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
            .pool
            .acquire()
            .await
            .ctx("failed to reach the database")?;
        by_phones(&mut conn, org_id, phones, false).await
    }

    async fn contacts_by_id(&self, org_id: Uuid, ids: &[Uuid]) -> Result<Vec<Contact>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM contacts WHERE org_id = $1 AND id = ANY($2) ORDER BY id"
        )))
        .bind(org_id)
        .bind(ids)
        .fetch_all(&self.pool)
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
        let mut conn = self
            .pool
            .acquire()
            .await
            .ctx("failed to reach the database")?;
        match update(&mut conn, contact, read_at).await? {
            Err(refusal) => Ok(Err(refusal)),
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM contacts WHERE org_id = $1 AND id = $2")
                        .bind(contact.org_id)
                        .bind(contact.id)
                        .fetch_optional(&mut *conn)
                        .await
                        .ctx("failed to read a contact")?;
                Ok(Err(if exists.is_some() {
                    ContactRefusal::Stale
                } else {
                    ContactRefusal::NotFound
                }))
            }
        }
    }

    async fn delete_contact(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM contacts WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&self.pool)
            .await
            .ctx("failed to delete a contact")?;
        Ok(done.rows_affected() == 1)
    }

    async fn erase_contact(
        &self,
        org_id: Uuid,
        id: Uuid,
        _now: Timestamp,
    ) -> Result<Option<Erasure>, StoreError> {
        let mut tx = self.begin().await?;
        let phone: Option<String> = sqlx::query_scalar(
            "SELECT phone FROM contacts WHERE org_id = $1 AND id = $2 FOR UPDATE",
        )
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
            "DELETE FROM idempotency_keys WHERE org_id = $1 AND (message_id = $3 OR message_id IN \
             (SELECT id FROM messages WHERE org_id = $1 AND recipient = $2))",
        )
        .bind(org_id)
        .bind(&phone)
        .bind(id)
        .execute(&mut *tx)
        .await
        .ctx("failed to forget a contact's idempotency keys")?;
        // Provider error texts sometimes quote the number.
        sqlx::query(
            "UPDATE message_events SET error_message = replace(error_message, $2, $3) \
             WHERE message_id IN (SELECT id FROM messages WHERE org_id = $1 AND recipient = $2) \
             AND error_message IS NOT NULL",
        )
        .bind(org_id)
        .bind(&phone)
        .bind(REDACTED)
        .execute(&mut *tx)
        .await
        .ctx("failed to redact a contact's message history")?;
        let messages = sqlx::query(
            "UPDATE messages SET recipient = $3, body = $3, \
             error_message = replace(error_message, $2, $3) \
             WHERE org_id = $1 AND recipient = $2",
        )
        .bind(org_id)
        .bind(&phone)
        .bind(REDACTED)
        .execute(&mut *tx)
        .await
        .ctx("failed to redact a contact's messages")?
        .rows_affected();
        let inbound = sqlx::query(
            "UPDATE inbound_messages SET from_number = $3, body = $3 \
             WHERE org_id = $1 AND from_number = $2",
        )
        .bind(org_id)
        .bind(&phone)
        .bind(REDACTED)
        .execute(&mut *tx)
        .await
        .ctx("failed to redact a contact's inbound messages")?
        .rows_affected();
        crate::opt_outs::forget(&mut tx, org_id, &phone).await?;
        sqlx::query("DELETE FROM contacts WHERE org_id = $1 AND id = $2")
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
            "SELECT {COLUMNS} FROM contacts WHERE org_id = $1 \
             AND id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') \
             AND ($3::text IS NULL OR tags @> jsonb_build_array($3::text)) \
             AND ($4::text IS NULL OR lead_status = $4) \
             AND ($5::text IS NULL OR strpos(lower(coalesce(first_name, '') || ' ' || \
                  coalesce(last_name, '') || ' ' || phone), lower($5)) > 0) \
             AND ($6::timestamptz IS NULL OR created_at >= $6) \
             AND ($7::timestamptz IS NULL OR created_at < $7) \
             ORDER BY id LIMIT $8"
        )))
        .bind(org_id)
        .bind(after)
        .bind(&filter.tag)
        .bind(&filter.lead_status)
        .bind(&filter.search)
        .bind(filter.created_from.map(ts))
        .bind(filter.created_to.map(ts))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
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
        let mut tx = self.begin().await?;
        let phones: Vec<&str> = rows.iter().map(|row| row.phone.as_str()).collect();
        let existing = by_phones(&mut tx, org_id, &phones, true).await?;
        let plan = UpsertPlan::of(org_id, rows, default_lead_status, now, existing);
        if insert_many(&mut tx, &plan.created).await? != plan.created.len() as u64 {
            // Another import created some of these numbers since the read: start again, one
            // row at a time, which waits for it.
            drop(tx);
            return upsert_one_by_one(self, org_id, rows, default_lead_status, now).await;
        }
        for (contact, read_at) in &plan.updated {
            // The rows are locked since the read: the write cannot be stale.
            if let Err(refusal) = update(&mut tx, contact, *read_at).await? {
                return Err(StoreError::Corrupt(format!(
                    "an import changed a contact's number: {refusal:?}"
                )));
            }
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
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO contact_imports (id, org_id, status, rows, created, updated, unchanged, \
             invalid, error, created_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, rows = excluded.rows, \
             created = excluded.created, updated = excluded.updated, \
             unchanged = excluded.unchanged, invalid = excluded.invalid, error = excluded.error, \
             finished_at = excluded.finished_at WHERE contact_imports.org_id = excluded.org_id",
        )
        .bind(import.id)
        .bind(import.org_id)
        .bind(import.status.as_str())
        .bind(big(import.rows))
        .bind(big(import.created))
        .bind(big(import.updated))
        .bind(big(import.unchanged))
        .bind(big(import.invalid))
        .bind(&import.error)
        .bind(ts(import.created_at))
        .bind(import.finished_at.map(ts))
        .execute(&mut *tx)
        .await
        .ctx("failed to save an import")?;
        for error in errors {
            sqlx::query(
                "INSERT INTO contact_import_errors (import_id, row, field, code, message) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(import.id)
            .bind(big(error.row))
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
             created_at, finished_at FROM contact_imports WHERE org_id = $1 AND id = $2",
        )
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx("failed to read an import")?;
        let Some(row) = row else { return Ok(None) };
        let number = |i: usize| col::<i64>(&row, i).map(|n| u64::try_from(n).unwrap_or_default());
        Ok(Some(ContactImport {
            id: col(&row, 0)?,
            org_id: col(&row, 1)?,
            status: ImportStatus::parse(col(&row, 2)?)
                .ok_or_else(|| StoreError::Corrupt("unknown import status".into()))?,
            rows: number(3)?,
            created: number(4)?,
            updated: number(5)?,
            unchanged: number(6)?,
            invalid: number(7)?,
            error: col(&row, 8)?,
            created_at: convert::timestamp(&row, 9)?,
            finished_at: convert::opt_timestamp(&row, 10)?,
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
             WHERE i.org_id = $1 AND e.import_id = $2 AND e.row > coalesce($3::bigint, -1) \
             ORDER BY e.row, e.field LIMIT $4",
        )
        .bind(org_id)
        .bind(id)
        .bind(after.map(big))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
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
        let statuses: Option<Json<Vec<String>>> =
            sqlx::query_scalar("SELECT lead_statuses FROM organizations WHERE id = $1")
                .bind(org_id)
                .fetch_optional(&self.pool)
                .await
                .ctx("failed to read lead statuses")?;
        Ok(statuses.map(|Json(s)| s).unwrap_or_default())
    }

    async fn set_lead_statuses(&self, org_id: Uuid, statuses: &[String]) -> Result<(), StoreError> {
        sqlx::query("UPDATE organizations SET lead_statuses = $2 WHERE id = $1")
            .bind(org_id)
            .bind(Json(statuses))
            .execute(&self.pool)
            .await
            .ctx("failed to set lead statuses")?;
        Ok(())
    }
}
