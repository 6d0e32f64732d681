//! Conformance cases for broadcasts: stored with their first messages in one transaction and
//! only visible in their scope, later batches written with the counts that include them,
//! credits reserved all or nothing per batch, recipients de-duplicated across batches, batches
//! written only by the resolver holding the lease, stalled broadcasts taken over once, and
//! cancellation stopping both resolution and the messages not yet sent.

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
        spec: Some(serde_json::json!({"recipients": [{"phone": "+12025550100"}]})),
        api_key_id: None,
        position: None,
        lease: Some(Lease {
            owner: Uuid::now_v7(),
            until: at(60),
        }),
        canceled: 0,
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
    b.position = Some(serde_json::json!({"entry": 1}));
    assert_eq!(
        store
            .queue_broadcast_batch(&b, &[of(&b, "+12025550102")], &[])
            .await
            .unwrap(),
        BatchOutcome::Stored
    );
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
        .queue_broadcast_batch(
            &b,
            &[of(&b, "+12025550101"), of(&b, "+12025550102")],
            &["+12025550101".to_owned()],
        )
        .await
        .unwrap();
    assert!(matches!(refused, BatchOutcome::Refused(_)), "{refused:?}");
    // Not even the numbers are recorded as reached.
    assert!(
        store
            .reached_before(b.id, &["+12025550101".to_owned()])
            .await
            .unwrap()
            .is_empty()
    );
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

pub async fn broadcast_recipients_are_recorded_with_their_batch(subject: &Subject) {
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
    assert!(store.reached_before(b.id, &batch).await.unwrap().is_empty());
    assert_eq!(
        store.queue_broadcast_batch(&b, &[], &batch).await.unwrap(),
        BatchOutcome::Stored
    );
    let reached = store
        .reached_before(
            b.id,
            &phones(&["+12025550299", "+12025559999", "+12025550000"]),
        )
        .await
        .unwrap();
    assert_eq!(reached, phones(&["+12025550299", "+12025550000"]));
    // Another broadcast reached none of them.
    assert!(
        store
            .reached_before(other.id, &phones(&["+12025550000"]))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn only_the_resolver_holding_a_broadcast_writes_its_batches(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let b = broadcast(
        scope,
        BroadcastStatus::Resolving,
        BroadcastCounts::default(),
    );
    store.create_broadcast(&b, &[], None, t0()).await.unwrap();

    // A resolver that does not hold it writes nothing.
    let mut stranger = b.clone();
    stranger.lease = Some(Lease {
        owner: Uuid::now_v7(),
        until: at(60),
    });
    stranger.counts.requested = 1;
    stranger.counts.queued = 1;
    let outcome = store
        .queue_broadcast_batch(
            &stranger,
            &[of(&b, "+12025550100")],
            &["+12025550100".to_owned()],
        )
        .await
        .unwrap();
    assert_eq!(outcome, BatchOutcome::Lost);
    assert_eq!(
        store.get_broadcast(scope, b.id).await.unwrap(),
        Some(b.clone())
    );
    assert!(messages_of(store, scope, b.id).await.is_empty());

    // Live, it is not stalled; its lease run out, it is, and is taken over exactly once.
    assert!(
        !store
            .stalled_broadcasts(at(59), 10)
            .await
            .unwrap()
            .contains(&b.id)
    );
    assert!(
        store
            .stalled_broadcasts(at(60), 10)
            .await
            .unwrap()
            .contains(&b.id)
    );
    let heir = Lease {
        owner: Uuid::now_v7(),
        until: at(120),
    };
    assert_eq!(
        store.take_over_broadcast(b.id, heir, at(59)).await.unwrap(),
        None
    );
    let taken = store
        .take_over_broadcast(b.id, heir, at(60))
        .await
        .unwrap()
        .expect("a lease that ran out is taken over");
    assert_eq!(taken.lease, Some(heir));
    assert_eq!(taken.spec, b.spec);
    let rival = Lease {
        owner: Uuid::now_v7(),
        until: at(120),
    };
    assert_eq!(
        store
            .take_over_broadcast(b.id, rival, at(61))
            .await
            .unwrap(),
        None
    );

    // The old resolver, waking up, is refused; the heir writes and finishes.
    let outcome = store
        .queue_broadcast_batch(&b, &[of(&b, "+12025550100")], &[])
        .await
        .unwrap();
    assert_eq!(outcome, BatchOutcome::Lost);
    let mut done = taken.clone();
    done.counts.requested = 1;
    done.counts.queued = 1;
    done.status = BroadcastStatus::Queued;
    done.finished_at = Some(at(62));
    assert_eq!(
        store
            .queue_broadcast_batch(&done, &[of(&b, "+12025550100")], &[])
            .await
            .unwrap(),
        BatchOutcome::Stored
    );
    assert_eq!(messages_of(store, scope, b.id).await.len(), 1);
    // Finished, it is neither stalled nor written again.
    assert!(
        !store
            .stalled_broadcasts(at(10_000), 10)
            .await
            .unwrap()
            .contains(&b.id)
    );
    assert_eq!(
        store.queue_broadcast_batch(&done, &[], &[]).await.unwrap(),
        BatchOutcome::Lost
    );
}

pub async fn canceling_a_broadcast_cancels_its_unsent_messages_and_stops_resolution(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let grant = CreditGrant {
        id: Uuid::now_v7(),
        org_id: scope.org_id,
        credits: 10,
        reason: None,
        granted_by: "cli".into(),
        created_at: t0(),
    };
    store
        .grant_credits(&grant, None, &month_of(t0()))
        .await
        .unwrap()
        .unwrap();
    let b = broadcast(
        scope,
        BroadcastStatus::Resolving,
        BroadcastCounts {
            requested: 4,
            queued: 4,
            ..Default::default()
        },
    );
    let mut later = of(&b, "+12025550103");
    later.send_at = Some(at(3600));
    let first = [
        of(&b, "+12025550100"),
        of(&b, "+12025550101"),
        of(&b, "+12025550102"),
        later,
    ];
    store
        .create_broadcast(&b, &first, None, t0())
        .await
        .unwrap();
    // One is being sent already: it is not recalled.
    let claimed = store.claim_due(at(1), at(31), 1).await.unwrap();
    assert_eq!(claimed.len(), 1);

    assert_eq!(
        store.cancel_broadcast(other, b.id, at(2)).await.unwrap(),
        Err(BroadcastCancelRefusal::NotFound)
    );
    let canceled = store
        .cancel_broadcast(scope, b.id, at(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(canceled.status, BroadcastStatus::Canceled);
    assert_eq!(canceled.canceled, 3);
    assert_eq!(canceled.finished_at, Some(at(2)));
    assert_eq!(canceled.counts, b.counts);
    let messages = messages_of(store, scope, b.id).await;
    let statuses: Vec<_> = messages.iter().map(|m| m.status).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == herald_domain::status::MessageStatus::Canceled)
            .count(),
        3,
        "{statuses:?}"
    );
    assert!(statuses.contains(&herald_domain::status::MessageStatus::Sending));
    // Only the message being sent still holds its credit.
    let account = store
        .credit_account(scope.org_id, &month_of(t0()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.reserved, 1);

    // The resolver's next batch is refused; a second cancel finds it final.
    let outcome = store
        .queue_broadcast_batch(&b, &[of(&b, "+12025550104")], &[])
        .await
        .unwrap();
    assert_eq!(outcome, BatchOutcome::Lost);
    assert_eq!(messages_of(store, scope, b.id).await.len(), 4);
    assert_eq!(
        store.cancel_broadcast(scope, b.id, at(3)).await.unwrap(),
        Err(BroadcastCancelRefusal::Final(BroadcastStatus::Canceled))
    );
}
