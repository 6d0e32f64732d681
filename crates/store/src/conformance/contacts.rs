//! Conformance cases for contacts: one per number within an organization and invisible to
//! others, creations replayed by their idempotency key, stale updates refused, filters and
//! paging, imports that merge by number, and an erasure that leaves the number nowhere (its
//! creation's key included) but keeps the opt-out working.

use herald_domain::phone::Region;
use serde_json::json;
use uuid::Uuid;

use super::{Subject, at, insert, message, organization};
use crate::*;

fn contact(org_id: Uuid, phone: &str, seconds: i64) -> Contact {
    let mut c = Contact::new(
        org_id,
        phone,
        Some(Region::parse("US").unwrap()),
        at(seconds),
    );
    c.first_name = Some("Ada".into());
    c.last_name = Some("Lovelace".into());
    c.tags = vec!["vip".into()];
    c.custom = json!({"total_sales": 52000, "city": "Paris"})
        .as_object()
        .unwrap()
        .clone();
    c
}

pub async fn contacts_are_one_per_number_and_only_their_organizations(subject: &Subject) {
    let store = subject.store.as_ref();
    let a = organization(store, "acme").await;
    let b = organization(store, "globex").await;
    let ada = contact(a.org_id, "+14155550100", 1);
    store
        .create_contact(&ada, None, ada.created_at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.get_contact(a.org_id, ada.id).await.unwrap().as_ref(),
        Some(&ada),
        "reads back exactly as written"
    );
    let twin = contact(a.org_id, "+14155550100", 2);
    assert_eq!(
        store
            .create_contact(&twin, None, twin.created_at)
            .await
            .unwrap(),
        Err(ContactRefusal::PhoneTaken { existing: ada.id })
    );
    assert_eq!(store.get_contact(a.org_id, twin.id).await.unwrap(), None);

    let other = contact(b.org_id, "+14155550100", 3);
    store
        .create_contact(&other, None, other.created_at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.get_contact(b.org_id, ada.id).await.unwrap(), None);
    assert_eq!(
        store
            .find_contact_by_phone(b.org_id, "+14155550100")
            .await
            .unwrap()
            .map(|c| c.id),
        Some(other.id)
    );
    assert_eq!(
        store
            .contacts_by_id(a.org_id, &[ada.id, other.id, Uuid::now_v7()])
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        [ada.id],
        "another organization's id is not found"
    );
    assert!(!store.delete_contact(b.org_id, ada.id).await.unwrap());
    assert!(store.delete_contact(a.org_id, ada.id).await.unwrap());
    assert_eq!(store.get_contact(a.org_id, ada.id).await.unwrap(), None);
}

fn idempotency(key: &str, request: u8, response: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key.to_owned(),
        request_hash: [request; 32],
        response: response.as_bytes().to_vec(),
        expires_at: at(86_400),
    }
}

pub async fn an_idempotency_key_replays_a_contact_creation(subject: &Subject) {
    let store = subject.store.as_ref();
    let a = organization(store, "acme").await;
    let b = organization(store, "globex").await;
    let key = idempotency("ada-1", 1, "first");
    let ada = contact(a.org_id, "+14155550100", 1);
    assert_eq!(
        store.create_contact(&ada, Some(&key), at(1)).await.unwrap(),
        Ok(AudienceCreation::Created)
    );

    // The retry carries a contact with a new id, as a retried request would.
    let retry = contact(a.org_id, "+14155550100", 2);
    assert_eq!(
        store
            .create_contact(&retry, Some(&key), at(2))
            .await
            .unwrap(),
        Ok(AudienceCreation::Replayed {
            id: ada.id,
            response: b"first".to_vec()
        }),
        "replayed, not refused for the number its first attempt took"
    );
    let other = contact(a.org_id, "+14155550101", 3);
    assert_eq!(
        store
            .create_contact(&other, Some(&idempotency("ada-1", 2, "other")), at(3))
            .await
            .unwrap(),
        Ok(AudienceCreation::KeyReused)
    );
    assert_eq!(store.get_contact(a.org_id, retry.id).await.unwrap(), None);
    assert_eq!(store.get_contact(a.org_id, other.id).await.unwrap(), None);

    // A refused create keeps no key: the key is free for the next request.
    let twin = contact(a.org_id, "+14155550100", 4);
    let refused = idempotency("twin-1", 3, "twin");
    assert_eq!(
        store
            .create_contact(&twin, Some(&refused), at(4))
            .await
            .unwrap(),
        Err(ContactRefusal::PhoneTaken { existing: ada.id })
    );
    let bob = contact(a.org_id, "+14155550102", 5);
    assert_eq!(
        store
            .create_contact(&bob, Some(&idempotency("twin-1", 4, "bob")), at(5))
            .await
            .unwrap(),
        Ok(AudienceCreation::Created)
    );

    // Keys are the organization's own, and end with their time to live.
    let theirs = contact(b.org_id, "+14155550100", 6);
    assert_eq!(
        store
            .create_contact(&theirs, Some(&key), at(6))
            .await
            .unwrap(),
        Ok(AudienceCreation::Created)
    );
    let later = contact(a.org_id, "+14155550103", 86_400);
    let mut renewed = idempotency("ada-1", 5, "later");
    renewed.expires_at = at(2 * 86_400);
    assert_eq!(
        store
            .create_contact(&later, Some(&renewed), at(86_400))
            .await
            .unwrap(),
        Ok(AudienceCreation::Created)
    );
    let page = store
        .list_contacts(a.org_id, &ContactFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        [ada.id, bob.id, later.id]
    );
}

pub async fn contact_updates_refuse_stale_reads_and_taken_numbers(subject: &Subject) {
    let store = subject.store.as_ref();
    let a = organization(store, "acme").await;
    let ada = contact(a.org_id, "+14155550100", 1);
    let bob = contact(a.org_id, "+14155550101", 1);
    store
        .create_contact(&ada, None, ada.created_at)
        .await
        .unwrap()
        .unwrap();
    store
        .create_contact(&bob, None, bob.created_at)
        .await
        .unwrap()
        .unwrap();

    let mut changed = ada.clone();
    let patch = ContactPatch {
        first_name: Some(Some("Augusta".into())),
        email: Some(Some("ada@example.com".into())),
        tags: Some(vec![" b ".into(), "a".into(), "b".into()]),
        custom: Some(
            json!({"city": null, "visits": 3})
                .as_object()
                .unwrap()
                .clone(),
        ),
        consent: Some((true, Some("web form".into()))),
        ..ContactPatch::default()
    };
    assert!(patch.apply(&mut changed, at(5)));
    assert_eq!(changed.tags, ["a", "b"]);
    assert_eq!(
        serde_json::Value::Object(changed.custom.clone()),
        json!({"total_sales": 52000, "visits": 3})
    );
    assert_eq!(changed.consent_at, Some(at(5)));
    store
        .update_contact(&changed, ada.updated_at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.get_contact(a.org_id, ada.id).await.unwrap().as_ref(),
        Some(&changed)
    );

    let mut late = ada.clone();
    late.first_name = Some("Late".into());
    late.updated_at = at(6);
    assert_eq!(
        store.update_contact(&late, ada.updated_at).await.unwrap(),
        Err(ContactRefusal::Stale),
        "read before the last change"
    );
    let mut taken = changed.clone();
    taken.phone = bob.phone.clone();
    taken.updated_at = at(7);
    assert_eq!(
        store
            .update_contact(&taken, changed.updated_at)
            .await
            .unwrap(),
        Err(ContactRefusal::PhoneTaken { existing: bob.id })
    );
    let mut missing = contact(a.org_id, "+14155550102", 1);
    missing.updated_at = at(8);
    assert_eq!(
        store.update_contact(&missing, at(1)).await.unwrap(),
        Err(ContactRefusal::NotFound)
    );
    assert_eq!(
        store.get_contact(a.org_id, ada.id).await.unwrap().as_ref(),
        Some(&changed),
        "refused updates changed nothing"
    );
}

pub async fn contacts_list_by_filter_and_page_exactly_once(subject: &Subject) {
    let store = subject.store.as_ref();
    let a = organization(store, "acme").await;
    let b = organization(store, "globex").await;
    let mut made = Vec::new();
    for i in 0..7 {
        let mut c = contact(a.org_id, &format!("+1415555010{i}"), i);
        c.first_name = Some(format!("Person{i}"));
        c.tags = if i % 2 == 0 {
            vec!["even".into()]
        } else {
            Vec::new()
        };
        c.lead_status = if i < 3 { "new" } else { "customer" }.into();
        store
            .create_contact(&c, None, c.created_at)
            .await
            .unwrap()
            .unwrap();
        made.push(c.id);
    }
    store
        .create_contact(&contact(b.org_id, "+14155550100", 0), None, at(0))
        .await
        .unwrap()
        .unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_contacts(a.org_id, &ContactFilter::default(), after, 3)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|c| c.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        seen, made,
        "every contact once, oldest first, none of globex's"
    );

    let ids = |filter: ContactFilter| async move {
        store
            .list_contacts(a.org_id, &filter, None, 100)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(ContactFilter {
            tag: Some("even".into()),
            ..Default::default()
        })
        .await,
        [made[0], made[2], made[4], made[6]]
    );
    assert_eq!(
        ids(ContactFilter {
            tag: Some("even".into()),
            lead_status: Some("customer".into()),
            ..Default::default()
        })
        .await,
        [made[4], made[6]]
    );
    assert_eq!(
        ids(ContactFilter {
            search: Some("person5".into()),
            ..Default::default()
        })
        .await,
        [made[5]],
        "names match without regard to case"
    );
    assert_eq!(
        ids(ContactFilter {
            search: Some("55501".into()),
            ..Default::default()
        })
        .await
        .len(),
        7,
        "and so do parts of the number"
    );
    assert_eq!(
        ids(ContactFilter {
            created_from: Some(at(2)),
            created_to: Some(at(4)),
            ..Default::default()
        })
        .await,
        [made[2], made[3]]
    );
}

pub async fn imports_create_new_numbers_and_merge_known_ones(subject: &Subject) {
    let store = subject.store.as_ref();
    let a = organization(store, "acme").await;
    let ada = contact(a.org_id, "+14155550100", 1);
    store
        .create_contact(&ada, None, ada.created_at)
        .await
        .unwrap()
        .unwrap();
    let rows = vec![
        ContactUpsert {
            phone: "+14155550100".into(),
            country: None,
            patch: ContactPatch {
                last_name: Some(Some("King".into())),
                custom: Some(json!({"visits": 2}).as_object().unwrap().clone()),
                ..Default::default()
            },
        },
        ContactUpsert {
            phone: "+14155550101".into(),
            country: Some(Region::parse("US").unwrap()),
            patch: ContactPatch {
                first_name: Some(Some("Bob".into())),
                ..Default::default()
            },
        },
        ContactUpsert {
            phone: "+14155550100".into(),
            country: None,
            patch: ContactPatch {
                last_name: Some(Some("King".into())),
                ..Default::default()
            },
        },
        // A number new to the organization, given again in the same batch: created once, then
        // updated.
        ContactUpsert {
            phone: "+14155550101".into(),
            country: Some(Region::parse("US").unwrap()),
            patch: ContactPatch {
                last_name: Some(Some("Builder".into())),
                ..Default::default()
            },
        },
    ];
    let outcomes = store
        .upsert_contacts(a.org_id, &rows, "new", at(10))
        .await
        .unwrap();
    let Upserted::Created(bob) = outcomes[1] else {
        panic!("expected a new contact, got {outcomes:?}");
    };
    assert_eq!(
        outcomes,
        [
            Upserted::Updated(ada.id),
            Upserted::Created(bob),
            Upserted::Unchanged(ada.id),
            Upserted::Updated(bob),
        ]
    );
    let merged = store.get_contact(a.org_id, ada.id).await.unwrap().unwrap();
    assert_eq!(
        merged.first_name.as_deref(),
        Some("Ada"),
        "untouched fields stay"
    );
    assert_eq!(merged.last_name.as_deref(), Some("King"));
    assert_eq!(
        serde_json::Value::Object(merged.custom),
        json!({"total_sales": 52000, "city": "Paris", "visits": 2})
    );
    assert_eq!(merged.updated_at, at(10));
    let bob = store.get_contact(a.org_id, bob).await.unwrap().unwrap();
    assert_eq!(
        (
            bob.first_name.as_deref(),
            bob.last_name.as_deref(),
            bob.lead_status.as_str()
        ),
        (Some("Bob"), Some("Builder"), "new")
    );
    assert_eq!((bob.created_at, bob.updated_at), (at(10), at(10)));
}

pub async fn erasing_a_contact_leaves_its_number_nowhere_but_keeps_its_opt_out(subject: &Subject) {
    let store = subject.store.as_ref();
    let a = organization(store, "acme").await;
    let b = organization(store, "globex").await;
    let phone = "+14155550100";
    let ada = contact(a.org_id, phone, 1);
    // The key's replayed response quotes the number, as an API response would.
    let key = idempotency("ada-1", 1, phone);
    store
        .create_contact(&ada, Some(&key), at(1))
        .await
        .unwrap()
        .unwrap();
    let sent = insert(store, &message(a, phone, at(2))).await;
    let kept = insert(store, &message(b, phone, at(2))).await;
    store
        .insert_inbound(&InboundMessage {
            id: Uuid::now_v7(),
            org_id: a.org_id,
            provider: "twilio".into(),
            provider_message_id: "SM1".into(),
            from: phone.into(),
            to: "+14155559999".into(),
            body: "STOP".into(),
            received_at: at(3),
        })
        .await
        .unwrap();
    store
        .opt_out(a.org_id, phone, "keyword", None, at(3))
        .await
        .unwrap();

    assert_eq!(
        store.erase_contact(b.org_id, ada.id, at(4)).await.unwrap(),
        None,
        "another organization cannot erase it"
    );
    let erasure = store
        .erase_contact(a.org_id, ada.id, at(4))
        .await
        .unwrap()
        .expect("the contact existed");
    assert_eq!(
        erasure,
        Erasure {
            messages: 1,
            inbound: 1
        }
    );
    assert_eq!(store.get_contact(a.org_id, ada.id).await.unwrap(), None);
    let again = contact(a.org_id, phone, 4);
    assert_eq!(
        store
            .create_contact(&again, Some(&key), at(4))
            .await
            .unwrap(),
        Ok(AudienceCreation::Created),
        "the creation's key, and the number it quoted, are gone"
    );
    assert!(store.delete_contact(a.org_id, again.id).await.unwrap());
    let redacted = store.get_message(a, sent.id).await.unwrap().unwrap();
    assert_ne!(redacted.to, phone);
    assert_ne!(redacted.body, sent.body);
    assert_eq!(
        (redacted.status, redacted.segments),
        (sent.status, sent.segments),
        "what is not personal stays"
    );
    let inbound = store.list_inbound(a.org_id, None, 10).await.unwrap();
    assert!(
        inbound
            .items
            .iter()
            .all(|m| m.from != phone && m.body != "STOP")
    );
    let (list, _) = store.list_opt_outs(a.org_id, None, 10).await.unwrap();
    assert!(list.iter().all(|o| o.phone != phone));
    assert_eq!(
        store
            .opted_out_among(a.org_id, &[phone.to_owned()])
            .await
            .unwrap()
            .iter()
            .map(|o| o.phone.as_str())
            .collect::<Vec<_>>(),
        [phone],
        "the number is still recognised as opted out"
    );
    assert_eq!(
        store.get_message(b, kept.id).await.unwrap().unwrap().to,
        phone,
        "another organization's records are its own"
    );
    assert!(
        store
            .opt_in(a.org_id, phone, "keyword", None, at(5))
            .await
            .unwrap(),
        "START still takes the number off"
    );
    assert!(
        store
            .opted_out_among(a.org_id, &[phone.to_owned()])
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn lead_statuses_start_with_the_defaults_and_can_be_replaced(subject: &Subject) {
    let store = subject.store.as_ref();
    let a = organization(store, "acme").await;
    assert_eq!(
        store.lead_statuses(a.org_id).await.unwrap(),
        DEFAULT_LEAD_STATUSES
    );
    let mine = vec!["cold".to_owned(), "warm".to_owned(), "won".to_owned()];
    store.set_lead_statuses(a.org_id, &mine).await.unwrap();
    assert_eq!(store.lead_statuses(a.org_id).await.unwrap(), mine);
}
