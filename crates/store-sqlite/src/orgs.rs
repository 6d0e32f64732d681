//! Organizations and API keys.

use herald_store::{ApiKey, NewApiKey, Organization, StoreError};
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::convert::{self, Ctx, micros};

pub(crate) async fn insert_organization(
    conn: &mut SqliteConnection,
    org: &Organization,
    keys: &[NewApiKey],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO organizations (id, name, default_region, created_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(org.id)
    .bind(&org.name)
    .bind(org.default_region.as_str())
    .bind(micros(org.created_at))
    .execute(&mut *conn)
    .await
    .ctx("failed to insert the organization")?;
    for key in keys {
        insert_key(conn, key).await?;
    }
    Ok(())
}

pub(crate) async fn get_organization(
    pool: &SqlitePool,
    id: Uuid,
) -> Result<Option<Organization>, StoreError> {
    sqlx::query("SELECT id, name, default_region, created_at FROM organizations WHERE id = ?1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .ctx("failed to read the organization")?
        .map(|row| organization(&row, 0))
        .transpose()
}

pub(crate) async fn insert_key(
    conn: &mut SqliteConnection,
    key: &NewApiKey,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "INSERT INTO api_keys (id, org_id, mode, prefix, hash, name, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(key.id)
    .bind(key.org_id)
    .bind(key.mode.as_str())
    .bind(&key.prefix)
    .bind(&key.hash[..])
    .bind(&key.name)
    .bind(micros(key.created_at))
    .execute(&mut *conn)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(StoreError::Conflict("no such organization".into()))
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict(
            "an API key with this id or hash exists".into(),
        )),
        Err(e) => Err(StoreError::backend("failed to insert the API key", e)),
    }
}

pub(crate) fn key_from_new(key: &NewApiKey) -> ApiKey {
    ApiKey {
        id: key.id,
        org_id: key.org_id,
        mode: key.mode,
        prefix: key.prefix.clone(),
        name: key.name.clone(),
        created_at: key.created_at,
        last_used_at: None,
        revoked_at: None,
    }
}

const KEY_COLUMNS: &str =
    "k.id, k.org_id, k.mode, k.prefix, k.name, k.created_at, k.last_used_at, k.revoked_at";

pub(crate) async fn revoke_key(
    conn: &mut SqliteConnection,
    id: Uuid,
    at: Timestamp,
) -> Result<Option<ApiKey>, StoreError> {
    // A second revocation keeps the first time: the key died then.
    sqlx::query("UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?1) WHERE id = ?2")
        .bind(micros(at))
        .bind(id)
        .execute(&mut *conn)
        .await
        .ctx("failed to revoke the API key")?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = ?1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to read the API key")?
    .map(|row| api_key(&row))
    .transpose()
}

pub(crate) async fn list_keys(pool: &SqlitePool, org_id: Uuid) -> Result<Vec<ApiKey>, StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org_id = ?1 ORDER BY k.created_at, k.id"
    )))
    .bind(org_id)
    .fetch_all(pool)
    .await
    .ctx("failed to list API keys")?
    .iter()
    .map(api_key)
    .collect()
}

pub(crate) async fn find_key(
    pool: &SqlitePool,
    hash: &[u8; 32],
) -> Result<Option<(ApiKey, Organization)>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS}, o.id, o.name, o.default_region, o.created_at
         FROM api_keys k JOIN organizations o ON o.id = k.org_id
         WHERE k.hash = ?1"
    )))
    .bind(&hash[..])
    .fetch_optional(pool)
    .await
    .ctx("failed to look up the API key")?;
    match row {
        Some(row) => Ok(Some((api_key(&row)?, organization(&row, 8)?))),
        None => Ok(None),
    }
}

fn api_key(row: &SqliteRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: row.get(0),
        org_id: row.get(1),
        mode: convert::mode(row.get(2))?,
        prefix: row.get(3),
        name: row.get(4),
        created_at: convert::timestamp(row.get(5))?,
        last_used_at: convert::opt_timestamp(row.get(6))?,
        revoked_at: convert::opt_timestamp(row.get(7))?,
    })
}

/// Organization columns starting at `at`: id, name, default_region, created_at.
fn organization(row: &SqliteRow, at: usize) -> Result<Organization, StoreError> {
    Ok(Organization {
        id: row.get(at),
        name: row.get(at + 1),
        default_region: convert::region(row.get(at + 2))?,
        created_at: convert::timestamp(row.get(at + 3))?,
    })
}
