//! Campaigns on PostgreSQL: the campaign row and its lifecycle, runs with their leases, the
//! audience snapshot, and releases that store messages and mark recipients in one transaction.
//!
//! Locks are taken in one order, campaign before run, by everything that needs both (lifecycle
//! changes, finishing a run, pausing for want of credits). Writers working on a run (snapshot
//! batches, releases, suppressions) lock only the run, then read the campaign's status in a
//! statement of their own: a pause or cancel either waits for their write and then sees it (its
//! statements come after the lock), or commits first and is seen by them.

use async_trait::async_trait;
use herald_store::*;
use jiff::Timestamp;
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use uuid::Uuid;

use crate::PostgresStore;
use crate::convert::{self, Ctx, col, ts};
use crate::messages;

const CAMPAIGN_COLUMNS: &str = "id, org_id, mode, name, status, spec, api_key_id, next_run_at, \
     current_run, runs, error, created_at, updated_at";

/// Run columns, of `campaign_runs r`, in the order [`run`] expects.
const RUN_COLUMNS: &str = "r.id, r.campaign_id, r.org_id, r.mode, r.occurrence, r.phase, \
     r.audience, r.position, r.owner, r.lease_until, r.next_release_at, r.error, r.created_at, \
     r.finished_at, r.ab_winner, r.ab_decided_at";

/// Recipient columns joined with their message, in the order [`recipient`] expects (`cr` is
/// the recipient, `m` its message).
const RECIPIENT_COLUMNS: &str = "cr.seq, cr.phone, cr.contact_id, cr.country, cr.variant, \
     cr.body, cr.due_at, cr.state, cr.reason, cr.message_id, m.status, m.provider, \
     m.provider_message_id, m.estimated_cost, m.actual_cost, m.error_code, m.attempts, \
     (SELECT min(e.occurred_at) FROM message_events e WHERE e.message_id = m.id AND e.status = 'sent'), \
     (SELECT min(e.occurred_at) FROM message_events e WHERE e.message_id = m.id AND e.status = 'delivered')";

/// The highest uuid, where paging newest first starts.
const LAST_ID: &str = "ffffffff-ffff-ffff-ffff-ffffffffffff";

fn big(row: &PgRow, index: usize) -> Result<u64, StoreError> {
    let value: i64 = col(row, index)?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("count {value}")))
}

fn variant(row: &PgRow, index: usize) -> Result<u16, StoreError> {
    let value: i32 = col(row, index)?;
    u16::try_from(value).map_err(|_| StoreError::Corrupt(format!("recipient variant {value}")))
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn campaign(row: &PgRow) -> Result<Campaign, StoreError> {
    let status: String = col(row, 4)?;
    let Json(spec): Json<Value> = col(row, 5)?;
    let runs: i64 = col(row, 9)?;
    Ok(Campaign {
        id: col(row, 0)?,
        org_id: col(row, 1)?,
        mode: convert::mode(row, 2)?,
        name: col(row, 3)?,
        status: status.parse().map_err(StoreError::Corrupt)?,
        spec,
        api_key_id: col(row, 6)?,
        next_run_at: convert::opt_timestamp(row, 7)?,
        current_run: col(row, 8)?,
        runs: u32::try_from(runs).map_err(|_| StoreError::Corrupt(format!("runs {runs}")))?,
        error: col(row, 10)?,
        created_at: convert::timestamp(row, 11)?,
        updated_at: convert::timestamp(row, 12)?,
    })
}

fn run(row: &PgRow) -> Result<CampaignRun, StoreError> {
    let phase: String = col(row, 5)?;
    Ok(CampaignRun {
        id: col(row, 0)?,
        campaign_id: col(row, 1)?,
        org_id: col(row, 2)?,
        mode: convert::mode(row, 3)?,
        occurrence: convert::timestamp(row, 4)?,
        phase: phase.parse().map_err(StoreError::Corrupt)?,
        audience: big(row, 6)?,
        position: col::<Option<Json<Value>>>(row, 7)?.map(|Json(v)| v),
        lease: match (
            col::<Option<Uuid>>(row, 8)?,
            convert::opt_timestamp(row, 9)?,
        ) {
            (Some(owner), Some(until)) => Some(Lease { owner, until }),
            _ => None,
        },
        next_release_at: convert::opt_timestamp(row, 10)?,
        error: col(row, 11)?,
        created_at: convert::timestamp(row, 12)?,
        finished_at: convert::opt_timestamp(row, 13)?,
        ab_winner: match (
            col::<Option<i32>>(row, 14)?,
            convert::opt_timestamp(row, 15)?,
        ) {
            (Some(variant), Some(at)) => Some((
                u16::try_from(variant).map_err(|_| StoreError::Corrupt("A/B winner".into()))?,
                at,
            )),
            _ => None,
        },
    })
}

fn recipient(row: &PgRow) -> Result<RunRecipient, StoreError> {
    let state: String = col(row, 7)?;
    let status: Option<&str> = col(row, 10)?;
    let attempts: Option<i32> = col(row, 16)?;
    Ok(RunRecipient {
        seq: big(row, 0)?,
        phone: col(row, 1)?,
        contact_id: col(row, 2)?,
        country: convert::opt_region(row, 3)?,
        variant: variant(row, 4)?,
        body: col(row, 5)?,
        due_at: convert::timestamp(row, 6)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        reason: col(row, 8)?,
        message_id: col(row, 9)?,
        status: status
            .map(|s| s.parse().map_err(|e| StoreError::Corrupt(format!("{e}"))))
            .transpose()?,
        provider: col(row, 11)?,
        provider_message_id: col(row, 12)?,
        estimated_cost: col(row, 13)?,
        actual_cost: col(row, 14)?,
        error_code: col(row, 15)?,
        attempts: attempts
            .map(|n| u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("attempts {n}"))))
            .transpose()?
            .unwrap_or(0),
        sent_at: convert::opt_timestamp(row, 17)?,
        delivered_at: convert::opt_timestamp(row, 18)?,
    })
}

/// Read a campaign in its scope; with `lock`, lock its row until the transaction ends.
async fn read_campaign(
    conn: &mut PgConnection,
    scope: Scope,
    id: Uuid,
    lock: bool,
) -> Result<Option<Campaign>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns
         WHERE id = $1 AND org_id = $2 AND mode = $3{lock}"
    )))
    .bind(id)
    .bind(scope.org_id)
    .bind(scope.mode.as_str())
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to read a campaign")?;
    row.as_ref().map(campaign).transpose()
}

/// Lock a run's row until the transaction ends; answers whether it exists.
async fn lock_run(conn: &mut PgConnection, run_id: Uuid) -> Result<bool, StoreError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM campaign_runs WHERE id = $1 FOR UPDATE")
            .bind(run_id)
            .fetch_optional(&mut *conn)
            .await
            .ctx("failed to lock a campaign run")?;
    Ok(found.is_some())
}

/// Whether the run may still be written by `run.lease`'s owner: its campaign is running, it is
/// the campaign's current run, in `phases`, and held by that owner. Locks the run's row, so a
/// takeover, a pause or a cancel (which lock it too) serializes with the caller's write.
async fn still_held(
    conn: &mut PgConnection,
    run: &CampaignRun,
    phases: &[RunPhase],
) -> Result<bool, StoreError> {
    let Some(lease) = run.lease else {
        return Ok(false);
    };
    let row =
        sqlx::query("SELECT phase, owner, campaign_id FROM campaign_runs WHERE id = $1 FOR UPDATE")
            .bind(run.id)
            .fetch_optional(&mut *conn)
            .await
            .ctx("failed to read a campaign run")?;
    let Some(row) = row else {
        return Ok(false);
    };
    let phase: RunPhase = col::<String>(&row, 0)?
        .parse()
        .map_err(StoreError::Corrupt)?;
    let owner: Option<Uuid> = col(&row, 1)?;
    let campaign_id: Uuid = col(&row, 2)?;
    if !phases.contains(&phase) || owner != Some(lease.owner) {
        return Ok(false);
    }
    // A statement of its own, after the lock: it sees a change committed while we waited.
    let running: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM campaigns WHERE id = $1 AND status = 'running' AND current_run = $2",
    )
    .bind(campaign_id)
    .bind(run.id)
    .fetch_optional(&mut *conn)
    .await
    .ctx("failed to read a campaign's status")?;
    Ok(running.is_some())
}

/// Hold (or, `resume`, release again) the queued messages of a run.
async fn hold_messages(
    conn: &mut PgConnection,
    run_id: Uuid,
    resume: Option<Timestamp>,
) -> Result<(), StoreError> {
    let held = ts(held_until());
    let query = match resume {
        None => sqlx::query(
            "UPDATE messages SET due_at = $2 WHERE campaign_run_id = $1 AND status = 'queued'",
        )
        .bind(run_id)
        .bind(held),
        Some(now) => sqlx::query(
            "UPDATE messages SET due_at = $3
             WHERE campaign_run_id = $1 AND status = 'queued' AND due_at >= $2",
        )
        .bind(run_id)
        .bind(held)
        .bind(ts(now)),
    };
    query
        .execute(&mut *conn)
        .await
        .ctx("failed to hold a campaign's messages")?;
    Ok(())
}

/// Whether anything of the run is still pending: a recipient not yet released, or a message
/// not yet settled. The recipients come first: while they wait, the messages are not read.
async fn unsettled(conn: &mut PgConnection, run_id: Uuid) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM campaign_recipients
                        WHERE run_id = $1 AND state = 'pending')
             OR EXISTS (SELECT 1 FROM messages WHERE campaign_run_id = $1
                        AND status IN ('scheduled', 'queued', 'sending', 'unknown'))",
    )
    .bind(run_id)
    .fetch_one(&mut *conn)
    .await
    .ctx("failed to check a run is settled")
}

/// Cancel the run's messages not yet handed to a provider, releasing their credits.
async fn cancel_messages(
    conn: &mut PgConnection,
    run_id: Uuid,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM messages
         WHERE campaign_run_id = $1 AND status IN ('queued', 'scheduled') ORDER BY id",
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
impl CampaignStore for PostgresStore {
    async fn create_campaign(
        &self,
        c: &Campaign,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<CampaignCreation, StoreError> {
        let mut tx = self.begin().await?;
        // Taking the key first makes a concurrent retry wait for this transaction.
        if let Some(record) = idempotency
            && let Some(previous) =
                messages::take_key(&mut tx, c.scope(), c.id, record, now).await?
        {
            return Ok(CampaignCreation::of_earlier(previous));
        }
        sqlx::query(
            "INSERT INTO campaigns (id, org_id, mode, name, status, spec, api_key_id,
                 next_run_at, current_run, runs, error, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, 0, NULL, $9, $10)",
        )
        .bind(c.id)
        .bind(c.org_id)
        .bind(c.mode.as_str())
        .bind(&c.name)
        .bind(c.status.as_str())
        .bind(Json(&c.spec))
        .bind(c.api_key_id)
        .bind(c.next_run_at.map(ts))
        .bind(ts(c.created_at))
        .bind(ts(c.updated_at))
        .execute(&mut *tx)
        .await
        .ctx("failed to store a campaign")?;
        tx.commit().await.ctx("failed to commit a campaign")?;
        Ok(CampaignCreation::Created)
    }

    async fn get_campaign(&self, scope: Scope, id: Uuid) -> Result<Option<Campaign>, StoreError> {
        let mut conn = self.connection().await?;
        read_campaign(&mut conn, scope, id, false).await
    }

    async fn list_campaigns(
        &self,
        scope: Scope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Campaign>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns
             WHERE org_id = $1 AND mode = $2 AND id < coalesce($3::uuid, '{LAST_ID}')
             ORDER BY id DESC LIMIT $4"
        )))
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to list campaigns")?;
        let items = rows.iter().map(campaign).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |c| c.id))
    }

    async fn update_campaign(
        &self,
        c: &Campaign,
        read_at: Timestamp,
    ) -> Result<Result<Campaign, CampaignRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        let Some(current) = read_campaign(&mut tx, c.scope(), c.id, true).await? else {
            return Ok(Err(CampaignRefusal::NotFound));
        };
        if !current.status.editable() || current.updated_at != read_at {
            return Ok(Err(CampaignRefusal::State(current.status)));
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE campaigns SET name = $1, spec = $2, next_run_at = $3, updated_at = $4
             WHERE id = $5 RETURNING {CAMPAIGN_COLUMNS}"
        )))
        .bind(&c.name)
        .bind(Json(&c.spec))
        .bind(c.next_run_at.map(ts))
        .bind(ts(c.updated_at))
        .bind(c.id)
        .fetch_one(&mut *tx)
        .await
        .ctx("failed to update a campaign")?;
        let updated = campaign(&row)?;
        tx.commit().await.ctx("failed to commit a campaign")?;
        Ok(Ok(updated))
    }

    async fn delete_campaign(
        &self,
        scope: Scope,
        id: Uuid,
    ) -> Result<Result<(), CampaignRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        let Some(current) = read_campaign(&mut tx, scope, id, true).await? else {
            return Ok(Err(CampaignRefusal::NotFound));
        };
        if matches!(
            current.status,
            CampaignStatus::Running | CampaignStatus::Paused
        ) {
            return Ok(Err(CampaignRefusal::State(current.status)));
        }
        sqlx::query("DELETE FROM campaigns WHERE id = $1")
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
        let mut tx = self.begin().await?;
        // The campaign's row first, then its run's: the order every writer of both keeps.
        let Some(current) = read_campaign(&mut tx, scope, id, true).await? else {
            return Ok(Err(CampaignRefusal::NotFound));
        };
        if !transition.from().contains(&current.status) {
            return Ok(Err(CampaignRefusal::State(current.status)));
        }
        let to = transition.to().as_str();
        match transition {
            Transition::Schedule { next_run_at } => {
                sqlx::query(
                    "UPDATE campaigns SET status = $1, next_run_at = $2, error = NULL,
                         updated_at = $3 WHERE id = $4",
                )
                .bind(to)
                .bind(ts(*next_run_at))
                .bind(ts(now))
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
                     VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, NULL, NULL, $10)",
                )
                .bind(r.id)
                .bind(id)
                .bind(scope.org_id)
                .bind(scope.mode.as_str())
                .bind(ts(r.occurrence))
                .bind(r.phase.as_str())
                .bind(r.position.as_ref().map(Json))
                .bind(r.lease.map(|l| l.owner))
                .bind(r.lease.map(|l| ts(l.until)))
                .bind(ts(r.created_at))
                .execute(&mut *tx)
                .await
                .ctx("failed to start a campaign run")?;
                sqlx::query(
                    "UPDATE campaigns SET status = $1, current_run = $2, runs = runs + 1,
                         next_run_at = NULL, error = NULL, updated_at = $3 WHERE id = $4",
                )
                .bind(to)
                .bind(r.id)
                .bind(ts(now))
                .bind(id)
                .execute(&mut *tx)
                .await
                .ctx("failed to start a campaign")?;
            }
            Transition::Pause | Transition::Resume => {
                sqlx::query(
                    "UPDATE campaigns SET status = $1, error = NULL, updated_at = $2 WHERE id = $3",
                )
                .bind(to)
                .bind(ts(now))
                .bind(id)
                .execute(&mut *tx)
                .await
                .ctx("failed to pause or resume a campaign")?;
                if let Some(run_id) = current.current_run {
                    // Waits for a release under way, whose messages the hold then sees.
                    lock_run(&mut tx, run_id).await?;
                    let resume = matches!(transition, Transition::Resume).then_some(now);
                    hold_messages(&mut tx, run_id, resume).await?;
                }
            }
            Transition::Cancel => {
                sqlx::query(
                    "UPDATE campaigns SET status = $1, next_run_at = NULL, updated_at = $2
                     WHERE id = $3",
                )
                .bind(to)
                .bind(ts(now))
                .bind(id)
                .execute(&mut *tx)
                .await
                .ctx("failed to cancel a campaign")?;
                if let Some(run_id) = current.current_run {
                    lock_run(&mut tx, run_id).await?;
                    sqlx::query(
                        "UPDATE campaign_runs SET phase = 'canceled', finished_at = $1,
                             owner = NULL, lease_until = NULL
                         WHERE id = $2 AND phase IN ('snapshot', 'send')",
                    )
                    .bind(ts(now))
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .ctx("failed to cancel a campaign run")?;
                    sqlx::query(
                        "UPDATE campaign_recipients SET state = 'canceled'
                         WHERE run_id = $1 AND state = 'pending'",
                    )
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .ctx("failed to cancel a run's recipients")?;
                    cancel_messages(&mut tx, run_id, now).await?;
                }
            }
        }
        let updated = read_campaign(&mut tx, scope, id, false).await?;
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
             WHERE status = 'scheduled' AND next_run_at <= $1 ORDER BY next_run_at LIMIT $2"
        )))
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read due campaigns")?;
        rows.iter().map(campaign).collect()
    }

    async fn get_run(&self, scope: Scope, id: Uuid) -> Result<Option<CampaignRun>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM campaign_runs r
             WHERE r.id = $1 AND r.org_id = $2 AND r.mode = $3"
        )))
        .bind(id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_optional(&self.pool)
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
            "SELECT {RUN_COLUMNS} FROM campaign_runs r
             WHERE r.campaign_id = $1 AND r.org_id = $2 AND r.mode = $3
               AND r.id < coalesce($4::uuid, '{LAST_ID}')
             ORDER BY r.id DESC LIMIT $5"
        )))
        .bind(campaign_id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to list campaign runs")?;
        let items = rows.iter().map(run).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(items, limit, |r| r.id))
    }

    async fn take_runs(
        &self,
        lease: Lease,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<CampaignRun>, StoreError> {
        // Runs another taker has locked are skipped, never waited on or taken twice.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH free AS MATERIALIZED (
                 SELECT r.id FROM campaign_runs r
                     JOIN campaigns c ON c.id = r.campaign_id AND c.current_run = r.id
                 WHERE r.phase IN ('snapshot', 'send') AND c.status = 'running'
                   AND (r.owner IS NULL OR r.owner = $1 OR r.lease_until <= $3)
                 ORDER BY r.id LIMIT $4
                 FOR UPDATE OF r SKIP LOCKED
             )
             UPDATE campaign_runs r SET owner = $1, lease_until = $2
             FROM free WHERE r.id = free.id
             RETURNING {RUN_COLUMNS}"
        )))
        .bind(lease.owner)
        .bind(ts(lease.until))
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("failed to take campaign runs")?;
        let mut runs = rows.iter().map(run).collect::<Result<Vec<_>, _>>()?;
        runs.sort_by_key(|r| r.id);
        Ok(runs)
    }

    async fn store_snapshot_batch(
        &self,
        r: &CampaignRun,
        recipients: &[NewRecipient],
    ) -> Result<Option<u64>, StoreError> {
        let mut tx = self.begin().await?;
        if !still_held(&mut tx, r, &[RunPhase::Snapshot]).await? {
            return Ok(None);
        }
        let added = if recipients.is_empty() {
            0
        } else {
            // The run's row is locked: nobody else numbers its recipients meanwhile.
            let first: i64 = sqlx::query_scalar(
                "SELECT coalesce(max(seq), -1) + 1 FROM campaign_recipients WHERE run_id = $1",
            )
            .bind(r.id)
            .fetch_one(&mut *tx)
            .await
            .ctx("failed to number recipients")?;
            let n = recipients.len();
            let mut phones = Vec::with_capacity(n);
            let mut contacts = Vec::with_capacity(n);
            let mut countries = Vec::with_capacity(n);
            let mut variants = Vec::with_capacity(n);
            let mut bodies = Vec::with_capacity(n);
            let mut due = Vec::with_capacity(n);
            let mut states = Vec::with_capacity(n);
            let mut reasons = Vec::with_capacity(n);
            for new in recipients {
                phones.push(new.phone.as_str());
                contacts.push(new.contact_id);
                countries.push(new.country.map(|c| c.as_str().to_owned()));
                variants.push(i32::from(new.variant));
                bodies.push(new.body.as_deref());
                due.push(ts(new.due_at));
                states.push(new.state.as_str());
                reasons.push(new.reason.as_deref());
            }
            sqlx::query(
                "INSERT INTO campaign_recipients (run_id, seq, phone, contact_id, country,
                     variant, body, due_at, state, reason)
                 SELECT $1, $2 + u.n - 1, u.phone, u.contact_id, u.country, u.variant, u.body,
                        u.due_at, u.state, u.reason
                 FROM unnest($3::text[], $4::uuid[], $5::text[], $6::int4[], $7::text[],
                             $8::timestamptz[], $9::text[], $10::text[])
                     WITH ORDINALITY AS u(phone, contact_id, country, variant, body, due_at,
                                          state, reason, n)
                 ON CONFLICT (run_id, phone) DO NOTHING",
            )
            .bind(r.id)
            .bind(first)
            .bind(phones)
            .bind(contacts)
            .bind(countries)
            .bind(variants)
            .bind(bodies)
            .bind(due)
            .bind(states)
            .bind(reasons)
            .execute(&mut *tx)
            .await
            .ctx("failed to store recipients")?
            .rows_affected()
        };
        sqlx::query(
            "UPDATE campaign_runs SET audience = audience + $1, position = $2, phase = $3,
                 lease_until = $4
             WHERE id = $5",
        )
        .bind(signed(added))
        .bind(r.position.as_ref().map(Json))
        .bind(r.phase.as_str())
        .bind(r.lease.map(|l| ts(l.until)))
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
             WHERE cr.run_id = $1 AND cr.state = 'pending' AND cr.due_at <= $2
             ORDER BY cr.due_at, cr.seq LIMIT $3"
        )))
        .bind(run_id)
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
             WHERE cr.run_id = $1 AND cr.state = 'pending' AND cr.due_at = $2 AND cr.seq > $3
             ORDER BY cr.seq LIMIT $4"
        )))
        .bind(run_id)
        .bind(ts(held_until()))
        .bind(after.map_or(-1, signed))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        let mut tx = self.begin().await?;
        if !still_held(&mut tx, r, &[RunPhase::Send]).await? {
            return Ok(ReleaseOutcome::Lost);
        }
        let seqs: Vec<i64> = assigned.iter().map(|(seq, _)| signed(*seq)).collect();
        let bodies: Vec<Option<String>> = assigned.iter().map(|(_, b)| b.clone()).collect();
        let marked = sqlx::query(
            "UPDATE campaign_recipients cr SET variant = $2, body = u.body, due_at = $3,
                 state = CASE WHEN u.body IS NULL THEN 'suppressed' ELSE 'pending' END,
                 reason = CASE WHEN u.body IS NULL THEN 'missing_variables' END
             FROM unnest($4::int8[], $5::text[]) AS u(seq, body)
             WHERE cr.run_id = $1 AND cr.seq = u.seq AND cr.state = 'pending'
               AND cr.due_at = $6",
        )
        .bind(r.id)
        .bind(i32::from(variant))
        .bind(ts(due_at))
        .bind(seqs)
        .bind(bodies)
        .bind(ts(held_until()))
        .execute(&mut *tx)
        .await
        .ctx("failed to assign held recipients")?
        .rows_affected();
        if marked != assigned.len() as u64 {
            return Ok(ReleaseOutcome::Lost);
        }
        sqlx::query(
            "UPDATE campaign_runs SET ab_winner = $1, ab_decided_at = coalesce(ab_decided_at, $2)
             WHERE id = $3",
        )
        .bind(i32::from(variant))
        .bind(ts(due_at))
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
            "SELECT count(*) FROM messages WHERE campaign_run_id = $1 AND created_at > $2",
        )
        .bind(run_id)
        .bind(ts(since))
        .fetch_one(&self.pool)
        .await
        .ctx("failed to count released messages")?;
        Ok(n.max(0) as u64)
    }

    async fn release_recipients(
        &self,
        r: &CampaignRun,
        batch: &[(u64, NewMessage)],
    ) -> Result<ReleaseOutcome, StoreError> {
        let mut tx = self.begin().await?;
        if !still_held(&mut tx, r, &[RunPhase::Send]).await? {
            return Ok(ReleaseOutcome::Lost);
        }
        let messages: Vec<NewMessage> = batch.iter().map(|(_, m)| m.clone()).collect();
        if let Err(refusal) = crate::broadcasts::insert_batch(&mut tx, &messages).await? {
            // Dropping the transaction rolls back whatever was written.
            return Ok(ReleaseOutcome::Refused(refusal));
        }
        let seqs: Vec<i64> = batch.iter().map(|(seq, _)| signed(*seq)).collect();
        let ids: Vec<Uuid> = batch.iter().map(|(_, m)| m.id).collect();
        let marked = sqlx::query(
            "UPDATE campaign_recipients cr SET state = 'released', message_id = u.message_id
             FROM unnest($2::int8[], $3::uuid[]) AS u(seq, message_id)
             WHERE cr.run_id = $1 AND cr.seq = u.seq AND cr.state = 'pending'",
        )
        .bind(r.id)
        .bind(seqs)
        .bind(ids)
        .execute(&mut *tx)
        .await
        .ctx("failed to mark recipients released")?
        .rows_affected();
        if marked != batch.len() as u64 {
            // Released or canceled by someone else: this write must not happen at all.
            return Ok(ReleaseOutcome::Lost);
        }
        sqlx::query(
            "UPDATE campaign_runs SET next_release_at = $1, lease_until = $2 WHERE id = $3",
        )
        .bind(r.next_release_at.map(ts))
        .bind(r.lease.map(|l| ts(l.until)))
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
        let mut tx = self.begin().await?;
        if !still_held(&mut tx, r, &[RunPhase::Send]).await? {
            return Ok(ReleaseOutcome::Lost);
        }
        let seqs: Vec<i64> = recipients.iter().map(|(seq, _)| signed(*seq)).collect();
        let reasons: Vec<&str> = recipients.iter().map(|(_, why)| why.as_str()).collect();
        sqlx::query(
            "UPDATE campaign_recipients cr SET state = 'suppressed', reason = u.reason
             FROM unnest($2::int8[], $3::text[]) AS u(seq, reason)
             WHERE cr.run_id = $1 AND cr.seq = u.seq AND cr.state = 'pending'",
        )
        .bind(r.id)
        .bind(seqs)
        .bind(reasons)
        .execute(&mut *tx)
        .await
        .ctx("failed to suppress recipients")?;
        tx.commit().await.ctx("failed to commit suppressions")?;
        Ok(ReleaseOutcome::Stored)
    }

    async fn pause_for(
        &self,
        r: &CampaignRun,
        error: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let paused = sqlx::query(
            "UPDATE campaigns SET status = 'paused', error = $1, updated_at = $2
             WHERE id = $3 AND status = 'running' AND current_run = $4",
        )
        .bind(error)
        .bind(ts(now))
        .bind(r.campaign_id)
        .bind(r.id)
        .execute(&mut *tx)
        .await
        .ctx("failed to pause a campaign")?;
        if paused.rows_affected() == 1 {
            lock_run(&mut tx, r.id).await?;
            hold_messages(&mut tx, r.id, None).await?;
        }
        tx.commit().await.ctx("failed to commit a pause")
    }

    async fn unhold_run(&self, run_id: Uuid, now: Timestamp) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "UPDATE messages SET due_at = $3
             WHERE campaign_run_id = $1 AND status = 'queued' AND due_at >= $2
               AND EXISTS (SELECT 1 FROM campaign_runs r JOIN campaigns c ON c.id = r.campaign_id
                           WHERE r.id = $1 AND c.status = 'running')",
        )
        .bind(run_id)
        .bind(ts(held_until()))
        .bind(ts(now))
        .execute(&self.pool)
        .await
        .ctx("failed to queue held messages again")?
        .rows_affected();
        Ok(n)
    }

    async fn run_books(&self, run_id: Uuid) -> Result<RunBooks, StoreError> {
        // One statement, so one snapshot: a release moves recipients and messages together.
        let rows = sqlx::query(
            "SELECT 'r'::text, state, count(*) FROM campaign_recipients
             WHERE run_id = $1 AND state <> 'released' GROUP BY state
             UNION ALL
             SELECT 'm', status, count(*) FROM messages WHERE campaign_run_id = $1 GROUP BY status
             UNION ALL
             SELECT 'a', '', audience FROM campaign_runs WHERE id = $1",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read a run's books")?;
        let mut books = RunBooks::default();
        for row in &rows {
            let kind: &str = col(row, 0)?;
            let name: &str = col(row, 1)?;
            let n = big(row, 2)?;
            match kind {
                "r" => books.count_recipients(name.parse().map_err(StoreError::Corrupt)?, n),
                "m" => books.count_message(convert::status(row, 1)?, n),
                _ => books.audience = n,
            }
        }
        Ok(books)
    }

    async fn in_flight(&self, run_id: Uuid) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM messages WHERE campaign_run_id = $1 AND status = 'sending'",
        )
        .bind(run_id)
        .fetch_one(&self.pool)
        .await
        .ctx("failed to count messages in flight")?;
        Ok(n.max(0) as u64)
    }

    async fn held_runs(&self, runs: &[Uuid]) -> Result<Vec<(Uuid, CampaignStatus)>, StoreError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT r.id, c.status FROM unnest($1::uuid[]) AS w (id)
                 JOIN campaign_runs r ON r.id = w.id
                 JOIN campaigns c ON c.id = r.campaign_id
             WHERE c.status <> 'running'",
        )
        .bind(runs)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read campaign states")?;
        rows.iter()
            .map(|row| {
                let status: String = col(row, 1)?;
                Ok((col(row, 0)?, status.parse().map_err(StoreError::Corrupt)?))
            })
            .collect()
    }

    async fn finish_run(
        &self,
        r: &CampaignRun,
        end: RunEnd,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        // Asked on every pass while a run waits: answer from a read, without locks, while
        // anything is plainly still pending.
        let mut conn = self.pool.acquire().await.ctx("failed to connect")?;
        if unsettled(&mut conn, r.id).await? {
            return Ok(false);
        }
        drop(conn);
        let mut tx = self.begin().await?;
        // The campaign's row before the run's, like a lifecycle change.
        sqlx::query("SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE")
            .bind(r.campaign_id)
            .execute(&mut *tx)
            .await
            .ctx("failed to lock a campaign")?;
        if !still_held(&mut tx, r, &[RunPhase::Send]).await? {
            return Ok(false);
        }
        if unsettled(&mut tx, r.id).await? {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE campaign_runs SET phase = 'done', finished_at = $1, owner = NULL,
                 lease_until = NULL WHERE id = $2",
        )
        .bind(ts(now))
        .bind(r.id)
        .execute(&mut *tx)
        .await
        .ctx("failed to finish a run")?;
        let (status, next) = match end {
            RunEnd::Completed => (CampaignStatus::Completed, None),
            RunEnd::Next(at) => (CampaignStatus::Scheduled, Some(ts(at))),
        };
        sqlx::query(
            "UPDATE campaigns SET status = $1, next_run_at = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(next)
        .bind(ts(now))
        .bind(r.campaign_id)
        .execute(&mut *tx)
        .await
        .ctx("failed to move a campaign on")?;
        tx.commit().await.ctx("failed to commit a finished run")?;
        Ok(true)
    }

    async fn sweep_canceled_run(&self, run_id: Uuid, now: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let canceled: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM campaign_runs WHERE id = $1 AND phase = 'canceled'")
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
             WHERE r.id = $1 AND r.org_id = $2 AND r.mode = $3
               AND cr.seq > coalesce($4::int8, -1)
             ORDER BY cr.seq LIMIT $5"
        )))
        .bind(run_id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after.map(signed))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
             WHERE r.campaign_id = $1 AND r.org_id = $2 AND r.mode = $3
               AND (r.id, cr.seq)
                   > (coalesce($4::uuid, '00000000-0000-0000-0000-000000000000'), $5::int8)
             ORDER BY r.id, cr.seq LIMIT $6",
        )
        .bind(campaign_id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .bind(after_run)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read a campaign's messages")?;
        let mut facts = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let run_id: Uuid = col(row, 0)?;
            last = Some((run_id, big(row, 1)?));
            facts.push(CampaignMessageFact {
                run_id,
                variant: variant(row, 2)?,
                phone: col(row, 3)?,
                country: convert::opt_region(row, 4)?,
                status: convert::status(row, 5)?,
                provider: col(row, 6)?,
                segments: convert::count(row, 7)?,
                estimated_cost: col(row, 8)?,
                actual_cost: col(row, 9)?,
                currency: col(row, 10)?,
                created_at: convert::timestamp(row, 11)?,
                sent_at: convert::opt_timestamp(row, 12)?,
                delivered_at: convert::opt_timestamp(row, 13)?,
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
                    count(*) FILTER (WHERE EXISTS (
                        SELECT 1 FROM inbound_messages i
                        WHERE i.org_id = r.org_id AND i.from_number = cr.phone
                          AND i.received_at >= m.created_at)),
                    count(*) FILTER (WHERE EXISTS (
                        SELECT 1 FROM opt_out_events o
                        WHERE o.org_id = r.org_id AND o.phone = cr.phone
                          AND o.action = 'opt_out' AND o.occurred_at >= m.created_at))
             FROM campaign_runs r
                 JOIN campaign_recipients cr ON cr.run_id = r.id
                 JOIN messages m ON m.id = cr.message_id
             WHERE r.campaign_id = $1 AND r.org_id = $2 AND r.mode = $3
             GROUP BY cr.variant ORDER BY cr.variant",
        )
        .bind(campaign_id)
        .bind(scope.org_id)
        .bind(scope.mode.as_str())
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read a campaign's replies and opt-outs")?;
        rows.iter()
            .map(|row| Ok((variant(row, 0)?, big(row, 1)?, big(row, 2)?)))
            .collect()
    }
}
