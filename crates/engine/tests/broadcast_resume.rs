//! A broadcast whose process dies while resolving it is finished by another process, with every
//! recipient queued exactly once. Process A runs on its own runtime and is dropped mid-way,
//! with no cleanup: its resolver task stops wherever it was and its open transaction is lost.
//! Process B, on the same database with a manual clock, takes the broadcast over only once
//! A's lease has run out. On both stores.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_engine::broadcasts::{self, BroadcastRequest, Recipient, Started};
use herald_engine::clock::ManualClock;
use herald_engine::{Engine, EngineConfig};
use herald_store::{
    BroadcastCounts, BroadcastStatus, ContactPatch, ContactUpsert, MessageFilter, Organization,
    Scope, Store,
};
use jiff::{SignedDuration, Timestamp};
use support::Place;
use uuid::Uuid;

/// Contacts in the audience: several batches, so the crash lands part-way.
const AUDIENCE: u64 = 6_000;

fn t0() -> Timestamp {
    "2026-05-01T09:00:00Z".parse().unwrap()
}

fn engine(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> Arc<Engine> {
    Arc::new(Engine::new(store, clock, EngineConfig::default(), None))
}

fn phone(i: u64) -> String {
    format!("+1415300{i:04}")
}

fn a_crashed_resolver_is_resumed_without_loss_or_duplicates(postgres: bool) {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(place) = main.block_on(Place::new(postgres)) else {
        return;
    };
    let org = Organization {
        id: Uuid::now_v7(),
        name: "acme".into(),
        default_region: Region::parse("US").unwrap(),
        created_at: t0(),
    };
    let scope = Scope {
        org_id: org.id,
        mode: Mode::Live,
    };
    main.block_on(async {
        let store = place.connect().await;
        store.create_organization(&org, &[]).await.unwrap();
        let rows: Vec<ContactUpsert> = (0..AUDIENCE)
            .map(|i| ContactUpsert {
                phone: phone(i),
                country: Some(Region::parse("US").unwrap()),
                patch: ContactPatch::default(),
            })
            .collect();
        for chunk in rows.chunks(1_000) {
            store
                .upsert_contacts(org.id, chunk, "new", t0())
                .await
                .unwrap();
        }
    });

    // Process A: starts the broadcast, and is gone once its first batch is stored.
    let process_a = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = process_a.block_on(async {
        let store = place.connect().await;
        let engine = engine(store.clone(), Arc::new(ManualClock::new(t0())));
        let request = BroadcastRequest {
            // Everyone in `new`, then one of them again by number: a duplicate across the crash.
            recipients: vec![
                Recipient::LeadStatus("new".into()),
                Recipient::Phone(phone(7)),
            ],
            body: Some("Class moved to 10:00".into()),
            ..BroadcastRequest::default()
        };
        let started = broadcasts::start(
            &engine,
            &org,
            scope,
            None,
            request,
            serde_json::json!({}),
            None,
        )
        .await
        .unwrap();
        let Started::Background(broadcast) = started else {
            panic!("a lead-status audience resolves in the background: {started:?}");
        };
        loop {
            let now = store.get_broadcast(scope, broadcast.id).await.unwrap();
            if now.unwrap().counts.queued > 0 {
                break broadcast.id;
            }
            tokio::task::yield_now().await;
        }
    });
    drop(process_a);

    main.block_on(async {
        let store = place.connect().await;
        let crashed = store.get_broadcast(scope, id).await.unwrap().unwrap();
        assert_eq!(
            crashed.status,
            BroadcastStatus::Resolving,
            "the broadcast finished before the crash: {:?}",
            crashed.counts
        );
        assert!(crashed.counts.queued < AUDIENCE, "{:?}", crashed.counts);
        assert_eq!(crashed.counts.accounted(), crashed.counts.requested);

        // Process B: leaves it alone while A's lease could still be good, then takes it over.
        let clock = Arc::new(ManualClock::new(t0() + SignedDuration::from_secs(30)));
        let engine = engine(store.clone(), clock.clone());
        assert_eq!(broadcasts::resume_stalled(&engine).await.unwrap(), 0);
        clock.advance(SignedDuration::from_secs(31));
        assert_eq!(broadcasts::resume_stalled(&engine).await.unwrap(), 1);
        assert_eq!(broadcasts::resume_stalled(&engine).await.unwrap(), 0);

        let done = store.get_broadcast(scope, id).await.unwrap().unwrap();
        assert_eq!(done.status, BroadcastStatus::Queued, "{done:?}");
        assert_eq!(
            done.counts,
            BroadcastCounts {
                requested: AUDIENCE + 1,
                queued: AUDIENCE,
                duplicates: 1,
                ..BroadcastCounts::default()
            }
        );

        // Every contact has exactly one message.
        let filter = MessageFilter {
            broadcast_id: Some(id),
            ..MessageFilter::default()
        };
        let mut seen = HashSet::new();
        let mut after = None;
        loop {
            let page = store
                .list_messages(scope, &filter, after, 500)
                .await
                .unwrap();
            for message in &page.items {
                assert!(seen.insert(message.to.clone()), "{} twice", message.to);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len() as u64, AUDIENCE);
        assert_eq!(store.count_messages(org.id).await.unwrap(), AUDIENCE);
    });
    main.block_on(place.remove());
}

#[test]
fn sqlite_a_crashed_resolver_is_resumed_without_loss_or_duplicates() {
    a_crashed_resolver_is_resumed_without_loss_or_duplicates(false);
}

#[test]
fn postgres_a_crashed_resolver_is_resumed_without_loss_or_duplicates() {
    a_crashed_resolver_is_resumed_without_loss_or_duplicates(true);
}
