//! Credits, spend limits, usage and allowed destinations on PostgreSQL, and the credit work done
//! inside the transactions that accept messages and record their outcomes.

use std::collections::HashSet;

use async_trait::async_trait;
use herald_domain::message::Mode;
use herald_domain::money::Amount;
use herald_domain::phone::Region;
use herald_store::{
    CreditAccount, CreditGrant, CreditMoves, CreditState, CreditStore, GrantOutcome, GrantRefusal,
    IdempotencyRecord, Insertion, NewMessage, Scope, StoreError, UsageRow,
};
use jiff::Timestamp;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::PostgresStore;
use crate::convert::{self, Ctx, col, ts};
use crate::messages;

/// The metered organizations among `orgs` with their counters for `month`, locked in id order
/// until the transaction ends, so concurrent accepts reserve one after the other.
pub(crate) async fn load_metered(
    conn: &mut PgConnection,
    orgs: &[Uuid],
    month: &str,
) -> Result<Vec<CreditState>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.org_id, c.balance, c.reserved, c.spend_limit,
                coalesce((SELECT spent FROM monthly_spend s
                          WHERE s.org_id = c.org_id AND s.month = $2), 0)::bigint
         FROM credit_accounts c
         WHERE c.metered AND c.org_id = ANY($1) ORDER BY c.org_id FOR UPDATE OF c",
    )
    .bind(orgs)
    .bind(month)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to read credit accounts")?;
    rows.iter()
        .map(|row| {
            Ok(CreditState {
                org_id: col(row, 0)?,
                balance: col(row, 1)?,
                reserved: col(row, 2)?,
                spend_limit: col(row, 3)?,
                spent: col(row, 4)?,
            })
        })
        .collect()
}

/// Which of these messages' recipients opted out of their organization, as (organization,
/// number).
pub(crate) async fn opted_out(
    conn: &mut PgConnection,
    messages: &[&NewMessage],
) -> Result<HashSet<(Uuid, String)>, StoreError> {
    let wanted: Vec<(Uuid, &str)> = messages
        .iter()
        .map(|m| (m.scope.org_id, m.to.as_str()))
        .collect();
    let found = crate::opt_outs::among(conn, &wanted).await?;
    Ok(found
        .into_iter()
        .map(|(org, entry)| (org, entry.phone))
        .collect())
}

/// Add what an accept transaction reserved: `(org, credits, estimated spend)`.
pub(crate) async fn reserve(
    conn: &mut PgConnection,
    changes: &[(Uuid, i64, i64)],
    month: &str,
) -> Result<(), StoreError> {
    for (org, credits, spend) in changes {
        sqlx::query("UPDATE credit_accounts SET reserved = reserved + $2 WHERE org_id = $1")
            .bind(org)
            .bind(credits)
            .execute(&mut *conn)
            .await
            .ctx("failed to reserve credits")?;
        sqlx::query(
            "INSERT INTO monthly_spend (org_id, month, spent) VALUES ($1, $2, $3)
             ON CONFLICT (org_id, month) DO UPDATE SET spent = monthly_spend.spent + excluded.spent",
        )
        .bind(org)
        .bind(month)
        .bind(spend)
        .execute(&mut *conn)
        .await
        .ctx("failed to count spend")?;
    }
    Ok(())
}

/// Consume and release credits as status changes settled them.
pub(crate) async fn settle(conn: &mut PgConnection, moves: &CreditMoves) -> Result<(), StoreError> {
    for (org, month, change) in moves.sorted() {
        if change.consumed != 0 || change.released != 0 {
            sqlx::query(
                "UPDATE credit_accounts SET balance = balance - $2, reserved = reserved - $2 - $3
                 WHERE org_id = $1",
            )
            .bind(org)
            .bind(change.consumed)
            .bind(change.released)
            .execute(&mut *conn)
            .await
            .ctx("failed to settle credits")?;
        }
        if change.spend != 0 {
            sqlx::query(
                "UPDATE monthly_spend SET spent = greatest(spent + $3, 0)
                 WHERE org_id = $1 AND month = $2",
            )
            .bind(org)
            .bind(month)
            .bind(change.spend)
            .execute(&mut *conn)
            .await
            .ctx("failed to settle spend")?;
        }
    }
    Ok(())
}

async fn account(
    conn: &mut PgConnection,
    org_id: Uuid,
    month: &str,
) -> Result<Option<CreditAccount>, StoreError> {
    let row = sqlx::query(
        "SELECT o.id, c.metered, c.balance, c.reserved, c.spend_limit,
                (SELECT spent FROM monthly_spend s WHERE s.org_id = o.id AND s.month = $2)
         FROM organizations o LEFT JOIN credit_accounts c ON c.org_id = o.id
         WHERE o.id = $1",
    )
    .bind(org_id)
    .bind(month)
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to read the credit account")?;
    row.map(|row| {
        Ok(CreditAccount {
            org_id,
            metered: col::<Option<bool>>(&row, 1)?.unwrap_or(false),
            balance: col::<Option<i64>>(&row, 2)?.unwrap_or(0),
            reserved: col::<Option<i64>>(&row, 3)?.unwrap_or(0),
            spend_limit: col::<Option<i64>>(&row, 4)?.map(Amount::from_micros),
            month_spend: Amount::from_micros(col::<Option<i64>>(&row, 5)?.unwrap_or(0)),
        })
    })
    .transpose()
}

/// Grants keep their idempotency keys with the organization's live keys.
fn live(org_id: Uuid) -> Scope {
    Scope {
        org_id,
        mode: Mode::Live,
    }
}

/// What an idempotency key already used answers for a grant.
fn replay(previous: Insertion) -> GrantOutcome {
    match previous {
        Insertion::Replayed {
            message_id,
            response,
        } => GrantOutcome::Replayed {
            grant_id: message_id,
            response,
        },
        _ => GrantOutcome::KeyReused,
    }
}

async fn org_exists(conn: &mut PgConnection, org_id: Uuid) -> Result<bool, StoreError> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM organizations WHERE id = $1")
        .bind(org_id)
        .fetch_optional(&mut *conn)
        .await
        .ctx("failed to read the organization")?;
    Ok(found.is_some())
}

#[async_trait]
impl CreditStore for PostgresStore {
    async fn credit_account(
        &self,
        org_id: Uuid,
        month: &str,
    ) -> Result<Option<CreditAccount>, StoreError> {
        let mut conn = self.connection().await?;
        account(&mut conn, org_id, month).await
    }

    async fn grant_credits(
        &self,
        grant: &CreditGrant,
        idempotency: Option<&IdempotencyRecord>,
        month: &str,
    ) -> Result<Result<GrantOutcome, GrantRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        // Locks the organization's account (when it has one) until the grant commits.
        sqlx::query("SELECT 1 FROM credit_accounts WHERE org_id = $1 FOR UPDATE")
            .bind(grant.org_id)
            .execute(&mut *tx)
            .await
            .ctx("failed to lock the credit account")?;
        let Some(before) = account(&mut tx, grant.org_id, month).await? else {
            return Ok(Err(GrantRefusal::NotFound));
        };
        // The key is taken first, so a concurrent retry waits for this grant and replays it;
        // a refusal below rolls it back with everything else.
        if let Some(record) = idempotency
            && let Some(previous) = messages::take_key(
                &mut tx,
                live(grant.org_id),
                grant.id,
                record,
                grant.created_at,
            )
            .await?
        {
            return Ok(Ok(replay(previous)));
        }
        if before.available() + grant.credits < 0 {
            return Ok(Err(GrantRefusal::WouldOverdraw {
                available: before.available(),
            }));
        }
        sqlx::query(
            "INSERT INTO credit_accounts (org_id, metered, balance) VALUES ($1, true, $2)
             ON CONFLICT (org_id) DO UPDATE
             SET metered = true, balance = credit_accounts.balance + excluded.balance",
        )
        .bind(grant.org_id)
        .bind(grant.credits)
        .execute(&mut *tx)
        .await
        .ctx("failed to add credits")?;
        sqlx::query(
            "INSERT INTO credit_grants (id, org_id, credits, reason, granted_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(grant.id)
        .bind(grant.org_id)
        .bind(grant.credits)
        .bind(&grant.reason)
        .bind(&grant.granted_by)
        .bind(ts(grant.created_at))
        .execute(&mut *tx)
        .await
        .ctx("failed to record the grant")?;
        let after = account(&mut tx, grant.org_id, month)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a credited organization vanished".into()))?;
        tx.commit().await.ctx("failed to commit the grant")?;
        Ok(Ok(GrantOutcome::Granted(after)))
    }

    async fn set_metered(&self, org_id: Uuid, metered: bool) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if !org_exists(&mut tx, org_id).await? {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO credit_accounts (org_id, metered) VALUES ($1, $2)
             ON CONFLICT (org_id) DO UPDATE SET metered = excluded.metered",
        )
        .bind(org_id)
        .bind(metered)
        .execute(&mut *tx)
        .await
        .ctx("failed to switch metering")?;
        tx.commit().await.ctx("failed to switch metering")?;
        Ok(true)
    }

    async fn set_spend_limit(
        &self,
        org_id: Uuid,
        limit: Option<Amount>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if !org_exists(&mut tx, org_id).await? {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO credit_accounts (org_id, spend_limit) VALUES ($1, $2)
             ON CONFLICT (org_id) DO UPDATE SET spend_limit = excluded.spend_limit",
        )
        .bind(org_id)
        .bind(limit.map(Amount::micros))
        .execute(&mut *tx)
        .await
        .ctx("failed to set the spend limit")?;
        tx.commit().await.ctx("failed to set the spend limit")?;
        Ok(true)
    }

    async fn list_credit_grants(
        &self,
        org_id: Uuid,
        limit: u32,
    ) -> Result<Vec<CreditGrant>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, credits, reason, granted_by, created_at FROM credit_grants
             WHERE org_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(org_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("failed to list credit grants")?;
        rows.iter()
            .map(|row| {
                Ok(CreditGrant {
                    id: col(row, 0)?,
                    org_id,
                    credits: col(row, 1)?,
                    reason: col(row, 2)?,
                    granted_by: col(row, 3)?,
                    created_at: convert::timestamp(row, 4)?,
                })
            })
            .collect()
    }

    async fn allowed_countries(&self, org_id: Uuid) -> Result<Option<Vec<Region>>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT country FROM allowed_countries WHERE org_id = $1 ORDER BY country",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read allowed countries")?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.iter()
            .map(|c| Region::parse(c).map_err(|_| StoreError::Corrupt(format!("country {c:?}"))))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    async fn set_allowed_countries(
        &self,
        org_id: Uuid,
        countries: &[Region],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if !org_exists(&mut tx, org_id).await? {
            return Ok(false);
        }
        sqlx::query("DELETE FROM allowed_countries WHERE org_id = $1")
            .bind(org_id)
            .execute(&mut *tx)
            .await
            .ctx("failed to replace allowed countries")?;
        for country in countries {
            sqlx::query(
                "INSERT INTO allowed_countries (org_id, country) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .bind(org_id)
            .bind(country.as_str())
            .execute(&mut *tx)
            .await
            .ctx("failed to replace allowed countries")?;
        }
        tx.commit()
            .await
            .ctx("failed to replace allowed countries")?;
        Ok(true)
    }

    async fn usage(
        &self,
        scope: Scope,
        from: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT country, kind, currency, count(*), sum(segments)::bigint,
                    count(*) FILTER (WHERE status IN ('sent', 'delivered', 'undelivered')),
                    sum(estimated_cost)::bigint, coalesce(sum(actual_cost), 0)::bigint
             FROM messages
             WHERE org_id = $1 AND mode = $2 AND created_at >= $3 AND created_at < $4
             GROUP BY country, kind, currency ORDER BY country, kind, currency",
        )
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(ts(from))
        .bind(ts(until))
        .fetch_all(&self.pool)
        .await
        .ctx("failed to sum usage")?;
        rows.iter()
            .map(|row| {
                Ok(UsageRow {
                    country: convert::opt_region(row, 0)?,
                    kind: convert::kind(row, 1)?,
                    currency: convert::currency(row, 2)?,
                    messages: col::<i64>(row, 3)? as u64,
                    segments: col::<i64>(row, 4)? as u64,
                    sent: col::<i64>(row, 5)? as u64,
                    estimated_cost: Amount::from_micros(col(row, 6)?),
                    actual_cost: Amount::from_micros(col(row, 7)?),
                })
            })
            .collect()
    }
}
