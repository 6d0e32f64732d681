//! Broadcasts on SQLite: the broadcast row, its batches of messages (stored with the counts
//! that include them, in one transaction) and the numbers it already reached.

use async_trait::async_trait;
use herald_store::*;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use crate::SqliteStore;
use crate::convert::{self, Ctx, micros};
use crate::{bulk, credits, messages};

/// Columns read into a [`Broadcast`], in the order [`broadcast`] expects.
const COLUMNS: &str = "id, org_id, mode, status, request, requested, queued, duplicates, invalid, \
     opted_out, no_consent, not_permitted, not_sent, error, created_at, finished_at, spec, \
     api_key_id, position, owner, lease_until, canceled";

fn count(row: &SqliteRow, index: usize) -> Result<u64, StoreError> {
    let value: i64 = row.get(index);
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("broadcast count {value}")))
}

fn broadcast(row: &SqliteRow) -> Result<Broadcast, StoreError> {
    let status: String = row.get(3);
    let request: String = row.get(4);
    Ok(Broadcast {
        id: row.get(0),
        org_id: row.get(1),
        mode: convert::mode(row.get(2))?,
        status: status.parse().map_err(StoreError::Corrupt)?,
        request: serde_json::from_str(&request)
            .map_err(|e| StoreError::Corrupt(format!("broadcast request: {e}")))?,
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
        error: row.get(13),
        created_at: convert::timestamp(row.get(14))?,
        finished_at: convert::opt_timestamp(row.get(15))?,
        spec: json(row.get(16))?,
        api_key_id: row.get(17),
        position: json(row.get(18))?,
        lease: match (
            row.get::<Option<Uuid>, _>(19),
            row.get::<Option<i64>, _>(20),
        ) {
            (Some(owner), Some(until)) => Some(Lease {
                owner,
                until: convert::timestamp(until)?,
            }),
            _ => None,
        },
        canceled: count(row, 21)?,
    })
}

fn json(text: Option<String>) -> Result<Option<serde_json::Value>, StoreError> {
    text.map(|text| {
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("broadcast: {e}")))
    })
    .transpose()
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Insert a broadcast's messages in the caller's transaction, reserving credits all or none.
pub(crate) async fn insert_batch(
    tx: &mut SqliteConnection,
    batch: &[NewMessage],
) -> Result<Result<(), CreditRefusal>, StoreError> {
    let Some(first) = batch.first() else {
        return Ok(Ok(()));
    };
    let month = month_of(first.created_at);
    let metered = credits::load_metered(tx, &[first.scope.org_id], &month).await?;
    if metered.is_empty() {
        messages::insert_many(tx, batch, None).await?;
        return Ok(Ok(()));
    }
    let mut ledger = Ledger::new(metered);
    match messages::insert_many(tx, batch, Some(&mut ledger)).await {
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
    tx: &mut SqliteConnection,
    b: &Broadcast,
    owner: Option<Uuid>,
) -> Result<bool, StoreError> {
    let c = &b.counts;
    let written = sqlx::query(
        "UPDATE broadcasts SET status = ?1, requested = ?2, queued = ?3, duplicates = ?4,
             invalid = ?5, opted_out = ?6, no_consent = ?7, not_permitted = ?8, not_sent = ?9,
             error = ?10, finished_at = ?11, position = ?12, owner = ?13, lease_until = ?14
         WHERE id = ?15 AND org_id = ?16
           AND (?17 IS NULL OR (status = 'resolving' AND owner = ?17))",
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
    .bind(b.finished_at.map(micros))
    .bind(b.position.as_ref().map(|p| p.to_string()))
    .bind(b.lease.map(|l| l.owner))
    .bind(b.lease.map(|l| micros(l.until)))
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
    tx: &mut SqliteConnection,
    broadcast_id: Uuid,
    phones: &[String],
) -> Result<(), StoreError> {
    for range in bulk::chunks(phones.len()) {
        let mut query =
            QueryBuilder::<Sqlite>::new("INSERT INTO broadcast_recipients (broadcast_id, phone) ");
        query.push_values(&phones[range], |mut row, phone| {
            row.push_bind(broadcast_id).push_bind(phone.clone());
        });
        query.push(" ON CONFLICT DO NOTHING");
        query
            .build()
            .execute(&mut *tx)
            .await
            .ctx("failed to record broadcast recipients")?;
    }
    Ok(())
}

/// Cancel up to `limit` of the broadcast's messages that are not yet handed to a provider,
/// after `after` in id order; answers how many were canceled and the last id looked at.
async fn cancel_some(
    tx: &mut SqliteConnection,
    org_id: Uuid,
    broadcast_id: Uuid,
    after: Option<Uuid>,
    limit: u32,
    now: Timestamp,
) -> Result<(u64, Option<Uuid>), StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM messages
         WHERE org_id = ?1 AND broadcast_id = ?2 AND status IN ('queued', 'scheduled')
           AND id > coalesce(?3, x'')
         ORDER BY id LIMIT ?4",
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
    sqlx::query("UPDATE broadcasts SET canceled = canceled + ?1 WHERE id = ?2")
        .bind(signed(canceled))
        .bind(broadcast_id)
        .execute(&mut *tx)
        .await
        .ctx("failed to count canceled messages")?;
    Ok((canceled, last))
}

#[async_trait]
impl BroadcastStore for SqliteStore {
    async fn create_broadcast(
        &self,
        b: &Broadcast,
        batch: &[NewMessage],
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<BroadcastCreation, StoreError> {
        let mut tx = self.write().await?;
        if let Some(record) = idempotency
            && let Some(previous) = messages::check_key(&mut tx, b.scope(), record, now).await?
        {
            return Ok(match previous {
                Insertion::Replayed {
                    message_id,
                    response,
                } => BroadcastCreation::Replayed {
                    id: message_id,
                    response,
                },
                _ => BroadcastCreation::KeyReused,
            });
        }
        sqlx::query(
            "INSERT INTO broadcasts (id, org_id, mode, status, request, created_at, spec,
                 api_key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(b.id)
        .bind(b.org_id)
        .bind(b.mode.as_str())
        .bind(b.status.as_str())
        .bind(b.request.to_string())
        .bind(micros(b.created_at))
        .bind(b.spec.as_ref().map(|s| s.to_string()))
        .bind(b.api_key_id)
        .execute(&mut *tx)
        .await
        .ctx("failed to store a broadcast")?;
        write_state(&mut tx, b, None).await?;
        if let Err(refusal) = insert_batch(&mut tx, batch).await? {
            // Dropping the transaction rolls back the broadcast row too.
            return Ok(BroadcastCreation::Refused(refusal));
        }
        if let Some(record) = idempotency {
            messages::store_key(&mut tx, b.scope(), b.id, record, now).await?;
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
        let mut tx = self.write().await?;
        // The state first: a broadcast no longer held writes nothing else either.
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
            "SELECT {COLUMNS} FROM broadcasts WHERE id = ?1 AND org_id = ?2 AND mode = ?3"
        )))
        .bind(id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_optional(&self.reader)
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
            "SELECT {COLUMNS} FROM broadcasts WHERE org_id = ?1 AND mode = ?2
             AND id < coalesce(?3, x'ffffffffffffffffffffffffffffffff') ORDER BY id DESC LIMIT ?4"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
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
        let mut reached = std::collections::HashSet::new();
        for range in bulk::chunks(phones.len()) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT phone FROM broadcast_recipients WHERE broadcast_id = ",
            );
            query.push_bind(broadcast_id).push(" AND phone IN (");
            let mut list = query.separated(", ");
            for phone in &phones[range] {
                list.push_bind(phone.clone());
            }
            query.push(")");
            let found: Vec<String> = query
                .build_query_scalar()
                .fetch_all(&self.reader)
                .await
                .ctx("failed to read broadcast recipients")?;
            reached.extend(found);
        }
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
             WHERE status = 'resolving' AND (lease_until IS NULL OR lease_until <= ?1)
             ORDER BY created_at LIMIT ?2",
        )
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .ctx("failed to find stalled broadcasts")
    }

    async fn take_over_broadcast(
        &self,
        id: Uuid,
        lease: Lease,
        now: Timestamp,
    ) -> Result<Option<Broadcast>, StoreError> {
        let mut tx = self.write().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE broadcasts SET owner = ?1, lease_until = ?2
             WHERE id = ?3 AND status = 'resolving' AND (lease_until IS NULL OR lease_until <= ?4)
             RETURNING {COLUMNS}"
        )))
        .bind(lease.owner)
        .bind(micros(lease.until))
        .bind(id)
        .bind(micros(now))
        .fetch_optional(&mut *tx)
        .await
        .ctx("failed to take over a broadcast")?;
        let taken = row.as_ref().map(broadcast).transpose()?;
        tx.commit()
            .await
            .ctx("failed to commit a broadcast take-over")?;
        Ok(taken)
    }

    async fn cancel_broadcast(
        &self,
        scope: Scope,
        id: Uuid,
        now: Timestamp,
    ) -> Result<Result<Broadcast, BroadcastCancelRefusal>, StoreError> {
        let mut tx = self.write().await?;
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM broadcasts WHERE id = ?1 AND org_id = ?2 AND mode = ?3",
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
        // From here no resolver can queue another batch: each checks the status as it writes.
        sqlx::query(
            "UPDATE broadcasts SET status = 'canceled', finished_at = ?1, owner = NULL,
                 lease_until = NULL
             WHERE id = ?2",
        )
        .bind(micros(now))
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
            let mut tx = self.write().await?;
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
