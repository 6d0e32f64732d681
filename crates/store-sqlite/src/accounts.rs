//! Provider accounts and routes. Every statement names the organization, so another
//! organization's account id is simply not found; the routes' composite foreign key to
//! `provider_accounts (org_id, id)` backs that up in the schema.

use herald_store::*;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::convert::{self, Ctx, micros};
use crate::messages;

/// Columns read into a [`ProviderAccount`], in the order [`account`] expects.
const COLUMNS: &str = "id, org_id, name, kind, credentials_shown, senders, messages_per_second, \
     segments_per_second, sender_messages_per_second, enabled, created_at, updated_at";

/// Accounts are live settings, so their idempotency keys sit with the live messages' keys.
fn live(org_id: Uuid) -> Scope {
    Scope {
        org_id,
        mode: herald_domain::message::Mode::Live,
    }
}

/// Insert the account (and remember its idempotency key) inside the caller's write
/// transaction, which must be committed only on [`AccountCreation::Created`].
pub(crate) async fn create(
    conn: &mut SqliteConnection,
    account: &ProviderAccount,
    sealed: &[u8],
    idempotency: Option<&IdempotencyRecord>,
    now: Timestamp,
) -> Result<Result<AccountCreation, AccountRefusal>, StoreError> {
    if let Some(record) = idempotency
        && let Some(previous) = messages::check_key(conn, live(account.org_id), record, now).await?
    {
        return Ok(Ok(match previous {
            Insertion::Replayed {
                message_id,
                response,
            } => AccountCreation::Replayed {
                id: message_id,
                response,
            },
            _ => AccountCreation::KeyReused,
        }));
    }
    if let Err(refusal) = insert(conn, account, sealed).await? {
        return Ok(Err(refusal));
    }
    if let Some(record) = idempotency {
        messages::store_key(conn, live(account.org_id), account.id, record, now).await?;
    }
    Ok(Ok(AccountCreation::Created))
}

async fn insert(
    conn: &mut SqliteConnection,
    account: &ProviderAccount,
    sealed: &[u8],
) -> Result<Result<(), AccountRefusal>, StoreError> {
    let result = sqlx::query(
        "INSERT INTO provider_accounts (id, org_id, name, kind, credentials_shown, \
         sealed_credentials, senders, messages_per_second, segments_per_second, \
         sender_messages_per_second, enabled, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .bind(account.id)
    .bind(account.org_id)
    .bind(&account.name)
    .bind(account.kind.as_str())
    .bind(encode_shown(&account.credentials_shown))
    .bind(sealed)
    .bind(encode_senders(&account.senders))
    .bind(account.limits.messages_per_second)
    .bind(account.limits.segments_per_second)
    .bind(account.limits.sender_messages_per_second)
    .bind(account.enabled)
    .bind(micros(account.created_at))
    .bind(micros(account.updated_at))
    .execute(&mut *conn)
    .await;
    match result {
        Ok(_) => Ok(Ok(())),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Ok(Err(AccountRefusal::NameTaken))
        }
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Ok(Err(AccountRefusal::NotFound))
        }
        Err(e) => Err(StoreError::backend(
            "failed to insert the provider account",
            e,
        )),
    }
}

pub(crate) async fn get(
    pool: &SqlitePool,
    org_id: Option<Uuid>,
    id: Uuid,
) -> Result<Option<ProviderAccount>, StoreError> {
    // `?2 IS NULL` only for operators' unscoped lookups.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM provider_accounts WHERE id = ?1 AND (?2 IS NULL OR org_id = ?2)"
    )))
    .bind(id)
    .bind(org_id)
    .fetch_optional(pool)
    .await
    .ctx("failed to read the provider account")?
    .map(|row| account(&row))
    .transpose()
}

pub(crate) async fn with_credentials(
    pool: &SqlitePool,
    org_id: Uuid,
    id: Uuid,
) -> Result<Option<(ProviderAccount, Vec<u8>)>, StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, sealed_credentials FROM provider_accounts \
         WHERE id = ?1 AND org_id = ?2"
    )))
    .bind(id)
    .bind(org_id)
    .fetch_optional(pool)
    .await
    .ctx("failed to read the provider account's credentials")?
    .map(|row| Ok((account(&row)?, row.get::<Vec<u8>, _>(12))))
    .transpose()
}

pub(crate) async fn list(
    pool: &SqlitePool,
    org_id: Uuid,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Page<ProviderAccount>, StoreError> {
    // One more than asked tells whether there is a next page.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM provider_accounts \
         WHERE org_id = ?1 AND id > coalesce(?2, x'') ORDER BY id LIMIT ?3"
    )))
    .bind(org_id)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .ctx("failed to list provider accounts")?;
    let items = rows.iter().map(account).collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_overfetch(items, limit, |item| item.id))
}

pub(crate) async fn update(
    conn: &mut SqliteConnection,
    account: &ProviderAccount,
    sealed: Option<&[u8]>,
    read_at: Timestamp,
) -> Result<Result<(), AccountRefusal>, StoreError> {
    let result = sqlx::query(
        "UPDATE provider_accounts SET name = ?3, credentials_shown = ?4, \
         sealed_credentials = coalesce(?5, sealed_credentials), senders = ?6, \
         messages_per_second = ?7, segments_per_second = ?8, sender_messages_per_second = ?9, \
         enabled = ?10, updated_at = ?11 \
         WHERE id = ?1 AND org_id = ?2 AND updated_at = ?12",
    )
    .bind(account.id)
    .bind(account.org_id)
    .bind(&account.name)
    .bind(encode_shown(&account.credentials_shown))
    .bind(sealed)
    .bind(encode_senders(&account.senders))
    .bind(account.limits.messages_per_second)
    .bind(account.limits.segments_per_second)
    .bind(account.limits.sender_messages_per_second)
    .bind(account.enabled)
    .bind(micros(account.updated_at))
    .bind(micros(read_at))
    .execute(&mut *conn)
    .await;
    match result {
        Ok(done) if done.rows_affected() == 0 => Ok(Err(missing_or_stale(conn, account).await?)),
        Ok(_) => Ok(Ok(())),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Ok(Err(AccountRefusal::NameTaken))
        }
        Err(e) => Err(StoreError::backend(
            "failed to update the provider account",
            e,
        )),
    }
}

/// Why a conditional update changed nothing: the account is gone, or it changed since read.
async fn missing_or_stale(
    conn: &mut SqliteConnection,
    account: &ProviderAccount,
) -> Result<AccountRefusal, StoreError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM provider_accounts WHERE id = ?1 AND org_id = ?2")
            .bind(account.id)
            .bind(account.org_id)
            .fetch_optional(&mut *conn)
            .await
            .ctx("failed to read the provider account")?;
    Ok(if exists.is_some() {
        AccountRefusal::Stale
    } else {
        AccountRefusal::NotFound
    })
}

pub(crate) async fn delete(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    id: Uuid,
) -> Result<Result<(), AccountRefusal>, StoreError> {
    // Inside the write transaction, so no route can name the account between this check and
    // the delete; the foreign key would refuse it anyway.
    let routes: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT country, prefix FROM provider_routes \
         WHERE org_id = ?1 AND account_id = ?2 ORDER BY country, prefix",
    )
    .bind(org_id)
    .bind(id)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to look up the routes naming the provider account")?;
    if !routes.is_empty() {
        let keys = routes
            .iter()
            .map(|(country, prefix)| key(country, prefix))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Err(AccountRefusal::InUse(keys)));
    }
    let deleted = sqlx::query("DELETE FROM provider_accounts WHERE id = ?1 AND org_id = ?2")
        .bind(id)
        .bind(org_id)
        .execute(&mut *conn)
        .await
        .ctx("failed to delete the provider account")?
        .rows_affected();
    Ok(if deleted == 0 {
        Err(AccountRefusal::NotFound)
    } else {
        Ok(())
    })
}

pub(crate) async fn list_routes(pool: &SqlitePool, org_id: Uuid) -> Result<Vec<Route>, StoreError> {
    let rows: Vec<(String, String, Uuid, i64)> = sqlx::query_as(
        "SELECT country, prefix, account_id, updated_at FROM provider_routes \
         WHERE org_id = ?1 ORDER BY country, prefix, position",
    )
    .bind(org_id)
    .fetch_all(pool)
    .await
    .ctx("failed to list routes")?;
    let mut routes: Vec<Route> = Vec::new();
    let mut last: Option<(String, String)> = None;
    for (country, prefix, account_id, updated_at) in rows {
        if last.as_ref() != Some(&(country.clone(), prefix.clone())) {
            routes.push(Route {
                key: key(&country, &prefix)?,
                accounts: Vec::new(),
                updated_at: convert::timestamp(updated_at)?,
            });
            last = Some((country, prefix));
        }
        if let Some(route) = routes.last_mut() {
            route.accounts.push(account_id);
        }
    }
    Ok(routes)
}

pub(crate) async fn set_route(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    route: &Route,
) -> Result<Result<(), AccountRefusal>, StoreError> {
    let mut unknown = Vec::new();
    for id in &route.accounts {
        let known: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM provider_accounts WHERE id = ?1 AND org_id = ?2")
                .bind(id)
                .bind(org_id)
                .fetch_optional(&mut *conn)
                .await
                .ctx("failed to look up a route's provider account")?;
        if known.is_none() {
            unknown.push(*id);
        }
    }
    if !unknown.is_empty() {
        return Ok(Err(AccountRefusal::UnknownAccounts(unknown)));
    }
    delete_route(conn, org_id, &route.key).await?;
    let (country, prefix) = route_columns(&route.key);
    for (position, id) in route.accounts.iter().enumerate() {
        sqlx::query(
            "INSERT INTO provider_routes (org_id, country, prefix, position, account_id, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(org_id)
        .bind(country)
        .bind(prefix)
        .bind(position as i64)
        .bind(id)
        .bind(micros(route.updated_at))
        .execute(&mut *conn)
        .await
        .ctx("failed to store the route")?;
    }
    Ok(Ok(()))
}

pub(crate) async fn delete_route(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    key: &RouteKey,
) -> Result<bool, StoreError> {
    let (country, prefix) = route_columns(key);
    let deleted = sqlx::query(
        "DELETE FROM provider_routes WHERE org_id = ?1 AND country = ?2 AND prefix = ?3",
    )
    .bind(org_id)
    .bind(country)
    .bind(prefix)
    .execute(&mut *conn)
    .await
    .ctx("failed to delete the route")?
    .rows_affected();
    Ok(deleted > 0)
}

fn key(country: &str, prefix: &str) -> Result<RouteKey, StoreError> {
    route_key(country, prefix)
        .ok_or_else(|| StoreError::Corrupt(format!("route country {country:?}")))
}

fn account(row: &SqliteRow) -> Result<ProviderAccount, StoreError> {
    let kind: String = row.get(3);
    Ok(ProviderAccount {
        id: row.get(0),
        org_id: row.get(1),
        name: row.get(2),
        kind: kind.parse().map_err(StoreError::Corrupt)?,
        credentials_shown: decode_shown(row.get(4))?,
        senders: decode_senders(row.get(5))?,
        limits: RateLimits {
            messages_per_second: row.get(6),
            segments_per_second: row.get(7),
            sender_messages_per_second: row.get(8),
        },
        enabled: row.get(9),
        created_at: convert::timestamp(row.get(10))?,
        updated_at: convert::timestamp(row.get(11))?,
    })
}
