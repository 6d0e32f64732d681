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
     opted_out, no_consent, not_permitted, not_sent, error, created_at, finished_at";

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
    })
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Insert a broadcast's messages in the caller's transaction, reserving credits all or none.
async fn insert_batch(
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

async fn write_state(tx: &mut SqliteConnection, b: &Broadcast) -> Result<(), StoreError> {
    let c = &b.counts;
    sqlx::query(
        "UPDATE broadcasts SET status = ?1, requested = ?2, queued = ?3, duplicates = ?4,
             invalid = ?5, opted_out = ?6, no_consent = ?7, not_permitted = ?8, not_sent = ?9,
             error = ?10, finished_at = ?11
         WHERE id = ?12 AND org_id = ?13",
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
    .bind(b.id)
    .bind(b.org_id)
    .execute(&mut *tx)
    .await
    .ctx("failed to update a broadcast")?;
    Ok(())
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
            "INSERT INTO broadcasts (id, org_id, mode, status, request, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(b.id)
        .bind(b.org_id)
        .bind(b.mode.as_str())
        .bind(b.status.as_str())
        .bind(b.request.to_string())
        .bind(micros(b.created_at))
        .execute(&mut *tx)
        .await
        .ctx("failed to store a broadcast")?;
        write_state(&mut tx, b).await?;
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
    ) -> Result<Result<(), CreditRefusal>, StoreError> {
        let mut tx = self.write().await?;
        if let Err(refusal) = insert_batch(&mut tx, batch).await? {
            return Ok(Err(refusal));
        }
        write_state(&mut tx, b).await?;
        tx.commit()
            .await
            .ctx("failed to commit a broadcast batch")?;
        Ok(Ok(()))
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
             AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4"
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

    async fn claim_broadcast_recipients(
        &self,
        broadcast_id: Uuid,
        phones: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write().await?;
        let mut fresh = std::collections::HashSet::new();
        for range in bulk::chunks(phones.len()) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO broadcast_recipients (broadcast_id, phone) ",
            );
            query.push_values(&phones[range], |mut row, phone| {
                row.push_bind(broadcast_id).push_bind(phone.clone());
            });
            query.push(" ON CONFLICT DO NOTHING RETURNING phone");
            let inserted: Vec<String> = query
                .build_query_scalar()
                .fetch_all(&mut *tx)
                .await
                .ctx("failed to record broadcast recipients")?;
            fresh.extend(inserted);
        }
        tx.commit()
            .await
            .ctx("failed to commit broadcast recipients")?;
        Ok(phones
            .iter()
            .filter(|p| fresh.contains(p.as_str()))
            .cloned()
            .collect())
    }
}
