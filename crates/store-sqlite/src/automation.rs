//! Automation on SQLite: drips and their enrolments, each step taken in one transaction with
//! its message, and triggers whose firings are unique per key.

use std::collections::HashMap;

use async_trait::async_trait;
use herald_store::segment::Rule;
use herald_store::segment::sql::{self, Dialect};
use herald_store::*;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use crate::SqliteStore;
use crate::audience::bind_rule;
use crate::bulk;
use crate::convert::{self, Ctx, micros};
use crate::{broadcasts, contacts, messages};

const DRIP_COLUMNS: &str =
    "id, org_id, mode, name, status, spec, api_key_id, created_at, updated_at";

const ENROLLMENT_COLUMNS: &str = "id, org_id, drip_id, phone, contact_id, source, step, next_at, \
     state, reason, error, enrolled_at, updated_at";

const TRIGGER_COLUMNS: &str = "id, org_id, mode, name, kind, event, active, spec, api_key_id, \
     swept_until, created_at, updated_at";

const FIRING_COLUMNS: &str = "id, org_id, trigger_id, key, contact_id, phone, outcome, \
     message_id, enrollment_id, created_at";

fn spec(text: String, what: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn drip(row: &SqliteRow) -> Result<Drip, StoreError> {
    let status: String = row.get(4);
    Ok(Drip {
        id: row.get(0),
        org_id: row.get(1),
        mode: convert::mode(row.get(2))?,
        name: row.get(3),
        status: status.parse().map_err(StoreError::Corrupt)?,
        spec: spec(row.get(5), "drip spec")?,
        api_key_id: row.get(6),
        created_at: convert::timestamp(row.get(7))?,
        updated_at: convert::timestamp(row.get(8))?,
    })
}

fn enrollment(row: &SqliteRow) -> Result<Enrollment, StoreError> {
    let state: String = row.get(8);
    Ok(Enrollment {
        id: row.get(0),
        org_id: row.get(1),
        drip_id: row.get(2),
        phone: row.get(3),
        contact_id: row.get(4),
        source: row.get(5),
        step: convert::count(row.get(6))?,
        next_at: convert::opt_timestamp(row.get(7))?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        reason: row.get(9),
        error: row.get(10),
        enrolled_at: convert::timestamp(row.get(11))?,
        updated_at: convert::timestamp(row.get(12))?,
    })
}

fn trigger(row: &SqliteRow) -> Result<Trigger, StoreError> {
    let kind: String = row.get(4);
    Ok(Trigger {
        id: row.get(0),
        org_id: row.get(1),
        mode: convert::mode(row.get(2))?,
        name: row.get(3),
        kind: kind.parse().map_err(StoreError::Corrupt)?,
        event: row.get(5),
        active: row.get(6),
        spec: spec(row.get(7), "trigger spec")?,
        api_key_id: row.get(8),
        swept_until: convert::timestamp(row.get(9))?,
        created_at: convert::timestamp(row.get(10))?,
        updated_at: convert::timestamp(row.get(11))?,
    })
}

fn firing(row: &SqliteRow) -> Result<Firing, StoreError> {
    Ok(Firing {
        id: row.get(0),
        org_id: row.get(1),
        trigger_id: row.get(2),
        key: row.get(3),
        contact_id: row.get(4),
        phone: row.get(5),
        outcome: row.get(6),
        message_id: row.get(7),
        enrollment_id: row.get(8),
        created_at: convert::timestamp(row.get(9))?,
    })
}

fn unsigned(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("count {value}")))
}

/// Insert enrolments, leaving every number already in its drip as it is; answers how many were
/// inserted.
async fn insert_enrollments(
    conn: &mut SqliteConnection,
    enrollments: &[Enrollment],
) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for range in bulk::chunks(enrollments.len()) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO drip_enrollments (id, org_id, drip_id, phone, contact_id, source, step, \
             next_at, state, reason, error, enrolled_at, updated_at) ",
        );
        query.push_values(&enrollments[range], |mut row, e| {
            row.push_bind(e.id)
                .push_bind(e.org_id)
                .push_bind(e.drip_id)
                .push_bind(&e.phone)
                .push_bind(e.contact_id)
                .push_bind(&e.source)
                .push_bind(i64::from(e.step))
                .push_bind(e.next_at.map(micros))
                .push_bind(e.state.as_str())
                .push_bind(&e.reason)
                .push_bind(&e.error)
                .push_bind(micros(e.enrolled_at))
                .push_bind(micros(e.updated_at));
        });
        query.push(" ON CONFLICT (drip_id, phone) DO NOTHING");
        inserted += query
            .build()
            .execute(&mut *conn)
            .await
            .ctx("failed to enrol numbers")?
            .rows_affected();
    }
    Ok(inserted)
}

async fn read_firing(
    conn: &mut SqliteConnection,
    org_id: Uuid,
    trigger_id: Uuid,
    key: &str,
) -> Result<Option<Firing>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FIRING_COLUMNS} FROM trigger_firings
         WHERE trigger_id = ?1 AND key = ?2 AND org_id = ?3"
    )))
    .bind(trigger_id)
    .bind(key)
    .bind(org_id)
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to read a firing")?;
    row.as_ref().map(firing).transpose()
}

#[async_trait]
impl AutomationStore for SqliteStore {
    async fn create_drip(
        &self,
        d: &Drip,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<CampaignCreation, StoreError> {
        let mut tx = self.write().await?;
        if let Some(record) = idempotency
            && let Some(previous) = messages::check_key(&mut tx, d.scope(), record, now).await?
        {
            return Ok(CampaignCreation::of_earlier(previous));
        }
        sqlx::query(
            "INSERT INTO drips (id, org_id, mode, name, status, spec, api_key_id, created_at,
                 updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(d.id)
        .bind(d.org_id)
        .bind(d.mode.as_str())
        .bind(&d.name)
        .bind(d.status.as_str())
        .bind(d.spec.to_string())
        .bind(d.api_key_id)
        .bind(micros(d.created_at))
        .bind(micros(d.updated_at))
        .execute(&mut *tx)
        .await
        .ctx("failed to store a drip")?;
        if let Some(record) = idempotency {
            messages::store_key(&mut tx, d.scope(), d.id, record, now).await?;
        }
        tx.commit().await.ctx("failed to commit a drip")?;
        Ok(CampaignCreation::Created)
    }

    async fn get_drip(&self, scope: Scope, id: Uuid) -> Result<Option<Drip>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DRIP_COLUMNS} FROM drips WHERE id = ?1 AND org_id = ?2 AND mode = ?3"
        )))
        .bind(id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_optional(&self.reader)
        .await
        .ctx("failed to read a drip")?;
        row.as_ref().map(drip).transpose()
    }

    async fn list_drips(
        &self,
        scope: Scope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Drip>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DRIP_COLUMNS} FROM drips
             WHERE org_id = ?1 AND mode = ?2 AND id < coalesce(?3, x'ffffffffffffffffffffffffffffffff')
             ORDER BY id DESC LIMIT ?4"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to list drips")?;
        let items = rows.iter().map(drip).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |d| d.id))
    }

    async fn update_drip(&self, d: &Drip, read_at: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE drips SET name = ?1, status = ?2, spec = ?3, updated_at = ?4
             WHERE id = ?5 AND org_id = ?6 AND mode = ?7 AND updated_at = ?8",
        )
        .bind(&d.name)
        .bind(d.status.as_str())
        .bind(d.spec.to_string())
        .bind(micros(d.updated_at))
        .bind(d.id)
        .bind(d.org_id)
        .bind(d.mode.as_str())
        .bind(micros(read_at))
        .execute(&self.writer)
        .await
        .ctx("failed to update a drip")?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_drip(&self, scope: Scope, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM drips WHERE id = ?1 AND org_id = ?2 AND mode = ?3")
            .bind(id)
            .bind(scope.org_id)
            .bind(scope.mode.as_str())
            .execute(&self.writer)
            .await
            .ctx("failed to delete a drip")?;
        Ok(done.rows_affected() == 1)
    }

    async fn enrol(&self, enrollments: &[Enrollment]) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let enrolled = insert_enrollments(&mut tx, enrollments).await?;
        tx.commit().await.ctx("failed to commit enrolments")?;
        Ok(enrolled)
    }

    async fn due_enrollments(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Enrollment>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM drip_enrollments e JOIN drips d ON d.id = e.drip_id
             WHERE e.state = 'active' AND e.next_at <= ?1 AND d.status = 'active'
             ORDER BY e.next_at LIMIT ?2",
            prefixed("e", ENROLLMENT_COLUMNS)
        )))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read due enrolments")?;
        rows.iter().map(enrollment).collect()
    }

    async fn advance_enrollments(
        &self,
        steps: &[Advance],
        now: Timestamp,
    ) -> Result<Vec<Advanced>, StoreError> {
        let mut tx = self.write().await?;
        let mut outcomes = Vec::with_capacity(steps.len());
        let mut messages = Vec::new();
        // (enrollment, step, drip, message, outcome) of each step taken.
        let mut sends = Vec::new();
        for a in steps {
            let e = &a.enrollment;
            let (step, next_at, state, reason, error) = a.next.target(e, a.taken.is_some());
            // The compare-and-set comes first: a step taken elsewhere, or an enrolment that
            // left, writes nothing of its own.
            let moved = sqlx::query(
                "UPDATE drip_enrollments SET step = ?1, next_at = ?2, state = ?3, reason = ?4,
                     error = ?5, updated_at = ?6
                 WHERE id = ?7 AND org_id = ?8 AND step = ?9 AND state = 'active'
                   AND EXISTS (SELECT 1 FROM drips d
                               WHERE d.id = drip_enrollments.drip_id AND d.status = 'active')",
            )
            .bind(i64::from(step))
            .bind(next_at.map(micros))
            .bind(state.as_str())
            .bind(reason)
            .bind(error)
            .bind(micros(now))
            .bind(e.id)
            .bind(e.org_id)
            .bind(i64::from(e.step))
            .execute(&mut *tx)
            .await
            .ctx("failed to advance an enrolment")?;
            if moved.rows_affected() != 1 {
                outcomes.push(Advanced::Moved);
                continue;
            }
            outcomes.push(Advanced::Done);
            match &a.taken {
                None => {}
                Some(StepTaken::Sent(message)) => {
                    sends.push((e, Some(message.id), "sent"));
                    messages.push((**message).clone());
                }
                Some(StepTaken::Skipped(reason)) => sends.push((e, None, reason.as_str())),
            }
        }
        if let Err(refusal) = broadcasts::insert_batch(&mut tx, &messages).await? {
            // Dropping the transaction rolls back every compare-and-set too.
            return Ok(vec![Advanced::Refused(refusal); steps.len()]);
        }
        for (e, message_id, outcome) in sends {
            sqlx::query(
                "INSERT INTO drip_sends (enrollment_id, step, drip_id, message_id, outcome,
                     created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(e.id)
            .bind(i64::from(e.step))
            .bind(e.drip_id)
            .bind(message_id)
            .bind(outcome)
            .bind(micros(now))
            .execute(&mut *tx)
            .await
            .ctx("failed to record a drip step")?;
        }
        tx.commit().await.ctx("failed to commit drip steps")?;
        Ok(outcomes)
    }

    async fn active_enrollments(
        &self,
        org_id: Uuid,
        phone: &str,
    ) -> Result<Vec<Enrollment>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM drip_enrollments
             WHERE org_id = ?1 AND phone = ?2 AND state = 'active' ORDER BY id"
        )))
        .bind(org_id)
        .bind(phone)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read a number's enrolments")?;
        rows.iter().map(enrollment).collect()
    }

    async fn get_enrollment(
        &self,
        org_id: Uuid,
        drip_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Enrollment>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM drip_enrollments
             WHERE id = ?1 AND drip_id = ?2 AND org_id = ?3"
        )))
        .bind(id)
        .bind(drip_id)
        .bind(org_id)
        .fetch_optional(&self.reader)
        .await
        .ctx("failed to read an enrolment")?;
        row.as_ref().map(enrollment).transpose()
    }

    async fn list_enrollments(
        &self,
        org_id: Uuid,
        drip_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Enrollment>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM drip_enrollments
             WHERE drip_id = ?1 AND org_id = ?2 AND id > coalesce(?3, x'')
             ORDER BY id LIMIT ?4"
        )))
        .bind(drip_id)
        .bind(org_id)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to list enrolments")?;
        let items = rows.iter().map(enrollment).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |e| e.id))
    }

    async fn enrollment_sends(
        &self,
        org_id: Uuid,
        enrollment_id: Uuid,
    ) -> Result<Vec<(u32, Option<Uuid>, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.step, s.message_id, s.outcome FROM drip_sends s
             JOIN drip_enrollments e ON e.id = s.enrollment_id
             WHERE s.enrollment_id = ?1 AND e.org_id = ?2 ORDER BY s.step",
        )
        .bind(enrollment_id)
        .bind(org_id)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read an enrolment's steps")?;
        rows.iter()
            .map(|row| Ok((convert::count(row.get(0))?, row.get(1), row.get(2))))
            .collect()
    }

    async fn drip_stats(&self, org_id: Uuid, drip_id: Uuid) -> Result<DripStats, StoreError> {
        let mut stats = DripStats::default();
        let rows = sqlx::query(
            "SELECT state, reason, count(*) FROM drip_enrollments
             WHERE drip_id = ?1 AND org_id = ?2 GROUP BY state, reason",
        )
        .bind(drip_id)
        .bind(org_id)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to count enrolments")?;
        for row in &rows {
            let state: String = row.get(0);
            let n = unsigned(row.get(2))?;
            stats.enrolled += n;
            match state.parse().map_err(StoreError::Corrupt)? {
                EnrollmentState::Active => stats.active += n,
                EnrollmentState::Completed => stats.completed += n,
                EnrollmentState::Exited => {
                    let reason: Option<String> = row.get(1);
                    *stats.exited.entry(reason.unwrap_or_default()).or_default() += n;
                }
            }
        }
        let rows = sqlx::query(
            "SELECT s.step, m.status, count(*) FROM drip_sends s
             JOIN drips d ON d.id = s.drip_id
             LEFT JOIN messages m ON m.id = s.message_id
             WHERE s.drip_id = ?1 AND d.org_id = ?2
             GROUP BY s.step, m.status ORDER BY s.step",
        )
        .bind(drip_id)
        .bind(org_id)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to count drip steps")?;
        for row in &rows {
            let step = convert::count(row.get(0))?;
            let status: Option<String> = row.get(1);
            let status = status.as_deref().map(convert::status).transpose()?;
            if stats.steps.last().is_none_or(|s| s.step != step) {
                stats.steps.push(StepStats {
                    step,
                    ..Default::default()
                });
            }
            if let Some(last) = stats.steps.last_mut() {
                last.count(status, unsigned(row.get(2))?);
            }
        }
        Ok(stats)
    }

    async fn last_replies(
        &self,
        org_id: Uuid,
        phones: &[String],
    ) -> Result<HashMap<String, Timestamp>, StoreError> {
        let mut last = HashMap::new();
        for chunk in phones.chunks(500) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT from_number, max(received_at) FROM inbound_messages WHERE org_id = ",
            );
            query.push_bind(org_id).push(" AND from_number IN (");
            let mut list = query.separated(", ");
            for phone in chunk {
                list.push_bind(phone);
            }
            query.push(") GROUP BY from_number");
            let rows = query
                .build()
                .fetch_all(&self.reader)
                .await
                .ctx("failed to look for replies")?;
            for row in &rows {
                last.insert(row.get(0), convert::timestamp(row.get(1))?);
            }
        }
        Ok(last)
    }

    async fn create_trigger(
        &self,
        t: &Trigger,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<CampaignCreation, StoreError> {
        let mut tx = self.write().await?;
        if let Some(record) = idempotency
            && let Some(previous) = messages::check_key(&mut tx, t.scope(), record, now).await?
        {
            return Ok(CampaignCreation::of_earlier(previous));
        }
        sqlx::query(
            "INSERT INTO triggers (id, org_id, mode, name, kind, event, active, spec, api_key_id,
                 swept_until, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .bind(t.id)
        .bind(t.org_id)
        .bind(t.mode.as_str())
        .bind(&t.name)
        .bind(t.kind.as_str())
        .bind(&t.event)
        .bind(t.active)
        .bind(t.spec.to_string())
        .bind(t.api_key_id)
        .bind(micros(t.swept_until))
        .bind(micros(t.created_at))
        .bind(micros(t.updated_at))
        .execute(&mut *tx)
        .await
        .ctx("failed to store a trigger")?;
        if let Some(record) = idempotency {
            messages::store_key(&mut tx, t.scope(), t.id, record, now).await?;
        }
        tx.commit().await.ctx("failed to commit a trigger")?;
        Ok(CampaignCreation::Created)
    }

    async fn get_trigger(&self, scope: Scope, id: Uuid) -> Result<Option<Trigger>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = ?1 AND org_id = ?2 AND mode = ?3"
        )))
        .bind(id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_optional(&self.reader)
        .await
        .ctx("failed to read a trigger")?;
        row.as_ref().map(trigger).transpose()
    }

    async fn list_triggers(
        &self,
        scope: Scope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Trigger>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers
             WHERE org_id = ?1 AND mode = ?2 AND id < coalesce(?3, x'ffffffffffffffffffffffffffffffff')
             ORDER BY id DESC LIMIT ?4"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to list triggers")?;
        let items = rows.iter().map(trigger).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |t| t.id))
    }

    async fn update_trigger(&self, t: &Trigger, read_at: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE triggers SET name = ?1, active = ?2, spec = ?3, updated_at = ?4
             WHERE id = ?5 AND org_id = ?6 AND mode = ?7 AND updated_at = ?8",
        )
        .bind(&t.name)
        .bind(t.active)
        .bind(t.spec.to_string())
        .bind(micros(t.updated_at))
        .bind(t.id)
        .bind(t.org_id)
        .bind(t.mode.as_str())
        .bind(micros(read_at))
        .execute(&self.writer)
        .await
        .ctx("failed to update a trigger")?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_trigger(&self, scope: Scope, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM triggers WHERE id = ?1 AND org_id = ?2 AND mode = ?3")
            .bind(id)
            .bind(scope.org_id)
            .bind(scope.mode.as_str())
            .execute(&self.writer)
            .await
            .ctx("failed to delete a trigger")?;
        Ok(done.rows_affected() == 1)
    }

    async fn active_triggers(&self, kind: TriggerKind) -> Result<Vec<Trigger>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE kind = ?1 AND active = 1 ORDER BY id"
        )))
        .bind(kind.as_str())
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read triggers")?;
        rows.iter().map(trigger).collect()
    }

    async fn event_triggers(&self, scope: Scope, event: &str) -> Result<Vec<Trigger>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers
             WHERE org_id = ?1 AND mode = ?2 AND kind = 'event' AND event = ?3 AND active = 1
             ORDER BY id"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(event)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read an event's triggers")?;
        rows.iter().map(trigger).collect()
    }

    async fn trigger_candidates(
        &self,
        t: &Trigger,
        rule: Option<&Rule>,
        from: Timestamp,
        to: Timestamp,
        after: Option<(Timestamp, Uuid)>,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Contact>, StoreError> {
        let compiled = rule.map(|rule| sql::compile(rule, Dialect::Sqlite, now, 8));
        let filter = compiled
            .as_ref()
            .map_or_else(String::new, |c| format!("AND {}", c.sql));
        // The fragment is this crate's compiler output: fixed SQL with numbered placeholders.
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM contacts c
             WHERE c.org_id = ?1 AND c.created_at >= ?2 AND c.created_at < ?3
               AND (?4 IS NULL OR c.created_at > ?4 OR (c.created_at = ?4 AND c.id > ?5))
               AND NOT EXISTS (SELECT 1 FROM trigger_firings f
                               WHERE f.trigger_id = ?6 AND f.contact_id = c.id)
               {filter}
             ORDER BY c.created_at, c.id LIMIT ?7",
            prefixed("c", contacts::COLUMNS)
        )))
        .bind(t.org_id)
        .bind(micros(from))
        .bind(micros(to))
        .bind(after.map(|(at, _)| micros(at)))
        .bind(after.map(|(_, id)| id))
        .bind(t.id)
        .bind(i64::from(limit));
        let query = match &compiled {
            Some(c) => bind_rule(query, &c.binds),
            None => query,
        };
        let rows = query
            .fetch_all(&self.reader)
            .await
            .ctx("failed to read a trigger's contacts")?;
        rows.iter().map(contacts::contact).collect()
    }

    async fn set_swept(&self, trigger_id: Uuid, until: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE triggers SET swept_until = max(swept_until, ?1) WHERE id = ?2")
            .bind(micros(until))
            .bind(trigger_id)
            .execute(&self.writer)
            .await
            .ctx("failed to record a trigger's sweep")?;
        Ok(())
    }

    async fn fire(&self, f: &Firing, action: FiringAction) -> Result<Fired, StoreError> {
        let mut tx = self.write().await?;
        if let Some(previous) = read_firing(&mut tx, f.org_id, f.trigger_id, &f.key).await? {
            return Ok(Fired::Already(previous));
        }
        let mut stored = f.clone();
        match action {
            FiringAction::Nothing => {}
            FiringAction::Send(message) => {
                stored.message_id = Some(message.id);
                if let Err(refusal) =
                    broadcasts::insert_batch(&mut tx, std::slice::from_ref(&*message)).await?
                {
                    return Ok(Fired::Refused(refusal));
                }
            }
            FiringAction::Enrol(enrollment) => {
                if insert_enrollments(&mut tx, std::slice::from_ref(&*enrollment)).await? == 1 {
                    stored.enrollment_id = Some(enrollment.id);
                } else {
                    let existing: Option<Uuid> = sqlx::query_scalar(
                        "SELECT id FROM drip_enrollments
                         WHERE drip_id = ?1 AND phone = ?2 AND org_id = ?3",
                    )
                    .bind(enrollment.drip_id)
                    .bind(&enrollment.phone)
                    .bind(enrollment.org_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .ctx("failed to read an enrolment")?;
                    stored.enrollment_id = existing;
                    stored.outcome = "already_enrolled".into();
                }
            }
        }
        sqlx::query(
            "INSERT INTO trigger_firings (id, org_id, trigger_id, key, contact_id, phone, outcome,
                 message_id, enrollment_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(stored.id)
        .bind(stored.org_id)
        .bind(stored.trigger_id)
        .bind(&stored.key)
        .bind(stored.contact_id)
        .bind(&stored.phone)
        .bind(&stored.outcome)
        .bind(stored.message_id)
        .bind(stored.enrollment_id)
        .bind(micros(stored.created_at))
        .execute(&mut *tx)
        .await
        .ctx("failed to record a firing")?;
        tx.commit().await.ctx("failed to commit a firing")?;
        Ok(Fired::New(stored))
    }

    async fn get_firing(
        &self,
        org_id: Uuid,
        trigger_id: Uuid,
        key: &str,
    ) -> Result<Option<Firing>, StoreError> {
        let mut conn = self.reader.acquire().await.ctx("failed to connect")?;
        read_firing(&mut conn, org_id, trigger_id, key).await
    }

    async fn list_firings(
        &self,
        org_id: Uuid,
        trigger_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Firing>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FIRING_COLUMNS} FROM trigger_firings
             WHERE trigger_id = ?1 AND org_id = ?2
               AND id < coalesce(?3, x'ffffffffffffffffffffffffffffffff')
             ORDER BY id DESC LIMIT ?4"
        )))
        .bind(trigger_id)
        .bind(org_id)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to list firings")?;
        let items = rows.iter().map(firing).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |f| f.id))
    }
}

/// `columns` (a comma-separated list) each prefixed with the table alias `alias`.
fn prefixed(alias: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}
