//! A database the engine's tests can open again and again, as separate processes would.

use std::sync::Arc;

use herald_store::Store;
use herald_store_postgres::test_support::{TestDatabase, fresh_database};
use herald_store_postgres::{PostgresConfig, PostgresStore};
use herald_store_sqlite::{SqliteConfig, SqliteStore};

/// A SQLite file or a throwaway PostgreSQL database.
pub enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(Box<TestDatabase>),
}

impl Place {
    /// `None` when PostgreSQL is unavailable and not required.
    pub async fn new(postgres: bool) -> Option<Place> {
        Some(if postgres {
            Place::Postgres(Box::new(fresh_database().await?))
        } else {
            Place::Sqlite(tempfile::tempdir().unwrap())
        })
    }

    /// A new connection to the database, as a new process would open.
    pub async fn connect(&self) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = match self {
            Place::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("herald.db").display());
                Arc::new(
                    SqliteStore::connect(&url, &SqliteConfig::default())
                        .await
                        .unwrap(),
                )
            }
            Place::Postgres(database) => Arc::new(
                PostgresStore::connect(database.url(), &PostgresConfig::default())
                    .await
                    .unwrap(),
            ),
        };
        store.migrate().await.unwrap();
        store
    }

    /// Drop the PostgreSQL database, if any.
    pub async fn remove(self) {
        if let Place::Postgres(database) = self {
            database.drop_database().await;
        }
    }
}
