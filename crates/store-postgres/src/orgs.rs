//! Organizations and API keys.

use herald_store::{ApiKey, NewApiKey, Organization, StoreError};
use jiff::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::convert::{self, Ctx, col, ts};

/// Taken by every bootstrap for the rest of its transaction, so that two servers starting on an
/// empty database count organizations one after the other ("herald\0\x01" in ASCII).
pub(crate) const BOOTSTRAP_LOCK: i64 = 0x6865_7261_6c64_0001;

pub(crate) async fn insert_organization(
    conn: &mut PgConnection,
    org: &Organization,
    keys: &[NewApiKey],
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "INSERT INTO organizations (id, name, default_region, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(org.id)
    .bind(&org.name)
    .bind(org.default_region.as_str())
    .bind(ts(org.created_at))
    .execute(&mut *conn)
    .await;
    match result {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(StoreError::Conflict(
                "the organization already exists".into(),
            ));
        }
        Err(e) => return Err(StoreError::backend("failed to insert the organization", e)),
    }
    for key in keys {
        insert_key(conn, key).await?;
    }
    Ok(())
}

/// Create `org` with `keys` if there is no organization yet; returns whether it did. Holds
/// [`BOOTSTRAP_LOCK`] until the caller's transaction ends, so a concurrent bootstrap counts only
/// after this one has committed and then finds the organization: under READ COMMITTED the
/// count's snapshot is taken after the lock is granted.
pub(crate) async fn bootstrap(
    conn: &mut PgConnection,
    org: &Organization,
    keys: &[NewApiKey],
) -> Result<bool, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(BOOTSTRAP_LOCK)
        .execute(&mut *conn)
        .await
        .ctx("failed to take the bootstrap lock")?;
    let existing: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM organizations)")
        .fetch_one(&mut *conn)
        .await
        .ctx("failed to count organizations")?;
    if existing {
        return Ok(false);
    }
    insert_organization(conn, org, keys).await?;
    Ok(true)
}

pub(crate) async fn get_organization(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<Organization>, StoreError> {
    sqlx::query("SELECT id, name, default_region, created_at FROM organizations WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .ctx("failed to read the organization")?
        .map(|row| organization(&row, 0))
        .transpose()
}

pub(crate) async fn insert_key(conn: &mut PgConnection, key: &NewApiKey) -> Result<(), StoreError> {
    let result = sqlx::query(
        "INSERT INTO api_keys (id, org_id, mode, prefix, hash, name, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(key.id)
    .bind(key.org_id)
    .bind(key.mode.as_str())
    .bind(&key.prefix)
    .bind(&key.hash[..])
    .bind(&key.name)
    .bind(ts(key.created_at))
    .execute(&mut *conn)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(StoreError::Conflict("no such organization".into()))
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict(
            "an API key with this id or hash already exists".into(),
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

/// Columns read into an [`ApiKey`], in the order [`api_key`] expects.
macro_rules! key_columns {
    () => {
        "k.id, k.org_id, k.mode, k.prefix, k.name, k.created_at, k.last_used_at, k.revoked_at"
    };
}

pub(crate) async fn revoke_key(
    pool: &PgPool,
    id: Uuid,
    at: Timestamp,
) -> Result<Option<ApiKey>, StoreError> {
    // A second revocation keeps the first time: the key died then.
    sqlx::query(concat!(
        "UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, $1) WHERE k.id = $2 RETURNING ",
        key_columns!()
    ))
    .bind(ts(at))
    .bind(id)
    .fetch_optional(pool)
    .await
    .ctx("failed to revoke the API key")?
    .map(|row| api_key(&row))
    .transpose()
}

pub(crate) async fn touch_key(pool: &PgPool, id: Uuid, at: Timestamp) -> Result<(), StoreError> {
    sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
        .bind(ts(at))
        .bind(id)
        .execute(pool)
        .await
        .ctx("failed to record API key use")?;
    Ok(())
}

pub(crate) async fn list_keys(pool: &PgPool, org_id: Uuid) -> Result<Vec<ApiKey>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys k WHERE k.org_id = $1 ORDER BY k.created_at, k.id"
    ))
    .bind(org_id)
    .fetch_all(pool)
    .await
    .ctx("failed to list API keys")?
    .iter()
    .map(api_key)
    .collect()
}

pub(crate) async fn find_key(
    pool: &PgPool,
    hash: &[u8; 32],
) -> Result<Option<(ApiKey, Organization)>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        ", o.id, o.name, o.default_region, o.created_at
         FROM api_keys k JOIN organizations o ON o.id = k.org_id
         WHERE k.hash = $1"
    ))
    .bind(&hash[..])
    .fetch_optional(pool)
    .await
    .ctx("failed to look up the API key")?;
    match row {
        Some(row) => Ok(Some((api_key(&row)?, organization(&row, 8)?))),
        None => Ok(None),
    }
}

fn api_key(row: &PgRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        mode: convert::mode(row, 2)?,
        prefix: col(row, 3)?,
        name: col(row, 4)?,
        created_at: convert::timestamp(row, 5)?,
        last_used_at: convert::opt_timestamp(row, 6)?,
        revoked_at: convert::opt_timestamp(row, 7)?,
    })
}

/// Organization columns starting at `at`: id, name, default_region, created_at.
fn organization(row: &PgRow, at: usize) -> Result<Organization, StoreError> {
    Ok(Organization {
        id: col(row, at)?,
        name: col(row, at + 1)?,
        default_region: convert::region(row, at + 2)?,
        created_at: convert::timestamp(row, at + 3)?,
    })
}
