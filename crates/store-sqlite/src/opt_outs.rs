//! The suppression list on SQLite.

use herald_store::{OptOut, StoreError, cut_page};
use jiff::Timestamp;
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::convert::{self, Ctx};

type Row = (String, String, i64);

fn opt_out((phone, source, created_at): Row) -> Result<OptOut, StoreError> {
    Ok(OptOut {
        phone,
        source,
        created_at: convert::timestamp(created_at)?,
    })
}

pub(crate) async fn add(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    phone: &str,
    source: &str,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO opt_outs (org_id, phone, source, created_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (org_id, phone) DO NOTHING",
    )
    .bind(org_id)
    .bind(phone)
    .bind(source)
    .bind(at.as_microsecond())
    .execute(conn)
    .await
    .ctx("failed to record an opt-out")?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn remove(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    phone: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM opt_outs WHERE org_id = ?1 AND phone = ?2")
        .bind(org_id)
        .bind(phone)
        .execute(conn)
        .await
        .ctx("failed to remove an opt-out")?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn among(
    pool: &SqlitePool,
    org_id: Uuid,
    phones: &[String],
) -> Result<Vec<OptOut>, StoreError> {
    if phones.is_empty() {
        return Ok(Vec::new());
    }
    let list = serde_json::to_string(phones).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT phone, source, created_at FROM opt_outs \
         WHERE org_id = ?1 AND phone IN (SELECT value FROM json_each(?2))",
    )
    .bind(org_id)
    .bind(list)
    .fetch_all(pool)
    .await
    .ctx("failed to check the suppression list")?;
    rows.into_iter().map(opt_out).collect()
}

pub(crate) async fn list(
    pool: &SqlitePool,
    org_id: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<OptOut>, Option<String>), StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT phone, source, created_at FROM opt_outs \
         WHERE org_id = ?1 AND (?2 IS NULL OR phone > ?2) ORDER BY phone LIMIT ?3",
    )
    .bind(org_id)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .ctx("failed to list the suppression list")?;
    let mut items = rows
        .into_iter()
        .map(opt_out)
        .collect::<Result<Vec<_>, _>>()?;
    let next = cut_page(&mut items, limit, |o| o.phone.clone());
    Ok((items, next))
}
