//! Templates on SQLite. Every statement names the organization, so another organization's
//! template id is simply not found.

use async_trait::async_trait;
use herald_store::*;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use crate::SqliteStore;
use crate::convert::{Ctx, micros, opt_timestamp, timestamp};
use crate::messages;

/// Columns read into a [`MessageTemplate`], in the order [`template`] expects.
const COLUMNS: &str = "id, org_id, name, category, body, variables, active, usage_count, \
     last_used_at, created_at, updated_at";

fn template(row: &SqliteRow) -> Result<MessageTemplate, StoreError> {
    let usage: i64 = row.get(7);
    Ok(MessageTemplate {
        id: row.get(0),
        org_id: row.get(1),
        name: row.get(2),
        category: row.get(3),
        body: row.get(4),
        variables: decode_declared(row.get(5))?,
        active: row.get(6),
        usage_count: u64::try_from(usage)
            .map_err(|_| StoreError::Corrupt(format!("usage count {usage}")))?,
        last_used_at: opt_timestamp(row.get(8))?,
        created_at: timestamp(row.get(9))?,
        updated_at: timestamp(row.get(10))?,
    })
}

/// Templates are settings, so their idempotency keys sit with the live messages' keys.
fn live(org_id: Uuid) -> Scope {
    Scope {
        org_id,
        mode: herald_domain::message::Mode::Live,
    }
}

async fn create(
    conn: &mut SqliteConnection,
    template: &MessageTemplate,
    idempotency: Option<&IdempotencyRecord>,
    now: Timestamp,
) -> Result<Result<TemplateCreation, TemplateRefusal>, StoreError> {
    if let Some(record) = idempotency
        && let Some(previous) =
            messages::check_key(conn, live(template.org_id), record, now).await?
    {
        return Ok(Ok(match previous {
            Insertion::Replayed {
                message_id,
                response,
            } => TemplateCreation::Replayed {
                id: message_id,
                response,
            },
            _ => TemplateCreation::KeyReused,
        }));
    }
    let result = sqlx::query(
        "INSERT INTO message_templates (id, org_id, name, category, body, variables, active, \
         usage_count, last_used_at, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .bind(template.id)
    .bind(template.org_id)
    .bind(&template.name)
    .bind(&template.category)
    .bind(&template.body)
    .bind(encode_declared(&template.variables))
    .bind(template.active)
    .bind(i64::try_from(template.usage_count).unwrap_or(i64::MAX))
    .bind(template.last_used_at.map(micros))
    .bind(micros(template.created_at))
    .bind(micros(template.updated_at))
    .execute(&mut *conn)
    .await;
    match result {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Ok(Err(TemplateRefusal::NameTaken));
        }
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            return Ok(Err(TemplateRefusal::NotFound));
        }
        Err(e) => return Err(StoreError::backend("failed to insert the template", e)),
    }
    if let Some(record) = idempotency {
        messages::store_key(conn, live(template.org_id), template.id, record, now).await?;
    }
    Ok(Ok(TemplateCreation::Created))
}

async fn update(
    conn: &mut SqliteConnection,
    template: &MessageTemplate,
    read_at: Timestamp,
) -> Result<Result<(), TemplateRefusal>, StoreError> {
    let result = sqlx::query(
        "UPDATE message_templates SET name = ?3, category = ?4, body = ?5, variables = ?6, \
         active = ?7, updated_at = ?8 \
         WHERE id = ?1 AND org_id = ?2 AND updated_at = ?9",
    )
    .bind(template.id)
    .bind(template.org_id)
    .bind(&template.name)
    .bind(&template.category)
    .bind(&template.body)
    .bind(encode_declared(&template.variables))
    .bind(template.active)
    .bind(micros(template.updated_at))
    .bind(micros(read_at))
    .execute(&mut *conn)
    .await;
    match result {
        Ok(done) if done.rows_affected() == 0 => {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM message_templates WHERE id = ?1 AND org_id = ?2")
                    .bind(template.id)
                    .bind(template.org_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .ctx("failed to read the template")?;
            Ok(Err(if exists.is_some() {
                TemplateRefusal::Stale
            } else {
                TemplateRefusal::NotFound
            }))
        }
        Ok(_) => Ok(Ok(())),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Ok(Err(TemplateRefusal::NameTaken))
        }
        Err(e) => Err(StoreError::backend("failed to update the template", e)),
    }
}

#[async_trait]
impl TemplateStore for SqliteStore {
    async fn create_template(
        &self,
        template: &MessageTemplate,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<TemplateCreation, TemplateRefusal>, StoreError> {
        let mut tx = self.write().await?;
        let outcome = create(&mut tx, template, idempotency, now).await?;
        if outcome == Ok(TemplateCreation::Created) {
            tx.commit().await.ctx("failed to commit the template")?;
        }
        Ok(outcome)
    }

    async fn get_template(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<MessageTemplate>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM message_templates WHERE id = ?1 AND org_id = ?2"
        )))
        .bind(id)
        .bind(org_id)
        .fetch_optional(&self.reader)
        .await
        .ctx("failed to read the template")?
        .map(|row| template(&row))
        .transpose()
    }

    async fn list_templates(
        &self,
        org_id: Uuid,
        filter: &TemplateFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<MessageTemplate>, StoreError> {
        // One more than asked tells whether there is a next page.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM message_templates \
             WHERE org_id = ?1 AND id > coalesce(?2, x'') \
             AND (?3 IS NULL OR category = ?3) AND (?4 IS NULL OR active = ?4) \
             ORDER BY id LIMIT ?5"
        )))
        .bind(org_id)
        .bind(after)
        .bind(&filter.category)
        .bind(filter.active)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to list templates")?;
        let items = rows.iter().map(template).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |item| item.id))
    }

    async fn update_template(
        &self,
        template: &MessageTemplate,
        read_at: Timestamp,
    ) -> Result<Result<(), TemplateRefusal>, StoreError> {
        let mut tx = self.write().await?;
        let outcome = update(&mut tx, template, read_at).await?;
        if outcome.is_ok() {
            tx.commit().await.ctx("failed to commit the template")?;
        }
        Ok(outcome)
    }

    async fn delete_template(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query("DELETE FROM message_templates WHERE id = ?1 AND org_id = ?2")
            .bind(id)
            .bind(org_id)
            .execute(&mut *tx)
            .await
            .ctx("failed to delete the template")?
            .rows_affected();
        tx.commit().await.ctx("failed to commit the template")?;
        Ok(deleted == 1)
    }

    async fn record_template_use(
        &self,
        org_id: Uuid,
        id: Uuid,
        count: u32,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE message_templates SET usage_count = usage_count + ?3, \
             last_used_at = max(coalesce(last_used_at, ?4), ?4) \
             WHERE id = ?1 AND org_id = ?2",
        )
        .bind(id)
        .bind(org_id)
        .bind(i64::from(count))
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .ctx("failed to record the template's use")?;
        tx.commit()
            .await
            .ctx("failed to commit the template's use")?;
        Ok(done.rows_affected() == 1)
    }
}
