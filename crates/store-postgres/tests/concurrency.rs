//! What only a shared server can get wrong: several processes (here, several stores with pools
//! of their own) migrating, accepting idempotent requests and recording status batches on one
//! database at the same moment. Skipped like the conformance suite when PostgreSQL is absent.

use std::sync::Arc;

use herald_domain::encoding::Encoding;
use herald_domain::message::{MessageType, Mode};
use herald_domain::money::{Amount, Currency};
use herald_domain::phone::Region;
use herald_domain::status::{MessageStatus, ReportedStatus};
use herald_store::*;
use herald_store_postgres::test_support::{self, TestDatabase, fresh_database};
use herald_store_postgres::{PostgresConfig, PostgresStore};
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

fn at(seconds: i64) -> Timestamp {
    "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(seconds)
}

async fn open(database: &TestDatabase) -> Arc<PostgresStore> {
    let store = PostgresStore::connect(database.url(), &PostgresConfig::default())
        .await
        .unwrap();
    Arc::new(store)
}

async fn organization(store: &PostgresStore) -> Scope {
    let org = Organization {
        id: Uuid::now_v7(),
        name: "acme".into(),
        default_region: Region::parse("US").unwrap(),
        created_at: at(0),
    };
    store.create_organization(&org, &[]).await.unwrap();
    Scope {
        org_id: org.id,
        mode: Mode::Live,
    }
}

fn message(scope: Scope, created_at: Timestamp) -> NewMessage {
    NewMessage {
        id: Uuid::now_v7(),
        scope,
        api_key_id: None,
        to: "+14155550100".into(),
        country: Some(Region::parse("US").unwrap()),
        sender: None,
        body: "Hello".into(),
        encoding: Encoding::Gsm7,
        segments: 1,
        kind: MessageType::Transactional,
        priority: 10,
        estimated_cost: Amount::from_micros(7_900),
        currency: Currency::USD,
        send_at: None,
        max_attempts: 3,
        created_at,
        broadcast_id: None,
        campaign_run_id: None,
    }
}

async fn close(stores: Vec<Arc<PostgresStore>>, database: TestDatabase) {
    for store in stores {
        store.close().await;
    }
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_once() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(open(&database).await);
    }
    let runs = stores
        .iter()
        .cloned()
        .map(|store| tokio::spawn(async move { store.migrate().await }));
    for run in runs {
        run.await.unwrap().expect("a concurrent migration succeeds");
    }
    organization(&stores[0]).await;
    close(stores, database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_store_one_message() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (a, b) = (open(&database).await, open(&database).await);
    a.migrate().await.unwrap();
    let scope = organization(&a).await;
    for round in 0..20 {
        let record = IdempotencyRecord {
            key: format!("order-{round}"),
            request_hash: [7; 32],
            response: b"first".to_vec(),
            expires_at: at(86_400),
        };
        let attempts = (0..6).map(|i| {
            let (store, record) = (
                if i % 2 == 0 { a.clone() } else { b.clone() },
                record.clone(),
            );
            tokio::spawn(async move {
                store
                    .insert_message(&message(scope, at(1)), Some(&record), at(1))
                    .await
                    .unwrap()
            })
        });
        let mut created = Vec::new();
        let mut replayed = Vec::new();
        for attempt in attempts {
            match attempt.await.unwrap() {
                Insertion::Created(message) => created.push(message.id),
                Insertion::Replayed { message_id, .. } => replayed.push(message_id),
                Insertion::KeyReused => panic!("the same request is never a reused key"),
                Insertion::Refused(refusal) => panic!("an unmetered organization: {refusal}"),
            }
        }
        assert_eq!(created.len(), 1, "exactly one request stores the message");
        assert!(
            replayed.iter().all(|id| *id == created[0]),
            "replays name the stored message"
        );
    }
    assert_eq!(a.count_messages(scope.org_id).await.unwrap(), 20);
    close(vec![a, b], database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_in_opposite_orders_do_not_deadlock() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let (a, b) = (open(&database).await, open(&database).await);
    a.migrate().await.unwrap();
    let scope = organization(&a).await;
    for i in 0..300 {
        a.insert_message(&message(scope, at(i)), None, at(i))
            .await
            .unwrap();
    }
    let claims = a.claim_due(at(400), at(430), 300).await.unwrap();
    assert_eq!(claims.len(), 300);
    let results: Vec<SendResult> = claims
        .iter()
        .map(|claim| SendResult {
            id: claim.id,
            attempt: claim.attempt,
            provider: Some("simulator".into()),
            outcome: SendOutcome::Accepted {
                provider_message_id: format!("SM-{}", claim.id),
                cost: None,
            },
        })
        .collect();
    a.record_results(&results, at(401)).await.unwrap();

    // Two processes apply the same reports at once, one forwards and one backwards, several
    // times over: rows are locked in id order whatever the input order, so neither can end up
    // holding rows the other waits for.
    let reports: Vec<ProviderReport> = claims
        .iter()
        .map(|claim| ProviderReport {
            provider: "simulator".into(),
            message_id: None,
            provider_message_id: format!("SM-{}", claim.id),
            status: ReportedStatus::Delivered,
            error_code: None,
            error_message: None,
            cost: Some(Amount::from_micros(8_000)),
        })
        .collect();
    let mut reversed = reports.clone();
    reversed.reverse();
    let tasks = [(a.clone(), reports), (b.clone(), reversed)]
        .into_iter()
        .map(|(store, reports)| {
            tokio::spawn(async move {
                let mut applied = 0;
                for _ in 0..3 {
                    let outcomes = store.apply_reports(&reports, at(402)).await.unwrap();
                    assert!(outcomes.iter().all(|o| *o != ReportOutcome::NotFound));
                    applied += outcomes
                        .iter()
                        .filter(|o| **o == ReportOutcome::Applied)
                        .count();
                }
                applied
            })
        });
    let mut applied = 0;
    for task in tasks {
        applied += task.await.unwrap();
    }
    assert_eq!(
        applied, 300,
        "each report is applied once, by whichever batch got there first"
    );

    let page = a
        .list_messages(scope, &MessageFilter::default(), None, 300)
        .await
        .unwrap();
    for message in &page.items {
        assert_eq!(message.status, MessageStatus::Delivered);
        assert_eq!(message.actual_cost, Some(Amount::from_micros(8_000)));
        assert_eq!(
            message.history.iter().map(|c| c.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }
    close(vec![a, b], database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_test_database_is_dropped_anyway() {
    use sqlx::Connection;
    let Some(database) = fresh_database().await else {
        return;
    };
    let name = database.name().to_owned();
    drop(database);
    let admin = std::env::var(test_support::URL_VAR)
        .unwrap_or_else(|_| test_support::DEFAULT_URL.to_owned());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    let left: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    assert!(left.is_empty(), "database {name} outlived its TestDatabase");
}
