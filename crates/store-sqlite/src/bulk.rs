//! Multi-row writes: many rows per statement.
//!
//! sqlx runs each SQLite connection on its own thread and every statement is a round trip to
//! it; measured under the dispatcher, those hand-offs cost several times the SQL itself. So
//! everything that writes many rows — history entries, batch state changes, bulk inserts —
//! writes them in a few multi-row statements instead of one statement per row.

use herald_store::{NewEvent, NewMessage, QueueState, StoreError};
use jiff::Timestamp;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::convert::{Ctx, micros};

/// Most rows per statement. The SQL of a multi-row statement depends on its row count, and a
/// statement is only reused (not parsed again) when its text repeats, so rows are written in
/// chunks of 128 and then powers of two: at most eight shapes per statement, all of them cached.
const MAX_ROWS: usize = 128;

/// Split `len` rows into chunks of [`MAX_ROWS`], then 64, 32, … 1.
pub(crate) fn chunks(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let left = len - start;
        if left == 0 {
            return None;
        }
        let size = if left >= MAX_ROWS {
            MAX_ROWS
        } else {
            1 << (usize::BITS - 1 - left.leading_zeros())
        };
        let range = start..start + size;
        start += size;
        Some(range)
    })
}

/// Ids as one JSON array of hex strings, for `id IN (SELECT unhex(value) FROM json_each(?))`:
/// one statement text whatever the number of ids.
pub(crate) fn id_list(ids: &[uuid::Uuid]) -> String {
    let mut json = String::with_capacity(ids.len() * 35 + 2);
    json.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push('"');
        json.push_str(id.simple().encode_lower(&mut uuid::Uuid::encode_buffer()));
        json.push('"');
    }
    json.push(']');
    json
}

/// Append history entries.
pub(crate) async fn insert_events(
    conn: &mut SqliteConnection,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    for range in chunks(events.len()) {
        let chunk = &events[range];
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO message_events
                 (message_id, org_id, seq, status, occurred_at, error_code, error_message) ",
        );
        query.push_values(chunk, |mut row, event| {
            row.push_bind(event.message_id)
                .push_bind(event.org_id)
                .push_bind(i64::from(event.seq))
                .push_bind(event.status.as_str())
                .push_bind(micros(event.at))
                .push_bind(event.error_code.clone())
                .push_bind(event.error_message.clone());
        });
        query
            .build()
            .execute(&mut *conn)
            .await
            .ctx("failed to record status changes")?;
    }
    Ok(())
}

/// Created on every writer connection: the new states of one batch, keyed by message id.
pub(crate) const CREATE_BATCH_STATES: &str = "CREATE TEMP TABLE IF NOT EXISTS batch_states (
    id                  BLOB PRIMARY KEY NOT NULL,
    status              TEXT NOT NULL,
    last_seq            INTEGER NOT NULL,
    attempts            INTEGER NOT NULL,
    provider            TEXT,
    provider_message_id TEXT,
    error_code          TEXT,
    error_message       TEXT,
    actual_cost         INTEGER,
    due_at              INTEGER NOT NULL,
    lease_expires_at    INTEGER
) WITHOUT ROWID";

/// Write back the states a batch changed.
///
/// The new states go into a keyed temporary table and `messages` is updated through primary
/// key lookups on both sides. The obvious `UPDATE … FROM (VALUES …)` is planned by SQLite 3.51
/// as a scan of all of `messages` per batch, which made the dispatcher slow down as the table
/// grew.
pub(crate) async fn write_states(
    conn: &mut SqliteConnection,
    states: &[QueueState],
    now: Timestamp,
) -> Result<(), StoreError> {
    if states.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM temp.batch_states")
        .execute(&mut *conn)
        .await
        .ctx("failed to stage message updates")?;
    for range in chunks(states.len()) {
        let chunk = &states[range];
        let mut query = QueryBuilder::<Sqlite>::new("INSERT INTO temp.batch_states ");
        query.push_values(chunk, |mut row, state| {
            row.push_bind(state.id)
                .push_bind(state.status.as_str())
                .push_bind(i64::from(state.last_seq))
                .push_bind(i64::from(state.attempts))
                .push_bind(state.provider.clone())
                .push_bind(state.provider_message_id.clone())
                .push_bind(state.error_code.clone())
                .push_bind(state.error_message.clone())
                .push_bind(state.actual_cost.map(|c| c.micros()))
                .push_bind(micros(state.due_at))
                .push_bind(state.lease_expires_at.map(micros));
        });
        query
            .build()
            .execute(&mut *conn)
            .await
            .ctx("failed to stage message updates")?;
    }
    sqlx::query(
        "UPDATE messages
         SET (status, last_seq, attempts, provider, provider_message_id, error_code,
              error_message, actual_cost, due_at, lease_expires_at, updated_at) =
             (SELECT status, last_seq, attempts, provider, provider_message_id, error_code,
                     error_message, actual_cost, due_at, lease_expires_at, ?1
              FROM temp.batch_states b WHERE b.id = messages.id)
         WHERE id IN (SELECT id FROM temp.batch_states)",
    )
    .bind(micros(now))
    .execute(&mut *conn)
    .await
    .ctx("failed to update messages")?;
    Ok(())
}

/// Insert new messages, each with the credits it reserved (`credits` empty: none did). Their
/// first history entry is the row itself (see [`herald_store::Message::first_change`]).
pub(crate) async fn insert_messages(
    conn: &mut SqliteConnection,
    messages: &[NewMessage],
    credits: &[u32],
) -> Result<(), StoreError> {
    for range in chunks(messages.len()) {
        let credits = credits.get(range.clone()).unwrap_or(&[]);
        let chunk = &messages[range];
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (id, org_id, mode, api_key_id, recipient, country, sender, body,
                 encoding, segments, kind, priority, status, estimated_cost, currency, max_attempts,
                 due_at, send_at, last_seq, created_at, updated_at, credits, broadcast_id,
                 campaign_run_id) ",
        );
        query.push_values(chunk.iter().enumerate(), |mut row, (i, new)| {
            row.push_bind(new.id)
                .push_bind(new.scope.org_id)
                .push_bind(new.scope.mode.as_str())
                .push_bind(new.api_key_id)
                .push_bind(new.to.clone())
                .push_bind(new.country.map(|c| c.as_str().to_owned()))
                .push_bind(new.sender.clone())
                .push_bind(new.body.clone())
                .push_bind(new.encoding.as_str())
                .push_bind(i64::from(new.segments))
                .push_bind(new.kind.as_str())
                .push_bind(new.priority)
                .push_bind(new.initial_status().as_str())
                .push_bind(new.estimated_cost.micros())
                .push_bind(new.currency.as_str().to_owned())
                .push_bind(i64::from(new.max_attempts))
                .push_bind(micros(new.due_at()))
                .push_bind(new.send_at.map(micros))
                .push_bind(1_i64)
                .push_bind(micros(new.created_at))
                .push_bind(micros(new.created_at))
                .push_bind(i64::from(credits.get(i).copied().unwrap_or(0)))
                .push_bind(new.broadcast_id)
                .push_bind(new.campaign_run_id);
        });
        query
            .build()
            .execute(&mut *conn)
            .await
            .ctx("failed to insert messages")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_in_few_shapes() {
        for len in 0..600 {
            let ranges: Vec<_> = chunks(len).collect();
            let mut next = 0;
            for range in &ranges {
                assert_eq!(range.start, next);
                let size = range.len();
                assert!(
                    size == MAX_ROWS || (size.is_power_of_two() && size < MAX_ROWS),
                    "{size}"
                );
                next = range.end;
            }
            assert_eq!(next, len);
        }
    }

    #[test]
    fn id_lists_are_json_arrays_of_hex() {
        let id = uuid::Uuid::from_u128(0xab);
        assert_eq!(
            id_list(&[id, id]),
            format!("[\"{0}\",\"{0}\"]", id.simple())
        );
        assert_eq!(id_list(&[]), "[]");
    }
}
