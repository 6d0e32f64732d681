//! Conformance cases for message templates: tenancy, unique names per organization, optimistic
//! updates that never touch usage, filtered paging, usage counting and idempotent creation.

use uuid::Uuid;

use super::{Subject, at, organization, t0};
use crate::*;

fn template(org_id: Uuid, name: &str) -> MessageTemplate {
    MessageTemplate {
        id: Uuid::now_v7(),
        org_id,
        name: name.to_owned(),
        category: Some("marketing".into()),
        body: "Hi {{first_name}}, {{offer | default: \"10% off\"}}".into(),
        variables: vec![
            DeclaredVariable {
                name: "first_name".into(),
                description: Some("Given name".into()),
                example: Some("Ada".into()),
            },
            DeclaredVariable {
                name: "offer".into(),
                ..DeclaredVariable::default()
            },
        ],
        active: true,
        usage_count: 0,
        last_used_at: None,
        created_at: t0(),
        updated_at: t0(),
    }
}

async fn create(store: &dyn Store, template: &MessageTemplate) {
    assert_eq!(
        store.create_template(template, None, t0()).await.unwrap(),
        Ok(TemplateCreation::Created)
    );
}

pub async fn templates_read_back_only_in_their_organization(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let other = organization(store, "other").await.org_id;
    let welcome = template(acme, "welcome");
    create(store, &welcome).await;

    assert_eq!(
        store.get_template(acme, welcome.id).await.unwrap(),
        Some(welcome.clone())
    );
    assert_eq!(store.get_template(other, welcome.id).await.unwrap(), None);
    let page = store
        .list_templates(other, &TemplateFilter::default(), None, 10)
        .await
        .unwrap();
    assert!(page.items.is_empty());

    // Another organization can neither change, use nor delete it.
    let mut hijack = welcome.clone();
    hijack.org_id = other;
    hijack.body = "pwned".into();
    hijack.updated_at = at(10);
    assert_eq!(
        store.update_template(&hijack, t0()).await.unwrap(),
        Err(TemplateRefusal::NotFound)
    );
    assert!(
        !store
            .record_template_use(other, welcome.id, 1, at(5))
            .await
            .unwrap()
    );
    assert!(!store.delete_template(other, welcome.id).await.unwrap());
    assert_eq!(
        store.get_template(acme, welcome.id).await.unwrap(),
        Some(welcome.clone()),
        "nothing another organization tried changed the template"
    );

    // Nor can a template be created for an organization that does not exist.
    assert_eq!(
        store
            .create_template(&template(Uuid::now_v7(), "x"), None, t0())
            .await
            .unwrap(),
        Err(TemplateRefusal::NotFound)
    );

    assert!(store.delete_template(acme, welcome.id).await.unwrap());
    assert_eq!(store.get_template(acme, welcome.id).await.unwrap(), None);
    assert!(!store.delete_template(acme, welcome.id).await.unwrap());
}

pub async fn template_names_are_unique_per_organization(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let other = organization(store, "other").await.org_id;
    create(store, &template(acme, "welcome")).await;
    assert_eq!(
        store
            .create_template(&template(acme, "welcome"), None, t0())
            .await
            .unwrap(),
        Err(TemplateRefusal::NameTaken)
    );
    create(store, &template(other, "welcome")).await;

    // Renaming onto a taken name is refused too, and changes nothing.
    let reminder = template(acme, "reminder");
    create(store, &reminder).await;
    let mut renamed = reminder.clone();
    renamed.name = "welcome".into();
    renamed.updated_at = at(1);
    assert_eq!(
        store.update_template(&renamed, t0()).await.unwrap(),
        Err(TemplateRefusal::NameTaken)
    );
    assert_eq!(
        store.get_template(acme, reminder.id).await.unwrap(),
        Some(reminder)
    );
}

pub async fn template_updates_refuse_stale_reads_and_keep_usage(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let original = template(acme, "welcome");
    create(store, &original).await;
    assert!(
        store
            .record_template_use(acme, original.id, 3, at(30))
            .await
            .unwrap()
    );

    let mut edited = original.clone();
    edited.name = "hello".into();
    edited.category = None;
    edited.body = "Hello {{name}}".into();
    edited.variables = vec![];
    edited.active = false;
    edited.updated_at = at(60);
    // Usage in the caller's copy is stale: the store keeps its own count.
    assert_eq!(store.update_template(&edited, t0()).await.unwrap(), Ok(()));
    let stored = store
        .get_template(acme, original.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored,
        MessageTemplate {
            usage_count: 3,
            last_used_at: Some(at(30)),
            ..edited.clone()
        }
    );

    // A second editor who read the original is refused.
    let mut late = original.clone();
    late.body = "late".into();
    late.updated_at = at(90);
    assert_eq!(
        store.update_template(&late, t0()).await.unwrap(),
        Err(TemplateRefusal::Stale)
    );
    assert_eq!(
        store.get_template(acme, original.id).await.unwrap(),
        Some(stored)
    );
    let mut gone = original.clone();
    gone.id = Uuid::now_v7();
    assert_eq!(
        store.update_template(&gone, t0()).await.unwrap(),
        Err(TemplateRefusal::NotFound)
    );
}

pub async fn template_use_is_counted_and_the_last_use_only_moves_forward(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let welcome = template(acme, "welcome");
    create(store, &welcome).await;
    assert!(
        store
            .record_template_use(acme, welcome.id, 2, at(100))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_template_use(acme, welcome.id, 5, at(50))
            .await
            .unwrap()
    );
    let stored = store.get_template(acme, welcome.id).await.unwrap().unwrap();
    assert_eq!(stored.usage_count, 7);
    assert_eq!(stored.last_used_at, Some(at(100)));
    assert_eq!(stored.updated_at, t0(), "use is not an edit");
    assert!(
        !store
            .record_template_use(acme, Uuid::now_v7(), 1, at(1))
            .await
            .unwrap()
    );
}

pub async fn listing_templates_filters_and_walks_every_page_exactly_once(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut t = template(acme, &format!("t{i}"));
        t.category = (i % 2 == 0).then(|| "otp".to_owned());
        t.active = i % 3 != 0;
        create(store, &t).await;
        ids.push(t.id);
    }

    let walk = |filter: TemplateFilter| async move {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_templates(acme, &filter, after, 2).await.unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|t| t.id));
            match page.next {
                Some(next) => after = Some(next),
                None => break seen,
            }
        }
    };
    assert_eq!(walk(TemplateFilter::default()).await, ids);
    let otp = TemplateFilter {
        category: Some("otp".into()),
        active: None,
    };
    assert_eq!(walk(otp).await, [ids[0], ids[2], ids[4], ids[6]]);
    let inactive = TemplateFilter {
        category: None,
        active: Some(false),
    };
    assert_eq!(walk(inactive).await, [ids[0], ids[3], ids[6]]);
    let both = TemplateFilter {
        category: Some("otp".into()),
        active: Some(true),
    };
    assert_eq!(walk(both).await, [ids[2], ids[4]]);
}

pub async fn an_idempotency_key_replays_a_template_creation(subject: &Subject) {
    let store = subject.store.as_ref();
    let acme = organization(store, "acme").await.org_id;
    let record = |key: &str, hash: u8, response: &[u8]| IdempotencyRecord {
        key: key.to_owned(),
        request_hash: [hash; 32],
        response: response.to_vec(),
        expires_at: at(3_600),
    };
    let first = template(acme, "welcome");
    assert_eq!(
        store
            .create_template(&first, Some(&record("k1", 1, b"first")), t0())
            .await
            .unwrap(),
        Ok(TemplateCreation::Created)
    );
    assert_eq!(
        store
            .create_template(
                &template(acme, "welcome"),
                Some(&record("k1", 1, b"other")),
                at(60)
            )
            .await
            .unwrap(),
        Ok(TemplateCreation::Replayed {
            id: first.id,
            response: b"first".to_vec()
        })
    );
    assert_eq!(
        store
            .create_template(&template(acme, "x"), Some(&record("k1", 2, b"")), at(60))
            .await
            .unwrap(),
        Ok(TemplateCreation::KeyReused)
    );
    // A refused creation does not spend its key: the corrected request may use it.
    assert_eq!(
        store
            .create_template(
                &template(acme, "welcome"),
                Some(&record("k2", 3, b"")),
                at(60)
            )
            .await
            .unwrap(),
        Err(TemplateRefusal::NameTaken)
    );
    let renamed = template(acme, "renamed");
    assert_eq!(
        store
            .create_template(&renamed, Some(&record("k2", 4, b"second")), at(61))
            .await
            .unwrap(),
        Ok(TemplateCreation::Created)
    );
    let page = store
        .list_templates(acme, &TemplateFilter::default(), None, 10)
        .await
        .unwrap();
    let ids: Vec<_> = page.items.iter().map(|t| t.id).collect();
    assert_eq!(ids, [first.id, renamed.id]);
}
