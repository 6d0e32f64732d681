//! Conformance cases for provider accounts and routes: tenancy, unique names, sealed
//! credentials kept as given, paging, and routes that can only name the organization's own
//! accounts; inbound messages and who owns the number they were sent to.

use herald_domain::phone::Region;
use uuid::Uuid;

use super::{Subject, at, organization, t0};
use crate::*;

fn account(org_id: Uuid, name: &str) -> ProviderAccount {
    ProviderAccount {
        id: Uuid::now_v7(),
        org_id,
        name: name.to_owned(),
        kind: ProviderKind::Twilio,
        credentials_shown: vec![
            ("account_sid".into(), "AC0123".into()),
            ("auth_token".into(), "set".into()),
        ],
        senders: vec![
            Sender {
                kind: SenderKind::PhoneNumber,
                value: "+14155550100".into(),
            },
            Sender {
                kind: SenderKind::MessagingServiceSid,
                value: "MG0123".into(),
            },
        ],
        limits: RateLimits {
            messages_per_second: 2.5,
            segments_per_second: Some(10.0),
            sender_messages_per_second: None,
        },
        enabled: true,
        created_at: t0(),
        updated_at: t0(),
    }
}

async fn create(store: &dyn Store, account: &ProviderAccount, sealed: &[u8]) {
    let created = store
        .create_provider_account(account, sealed, None, t0())
        .await
        .unwrap();
    assert_eq!(created, Ok(AccountCreation::Created));
}

fn route(country: Option<&str>, prefix: Option<&str>, accounts: &[Uuid]) -> Route {
    Route {
        key: RouteKey {
            country: country.map(|c| Region::parse(c).unwrap()),
            prefix: prefix.map(str::to_owned),
        },
        accounts: accounts.to_vec(),
        updated_at: t0(),
    }
}

pub async fn provider_accounts_read_back_only_in_their_organization(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let other = organization(store, "other").await.org_id;
    let twilio = account(acme, "twilio-us");
    create(store, &twilio, b"sealed bytes").await;

    let read = store.get_provider_account(acme, twilio.id).await.unwrap();
    assert_eq!(read.as_ref(), Some(&twilio));
    assert_eq!(
        store.find_provider_account(twilio.id).await.unwrap(),
        Some(twilio.clone()),
        "operators find any account by id"
    );
    let (with, sealed) = store
        .provider_account_credentials(acme, twilio.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (with, sealed.as_slice()),
        (twilio.clone(), &b"sealed bytes"[..])
    );

    assert_eq!(
        store.get_provider_account(other, twilio.id).await.unwrap(),
        None
    );
    assert!(
        store
            .provider_account_credentials(other, twilio.id)
            .await
            .unwrap()
            .is_none()
    );
    let listed = store.list_provider_accounts(other, None, 10).await.unwrap();
    assert!(listed.items.is_empty());
    let mut stolen = twilio.clone();
    stolen.org_id = other;
    stolen.name = "mine now".into();
    assert_eq!(
        store
            .update_provider_account(&stolen, Some(&b"x"[..]), t0())
            .await
            .unwrap(),
        Err(AccountRefusal::NotFound)
    );
    assert_eq!(
        store
            .delete_provider_account(other, twilio.id)
            .await
            .unwrap(),
        Err(AccountRefusal::NotFound)
    );
    assert_eq!(
        store.get_provider_account(acme, twilio.id).await.unwrap(),
        Some(twilio),
        "another organization changed nothing"
    );

    let mut orphan = account(Uuid::now_v7(), "orphan");
    orphan.kind = ProviderKind::Simulator;
    assert_eq!(
        store
            .create_provider_account(&orphan, b"", None, t0())
            .await
            .unwrap(),
        Err(AccountRefusal::NotFound),
        "an account needs an organization"
    );
}

pub async fn provider_account_names_are_unique_per_organization(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let other = organization(store, "other").await.org_id;
    let first = account(acme, "primary");
    create(store, &first, b"a").await;
    assert_eq!(
        store
            .create_provider_account(&account(acme, "primary"), b"b", None, t0())
            .await
            .unwrap(),
        Err(AccountRefusal::NameTaken)
    );
    create(store, &account(other, "primary"), b"c").await;

    let second = account(acme, "backup");
    create(store, &second, b"d").await;
    let mut renamed = second.clone();
    renamed.name = "primary".into();
    assert_eq!(
        store
            .update_provider_account(&renamed, None, t0())
            .await
            .unwrap(),
        Err(AccountRefusal::NameTaken)
    );
    assert_eq!(
        store.get_provider_account(acme, second.id).await.unwrap(),
        Some(second)
    );
    let page = store.list_provider_accounts(acme, None, 10).await.unwrap();
    assert_eq!(page.items.len(), 2);
}

pub async fn updates_keep_sealed_credentials_unless_replaced_and_refuse_stale_reads(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let original = account(acme, "primary");
    create(store, &original, b"first secret").await;

    let mut changed = original.clone();
    changed.name = "renamed".into();
    changed.enabled = false;
    changed.senders = vec![Sender {
        kind: SenderKind::AlphanumericId,
        value: "ACME".into(),
    }];
    changed.limits = RateLimits {
        messages_per_second: 1.0,
        segments_per_second: None,
        sender_messages_per_second: Some(0.5),
    };
    changed.updated_at = at(60);
    store
        .update_provider_account(&changed, None, t0())
        .await
        .unwrap()
        .unwrap();
    let (read, sealed) = store
        .provider_account_credentials(acme, original.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (read, sealed.as_slice()),
        (changed.clone(), &b"first secret"[..])
    );

    let mut stale = changed.clone();
    stale.name = "lost update".into();
    stale.updated_at = at(90);
    assert_eq!(
        store
            .update_provider_account(&stale, Some(&b"lost"[..]), t0())
            .await
            .unwrap(),
        Err(AccountRefusal::Stale),
        "written from a read older than the last change"
    );

    changed.credentials_shown = vec![("account_sid".into(), "AC9999".into())];
    changed.updated_at = at(120);
    store
        .update_provider_account(&changed, Some(&b"rotated"[..]), at(60))
        .await
        .unwrap()
        .unwrap();
    let (read, sealed) = store
        .provider_account_credentials(acme, original.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((read, sealed.as_slice()), (changed, &b"rotated"[..]));
}

pub async fn listing_provider_accounts_walks_every_page_exactly_once(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let mut created = Vec::new();
    for i in 0..7 {
        let a = account(acme, &format!("account {i}"));
        create(store, &a, b"").await;
        created.push(a.id);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_provider_accounts(acme, after, 3).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|a| a.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, created, "in creation order, each exactly once");
}

pub async fn routes_name_only_the_organizations_own_accounts(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let other = organization(store, "other").await.org_id;
    let a = account(acme, "a");
    let b = account(acme, "b");
    let theirs = account(other, "theirs");
    for x in [&a, &b, &theirs] {
        create(store, x, b"").await;
    }

    let stranger = Uuid::now_v7();
    assert_eq!(
        store
            .set_route(acme, &route(Some("US"), None, &[a.id, theirs.id, stranger]))
            .await
            .unwrap(),
        Err(AccountRefusal::UnknownAccounts(vec![theirs.id, stranger]))
    );
    assert!(
        store.list_routes(acme).await.unwrap().is_empty(),
        "nothing stored"
    );

    let us = route(Some("US"), None, &[b.id, a.id]);
    let sf = route(Some("US"), Some("1415"), &[a.id]);
    let fallback = route(None, None, &[a.id]);
    for r in [&us, &sf, &fallback] {
        store.set_route(acme, r).await.unwrap().unwrap();
    }
    assert_eq!(
        store.list_routes(acme).await.unwrap(),
        vec![fallback.clone(), us.clone(), sf.clone()],
        "the default route first, then by country and prefix"
    );
    assert!(store.list_routes(other).await.unwrap().is_empty());

    let mut replaced = route(Some("US"), None, &[a.id]);
    replaced.updated_at = at(30);
    store.set_route(acme, &replaced).await.unwrap().unwrap();
    assert_eq!(
        store.list_routes(acme).await.unwrap(),
        vec![fallback.clone(), replaced, sf.clone()]
    );

    assert!(!store.delete_route(other, &sf.key).await.unwrap());
    assert!(store.delete_route(acme, &sf.key).await.unwrap());
    assert!(!store.delete_route(acme, &sf.key).await.unwrap());
    assert_eq!(store.list_routes(acme).await.unwrap().len(), 2);
}

pub async fn an_account_named_by_a_route_cannot_be_deleted(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let a = account(acme, "a");
    let b = account(acme, "b");
    create(store, &a, b"").await;
    create(store, &b, b"").await;
    let gb = route(Some("GB"), None, &[b.id, a.id]);
    let fallback = route(None, None, &[a.id]);
    store.set_route(acme, &gb).await.unwrap().unwrap();
    store.set_route(acme, &fallback).await.unwrap().unwrap();

    assert_eq!(
        store.delete_provider_account(acme, a.id).await.unwrap(),
        Err(AccountRefusal::InUse(vec![
            fallback.key.clone(),
            gb.key.clone()
        ]))
    );
    assert!(
        store
            .get_provider_account(acme, a.id)
            .await
            .unwrap()
            .is_some()
    );

    store
        .set_route(acme, &route(Some("GB"), None, &[b.id]))
        .await
        .unwrap()
        .unwrap();
    store.delete_route(acme, &fallback.key).await.unwrap();
    store
        .delete_provider_account(acme, a.id)
        .await
        .unwrap()
        .expect("no route names it any more");
    assert_eq!(store.get_provider_account(acme, a.id).await.unwrap(), None);
    assert_eq!(
        store.delete_provider_account(acme, a.id).await.unwrap(),
        Err(AccountRefusal::NotFound)
    );
}

pub async fn an_idempotency_key_replays_an_account_creation(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let record = |key: &str, hash: u8, response: &[u8]| IdempotencyRecord {
        key: key.to_owned(),
        request_hash: [hash; 32],
        response: response.to_vec(),
        expires_at: at(3_600),
    };
    let first = account(acme, "primary");
    let created = store
        .create_provider_account(&first, b"s", Some(&record("k1", 1, b"first")), t0())
        .await
        .unwrap();
    assert_eq!(created, Ok(AccountCreation::Created));

    // A retry builds a new account (new id) from the same request.
    let retry = account(acme, "primary");
    assert_eq!(
        store
            .create_provider_account(&retry, b"s", Some(&record("k1", 1, b"other")), at(60))
            .await
            .unwrap(),
        Ok(AccountCreation::Replayed {
            id: first.id,
            response: b"first".to_vec()
        })
    );
    assert_eq!(
        store
            .create_provider_account(
                &account(acme, "x"),
                b"s",
                Some(&record("k1", 2, b"")),
                at(60)
            )
            .await
            .unwrap(),
        Ok(AccountCreation::KeyReused)
    );
    let page = store.list_provider_accounts(acme, None, 10).await.unwrap();
    assert_eq!(
        page.items.len(),
        1,
        "neither the replay nor the reuse stored an account"
    );

    // A key that a message used is live-mode too: an account request cannot replay it.
    let scope = Scope {
        org_id: acme,
        mode: herald_domain::message::Mode::Live,
    };
    let mut message = super::message(scope, "+14155550100", t0());
    message.id = Uuid::now_v7();
    store
        .insert_message(&message, Some(&record("k2", 3, b"message")), t0())
        .await
        .unwrap();
    assert_eq!(
        store
            .create_provider_account(
                &account(acme, "y"),
                b"s",
                Some(&record("k2", 4, b"")),
                at(60)
            )
            .await
            .unwrap(),
        Ok(AccountCreation::KeyReused)
    );

    // A refused creation does not keep its key.
    assert_eq!(
        store
            .create_provider_account(
                &account(acme, "primary"),
                b"s",
                Some(&record("k3", 5, b"")),
                at(60)
            )
            .await
            .unwrap(),
        Err(AccountRefusal::NameTaken)
    );
    assert_eq!(
        store
            .create_provider_account(
                &account(acme, "second"),
                b"s",
                Some(&record("k3", 6, b"")),
                at(60)
            )
            .await
            .unwrap(),
        Ok(AccountCreation::Created)
    );

    // An expired key is taken anew.
    assert_eq!(
        store
            .create_provider_account(
                &account(acme, "third"),
                b"s",
                Some(&record("k1", 7, b"")),
                at(7_200)
            )
            .await
            .unwrap(),
        Ok(AccountCreation::Created)
    );
}

pub async fn inbound_messages_are_stored_once_per_provider_id_and_only_for_their_organization(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let a = organization(store, "acme").await;
    let b = organization(store, "globex").await;
    let inbound = |n: u32| InboundMessage {
        id: Uuid::now_v7(),
        org_id: a.org_id,
        provider: "twilio".into(),
        provider_message_id: format!("SM{n}"),
        from: "+14155550199".into(),
        to: "+14155550100".into(),
        body: format!("reply {n}"),
        received_at: t0(),
    };
    let first = inbound(1);
    assert!(store.insert_inbound(&first).await.unwrap());
    let again = InboundMessage {
        id: Uuid::now_v7(),
        ..first.clone()
    };
    assert!(
        !store.insert_inbound(&again).await.unwrap(),
        "the provider delivered it twice; it is stored once"
    );
    assert!(store.insert_inbound(&inbound(2)).await.unwrap());
    assert!(store.insert_inbound(&inbound(3)).await.unwrap());

    let page = store.list_inbound(a.org_id, None, 2).await.unwrap();
    let bodies: Vec<&str> = page.items.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["reply 3", "reply 2"], "newest first");
    let rest = store.list_inbound(a.org_id, page.next, 2).await.unwrap();
    assert_eq!(rest.items, vec![first]);
    assert_eq!(rest.next, None);
    assert!(
        store
            .list_inbound(b.org_id, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Who owns a number: the account listing it as a phone-number sender, exactly.
    let account = account(a.org_id, "main");
    create(store, &account, b"sealed").await;
    assert_eq!(
        store
            .find_number_owner(ProviderKind::Twilio, "+14155550100")
            .await
            .unwrap(),
        Some((a.org_id, account.id))
    );
    for (kind, number) in [
        (ProviderKind::Twilio, "+1415555010"),
        (ProviderKind::Twilio, "+141555501000"),
        (ProviderKind::Sns, "+14155550100"),
        (ProviderKind::Twilio, "MG0123"),
    ] {
        assert_eq!(
            store.find_number_owner(kind, number).await.unwrap(),
            None,
            "{kind:?} {number}"
        );
    }
}
