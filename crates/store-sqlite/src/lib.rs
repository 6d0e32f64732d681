//! Herald's embedded store: one SQLite file in WAL mode.
//!
//! SQLite allows one writer at a time, so every write goes through a pool of exactly one
//! connection and starts with `BEGIN IMMEDIATE`: writers queue in-process instead of failing
//! with `SQLITE_BUSY`, and another process on the same file (the CLI while a server runs) waits
//! up to the busy timeout. Reads use a separate pool of read-only connections, which WAL lets
//! run alongside the writer.

mod accounts;
mod audience;
mod automation;
mod broadcasts;
mod bulk;
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

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use herald_domain::status::MessageStatus;
use herald_store::*;
use jiff::Timestamp;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{SqlSafeStr, Transaction};
use uuid::Uuid;

use convert::Ctx;

/// Tuning for the SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// `FULL` makes every commit durable against power loss; `NORMAL` only against a crash of
    /// the process (faster on slow disks).
    pub synchronous_full: bool,
    /// How long a write waits for another process holding the lock.
    pub busy_timeout: Duration,
    /// Read-only connections for concurrent readers.
    pub readers: u32,
    /// Page cache per connection, in KiB. Larger is not faster: SQLite walks the whole cache
    /// at transaction boundaries.
    pub cache_kib: u32,
    /// WAL pages between automatic checkpoints.
    pub wal_autocheckpoint_pages: u32,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            synchronous_full: true,
            busy_timeout: Duration::from_secs(10),
            readers: 4,
            cache_kib: 8 * 1024,
            wal_autocheckpoint_pages: 10_000,
        }
    }
}

/// A [`Store`] on one SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if missing) the database at `url` (`sqlite:herald.db`, `sqlite:///abs.db`).
    pub async fn connect(url: &str, config: &SqliteConfig) -> Result<SqliteStore, StoreError> {
        let base = SqliteConnectOptions::from_str(url)
            .ctx("invalid SQLite database URL")?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if config.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(config.busy_timeout)
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", format!("-{}", config.cache_kib))
            // Checkpointing copies the WAL into the database file; doing it every 1,000 pages
            // (the default) made a busy dispatcher spend a third of its time there. The WAL
            // file is truncated back to `journal_size_limit` after each checkpoint.
            .pragma(
                "wal_autocheckpoint",
                config.wal_autocheckpoint_pages.to_string(),
            )
            .pragma("journal_size_limit", (64 * 1024 * 1024).to_string())
            // Rows cross from sqlx's worker thread one by one; with room for a whole batch the
            // worker never stalls waiting for the reader to catch up.
            .row_buffer_size(1_024);
        let in_memory = base.get_filename().as_os_str() == ":memory:"
            || base.get_filename().as_os_str().is_empty();

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query(bulk::CREATE_BATCH_STATES).execute(conn).await?;
                    Ok(())
                })
            })
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(base.clone().create_if_missing(true))
            .await
            .ctx("failed to open the SQLite database")?;
        // An in-memory database exists only inside its one connection.
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(config.readers.max(1))
                .acquire_timeout(Duration::from_secs(60))
                .connect_lazy_with(base.read_only(true))
        };
        Ok(SqliteStore { writer, reader })
    }

    /// Start a write transaction holding the write lock from the first statement, so it can
    /// never fail half-way on a lock upgrade.
    async fn write(&self) -> Result<Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("failed to start a write transaction")
    }

    /// Close both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
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

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        migrator()
            .run(&self.writer)
            .await
            .ctx("failed to migrate the SQLite database")
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .ctx("database unreachable")?;
        Ok(())
    }

    async fn create_organization(
        &self,
        org: &Organization,
        keys: &[NewApiKey],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        orgs::insert_organization(&mut tx, org, keys).await?;
        tx.commit().await.ctx("failed to commit the organization")
    }

    async fn bootstrap_organization(
        &self,
        org: &Organization,
        keys: &[NewApiKey],
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM organizations")
            .fetch_one(&mut *tx)
            .await
            .ctx("failed to count organizations")?;
        if existing > 0 {
            return Ok(false);
        }
        orgs::insert_organization(&mut tx, org, keys).await?;
        tx.commit()
            .await
            .ctx("failed to commit the first organization")?;
        Ok(true)
    }

    async fn get_organization(&self, id: Uuid) -> Result<Option<Organization>, StoreError> {
        orgs::get_organization(&self.reader, id).await
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey, StoreError> {
        let mut tx = self.write().await?;
        orgs::insert_key(&mut tx, key).await?;
        tx.commit().await.ctx("failed to commit the API key")?;
        Ok(orgs::key_from_new(key))
    }

    async fn revoke_api_key(&self, id: Uuid, at: Timestamp) -> Result<Option<ApiKey>, StoreError> {
        let mut tx = self.write().await?;
        let key = orgs::revoke_key(&mut tx, id, at).await?;
        tx.commit().await.ctx("failed to commit the revocation")?;
        Ok(key)
    }

    async fn list_api_keys(&self, org_id: Uuid) -> Result<Vec<ApiKey>, StoreError> {
        orgs::list_keys(&self.reader, org_id).await
    }

    async fn find_api_key(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<(ApiKey, Organization)>, StoreError> {
        orgs::find_key(&self.reader, hash).await
    }

    async fn touch_api_key(&self, id: Uuid, at: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2")
            .bind(at.as_microsecond())
            .bind(id)
            .execute(&mut *tx)
            .await
            .ctx("failed to record API key use")?;
        tx.commit().await.ctx("failed to record API key use")
    }

    async fn create_provider_account(
        &self,
        account: &ProviderAccount,
        sealed_credentials: &[u8],
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AccountCreation, AccountRefusal>, StoreError> {
        let mut tx = self.write().await?;
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
        accounts::get(&self.reader, Some(org_id), id).await
    }

    async fn find_provider_account(&self, id: Uuid) -> Result<Option<ProviderAccount>, StoreError> {
        accounts::get(&self.reader, None, id).await
    }

    async fn accounts_of_kind(&self, kind: ProviderKind) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        sqlx::query_as("SELECT org_id, id FROM provider_accounts WHERE kind = ?1 ORDER BY id")
            .bind(kind.as_str())
            .fetch_all(&self.reader)
            .await
            .ctx("failed to list accounts by kind")
    }

    async fn provider_account_credentials(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<(ProviderAccount, Vec<u8>)>, StoreError> {
        accounts::with_credentials(&self.reader, org_id, id).await
    }

    async fn list_provider_accounts(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<ProviderAccount>, StoreError> {
        accounts::list(&self.reader, org_id, after, limit).await
    }

    async fn update_provider_account(
        &self,
        account: &ProviderAccount,
        sealed_credentials: Option<&[u8]>,
        read_at: Timestamp,
    ) -> Result<Result<(), AccountRefusal>, StoreError> {
        let mut tx = self.write().await?;
        let outcome = accounts::update(&mut tx, account, sealed_credentials, read_at).await?;
        if outcome.is_ok() {
            tx.commit()
                .await
                .ctx("failed to commit the provider account")?;
        }
        Ok(outcome)
    }

    async fn delete_provider_account(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Result<(), AccountRefusal>, StoreError> {
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO provider_prices (source, country, price_micros, fetched_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (source, country) DO UPDATE \
             SET price_micros = excluded.price_micros, fetched_at = excluded.fetched_at",
        )
        .bind(source)
        .bind(country.to_string())
        .bind(price.micros())
        .bind(fetched_at.as_microsecond())
        .execute(&mut *tx)
        .await
        .ctx("failed to store a price")?;
        tx.commit().await.ctx("failed to store a price")
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
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT country, price_micros, fetched_at FROM provider_prices WHERE source = ?1",
        )
        .bind(source)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to read stored prices")?;
        rows.into_iter()
            .map(|(country, micros, at)| {
                let region = herald_domain::phone::Region::parse(&country)
                    .map_err(|_| StoreError::Corrupt(format!("price country {country:?}")))?;
                Ok((
                    region,
                    herald_domain::money::Amount::from_micros(micros),
                    convert::timestamp(at)?,
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
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
        let removed = opt_outs::remove(&mut tx, org_id, phone).await?;
        if removed {
            let change = (OptOutAction::OptIn, source, cause, at);
            opt_outs::record(&mut tx, org_id, phone, change).await?;
        }
        tx.commit().await.ctx("failed to remove an opt-out")?;
        Ok(removed)
    }

    async fn keyword_settings(&self, org_id: Uuid) -> Result<Option<KeywordSettings>, StoreError> {
        let row: Option<(Option<String>, String, String)> = sqlx::query_as(
            "SELECT help_text, opt_out_words, opt_in_words FROM organizations WHERE id = ?1",
        )
        .bind(org_id)
        .fetch_optional(&self.reader)
        .await
        .ctx("failed to read keyword settings")?;
        let words = |text: &str| {
            serde_json::from_str::<Vec<String>>(text)
                .map_err(|e| StoreError::Corrupt(format!("keyword words: {e}")))
        };
        row.map(|(help_text, out, in_)| {
            Ok(KeywordSettings {
                help_text,
                opt_out_words: words(&out)?,
                opt_in_words: words(&in_)?,
            })
        })
        .transpose()
    }

    async fn set_keyword_settings(
        &self,
        org_id: Uuid,
        settings: &KeywordSettings,
    ) -> Result<(), StoreError> {
        let json = |words: &[String]| serde_json::Value::from(words.to_vec()).to_string();
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE organizations SET help_text = ?2, opt_out_words = ?3, opt_in_words = ?4 \
             WHERE id = ?1",
        )
        .bind(org_id)
        .bind(&settings.help_text)
        .bind(json(&settings.opt_out_words))
        .bind(json(&settings.opt_in_words))
        .execute(&mut *tx)
        .await
        .ctx("failed to save keyword settings")?;
        tx.commit().await.ctx("failed to save keyword settings")
    }

    async fn opt_out_history(
        &self,
        org_id: Uuid,
        phone: &str,
    ) -> Result<Vec<OptOutEvent>, StoreError> {
        opt_outs::history(&self.reader, org_id, phone).await
    }

    async fn opted_out_among(
        &self,
        org_id: Uuid,
        phones: &[String],
    ) -> Result<Vec<OptOut>, StoreError> {
        let wanted: Vec<(Uuid, &str)> = phones.iter().map(|p| (org_id, p.as_str())).collect();
        let mut conn = self.reader.acquire().await.ctx("database unreachable")?;
        let found = opt_outs::among(&mut conn, &wanted).await?;
        Ok(found.into_iter().map(|(_, entry)| entry).collect())
    }

    async fn list_opt_outs(
        &self,
        org_id: Uuid,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<OptOut>, Option<String>), StoreError> {
        opt_outs::list(&self.reader, org_id, after, limit).await
    }

    async fn insert_inbound(&self, message: &InboundMessage) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let inserted = inbound::insert(&mut tx, message).await?;
        tx.commit()
            .await
            .ctx("failed to store an inbound message")?;
        Ok(inserted)
    }

    async fn list_inbound(
        &self,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<InboundMessage>, StoreError> {
        inbound::list(&self.reader, org_id, after, limit).await
    }

    async fn find_number_owner(
        &self,
        kind: ProviderKind,
        number: &str,
    ) -> Result<Option<(Uuid, Uuid)>, StoreError> {
        inbound::number_owner(&self.reader, kind, number).await
    }

    async fn list_routes(&self, org_id: Uuid) -> Result<Vec<Route>, StoreError> {
        accounts::list_routes(&self.reader, org_id).await
    }

    async fn set_route(
        &self,
        org_id: Uuid,
        route: &Route,
    ) -> Result<Result<(), AccountRefusal>, StoreError> {
        let mut tx = self.write().await?;
        let outcome = accounts::set_route(&mut tx, org_id, route).await?;
        if outcome.is_ok() {
            tx.commit().await.ctx("failed to commit the route")?;
        }
        Ok(outcome)
    }

    async fn delete_route(&self, org_id: Uuid, key: &RouteKey) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let deleted = accounts::delete_route(&mut tx, org_id, key).await?;
        tx.commit()
            .await
            .ctx("failed to commit the route deletion")?;
        Ok(deleted)
    }

    async fn accept_messages(
        &self,
        items: &[(NewMessage, Option<IdempotencyRecord>)],
        now: Timestamp,
    ) -> Result<Vec<Insertion>, StoreError> {
        let mut tx = self.write().await?;
        let insertions = messages::accept(&mut tx, items, now).await?;
        tx.commit()
            .await
            .ctx("failed to commit accepted messages")?;
        Ok(insertions)
    }

    async fn insert_messages(&self, messages: &[NewMessage]) -> Result<u64, StoreError> {
        let Some(first) = messages.first() else {
            return Ok(0);
        };
        let month = month_of(first.created_at);
        let mut orgs: Vec<Uuid> = messages.iter().map(|m| m.scope.org_id).collect();
        orgs.sort_unstable();
        orgs.dedup();
        let mut tx = self.write().await?;
        let metered = credits::load_metered(&mut tx, &orgs, &month).await?;
        if !metered.is_empty() {
            // All or nothing for metered organizations: one transaction for the whole call.
            let mut ledger = Ledger::new(metered);
            messages::insert_many(&mut tx, messages, Some(&mut ledger)).await?;
            credits::reserve(&mut tx, &ledger.finish(), &month).await?;
            tx.commit()
                .await
                .ctx("failed to commit inserted messages")?;
            return Ok(messages.len() as u64);
        }
        // Each chunk is one transaction: big enough to amortise the commit, small enough that
        // API writes waiting for the lock are not held up for long.
        let mut tx = Some(tx);
        for chunk in messages.chunks(5_000) {
            let mut tx = match tx.take() {
                Some(tx) => tx,
                None => self.write().await?,
            };
            messages::insert_many(&mut tx, chunk, None).await?;
            tx.commit()
                .await
                .ctx("failed to commit inserted messages")?;
        }
        Ok(messages.len() as u64)
    }

    async fn get_message(&self, scope: Scope, id: Uuid) -> Result<Option<Message>, StoreError> {
        let mut conn = self
            .reader
            .acquire()
            .await
            .ctx("failed to read a message")?;
        messages::get(&mut conn, scope, id).await
    }

    async fn list_messages(
        &self,
        scope: Scope,
        filter: &MessageFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Message>, StoreError> {
        let mut conn = self.reader.acquire().await.ctx("failed to list messages")?;
        messages::list(&mut conn, scope, filter, after, limit).await
    }

    async fn count_messages(&self, org_id: Uuid) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE org_id = ?1")
            .bind(org_id)
            .fetch_one(&self.reader)
            .await
            .ctx("failed to count messages")?;
        Ok(count as u64)
    }

    async fn status_counts(&self, org_id: Uuid) -> Result<Vec<(MessageStatus, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM messages WHERE org_id = ?1 GROUP BY status",
        )
        .bind(org_id)
        .fetch_all(&self.reader)
        .await
        .ctx("failed to count messages by status")?;
        rows.into_iter()
            .map(|(status, n)| Ok((convert::status(&status)?, n as u64)))
            .collect()
    }

    async fn cancel_message(
        &self,
        scope: Scope,
        id: Uuid,
        now: Timestamp,
    ) -> Result<Result<Message, CancelRefusal>, StoreError> {
        let mut tx = self.write().await?;
        let outcome = messages::cancel(&mut tx, scope, id, now).await?;
        tx.commit().await.ctx("failed to commit the cancellation")?;
        Ok(outcome)
    }

    async fn release_due(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let released = queue::release_due(&mut tx, now, limit).await?;
        tx.commit()
            .await
            .ctx("failed to commit released messages")?;
        Ok(released)
    }

    async fn take_tokens(
        &self,
        bucket: &str,
        rate: herald_store::rate::Rate,
        wanted: u32,
        now: Timestamp,
    ) -> Result<u32, StoreError> {
        // The write transaction is the lock: SQLite has one writer.
        let mut tx = self.write().await?;
        let row: Option<(f64, i64)> =
            sqlx::query_as("SELECT tokens, updated_us FROM rate_buckets WHERE bucket = ?1")
                .bind(bucket)
                .fetch_optional(&mut *tx)
                .await
                .ctx("failed to read a rate bucket")?;
        let now_us = now.as_microsecond();
        let (granted, tokens) = herald_store::rate::refill(row, now_us, rate, wanted);
        sqlx::query(
            "INSERT INTO rate_buckets (bucket, tokens, updated_us) VALUES (?1, ?2, ?3)
             ON CONFLICT (bucket) DO UPDATE
             SET tokens = excluded.tokens, updated_us = max(updated_us, excluded.updated_us)",
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
        queue::next_scheduled_at(&self.reader).await
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut tx = self.write().await?;
        let claimed = queue::claim(&mut tx, now, lease_until, limit).await?;
        tx.commit().await.ctx("failed to commit claimed messages")?;
        Ok(claimed)
    }

    async fn record(
        &self,
        results: &[SendResult],
        reports: &[ProviderReport],
        now: Timestamp,
    ) -> Result<Vec<ReportOutcome>, StoreError> {
        let mut tx = self.write().await?;
        let outcomes = queue::record(&mut tx, results, reports, now).await?;
        tx.commit()
            .await
            .ctx("failed to commit results and reports")?;
        Ok(outcomes)
    }

    async fn expire_leases(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let expired = queue::expire_leases(&mut tx, now, limit).await?;
        tx.commit().await.ctx("failed to commit expired leases")?;
        Ok(expired)
    }

    async fn unsettled(&self, now: Timestamp, limit: u32) -> Result<Vec<Unsettled>, StoreError> {
        queue::unsettled(&self.reader, now, limit).await
    }

    async fn settle(
        &self,
        settlements: &[(Uuid, Settlement)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        queue::settle(&mut tx, settlements, now).await?;
        tx.commit().await.ctx("failed to commit reconciliation")
    }

    async fn purge_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let purged = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= ?1")
            .bind(now.as_microsecond())
            .execute(&mut *tx)
            .await
            .ctx("failed to purge idempotency keys")?
            .rows_affected();
        tx.commit().await.ctx("failed to purge idempotency keys")?;
        Ok(purged)
    }
}
