//! The dispatcher's queue: releasing scheduled messages, claiming with leases, recording
//! results and provider reports, and reconciling messages whose dispatcher died.
//!
//! Many server processes share one database, so every move is written to be safe against the
//! others:
//!
//! - Bulk moves whose precondition is a plain status (release, claim, lease expiry) are one
//!   statement each: pick the rows with `FOR UPDATE SKIP LOCKED` (two claimers never wait on,
//!   let alone take, the same row) in a `MATERIALIZED` CTE (evaluated exactly once, so a
//!   rescan can never pick a different set), move them, and append their history entries in a
//!   data-modifying CTE.
//! - Changes that depend on what the provider said go through [`Batch`], the rules the SQLite
//!   store uses too: the rows are loaded and locked with one `SELECT … ORDER BY id FOR UPDATE`
//!   (the same lock order in every batch, so concurrent batches cannot deadlock), and written
//!   back with one statement over `unnest` arrays, however many rows the batch touched.

use herald_store::{
    Batch, Claimed, NewEvent, ProviderReport, QueueState, ReportOutcome, Scope, SendResult,
    Settlement, StoreError, Unsettled,
};
use jiff::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::convert::{self, Ctx, col, int, ts};

/// Why a lease expiry made a message `unknown`.
const LEASE_EXPIRED: &str = "lease_expired";
const LEASE_EXPIRED_REASON: &str = "the dispatcher stopped before recording the provider's answer";

pub(crate) async fn release_due(
    pool: &PgPool,
    now: Timestamp,
    limit: u32,
) -> Result<u64, StoreError> {
    let released: i64 = sqlx::query_scalar(
        "WITH due AS MATERIALIZED (
             SELECT id FROM messages WHERE status = 'scheduled' AND due_at <= $1
             ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED
         ), moved AS (
             UPDATE messages m SET status = 'queued', last_seq = m.last_seq + 1, updated_at = $1
             FROM due WHERE m.id = due.id
             RETURNING m.id, m.org_id, m.last_seq
         ), history AS (
             INSERT INTO message_events (message_id, org_id, seq, status, occurred_at)
             SELECT id, org_id, last_seq, 'queued', $1 FROM moved
         )
         SELECT count(*) FROM moved",
    )
    .bind(ts(now))
    .bind(i64::from(limit))
    .fetch_one(pool)
    .await
    .ctx("failed to release scheduled messages")?;
    Ok(released as u64)
}

pub(crate) async fn next_scheduled_at(pool: &PgPool) -> Result<Option<Timestamp>, StoreError> {
    let due: Option<jiff_sqlx::Timestamp> =
        sqlx::query_scalar("SELECT min(due_at) FROM messages WHERE status = 'scheduled'")
            .fetch_one(pool)
            .await
            .ctx("failed to find the next scheduled message")?;
    Ok(due.map(jiff_sqlx::Timestamp::to_jiff))
}

pub(crate) async fn claim(
    pool: &PgPool,
    now: Timestamp,
    lease_until: Timestamp,
    limit: u32,
) -> Result<Vec<Claimed>, StoreError> {
    let rows = sqlx::query(
        "WITH due AS MATERIALIZED (
             SELECT id FROM messages WHERE status = 'queued' AND due_at <= $2
             ORDER BY priority DESC, due_at LIMIT $3 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE messages m
             SET status = 'sending', attempts = m.attempts + 1, lease_expires_at = $1,
                 last_seq = m.last_seq + 1, updated_at = $2
             FROM due WHERE m.id = due.id
             RETURNING m.id, m.org_id, m.mode, m.recipient, m.country, m.sender, m.body,
                       m.encoding, m.segments, m.kind, m.attempts, m.max_attempts, m.last_seq,
                       m.priority, m.due_at, m.campaign_run_id
         ), history AS (
             INSERT INTO message_events (message_id, org_id, seq, status, occurred_at)
             SELECT id, org_id, last_seq, 'sending', $2 FROM claimed
         )
         SELECT id, org_id, mode, recipient, country, sender, body, encoding, segments, kind,
                attempts, max_attempts, campaign_run_id
         FROM claimed ORDER BY priority DESC, due_at, id",
    )
    .bind(ts(lease_until))
    .bind(ts(now))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .ctx("failed to claim messages")?;
    rows.iter()
        .map(|row| {
            Ok(Claimed {
                id: col(row, 0)?,
                scope: Scope {
                    org_id: col(row, 1)?,
                    mode: convert::mode(row, 2)?,
                },
                to: col(row, 3)?,
                country: convert::opt_region(row, 4)?,
                sender: col(row, 5)?,
                body: col(row, 6)?,
                encoding: convert::encoding(row, 7)?,
                segments: convert::count(row, 8)?,
                kind: convert::kind(row, 9)?,
                attempt: convert::count(row, 10)?,
                max_attempts: convert::count(row, 11)?,
                lease_expires_at: lease_until,
                campaign_run_id: col(row, 12)?,
            })
        })
        .collect()
}

pub(crate) async fn record(
    tx: &mut PgConnection,
    results: &[SendResult],
    reports: &[ProviderReport],
    now: Timestamp,
) -> Result<Vec<ReportOutcome>, StoreError> {
    let resolved = resolve_reports(tx, reports).await?;
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

/// The message each report is about: the id it carries, or else the message with its provider
/// and provider id, all looked up in one query. A provider id never changes once set, so the
/// answer stays true until the rows are locked.
async fn resolve_reports(
    conn: &mut PgConnection,
    reports: &[ProviderReport],
) -> Result<Vec<Option<Uuid>>, StoreError> {
    let mut ids: Vec<Option<Uuid>> = reports.iter().map(|r| r.message_id).collect();
    let unresolved: Vec<usize> = (0..reports.len()).filter(|&i| ids[i].is_none()).collect();
    if unresolved.is_empty() {
        return Ok(ids);
    }
    let providers: Vec<&str> = unresolved
        .iter()
        .map(|&i| reports[i].provider.as_str())
        .collect();
    let provider_ids: Vec<&str> = unresolved
        .iter()
        .map(|&i| reports[i].provider_message_id.as_str())
        .collect();
    let rows = sqlx::query(
        "SELECT DISTINCT ON (r.ord) r.ord, m.id
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r (provider, provider_message_id, ord)
         JOIN messages m
           ON m.provider_message_id = r.provider_message_id AND m.provider = r.provider
         ORDER BY r.ord, m.id",
    )
    .bind(&providers)
    .bind(&provider_ids)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to find reported messages")?;
    for row in &rows {
        // ORDINALITY counts from 1 over `unresolved`.
        let ord: i64 = col(row, 0)?;
        let slot = usize::try_from(ord - 1)
            .ok()
            .and_then(|at| unresolved.get(at))
            .ok_or_else(|| StoreError::Corrupt(format!("report ordinal out of range: {ord}")))?;
        ids[*slot] = Some(col(row, 1)?);
    }
    Ok(ids)
}

pub(crate) async fn expire_leases(
    pool: &PgPool,
    now: Timestamp,
    limit: u32,
) -> Result<u64, StoreError> {
    let expired: i64 = sqlx::query_scalar(
        "WITH due AS MATERIALIZED (
             SELECT id FROM messages WHERE status = 'sending' AND lease_expires_at < $1
             ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
         ), moved AS (
             UPDATE messages m
             SET status = 'unknown', due_at = $1, lease_expires_at = NULL,
                 last_seq = m.last_seq + 1, updated_at = $1, error_code = $3, error_message = $4
             FROM due WHERE m.id = due.id
             RETURNING m.id, m.org_id, m.last_seq
         ), history AS (
             INSERT INTO message_events
                 (message_id, org_id, seq, status, occurred_at, error_code, error_message)
             SELECT id, org_id, last_seq, 'unknown', $1, $3, $4 FROM moved
         )
         SELECT count(*) FROM moved",
    )
    .bind(ts(now))
    .bind(i64::from(limit))
    .bind(LEASE_EXPIRED)
    .bind(LEASE_EXPIRED_REASON)
    .fetch_one(pool)
    .await
    .ctx("failed to expire leases")?;
    Ok(expired as u64)
}

pub(crate) async fn unsettled(
    pool: &PgPool,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<Unsettled>, StoreError> {
    sqlx::query(
        "SELECT id, org_id, mode, provider, provider_message_id, recipient, attempts
         FROM messages WHERE status = 'unknown' AND due_at <= $1 ORDER BY due_at LIMIT $2",
    )
    .bind(ts(now))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .ctx("failed to list unknown messages")?
    .iter()
    .map(|row| {
        Ok(Unsettled {
            id: col(row, 0)?,
            scope: Scope {
                org_id: col(row, 1)?,
                mode: convert::mode(row, 2)?,
            },
            provider: col(row, 3)?,
            provider_message_id: col(row, 4)?,
            to: col(row, 5)?,
            attempt: convert::count(row, 6)?,
        })
    })
    .collect()
}

pub(crate) async fn settle(
    tx: &mut PgConnection,
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

/// Load and lock what [`Batch`] needs to know about these messages, in id order so that two
/// batches sharing messages take their locks in the same order and cannot deadlock.
pub(crate) async fn load_states(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<QueueState>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT id, org_id, status, last_seq, attempts, provider, provider_message_id,
                error_code, error_message, actual_cost, due_at, lease_expires_at, credits,
                estimated_cost, created_at
         FROM messages WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to read message states")?;
    rows.iter().map(queue_state).collect()
}

fn queue_state(row: &PgRow) -> Result<QueueState, StoreError> {
    Ok(QueueState {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        status: convert::status(row, 2)?,
        last_seq: convert::count(row, 3)?,
        attempts: convert::count(row, 4)?,
        provider: col(row, 5)?,
        provider_message_id: col(row, 6)?,
        error_code: col(row, 7)?,
        error_message: col(row, 8)?,
        actual_cost: convert::opt_amount(row, 9)?,
        due_at: convert::timestamp(row, 10)?,
        lease_expires_at: convert::opt_timestamp(row, 11)?,
        credits: convert::count(row, 12)?,
        estimated_cost: convert::amount(row, 13)?,
        created_at: convert::timestamp(row, 14)?,
    })
}

/// Write back what a [`Batch`] changed: every changed row and every new history entry, in one
/// statement whatever the batch's size.
pub(crate) async fn write_batch(conn: &mut PgConnection, batch: Batch) -> Result<(), StoreError> {
    let now = batch.now();
    let (states, events, credits) = batch.finish();
    if !credits.is_empty() {
        crate::credits::settle(conn, &credits).await?;
    }
    if states.is_empty() && events.is_empty() {
        return Ok(());
    }
    let rows = Columns::of_states(&states)?;
    let history = EventColumns::of(&events)?;
    sqlx::query(
        "WITH updated AS (
             UPDATE messages m
             SET status = u.status, last_seq = u.last_seq, attempts = u.attempts,
                 provider = u.provider, provider_message_id = u.provider_message_id,
                 error_code = u.error_code, error_message = u.error_message,
                 actual_cost = u.actual_cost, due_at = u.due_at,
                 lease_expires_at = u.lease_expires_at, updated_at = $12
             FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int4[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::int8[], $10::timestamptz[],
                         $11::timestamptz[])
                  AS u (id, status, last_seq, attempts, provider, provider_message_id,
                        error_code, error_message, actual_cost, due_at, lease_expires_at)
             WHERE m.id = u.id
         )
         INSERT INTO message_events
             (message_id, org_id, seq, status, occurred_at, error_code, error_message)
         SELECT * FROM unnest($13::uuid[], $14::uuid[], $15::int4[], $16::text[],
                              $17::timestamptz[], $18::text[], $19::text[])",
    )
    .bind(rows.id)
    .bind(rows.status)
    .bind(rows.last_seq)
    .bind(rows.attempts)
    .bind(rows.provider)
    .bind(rows.provider_message_id)
    .bind(rows.error_code)
    .bind(rows.error_message)
    .bind(rows.actual_cost)
    .bind(rows.due_at)
    .bind(rows.lease_expires_at)
    .bind(ts(now))
    .bind(history.message_id)
    .bind(history.org_id)
    .bind(history.seq)
    .bind(history.status)
    .bind(history.at)
    .bind(history.error_code)
    .bind(history.error_message)
    .execute(&mut *conn)
    .await
    .ctx("failed to write status changes")?;
    Ok(())
}

/// [`QueueState`]s as one array per column, for `unnest`.
struct Columns<'a> {
    id: Vec<Uuid>,
    status: Vec<&'static str>,
    last_seq: Vec<i32>,
    attempts: Vec<i32>,
    provider: Vec<Option<&'a str>>,
    provider_message_id: Vec<Option<&'a str>>,
    error_code: Vec<Option<&'a str>>,
    error_message: Vec<Option<&'a str>>,
    actual_cost: Vec<Option<i64>>,
    due_at: Vec<jiff_sqlx::Timestamp>,
    lease_expires_at: Vec<Option<jiff_sqlx::Timestamp>>,
}

impl<'a> Columns<'a> {
    fn of_states(states: &'a [QueueState]) -> Result<Columns<'a>, StoreError> {
        Ok(Columns {
            id: states.iter().map(|s| s.id).collect(),
            status: states.iter().map(|s| s.status.as_str()).collect(),
            last_seq: states
                .iter()
                .map(|s| int(s.last_seq))
                .collect::<Result<_, _>>()?,
            attempts: states
                .iter()
                .map(|s| int(s.attempts))
                .collect::<Result<_, _>>()?,
            provider: states.iter().map(|s| s.provider.as_deref()).collect(),
            provider_message_id: states
                .iter()
                .map(|s| s.provider_message_id.as_deref())
                .collect(),
            error_code: states.iter().map(|s| s.error_code.as_deref()).collect(),
            error_message: states.iter().map(|s| s.error_message.as_deref()).collect(),
            actual_cost: states
                .iter()
                .map(|s| s.actual_cost.map(|c| c.micros()))
                .collect(),
            due_at: states.iter().map(|s| ts(s.due_at)).collect(),
            lease_expires_at: states.iter().map(|s| s.lease_expires_at.map(ts)).collect(),
        })
    }
}

/// [`NewEvent`]s as one array per column, for `unnest`.
struct EventColumns<'a> {
    message_id: Vec<Uuid>,
    org_id: Vec<Uuid>,
    seq: Vec<i32>,
    status: Vec<&'static str>,
    at: Vec<jiff_sqlx::Timestamp>,
    error_code: Vec<Option<&'a str>>,
    error_message: Vec<Option<&'a str>>,
}

impl<'a> EventColumns<'a> {
    fn of(events: &'a [NewEvent]) -> Result<EventColumns<'a>, StoreError> {
        Ok(EventColumns {
            message_id: events.iter().map(|e| e.message_id).collect(),
            org_id: events.iter().map(|e| e.org_id).collect(),
            seq: events
                .iter()
                .map(|e| int(e.seq))
                .collect::<Result<_, _>>()?,
            status: events.iter().map(|e| e.status.as_str()).collect(),
            at: events.iter().map(|e| ts(e.at)).collect(),
            error_code: events.iter().map(|e| e.error_code.as_deref()).collect(),
            error_message: events.iter().map(|e| e.error_message.as_deref()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use herald_domain::status::MessageStatus;

    /// The statements above spell statuses as literals, so the planner can match them to the
    /// schema's partial indexes; they must be the names the rest of Herald uses.
    #[test]
    fn status_literals_match_the_domain() {
        for (status, literal) in [
            (MessageStatus::Scheduled, "scheduled"),
            (MessageStatus::Queued, "queued"),
            (MessageStatus::Sending, "sending"),
            (MessageStatus::Unknown, "unknown"),
        ] {
            assert_eq!(status.as_str(), literal);
        }
    }
}
