//! A fresh database for one benchmark run, and reading its durable record afterwards.
//!
//! Every scenario starts from an empty database so runs are comparable: a new SQLite file in a
//! temporary directory (or the file `--database-url` names), or a new PostgreSQL database
//! created on the server `--database-url` points at and dropped afterwards. Results are read
//! back from the status history the store wrote, so the numbers describe what was durably
//! recorded, not what the engine believed.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_engine::clock::{Clock, SystemClock};
use herald_store::{Organization, Scope, Store};
use herald_store_postgres::{PostgresConfig, PostgresStore};
use herald_store_sqlite::{SqliteConfig, SqliteStore};
use sqlx::Connection;
use uuid::Uuid;

/// Which backend a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// The PostgreSQL server used when `--store postgres` is given without a URL.
pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

enum Cleanup {
    Keep,
    Dir(#[allow(dead_code)] tempfile::TempDir),
    DropDatabase { admin_url: String, name: String },
}

/// The database of one run.
pub struct BenchDb {
    pub kind: StoreKind,
    /// The URL the store (and any server started for the run) connects to.
    pub url: String,
    pub store: Arc<dyn Store>,
    cleanup: Cleanup,
}

/// The history entries of one status: (message, microseconds since the epoch).
pub type Events = Vec<(Uuid, i64)>;

impl BenchDb {
    pub async fn create(kind: StoreKind, url: Option<&str>) -> Result<BenchDb> {
        let (url, cleanup) = match kind {
            StoreKind::Sqlite => match url {
                Some(url) => (url.to_owned(), Cleanup::Keep),
                None => {
                    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
                    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                    (url, Cleanup::Dir(dir))
                }
            },
            StoreKind::Postgres => {
                let admin_url = url.unwrap_or(DEFAULT_POSTGRES).to_owned();
                let name = format!("herald_bench_{}", Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .context("cannot connect to the PostgreSQL server")?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .context("cannot create the benchmark database")?;
                admin.close().await.ok();
                (
                    with_database(&admin_url, &name)?,
                    Cleanup::DropDatabase { admin_url, name },
                )
            }
        };
        let store = open(kind, &url).await?;
        store.migrate().await?;
        Ok(BenchDb {
            kind,
            url,
            store,
            cleanup,
        })
    }

    /// A new organization for the run.
    pub async fn organization(&self) -> Result<(Organization, Scope)> {
        let org = Organization {
            id: Uuid::now_v7(),
            name: "benchmark".into(),
            default_region: Region::parse("US").map_err(|e| anyhow::anyhow!("{e}"))?,
            created_at: SystemClock.now(),
        };
        self.store.create_organization(&org, &[]).await?;
        let scope = Scope {
            org_id: org.id,
            mode: Mode::Live,
        };
        Ok((org, scope))
    }

    /// `n` contacts of `org_id` (lead status `new`) with the numbers `phone(0..n)`, one in 100
    /// of them (from the first) on the suppression list; answers how many opted out.
    pub async fn seed_contacts(
        &self,
        org_id: Uuid,
        n: u64,
        phone: impl Fn(u64) -> String,
    ) -> Result<u64> {
        let us = Region::parse("US").map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut start = 0;
        while start < n {
            let end = (start + 1_000).min(n);
            let rows: Vec<herald_store::ContactUpsert> = (start..end)
                .map(|i| herald_store::ContactUpsert {
                    phone: phone(i),
                    country: Some(us),
                    patch: herald_store::ContactPatch::default(),
                })
                .collect();
            self.store
                .upsert_contacts(org_id, &rows, "new", SystemClock.now())
                .await?;
            start = end;
        }
        for i in (0..n).step_by(100) {
            self.store
                .opt_out(org_id, &phone(i), "benchmark", None, SystemClock.now())
                .await?;
        }
        Ok(n.div_ceil(100))
    }

    /// When each message entered `status`, from the stored history.
    pub async fn events(&self, org_id: Uuid, status: &str) -> Result<Events> {
        match self.kind {
            StoreKind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await?;
                let rows = sqlx::query_as(
                    "SELECT message_id, occurred_at FROM message_events WHERE org_id = ?1 AND status = ?2",
                )
                .bind(org_id)
                .bind(status)
                .fetch_all(&mut conn)
                .await?;
                conn.close().await.ok();
                Ok(rows)
            }
            StoreKind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await?;
                let rows = sqlx::query_as(
                    "SELECT message_id, (extract(epoch FROM occurred_at) * 1000000)::bigint
                     FROM message_events WHERE org_id = $1 AND status = $2",
                )
                .bind(org_id)
                .bind(status)
                .fetch_all(&mut conn)
                .await?;
                conn.close().await.ok();
                Ok(rows)
            }
        }
    }

    /// Drop the database (PostgreSQL) or its directory (temporary SQLite).
    pub async fn finish(self) -> Result<()> {
        drop(self.store);
        if let Cleanup::DropDatabase { admin_url, name } = self.cleanup {
            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
        }
        Ok(())
    }
}

pub async fn open(kind: StoreKind, url: &str) -> Result<Arc<dyn Store>> {
    Ok(match kind {
        StoreKind::Sqlite => Arc::new(SqliteStore::connect(url, &SqliteConfig::default()).await?),
        StoreKind::Postgres => {
            Arc::new(PostgresStore::connect(url, &PostgresConfig::default()).await?)
        }
    })
}

/// `postgres://u@h:5432/postgres?x=y` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let Some(authority_start) = base.find("://").map(|i| i + 3) else {
        bail!("{url} is not a PostgreSQL URL");
    };
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut result = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_is_replaced_in_the_url() {
        assert_eq!(
            with_database("postgres://p@h:5432/postgres", "x").unwrap(),
            "postgres://p@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://p@h", "x").unwrap(),
            "postgres://p@h/x"
        );
        assert_eq!(
            with_database("postgres://p@h/db?sslmode=disable", "x").unwrap(),
            "postgres://p@h/x?sslmode=disable"
        );
    }
}
