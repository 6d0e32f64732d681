//! Herald's PostgreSQL store, for deployments that run several server processes against one
//! database.
//!
//! Every method is one transaction at READ COMMITTED (or a single statement, which is its own
//! transaction). What keeps processes from stepping on each other lives in the SQL: claims skip
//! rows another process has locked, status batches lock their rows in id order, bootstrap and
//! migrations serialize on advisory locks, and idempotency keys are written before the message
//! so a duplicate request waits on the first. See `queue.rs` for the queue's statements.

mod accounts;
mod audience;
mod automation;
mod broadcasts;
mod campaigns;
mod contacts;
mod convert;
mod credits;
mod inbound;
mod messages;
mod opt_outs;
mod orgs;
mod queue;
mod templates;

#[cfg(feature = "test-support")]
pub mod test_support;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use herald_domain::status::MessageStatus;
use herald_store::*;
use jiff::Timestamp;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, SqlSafeStr, Transaction};
use uuid::Uuid;

use convert::{Ctx, ts};

/// Tuning for the PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// Connections this process may hold; every process sharing the database has its own pool,
    /// so the sum must stay below the server's `max_connections`.
    pub max_connections: u32,
    /// How long a query waits for a free connection (or a new one to open) before failing.
    pub acquire_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// A [`Store`] on a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connect to the database at `url` (`postgres://user:password@host:5432/herald`). One
    /// connection is opened straight away, so a wrong URL or an unreachable server fails here.
    pub async fn connect(url: &str, config: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .ctx("invalid PostgreSQL database URL")?
            .application_name("herald");
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .ctx("failed to connect to PostgreSQL")?;
        Ok(PostgresStore { pool })
    }

    /// Close the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.ctx("failed to start a transaction")
    }

    async fn connection(&self) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        self.pool
            .acquire()
            .await
            .ctx("failed to get a database connection")
    }
}

fn migrator() -> Migrator {
    let migration = |version, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(
            1,
            "messages",
            include_str!("../migrations/0001_messages.sql"),
        ),
        migration(
            2,
            "provider accounts",
            include_str!("../migrations/0002_provider_accounts.sql"),
        ),
        migration(
            3,
            "rate buckets",
            include_str!("../migrations/0003_rate_buckets.sql"),
        ),
        migration(
            4,
            "inbound messages",
            include_str!("../migrations/0004_inbound.sql"),
        ),
        migration(
            5,
            "provider prices",
            include_str!("../migrations/0005_prices.sql"),
        ),
        migration(
            6,
            "opt-outs",
            include_str!("../migrations/0006_opt_outs.sql"),
        ),
        migration(
            7,
            "contacts",
            include_str!("../migrations/0007_contacts.sql"),
        ),
        migration(
            8,
            "templates",
            include_str!("../migrations/0008_templates.sql"),
        ),
        migration(
            9,
            "lists and segments",
            include_str!("../migrations/0009_lists_segments.sql"),
        ),
        migration(
            10,
            "credits",
            include_str!("../migrations/0010_credits.sql"),
        ),
        migration(
            11,
            "opt-out history",
            include_str!("../migrations/0011_opt_out_events.sql"),
        ),
        migration(
            12,
            "broadcasts",
            include_str!("../migrations/0012_broadcasts.sql"),
        ),
        migration(
            13,
            "keywords",
            include_str!("../migrations/0013_keywords.sql"),
        ),
        migration(
            14,
            "broadcast resumption",
            include_str!("../migrations/0014_broadcast_resume.sql"),
        ),
        migration(
            15,
            "contacts by lead status in id order",
            include_str!("../migrations/0015_contacts_by_lead_status.sql"),
        ),
        migration(
            16,
            "campaigns",
            include_str!("../migrations/0016_campaigns.sql"),
        ),
        migration(
            17,
            "automation",
            include_str!("../migrations/0017_automation.sql"),
        ),
        migration(
            18,
            "A/B winner",
            include_str!("../migrations/0018_ab_winner.sql"),
        ),
    ])
}

/// Commit `tx`, or roll it back by dropping it when `work` failed.
async fn finish<T>(
    tx: Transaction<'static, Postgres>,
    work: Result<T, StoreError>,
    context: &'static str,
) -> Result<T, StoreError> {
    let value = work?;
    tx.commit().await.ctx(context)?;
    Ok(value)
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx holds a session-level advisory lock (per database) from before it creates its
        // bookkeeping table until the last migration is applied, so servers starting together
        // migrate one after the other. It does not unlock when a migration fails, so migrations
        // run on a connection of their own, closed afterwards: closing releases the lock.
        let options = (*self.pool.connect_options()).clone();
        let single = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .connect_lazy_with(options);
        let result = migrator().run(&single).await;
        single.close().await;
        result.ctx("failed to migrate the PostgreSQL database")
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .ctx("database unreachable")?;
        Ok(())
    }

    async fn create_organization(
        &self,
        org: &Organization,
        keys: &[NewApiKey],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let work = orgs::insert_organization(&mut tx, org, keys).await;
        finish(tx, work, "failed to commit the organization").await
    }

    async fn bootstrap_organization(
        &self,
        org: &Organization,
        keys: &[NewApiKey],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let work = orgs::bootstrap(&mut tx, org, keys).await;
        finish(tx, work, "failed to commit the first organization").await
    }

    async fn get_organization(&self, id: Uuid) -> Result<Option<Organization>, StoreError> {
        orgs::get_organization(&self.pool, id).await
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError> {
        let mut conn = self.connection().await?;
        orgs::insert_key(&mut conn, key).await?;
        Ok(orgs::key_from_new(key))
    }

    async fn revoke_api_key(&self, id: Uuid, at: Timestamp) -> Result<Option<ApiKey>, StoreError> {
        orgs::revoke_key(&self.pool, id, at).await
    }

    async fn list_api_keys(&self, org_id: Uuid) -> Result<Vec<ApiKey>, StoreError> {
        orgs::list_keys(&self.pool, org_id).await
    }

    async fn find_api_key(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<(ApiKey, Organization)>, StoreError> {
        orgs::find_key(&self.pool, hash).await
    }

    async fn touch_api_key(&self, id: Uuid, at: Timestamp) -> Result<(), StoreError> {
        orgs::touch_key(&self.pool, id, at).await
    }

    async fn create_provider_account(
        &self,
        account: &ProviderAccount,
        sealed_credentials: &[u8],
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AccountCreation, AccountRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        let outcome =
            accounts::create(&mut tx, account, sealed_credentials, idempotency, now).await?;
        if outcome == Ok(AccountCreation::Created) {
            tx.commit()
                .await
                .ctx("failed to commit the provider account")?;
        }
        Ok(outcome)
    }

    async fn get_provider_account(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<ProviderAccount>, StoreError> {
        accounts::get(&self.pool, Some(org_id), id).await
    }

    async fn find_provider_account(&self, id: Uuid) -> Result<Option<ProviderAccount>, StoreError> {
        accounts::get(&self.pool, None, id).await
    }

    async fn accounts_of_kind(&self, kind: ProviderKind) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        sqlx::query_as("SELECT org_id, id FROM provider_accounts WHERE kind = $1 ORDER BY id")
            .bind(kind.as_str())
            .fetch_all(&self.pool)
            .await
            .ctx("failed to list accounts by kind")
    }

    async fn provider_account_credentials(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<(ProviderAccount, Vec<u8>)>, StoreError> {
        accounts::with_credentials(&self.pool, org_id, id).await
    }

    async fn list_provider_accounts(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<ProviderAccount>, StoreError> {
        accounts::list(&self.pool, org_id, after, limit).await
    }

    async fn update_provider_account(
        &self,
        account: &ProviderAccount,
        sealed_credentials: Option<&[u8]>,
        read_at: Timestamp,
    ) -> Result<Result<(), AccountRefusal>, StoreError> {
        accounts::update(&self.pool, account, sealed_credentials, read_at).await
    }

    async fn delete_provider_account(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Result<(), AccountRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        let outcome = accounts::delete(&mut tx, org_id, id).await?;
        if outcome.is_ok() {
            tx.commit().await.ctx("failed to commit the deletion")?;
        }
        Ok(outcome)
    }

    async fn cache_price(
        &self,
        source: &str,
        country: herald_domain::phone::Region,
        price: herald_domain::money::Amount,
        fetched_at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO provider_prices (source, country, price_micros, fetched_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (source, country) DO UPDATE \
             SET price_micros = excluded.price_micros, fetched_at = excluded.fetched_at",
        )
        .bind(source)
        .bind(country.to_string())
        .bind(price.micros())
        .bind(convert::ts(fetched_at))
        .execute(&self.pool)
        .await
        .ctx("failed to store a price")?;
        Ok(())
    }

    async fn cached_prices(
        &self,
        source: &str,
    ) -> Result<
        Vec<(
            herald_domain::phone::Region,
            herald_domain::money::Amount,
            Timestamp,
        )>,
        StoreError,
    > {
        let rows: Vec<(String, i64, jiff_sqlx::Timestamp)> = sqlx::query_as(
            "SELECT country, price_micros, fetched_at FROM provider_prices WHERE source = $1",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to read stored prices")?;
        rows.into_iter()
            .map(|(country, micros, at)| {
                let region = herald_domain::phone::Region::parse(&country)
                    .map_err(|_| StoreError::Corrupt(format!("price country {country:?}")))?;
                Ok((
                    region,
                    herald_domain::money::Amount::from_micros(micros),
                    at.to_jiff(),
                ))
            })
            .collect()
    }

    async fn opt_out(
        &self,
        org_id: Uuid,
        phone: &str,
        source: &str,
        cause: Option<Uuid>,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let added = opt_outs::add(&mut tx, org_id, phone, source, at).await?;
        if added {
            let change = (OptOutAction::OptOut, source, cause, at);
            opt_outs::record(&mut tx, org_id, phone, change).await?;
        }
        tx.commit().await.ctx("failed to record an opt-out")?;
        Ok(added)
    }

    async fn opt_in(
        &self,
        org_id: Uuid,
        phone: &str,
        source: &str,
        cause: Option<Uuid>,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let removed = opt_outs::remove(&mut tx, org_id, phone).await?;
        if removed {
            let change = (OptOutAction::OptIn, source, cause, at);
            opt_outs::record(&mut tx, org_id, phone, change).await?;
        }
        tx.commit().await.ctx("failed to remove an opt-out")?;
        Ok(removed)
    }

    async fn keyword_settings(&self, org_id: Uuid) -> Result<Option<KeywordSettings>, StoreError> {
        type Words = sqlx::types::Json<Vec<String>>;
        let row: Option<(Option<String>, Words, Words)> = sqlx::query_as(
            "SELECT help_text, opt_out_words, opt_in_words FROM organizations WHERE id = $1",
        )
        .bind(org_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("failed to read keyword settings")?;
        Ok(row.map(|(help_text, out, in_)| KeywordSettings {
            help_text,
            opt_out_words: out.0,
            opt_in_words: in_.0,
        }))
    }

    async fn set_keyword_settings(
        &self,
        org_id: Uuid,
        settings: &KeywordSettings,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE organizations SET help_text = $2, opt_out_words = $3, opt_in_words = $4 \
             WHERE id = $1",
        )
        .bind(org_id)
        .bind(&settings.help_text)
        .bind(sqlx::types::Json(&settings.opt_out_words))
        .bind(sqlx::types::Json(&settings.opt_in_words))
        .execute(&self.pool)
        .await
        .ctx("failed to save keyword settings")?;
        Ok(())
    }

    async fn opt_out_history(
        &self,
        org_id: Uuid,
        phone: &str,
    ) -> Result<Vec<OptOutEvent>, StoreError> {
        opt_outs::history(&self.pool, org_id, phone).await
    }

    async fn opted_out_among(
        &self,
        org_id: Uuid,
        phones: &[String],
    ) -> Result<Vec<OptOut>, StoreError> {
        let wanted: Vec<(Uuid, &str)> = phones.iter().map(|p| (org_id, p.as_str())).collect();
        let mut conn = self.pool.acquire().await.ctx("database unreachable")?;
        let found = opt_outs::among(&mut conn, &wanted).await?;
        Ok(found.into_iter().map(|(_, entry)| entry).collect())
    }

    async fn list_opt_outs(
        &self,
        org_id: Uuid,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<OptOut>, Option<String>), StoreError> {
        opt_outs::list(&self.pool, org_id, after, limit).await
    }

    async fn insert_inbound(&self, message: &InboundMessage) -> Result<bool, StoreError> {
        inbound::insert(&self.pool, message).await
    }

    async fn list_inbound(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<InboundMessage>, StoreError> {
        inbound::list(&self.pool, org_id, after, limit).await
    }

    async fn find_number_owner(
        &self,
        kind: ProviderKind,
        number: &str,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        inbound::number_owner(&self.pool, kind, number).await
    }

    async fn list_routes(&self, org_id: Uuid) -> Result<Vec<Route>, StoreError> {
        accounts::list_routes(&self.pool, org_id).await
    }

    async fn set_route(
        &self,
        org_id: Uuid,
        route: &Route,
    ) -> Result<Result<(), AccountRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        let outcome = accounts::set_route(&mut tx, org_id, route).await?;
        if outcome.is_ok() {
            tx.commit().await.ctx("failed to commit the route")?;
        }
        Ok(outcome)
    }

    async fn delete_route(&self, org_id: Uuid, key: &RouteKey) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        accounts::delete_route(&mut conn, org_id, key).await
    }

    async fn accept_messages(
        &self,
        items: &[(NewMessage, Option<IdempotencyRecord>)],
        now: Timestamp,
    ) -> Result<Vec<Insertion>, StoreError> {
        let mut tx = self.begin().await?;
        let insertions = messages::accept(&mut tx, items, now).await?;
        tx.commit()
            .await
            .ctx("failed to commit accepted messages")?;
        Ok(insertions)
    }

    async fn get_message(&self, scope: Scope, id: Uuid) -> Result<Option<Message>, StoreError> {
        let mut conn = self.connection().await?;
        messages::get(&mut conn, scope, id).await
    }

    async fn list_messages(
        &self,
        scope: Scope,
        filter: &MessageFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Message>, StoreError> {
        let mut conn = self.connection().await?;
        messages::list(&mut conn, scope, filter, after, limit).await
    }

    async fn insert_messages(&self, messages: &[NewMessage]) -> Result<u64, StoreError> {
        let Some(first) = messages.first() else {
            return Ok(0);
        };
        let month = month_of(first.created_at);
        let mut orgs: Vec<Uuid> = messages.iter().map(|m| m.scope.org_id).collect();
        orgs.sort_unstable();
        orgs.dedup();
        let mut tx = self.begin().await?;
        let metered = credits::load_metered(&mut tx, &orgs, &month).await?;
        if !metered.is_empty() {
            // All or nothing for metered organizations: one transaction for the whole call.
            let mut ledger = Ledger::new(metered);
            messages::insert_bulk(&mut tx, messages, Some(&mut ledger)).await?;
            credits::reserve(&mut tx, &ledger.finish(), &month).await?;
            tx.commit()
                .await
                .ctx("failed to commit inserted messages")?;
            return Ok(messages.len() as u64);
        }
        let mut tx = Some(tx);
        for chunk in messages.chunks(5_000) {
            let mut tx = match tx.take() {
                Some(tx) => tx,
                None => self.begin().await?,
            };
            messages::insert_bulk(&mut tx, chunk, None).await?;
            tx.commit()
                .await
                .ctx("failed to commit inserted messages")?;
        }
        Ok(messages.len() as u64)
    }

    async fn status_counts(&self, org_id: Uuid) -> Result<Vec<(MessageStatus, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM messages WHERE org_id = $1 GROUP BY status",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await
        .ctx("failed to count messages by status")?;
        rows.into_iter()
            .map(|(status, n)| {
                let status = status
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
                Ok((status, n as u64))
            })
            .collect()
    }

    async fn count_messages(&self, org_id: Uuid) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE org_id = $1")
            .bind(org_id)
            .fetch_one(&self.pool)
            .await
            .ctx("failed to count messages")?;
        Ok(count as u64)
    }

    async fn cancel_message(
        &self,
        scope: Scope,
        id: Uuid,
        now: Timestamp,
    ) -> Result<Result<Message, CancelRefusal>, StoreError> {
        let mut tx = self.begin().await?;
        let work = messages::cancel(&mut tx, scope, id, now).await;
        finish(tx, work, "failed to commit the cancellation").await
    }

    async fn release_due(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        queue::release_due(&self.pool, now, limit).await
    }

    async fn take_tokens(
        &self,
        bucket: &str,
        rate: herald_store::rate::Rate,
        wanted: u32,
        now: Timestamp,
    ) -> Result<u32, StoreError> {
        let mut tx = self.begin().await?;
        // Create the bucket if it is new, then lock its row: concurrent takers queue here.
        sqlx::query(
            "INSERT INTO rate_buckets (bucket, tokens, updated_us) VALUES ($1, $2, $3)
             ON CONFLICT (bucket) DO NOTHING",
        )
        .bind(bucket)
        .bind(rate.burst.max(1.0))
        .bind(now.as_microsecond())
        .execute(&mut *tx)
        .await
        .ctx("failed to create a rate bucket")?;
        let row: (f64, i64) = sqlx::query_as(
            "SELECT tokens, updated_us FROM rate_buckets WHERE bucket = $1 FOR UPDATE",
        )
        .bind(bucket)
        .fetch_one(&mut *tx)
        .await
        .ctx("failed to read a rate bucket")?;
        let now_us = now.as_microsecond();
        let (granted, tokens) = herald_store::rate::refill(Some(row), now_us, rate, wanted);
        sqlx::query(
            "UPDATE rate_buckets SET tokens = $2, updated_us = GREATEST(updated_us, $3)
             WHERE bucket = $1",
        )
        .bind(bucket)
        .bind(tokens)
        .bind(now_us)
        .execute(&mut *tx)
        .await
        .ctx("failed to update a rate bucket")?;
        tx.commit().await.ctx("failed to update a rate bucket")?;
        Ok(granted)
    }

    async fn next_scheduled_at(&self) -> Result<Option<Timestamp>, StoreError> {
        queue::next_scheduled_at(&self.pool).await
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        queue::claim(&self.pool, now, lease_until, limit).await
    }

    async fn record(
        &self,
        results: &[SendResult],
        reports: &[ProviderReport],
        now: Timestamp,
    ) -> Result<Vec<ReportOutcome>, StoreError> {
        let mut tx = self.begin().await?;
        let work = queue::record(&mut tx, results, reports, now).await;
        finish(tx, work, "failed to commit results and reports").await
    }

    async fn expire_leases(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        queue::expire_leases(&self.pool, now, limit).await
    }

    async fn unsettled(&self, now: Timestamp, limit: u32) -> Result<Vec<Unsettled>, StoreError> {
        queue::unsettled(&self.pool, now, limit).await
    }

    async fn settle(
        &self,
        settlements: &[(Uuid, Settlement)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let work = queue::settle(&mut tx, settlements, now).await;
        finish(tx, work, "failed to commit reconciliation").await
    }

    async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        let purged = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
            .bind(ts(now))
            .execute(&self.pool)
            .await
            .ctx("failed to purge idempotency keys")?
            .rows_affected();
        Ok(purged)
    }
}
