//! The suppression list on PostgreSQL.

use herald_store::{
    ErasedKeys, OptOut, OptOutAction, OptOutEvent, StoreError, cut_page, erased_key,
};
use jiff::Timestamp;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::convert::{Ctx, ts};

type Row = (String, String, jiff_sqlx::Timestamp);

fn opt_out((phone, source, created_at): Row) -> OptOut {
    OptOut {
        phone,
        source,
        created_at: created_at.to_jiff(),
    }
}

pub(crate) async fn add(
    conn: &mut PgConnection,
    org_id: Uuid,
    phone: &str,
    source: &str,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO opt_outs (org_id, phone, source, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (org_id, phone) DO NOTHING",
    )
    .bind(org_id)
    .bind(phone)
    .bind(source)
    .bind(ts(at))
    .execute(conn)
    .await
    .ctx("failed to record an opt-out")?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn remove(
    conn: &mut PgConnection,
    org_id: Uuid,
    phone: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM opt_outs WHERE org_id = $1 AND phone IN ($2, $3)")
        .bind(org_id)
        .bind(phone)
        .bind(erased_key(org_id, phone))
        .execute(conn)
        .await
        .ctx("failed to remove an opt-out")?;
    Ok(done.rows_affected() == 1)
}

/// Who among `wanted` (organization, number) is on their organization's suppression list, with
/// the entry. Erased people's opt-outs are kept under a one-way key of their number; hashing
/// every number is only worth it when such entries exist, so the first query also tells
/// whether they do, and a second looks the keys up only then.
pub(crate) async fn among(
    conn: &mut PgConnection,
    wanted: &[(Uuid, &str)],
) -> Result<Vec<(Uuid, OptOut)>, StoreError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let orgs: Vec<Uuid> = wanted.iter().map(|(org, _)| *org).collect();
    let phones: Vec<&str> = wanted.iter().map(|(_, phone)| *phone).collect();
    // One probe of the key per number, whatever the planner thinks of the list's size.
    let rows: Vec<(Option<Uuid>, String, String, Option<jiff_sqlx::Timestamp>)> = sqlx::query_as(
        "SELECT o.org_id, o.phone, o.source, o.created_at
         FROM (SELECT DISTINCT * FROM unnest($1::uuid[], $2::text[])) AS w (org_id, phone)
         CROSS JOIN LATERAL (SELECT org_id, phone, source, created_at FROM opt_outs
             WHERE org_id = w.org_id AND phone = w.phone LIMIT 1) o
         UNION ALL
         SELECT NULL, '', '', NULL WHERE EXISTS (
             SELECT 1 FROM opt_outs WHERE org_id = ANY($1)
               AND phone >= 'erased:' AND phone < 'erased;')",
    )
    .bind(&orgs)
    .bind(&phones)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to check the suppression list")?;
    let mut erased = false;
    let mut found = Vec::new();
    for (org, phone, source, created_at) in rows {
        match (org, created_at) {
            (Some(org), Some(created_at)) => {
                found.push((org, opt_out((phone, source, created_at))))
            }
            _ => erased = true,
        }
    }
    if erased {
        let keys = ErasedKeys::of(wanted);
        let (key_orgs, key_phones): (Vec<Uuid>, Vec<&str>) = keys.keys().into_iter().unzip();
        let rows: Vec<(Uuid, String, String, jiff_sqlx::Timestamp)> = sqlx::query_as(
            "SELECT o.org_id, o.phone, o.source, o.created_at
             FROM unnest($1::uuid[], $2::text[]) AS w (org_id, phone)
             CROSS JOIN LATERAL (SELECT org_id, phone, source, created_at FROM opt_outs
                 WHERE org_id = w.org_id AND phone = w.phone LIMIT 1) o",
        )
        .bind(&key_orgs)
        .bind(&key_phones)
        .fetch_all(&mut *conn)
        .await
        .ctx("failed to check the suppression list")?;
        for (org, key, source, created_at) in rows {
            if let Some(phone) = keys.number(org, &key) {
                found.push((org, opt_out((phone.to_owned(), source, created_at))));
            }
        }
    }
    Ok(found)
}

pub(crate) async fn list(
    pool: &PgPool,
    org_id: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<OptOut>, Option<String>), StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT phone, source, created_at FROM opt_outs \
         WHERE org_id = $1 AND phone > coalesce($2::text, '') ORDER BY phone LIMIT $3",
    )
    .bind(org_id)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .ctx("failed to list the suppression list")?;
    let mut items: Vec<OptOut> = rows.into_iter().map(opt_out).collect();
    let next = cut_page(&mut items, limit, |o| o.phone.clone());
    Ok((items, next))
}

/// Keep `phone`'s opt-out under its erased key: the number leaves, the opt-out stays.
pub(crate) async fn forget(
    conn: &mut PgConnection,
    org_id: Uuid,
    phone: &str,
) -> Result<(), StoreError> {
    let key = erased_key(org_id, phone);
    sqlx::query(
        "DELETE FROM opt_outs WHERE org_id = $1 AND phone = $3 \
         AND EXISTS (SELECT 1 FROM opt_outs WHERE org_id = $1 AND phone = $2)",
    )
    .bind(org_id)
    .bind(phone)
    .bind(&key)
    .execute(&mut *conn)
    .await
    .ctx("failed to keep an erased number's opt-out")?;
    sqlx::query("UPDATE opt_outs SET phone = $3 WHERE org_id = $1 AND phone = $2")
        .bind(org_id)
        .bind(phone)
        .bind(&key)
        .execute(&mut *conn)
        .await
        .ctx("failed to keep an erased number's opt-out")?;
    sqlx::query("UPDATE opt_out_events SET phone = $3 WHERE org_id = $1 AND phone = $2")
        .bind(org_id)
        .bind(phone)
        .bind(&key)
        .execute(&mut *conn)
        .await
        .ctx("failed to keep an erased number's opt-out history")?;
    Ok(())
}

/// Add a change to `phone`'s history: what, what said so, the message that asked, when.
pub(crate) async fn record(
    conn: &mut PgConnection,
    org_id: Uuid,
    phone: &str,
    (action, source, cause, at): (OptOutAction, &str, Option<Uuid>, Timestamp),
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO opt_out_events (org_id, phone, action, source, message_id, occurred_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(org_id)
    .bind(phone)
    .bind(action.as_str())
    .bind(source)
    .bind(cause)
    .bind(ts(at))
    .execute(conn)
    .await
    .ctx("failed to record an opt-out change")?;
    Ok(())
}

/// `phone`'s history, oldest first, including what it went through before an erasure.
pub(crate) async fn history(
    pool: &PgPool,
    org_id: Uuid,
    phone: &str,
) -> Result<Vec<OptOutEvent>, StoreError> {
    let rows: Vec<(String, String, Option<Uuid>, jiff_sqlx::Timestamp)> = sqlx::query_as(
        "SELECT action, source, message_id, occurred_at FROM opt_out_events \
         WHERE org_id = $1 AND phone IN ($2, $3) ORDER BY id",
    )
    .bind(org_id)
    .bind(phone)
    .bind(erased_key(org_id, phone))
    .fetch_all(pool)
    .await
    .ctx("failed to read an opt-out history")?;
    rows.into_iter()
        .map(|(action, source, message_id, at)| {
            Ok(OptOutEvent {
                action: OptOutAction::parse(&action)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown action {action:?}")))?,
                source,
                message_id,
                occurred_at: at.to_jiff(),
            })
        })
        .collect()
}
