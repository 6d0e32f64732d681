//! The suppression list on SQLite.

use herald_store::{
    ErasedKeys, OptOut, OptOutAction, OptOutEvent, StoreError, cut_page, erased_key,
};
use jiff::Timestamp;
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::bulk;
use crate::convert::{self, Ctx};

type Row = (String, String, i64);

fn opt_out((phone, source, created_at): Row) -> Result<OptOut, StoreError> {
    Ok(OptOut {
        phone,
        source,
        created_at: convert::timestamp(created_at)?,
    })
}

pub(crate) async fn add(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    phone: &str,
    source: &str,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO opt_outs (org_id, phone, source, created_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (org_id, phone) DO NOTHING",
    )
    .bind(org_id)
    .bind(phone)
    .bind(source)
    .bind(at.as_microsecond())
    .execute(conn)
    .await
    .ctx("failed to record an opt-out")?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn remove(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    phone: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM opt_outs WHERE org_id = ?1 AND phone IN (?2, ?3)")
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
    conn: &mut SqliteConnection,
    wanted: &[(Uuid, &str)],
) -> Result<Vec<(Uuid, OptOut)>, StoreError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut orgs: Vec<Uuid> = wanted.iter().map(|(org, _)| *org).collect();
    orgs.sort_unstable();
    orgs.dedup();
    let orgs = bulk::id_list(&orgs);
    let phones: Vec<&str> = wanted.iter().map(|(_, phone)| *phone).collect();
    let json =
        |list: &[&str]| serde_json::to_string(list).map_err(|e| StoreError::Corrupt(e.to_string()));
    // Orgs × numbers may match an entry no one asked about (a number another organization of
    // the batch sends to); it is dropped below.
    let rows: Vec<(Option<Uuid>, String, String, i64)> = sqlx::query_as(
        "SELECT org_id, phone, source, created_at FROM opt_outs
         WHERE org_id IN (SELECT unhex(value) FROM json_each(?1))
           AND phone IN (SELECT value FROM json_each(?2))
         UNION ALL
         SELECT NULL, '', '', 0 WHERE EXISTS (
             SELECT 1 FROM opt_outs WHERE org_id IN (SELECT unhex(value) FROM json_each(?1))
               AND phone >= 'erased:' AND phone < 'erased;')",
    )
    .bind(&orgs)
    .bind(json(&phones)?)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to check the suppression list")?;
    let asked: std::collections::HashSet<(Uuid, &str)> = wanted.iter().copied().collect();
    let mut erased = false;
    let mut found = Vec::new();
    for (org, phone, source, created_at) in rows {
        match org {
            None => erased = true,
            Some(org) if asked.contains(&(org, phone.as_str())) => {
                found.push((org, opt_out((phone, source, created_at))?));
            }
            Some(_) => {}
        }
    }
    if erased {
        let keys = ErasedKeys::of(wanted);
        let rows: Vec<(Uuid, String, String, i64)> = sqlx::query_as(
            "SELECT org_id, phone, source, created_at FROM opt_outs
             WHERE org_id IN (SELECT unhex(value) FROM json_each(?1))
               AND phone IN (SELECT value FROM json_each(?2))",
        )
        .bind(&orgs)
        .bind(json(
            &keys
                .keys()
                .into_iter()
                .map(|(_, key)| key)
                .collect::<Vec<_>>(),
        )?)
        .fetch_all(&mut *conn)
        .await
        .ctx("failed to check the suppression list")?;
        for (org, key, source, created_at) in rows {
            if let Some(phone) = keys.number(org, &key) {
                found.push((org, opt_out((phone.to_owned(), source, created_at))?));
            }
        }
    }
    Ok(found)
}

pub(crate) async fn list(
    pool: &SqlitePool,
    org_id: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<OptOut>, Option<String>), StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT phone, source, created_at FROM opt_outs \
         WHERE org_id = ?1 AND phone > coalesce(?2, '') ORDER BY phone LIMIT ?3",
    )
    .bind(org_id)
    .bind(after)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
    .ctx("failed to list the suppression list")?;
    let mut items = rows
        .into_iter()
        .map(opt_out)
        .collect::<Result<Vec<_>, _>>()?;
    let next = cut_page(&mut items, limit, |o| o.phone.clone());
    Ok((items, next))
}

/// Keep `phone`'s opt-out and its history under its erased key: the number leaves, the
/// opt-out stays.
pub(crate) async fn forget(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    phone: &str,
) -> Result<(), StoreError> {
    let key = erased_key(org_id, phone);
    sqlx::query("UPDATE OR REPLACE opt_outs SET phone = ?3 WHERE org_id = ?1 AND phone = ?2")
        .bind(org_id)
        .bind(phone)
        .bind(&key)
        .execute(&mut *conn)
        .await
        .ctx("failed to keep an erased number's opt-out")?;
    sqlx::query("UPDATE opt_out_events SET phone = ?3 WHERE org_id = ?1 AND phone = ?2")
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
    conn: &mut SqliteConnection,
    org_id: Uuid,
    phone: &str,
    (action, source, cause, at): (OptOutAction, &str, Option<Uuid>, Timestamp),
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO opt_out_events (org_id, phone, action, source, message_id, occurred_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(org_id)
    .bind(phone)
    .bind(action.as_str())
    .bind(source)
    .bind(cause)
    .bind(at.as_microsecond())
    .execute(conn)
    .await
    .ctx("failed to record an opt-out change")?;
    Ok(())
}

/// `phone`'s history, oldest first, including what it went through before an erasure.
pub(crate) async fn history(
    pool: &SqlitePool,
    org_id: Uuid,
    phone: &str,
) -> Result<Vec<OptOutEvent>, StoreError> {
    let rows: Vec<(String, String, Option<Uuid>, i64)> = sqlx::query_as(
        "SELECT action, source, message_id, occurred_at FROM opt_out_events \
         WHERE org_id = ?1 AND phone IN (?2, ?3) ORDER BY id",
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
                occurred_at: convert::timestamp(at)?,
            })
        })
        .collect()
}
