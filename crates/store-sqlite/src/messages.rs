//! Accepting, reading and cancelling messages, and the status-history rows every change writes.

use std::collections::HashMap;

use herald_store::{
    Batch, CancelRefusal, IdempotencyRecord, Insertion, Ledger, Message, MessageFilter, NewMessage,
    Page, Scope, StatusChange, StoreError, month_of, suppressed_on_arrival, suppression_on_arrival,
};
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use crate::bulk;
use crate::convert::{self, Ctx, micros};
use crate::credits;
use crate::queue::{load_states, write_batch};

/// Columns read into a [`Message`], in the order [`message`] expects.
macro_rules! message_columns {
    () => {
        "id, org_id, mode, api_key_id, recipient, country, sender, body, encoding, segments, kind, \
         priority, status, provider, provider_message_id, error_code, error_message, \
         estimated_cost, actual_cost, currency, attempts, max_attempts, send_at, created_at, \
         updated_at, broadcast_id"
    };
}

/// Store the messages of a batch of requests in the caller's transaction, in order: each request
/// is checked against its idempotency key, its organization's credits and the suppression list
/// on its own, so one refused request leaves the others alone. A message to a number that opted
/// out is stored `suppressed`, never queued, and reserves nothing.
pub(crate) async fn accept(
    tx: &mut SqliteConnection,
    items: &[(NewMessage, Option<IdempotencyRecord>)],
    now: Timestamp,
) -> Result<Vec<Insertion>, StoreError> {
    let month = month_of(now);
    let messages: Vec<&NewMessage> = items.iter().map(|(message, _)| message).collect();
    let mut orgs: Vec<Uuid> = messages.iter().map(|m| m.scope.org_id).collect();
    orgs.sort_unstable();
    orgs.dedup();
    let mut ledger = Ledger::new(credits::load_metered(tx, &orgs, &month).await?);
    let opted_out = credits::opted_out(tx, &messages).await?;

    let mut insertions = Vec::with_capacity(items.len());
    let mut suppressed = Vec::new();
    for (message, idempotency) in items {
        if let Some(record) = idempotency
            && let Some(previous) = check_key(tx, message.scope, record, now).await?
        {
            insertions.push(previous);
            continue;
        }
        let is_suppressed = !opted_out.is_empty()
            && opted_out.contains(&(message.scope.org_id, message.to.clone()));
        let credits = match ledger.reserve(&[message], |_| is_suppressed) {
            Ok(credits) => credits,
            Err(refusal) => {
                insertions.push(Insertion::Refused(refusal));
                continue;
            }
        };
        bulk::insert_messages(tx, std::slice::from_ref(message), &credits).await?;
        if let Some(record) = idempotency {
            // Suppressed on arrival, the caller is answered with the stored record, not the
            // response rendered before storing: keep no response, so a replay renders the
            // record too.
            let emptied;
            let record = if is_suppressed {
                emptied = IdempotencyRecord {
                    response: Vec::new(),
                    ..record.clone()
                };
                &emptied
            } else {
                record
            };
            store_key(tx, message.scope, message.id, record, now).await?;
        }
        if is_suppressed {
            suppressed.push(insertions.len());
        }
        // The row is exactly what was asked for (the conformance suite holds both backends to
        // it), so there is nothing to read back.
        insertions.push(Insertion::Created(Box::new(message.initial_record())));
    }
    if !suppressed.is_empty() {
        suppress_on_arrival(tx, &mut insertions, &suppressed, now).await?;
    }
    if !ledger.is_empty() {
        credits::reserve(tx, &ledger.finish(), &month).await?;
    }
    Ok(insertions)
}

/// Insert prepared messages without idempotency keys (broadcasts, campaigns, benchmarks). Those
/// to numbers that opted out are stored `suppressed`; with a `ledger` (some organization of the
/// call is metered) the others reserve credits, all of them or, refused, none.
pub(crate) async fn insert_many(
    tx: &mut SqliteConnection,
    messages: &[NewMessage],
    ledger: Option<&mut Ledger>,
) -> Result<(), StoreError> {
    let refs: Vec<&NewMessage> = messages.iter().collect();
    let opted_out = credits::opted_out(tx, &refs).await?;
    let skip = |m: &NewMessage| {
        !opted_out.is_empty() && opted_out.contains(&(m.scope.org_id, m.to.clone()))
    };
    let credits = match ledger {
        Some(ledger) => ledger.reserve(&refs, skip).map_err(StoreError::Refused)?,
        None => Vec::new(),
    };
    bulk::insert_messages(tx, messages, &credits).await?;
    if opted_out.is_empty() {
        return Ok(());
    }
    let suppressed: Vec<&NewMessage> = refs.into_iter().filter(|m| skip(m)).collect();
    let ids: Vec<Uuid> = suppressed.iter().map(|m| m.id).collect();
    // The store never reads the clock: the suppression happens as the messages are created.
    let at = suppressed.iter().map(|m| m.created_at).max();
    let mut batch = Batch::new(load_states(tx, &ids).await?, at.unwrap_or_default());
    for id in ids {
        batch.apply_result(&suppression_on_arrival(id));
    }
    write_batch(tx, batch).await
}

/// Suppress the just-inserted messages at `positions` of `insertions`.
async fn suppress_on_arrival(
    tx: &mut SqliteConnection,
    insertions: &mut [Insertion],
    positions: &[usize],
    now: Timestamp,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = positions
        .iter()
        .filter_map(|&i| match &insertions[i] {
            Insertion::Created(message) => Some(message.id),
            _ => None,
        })
        .collect();
    let mut batch = Batch::new(load_states(tx, &ids).await?, now);
    for id in &ids {
        batch.apply_result(&suppression_on_arrival(*id));
    }
    write_batch(tx, batch).await?;
    for &i in positions {
        if let Insertion::Created(message) = &mut insertions[i] {
            suppressed_on_arrival(message, now);
        }
    }
    Ok(())
}

/// What a live idempotency key already answers: a replay of its first response, or a refusal
/// when the request differs. An expired key is deleted so the caller can take it anew.
pub(crate) async fn check_key(
    tx: &mut SqliteConnection,
    scope: Scope,
    record: &IdempotencyRecord,
    now: Timestamp,
) -> Result<Option<Insertion>, StoreError> {
    let previous = sqlx::query(
        "SELECT request_hash, message_id, response, expires_at FROM idempotency_keys
         WHERE org_id = ?1 AND mode = ?2 AND key = ?3",
    )
    .bind(scope.org_id)
    .bind(scope.mode.as_str())
    .bind(&record.key)
    .fetch_optional(&mut *tx)
    .await
    .ctx("failed to look up the idempotency key")?;
    let Some(row) = previous else {
        return Ok(None);
    };
    let expires_at: i64 = row.get(3);
    if expires_at > micros(now) {
        let hash: Vec<u8> = row.get(0);
        return Ok(Some(if hash == record.request_hash {
            Insertion::Replayed {
                message_id: row.get(1),
                response: row.get(2),
            }
        } else {
            Insertion::KeyReused
        }));
    }
    sqlx::query("DELETE FROM idempotency_keys WHERE org_id = ?1 AND mode = ?2 AND key = ?3")
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(&record.key)
        .execute(&mut *tx)
        .await
        .ctx("failed to replace an expired idempotency key")?;
    Ok(None)
}

/// Remember `record` as the key that created `id` (a message, or another resource whose
/// creation takes a key).
pub(crate) async fn store_key(
    tx: &mut SqliteConnection,
    scope: Scope,
    id: Uuid,
    record: &IdempotencyRecord,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO idempotency_keys
             (org_id, mode, key, request_hash, message_id, response, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(scope.org_id)
    .bind(scope.mode.as_str())
    .bind(&record.key)
    .bind(&record.request_hash[..])
    .bind(id)
    .bind(&record.response)
    .bind(micros(now))
    .bind(micros(record.expires_at))
    .execute(&mut *tx)
    .await
    .ctx("failed to store the idempotency key")?;
    Ok(())
}

pub(crate) async fn get(
    conn: &mut SqliteConnection,
    scope: Scope,
    id: Uuid,
) -> Result<Option<Message>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE id = ?1 AND org_id = ?2 AND mode = ?3"
    ))
    .bind(id)
    .bind(scope.org_id)
    .bind(scope.mode.as_str())
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to read the message")?;
    let Some(row) = row else { return Ok(None) };
    let mut message = message(&row)?;
    let mut histories = histories(conn, &[id]).await?;
    message.set_history(histories.remove(&id).unwrap_or_default());
    Ok(Some(message))
}

pub(crate) async fn list(
    conn: &mut SqliteConnection,
    scope: Scope,
    filter: &MessageFilter,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Page<Message>, StoreError> {
    let mut query = QueryBuilder::<Sqlite>::new(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE org_id = "
    ));
    query
        .push_bind(scope.org_id)
        .push(" AND mode = ")
        .push_bind(scope.mode.as_str());
    if let Some(after) = after {
        query.push(" AND id < ").push_bind(after);
    }
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(to) = &filter.to {
        query.push(" AND recipient = ").push_bind(to.clone());
    }
    if let Some(after) = filter.created_after {
        query.push(" AND created_at > ").push_bind(micros(after));
    }
    if let Some(before) = filter.created_before {
        query.push(" AND created_at < ").push_bind(micros(before));
    }
    if let Some(broadcast_id) = filter.broadcast_id {
        query.push(" AND broadcast_id = ").push_bind(broadcast_id);
    }
    // One extra row tells whether another page exists without a second query.
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    let rows = query
        .build()
        .fetch_all(&mut *conn)
        .await
        .ctx("failed to list messages")?;

    let mut items = rows
        .iter()
        .take(limit as usize)
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    let next = (rows.len() > limit as usize)
        .then(|| items.last().map(|m| m.id))
        .flatten();
    let ids: Vec<Uuid> = items.iter().map(|m| m.id).collect();
    let mut histories = histories(conn, &ids).await?;
    for item in &mut items {
        item.set_history(histories.remove(&item.id).unwrap_or_default());
    }
    Ok(Page { items, next })
}

async fn histories(
    conn: &mut SqliteConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<StatusChange>>, StoreError> {
    let mut histories: HashMap<Uuid, Vec<StatusChange>> = HashMap::new();
    if ids.is_empty() {
        return Ok(histories);
    }
    let rows = sqlx::query(
        "SELECT message_id, seq, status, occurred_at, error_code, error_message
         FROM message_events WHERE message_id IN (SELECT unhex(value) FROM json_each(?1))
         ORDER BY message_id, seq",
    )
    .bind(bulk::id_list(ids))
    .fetch_all(conn)
    .await
    .ctx("failed to read status history")?;
    for row in rows {
        histories.entry(row.get(0)).or_default().push(StatusChange {
            seq: convert::count(row.get(1))?,
            status: convert::status(row.get(2))?,
            at: convert::timestamp(row.get(3))?,
            error_code: row.get(4),
            error_message: row.get(5),
        });
    }
    Ok(histories)
}

pub(crate) async fn cancel(
    tx: &mut SqliteConnection,
    scope: Scope,
    id: Uuid,
    now: Timestamp,
) -> Result<Result<Message, CancelRefusal>, StoreError> {
    let owned: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM messages WHERE id = ?1 AND org_id = ?2 AND mode = ?3")
            .bind(id)
            .bind(scope.org_id)
            .bind(scope.mode.as_str())
            .fetch_optional(&mut *tx)
            .await
            .ctx("failed to read the message to cancel")?;
    if owned.is_none() {
        return Ok(Err(CancelRefusal::NotFound));
    }
    let mut batch = Batch::new(load_states(tx, &[id]).await?, now);
    match batch.apply_cancel(id) {
        None => return Ok(Err(CancelRefusal::NotFound)),
        Some(Err(status)) => return Ok(Err(CancelRefusal::TooLate(status))),
        Some(Ok(())) => write_batch(tx, batch).await?,
    }
    let message = get(tx, scope, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt("cancelled message vanished".into()))?;
    Ok(Ok(message))
}

/// Decode a row of [`message_columns!`]; the history is filled in by the caller.
fn message(row: &SqliteRow) -> Result<Message, StoreError> {
    Ok(Message {
        id: row.get(0),
        scope: Scope {
            org_id: row.get(1),
            mode: convert::mode(row.get(2))?,
        },
        api_key_id: row.get(3),
        to: row.get(4),
        country: convert::opt_region(row.get(5))?,
        sender: row.get(6),
        body: row.get(7),
        encoding: convert::encoding(row.get(8))?,
        segments: convert::count(row.get(9))?,
        kind: convert::kind(row.get(10))?,
        priority: row.get(11),
        status: convert::status(row.get(12))?,
        provider: row.get(13),
        provider_message_id: row.get(14),
        error_code: row.get(15),
        error_message: row.get(16),
        estimated_cost: convert::amount(row.get(17)),
        actual_cost: row.get::<Option<i64>, _>(18).map(convert::amount),
        currency: convert::currency(row.get(19))?,
        attempts: convert::count(row.get(20))?,
        max_attempts: convert::count(row.get(21))?,
        send_at: convert::opt_timestamp(row.get(22))?,
        created_at: convert::timestamp(row.get(23))?,
        updated_at: convert::timestamp(row.get(24))?,
        broadcast_id: row.get(25),
        history: Vec::new(),
    })
}
