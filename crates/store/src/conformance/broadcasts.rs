//! Conformance cases for broadcasts: stored with their first messages in one transaction and
//! only visible in their scope, later batches written with the counts that include them,
//! credits reserved all or nothing per batch, and recipients de-duplicated across batches.

use uuid::Uuid;

use super::{Subject, at, message, organization, t0};
use crate::*;

fn broadcast(scope: Scope, status: BroadcastStatus, counts: BroadcastCounts) -> Broadcast {
    Broadcast {
        id: Uuid::now_v7(),
        org_id: scope.org_id,
        mode: scope.mode,
        status,
        request: serde_json::json!({"body": "Hello", "recipients": [{"type": "phone", "phone": "+12025550100"}]}),
        counts,
        error: None,
        created_at: t0(),
        finished_at: None,
    }
}

fn of(b: &Broadcast, to: &str) -> NewMessage {
    let mut m = message(b.scope(), to, t0());
    m.broadcast_id = Some(b.id);
    m
}

async fn messages_of(store: &dyn Store, scope: Scope, id: Uuid) -> Vec<Message> {
    let filter = MessageFilter {
        broadcast_id: Some(id),
        ..Default::default()
    };
    store
        .list_messages(scope, &filter, None, 100)
        .await
        .unwrap()
        .items
}

pub async fn broadcasts_are_stored_with_their_messages_and_only_for_their_organization(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let counts = BroadcastCounts {
        requested: 3,
        queued: 2,
        duplicates: 1,
        ..Default::default()
    };
    let mut b = broadcast(scope, BroadcastStatus::Resolving, counts);
    let first = [of(&b, "+12025550100"), of(&b, "+12025550101")];
    let created = store
        .create_broadcast(&b, &first, None, t0())
        .await
        .unwrap();
    assert_eq!(created, BroadcastCreation::Created);
    assert_eq!(
        store.get_broadcast(scope, b.id).await.unwrap(),
        Some(b.clone())
    );

    // A message sent alone is not part of the broadcast.
    store
        .insert_messages(&[message(scope, "+12025550109", t0())])
        .await
        .unwrap();
    let listed = messages_of(store, scope, b.id).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|m| m.broadcast_id == Some(b.id)));
    let read = store
        .get_message(scope, first[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.broadcast_id, Some(b.id));

    // A later batch lands with the counts that include it.
    b.counts.requested += 1;
    b.counts.queued += 1;
    b.status = BroadcastStatus::Queued;
    b.finished_at = Some(at(5));
    store
        .queue_broadcast_batch(&b, &[of(&b, "+12025550102")])
        .await
        .unwrap()
        .unwrap();
    let read = store.get_broadcast(scope, b.id).await.unwrap().unwrap();
    assert_eq!(read, b);
    assert_eq!(read.counts.accounted(), read.counts.requested);
    assert_eq!(messages_of(store, scope, b.id).await.len(), 3);

    // Another organization, or the other mode, sees nothing.
    assert_eq!(store.get_broadcast(other, b.id).await.unwrap(), None);
    assert!(messages_of(store, other, b.id).await.is_empty());
    let test = Scope {
        mode: herald_domain::message::Mode::Test,
        ..scope
    };
    assert_eq!(store.get_broadcast(test, b.id).await.unwrap(), None);
    assert!(
        store
            .list_broadcasts(other, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

pub async fn listing_broadcasts_walks_every_page_newest_first(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let b = broadcast(scope, BroadcastStatus::Queued, BroadcastCounts::default());
        store.create_broadcast(&b, &[], None, t0()).await.unwrap();
        ids.push(b.id);
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_broadcasts(scope, after, 2).await.unwrap();
        seen.extend(page.items.iter().map(|b| b.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

pub async fn an_idempotency_key_replays_a_broadcast_creation(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let record = |hash: u8| IdempotencyRecord {
        key: "bc-1".into(),
        request_hash: [hash; 32],
        response: b"{\"first\":true}".to_vec(),
        expires_at: at(3600),
    };
    let b = broadcast(scope, BroadcastStatus::Queued, BroadcastCounts::default());
    let first = store
        .create_broadcast(&b, &[of(&b, "+12025550100")], Some(&record(1)), t0())
        .await
        .unwrap();
    assert_eq!(first, BroadcastCreation::Created);
    let again = broadcast(scope, BroadcastStatus::Queued, BroadcastCounts::default());
    let replay = store
        .create_broadcast(
            &again,
            &[of(&again, "+12025550100")],
            Some(&record(1)),
            at(1),
        )
        .await
        .unwrap();
    assert_eq!(
        replay,
        BroadcastCreation::Replayed {
            id: b.id,
            response: b"{\"first\":true}".to_vec()
        }
    );
    let reused = store
        .create_broadcast(&again, &[], Some(&record(2)), at(1))
        .await
        .unwrap();
    assert_eq!(reused, BroadcastCreation::KeyReused);
    assert_eq!(store.get_broadcast(scope, again.id).await.unwrap(), None);
    assert!(messages_of(store, scope, again.id).await.is_empty());
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 1);
}

pub async fn a_broadcast_batch_that_would_overdraw_stores_nothing(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let grant = CreditGrant {
        id: Uuid::now_v7(),
        org_id: scope.org_id,
        credits: 2,
        reason: None,
        granted_by: "cli".into(),
        created_at: t0(),
    };
    store
        .grant_credits(&grant, None, &month_of(t0()))
        .await
        .unwrap()
        .unwrap();
    let record = IdempotencyRecord {
        key: "bc-2".into(),
        request_hash: [7; 32],
        response: b"{}".to_vec(),
        expires_at: at(3600),
    };

    // Three messages for two credits: the broadcast, its messages and its key are not stored.
    let b = broadcast(scope, BroadcastStatus::Queued, BroadcastCounts::default());
    let three = [
        of(&b, "+12025550100"),
        of(&b, "+12025550101"),
        of(&b, "+12025550102"),
    ];
    let refused = store
        .create_broadcast(&b, &three, Some(&record), t0())
        .await
        .unwrap();
    assert!(
        matches!(refused, BroadcastCreation::Refused(_)),
        "{refused:?}"
    );
    assert_eq!(store.get_broadcast(scope, b.id).await.unwrap(), None);
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 0);

    // The key was not kept: the same request succeeds within the credits.
    let mut b = broadcast(
        scope,
        BroadcastStatus::Resolving,
        BroadcastCounts::default(),
    );
    let created = store
        .create_broadcast(&b, &[of(&b, "+12025550100")], Some(&record), t0())
        .await
        .unwrap();
    assert_eq!(created, BroadcastCreation::Created);

    // A later batch past the balance is refused whole; the counts stay as they were.
    let before = store.get_broadcast(scope, b.id).await.unwrap().unwrap();
    b.counts.requested = 3;
    b.counts.queued = 3;
    let refused = store
        .queue_broadcast_batch(&b, &[of(&b, "+12025550101"), of(&b, "+12025550102")])
        .await
        .unwrap();
    assert!(refused.is_err());
    assert_eq!(
        store.get_broadcast(scope, b.id).await.unwrap(),
        Some(before)
    );
    assert_eq!(messages_of(store, scope, b.id).await.len(), 1);
    let account = store
        .credit_account(scope.org_id, &month_of(t0()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.reserved, 1);
}

pub async fn broadcast_recipients_are_claimed_once_across_batches(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let b = broadcast(
        scope,
        BroadcastStatus::Resolving,
        BroadcastCounts::default(),
    );
    store.create_broadcast(&b, &[], None, t0()).await.unwrap();
    let other = broadcast(
        scope,
        BroadcastStatus::Resolving,
        BroadcastCounts::default(),
    );
    store
        .create_broadcast(&other, &[], None, t0())
        .await
        .unwrap();

    let phones = |list: &[&str]| list.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let batch: Vec<String> = (0..300).map(|i| format!("+1202555{i:04}")).collect();
    assert_eq!(
        store
            .claim_broadcast_recipients(b.id, &batch)
            .await
            .unwrap(),
        batch
    );
    let fresh = store
        .claim_broadcast_recipients(
            b.id,
            &phones(&["+12025550299", "+12025559999", "+12025550000"]),
        )
        .await
        .unwrap();
    assert_eq!(fresh, phones(&["+12025559999"]));
    // Another broadcast reaches the same numbers afresh.
    assert_eq!(
        store
            .claim_broadcast_recipients(other.id, &phones(&["+12025550000"]))
            .await
            .unwrap(),
        phones(&["+12025550000"])
    );
}
