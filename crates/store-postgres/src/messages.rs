//! Accepting, reading and cancelling messages, and the status-history rows every change writes.

use std::collections::HashMap;

use herald_store::{
    Batch, CancelRefusal, CreditRefusal, IdempotencyRecord, Insertion, Ledger, Message,
    MessageFilter, NewMessage, Page, Scope, StatusChange, StoreError, month_of,
    suppressed_on_arrival, suppression_on_arrival,
};
use jiff::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::convert::{self, Ctx, col, int, ts};
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

/// Store a message and its first status. With an idempotency key, `conn` must be inside a
/// transaction that the caller commits only on [`Insertion::Created`]: the key row is written
/// first, so a concurrent request with the same key waits on it and then replays.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    new: &NewMessage,
    idempotency: Option<&IdempotencyRecord>,
    reserve: impl FnOnce() -> Result<u32, CreditRefusal>,
    now: Timestamp,
) -> Result<Insertion, StoreError> {
    if let Some(record) = idempotency
        && let Some(previous) = take_key(conn, new.scope, new.id, record, now).await?
    {
        return Ok(previous);
    }
    let credits = match reserve() {
        Ok(credits) => credits,
        Err(refusal) => {
            // Nothing is stored for a refused request, its key included.
            if let Some(record) = idempotency {
                forget_key(conn, new.scope, record).await?;
            }
            return Ok(Insertion::Refused(refusal));
        }
    };

    // The message and the stored row as read back, in one statement; its first history entry
    // is the row itself.
    let row = sqlx::query(concat!(
        "WITH inserted AS (
             INSERT INTO messages (id, org_id, mode, api_key_id, recipient, country, sender, body,
                 encoding, segments, kind, priority, status, estimated_cost, currency,
                 max_attempts, due_at, send_at, last_seq, created_at, updated_at, credits,
                 broadcast_id, campaign_run_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, 1, $19, $19, $20, $21, $22)
             RETURNING ",
        message_columns!(),
        "
         )
         SELECT * FROM inserted"
    ))
    .bind(new.id)
    .bind(new.scope.org_id)
    .bind(new.scope.mode.as_str())
    .bind(new.api_key_id)
    .bind(&new.to)
    .bind(new.country.as_ref().map(|c| c.as_str()))
    .bind(&new.sender)
    .bind(&new.body)
    .bind(new.encoding.as_str())
    .bind(int(new.segments)?)
    .bind(new.kind.as_str())
    .bind(new.priority)
    .bind(new.initial_status().as_str())
    .bind(new.estimated_cost.micros())
    .bind(new.currency.as_str())
    .bind(int(new.max_attempts)?)
    .bind(ts(new.due_at()))
    .bind(new.send_at.map(ts))
    .bind(ts(new.created_at))
    .bind(int(credits)?)
    .bind(new.broadcast_id)
    .bind(new.campaign_run_id)
    .fetch_one(&mut *conn)
    .await
    .ctx("failed to insert the message")?;
    let mut message = message(&row)?;
    message.set_history(Vec::new());
    Ok(Insertion::Created(Box::new(message)))
}

/// Store many messages with their first history entries: one statement of `unnest` arrays.
pub(crate) async fn insert_many(
    conn: &mut PgConnection,
    messages: &[NewMessage],
    credits: &[u32],
) -> Result<(), StoreError> {
    let n = messages.len();
    let mut ids = Vec::with_capacity(n);
    let mut orgs = Vec::with_capacity(n);
    let mut modes = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut recipients = Vec::with_capacity(n);
    let mut countries = Vec::with_capacity(n);
    let mut senders = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut encodings = Vec::with_capacity(n);
    let mut segments = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut costs = Vec::with_capacity(n);
    let mut currencies = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut due = Vec::with_capacity(n);
    let mut send_at = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut reserved = Vec::with_capacity(n);
    let mut broadcasts = Vec::with_capacity(n);
    let mut runs = Vec::with_capacity(n);
    for (i, m) in messages.iter().enumerate() {
        reserved.push(int(credits.get(i).copied().unwrap_or(0))?);
        ids.push(m.id);
        broadcasts.push(m.broadcast_id);
        runs.push(m.campaign_run_id);
        orgs.push(m.scope.org_id);
        modes.push(m.scope.mode.as_str());
        keys.push(m.api_key_id);
        recipients.push(m.to.as_str());
        countries.push(m.country.as_ref().map(|c| c.as_str().to_owned()));
        senders.push(m.sender.as_deref());
        bodies.push(m.body.as_str());
        encodings.push(m.encoding.as_str());
        segments.push(int(m.segments)?);
        kinds.push(m.kind.as_str());
        priorities.push(m.priority);
        statuses.push(m.initial_status().as_str());
        costs.push(m.estimated_cost.micros());
        currencies.push(m.currency.as_str().to_owned());
        max_attempts.push(int(m.max_attempts)?);
        due.push(ts(m.due_at()));
        send_at.push(m.send_at.map(ts));
        created.push(ts(m.created_at));
    }
    sqlx::query(
        "INSERT INTO messages (id, org_id, mode, api_key_id, recipient, country, sender, body,
                 encoding, segments, kind, priority, status, estimated_cost, currency,
                 max_attempts, due_at, send_at, last_seq, created_at, updated_at, credits,
                 broadcast_id, campaign_run_id)
             SELECT id, org_id, mode, api_key_id, recipient, country, sender, body, encoding,
                 segments, kind, priority, status, estimated_cost, currency, max_attempts, due_at,
                 send_at, 1, created_at, created_at, credits, broadcast_id, campaign_run_id
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                 $7::text[], $8::text[], $9::text[], $10::int[], $11::text[], $12::smallint[],
                 $13::text[], $14::bigint[], $15::text[], $16::int[], $17::timestamptz[],
                 $18::timestamptz[], $19::timestamptz[], $20::int[], $21::uuid[], $22::uuid[])
                 AS u(id, org_id, mode, api_key_id, recipient, country, sender, body, encoding,
                      segments, kind, priority, status, estimated_cost, currency, max_attempts,
                      due_at, send_at, created_at, credits, broadcast_id, campaign_run_id)",
    )
    .bind(ids)
    .bind(orgs)
    .bind(modes)
    .bind(keys)
    .bind(recipients)
    .bind(countries)
    .bind(senders)
    .bind(bodies)
    .bind(encodings)
    .bind(segments)
    .bind(kinds)
    .bind(priorities)
    .bind(statuses)
    .bind(costs)
    .bind(currencies)
    .bind(max_attempts)
    .bind(due)
    .bind(send_at)
    .bind(created)
    .bind(reserved)
    .bind(broadcasts)
    .bind(runs)
    .execute(conn)
    .await
    .ctx("failed to insert messages")?;
    Ok(())
}

/// Drop a key this transaction has just taken.
async fn forget_key(
    conn: &mut PgConnection,
    scope: Scope,
    record: &IdempotencyRecord,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE org_id = $1 AND mode = $2 AND key = $3")
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(&record.key)
        .execute(&mut *conn)
        .await
        .ctx("failed to release the idempotency key")?;
    Ok(())
}

/// Store the messages of a batch of requests in the caller's transaction, in order: each request
/// is checked against its idempotency key, its organization's credits and the suppression list
/// on its own, so one refused request leaves the others alone. A message to a number that opted
/// out is stored `suppressed`, never queued, and reserves nothing.
pub(crate) async fn accept(
    tx: &mut PgConnection,
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
        let is_suppressed = !opted_out.is_empty()
            && opted_out.contains(&(message.scope.org_id, message.to.clone()));
        let reserve = || {
            ledger
                .reserve(&[message], |_| is_suppressed)
                .map(|credits| credits[0])
        };
        // Suppressed on arrival, the caller is answered with the stored record, not the response
        // rendered before storing: keep no response, so a replay renders the record too.
        let record = idempotency.as_ref().map(|record| {
            if is_suppressed {
                std::borrow::Cow::Owned(IdempotencyRecord {
                    response: Vec::new(),
                    ..record.clone()
                })
            } else {
                std::borrow::Cow::Borrowed(record)
            }
        });
        let insertion = insert(tx, message, record.as_deref(), reserve, now).await?;
        if is_suppressed && matches!(insertion, Insertion::Created(_)) {
            suppressed.push(insertions.len());
        }
        insertions.push(insertion);
    }
    if !suppressed.is_empty() {
        let ids: Vec<Uuid> = suppressed
            .iter()
            .map(|&i| match &insertions[i] {
                Insertion::Created(message) => message.id,
                _ => unreachable!("only created messages are suppressed"),
            })
            .collect();
        let mut batch = Batch::new(load_states(tx, &ids).await?, now);
        for id in &ids {
            batch.apply_result(&suppression_on_arrival(*id));
        }
        write_batch(tx, batch).await?;
        for &i in &suppressed {
            if let Insertion::Created(message) = &mut insertions[i] {
                suppressed_on_arrival(message, now);
            }
        }
    }
    if !ledger.is_empty() {
        credits::reserve(tx, &ledger.finish(), &month).await?;
    }
    Ok(insertions)
}

/// Insert prepared messages without idempotency keys (broadcasts, campaigns, benchmarks). Those
/// to numbers that opted out are stored `suppressed`; with a `ledger` (some organization of the
/// call is metered) the others reserve credits, all of them or, refused, none.
pub(crate) async fn insert_bulk(
    tx: &mut PgConnection,
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
    insert_many(tx, messages, &credits).await?;
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

/// Make the idempotency key ours for the resource `id` (a message, or another resource whose
/// creation takes a key): insert it, or replace it if it has expired. When another live request
/// holds it, return what that request's retry gets instead.
pub(crate) async fn take_key(
    conn: &mut PgConnection,
    scope: Scope,
    id: Uuid,
    record: &IdempotencyRecord,
    now: Timestamp,
) -> Result<Option<Insertion>, StoreError> {
    // A concurrent insert of the same key blocks here until the other transaction ends; the
    // conflicting row is then locked (even when the WHERE spares it) until this one ends.
    let taken = sqlx::query(
        "INSERT INTO idempotency_keys
             (org_id, mode, key, request_hash, message_id, response, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (org_id, mode, key) DO UPDATE
             SET request_hash = excluded.request_hash, message_id = excluded.message_id,
                 response = excluded.response, created_at = excluded.created_at,
                 expires_at = excluded.expires_at
             WHERE idempotency_keys.expires_at <= excluded.created_at
         RETURNING 1",
    )
    .bind(scope.org_id)
    .bind(scope.mode.as_str())
    .bind(&record.key)
    .bind(&record.request_hash[..])
    .bind(id)
    .bind(&record.response)
    .bind(ts(now))
    .bind(ts(record.expires_at))
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to store the idempotency key")?;
    if taken.is_some() {
        return Ok(None);
    }
    // READ COMMITTED: this statement sees the committed row the insert collided with.
    let row = sqlx::query(
        "SELECT request_hash, message_id, response FROM idempotency_keys
         WHERE org_id = $1 AND mode = $2 AND key = $3",
    )
    .bind(scope.org_id)
    .bind(scope.mode.as_str())
    .bind(&record.key)
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to look up the idempotency key")?
    .ok_or_else(|| StoreError::Corrupt("a locked idempotency key vanished".into()))?;
    let hash: &[u8] = col(&row, 0)?;
    Ok(Some(if hash == record.request_hash {
        Insertion::Replayed {
            message_id: col(&row, 1)?,
            response: col(&row, 2)?,
        }
    } else {
        Insertion::KeyReused
    }))
}

pub(crate) async fn get(
    conn: &mut PgConnection,
    scope: Scope,
    id: Uuid,
) -> Result<Option<Message>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE id = $1 AND org_id = $2 AND mode = $3"
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
    conn: &mut PgConnection,
    scope: Scope,
    filter: &MessageFilter,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Page<Message>, StoreError> {
    let mut query = QueryBuilder::<Postgres>::new(concat!(
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
        query.push(" AND created_at > ").push_bind(ts(after));
    }
    if let Some(before) = filter.created_before {
        query.push(" AND created_at < ").push_bind(ts(before));
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

/// The histories of `ids`, oldest entry first, in one query.
async fn histories(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<StatusChange>>, StoreError> {
    let mut histories: HashMap<Uuid, Vec<StatusChange>> = HashMap::new();
    if ids.is_empty() {
        return Ok(histories);
    }
    let rows = sqlx::query(
        "SELECT message_id, seq, status, occurred_at, error_code, error_message
         FROM message_events WHERE message_id = ANY($1) ORDER BY message_id, seq",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
    .ctx("failed to read status history")?;
    for row in &rows {
        histories
            .entry(col(row, 0)?)
            .or_default()
            .push(StatusChange {
                seq: convert::count(row, 1)?,
                status: convert::status(row, 2)?,
                at: convert::timestamp(row, 3)?,
                error_code: col(row, 4)?,
                error_message: col(row, 5)?,
            });
    }
    Ok(histories)
}

pub(crate) async fn cancel(
    tx: &mut PgConnection,
    scope: Scope,
    id: Uuid,
    now: Timestamp,
) -> Result<Result<Message, CancelRefusal>, StoreError> {
    let owned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1 AND org_id = $2 AND mode = $3)",
    )
    .bind(id)
    .bind(scope.org_id)
    .bind(scope.mode.as_str())
    .fetch_one(&mut *tx)
    .await
    .ctx("failed to read the message to cancel")?;
    if !owned {
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
fn message(row: &PgRow) -> Result<Message, StoreError> {
    Ok(Message {
        id: col(row, 0)?,
        scope: Scope {
            org_id: col(row, 1)?,
            mode: convert::mode(row, 2)?,
        },
        api_key_id: col(row, 3)?,
        to: col(row, 4)?,
        country: convert::opt_region(row, 5)?,
        sender: col(row, 6)?,
        body: col(row, 7)?,
        encoding: convert::encoding(row, 8)?,
        segments: convert::count(row, 9)?,
        kind: convert::kind(row, 10)?,
        priority: col(row, 11)?,
        status: convert::status(row, 12)?,
        provider: col(row, 13)?,
        provider_message_id: col(row, 14)?,
        error_code: col(row, 15)?,
        error_message: col(row, 16)?,
        estimated_cost: convert::amount(row, 17)?,
        actual_cost: convert::opt_amount(row, 18)?,
        currency: convert::currency(row, 19)?,
        attempts: convert::count(row, 20)?,
        max_attempts: convert::count(row, 21)?,
        send_at: convert::opt_timestamp(row, 22)?,
        created_at: convert::timestamp(row, 23)?,
        updated_at: convert::timestamp(row, 24)?,
        broadcast_id: col(row, 25)?,
        history: Vec::new(),
    })
}
