//! The dispatcher's queue: releasing scheduled messages, claiming with leases, recording
//! results and provider reports, and reconciling messages whose dispatcher died.
//!
//! Bulk moves whose precondition is a plain status (release, claim, lease expiry) are single
//! `UPDATE … RETURNING` statements whose `WHERE status = …` is exactly the status machine's
//! precondition. Changes that depend on what the provider said go through [`Batch`], the same
//! rules the PostgreSQL store uses; here the rows are then written one by one, which costs
//! nothing in-process.

use herald_domain::status::MessageStatus;
use herald_store::{
    Batch, Claimed, NewEvent, ProviderReport, QueueState, ReportOutcome, Scope, SendResult,
    Settlement, StoreError, Unsettled,
};
use jiff::Timestamp;
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::bulk;
use crate::convert::{self, Ctx, micros};

pub(crate) async fn release_due(
    tx: &mut SqliteConnection,
    now: Timestamp,
    limit: u32,
) -> Result<u64, StoreError> {
    let rows = sqlx::query(
        "UPDATE messages SET status = 'queued', last_seq = last_seq + 1, updated_at = ?1
         WHERE id IN (SELECT id FROM messages WHERE status = 'scheduled' AND due_at <= ?1
                      ORDER BY due_at LIMIT ?2)
         RETURNING id, org_id, last_seq",
    )
    .bind(micros(now))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .ctx("failed to release scheduled messages")?;
    let events = rows
        .iter()
        .map(|row| bulk_event(row, MessageStatus::Queued, now, None))
        .collect::<Result<Vec<_>, _>>()?;
    bulk::insert_events(tx, &events).await?;
    Ok(rows.len() as u64)
}

pub(crate) async fn next_scheduled_at(pool: &SqlitePool) -> Result<Option<Timestamp>, StoreError> {
    let due: Option<i64> =
        sqlx::query_scalar("SELECT min(due_at) FROM messages WHERE status = 'scheduled'")
            .fetch_one(pool)
            .await
            .ctx("failed to find the next scheduled message")?;
    convert::opt_timestamp(due)
}

pub(crate) async fn claim(
    tx: &mut SqliteConnection,
    now: Timestamp,
    lease_until: Timestamp,
    limit: u32,
) -> Result<Vec<Claimed>, StoreError> {
    let rows = sqlx::query(
        "UPDATE messages
         SET status = 'sending', attempts = attempts + 1, lease_expires_at = ?1,
             last_seq = last_seq + 1, updated_at = ?2
         WHERE id IN (SELECT id FROM messages WHERE status = 'queued' AND due_at <= ?2
                      ORDER BY priority DESC, due_at LIMIT ?3)
         RETURNING id, org_id, mode, recipient, country, sender, body, encoding, segments, kind,
                   attempts, max_attempts, last_seq, campaign_run_id",
    )
    .bind(micros(lease_until))
    .bind(micros(now))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .ctx("failed to claim messages")?;
    let mut claimed = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        events.push(NewEvent {
            message_id: row.get(0),
            org_id: row.get(1),
            seq: convert::count(row.get(12))?,
            status: MessageStatus::Sending,
            at: now,
            error_code: None,
            error_message: None,
        });
        claimed.push(Claimed {
            id: row.get(0),
            scope: Scope {
                org_id: row.get(1),
                mode: convert::mode(row.get(2))?,
            },
            to: row.get(3),
            country: convert::opt_region(row.get(4))?,
            sender: row.get(5),
            body: row.get(6),
            encoding: convert::encoding(row.get(7))?,
            segments: convert::count(row.get(8))?,
            kind: convert::kind(row.get(9))?,
            attempt: convert::count(row.get(10))?,
            max_attempts: convert::count(row.get(11))?,
            lease_expires_at: lease_until,
            campaign_run_id: row.get(13),
        });
    }
    bulk::insert_events(tx, &events).await?;
    Ok(claimed)
}

pub(crate) async fn record(
    tx: &mut SqliteConnection,
    results: &[SendResult],
    reports: &[ProviderReport],
    now: Timestamp,
) -> Result<Vec<ReportOutcome>, StoreError> {
    let mut resolved = Vec::with_capacity(reports.len());
    for report in reports {
        let id = match report.message_id {
            Some(id) => Some(id),
            None => sqlx::query_scalar(
                "SELECT id FROM messages WHERE provider_message_id = ?1 AND provider = ?2",
            )
            .bind(&report.provider_message_id)
            .bind(&report.provider)
            .fetch_optional(&mut *tx)
            .await
            .ctx("failed to find a reported message")?,
        };
        resolved.push(id);
    }
    let mut ids: Vec<Uuid> = results.iter().map(|r| r.id).collect();
    ids.extend(resolved.iter().flatten());
    ids.sort_unstable();
    ids.dedup();
    let mut batch = Batch::new(load_states(tx, &ids).await?, now);
    for result in results {
        batch.apply_result(result);
    }
    let outcomes = reports
        .iter()
        .zip(resolved)
        .map(|(report, id)| {
            let id = id.or_else(|| {
                batch.find_by_provider_id(&report.provider, &report.provider_message_id)
            });
            match id {
                Some(id) => batch.apply_report(id, report),
                None => ReportOutcome::NotFound,
            }
        })
        .collect();
    write_batch(tx, batch).await?;
    Ok(outcomes)
}

pub(crate) async fn expire_leases(
    tx: &mut SqliteConnection,
    now: Timestamp,
    limit: u32,
) -> Result<u64, StoreError> {
    const CODE: &str = "lease_expired";
    const REASON: &str = "the dispatcher stopped before recording the provider's answer";
    let rows = sqlx::query(
        "UPDATE messages
         SET status = 'unknown', due_at = ?1, lease_expires_at = NULL, last_seq = last_seq + 1,
             updated_at = ?1, error_code = ?3, error_message = ?4
         WHERE id IN (SELECT id FROM messages WHERE status = 'sending' AND lease_expires_at < ?1
                      ORDER BY lease_expires_at LIMIT ?2)
         RETURNING id, org_id, last_seq",
    )
    .bind(micros(now))
    .bind(i64::from(limit))
    .bind(CODE)
    .bind(REASON)
    .fetch_all(&mut *tx)
    .await
    .ctx("failed to expire leases")?;
    let error = Some((CODE, REASON));
    let events = rows
        .iter()
        .map(|row| bulk_event(row, MessageStatus::Unknown, now, error))
        .collect::<Result<Vec<_>, _>>()?;
    bulk::insert_events(tx, &events).await?;
    Ok(rows.len() as u64)
}

pub(crate) async fn unsettled(
    pool: &SqlitePool,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<Unsettled>, StoreError> {
    sqlx::query(
        "SELECT id, org_id, mode, provider, provider_message_id, recipient, attempts
         FROM messages WHERE status = 'unknown' AND due_at <= ?1 ORDER BY due_at LIMIT ?2",
    )
    .bind(micros(now))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .ctx("failed to list unknown messages")?
    .iter()
    .map(|row| {
        Ok(Unsettled {
            id: row.get(0),
            scope: Scope {
                org_id: row.get(1),
                mode: convert::mode(row.get(2))?,
            },
            provider: row.get(3),
            provider_message_id: row.get(4),
            to: row.get(5),
            attempt: convert::count(row.get(6))?,
        })
    })
    .collect()
}

pub(crate) async fn settle(
    tx: &mut SqliteConnection,
    settlements: &[(Uuid, Settlement)],
    now: Timestamp,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = settlements.iter().map(|(id, _)| *id).collect();
    let mut batch = Batch::new(load_states(tx, &ids).await?, now);
    for (id, settlement) in settlements {
        batch.apply_settlement(*id, settlement);
    }
    write_batch(tx, batch).await
}

/// Load what [`Batch`] needs to know about these messages.
pub(crate) async fn load_states(
    conn: &mut SqliteConnection,
    ids: &[Uuid],
) -> Result<Vec<QueueState>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT id, org_id, status, last_seq, attempts, provider, provider_message_id,
                error_code, error_message, actual_cost, due_at, lease_expires_at, credits,
                estimated_cost, created_at
         FROM messages WHERE id IN (SELECT unhex(value) FROM json_each(?1))",
    )
    .bind(bulk::id_list(ids))
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to read message states")?;
    rows.iter()
        .map(|row| {
            Ok(QueueState {
                id: row.get(0),
                org_id: row.get(1),
                status: convert::status(row.get(2))?,
                last_seq: convert::count(row.get(3))?,
                attempts: convert::count(row.get(4))?,
                provider: row.get(5),
                provider_message_id: row.get(6),
                error_code: row.get(7),
                error_message: row.get(8),
                actual_cost: row.get::<Option<i64>, _>(9).map(convert::amount),
                due_at: convert::timestamp(row.get(10))?,
                lease_expires_at: convert::opt_timestamp(row.get(11))?,
                credits: convert::count(row.get(12))?,
                estimated_cost: convert::amount(row.get(13)),
                created_at: convert::timestamp(row.get(14))?,
            })
        })
        .collect()
}

/// Write back what a [`Batch`] changed: the rows, then their new history entries.
pub(crate) async fn write_batch(
    conn: &mut SqliteConnection,
    batch: Batch,
) -> Result<(), StoreError> {
    let now = batch.now();
    let (states, events, credits) = batch.finish();
    bulk::write_states(conn, &states, now).await?;
    bulk::insert_events(conn, &events).await?;
    if !credits.is_empty() {
        crate::credits::settle(conn, &credits).await?;
    }
    Ok(())
}

/// The history entry for a row returned by a bulk move (`RETURNING id, org_id, last_seq`).
fn bulk_event(
    row: &sqlx::sqlite::SqliteRow,
    status: MessageStatus,
    at: Timestamp,
    error: Option<(&str, &str)>,
) -> Result<NewEvent, StoreError> {
    Ok(NewEvent {
        message_id: row.get(0),
        org_id: row.get(1),
        seq: convert::count(row.get(2))?,
        status,
        at,
        error_code: error.map(|(code, _)| code.to_owned()),
        error_message: error.map(|(_, message)| message.to_owned()),
    })
}
