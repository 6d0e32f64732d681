//! Provider accounts and routes. Every statement names the organization, so another
//! organization's account id is simply not found; the routes' composite foreign key to
//! `provider_accounts (org_id, id)` backs that up in the schema.
//!
//! Concurrency: writing a route takes the organization's row `FOR NO KEY UPDATE` (which does
//! not block the key-share locks that inserting messages takes), so two writers of routes go one
//! after the other; deleting an account locks its row `FOR UPDATE` before looking for routes
//! naming it, which waits for any route insert holding a key-share lock on it.

use herald_store::*;
use jiff::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::convert::{self, Ctx, col, ts};
use crate::messages;

/// Columns read into a [`ProviderAccount`], in the order [`account`] expects.
macro_rules! columns {
    () => {
        "id, org_id, name, kind, credentials_shown, senders, messages_per_second, \
         segments_per_second, sender_messages_per_second, enabled, created_at, updated_at"
    };
}

/// Insert the account, taking its idempotency key first so that a concurrent retry waits for
/// this one; `conn` must be inside a transaction committed only on
/// [`AccountCreation::Created`]. Accounts are live settings, so their keys sit with the live
/// messages' keys.
pub(crate) async fn create(
    conn: &mut PgConnection,
    account: &ProviderAccount,
    sealed: &[u8],
    idempotency: Option<&IdempotencyRecord>,
    now: Timestamp,
) -> Result<Result<AccountCreation, AccountRefusal>, StoreError> {
    if let Some(record) = idempotency {
        let scope = Scope {
            org_id: account.org_id,
            mode: herald_domain::message::Mode::Live,
        };
        match messages::take_key(conn, scope, account.id, record, now).await? {
            None => {}
            Some(Insertion::Replayed {
                message_id,
                response,
            }) => {
                return Ok(Ok(AccountCreation::Replayed {
                    id: message_id,
                    response,
                }));
            }
            Some(_) => return Ok(Ok(AccountCreation::KeyReused)),
        }
    }
    Ok(insert(conn, account, sealed)
        .await?
        .map(|()| AccountCreation::Created))
}

async fn insert(
    conn: &mut PgConnection,
    account: &ProviderAccount,
    sealed: &[u8],
) -> Result<Result<(), AccountRefusal>, StoreError> {
    let result = sqlx::query(
        "INSERT INTO provider_accounts (id, org_id, name, kind, credentials_shown, \
         sealed_credentials, senders, messages_per_second, segments_per_second, \
         sender_messages_per_second, enabled, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
    .bind(ts(account.created_at))
    .bind(ts(account.updated_at))
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
    pool: &PgPool,
    org_id: Option<Uuid>,
    id: Uuid,
) -> Result<Option<ProviderAccount>, StoreError> {
    // A NULL organization only for operators' unscoped lookups.
    sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM provider_accounts WHERE id = $1 AND ($2::uuid IS NULL OR org_id = $2)"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(pool)
    .await
    .ctx("failed to read the provider account")?
    .map(|row| account(&row))
    .transpose()
}

pub(crate) async fn with_credentials(
    pool: &PgPool,
    org_id: Uuid,
    id: Uuid,
) -> Result<Option<(ProviderAccount, Vec<u8>)>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        columns!(),
        ", sealed_credentials FROM provider_accounts WHERE id = $1 AND org_id = $2"
    ))
    .bind(id)
    .bind(org_id)
    .fetch_optional(pool)
    .await
    .ctx("failed to read the provider account's credentials")?
    .map(|row| Ok((account(&row)?, col::<Vec<u8>>(&row, 12)?)))
    .transpose()
}

pub(crate) async fn list(
    pool: &PgPool,
    org_id: Uuid,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Page<ProviderAccount>, StoreError> {
    // One more than asked tells whether there is a next page.
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM provider_accounts WHERE org_id = $1 AND id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') \
          ORDER BY id LIMIT $3"
    ))
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
    pool: &PgPool,
    account: &ProviderAccount,
    sealed: Option<&[u8]>,
    read_at: Timestamp,
) -> Result<Result<(), AccountRefusal>, StoreError> {
    let result = sqlx::query(
        "UPDATE provider_accounts SET name = $3, credentials_shown = $4, \
         sealed_credentials = coalesce($5, sealed_credentials), senders = $6, \
         messages_per_second = $7, segments_per_second = $8, sender_messages_per_second = $9, \
         enabled = $10, updated_at = $11 \
         WHERE id = $1 AND org_id = $2 AND updated_at = $12",
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
    .bind(ts(account.updated_at))
    .bind(ts(read_at))
    .execute(pool)
    .await;
    match result {
        Ok(done) if done.rows_affected() == 0 => {
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM provider_accounts WHERE id = $1 AND org_id = $2")
                    .bind(account.id)
                    .bind(account.org_id)
                    .fetch_optional(pool)
                    .await
                    .ctx("failed to read the provider account")?;
            Ok(Err(if exists.is_some() {
                AccountRefusal::Stale
            } else {
                AccountRefusal::NotFound
            }))
        }
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

pub(crate) async fn delete(
    conn: &mut PgConnection,
    org_id: Uuid,
    id: Uuid,
) -> Result<Result<(), AccountRefusal>, StoreError> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM provider_accounts WHERE id = $1 AND org_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(org_id)
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to lock the provider account")?;
    if found.is_none() {
        return Ok(Err(AccountRefusal::NotFound));
    }
    let routes: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT country, prefix FROM provider_routes \
         WHERE org_id = $1 AND account_id = $2 ORDER BY country, prefix",
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
    sqlx::query("DELETE FROM provider_accounts WHERE id = $1 AND org_id = $2")
        .bind(id)
        .bind(org_id)
        .execute(&mut *conn)
        .await
        .ctx("failed to delete the provider account")?;
    Ok(Ok(()))
}

pub(crate) async fn list_routes(pool: &PgPool, org_id: Uuid) -> Result<Vec<Route>, StoreError> {
    let rows: Vec<(String, String, Uuid, jiff_sqlx::Timestamp)> = sqlx::query_as(
        "SELECT country, prefix, account_id, updated_at FROM provider_routes \
         WHERE org_id = $1 ORDER BY country COLLATE \"C\", prefix COLLATE \"C\", position",
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
                updated_at: updated_at.to_jiff(),
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
    conn: &mut PgConnection,
    org_id: Uuid,
    route: &Route,
) -> Result<Result<(), AccountRefusal>, StoreError> {
    sqlx::query("SELECT 1 FROM organizations WHERE id = $1 FOR NO KEY UPDATE")
        .bind(org_id)
        .execute(&mut *conn)
        .await
        .ctx("failed to lock the organization's routes")?;
    // Key-share locks keep the accounts from being deleted before this commits.
    let known: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM provider_accounts WHERE org_id = $1 AND id = ANY($2) FOR KEY SHARE",
    )
    .bind(org_id)
    .bind(&route.accounts)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to look up a route's provider accounts")?;
    let unknown: Vec<Uuid> = route
        .accounts
        .iter()
        .filter(|id| !known.contains(id))
        .copied()
        .collect();
    if !unknown.is_empty() {
        return Ok(Err(AccountRefusal::UnknownAccounts(unknown)));
    }
    delete_route(&mut *conn, org_id, &route.key).await?;
    let (country, prefix) = route_columns(&route.key);
    let positions: Vec<i32> = (0..route.accounts.len() as i32).collect();
    sqlx::query(
        "INSERT INTO provider_routes (org_id, country, prefix, position, account_id, updated_at) \
         SELECT $1, $2, $3, position, account_id, $6 \
         FROM unnest($4::integer[], $5::uuid[]) AS r (position, account_id)",
    )
    .bind(org_id)
    .bind(country)
    .bind(prefix)
    .bind(&positions)
    .bind(&route.accounts)
    .bind(ts(route.updated_at))
    .execute(&mut *conn)
    .await
    .ctx("failed to store the route")?;
    Ok(Ok(()))
}

pub(crate) async fn delete_route(
    conn: &mut PgConnection,
    org_id: Uuid,
    key: &RouteKey,
) -> Result<bool, StoreError> {
    let (country, prefix) = route_columns(key);
    let deleted = sqlx::query(
        "DELETE FROM provider_routes WHERE org_id = $1 AND country = $2 AND prefix = $3",
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

fn account(row: &PgRow) -> Result<ProviderAccount, StoreError> {
    let kind: &str = col(row, 3)?;
    Ok(ProviderAccount {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        name: col(row, 2)?,
        kind: kind.parse().map_err(StoreError::Corrupt)?,
        credentials_shown: decode_shown(col(row, 4)?)?,
        senders: decode_senders(col(row, 5)?)?,
        limits: RateLimits {
            messages_per_second: col(row, 6)?,
            segments_per_second: col(row, 7)?,
            sender_messages_per_second: col(row, 8)?,
        },
        enabled: col(row, 9)?,
        created_at: convert::timestamp(row, 10)?,
        updated_at: convert::timestamp(row, 11)?,
    })
}
