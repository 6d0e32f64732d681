//! Lists and segments on PostgreSQL. Every statement names the organization; contact ids travel
//! as one `uuid[]`, so a bulk change is one statement whatever its size.

use std::collections::HashSet;

use async_trait::async_trait;
use herald_domain::message::Mode;
use herald_store::segment::Rule;
use herald_store::segment::sql::{self, Bind, Dialect};
use herald_store::*;
use jiff::Timestamp;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{PgConnection, Postgres, Row};
use uuid::Uuid;

use crate::PostgresStore;
use crate::convert::{self, Ctx, ts};
use crate::messages;

const LIST_COLUMNS: &str = "l.id, l.org_id, l.name, l.description, \
     (SELECT count(*) FROM list_members m WHERE m.list_id = l.id), l.created_at, l.updated_at";

const SEGMENT_COLUMNS: &str = "id, org_id, name, description, rule::text, created_at, updated_at";

fn list(row: &PgRow) -> Result<List, StoreError> {
    Ok(List {
        id: row.get(0),
        org_id: row.get(1),
        name: row.get(2),
        description: row.get(3),
        member_count: u64::try_from(row.get::<i64, _>(4))
            .map_err(|_| StoreError::Corrupt("negative member count".into()))?,
        created_at: convert::timestamp(row, 5)?,
        updated_at: convert::timestamp(row, 6)?,
    })
}

fn segment(row: &PgRow) -> Result<Segment, StoreError> {
    let rule: String = row.get(4);
    Ok(Segment {
        id: row.get(0),
        org_id: row.get(1),
        name: row.get(2),
        description: row.get(3),
        rule: serde_json::from_str(&rule)
            .map_err(|e| StoreError::Corrupt(format!("segment rule: {e}")))?,
        created_at: convert::timestamp(row, 5)?,
        updated_at: convert::timestamp(row, 6)?,
    })
}

/// Ids once each, in the order given.
fn distinct(ids: &[Uuid]) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// Contacts, lists and segments are settings, not traffic: their idempotency keys sit with the
/// live ones.
pub(crate) fn live(org_id: Uuid) -> Scope {
    Scope {
        org_id,
        mode: Mode::Live,
    }
}

async fn list_exists(conn: &mut PgConnection, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM lists WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .fetch_optional(conn)
            .await
            .ctx("failed to find a list")?;
    Ok(found.is_some())
}

/// The organization's contacts among `ids`.
async fn known_contacts(
    conn: &mut PgConnection,
    org_id: Uuid,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, StoreError> {
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM contacts WHERE org_id = $1 AND id = ANY($2)")
            .bind(org_id)
            .bind(ids)
            .fetch_all(conn)
            .await
            .ctx("failed to find contacts")?;
    Ok(ids.into_iter().collect())
}

fn membership(ids: &[Uuid], known: &HashSet<Uuid>, changed: u64) -> Membership {
    Membership {
        changed,
        unchanged: known.len() as u64 - changed,
        unknown: ids
            .iter()
            .copied()
            .filter(|id| !known.contains(id))
            .collect(),
    }
}

/// Apply a compiled rule's binds to a query, after the caller's own.
pub(crate) fn bind_rule<'q>(
    mut query: sqlx::query::Query<'q, Postgres, PgArguments>,
    binds: &[Bind],
) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text.clone()),
            Bind::Int(n) => query.bind(*n),
            Bind::Float(x) => query.bind(*x),
            Bind::Bool(b) => query.bind(*b),
            Bind::Uuid(id) => query.bind(*id),
            Bind::Time(at) => query.bind(ts(*at)),
        };
    }
    query
}

fn refusal(error: sqlx::Error, context: &'static str) -> Result<AudienceRefusal, StoreError> {
    match error {
        sqlx::Error::Database(e) if e.is_unique_violation() => Ok(AudienceRefusal::NameTaken),
        sqlx::Error::Database(e) if e.is_foreign_key_violation() => Ok(AudienceRefusal::NotFound),
        e => Err(StoreError::backend(context, e)),
    }
}

impl PostgresStore {
    /// Run `insert` for a new list or segment inside a write transaction that also checks and
    /// keeps its idempotency key.
    async fn create_keyed(
        &self,
        org_id: Uuid,
        id: Uuid,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
        insert: sqlx::query::Query<'_, Postgres, PgArguments>,
    ) -> Result<Result<AudienceCreation, AudienceRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        // Taking the key first makes a concurrent retry wait for this transaction.
        if let Some(record) = idempotency {
            match messages::take_key(&mut tx, live(org_id), id, record, now).await? {
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
        if let Err(e) = insert.execute(&mut *tx).await {
            return refusal(e, "failed to store a list or segment").map(Err);
        }
        tx.commit()
            .await
            .ctx("failed to commit a list or segment")?;
        Ok(Ok(AudienceCreation::Created))
    }

    /// Run `update`, which writes its row only while the row's `updated_at` is the one read.
    /// When it wrote nothing, `exists` (binding the organization and the id) tells a row
    /// changed since the read (stale) from a missing one.
    async fn update_one(
        &self,
        exists: &'static str,
        org_id: Uuid,
        id: Uuid,
        update: sqlx::query::Query<'_, Postgres, PgArguments>,
    ) -> Result<Result<(), AudienceRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        match update.execute(&mut *tx).await {
            Ok(done) if done.rows_affected() == 1 => {
                tx.commit().await.ctx("failed to commit a change")?;
                Ok(Ok(()))
            }
            Ok(_) => {
                let found: Option<i32> = sqlx::query_scalar(exists)
                    .bind(org_id)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .ctx("failed to find a list or segment")?;
                Ok(Err(if found.is_some() {
                    AudienceRefusal::Stale
                } else {
                    AudienceRefusal::NotFound
                }))
            }
            Err(e) => refusal(e, "failed to update a list or segment").map(Err),
        }
    }

    async fn delete_one(
        &self,
        delete: sqlx::query::Query<'_, Postgres, PgArguments>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = delete
            .execute(&mut *tx)
            .await
            .ctx("failed to delete a list or segment")?;
        tx.commit().await.ctx("failed to commit a deletion")?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl AudienceStore for PostgresStore {
    async fn create_list(
        &self,
        list: &List,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AudienceCreation, AudienceRefusal>, StoreError> {
        let insert = sqlx::query(
            "INSERT INTO lists (id, org_id, name, description, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(list.id)
        .bind(list.org_id)
        .bind(list.name.clone())
        .bind(list.description.clone())
        .bind(ts(list.created_at))
        .bind(ts(list.updated_at));
        self.create_keyed(list.org_id, list.id, idempotency, now, insert)
            .await
    }

    async fn get_list(&self, org_id: Uuid, id: Uuid) -> Result<Option<List>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LIST_COLUMNS} FROM lists l WHERE l.org_id = $1 AND l.id = $2"
        )))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx("failed to read a list")?
        .as_ref()
        .map(list)
        .transpose()
    }

    async fn list_lists(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<List>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LIST_COLUMNS} FROM lists l WHERE l.org_id = $1 \
             AND l.id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') ORDER BY l.id LIMIT $3"
        )))
        .bind(org_id)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to list lists")?;
        let items = rows.iter().map(list).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |l| l.id))
    }

    async fn update_list(
        &self,
        list: &List,
        read_at: Timestamp,
    ) -> Result<Result<(), AudienceRefusal>, StoreError> {
        self.update_one(
            "SELECT 1 FROM lists WHERE org_id = $1 AND id = $2",
            list.org_id,
            list.id,
            sqlx::query(
                "UPDATE lists SET name = $3, description = $4, updated_at = $5 \
                 WHERE org_id = $1 AND id = $2 AND updated_at = $6",
            )
            .bind(list.org_id)
            .bind(list.id)
            .bind(list.name.clone())
            .bind(list.description.clone())
            .bind(ts(list.updated_at))
            .bind(ts(read_at)),
        )
        .await
    }

    async fn delete_list(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        self.delete_one(
            sqlx::query("DELETE FROM lists WHERE org_id = $1 AND id = $2")
                .bind(org_id)
                .bind(id),
        )
        .await
    }

    async fn add_list_members(
        &self,
        org_id: Uuid,
        list_id: Uuid,
        contact_ids: &[Uuid],
        now: Timestamp,
    ) -> Result<Option<Membership>, StoreError> {
        let ids = distinct(contact_ids);
        let mut tx = self.begin().await?;
        if !list_exists(&mut tx, org_id, list_id).await? {
            return Ok(None);
        }
        let known = known_contacts(&mut tx, org_id, &ids).await?;
        // Only the organization's own contacts are selected, so a foreign id is never added.
        let added = sqlx::query(
            "INSERT INTO list_members (list_id, contact_id, added_at) \
             SELECT $1, id, $3 FROM contacts WHERE org_id = $2 AND id = ANY($4) \
             ON CONFLICT (list_id, contact_id) DO NOTHING",
        )
        .bind(list_id)
        .bind(org_id)
        .bind(ts(now))
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .ctx("failed to add list members")?
        .rows_affected();
        tx.commit().await.ctx("failed to commit list members")?;
        Ok(Some(membership(&ids, &known, added)))
    }

    async fn remove_list_members(
        &self,
        org_id: Uuid,
        list_id: Uuid,
        contact_ids: &[Uuid],
    ) -> Result<Option<Membership>, StoreError> {
        let ids = distinct(contact_ids);
        let mut tx = self.begin().await?;
        if !list_exists(&mut tx, org_id, list_id).await? {
            return Ok(None);
        }
        let known = known_contacts(&mut tx, org_id, &ids).await?;
        let removed = sqlx::query(
            "DELETE FROM list_members WHERE list_id = $1 \
                 AND contact_id IN (SELECT unnest($2::uuid[]))",
        )
        .bind(list_id)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .ctx("failed to remove list members")?
        .rows_affected();
        tx.commit()
            .await
            .ctx("failed to commit removed list members")?;
        Ok(Some(membership(&ids, &known, removed)))
    }

    async fn list_members(
        &self,
        org_id: Uuid,
        list_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Option<Page<Uuid>>, StoreError> {
        let mut conn = self.connection().await?;
        if !list_exists(&mut conn, org_id, list_id).await? {
            return Ok(None);
        }
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT contact_id FROM list_members WHERE list_id = $1 \
             AND contact_id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') ORDER BY contact_id LIMIT $3",
        )
        .bind(list_id)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *conn)
        .await
        .ctx("failed to list list members")?;
        Ok(Some(Page::from_overfetch(ids, limit, |id| *id)))
    }

    async fn create_segment(
        &self,
        segment: &Segment,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AudienceCreation, AudienceRefusal>, StoreError> {
        let insert = sqlx::query(
            "INSERT INTO segments (id, org_id, name, description, rule, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)",
        )
        .bind(segment.id)
        .bind(segment.org_id)
        .bind(segment.name.clone())
        .bind(segment.description.clone())
        .bind(segment.rule.to_string())
        .bind(ts(segment.created_at))
        .bind(ts(segment.updated_at));
        self.create_keyed(segment.org_id, segment.id, idempotency, now, insert)
            .await
    }

    async fn get_segment(&self, org_id: Uuid, id: Uuid) -> Result<Option<Segment>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SEGMENT_COLUMNS} FROM segments WHERE org_id = $1 AND id = $2"
        )))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx("failed to read a segment")?
        .as_ref()
        .map(segment)
        .transpose()
    }

    async fn list_segments(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Segment>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SEGMENT_COLUMNS} FROM segments WHERE org_id = $1 \
             AND id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') ORDER BY id LIMIT $3"
        )))
        .bind(org_id)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to list segments")?;
        let items = rows.iter().map(segment).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |s| s.id))
    }

    async fn update_segment(
        &self,
        segment: &Segment,
        read_at: Timestamp,
    ) -> Result<Result<(), AudienceRefusal>, StoreError> {
        self.update_one(
            "SELECT 1 FROM segments WHERE org_id = $1 AND id = $2",
            segment.org_id,
            segment.id,
            sqlx::query(
                "UPDATE segments SET name = $3, description = $4, rule = $5::jsonb, updated_at = $6 \
                 WHERE org_id = $1 AND id = $2 AND updated_at = $7",
            )
            .bind(segment.org_id)
            .bind(segment.id)
            .bind(segment.name.clone())
            .bind(segment.description.clone())
            .bind(segment.rule.to_string())
            .bind(ts(segment.updated_at))
            .bind(ts(read_at)),
        )
        .await
    }

    async fn delete_segment(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        self.delete_one(
            sqlx::query("DELETE FROM segments WHERE org_id = $1 AND id = $2")
                .bind(org_id)
                .bind(id),
        )
        .await
    }

    async fn segment_members(
        &self,
        org_id: Uuid,
        rule: &Rule,
        now: Timestamp,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Uuid>, StoreError> {
        let compiled = sql::compile(rule, Dialect::Postgres, now, 4);
        // The fragment is this crate's compiler output: fixed SQL with numbered placeholders.
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT c.id FROM contacts c WHERE c.org_id = $1 AND c.id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') \
             AND {} ORDER BY c.id LIMIT $3",
            compiled.sql
        )))
        .bind(org_id)
        .bind(after)
        .bind(i64::from(limit) + 1);
        let ids = bind_rule(query, &compiled.binds)
            .fetch_all(&self.pool)
            .await
            .ctx("failed to select a segment's contacts")?
            .iter()
            .map(|row| row.get::<Uuid, _>(0))
            .collect();
        Ok(Page::from_overfetch(ids, limit, |id| *id))
    }

    async fn count_segment(
        &self,
        org_id: Uuid,
        rule: &Rule,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let compiled = sql::compile(rule, Dialect::Postgres, now, 2);
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM contacts c WHERE c.org_id = $1 AND {}",
            compiled.sql
        )))
        .bind(org_id);
        let count: i64 = bind_rule(query, &compiled.binds)
            .fetch_one(&self.pool)
            .await
            .ctx("failed to count a segment's contacts")?
            .get(0);
        u64::try_from(count).map_err(|_| StoreError::Corrupt("negative count".into()))
    }
}
