//! Automation on PostgreSQL: drips and their enrolments, each step taken in one transaction with
//! its message, and triggers whose firings are unique per key.
//!
//! Concurrency rests on row locks and unique indexes rather than on a single writer: a step is
//! taken by a compare-and-set `UPDATE` on the enrolment (a second process waits for the row,
//! then finds the step moved), and a firing claims its `(trigger_id, key)` row before doing
//! anything else (a second process with the same key waits for the first to commit or roll
//! back, then either finds the firing or takes the key itself).

use async_trait::async_trait;
use herald_store::segment::Rule;
use herald_store::segment::sql::{self, Dialect};
use herald_store::*;
use jiff::Timestamp;
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use uuid::Uuid;

use crate::PostgresStore;
use crate::audience::bind_rule;
use crate::convert::{self, Ctx, col, int, ts};
use crate::{broadcasts, contacts, messages};

const DRIP_COLUMNS: &str =
    "id, org_id, mode, name, status, spec, api_key_id, created_at, updated_at";

/// Enrolment columns, of `drip_enrollments e`, in the order [`enrollment`] expects.
const ENROLLMENT_COLUMNS: &str = "e.id, e.org_id, e.drip_id, e.phone, e.contact_id, e.source, \
     e.step, e.next_at, e.state, e.reason, e.error, e.enrolled_at, e.updated_at";

const TRIGGER_COLUMNS: &str = "id, org_id, mode, name, kind, event, active, spec, api_key_id, \
     swept_until, created_at, updated_at";

const FIRING_COLUMNS: &str = "id, org_id, trigger_id, key, contact_id, phone, outcome, \
     message_id, enrollment_id, created_at";

/// The highest uuid, where paging newest first starts.
const LAST_ID: &str = "ffffffff-ffff-ffff-ffff-ffffffffffff";

/// The lowest uuid, where paging in id order starts.
const FIRST_ID: &str = "00000000-0000-0000-0000-000000000000";

/// Enrolments per `INSERT`: 13 parameters each stays far below PostgreSQL's 65,535.
const ENROL_CHUNK: usize = 1_000;

fn drip(row: &PgRow) -> Result<Drip, StoreError> {
    let status: String = col(row, 4)?;
    let Json(spec): Json<Value> = col(row, 5)?;
    Ok(Drip {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        mode: convert::mode(row, 2)?,
        name: col(row, 3)?,
        status: status.parse().map_err(StoreError::Corrupt)?,
        spec,
        api_key_id: col(row, 6)?,
        created_at: convert::timestamp(row, 7)?,
        updated_at: convert::timestamp(row, 8)?,
    })
}

fn enrollment(row: &PgRow) -> Result<Enrollment, StoreError> {
    let state: String = col(row, 8)?;
    Ok(Enrollment {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        drip_id: col(row, 2)?,
        phone: col(row, 3)?,
        contact_id: col(row, 4)?,
        source: col(row, 5)?,
        step: convert::count(row, 6)?,
        next_at: convert::opt_timestamp(row, 7)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        reason: col(row, 9)?,
        error: col(row, 10)?,
        enrolled_at: convert::timestamp(row, 11)?,
        updated_at: convert::timestamp(row, 12)?,
    })
}

fn trigger(row: &PgRow) -> Result<Trigger, StoreError> {
    let kind: String = col(row, 4)?;
    let Json(spec): Json<Value> = col(row, 7)?;
    Ok(Trigger {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        mode: convert::mode(row, 2)?,
        name: col(row, 3)?,
        kind: kind.parse().map_err(StoreError::Corrupt)?,
        event: col(row, 5)?,
        active: col(row, 6)?,
        spec,
        api_key_id: col(row, 8)?,
        swept_until: convert::timestamp(row, 9)?,
        created_at: convert::timestamp(row, 10)?,
        updated_at: convert::timestamp(row, 11)?,
    })
}

fn firing(row: &PgRow) -> Result<Firing, StoreError> {
    Ok(Firing {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        trigger_id: col(row, 2)?,
        key: col(row, 3)?,
        contact_id: col(row, 4)?,
        phone: col(row, 5)?,
        outcome: col(row, 6)?,
        message_id: col(row, 7)?,
        enrollment_id: col(row, 8)?,
        created_at: convert::timestamp(row, 9)?,
    })
}

fn big(row: &PgRow, index: usize) -> Result<u64, StoreError> {
    let value: i64 = col(row, index)?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("count {value}")))
}

/// Insert enrolments, leaving every number already in its drip as it is; answers how many were
/// inserted. They go in (drip, number) order so two concurrent batches that share numbers wait
/// for each other's unique-index entries in the same order instead of deadlocking.
async fn insert_enrollments(
    conn: &mut PgConnection,
    enrollments: &[Enrollment],
) -> Result<u64, StoreError> {
    let mut sorted: Vec<&Enrollment> = enrollments.iter().collect();
    sorted.sort_by(|a, b| (a.drip_id, &a.phone).cmp(&(b.drip_id, &b.phone)));
    let mut inserted = 0;
    for chunk in sorted.chunks(ENROL_CHUNK) {
        let mut query = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO drip_enrollments (id, org_id, drip_id, phone, contact_id, source, step, \
             next_at, state, reason, error, enrolled_at, updated_at) ",
        );
        let mut steps = Vec::with_capacity(chunk.len());
        for e in chunk {
            steps.push(int(e.step)?);
        }
        query.push_values(chunk.iter().zip(steps), |mut row, (e, step)| {
            row.push_bind(e.id)
                .push_bind(e.org_id)
                .push_bind(e.drip_id)
                .push_bind(e.phone.clone())
                .push_bind(e.contact_id)
                .push_bind(e.source.clone())
                .push_bind(step)
                .push_bind(e.next_at.map(ts))
                .push_bind(e.state.as_str())
                .push_bind(e.reason.clone())
                .push_bind(e.error.clone())
                .push_bind(ts(e.enrolled_at))
                .push_bind(ts(e.updated_at));
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
    conn: &mut PgConnection,
    org_id: Uuid,
    trigger_id: Uuid,
    key: &str,
) -> Result<Option<Firing>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FIRING_COLUMNS} FROM trigger_firings
         WHERE trigger_id = $1 AND key = $2 AND org_id = $3"
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
impl AutomationStore for PostgresStore {
    async fn create_drip(
        &self,
        d: &Drip,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<CampaignCreation, StoreError> {
        let mut tx = self.begin().await?;
        // Taking the key first makes a concurrent retry wait for this transaction.
        if let Some(record) = idempotency
            && let Some(previous) =
                messages::take_key(&mut tx, d.scope(), d.id, record, now).await?
        {
            return Ok(CampaignCreation::of_earlier(previous));
        }
        sqlx::query(
            "INSERT INTO drips (id, org_id, mode, name, status, spec, api_key_id, created_at,
                 updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(d.id)
        .bind(d.org_id)
        .bind(d.mode.as_str())
        .bind(&d.name)
        .bind(d.status.as_str())
        .bind(Json(&d.spec))
        .bind(d.api_key_id)
        .bind(ts(d.created_at))
        .bind(ts(d.updated_at))
        .execute(&mut *tx)
        .await
        .ctx("failed to store a drip")?;
        tx.commit().await.ctx("failed to commit a drip")?;
        Ok(CampaignCreation::Created)
    }

    async fn get_drip(&self, scope: Scope, id: Uuid) -> Result<Option<Drip>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DRIP_COLUMNS} FROM drips WHERE id = $1 AND org_id = $2 AND mode = $3"
        )))
        .bind(id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_optional(&self.pool)
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
             WHERE org_id = $1 AND mode = $2 AND id < coalesce($3::uuid, '{LAST_ID}')
             ORDER BY id DESC LIMIT $4"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to list drips")?;
        let items = rows.iter().map(drip).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |d| d.id))
    }

    async fn update_drip(&self, d: &Drip, read_at: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE drips SET name = $1, status = $2, spec = $3, updated_at = $4
             WHERE id = $5 AND org_id = $6 AND mode = $7 AND updated_at = $8",
        )
        .bind(&d.name)
        .bind(d.status.as_str())
        .bind(Json(&d.spec))
        .bind(ts(d.updated_at))
        .bind(d.id)
        .bind(d.org_id)
        .bind(d.mode.as_str())
        .bind(ts(read_at))
        .execute(&self.pool)
        .await
        .ctx("failed to update a drip")?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_drip(&self, scope: Scope, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM drips WHERE id = $1 AND org_id = $2 AND mode = $3")
            .bind(id)
            .bind(scope.org_id)
            .bind(scope.mode.as_str())
            .execute(&self.pool)
            .await
            .ctx("failed to delete a drip")?;
        Ok(done.rows_affected() == 1)
    }

    async fn enrol(&self, enrollments: &[Enrollment]) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
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
            "SELECT {ENROLLMENT_COLUMNS} FROM drip_enrollments e JOIN drips d ON d.id = e.drip_id
             WHERE e.state = 'active' AND e.next_at <= $1 AND d.status = 'active'
             ORDER BY e.next_at LIMIT $2"
        )))
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read due enrolments")?;
        rows.iter().map(enrollment).collect()
    }

    async fn advance_enrollments(
        &self,
        steps: &[Advance],
        now: Timestamp,
    ) -> Result<Vec<Advanced>, StoreError> {
        // Rows are written in id order, so two processes taking overlapping batches wait for
        // each other instead of deadlocking. One statement per row: each is a primary-key
        // probe whatever the table's statistics say (a batch just enrolled has none yet).
        let mut order: Vec<&Advance> = steps.iter().collect();
        order.sort_by_key(|a| a.enrollment.id);
        let mut tx = self.begin().await?;
        let mut moved = Vec::with_capacity(steps.len());
        for a in order {
            let e = &a.enrollment;
            let (step, next_at, state, reason, error) = a.next.target(e, a.taken.is_some());
            // The compare-and-set comes first: a step taken elsewhere, or an enrolment that
            // left, writes nothing of its own.
            let done = sqlx::query(
                "UPDATE drip_enrollments SET step = $1, next_at = $2, state = $3, reason = $4,
                     error = $5, updated_at = $6
                 WHERE id = $7 AND org_id = $8 AND step = $9 AND state = 'active'
                   AND EXISTS (SELECT 1 FROM drips d
                               WHERE d.id = drip_enrollments.drip_id AND d.status = 'active')",
            )
            .bind(int(step)?)
            .bind(next_at.map(ts))
            .bind(state.as_str())
            .bind(reason)
            .bind(error)
            .bind(ts(now))
            .bind(e.id)
            .bind(e.org_id)
            .bind(int(e.step)?)
            .execute(&mut *tx)
            .await
            .ctx("failed to advance an enrolment")?;
            if done.rows_affected() == 1 {
                moved.push(e.id);
            }
        }
        let moved: std::collections::HashSet<Uuid> = moved.into_iter().collect();
        let mut outcomes = Vec::with_capacity(steps.len());
        let mut messages = Vec::new();
        let (mut send_ids, mut send_steps, mut send_drips, mut send_messages, mut outcomes_of) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for a in steps {
            let e = &a.enrollment;
            if !moved.contains(&e.id) {
                outcomes.push(Advanced::Moved);
                continue;
            }
            outcomes.push(Advanced::Done);
            let (message_id, outcome) = match &a.taken {
                None => continue,
                Some(StepTaken::Sent(message)) => {
                    messages.push((**message).clone());
                    (Some(message.id), "sent")
                }
                Some(StepTaken::Skipped(reason)) => (None, reason.as_str()),
            };
            send_ids.push(e.id);
            send_steps.push(int(e.step)?);
            send_drips.push(e.drip_id);
            send_messages.push(message_id);
            outcomes_of.push(outcome);
        }
        if let Err(refusal) = broadcasts::insert_batch(&mut tx, &messages).await? {
            // Dropping the transaction rolls back every compare-and-set too.
            return Ok(vec![Advanced::Refused(refusal); steps.len()]);
        }
        if !send_ids.is_empty() {
            sqlx::query(
                "INSERT INTO drip_sends (enrollment_id, step, drip_id, message_id, outcome,
                     created_at)
                 SELECT u.*, $6 FROM unnest($1::uuid[], $2::int4[], $3::uuid[], $4::uuid[],
                                            $5::text[]) AS u",
            )
            .bind(&send_ids)
            .bind(&send_steps)
            .bind(&send_drips)
            .bind(&send_messages)
            .bind(&outcomes_of)
            .bind(ts(now))
            .execute(&mut *tx)
            .await
            .ctx("failed to record drip steps")?;
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
            "SELECT {ENROLLMENT_COLUMNS} FROM drip_enrollments e
             WHERE e.org_id = $1 AND e.phone = $2 AND e.state = 'active' ORDER BY e.id"
        )))
        .bind(org_id)
        .bind(phone)
        .fetch_all(&self.pool)
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
            "SELECT {ENROLLMENT_COLUMNS} FROM drip_enrollments e
             WHERE e.id = $1 AND e.drip_id = $2 AND e.org_id = $3"
        )))
        .bind(id)
        .bind(drip_id)
        .bind(org_id)
        .fetch_optional(&self.pool)
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
            "SELECT {ENROLLMENT_COLUMNS} FROM drip_enrollments e
             WHERE e.drip_id = $1 AND e.org_id = $2 AND e.id > coalesce($3::uuid, '{FIRST_ID}')
             ORDER BY e.id LIMIT $4"
        )))
        .bind(drip_id)
        .bind(org_id)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
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
             WHERE s.enrollment_id = $1 AND e.org_id = $2 ORDER BY s.step",
        )
        .bind(enrollment_id)
        .bind(org_id)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read an enrolment's steps")?;
        rows.iter()
            .map(|row| Ok((convert::count(row, 0)?, col(row, 1)?, col(row, 2)?)))
            .collect()
    }

    async fn drip_stats(&self, org_id: Uuid, drip_id: Uuid) -> Result<DripStats, StoreError> {
        let mut stats = DripStats::default();
        let rows = sqlx::query(
            "SELECT state, reason, count(*) FROM drip_enrollments
             WHERE drip_id = $1 AND org_id = $2 GROUP BY state, reason",
        )
        .bind(drip_id)
        .bind(org_id)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to count enrolments")?;
        for row in &rows {
            let state: String = col(row, 0)?;
            let n = big(row, 2)?;
            stats.enrolled += n;
            match state.parse().map_err(StoreError::Corrupt)? {
                EnrollmentState::Active => stats.active += n,
                EnrollmentState::Completed => stats.completed += n,
                EnrollmentState::Exited => {
                    let reason: Option<String> = col(row, 1)?;
                    *stats.exited.entry(reason.unwrap_or_default()).or_default() += n;
                }
            }
        }
        let rows = sqlx::query(
            "SELECT s.step, m.status, count(*) FROM drip_sends s
             JOIN drips d ON d.id = s.drip_id
             LEFT JOIN messages m ON m.id = s.message_id
             WHERE s.drip_id = $1 AND d.org_id = $2
             GROUP BY s.step, m.status ORDER BY s.step",
        )
        .bind(drip_id)
        .bind(org_id)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to count drip steps")?;
        for row in &rows {
            let step = convert::count(row, 0)?;
            let status = match col::<Option<&str>>(row, 1)? {
                Some(_) => Some(convert::status(row, 1)?),
                None => None,
            };
            if stats.steps.last().is_none_or(|s| s.step != step) {
                stats.steps.push(StepStats {
                    step,
                    ..Default::default()
                });
            }
            if let Some(last) = stats.steps.last_mut() {
                last.count(status, big(row, 2)?);
            }
        }
        Ok(stats)
    }

    async fn last_replies(
        &self,
        org_id: Uuid,
        phones: &[String],
    ) -> Result<std::collections::HashMap<String, Timestamp>, StoreError> {
        // One index probe per number: a plan over the whole organization's inbound messages
        // is never chosen this way.
        let rows = sqlx::query(
            "SELECT p.phone, (SELECT max(i.received_at) FROM inbound_messages i
                              WHERE i.org_id = $1 AND i.from_number = p.phone)
             FROM unnest($2::text[]) AS p(phone)",
        )
        .bind(org_id)
        .bind(phones)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to look for replies")?;
        let mut last = std::collections::HashMap::new();
        for row in &rows {
            if let Some(at) = convert::opt_timestamp(row, 1)? {
                last.insert(col(row, 0)?, at);
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
        let mut tx = self.begin().await?;
        // Taking the key first makes a concurrent retry wait for this transaction.
        if let Some(record) = idempotency
            && let Some(previous) =
                messages::take_key(&mut tx, t.scope(), t.id, record, now).await?
        {
            return Ok(CampaignCreation::of_earlier(previous));
        }
        sqlx::query(
            "INSERT INTO triggers (id, org_id, mode, name, kind, event, active, spec, api_key_id,
                 swept_until, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(t.id)
        .bind(t.org_id)
        .bind(t.mode.as_str())
        .bind(&t.name)
        .bind(t.kind.as_str())
        .bind(&t.event)
        .bind(t.active)
        .bind(Json(&t.spec))
        .bind(t.api_key_id)
        .bind(ts(t.swept_until))
        .bind(ts(t.created_at))
        .bind(ts(t.updated_at))
        .execute(&mut *tx)
        .await
        .ctx("failed to store a trigger")?;
        tx.commit().await.ctx("failed to commit a trigger")?;
        Ok(CampaignCreation::Created)
    }

    async fn get_trigger(&self, scope: Scope, id: Uuid) -> Result<Option<Trigger>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = $1 AND org_id = $2 AND mode = $3"
        )))
        .bind(id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_optional(&self.pool)
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
             WHERE org_id = $1 AND mode = $2 AND id < coalesce($3::uuid, '{LAST_ID}')
             ORDER BY id DESC LIMIT $4"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to list triggers")?;
        let items = rows.iter().map(trigger).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |t| t.id))
    }

    async fn update_trigger(&self, t: &Trigger, read_at: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE triggers SET name = $1, active = $2, spec = $3, updated_at = $4
             WHERE id = $5 AND org_id = $6 AND mode = $7 AND updated_at = $8",
        )
        .bind(&t.name)
        .bind(t.active)
        .bind(Json(&t.spec))
        .bind(ts(t.updated_at))
        .bind(t.id)
        .bind(t.org_id)
        .bind(t.mode.as_str())
        .bind(ts(read_at))
        .execute(&self.pool)
        .await
        .ctx("failed to update a trigger")?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_trigger(&self, scope: Scope, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM triggers WHERE id = $1 AND org_id = $2 AND mode = $3")
            .bind(id)
            .bind(scope.org_id)
            .bind(scope.mode.as_str())
            .execute(&self.pool)
            .await
            .ctx("failed to delete a trigger")?;
        Ok(done.rows_affected() == 1)
    }

    async fn active_triggers(&self, kind: TriggerKind) -> Result<Vec<Trigger>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE kind = $1 AND active ORDER BY id"
        )))
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read triggers")?;
        rows.iter().map(trigger).collect()
    }

    async fn event_triggers(&self, scope: Scope, event: &str) -> Result<Vec<Trigger>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers
             WHERE org_id = $1 AND mode = $2 AND kind = 'event' AND event = $3 AND active
             ORDER BY id"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(event)
        .fetch_all(&self.pool)
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
        let compiled = rule.map(|rule| sql::compile(rule, Dialect::Postgres, now, 8));
        let filter = compiled
            .as_ref()
            .map_or_else(String::new, |c| format!("AND {}", c.sql));
        // The fragment is this crate's compiler output: fixed SQL with numbered placeholders.
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM contacts c
             WHERE c.org_id = $1 AND c.created_at >= $2 AND c.created_at < $3
               AND ($4::timestamptz IS NULL OR (c.created_at, c.id) > ($4, $5::uuid))
               AND NOT EXISTS (SELECT 1 FROM trigger_firings f
                               WHERE f.trigger_id = $6 AND f.contact_id = c.id)
               {filter}
             ORDER BY c.created_at, c.id LIMIT $7",
            prefixed("c", contacts::COLUMNS)
        )))
        .bind(t.org_id)
        .bind(ts(from))
        .bind(ts(to))
        .bind(after.map(|(at, _)| ts(at)))
        .bind(after.map(|(_, id)| id))
        .bind(t.id)
        .bind(i64::from(limit));
        let query = match &compiled {
            Some(c) => bind_rule(query, &c.binds),
            None => query,
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .ctx("failed to read a trigger's contacts")?;
        rows.iter().map(contacts::contact).collect()
    }

    async fn set_swept(&self, trigger_id: Uuid, until: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE triggers SET swept_until = greatest(swept_until, $1) WHERE id = $2")
            .bind(ts(until))
            .bind(trigger_id)
            .execute(&self.pool)
            .await
            .ctx("failed to record a trigger's sweep")?;
        Ok(())
    }

    async fn fire(&self, f: &Firing, action: FiringAction) -> Result<Fired, StoreError> {
        let mut stored = f.clone();
        if let FiringAction::Send(message) = &action {
            stored.message_id = Some(message.id);
        }
        let mut tx = self.begin().await?;
        // Claim the key before anything else: a concurrent firing with the same key waits on
        // the unique index until this transaction ends, then inserts nothing and reads ours
        // (or, if we rolled back, claims the key itself).
        let claimed: Option<i32> = sqlx::query_scalar(
            "INSERT INTO trigger_firings (id, org_id, trigger_id, key, contact_id, phone, outcome,
                 message_id, enrollment_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (trigger_id, key) DO NOTHING
             RETURNING 1",
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
        .bind(ts(stored.created_at))
        .fetch_optional(&mut *tx)
        .await
        .ctx("failed to record a firing")?;
        if claimed.is_none() {
            // READ COMMITTED: this statement sees the committed firing the insert collided with.
            let previous = read_firing(&mut tx, f.org_id, f.trigger_id, &f.key)
                .await?
                .ok_or_else(|| {
                    StoreError::Corrupt("a firing's key is held by another organization".into())
                })?;
            return Ok(Fired::Already(previous));
        }
        match action {
            FiringAction::Nothing => {}
            FiringAction::Send(message) => {
                // Dropping the transaction on a refusal rolls back the firing too.
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
                         WHERE drip_id = $1 AND phone = $2 AND org_id = $3",
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
                sqlx::query(
                    "UPDATE trigger_firings SET outcome = $1, enrollment_id = $2 WHERE id = $3",
                )
                .bind(&stored.outcome)
                .bind(stored.enrollment_id)
                .bind(stored.id)
                .execute(&mut *tx)
                .await
                .ctx("failed to record a firing's enrolment")?;
            }
        }
        tx.commit().await.ctx("failed to commit a firing")?;
        Ok(Fired::New(stored))
    }

    async fn get_firing(
        &self,
        org_id: Uuid,
        trigger_id: Uuid,
        key: &str,
    ) -> Result<Option<Firing>, StoreError> {
        let mut conn = self.connection().await?;
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
             WHERE trigger_id = $1 AND org_id = $2 AND id < coalesce($3::uuid, '{LAST_ID}')
             ORDER BY id DESC LIMIT $4"
        )))
        .bind(trigger_id)
        .bind(org_id)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
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
