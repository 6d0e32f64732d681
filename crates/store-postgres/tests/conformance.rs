//! The storage conformance suite against PostgreSQL: each case on a fresh database, created
//! and dropped by [`herald_store_postgres::test_support`]. Without a reachable server the cases
//! are skipped (with a notice) unless `HERALD_TEST_POSTGRES_REQUIRED=1`.

use std::sync::{Arc, Mutex};

use futures::FutureExt;
use herald_store::Store;
use herald_store::conformance::Subject;
use herald_store_postgres::test_support::{TestDatabase, fresh_database};
use herald_store_postgres::{PostgresConfig, PostgresStore};

/// What a case's database needs for cleanup: the database, and every store opened on it so
/// their pools can be closed before the database is dropped.
struct Harness {
    database: TestDatabase,
    stores: Arc<Mutex<Vec<PostgresStore>>>,
}

async fn subject() -> Option<Subject> {
    let database = fresh_database().await?;
    let stores = Arc::new(Mutex::new(Vec::new()));
    let open = {
        let (url, stores) = (database.url().to_owned(), stores.clone());
        move || {
            let (url, stores) = (url.clone(), stores.clone());
            async move {
                let store = PostgresStore::connect(&url, &PostgresConfig::default())
                    .await
                    .expect("connect to the test database");
                stores.lock().unwrap().push(store.clone());
                Arc::new(store) as Arc<dyn Store>
            }
            .boxed()
        }
    };
    let store = open().await;
    store.migrate().await.expect("migrate");
    Some(Subject::new(store, open).with_guard(Harness { database, stores }))
}

async fn cleanup(subject: Subject) {
    let guard = subject.into_guard().expect("the subject keeps its harness");
    let Harness { database, stores } = *guard.downcast::<Harness>().expect("a PostgreSQL harness");
    let stores = std::mem::take(&mut *stores.lock().unwrap());
    for store in stores {
        store.close().await;
    }
    database.drop_database().await;
}

herald_store::conformance_tests!(subject, cleanup);
