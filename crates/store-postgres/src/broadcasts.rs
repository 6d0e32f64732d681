//! Broadcasts on PostgreSQL: the broadcast row, its batches of messages (stored with the counts
//! that include them, in one transaction) and the numbers it already reached.

use async_trait::async_trait;
use herald_store::*;
use jiff::Timestamp;
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use uuid::Uuid;

use crate::PostgresStore;
use crate::convert::{self, Ctx, col, ts};
use crate::{credits, messages};

/// Columns read into a [`Broadcast`], in the order [`broadcast`] expects.
const COLUMNS: &str = "id, org_id, mode, status, request, requested, queued, duplicates, invalid, \
     opted_out, no_consent, not_permitted, not_sent, error, created_at, finished_at, spec, \
     api_key_id, position, owner, lease_until, canceled";

fn count(row: &PgRow, index: usize) -> Result<u64, StoreError> {
    let value: i64 = col(row, index)?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("broadcast count {value}")))
}

fn broadcast(row: &PgRow) -> Result<Broadcast, StoreError> {
    let status: String = col(row, 3)?;
    let Json(request): Json<Value> = col(row, 4)?;
    Ok(Broadcast {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        mode: convert::mode(row, 2)?,
        status: status.parse().map_err(StoreError::Corrupt)?,
        request,
        counts: BroadcastCounts {
            requested: count(row, 5)?,
            queued: count(row, 6)?,
            duplicates: count(row, 7)?,
            invalid: count(row, 8)?,
            opted_out: count(row, 9)?,
            no_consent: count(row, 10)?,
            not_permitted: count(row, 11)?,
            not_sent: count(row, 12)?,
        },
        error: col(row, 13)?,
        created_at: convert::timestamp(row, 14)?,
        finished_at: convert::opt_timestamp(row, 15)?,
        spec: col::<Option<Json<Value>>>(row, 16)?.map(|Json(v)| v),
        api_key_id: col(row, 17)?,
        position: col::<Option<Json<Value>>>(row, 18)?.map(|Json(v)| v),
        lease: match (
            col::<Option<Uuid>>(row, 19)?,
            convert::opt_timestamp(row, 20)?,
        ) {
            (Some(owner), Some(until)) => Some(Lease { owner, until }),
            _ => None,
        },
        canceled: count(row, 21)?,
    })
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Insert a broadcast's messages in the caller's transaction, reserving credits all or none.
pub(crate) async fn insert_batch(
    tx: &mut PgConnection,
    batch: &[NewMessage],
) -> Result<Result<(), CreditRefusal>, StoreError> {
    let Some(first) = batch.first() else {
        return Ok(Ok(()));
    };
    let month = month_of(first.created_at);
    let metered = credits::load_metered(tx, &[first.scope.org_id], &month).await?;
    if metered.is_empty() {
        messages::insert_bulk(tx, batch, None).await?;
        return Ok(Ok(()));
    }
    let mut ledger = Ledger::new(metered);
    match messages::insert_bulk(tx, batch, Some(&mut ledger)).await {
        Ok(()) => {}
        Err(StoreError::Refused(refusal)) => return Ok(Err(refusal)),
        Err(e) => return Err(e),
    }
    credits::reserve(tx, &ledger.finish(), &month).await?;
    Ok(Ok(()))
}

/// Write the broadcast's state; with `owner`, only while it is `resolving` and held by that
/// owner. Answers whether the row was written.
async fn write_state(
    tx: &mut PgConnection,
    b: &Broadcast,
    owner: Option<Uuid>,
) -> Result<bool, StoreError> {
    let c = &b.counts;
    let written = sqlx::query(
        "UPDATE broadcasts SET status = $1, requested = $2, queued = $3, duplicates = $4,
             invalid = $5, opted_out = $6, no_consent = $7, not_permitted = $8, not_sent = $9,
             error = $10, finished_at = $11, position = $12, owner = $13, lease_until = $14
         WHERE id = $15 AND org_id = $16
           AND ($17::uuid IS NULL OR (status = 'resolving' AND owner = $17))",
    )
    .bind(b.status.as_str())
    .bind(signed(c.requested))
    .bind(signed(c.queued))
    .bind(signed(c.duplicates))
    .bind(signed(c.invalid))
    .bind(signed(c.opted_out))
    .bind(signed(c.no_consent))
    .bind(signed(c.not_permitted))
    .bind(signed(c.not_sent))
    .bind(&b.error)
    .bind(b.finished_at.map(ts))
    .bind(b.position.as_ref().map(Json))
    .bind(b.lease.map(|l| l.owner))
    .bind(b.lease.map(|l| ts(l.until)))
    .bind(b.id)
    .bind(b.org_id)
    .bind(owner)
    .execute(&mut *tx)
    .await
    .ctx("failed to update a broadcast")?;
    Ok(written.rows_affected() == 1)
}

/// Record that the broadcast reached `phones`.
async fn record_reached(
    tx: &mut PgConnection,
    broadcast_id: Uuid,
    phones: &[String],
) -> Result<(), StoreError> {
    if phones.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO broadcast_recipients (broadcast_id, phone)
         SELECT $1, phone FROM unnest($2::text[]) AS u(phone)
         ON CONFLICT DO NOTHING",
    )
    .bind(broadcast_id)
    .bind(phones)
    .execute(&mut *tx)
    .await
    .ctx("failed to record broadcast recipients")?;
    Ok(())
}

/// Cancel up to `limit` of the broadcast's messages that are not yet handed to a provider,
/// after `after` in id order; answers how many were canceled and the last id looked at.
async fn cancel_some(
    tx: &mut PgConnection,
    org_id: Uuid,
    broadcast_id: Uuid,
    after: Option<Uuid>,
    limit: u32,
    now: Timestamp,
) -> Result<(u64, Option<Uuid>), StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM messages
         WHERE org_id = $1 AND broadcast_id = $2 AND status IN ('queued', 'scheduled')
           AND id > coalesce($3::uuid, '00000000-0000-0000-0000-000000000000')
         ORDER BY id LIMIT $4",
    )
    .bind(org_id)
    .bind(broadcast_id)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .ctx("failed to read a broadcast's messages")?;
    let last = ids.last().copied();
    let mut batch = Batch::new(crate::queue::load_states(tx, &ids).await?, now);
    let canceled = ids
        .iter()
        .filter(|id| matches!(batch.apply_cancel(**id), Some(Ok(()))))
        .count() as u64;
    crate::queue::write_batch(tx, batch).await?;
    sqlx::query("UPDATE broadcasts SET canceled = canceled + $1 WHERE id = $2")
        .bind(signed(canceled))
        .bind(broadcast_id)
        .execute(&mut *tx)
        .await
        .ctx("failed to count canceled messages")?;
    Ok((canceled, last))
}

#[async_trait]
impl BroadcastStore for PostgresStore {
    async fn create_broadcast(
        &self,
        b: &Broadcast,
        batch: &[NewMessage],
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<BroadcastCreation, StoreError> {
        let mut tx = self.begin().await?;
        // Taking the key first makes a concurrent retry wait for this transaction.
        if let Some(record) = idempotency {
            match messages::take_key(&mut tx, b.scope(), b.id, record, now).await? {
                None => {}
                Some(Insertion::Replayed {
                    message_id,
                    response,
                }) => {
                    return Ok(BroadcastCreation::Replayed {
                        id: message_id,
                        response,
                    });
                }
                Some(_) => return Ok(BroadcastCreation::KeyReused),
            }
        }
        sqlx::query(
            "INSERT INTO broadcasts (id, org_id, mode, status, request, created_at, spec,
                 api_key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(b.id)
        .bind(b.org_id)
        .bind(b.mode.as_str())
        .bind(b.status.as_str())
        .bind(Json(&b.request))
        .bind(ts(b.created_at))
        .bind(b.spec.as_ref().map(Json))
        .bind(b.api_key_id)
        .execute(&mut *tx)
        .await
        .ctx("failed to store a broadcast")?;
        write_state(&mut tx, b, None).await?;
        if let Err(refusal) = insert_batch(&mut tx, batch).await? {
            // Dropping the transaction rolls back the broadcast row and the key too.
            return Ok(BroadcastCreation::Refused(refusal));
        }
        tx.commit().await.ctx("failed to commit a broadcast")?;
        Ok(BroadcastCreation::Created)
    }

    async fn queue_broadcast_batch(
        &self,
        b: &Broadcast,
        batch: &[NewMessage],
        reached: &[String],
    ) -> Result<BatchOutcome, StoreError> {
        let Some(lease) = b.lease else {
            return Ok(BatchOutcome::Lost);
        };
        let mut tx = self.begin().await?;
        // The state first: it locks the row, so a cancellation waits for this batch or refuses
        // it, and a broadcast no longer held writes nothing else either.
        if !write_state(&mut tx, b, Some(lease.owner)).await? {
            return Ok(BatchOutcome::Lost);
        }
        if let Err(refusal) = insert_batch(&mut tx, batch).await? {
            return Ok(BatchOutcome::Refused(refusal));
        }
        record_reached(&mut tx, b.id, reached).await?;
        tx.commit()
            .await
            .ctx("failed to commit a broadcast batch")?;
        Ok(BatchOutcome::Stored)
    }

    async fn get_broadcast(&self, scope: Scope, id: Uuid) -> Result<Option<Broadcast>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM broadcasts WHERE id = $1 AND org_id = $2 AND mode = $3"
        )))
        .bind(id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_optional(&self.pool)
        .await
        .ctx("failed to read a broadcast")?;
        row.as_ref().map(broadcast).transpose()
    }

    async fn list_broadcasts(
        &self,
        scope: Scope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Broadcast>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM broadcasts WHERE org_id = $1 AND mode = $2
             AND id < coalesce($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff') ORDER BY id DESC LIMIT $4"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to list broadcasts")?;
        let items = rows.iter().map(broadcast).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |b| b.id))
    }

    async fn reached_before(
        &self,
        broadcast_id: Uuid,
        phones: &[String],
    ) -> Result<Vec<String>, StoreError> {
        if phones.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<String> = sqlx::query_scalar(
            // One probe of the key per number: a join or '= ANY' may be planned as a scan of
            // every number the broadcast reached.
            "SELECT r.phone FROM unnest($2::text[]) AS w (wanted)
             CROSS JOIN LATERAL (SELECT phone FROM broadcast_recipients
                 WHERE broadcast_id = $1 AND phone = w.wanted LIMIT 1) r",
        )
        .bind(broadcast_id)
        .bind(phones)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read broadcast recipients")?;
        let reached: std::collections::HashSet<String> = found.into_iter().collect();
        Ok(phones
            .iter()
            .filter(|p| reached.contains(p.as_str()))
            .cloned()
            .collect())
    }

    async fn stalled_broadcasts(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM broadcasts
             WHERE status = 'resolving' AND (lease_until IS NULL OR lease_until <= $1)
             ORDER BY created_at LIMIT $2",
        )
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("failed to find stalled broadcasts")
    }

    async fn take_over_broadcast(
        &self,
        id: Uuid,
        lease: Lease,
        now: Timestamp,
    ) -> Result<Option<Broadcast>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE broadcasts SET owner = $1, lease_until = $2
             WHERE id = $3 AND status = 'resolving' AND (lease_until IS NULL OR lease_until <= $4)
             RETURNING {COLUMNS}"
        )))
        .bind(lease.owner)
        .bind(ts(lease.until))
        .bind(id)
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await
        .ctx("failed to take over a broadcast")?;
        row.as_ref().map(broadcast).transpose()
    }

    async fn cancel_broadcast(
        &self,
        scope: Scope,
        id: Uuid,
        now: Timestamp,
    ) -> Result<Result<Broadcast, BroadcastCancelRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        // Locking the row waits for a batch being stored; the resolver's next batch then finds
        // the broadcast canceled and stops.
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM broadcasts WHERE id = $1 AND org_id = $2 AND mode = $3
             FOR UPDATE",
        )
        .bind(id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_optional(&mut *tx)
        .await
        .ctx("failed to read the broadcast to cancel")?;
        let Some(status) = status else {
            return Ok(Err(BroadcastCancelRefusal::NotFound));
        };
        let status: BroadcastStatus = status.parse().map_err(StoreError::Corrupt)?;
        if matches!(status, BroadcastStatus::Canceled | BroadcastStatus::Failed) {
            return Ok(Err(BroadcastCancelRefusal::Final(status)));
        }
        sqlx::query(
            "UPDATE broadcasts SET status = 'canceled', finished_at = $1, owner = NULL,
                 lease_until = NULL
             WHERE id = $2",
        )
        .bind(ts(now))
        .bind(id)
        .execute(&mut *tx)
        .await
        .ctx("failed to cancel a broadcast")?;
        tx.commit()
            .await
            .ctx("failed to commit a broadcast cancellation")?;
        // The messages in short transactions, so sending goes on meanwhile.
        let mut after = None;
        loop {
            let mut tx = self.begin().await?;
            let (_, last) = cancel_some(&mut tx, scope.org_id, id, after, 500, now).await?;
            tx.commit()
                .await
                .ctx("failed to commit canceled messages")?;
            match last {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        self.get_broadcast(scope, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("canceled broadcast vanished".into()))
            .map(Ok)
    }
}
