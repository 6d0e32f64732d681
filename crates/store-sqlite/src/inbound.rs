//! Inbound messages on SQLite.

use herald_store::{InboundMessage, Page, ProviderKind, SenderKind, StoreError};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::convert::{self, Ctx};

pub(crate) async fn insert(
    conn: &mut SqliteConnection,
    message: &InboundMessage,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO inbound_messages (id, org_id, provider, provider_message_id, from_number, \
         to_number, body, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (provider, provider_message_id) DO NOTHING",
    )
    .bind(message.id)
    .bind(message.org_id)
    .bind(&message.provider)
    .bind(&message.provider_message_id)
    .bind(&message.from)
    .bind(&message.to)
    .bind(&message.body)
    .bind(message.received_at.as_microsecond())
    .execute(conn)
    .await
    .ctx("failed to store an inbound message")?;
    Ok(inserted.rows_affected() == 1)
}

pub(crate) async fn list(
    pool: &SqlitePool,
    org_id: Uuid,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Page<InboundMessage>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, org_id, provider, provider_message_id, from_number, to_number, body, \
         received_at FROM inbound_messages \
         WHERE org_id = ?1 AND id < coalesce(?2, x'ffffffffffffffffffffffffffffffff') ORDER BY id DESC LIMIT ?3",
    )
    .bind(org_id)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .ctx("failed to list inbound messages")?;
    let items = rows.iter().map(row).collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_overfetch(items, limit, |item| item.id))
}

fn row(row: &SqliteRow) -> Result<InboundMessage, StoreError> {
    Ok(InboundMessage {
        id: row.get(0),
        org_id: row.get(1),
        provider: row.get(2),
        provider_message_id: row.get(3),
        from: row.get(4),
        to: row.get(5),
        body: row.get(6),
        received_at: convert::timestamp(row.get(7))?,
    })
}

pub(crate) async fn number_owner(
    pool: &SqlitePool,
    kind: ProviderKind,
    number: &str,
) -> Result<Option<(Uuid, Uuid)>, StoreError> {
    // Senders are stored one `kind:value` per line; framing them in newlines makes the match
    // exact.
    let line = format!("\n{}:{number}\n", SenderKind::PhoneNumber.as_str());
    sqlx::query_as(
        "SELECT org_id, id FROM provider_accounts \
         WHERE kind = ?1 AND instr(char(10) || senders || char(10), ?2) > 0 \
         ORDER BY id LIMIT 1",
    )
    .bind(kind.as_str())
    .bind(line)
    .fetch_optional(pool)
    .await
    .ctx("failed to find who owns a number")
}
