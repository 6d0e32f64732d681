//! The suppression list on PostgreSQL.

use herald_store::{OptOut, StoreError, cut_page};
use jiff::Timestamp;
use sqlx::PgPool;
use uuid::Uuid;

use crate::convert::{Ctx, ts};

type Row = (String, String, jiff_sqlx::Timestamp);

fn opt_out((phone, source, created_at): Row) -> OptOut {
    OptOut {
        phone,
        source,
        created_at: created_at.to_jiff(),
    }
}

pub(crate) async fn add(
    pool: &PgPool,
    org_id: Uuid,
    phone: &str,
    source: &str,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO opt_outs (org_id, phone, source, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (org_id, phone) DO NOTHING",
    )
    .bind(org_id)
    .bind(phone)
    .bind(source)
    .bind(ts(at))
    .execute(pool)
    .await
    .ctx("failed to record an opt-out")?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn remove(pool: &PgPool, org_id: Uuid, phone: &str) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM opt_outs WHERE org_id = $1 AND phone = $2")
        .bind(org_id)
        .bind(phone)
        .execute(pool)
        .await
        .ctx("failed to remove an opt-out")?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn among(
    pool: &PgPool,
    org_id: Uuid,
    phones: &[String],
) -> Result<Vec<OptOut>, StoreError> {
    if phones.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT phone, source, created_at FROM opt_outs WHERE org_id = $1 AND phone = ANY($2)",
    )
    .bind(org_id)
    .bind(phones)
    .fetch_all(pool)
    .await
    .ctx("failed to check the suppression list")?;
    Ok(rows.into_iter().map(opt_out).collect())
}

pub(crate) async fn list(
    pool: &PgPool,
    org_id: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<OptOut>, Option<String>), StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT phone, source, created_at FROM opt_outs \
         WHERE org_id = $1 AND ($2::text IS NULL OR phone > $2) ORDER BY phone LIMIT $3",
    )
    .bind(org_id)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .ctx("failed to list the suppression list")?;
    let mut items: Vec<OptOut> = rows.into_iter().map(opt_out).collect();
    let next = cut_page(&mut items, limit, |o| o.phone.clone());
    Ok((items, next))
}
