//! Conformance cases for lists and segments: names, pages, bulk membership, the tenant wall,
//! updates that refuse stale reads, and what deleting a contact or a list leaves behind.

use serde_json::json;

use super::*;
use crate::segment::{Limits, parse_rule};

fn new_list(org_id: Uuid, name: &str) -> List {
    List {
        id: Uuid::now_v7(),
        org_id,
        name: name.to_owned(),
        description: Some(format!("{name} description")),
        member_count: 0,
        created_at: t0(),
        updated_at: t0(),
    }
}

fn new_segment(org_id: Uuid, name: &str, rule: serde_json::Value) -> Segment {
    Segment {
        id: Uuid::now_v7(),
        org_id,
        name: name.to_owned(),
        description: None,
        rule,
        created_at: t0(),
        updated_at: t0(),
    }
}

async fn contact(store: &dyn Store, org_id: Uuid, phone: &str) -> Contact {
    let contact = Contact::new(org_id, phone, Some(Region::parse("US").unwrap()), t0());
    store
        .create_contact(&contact, None, contact.created_at)
        .await
        .unwrap()
        .unwrap();
    contact
}

fn idempotency(key: &str, request: u8, response: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key.to_owned(),
        request_hash: [request; 32],
        response: response.as_bytes().to_vec(),
        expires_at: at(86_400),
    }
}

pub async fn lists_are_named_uniquely_and_kept_per_organization(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await;
    let globex = organization(store, "globex").await;
    let course = new_list(acme.org_id, "Course participants");
    assert_eq!(
        store.create_list(&course, None, t0()).await.unwrap(),
        Ok(AudienceCreation::Created)
    );
    let same_name = new_list(acme.org_id, "Course participants");
    assert_eq!(
        store.create_list(&same_name, None, t0()).await.unwrap(),
        Err(AudienceRefusal::NameTaken)
    );
    // Another organization may use the name, and cannot see the first list.
    let theirs = new_list(globex.org_id, "Course participants");
    assert_eq!(
        store.create_list(&theirs, None, t0()).await.unwrap(),
        Ok(AudienceCreation::Created)
    );
    assert_eq!(
        store.get_list(globex.org_id, course.id).await.unwrap(),
        None
    );
    assert!(!store.delete_list(globex.org_id, course.id).await.unwrap());
    let mut renamed = course.clone();
    renamed.org_id = globex.org_id;
    renamed.name = "stolen".into();
    assert_eq!(
        store
            .update_list(&renamed, course.updated_at)
            .await
            .unwrap(),
        Err(AudienceRefusal::NotFound)
    );

    let read = store
        .get_list(acme.org_id, course.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, course);

    let guests = new_list(acme.org_id, "Event guests");
    store
        .create_list(&guests, None, t0())
        .await
        .unwrap()
        .unwrap();
    let mut renamed = guests.clone();
    renamed.name = "Course participants".into();
    assert_eq!(
        store
            .update_list(&renamed, guests.updated_at)
            .await
            .unwrap(),
        Err(AudienceRefusal::NameTaken)
    );
    renamed.name = "Gala guests".into();
    renamed.description = None;
    renamed.updated_at = at(60);
    store
        .update_list(&renamed, guests.updated_at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.get_list(acme.org_id, guests.id).await.unwrap(),
        Some(renamed.clone())
    );

    // Pages walk every list once, in creation order.
    let first = store.list_lists(acme.org_id, None, 1).await.unwrap();
    assert_eq!(first.items, vec![course.clone()]);
    let second = store.list_lists(acme.org_id, first.next, 1).await.unwrap();
    assert_eq!(second.items, vec![renamed]);
    assert_eq!(second.next, None);

    assert!(store.delete_list(acme.org_id, guests.id).await.unwrap());
    assert!(!store.delete_list(acme.org_id, guests.id).await.unwrap());
    assert_eq!(store.get_list(acme.org_id, guests.id).await.unwrap(), None);
}

pub async fn an_idempotency_key_replays_a_list_creation(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await;
    let list = new_list(acme.org_id, "VIP");
    let key = idempotency("k1", 1, "first");
    assert_eq!(
        store.create_list(&list, Some(&key), t0()).await.unwrap(),
        Ok(AudienceCreation::Created)
    );
    let retry = new_list(acme.org_id, "VIP");
    assert_eq!(
        store.create_list(&retry, Some(&key), at(1)).await.unwrap(),
        Ok(AudienceCreation::Replayed {
            id: list.id,
            response: b"first".to_vec()
        })
    );
    let other = new_list(acme.org_id, "Other");
    assert_eq!(
        store
            .create_list(&other, Some(&idempotency("k1", 2, "x")), at(2))
            .await
            .unwrap(),
        Ok(AudienceCreation::KeyReused)
    );
    assert_eq!(store.get_list(acme.org_id, other.id).await.unwrap(), None);
    // A refused creation does not keep its key.
    let clash = new_list(acme.org_id, "VIP");
    assert_eq!(
        store
            .create_list(&clash, Some(&idempotency("k2", 3, "y")), at(3))
            .await
            .unwrap(),
        Err(AudienceRefusal::NameTaken)
    );
    let later = new_list(acme.org_id, "Later");
    assert_eq!(
        store
            .create_list(&later, Some(&idempotency("k2", 4, "z")), at(4))
            .await
            .unwrap(),
        Ok(AudienceCreation::Created)
    );
}

pub async fn list_members_change_in_bulk_and_only_with_the_organizations_contacts(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await;
    let globex = organization(store, "globex").await;
    let list = new_list(acme.org_id, "Course");
    store.create_list(&list, None, t0()).await.unwrap().unwrap();
    let ann = contact(store, acme.org_id, "+14155550101").await;
    let bob = contact(store, acme.org_id, "+14155550102").await;
    let cid = contact(store, acme.org_id, "+14155550103").await;
    let foreign = contact(store, globex.org_id, "+14155550104").await;
    let nobody = Uuid::now_v7();

    let added = store
        .add_list_members(
            acme.org_id,
            list.id,
            &[ann.id, bob.id, ann.id, foreign.id, nobody],
            at(1),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        added,
        Membership {
            changed: 2,
            unchanged: 0,
            unknown: vec![foreign.id, nobody],
        }
    );
    let again = store
        .add_list_members(acme.org_id, list.id, &[bob.id, cid.id], at(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.changed, again.unchanged), (1, 1));
    assert!(again.unknown.is_empty());
    let read = store.get_list(acme.org_id, list.id).await.unwrap().unwrap();
    assert_eq!(read.member_count, 3);

    // Another organization can neither see the list nor change it.
    assert_eq!(
        store
            .add_list_members(globex.org_id, list.id, &[foreign.id], at(3))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .list_members(globex.org_id, list.id, None, 10)
            .await
            .unwrap(),
        None
    );

    let mut members = [ann.id, bob.id, cid.id];
    members.sort();
    let first = store
        .list_members(acme.org_id, list.id, None, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.items, members[..2].to_vec());
    let rest = store
        .list_members(acme.org_id, list.id, first.next, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.items, members[2..].to_vec());
    assert_eq!(rest.next, None);

    let removed = store
        .remove_list_members(acme.org_id, list.id, &[ann.id, ann.id, foreign.id])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        removed,
        Membership {
            changed: 1,
            unchanged: 0,
            unknown: vec![foreign.id],
        }
    );
    let absent = store
        .remove_list_members(acme.org_id, list.id, &[ann.id])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((absent.changed, absent.unchanged), (0, 1));

    // Deleting or erasing a contact leaves no membership behind.
    assert!(store.delete_contact(acme.org_id, bob.id).await.unwrap());
    store
        .erase_contact(acme.org_id, cid.id, at(4))
        .await
        .unwrap()
        .unwrap();
    let page = store
        .list_members(acme.org_id, list.id, None, 10)
        .await
        .unwrap()
        .unwrap();
    assert!(page.items.is_empty());
    assert_eq!(
        store
            .get_list(acme.org_id, list.id)
            .await
            .unwrap()
            .unwrap()
            .member_count,
        0
    );

    // Deleting a list takes its memberships, never its contacts.
    store
        .add_list_members(acme.org_id, list.id, &[ann.id], at(5))
        .await
        .unwrap()
        .unwrap();
    assert!(store.delete_list(acme.org_id, list.id).await.unwrap());
    assert!(
        store
            .get_contact(acme.org_id, ann.id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .remove_list_members(acme.org_id, list.id, &[ann.id])
            .await
            .unwrap(),
        None
    );
}

pub async fn segments_are_named_uniquely_and_kept_per_organization(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await;
    let globex = organization(store, "globex").await;
    let rule = json!({"and":[{"field":"custom.total_sales","op":"gte","value":50000},
                             {"field":"last_message_days","op":"lte","value":90}]});
    let big = new_segment(acme.org_id, "Big spenders", rule.clone());
    assert_eq!(
        store.create_segment(&big, None, t0()).await.unwrap(),
        Ok(AudienceCreation::Created)
    );
    assert_eq!(
        store
            .create_segment(&new_segment(acme.org_id, "Big spenders", rule), None, t0())
            .await
            .unwrap(),
        Err(AudienceRefusal::NameTaken)
    );
    assert_eq!(
        store.get_segment(acme.org_id, big.id).await.unwrap(),
        Some(big.clone())
    );
    assert_eq!(
        store.get_segment(globex.org_id, big.id).await.unwrap(),
        None
    );
    assert!(!store.delete_segment(globex.org_id, big.id).await.unwrap());

    let mut changed = big.clone();
    changed.rule = json!({"field":"tag","op":"eq","value":"vip"});
    changed.description = Some("now by tag".into());
    changed.updated_at = at(10);
    store
        .update_segment(&changed, big.updated_at)
        .await
        .unwrap()
        .unwrap();
    let page = store.list_segments(acme.org_id, None, 10).await.unwrap();
    assert_eq!(page.items, vec![changed.clone()]);
    assert_eq!(page.next, None);
    let mut foreign = changed.clone();
    foreign.org_id = globex.org_id;
    assert_eq!(
        store
            .update_segment(&foreign, changed.updated_at)
            .await
            .unwrap(),
        Err(AudienceRefusal::NotFound)
    );
    assert!(store.delete_segment(acme.org_id, big.id).await.unwrap());
    assert_eq!(store.get_segment(acme.org_id, big.id).await.unwrap(), None);
}

pub async fn list_and_segment_updates_refuse_stale_reads(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await;
    let list = new_list(acme.org_id, "Course participants");
    store.create_list(&list, None, t0()).await.unwrap().unwrap();
    let mut renamed = list.clone();
    renamed.name = "Autumn course".into();
    renamed.updated_at = at(10);
    store
        .update_list(&renamed, list.updated_at)
        .await
        .unwrap()
        .unwrap();
    // A change read before the rename would undo it: refused, whatever it changes.
    let mut late = list.clone();
    late.description = Some("read before the rename".into());
    late.updated_at = at(11);
    assert_eq!(
        store.update_list(&late, list.updated_at).await.unwrap(),
        Err(AudienceRefusal::Stale)
    );
    assert_eq!(
        store.get_list(acme.org_id, list.id).await.unwrap(),
        Some(renamed.clone()),
        "a refused change changes nothing"
    );
    // Read again, it applies on top of the rename.
    late.name.clone_from(&renamed.name);
    store
        .update_list(&late, renamed.updated_at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.get_list(acme.org_id, list.id).await.unwrap(),
        Some(late.clone())
    );
    let missing = new_list(acme.org_id, "Missing");
    assert_eq!(
        store
            .update_list(&missing, missing.updated_at)
            .await
            .unwrap(),
        Err(AudienceRefusal::NotFound),
        "stale is only for a list that is there"
    );

    let segment = new_segment(
        acme.org_id,
        "VIPs",
        json!({"field":"tag","op":"eq","value":"vip"}),
    );
    store
        .create_segment(&segment, None, t0())
        .await
        .unwrap()
        .unwrap();
    let mut by_consent = segment.clone();
    by_consent.rule = json!({"field":"consent","op":"eq","value":true});
    by_consent.updated_at = at(10);
    store
        .update_segment(&by_consent, segment.updated_at)
        .await
        .unwrap()
        .unwrap();
    let mut late = segment.clone();
    late.name = "Read before".into();
    late.updated_at = at(11);
    assert_eq!(
        store
            .update_segment(&late, segment.updated_at)
            .await
            .unwrap(),
        Err(AudienceRefusal::Stale)
    );
    assert_eq!(
        store.get_segment(acme.org_id, segment.id).await.unwrap(),
        Some(by_consent.clone()),
        "a refused change changes nothing"
    );
    let missing = new_segment(
        acme.org_id,
        "Missing",
        json!({"field":"consent","op":"exists"}),
    );
    assert_eq!(
        store
            .update_segment(&missing, missing.updated_at)
            .await
            .unwrap(),
        Err(AudienceRefusal::NotFound)
    );
}

pub async fn segment_rules_see_only_the_organizations_contacts_lists_and_history(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await;
    let globex = organization(store, "globex").await;
    let phone = "+14155550111";
    let ours = contact(store, acme.org_id, phone).await;
    let theirs = contact(store, globex.org_id, phone).await;
    let their_list = new_list(globex.org_id, "theirs");
    store
        .create_list(&their_list, None, t0())
        .await
        .unwrap()
        .unwrap();
    store
        .add_list_members(globex.org_id, their_list.id, &[theirs.id], t0())
        .await
        .unwrap()
        .unwrap();
    // Only the other organization wrote to and heard from the shared number.
    let scope = Scope {
        org_id: globex.org_id,
        mode: Mode::Live,
    };
    insert(store, &message(scope, phone, at(0))).await;
    store
        .insert_inbound(&InboundMessage {
            id: Uuid::now_v7(),
            org_id: globex.org_id,
            provider: "simulator".into(),
            provider_message_id: "in-1".into(),
            from: phone.into(),
            to: "+14155550000".into(),
            body: "hi".into(),
            received_at: at(1),
        })
        .await
        .unwrap();
    let now = at(3_600);
    let count = |rule: serde_json::Value, org: Uuid| async move {
        let rule = parse_rule(&rule, &Limits::default()).unwrap();
        store.count_segment(org, &rule, now).await.unwrap()
    };
    let everyone = json!({"field":"phone","op":"exists"});
    assert_eq!(count(everyone.clone(), acme.org_id).await, 1);
    let messaged = json!({"field":"last_message_days","op":"lte","value":1});
    assert_eq!(count(messaged.clone(), globex.org_id).await, 1);
    assert_eq!(count(messaged, acme.org_id).await, 0);
    let replied = json!({"field":"replied","op":"eq","value":true});
    assert_eq!(count(replied.clone(), globex.org_id).await, 1);
    assert_eq!(count(replied, acme.org_id).await, 0);
    let listed = json!({"field":"list","op":"eq","value":their_list.id.to_string()});
    assert_eq!(count(listed.clone(), globex.org_id).await, 1);
    assert_eq!(count(listed, acme.org_id).await, 0);
    let page = store
        .segment_members(
            acme.org_id,
            &parse_rule(&everyone, &Limits::default()).unwrap(),
            now,
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(page.items, vec![ours.id]);
}
