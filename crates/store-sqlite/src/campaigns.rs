//! Campaigns on SQLite: the campaign row and its lifecycle, runs with their leases, the
//! audience snapshot, and releases that store messages and mark recipients in one transaction.

use async_trait::async_trait;
use herald_store::*;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use crate::SqliteStore;
use crate::bulk;
use crate::convert::{self, Ctx, micros};
use crate::messages;

const CAMPAIGN_COLUMNS: &str = "id, org_id, mode, name, status, spec, api_key_id, next_run_at, \
     current_run, runs, error, created_at, updated_at";

const RUN_COLUMNS: &str = "id, campaign_id, org_id, mode, occurrence, phase, audience, position, \
     owner, lease_until, next_release_at, error, created_at, finished_at, ab_winner, ab_decided_at";

/// Recipient columns joined with their message, in the order [`recipient`] expects (`cr` is
/// the recipient, `m` its message).
const RECIPIENT_COLUMNS: &str = "cr.seq, cr.phone, cr.contact_id, cr.country, cr.variant, \
     cr.body, cr.due_at, cr.state, cr.reason, cr.message_id, m.status, m.provider, \
     m.provider_message_id, m.estimated_cost, m.actual_cost, m.error_code, m.attempts, \
     (SELECT min(e.occurred_at) FROM message_events e WHERE e.message_id = m.id AND e.status = 'sent'), \
     (SELECT min(e.occurred_at) FROM message_events e WHERE e.message_id = m.id AND e.status = 'delivered')";

fn json(text: Option<String>, what: &str) -> Result<Option<serde_json::Value>, StoreError> {
    text.map(|text| {
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    })
    .transpose()
}

fn unsigned(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("count {value}")))
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn campaign(row: &SqliteRow) -> Result<Campaign, StoreError> {
    let status: String = row.get(4);
    Ok(Campaign {
        id: row.get(0),
        org_id: row.get(1),
        mode: convert::mode(row.get(2))?,
        name: row.get(3),
        status: status.parse().map_err(StoreError::Corrupt)?,
        spec: json(Some(row.get(5)), "campaign spec")?.unwrap_or_default(),
        api_key_id: row.get(6),
        next_run_at: convert::opt_timestamp(row.get(7))?,
        current_run: row.get(8),
        runs: convert::count(row.get(9))?,
        error: row.get(10),
        created_at: convert::timestamp(row.get(11))?,
        updated_at: convert::timestamp(row.get(12))?,
    })
}

fn run(row: &SqliteRow) -> Result<CampaignRun, StoreError> {
    let phase: String = row.get(5);
    Ok(CampaignRun {
        id: row.get(0),
        campaign_id: row.get(1),
        org_id: row.get(2),
        mode: convert::mode(row.get(3))?,
        occurrence: convert::timestamp(row.get(4))?,
        phase: phase.parse().map_err(StoreError::Corrupt)?,
        audience: unsigned(row.get(6))?,
        position: json(row.get(7), "run position")?,
        lease: match (row.get::<Option<Uuid>, _>(8), row.get::<Option<i64>, _>(9)) {
            (Some(owner), Some(until)) => Some(Lease {
                owner,
                until: convert::timestamp(until)?,
            }),
            _ => None,
        },
        next_release_at: convert::opt_timestamp(row.get(10))?,
        error: row.get(11),
        created_at: convert::timestamp(row.get(12))?,
        finished_at: convert::opt_timestamp(row.get(13))?,
        ab_winner: match (row.get::<Option<i64>, _>(14), row.get::<Option<i64>, _>(15)) {
            (Some(variant), Some(at)) => Some((
                u16::try_from(variant).map_err(|_| StoreError::Corrupt("A/B winner".into()))?,
                convert::timestamp(at)?,
            )),
            _ => None,
        },
    })
}

fn recipient(row: &SqliteRow) -> Result<RunRecipient, StoreError> {
    let state: String = row.get(7);
    let status: Option<String> = row.get(10);
    Ok(RunRecipient {
        seq: unsigned(row.get(0))?,
        phone: row.get(1),
        contact_id: row.get(2),
        country: convert::opt_region(row.get(3))?,
        variant: u16::try_from(row.get::<i64, _>(4))
            .map_err(|_| StoreError::Corrupt("recipient variant".into()))?,
        body: row.get(5),
        due_at: convert::timestamp(row.get(6))?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        reason: row.get(8),
        message_id: row.get(9),
        status: status.as_deref().map(convert::status).transpose()?,
        provider: row.get(11),
        provider_message_id: row.get(12),
        estimated_cost: row.get(13),
        actual_cost: row.get(14),
        error_code: row.get(15),
        attempts: row
            .get::<Option<i64>, _>(16)
            .map(convert::count)
            .transpose()?
            .unwrap_or(0),
        sent_at: convert::opt_timestamp(row.get(17))?,
        delivered_at: convert::opt_timestamp(row.get(18))?,
    })
}

async fn read_campaign(
    conn: &mut SqliteConnection,
    scope: Scope,
    id: Uuid,
) -> Result<Option<Campaign>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = ?1 AND org_id = ?2 AND mode = ?3"
    )))
    .bind(id)
    .bind(scope.org_id)
    .bind(scope.mode.as_str())
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to read a campaign")?;
    row.as_ref().map(campaign).transpose()
}

/// Whether the run may still be written by `run.lease`'s owner: its campaign is running, it is
/// the campaign's current run, in `phases`, and held by that owner.
async fn still_held(
    conn: &mut SqliteConnection,
    run: &CampaignRun,
    phases: &[RunPhase],
) -> Result<bool, StoreError> {
    let Some(lease) = run.lease else {
        return Ok(false);
    };
    let row = sqlx::query(
        "SELECT r.phase, r.owner FROM campaign_runs r JOIN campaigns c ON c.id = r.campaign_id
         WHERE r.id = ?1 AND c.status = 'running' AND c.current_run = r.id",
    )
    .bind(run.id)
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to read a campaign run")?;
    let Some(row) = row else {
        return Ok(false);
    };
    let phase: RunPhase = row
        .get::<String, _>(0)
        .parse()
        .map_err(StoreError::Corrupt)?;
    let owner: Option<Uuid> = row.get(1);
    Ok(phases.contains(&phase) && owner == Some(lease.owner))
}

/// Hold (or, `resume`, release again) the queued messages of a run.
async fn hold_messages(
    conn: &mut SqliteConnection,
    run_id: Uuid,
    resume: Option<Timestamp>,
) -> Result<(), StoreError> {
    let held = micros(held_until());
    let query = match resume {
        None => sqlx::query(
            "UPDATE messages SET due_at = ?2 WHERE campaign_run_id = ?1 AND status = 'queued'",
        )
        .bind(run_id)
        .bind(held),
        Some(now) => sqlx::query(
            "UPDATE messages SET due_at = ?3
             WHERE campaign_run_id = ?1 AND status = 'queued' AND due_at >= ?2",
        )
        .bind(run_id)
        .bind(held)
        .bind(micros(now)),
    };
    query
        .execute(&mut *conn)
        .await
        .ctx("failed to hold a campaign's messages")?;
    Ok(())
}

/// Whether anything of the run is still pending: a recipient not yet released, or a message
/// not yet settled. The recipients come first: while they wait, the messages are not read.
async fn unsettled(conn: &mut SqliteConnection, run_id: Uuid) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM campaign_recipients
                        WHERE run_id = ?1 AND state = 'pending')
             OR EXISTS (SELECT 1 FROM messages WHERE campaign_run_id = ?1
                        AND status IN ('scheduled', 'queued', 'sending', 'unknown'))",
    )
    .bind(run_id)
    .fetch_one(&mut *conn)
    .await
    .ctx("failed to check a run is settled")
}

/// Cancel the run's messages not yet handed to a provider, releasing their credits.
async fn cancel_messages(
    conn: &mut SqliteConnection,
    run_id: Uuid,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM messages
         WHERE campaign_run_id = ?1 AND status IN ('queued', 'scheduled')",
    )
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await
    .ctx("failed to read a run's unsent messages")?;
    if ids.is_empty() {
        return Ok(0);
    }
    let mut batch = Batch::new(crate::queue::load_states(conn, &ids).await?, now);
    let canceled = ids
        .iter()
        .filter(|id| matches!(batch.apply_cancel(**id), Some(Ok(()))))
        .count() as u64;
    crate::queue::write_batch(conn, batch).await?;
    Ok(canceled)
}

#[async_trait]
impl CampaignStore for SqliteStore {
    async fn create_campaign(
        &self,
        c: &Campaign,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<CampaignCreation, StoreError> {
        let mut tx = self.write().await?;
        if let Some(record) = idempotency
            && let Some(previous) = messages::check_key(&mut tx, c.scope(), record, now).await?
        {
            return Ok(CampaignCreation::of_earlier(previous));
        }
        sqlx::query(
            "INSERT INTO campaigns (id, org_id, mode, name, status, spec, api_key_id,
                 next_run_at, current_run, runs, error, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, 0, NULL, ?9, ?10)",
        )
        .bind(c.id)
        .bind(c.org_id)
        .bind(c.mode.as_str())
        .bind(&c.name)
        .bind(c.status.as_str())
        .bind(c.spec.to_string())
        .bind(c.api_key_id)
        .bind(c.next_run_at.map(micros))
        .bind(micros(c.created_at))
        .bind(micros(c.updated_at))
        .execute(&mut *tx)
        .await
        .ctx("failed to store a campaign")?;
        if let Some(record) = idempotency {
            messages::store_key(&mut tx, c.scope(), c.id, record, now).await?;
        }
        tx.commit().await.ctx("failed to commit a campaign")?;
        Ok(CampaignCreation::Created)
    }

    async fn get_campaign(&self, scope: Scope, id: Uuid) -> Result<Option<Campaign>, StoreError> {
        let mut conn = self.reader.acquire().await.ctx("failed to connect")?;
        read_campaign(&mut conn, scope, id).await
    }

    async fn list_campaigns(
        &self,
        scope: Scope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Campaign>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns
             WHERE org_id = ?1 AND mode = ?2 AND id < coalesce(?3, x'ffffffffffffffffffffffffffffffff')
             ORDER BY id DESC LIMIT ?4"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to list campaigns")?;
        let mut items = rows.iter().map(campaign).collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|c| c.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn update_campaign(
        &self,
        c: &Campaign,
        read_at: Timestamp,
    ) -> Result<Result<Campaign, CampaignRefusal>, StoreError> {
        let mut tx = self.write().await?;
        let Some(current) = read_campaign(&mut tx, c.scope(), c.id).await? else {
            return Ok(Err(CampaignRefusal::NotFound));
        };
        if !current.status.editable() || current.updated_at != read_at {
            return Ok(Err(CampaignRefusal::State(current.status)));
        }
        sqlx::query(
            "UPDATE campaigns SET name = ?1, spec = ?2, next_run_at = ?3, updated_at = ?4
             WHERE id = ?5",
        )
        .bind(&c.name)
        .bind(c.spec.to_string())
        .bind(c.next_run_at.map(micros))
        .bind(micros(c.updated_at))
        .bind(c.id)
        .execute(&mut *tx)
        .await
        .ctx("failed to update a campaign")?;
        let updated = read_campaign(&mut tx, c.scope(), c.id).await?;
        tx.commit().await.ctx("failed to commit a campaign")?;
        updated
            .map(Ok)
            .ok_or_else(|| StoreError::Corrupt("updated campaign vanished".into()))
    }

    async fn delete_campaign(
        &self,
        scope: Scope,
        id: Uuid,
    ) -> Result<Result<(), CampaignRefusal>, StoreError> {
        let mut tx = self.write().await?;
        let Some(current) = read_campaign(&mut tx, scope, id).await? else {
            return Ok(Err(CampaignRefusal::NotFound));
        };
        if matches!(
            current.status,
            CampaignStatus::Running | CampaignStatus::Paused
        ) {
            return Ok(Err(CampaignRefusal::State(current.status)));
        }
        sqlx::query("DELETE FROM campaigns WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .ctx("failed to delete a campaign")?;
        tx.commit().await.ctx("failed to commit a deletion")?;
        Ok(Ok(()))
    }

    async fn transition_campaign(
        &self,
        scope: Scope,
        id: Uuid,
        transition: &Transition,
        now: Timestamp,
    ) -> Result<Result<Campaign, CampaignRefusal>, StoreError> {
        let mut tx = self.write().await?;
        let Some(current) = read_campaign(&mut tx, scope, id).await? else {
            return Ok(Err(CampaignRefusal::NotFound));
        };
        if !transition.from().contains(&current.status) {
            return Ok(Err(CampaignRefusal::State(current.status)));
        }
        let to = transition.to().as_str();
        match transition {
            Transition::Schedule { next_run_at } => {
                sqlx::query(
                    "UPDATE campaigns SET status = ?1, next_run_at = ?2, error = NULL,
                         updated_at = ?3 WHERE id = ?4",
                )
                .bind(to)
                .bind(micros(*next_run_at))
                .bind(micros(now))
                .bind(id)
                .execute(&mut *tx)
                .await
                .ctx("failed to schedule a campaign")?;
            }
            Transition::Start { run: r } => {
                sqlx::query(
                    "INSERT INTO campaign_runs (id, campaign_id, org_id, mode, occurrence, phase,
                         audience, position, owner, lease_until, next_release_at, error,
                         created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, NULL, NULL, ?10)",
                )
                .bind(r.id)
                .bind(id)
                .bind(scope.org_id)
                .bind(scope.mode.as_str())
                .bind(micros(r.occurrence))
                .bind(r.phase.as_str())
                .bind(r.position.as_ref().map(|p| p.to_string()))
                .bind(r.lease.map(|l| l.owner))
                .bind(r.lease.map(|l| micros(l.until)))
                .bind(micros(r.created_at))
                .execute(&mut *tx)
                .await
                .ctx("failed to start a campaign run")?;
                sqlx::query(
                    "UPDATE campaigns SET status = ?1, current_run = ?2, runs = runs + 1,
                         next_run_at = NULL, error = NULL, updated_at = ?3 WHERE id = ?4",
                )
                .bind(to)
                .bind(r.id)
                .bind(micros(now))
                .bind(id)
                .execute(&mut *tx)
                .await
                .ctx("failed to start a campaign")?;
            }
            Transition::Pause | Transition::Resume => {
                sqlx::query(
                    "UPDATE campaigns SET status = ?1, error = NULL, updated_at = ?2 WHERE id = ?3",
                )
                .bind(to)
                .bind(micros(now))
                .bind(id)
                .execute(&mut *tx)
                .await
                .ctx("failed to pause or resume a campaign")?;
                if let Some(run_id) = current.current_run {
                    let resume = matches!(transition, Transition::Resume).then_some(now);
                    hold_messages(&mut tx, run_id, resume).await?;
                }
            }
            Transition::Cancel => {
                sqlx::query(
                    "UPDATE campaigns SET status = ?1, next_run_at = NULL, updated_at = ?2
                     WHERE id = ?3",
                )
                .bind(to)
                .bind(micros(now))
                .bind(id)
                .execute(&mut *tx)
                .await
                .ctx("failed to cancel a campaign")?;
                if let Some(run_id) = current.current_run {
                    sqlx::query(
                        "UPDATE campaign_runs SET phase = 'canceled', finished_at = ?1,
                             owner = NULL, lease_until = NULL
                         WHERE id = ?2 AND phase IN ('snapshot', 'send')",
                    )
                    .bind(micros(now))
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .ctx("failed to cancel a campaign run")?;
                    sqlx::query(
                        "UPDATE campaign_recipients SET state = 'canceled'
                         WHERE run_id = ?1 AND state = 'pending'",
                    )
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .ctx("failed to cancel a run's recipients")?;
                    cancel_messages(&mut tx, run_id, now).await?;
                }
            }
        }
        let updated = read_campaign(&mut tx, scope, id).await?;
        tx.commit()
            .await
            .ctx("failed to commit a campaign transition")?;
        updated
            .map(Ok)
            .ok_or_else(|| StoreError::Corrupt("campaign vanished".into()))
    }

    async fn due_campaigns(&self, now: Timestamp, limit: u32) -> Result<Vec<Campaign>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns
             WHERE status = 'scheduled' AND next_run_at <= ?1 ORDER BY next_run_at LIMIT ?2"
        )))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read due campaigns")?;
        rows.iter().map(campaign).collect()
    }

    async fn get_run(&self, scope: Scope, id: Uuid) -> Result<Option<CampaignRun>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM campaign_runs WHERE id = ?1 AND org_id = ?2 AND mode = ?3"
        )))
        .bind(id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_optional(&self.reader)
        .await
        .ctx("failed to read a campaign run")?;
        row.as_ref().map(run).transpose()
    }

    async fn list_runs(
        &self,
        scope: Scope,
        campaign_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<CampaignRun>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM campaign_runs
             WHERE campaign_id = ?1 AND org_id = ?2 AND mode = ?3
               AND id < coalesce(?4, x'ffffffffffffffffffffffffffffffff')
             ORDER BY id DESC LIMIT ?5"
        )))
        .bind(campaign_id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to list campaign runs")?;
        let mut items = rows.iter().map(run).collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|r| r.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn take_runs(
        &self,
        lease: Lease,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<CampaignRun>, StoreError> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE campaign_runs SET owner = ?1, lease_until = ?2
             WHERE id IN (
                 SELECT r.id FROM campaign_runs r JOIN campaigns c ON c.current_run = r.id
                 WHERE r.phase IN ('snapshot', 'send') AND c.status = 'running'
                   AND (r.owner IS NULL OR r.owner = ?1 OR r.lease_until <= ?3)
                 ORDER BY r.id LIMIT ?4)
             RETURNING {RUN_COLUMNS}"
        )))
        .bind(lease.owner)
        .bind(micros(lease.until))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .ctx("failed to take campaign runs")?;
        let runs = rows.iter().map(run).collect::<Result<Vec<_>, _>>()?;
        tx.commit().await.ctx("failed to commit taken runs")?;
        Ok(runs)
    }

    async fn store_snapshot_batch(
        &self,
        r: &CampaignRun,
        recipients: &[NewRecipient],
    ) -> Result<Option<u64>, StoreError> {
        let mut tx = self.write().await?;
        if !still_held(&mut tx, r, &[RunPhase::Snapshot]).await? {
            return Ok(None);
        }
        let first: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(seq), -1) + 1 FROM campaign_recipients WHERE run_id = ?1",
        )
        .bind(r.id)
        .fetch_one(&mut *tx)
        .await
        .ctx("failed to number recipients")?;
        let mut added = 0;
        for range in bulk::chunks(recipients.len()) {
            let start = range.start;
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO campaign_recipients (run_id, seq, phone, contact_id, country,
                     variant, body, due_at, state, reason) ",
            );
            query.push_values(recipients[range].iter().enumerate(), |mut row, (i, new)| {
                row.push_bind(r.id)
                    .push_bind(first + (start + i) as i64)
                    .push_bind(new.phone.clone())
                    .push_bind(new.contact_id)
                    .push_bind(new.country.map(|c| c.as_str().to_owned()))
                    .push_bind(i64::from(new.variant))
                    .push_bind(new.body.clone())
                    .push_bind(micros(new.due_at))
                    .push_bind(new.state.as_str())
                    .push_bind(new.reason.clone());
            });
            query.push(" ON CONFLICT (run_id, phone) DO NOTHING");
            added += query
                .build()
                .execute(&mut *tx)
                .await
                .ctx("failed to store recipients")?
                .rows_affected();
        }
        sqlx::query(
            "UPDATE campaign_runs SET audience = audience + ?1, position = ?2, phase = ?3,
                 lease_until = ?4
             WHERE id = ?5",
        )
        .bind(signed(added))
        .bind(r.position.as_ref().map(|p| p.to_string()))
        .bind(r.phase.as_str())
        .bind(r.lease.map(|l| micros(l.until)))
        .bind(r.id)
        .execute(&mut *tx)
        .await
        .ctx("failed to update a campaign run")?;
        tx.commit().await.ctx("failed to commit a snapshot batch")?;
        Ok(Some(added))
    }

    async fn due_recipients(
        &self,
        run_id: Uuid,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<RunRecipient>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients cr
                 LEFT JOIN messages m ON m.id = cr.message_id
             WHERE cr.run_id = ?1 AND cr.state = 'pending' AND cr.due_at <= ?2
             ORDER BY cr.due_at, cr.seq LIMIT ?3"
        )))
        .bind(run_id)
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read due recipients")?;
        rows.iter().map(recipient).collect()
    }

    async fn held_recipients(
        &self,
        run_id: Uuid,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<RunRecipient>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECIPIENT_COLUMNS} FROM campaign_recipients cr
                 LEFT JOIN messages m ON m.id = cr.message_id
             WHERE cr.run_id = ?1 AND cr.state = 'pending' AND cr.due_at = ?2 AND cr.seq > ?3
             ORDER BY cr.seq LIMIT ?4"
        )))
        .bind(run_id)
        .bind(micros(held_until()))
        .bind(after.map_or(-1, signed))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read held recipients")?;
        rows.iter().map(recipient).collect()
    }

    async fn assign_held(
        &self,
        r: &CampaignRun,
        variant: u16,
        assigned: &[(u64, Option<String>)],
        due_at: Timestamp,
    ) -> Result<ReleaseOutcome, StoreError> {
        let mut tx = self.write().await?;
        if !still_held(&mut tx, r, &[RunPhase::Send]).await? {
            return Ok(ReleaseOutcome::Lost);
        }
        for range in bulk::chunks(assigned.len()) {
            let chunk = &assigned[range];
            let mut query =
                QueryBuilder::<Sqlite>::new("UPDATE campaign_recipients SET variant = ");
            query
                .push_bind(i64::from(variant))
                .push(", body = v.column2, due_at = ")
                .push_bind(micros(due_at))
                .push(
                    ", state = CASE WHEN v.column2 IS NULL THEN 'suppressed' ELSE 'pending' END, \
                     reason = CASE WHEN v.column2 IS NULL THEN 'missing_variables' END FROM (",
                );
            query.push_values(chunk, |mut row, (seq, body)| {
                row.push_bind(signed(*seq)).push_bind(body.clone());
            });
            query
                .push(") AS v WHERE run_id = ")
                .push_bind(r.id)
                .push(" AND seq = v.column1 AND state = 'pending' AND due_at = ")
                .push_bind(micros(held_until()));
            let marked = query
                .build()
                .execute(&mut *tx)
                .await
                .ctx("failed to assign held recipients")?;
            if marked.rows_affected() != chunk.len() as u64 {
                return Ok(ReleaseOutcome::Lost);
            }
        }
        sqlx::query(
            "UPDATE campaign_runs SET ab_winner = ?1, ab_decided_at = coalesce(ab_decided_at, ?2)
             WHERE id = ?3",
        )
        .bind(i64::from(variant))
        .bind(micros(due_at))
        .bind(r.id)
        .execute(&mut *tx)
        .await
        .ctx("failed to record an A/B winner")?;
        tx.commit()
            .await
            .ctx("failed to commit an A/B assignment")?;
        Ok(ReleaseOutcome::Stored)
    }

    async fn released_since(&self, run_id: Uuid, since: Timestamp) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM messages WHERE campaign_run_id = ?1 AND created_at > ?2",
        )
        .bind(run_id)
        .bind(micros(since))
        .fetch_one(&self.reader)
        .await
        .ctx("failed to count released messages")?;
        unsigned(n)
    }

    async fn release_recipients(
        &self,
        r: &CampaignRun,
        batch: &[(u64, NewMessage)],
    ) -> Result<ReleaseOutcome, StoreError> {
        let mut tx = self.write().await?;
        if !still_held(&mut tx, r, &[RunPhase::Send]).await? {
            return Ok(ReleaseOutcome::Lost);
        }
        let messages: Vec<NewMessage> = batch.iter().map(|(_, m)| m.clone()).collect();
        if let Err(refusal) = crate::broadcasts::insert_batch(&mut tx, &messages).await? {
            return Ok(ReleaseOutcome::Refused(refusal));
        }
        for range in bulk::chunks(batch.len()) {
            let chunk = &batch[range];
            let mut query = QueryBuilder::<Sqlite>::new(
                "UPDATE campaign_recipients SET state = 'released', message_id = v.column2 FROM (",
            );
            query.push_values(chunk, |mut row, (seq, message)| {
                row.push_bind(signed(*seq)).push_bind(message.id);
            });
            query
                .push(") AS v WHERE run_id = ")
                .push_bind(r.id)
                .push(" AND seq = v.column1 AND state = 'pending'");
            let marked = query
                .build()
                .execute(&mut *tx)
                .await
                .ctx("failed to mark recipients released")?;
            if marked.rows_affected() != chunk.len() as u64 {
                // Released or canceled by someone else: this write must not happen at all.
                return Ok(ReleaseOutcome::Lost);
            }
        }
        sqlx::query(
            "UPDATE campaign_runs SET next_release_at = ?1, lease_until = ?2 WHERE id = ?3",
        )
        .bind(r.next_release_at.map(micros))
        .bind(r.lease.map(|l| micros(l.until)))
        .bind(r.id)
        .execute(&mut *tx)
        .await
        .ctx("failed to update a campaign run")?;
        tx.commit().await.ctx("failed to commit a release")?;
        Ok(ReleaseOutcome::Stored)
    }

    async fn suppress_recipients(
        &self,
        r: &CampaignRun,
        recipients: &[(u64, String)],
    ) -> Result<ReleaseOutcome, StoreError> {
        let mut tx = self.write().await?;
        if !still_held(&mut tx, r, &[RunPhase::Send]).await? {
            return Ok(ReleaseOutcome::Lost);
        }
        for (seq, reason) in recipients {
            sqlx::query(
                "UPDATE campaign_recipients SET state = 'suppressed', reason = ?1
                 WHERE run_id = ?2 AND seq = ?3 AND state = 'pending'",
            )
            .bind(reason)
            .bind(r.id)
            .bind(signed(*seq))
            .execute(&mut *tx)
            .await
            .ctx("failed to suppress a recipient")?;
        }
        tx.commit().await.ctx("failed to commit suppressions")?;
        Ok(ReleaseOutcome::Stored)
    }

    async fn pause_for(
        &self,
        r: &CampaignRun,
        error: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let paused = sqlx::query(
            "UPDATE campaigns SET status = 'paused', error = ?1, updated_at = ?2
             WHERE id = ?3 AND status = 'running' AND current_run = ?4",
        )
        .bind(error)
        .bind(micros(now))
        .bind(r.campaign_id)
        .bind(r.id)
        .execute(&mut *tx)
        .await
        .ctx("failed to pause a campaign")?;
        if paused.rows_affected() == 1 {
            hold_messages(&mut tx, r.id, None).await?;
        }
        tx.commit().await.ctx("failed to commit a pause")
    }

    async fn unhold_run(&self, run_id: Uuid, now: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "UPDATE messages SET due_at = ?3
             WHERE campaign_run_id = ?1 AND status = 'queued' AND due_at >= ?2
               AND EXISTS (SELECT 1 FROM campaign_runs r JOIN campaigns c ON c.id = r.campaign_id
                           WHERE r.id = ?1 AND c.status = 'running')",
        )
        .bind(run_id)
        .bind(micros(held_until()))
        .bind(micros(now))
        .execute(&mut *tx)
        .await
        .ctx("failed to queue held messages again")?
        .rows_affected();
        tx.commit().await.ctx("failed to commit unheld messages")?;
        Ok(n)
    }

    async fn run_books(&self, run_id: Uuid) -> Result<RunBooks, StoreError> {
        // One statement, so one snapshot: a release moves recipients and messages together.
        let rows = sqlx::query(
            "SELECT 'r', state, count(*) FROM campaign_recipients
             WHERE run_id = ?1 AND state <> 'released' GROUP BY state
             UNION ALL
             SELECT 'm', status, count(*) FROM messages WHERE campaign_run_id = ?1 GROUP BY status
             UNION ALL
             SELECT 'a', '', audience FROM campaign_runs WHERE id = ?1",
        )
        .bind(run_id)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read a run's books")?;
        let mut books = RunBooks::default();
        for row in &rows {
            let kind: String = row.get(0);
            let name: String = row.get(1);
            let n = unsigned(row.get(2))?;
            match kind.as_str() {
                "r" => books.count_recipients(name.parse().map_err(StoreError::Corrupt)?, n),
                "m" => books.count_message(convert::status(&name)?, n),
                _ => books.audience = n,
            }
        }
        Ok(books)
    }

    async fn in_flight(&self, run_id: Uuid) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM messages WHERE campaign_run_id = ?1 AND status = 'sending'",
        )
        .bind(run_id)
        .fetch_one(&self.writer)
        .await
        .ctx("failed to count messages in flight")?;
        unsigned(n)
    }

    async fn held_runs(&self, runs: &[Uuid]) -> Result<Vec<(Uuid, CampaignStatus)>, StoreError> {
        let mut held = Vec::new();
        for range in bulk::chunks(runs.len()) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT r.id, c.status FROM campaign_runs r JOIN campaigns c
                     ON c.id = r.campaign_id
                 WHERE c.status <> 'running' AND r.id IN (",
            );
            let mut list = query.separated(", ");
            for id in &runs[range] {
                list.push_bind(*id);
            }
            query.push(")");
            let rows = query
                .build()
                .fetch_all(&self.writer)
                .await
                .ctx("failed to read campaign states")?;
            for row in &rows {
                let status: String = row.get(1);
                held.push((row.get(0), status.parse().map_err(StoreError::Corrupt)?));
            }
        }
        Ok(held)
    }

    async fn finish_run(
        &self,
        r: &CampaignRun,
        end: RunEnd,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        // Asked on every pass while a run waits: answer from a read, without the write lock,
        // while anything is plainly still pending.
        let mut conn = self.reader.acquire().await.ctx("failed to connect")?;
        if unsettled(&mut conn, r.id).await? {
            return Ok(false);
        }
        drop(conn);
        let mut tx = self.write().await?;
        if !still_held(&mut tx, r, &[RunPhase::Send]).await? {
            return Ok(false);
        }
        if unsettled(&mut tx, r.id).await? {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE campaign_runs SET phase = 'done', finished_at = ?1, owner = NULL,
                 lease_until = NULL WHERE id = ?2",
        )
        .bind(micros(now))
        .bind(r.id)
        .execute(&mut *tx)
        .await
        .ctx("failed to finish a run")?;
        let (status, next) = match end {
            RunEnd::Completed => (CampaignStatus::Completed, None),
            RunEnd::Next(at) => (CampaignStatus::Scheduled, Some(micros(at))),
        };
        sqlx::query(
            "UPDATE campaigns SET status = ?1, next_run_at = ?2, updated_at = ?3 WHERE id = ?4",
        )
        .bind(status.as_str())
        .bind(next)
        .bind(micros(now))
        .bind(r.campaign_id)
        .execute(&mut *tx)
        .await
        .ctx("failed to move a campaign on")?;
        tx.commit().await.ctx("failed to commit a finished run")?;
        Ok(true)
    }

    async fn sweep_canceled_run(&self, run_id: Uuid, now: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let canceled: Option<String> = sqlx::query_scalar(
            "SELECT phase FROM campaign_runs WHERE id = ?1 AND phase = 'canceled'",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await
        .ctx("failed to read a run")?;
        if canceled.is_none() {
            return Ok(0);
        }
        let n = cancel_messages(&mut tx, run_id, now).await?;
        tx.commit().await.ctx("failed to commit a sweep")?;
        Ok(n)
    }

    async fn list_recipients(
        &self,
        scope: Scope,
        run_id: Uuid,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<RunRecipient>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECIPIENT_COLUMNS} FROM campaign_runs r
                 JOIN campaign_recipients cr ON cr.run_id = r.id
                 LEFT JOIN messages m ON m.id = cr.message_id
             WHERE r.id = ?1 AND r.org_id = ?2 AND r.mode = ?3 AND cr.seq > coalesce(?4, -1)
             ORDER BY cr.seq LIMIT ?5"
        )))
        .bind(run_id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after.map(signed))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .ctx("failed to list recipients")?;
        rows.iter().map(recipient).collect()
    }

    async fn campaign_facts(
        &self,
        scope: Scope,
        campaign_id: Uuid,
        after: Option<(Uuid, u64)>,
        limit: u32,
    ) -> Result<(Vec<CampaignMessageFact>, Option<(Uuid, u64)>), StoreError> {
        let (after_run, after_seq) = match after {
            Some((run, seq)) => (Some(run), signed(seq)),
            None => (None, -1),
        };
        let rows = sqlx::query(
            "SELECT r.id, cr.seq, cr.variant, cr.phone, m.country, m.status, m.provider,
                    m.segments, m.estimated_cost, m.actual_cost, m.currency, m.created_at,
                    (SELECT min(e.occurred_at) FROM message_events e
                     WHERE e.message_id = m.id AND e.status = 'sent'),
                    (SELECT min(e.occurred_at) FROM message_events e
                     WHERE e.message_id = m.id AND e.status = 'delivered')
             FROM campaign_runs r
                 JOIN campaign_recipients cr ON cr.run_id = r.id
                 JOIN messages m ON m.id = cr.message_id
             WHERE r.campaign_id = ?1 AND r.org_id = ?2 AND r.mode = ?3
               AND (r.id, cr.seq) > (coalesce(?4, x''), ?5)
             ORDER BY r.id, cr.seq LIMIT ?6",
        )
        .bind(campaign_id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after_run)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read a campaign's messages")?;
        let mut facts = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let run_id: Uuid = row.get(0);
            let seq = unsigned(row.get(1))?;
            last = Some((run_id, seq));
            let status: String = row.get(5);
            facts.push(CampaignMessageFact {
                run_id,
                variant: u16::try_from(row.get::<i64, _>(2))
                    .map_err(|_| StoreError::Corrupt("recipient variant".into()))?,
                phone: row.get(3),
                country: convert::opt_region(row.get(4))?,
                status: convert::status(&status)?,
                provider: row.get(6),
                segments: convert::count(row.get(7))?,
                estimated_cost: row.get(8),
                actual_cost: row.get(9),
                currency: row.get(10),
                created_at: convert::timestamp(row.get(11))?,
                sent_at: convert::opt_timestamp(row.get(12))?,
                delivered_at: convert::opt_timestamp(row.get(13))?,
            });
        }
        let next = if rows.len() == limit as usize {
            last
        } else {
            None
        };
        Ok((facts, next))
    }

    async fn campaign_responses(
        &self,
        scope: Scope,
        campaign_id: Uuid,
    ) -> Result<Vec<(u16, u64, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT cr.variant,
                    sum(EXISTS (SELECT 1 FROM inbound_messages i
                                WHERE i.org_id = r.org_id AND i.from_number = cr.phone
                                  AND i.received_at >= m.created_at)),
                    sum(EXISTS (SELECT 1 FROM opt_out_events o
                                WHERE o.org_id = r.org_id AND o.phone = cr.phone
                                  AND o.action = 'opt_out' AND o.occurred_at >= m.created_at))
             FROM campaign_runs r
                 JOIN campaign_recipients cr ON cr.run_id = r.id
                 JOIN messages m ON m.id = cr.message_id
             WHERE r.campaign_id = ?1 AND r.org_id = ?2 AND r.mode = ?3
             GROUP BY cr.variant ORDER BY cr.variant",
        )
        .bind(campaign_id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read a campaign's replies and opt-outs")?;
        rows.iter()
            .map(|row| {
                Ok((
                    u16::try_from(row.get::<i64, _>(0))
                        .map_err(|_| StoreError::Corrupt("recipient variant".into()))?,
                    unsigned(row.get(1))?,
                    unsigned(row.get(2))?,
                ))
            })
            .collect()
    }
}
