//! Templates on PostgreSQL. Every statement names the organization, so another organization's
//! template id is simply not found.

use async_trait::async_trait;
use herald_store::*;
use jiff::Timestamp;
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::PostgresStore;
use crate::convert::{Ctx, col, opt_timestamp, timestamp, ts};
use crate::messages;

/// Columns read into a [`MessageTemplate`], in the order [`template`] expects.
macro_rules! columns {
    () => {
        "id, org_id, name, category, body, variables::text, active, usage_count, \
         last_used_at, created_at, updated_at"
    };
}

fn template(row: &PgRow) -> Result<MessageTemplate, StoreError> {
    let usage: i64 = col(row, 7)?;
    Ok(MessageTemplate {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        name: col(row, 2)?,
        category: col(row, 3)?,
        body: col(row, 4)?,
        variables: decode_declared(&col::<String>(row, 5)?)?,
        active: col(row, 6)?,
        usage_count: u64::try_from(usage)
            .map_err(|_| StoreError::Corrupt(format!("usage count {usage}")))?,
        last_used_at: opt_timestamp(row, 8)?,
        created_at: timestamp(row, 9)?,
        updated_at: timestamp(row, 10)?,
    })
}

/// Take the idempotency key first, so that a concurrent retry waits for this one; `conn` must
/// be inside a transaction committed only on [`TemplateCreation::Created`]. Templates are
/// settings, so their keys sit with the live messages' keys.
async fn create(
    conn: &mut PgConnection,
    template: &MessageTemplate,
    idempotency: Option<&IdempotencyRecord>,
    now: Timestamp,
) -> Result<Result<TemplateCreation, TemplateRefusal>, StoreError> {
    if let Some(record) = idempotency {
        let scope = Scope {
            org_id: template.org_id,
            mode: herald_domain::message::Mode::Live,
        };
        match messages::take_key(conn, scope, template.id, record, now).await? {
            None => {}
            Some(Insertion::Replayed {
                message_id,
                response,
            }) => {
                return Ok(Ok(TemplateCreation::Replayed {
                    id: message_id,
                    response,
                }));
            }
            Some(_) => return Ok(Ok(TemplateCreation::KeyReused)),
        }
    }
    let result = sqlx::query(
        "INSERT INTO message_templates (id, org_id, name, category, body, variables, active, \
         usage_count, last_used_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11)",
    )
    .bind(template.id)
    .bind(template.org_id)
    .bind(&template.name)
    .bind(&template.category)
    .bind(&template.body)
    .bind(encode_declared(&template.variables))
    .bind(template.active)
    .bind(i64::try_from(template.usage_count).unwrap_or(i64::MAX))
    .bind(template.last_used_at.map(ts))
    .bind(ts(template.created_at))
    .bind(ts(template.updated_at))
    .execute(&mut *conn)
    .await;
    match result {
        Ok(_) => Ok(Ok(TemplateCreation::Created)),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Ok(Err(TemplateRefusal::NameTaken))
        }
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Ok(Err(TemplateRefusal::NotFound))
        }
        Err(e) => Err(StoreError::backend("failed to insert the template", e)),
    }
}

#[async_trait]
impl TemplateStore for PostgresStore {
    async fn create_template(
        &self,
        template: &MessageTemplate,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<TemplateCreation, TemplateRefusal>, StoreError> {
        let mut tx = self.begin().await?;
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
        sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM message_templates WHERE id = $1 AND org_id = $2"
        ))
        .bind(id)
        .bind(org_id)
        .fetch_optional(&self.pool)
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
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM message_templates \
             WHERE org_id = $1 AND id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') \
             AND ($3::text IS NULL OR category = $3) AND ($4::boolean IS NULL OR active = $4) \
             ORDER BY id LIMIT $5"
        ))
        .bind(org_id)
        .bind(after)
        .bind(&filter.category)
        .bind(filter.active)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
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
        let result = sqlx::query(
            "UPDATE message_templates SET name = $3, category = $4, body = $5, \
             variables = $6::jsonb, active = $7, updated_at = $8 \
             WHERE id = $1 AND org_id = $2 AND updated_at = $9",
        )
        .bind(template.id)
        .bind(template.org_id)
        .bind(&template.name)
        .bind(&template.category)
        .bind(&template.body)
        .bind(encode_declared(&template.variables))
        .bind(template.active)
        .bind(ts(template.updated_at))
        .bind(ts(read_at))
        .execute(&self.pool)
        .await;
        match result {
            Ok(done) if done.rows_affected() == 0 => {
                // A row that exists but did not match changed since it was read.
                let exists: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM message_templates WHERE id = $1 AND org_id = $2",
                )
                .bind(template.id)
                .bind(template.org_id)
                .fetch_optional(&self.pool)
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

    async fn delete_template(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM message_templates WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org_id)
            .execute(&self.pool)
            .await
            .ctx("failed to delete the template")?
            .rows_affected();
        Ok(deleted == 1)
    }

    async fn record_template_use(
        &self,
        org_id: Uuid,
        id: Uuid,
        count: u32,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE message_templates SET usage_count = usage_count + $3, \
             last_used_at = greatest(last_used_at, $4) \
             WHERE id = $1 AND org_id = $2",
        )
        .bind(id)
        .bind(org_id)
        .bind(i64::from(count))
        .bind(ts(at))
        .execute(&self.pool)
        .await
        .ctx("failed to record the template's use")?;
        Ok(done.rows_affected() == 1)
    }
}
