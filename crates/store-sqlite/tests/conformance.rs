//! The storage conformance suite against SQLite: each case on a fresh database file.

use std::sync::Arc;

use futures::FutureExt;
use herald_store::Store;
use herald_store::conformance::Subject;
use herald_store_sqlite::{SqliteConfig, SqliteStore};

async fn subject() -> Option<Subject> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("herald.db").display());
    let open = move |url: String| async move {
        let store = SqliteStore::connect(&url, &SqliteConfig::default())
            .await
            .expect("open SQLite");
        Arc::new(store) as Arc<dyn Store>
    };
    let store = open(url.clone()).await;
    store.migrate().await.expect("migrate");
    Some(Subject::new(store, move || open(url.clone()).boxed()).with_guard(dir))
}

async fn cleanup(subject: Subject) {
    drop(subject);
}

herald_store::conformance_tests!(subject, cleanup);
