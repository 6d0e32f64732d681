//! Conformance cases for automation: drips and triggers stored, changed and deleted only in
//! their scope; a number enrolled in a drip once; only due, active enrolments of active drips
//! handed out; a step taken at most once, with its message, or not at all when the credits do
//! not cover it; a drip's books by enrolment state and by step; triggers' candidate contacts
//! by window, cursor, rule and earlier firings; a trigger fired once per key, even by two
//! processes at once, storing nothing when refused.

use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_domain::status::{MessageStatus, ReportedStatus};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use uuid::Uuid;

use super::{Subject, accepted, at, message, organization, report, t0};
use crate::segment::{Limits, parse_rule};
use crate::*;

// --- fixtures ------------------------------------------------------------------------------

fn drip(scope: Scope, name: &str) -> Drip {
    Drip {
        id: Uuid::now_v7(),
        org_id: scope.org_id,
        mode: scope.mode,
        name: name.to_owned(),
        status: DripStatus::Active,
        spec: json!({
            "steps": [
                {"delay": "0s", "body": "Welcome {{first_name}}"},
                {"delay": "1d", "body": "How is it going?"}
            ],
            "exit": {"on_reply": true}
        }),
        api_key_id: None,
        created_at: t0(),
        updated_at: t0(),
    }
}

async fn create_drip(store: &dyn Store, d: &Drip) {
    assert_eq!(
        store.create_drip(d, None, t0()).await.unwrap(),
        CampaignCreation::Created
    );
}

/// An active enrolment of `phone` in `d`, at its first step, due at `next_at`.
fn enrollment(d: &Drip, phone: &str, next_at: Timestamp) -> Enrollment {
    Enrollment {
        id: Uuid::now_v7(),
        org_id: d.org_id,
        drip_id: d.id,
        phone: phone.to_owned(),
        contact_id: Some(Uuid::now_v7()),
        source: "phone".into(),
        step: 0,
        next_at: Some(next_at),
        state: EnrollmentState::Active,
        reason: None,
        error: None,
        enrolled_at: t0(),
        updated_at: t0(),
    }
}

async fn enrolled(store: &dyn Store, d: &Drip, phone: &str, next_at: Timestamp) -> Enrollment {
    let e = enrollment(d, phone, next_at);
    assert_eq!(store.enrol(std::slice::from_ref(&e)).await.unwrap(), 1);
    e
}

async fn read_enrollment(store: &dyn Store, e: &Enrollment) -> Enrollment {
    store
        .get_enrollment(e.org_id, e.drip_id, e.id)
        .await
        .unwrap()
        .expect("the enrolment exists")
}

/// The message a step of `e` sends, created at `now`.
fn step_message(d: &Drip, e: &Enrollment, now: Timestamp) -> NewMessage {
    message(d.scope(), &e.phone, now)
}

fn sent(m: &NewMessage) -> Option<StepTaken> {
    Some(StepTaken::Sent(Box::new(m.clone())))
}

async fn advance(
    store: &dyn Store,
    e: &Enrollment,
    taken: Option<StepTaken>,
    next: Next,
    now: Timestamp,
) -> Advanced {
    store.advance_enrollment(e, taken, next, now).await.unwrap()
}

fn trigger(scope: Scope, name: &str, kind: TriggerKind) -> Trigger {
    Trigger {
        id: Uuid::now_v7(),
        org_id: scope.org_id,
        mode: scope.mode,
        name: name.to_owned(),
        kind,
        event: (kind == TriggerKind::Event).then(|| "signup".to_owned()),
        active: true,
        spec: json!({"action": {"send": {"body": "Welcome!"}}}),
        api_key_id: None,
        swept_until: t0(),
        created_at: t0(),
        updated_at: t0(),
    }
}

async fn create_trigger(store: &dyn Store, t: &Trigger) {
    assert_eq!(
        store.create_trigger(t, None, t0()).await.unwrap(),
        CampaignCreation::Created
    );
}

fn firing(t: &Trigger, key: &str, outcome: &str) -> Firing {
    Firing {
        id: Uuid::now_v7(),
        org_id: t.org_id,
        trigger_id: t.id,
        key: key.to_owned(),
        contact_id: None,
        phone: Some("+12025550100".into()),
        outcome: outcome.to_owned(),
        message_id: None,
        enrollment_id: None,
        created_at: at(1),
    }
}

fn send(m: &NewMessage) -> FiringAction {
    FiringAction::Send(Box::new(m.clone()))
}

async fn fire(store: &dyn Store, f: &Firing, action: FiringAction) -> Fired {
    store.fire(f, action).await.unwrap()
}

async fn grant(store: &dyn Store, org_id: Uuid, credits: i64) {
    let grant = CreditGrant {
        id: Uuid::now_v7(),
        org_id,
        credits,
        reason: None,
        granted_by: "cli".into(),
        created_at: t0(),
    };
    let outcome = store
        .grant_credits(&grant, None, &month_of(t0()))
        .await
        .unwrap();
    assert!(
        matches!(outcome, Ok(GrantOutcome::Granted(_))),
        "{outcome:?}"
    );
}

async fn reserved(store: &dyn Store, org_id: Uuid) -> i64 {
    store
        .credit_account(org_id, &month_of(t0()))
        .await
        .unwrap()
        .expect("organization exists")
        .reserved
}

async fn stored(store: &dyn Store, scope: Scope, id: Uuid) -> bool {
    store.get_message(scope, id).await.unwrap().is_some()
}

async fn new_contact(store: &dyn Store, org_id: Uuid, phone: &str, created: i64) -> Contact {
    let c = Contact::new(
        org_id,
        phone,
        Some(Region::parse("US").unwrap()),
        at(created),
    );
    store
        .create_contact(&c, None, c.created_at)
        .await
        .unwrap()
        .unwrap();
    c
}

fn rule(value: serde_json::Value) -> crate::segment::Rule {
    parse_rule(&value, &Limits::default()).unwrap()
}

// --- drips ---------------------------------------------------------------------------------

pub async fn drips_are_stored_listed_and_changed_only_in_their_scope(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let test = Scope {
        mode: Mode::Test,
        ..scope
    };
    let mut ids = Vec::new();
    for name in ["one", "two", "three", "four", "five"] {
        let mut d = drip(scope, name);
        d.api_key_id = Some(Uuid::now_v7());
        create_drip(store, &d).await;
        assert_eq!(store.get_drip(scope, d.id).await.unwrap(), Some(d.clone()));
        ids.push(d.id);
    }
    let theirs = drip(other, "theirs");
    create_drip(store, &theirs).await;

    // Newest first, every drip exactly once.
    ids.reverse();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_drips(scope, after, 2).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|d| d.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(
        store.list_drips(other, None, 10).await.unwrap().items,
        vec![theirs.clone()]
    );
    assert!(
        store
            .list_drips(test, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Another organization or the other mode sees none of them and changes nothing.
    let first = store.get_drip(scope, ids[0]).await.unwrap().unwrap();
    assert_eq!(store.get_drip(other, first.id).await.unwrap(), None);
    assert_eq!(store.get_drip(test, first.id).await.unwrap(), None);
    let mut stolen = first.clone();
    stolen.org_id = other.org_id;
    stolen.name = "stolen".into();
    stolen.updated_at = at(5);
    assert!(!store.update_drip(&stolen, first.updated_at).await.unwrap());
    assert!(!store.delete_drip(other, first.id).await.unwrap());
    assert!(!store.delete_drip(test, first.id).await.unwrap());
    assert_eq!(
        store.get_drip(scope, first.id).await.unwrap(),
        Some(first.clone())
    );

    // An update needs the drip unchanged since it was read.
    let mut edit = first.clone();
    edit.name = "renamed".into();
    edit.status = DripStatus::Paused;
    edit.spec = json!({"steps": []});
    edit.updated_at = at(10);
    assert!(store.update_drip(&edit, first.updated_at).await.unwrap());
    assert_eq!(
        store.get_drip(scope, first.id).await.unwrap(),
        Some(edit.clone())
    );
    let mut stale = first.clone();
    stale.name = "stale".into();
    stale.updated_at = at(20);
    assert!(!store.update_drip(&stale, first.updated_at).await.unwrap());
    assert_eq!(store.get_drip(scope, first.id).await.unwrap(), Some(edit));

    // Deleting takes the enrolments with it.
    let e = enrolled(store, &first, "+12025550100", at(1)).await;
    assert!(store.delete_drip(scope, first.id).await.unwrap());
    assert_eq!(store.get_drip(scope, first.id).await.unwrap(), None);
    assert!(!store.delete_drip(scope, first.id).await.unwrap());
    assert_eq!(
        store
            .get_enrollment(scope.org_id, first.id, e.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.get_drip(other, theirs.id).await.unwrap(),
        Some(theirs)
    );
}

pub async fn an_idempotency_key_replays_a_drip_or_trigger_creation(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let record = IdempotencyRecord {
        key: "drip-1".into(),
        request_hash: [3; 32],
        response: b"{}".to_vec(),
        expires_at: at(3600),
    };
    let first = drip(scope, "welcome");
    assert_eq!(
        store
            .create_drip(&first, Some(&record), t0())
            .await
            .unwrap(),
        CampaignCreation::Created
    );
    let retry = drip(scope, "welcome");
    assert_eq!(
        store
            .create_drip(&retry, Some(&record), at(1))
            .await
            .unwrap(),
        CampaignCreation::Replayed(first.id)
    );
    let different = IdempotencyRecord {
        request_hash: [4; 32],
        ..record.clone()
    };
    assert_eq!(
        store
            .create_drip(&drip(scope, "other"), Some(&different), at(2))
            .await
            .unwrap(),
        CampaignCreation::KeyReused
    );
    assert_eq!(store.get_drip(scope, retry.id).await.unwrap(), None);
    assert_eq!(
        store.list_drips(scope, None, 10).await.unwrap().items.len(),
        1
    );

    let record = IdempotencyRecord {
        key: "trigger-1".into(),
        ..record
    };
    let first = trigger(scope, "welcome", TriggerKind::ContactCreated);
    assert_eq!(
        store
            .create_trigger(&first, Some(&record), t0())
            .await
            .unwrap(),
        CampaignCreation::Created
    );
    let retry = trigger(scope, "welcome", TriggerKind::ContactCreated);
    assert_eq!(
        store
            .create_trigger(&retry, Some(&record), at(1))
            .await
            .unwrap(),
        CampaignCreation::Replayed(first.id)
    );
    assert_eq!(store.get_trigger(scope, retry.id).await.unwrap(), None);
}

pub async fn a_number_is_enrolled_in_a_drip_once(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let d = drip(scope, "welcome");
    create_drip(store, &d).await;
    let second = drip(scope, "follow-up");
    create_drip(store, &second).await;

    let a = enrollment(&d, "+12025550101", at(1));
    let b = enrollment(&d, "+12025550102", at(1));
    let twice = enrollment(&d, "+12025550101", at(2));
    assert_eq!(
        store
            .enrol(&[a.clone(), b.clone(), twice.clone()])
            .await
            .unwrap(),
        2,
        "a number twice in one batch is enrolled once"
    );
    assert_eq!(store.enrol(&[]).await.unwrap(), 0);

    // A number already in the drip is left as it is, whatever its state.
    assert_eq!(
        advance(store, &b, None, Next::Exited("removed".into()), at(3)).await,
        Advanced::Done
    );
    let c = enrollment(&d, "+12025550103", at(4));
    let again = [
        enrollment(&d, "+12025550101", at(4)),
        enrollment(&d, "+12025550102", at(4)),
        c.clone(),
    ];
    assert_eq!(store.enrol(&again).await.unwrap(), 1);
    assert_eq!(read_enrollment(store, &a).await, a);
    let b_now = read_enrollment(store, &b).await;
    assert_eq!(
        (b_now.state, b_now.reason.as_deref()),
        (EnrollmentState::Exited, Some("removed"))
    );
    assert_eq!(
        store
            .get_enrollment(scope.org_id, d.id, again[0].id)
            .await
            .unwrap(),
        None
    );
    // The same number may be in another drip.
    assert_eq!(
        store
            .enrol(&[enrollment(&second, "+12025550101", at(1))])
            .await
            .unwrap(),
        1
    );

    // Enrolments list in id order, every one exactly once, only in their drip and organization.
    let mut expected = vec![a.id, b.id, c.id];
    expected.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_enrollments(scope.org_id, d.id, after, 2)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|e| e.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert!(
        store
            .list_enrollments(other.org_id, d.id, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        store
            .get_enrollment(other.org_id, d.id, a.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_enrollment(scope.org_id, second.id, a.id)
            .await
            .unwrap(),
        None
    );
}

pub async fn only_due_active_enrolments_of_active_drips_are_handed_out(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let d = drip(scope, "welcome");
    create_drip(store, &d).await;
    let theirs = drip(other, "theirs");
    create_drip(store, &theirs).await;
    let mut paused = drip(scope, "paused");
    paused.status = DripStatus::Paused;
    create_drip(store, &paused).await;

    let later = enrolled(store, &d, "+12025550101", at(20)).await;
    let sooner = enrolled(store, &d, "+12025550102", at(10)).await;
    let elsewhere = enrolled(store, &theirs, "+12025550102", at(15)).await;
    enrolled(store, &d, "+12025550103", at(1_000)).await;
    enrolled(store, &paused, "+12025550104", at(5)).await;
    let gone = enrolled(store, &d, "+12025550105", at(5)).await;
    assert_eq!(
        advance(store, &gone, None, Next::Exited("opted_out".into()), at(6)).await,
        Advanced::Done
    );
    let done = enrolled(store, &d, "+12025550106", at(5)).await;
    assert_eq!(
        advance(store, &done, None, Next::Completed, at(6)).await,
        Advanced::Done
    );
    let held = enrolled(store, &paused, "+12025550107", at(5)).await;
    assert_eq!(
        advance(store, &held, None, Next::Completed, at(6)).await,
        Advanced::Moved,
        "a paused drip takes no step"
    );

    let due = store.due_enrollments(at(30), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![sooner.id, elsewhere.id, later.id],
        "every organization's, oldest due first"
    );
    assert_eq!(due[0], sooner);
    assert_eq!(
        store.due_enrollments(at(30), 1).await.unwrap(),
        vec![sooner.clone()]
    );
    assert!(store.due_enrollments(at(9), 10).await.unwrap().is_empty());
    assert_eq!(
        store.due_enrollments(at(10), 10).await.unwrap(),
        vec![sooner],
        "due at exactly its time"
    );

    // Resuming the paused drip hands its enrolment out again.
    let mut resumed = paused.clone();
    resumed.status = DripStatus::Active;
    resumed.updated_at = at(40);
    assert!(
        store
            .update_drip(&resumed, paused.updated_at)
            .await
            .unwrap()
    );
    // Its two enrolments (one whose step it refused while paused) are due again.
    assert_eq!(store.due_enrollments(at(30), 10).await.unwrap().len(), 5);
}

pub async fn a_step_is_taken_once_with_its_message(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let d = drip(scope, "welcome");
    create_drip(store, &d).await;
    let e = enrolled(store, &d, "+12025550101", at(1)).await;

    // The first step goes out and the enrolment waits for the second.
    let first = step_message(&d, &e, at(1));
    assert_eq!(
        advance(
            store,
            &e,
            sent(&first),
            Next::Step {
                step: 1,
                at: at(100)
            },
            at(1)
        )
        .await,
        Advanced::Done
    );
    assert!(stored(store, scope, first.id).await);
    let e1 = read_enrollment(store, &e).await;
    assert_eq!(
        (e1.step, e1.next_at, e1.state, e1.updated_at),
        (1, Some(at(100)), EnrollmentState::Active, at(1))
    );

    // The same step again, from the enrolment as it was read before, changes nothing.
    let duplicate = step_message(&d, &e, at(2));
    assert_eq!(
        advance(
            store,
            &e,
            sent(&duplicate),
            Next::Step {
                step: 1,
                at: at(100)
            },
            at(2)
        )
        .await,
        Advanced::Moved
    );
    assert!(!stored(store, scope, duplicate.id).await);
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 1);
    assert_eq!(read_enrollment(store, &e).await, e1);

    // Another organization cannot move it.
    let mut stolen = e1.clone();
    stolen.org_id = other.org_id;
    assert_eq!(
        advance(store, &stolen, None, Next::Exited("removed".into()), at(3)).await,
        Advanced::Moved
    );
    assert_eq!(read_enrollment(store, &e).await, e1);

    // A step passed over records why, without a message.
    assert_eq!(
        advance(
            store,
            &e1,
            Some(StepTaken::Skipped("missing_variables".into())),
            Next::Step {
                step: 2,
                at: at(200)
            },
            at(100),
        )
        .await,
        Advanced::Done
    );
    let e2 = read_enrollment(store, &e).await;
    assert_eq!((e2.step, e2.next_at), (2, Some(at(200))));
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 1);

    // A retry keeps the step and says why.
    assert_eq!(
        advance(
            store,
            &e2,
            None,
            Next::Retry {
                at: at(300),
                error: "insufficient_credits".into(),
            },
            at(200),
        )
        .await,
        Advanced::Done
    );
    let e3 = read_enrollment(store, &e).await;
    assert_eq!(
        (e3.step, e3.next_at, e3.state, e3.error.as_deref()),
        (
            2,
            Some(at(300)),
            EnrollmentState::Active,
            Some("insufficient_credits")
        )
    );

    // The last step completes it; nothing is due any more.
    let last = step_message(&d, &e, at(300));
    assert_eq!(
        advance(store, &e3, sent(&last), Next::Completed, at(300)).await,
        Advanced::Done
    );
    let e4 = read_enrollment(store, &e).await;
    assert_eq!(
        (
            e4.step,
            e4.next_at,
            e4.state,
            e4.reason.clone(),
            e4.error.clone()
        ),
        (3, None, EnrollmentState::Completed, None, None)
    );
    assert!(
        store
            .due_enrollments(at(10_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        advance(store, &e4, None, Next::Exited("removed".into()), at(400)).await,
        Advanced::Moved,
        "a completed enrolment stays completed"
    );

    assert_eq!(
        store.enrollment_sends(scope.org_id, e.id).await.unwrap(),
        vec![
            (0, Some(first.id), "sent".to_owned()),
            (1, None, "missing_variables".to_owned()),
            (2, Some(last.id), "sent".to_owned()),
        ]
    );
    assert!(
        store
            .enrollment_sends(other.org_id, e.id)
            .await
            .unwrap()
            .is_empty()
    );

    // An exit leaves the step where it was.
    let f = enrolled(store, &d, "+12025550102", at(1)).await;
    assert_eq!(
        advance(store, &f, None, Next::Exited("replied".into()), at(5)).await,
        Advanced::Done
    );
    let f1 = read_enrollment(store, &f).await;
    assert_eq!(
        (f1.step, f1.next_at, f1.state, f1.reason.as_deref()),
        (0, None, EnrollmentState::Exited, Some("replied"))
    );
    assert!(
        store
            .enrollment_sends(scope.org_id, f.id)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn concurrent_takers_of_a_step_send_it_once(subject: &Subject) {
    let store = subject.store.as_ref();
    let elsewhere = subject.reconnect().await;
    let scope = organization(store, "acme").await;
    let d = drip(scope, "welcome");
    create_drip(store, &d).await;
    for i in 0..8 {
        let e = enrolled(store, &d, &format!("+1202555020{i}"), at(1)).await;
        let (a, b) = (step_message(&d, &e, at(2)), step_message(&d, &e, at(2)));
        let next = Next::Step {
            step: 1,
            at: at(100),
        };
        let (ra, rb) = tokio::join!(
            store.advance_enrollment(&e, sent(&a), next.clone(), at(2)),
            elsewhere.advance_enrollment(&e, sent(&b), next.clone(), at(2)),
        );
        let mut outcomes = [ra.unwrap(), rb.unwrap()];
        outcomes.sort_by_key(|o| *o == Advanced::Moved);
        assert_eq!(outcomes, [Advanced::Done, Advanced::Moved]);
        assert_eq!(
            stored(store, scope, a.id).await as u8 + stored(store, scope, b.id).await as u8,
            1
        );
        assert_eq!(
            store
                .enrollment_sends(scope.org_id, e.id)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 8);
}

pub async fn a_step_the_credits_do_not_cover_changes_nothing(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    grant(store, scope.org_id, 1).await;
    let d = drip(scope, "welcome");
    create_drip(store, &d).await;
    let a = enrolled(store, &d, "+12025550101", at(1)).await;
    let b = enrolled(store, &d, "+12025550102", at(1)).await;
    let next = Next::Step {
        step: 1,
        at: at(100),
    };

    let paid = step_message(&d, &a, at(2));
    assert_eq!(
        advance(store, &a, sent(&paid), next.clone(), at(2)).await,
        Advanced::Done
    );
    assert_eq!(reserved(store, scope.org_id).await, 1);

    let unpaid = step_message(&d, &b, at(2));
    assert_eq!(
        advance(store, &b, sent(&unpaid), next.clone(), at(2)).await,
        Advanced::Refused(CreditRefusal::InsufficientCredits {
            needed: 1,
            available: 0
        })
    );
    assert_eq!(
        read_enrollment(store, &b).await,
        b,
        "the enrolment did not move"
    );
    assert!(!stored(store, scope, unpaid.id).await);
    assert!(
        store
            .enrollment_sends(scope.org_id, b.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(reserved(store, scope.org_id).await, 1);
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 1);

    // Once credits are granted the same step goes through.
    grant(store, scope.org_id, 1).await;
    assert_eq!(
        advance(store, &b, sent(&unpaid), next, at(3)).await,
        Advanced::Done
    );
    assert!(stored(store, scope, unpaid.id).await);
}

/// A batch of steps is one transaction: a step taken elsewhere answers `Moved` and sends
/// nothing while the rest go through; when the credits do not cover every message, nothing
/// of the batch changes.
pub async fn a_batch_of_steps_is_taken_together(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    grant(store, scope.org_id, 3).await;
    let d = drip(scope, "welcome");
    create_drip(store, &d).await;
    let e: Vec<Enrollment> = [
        "+12025550101",
        "+12025550102",
        "+12025550103",
        "+12025550104",
    ]
    .iter()
    .map(|phone| enrollment(&d, phone, at(1)))
    .collect();
    assert_eq!(store.enrol(&e).await.unwrap(), 4);
    let next = Next::Step {
        step: 1,
        at: at(100),
    };
    // The second was taken elsewhere first.
    let elsewhere = step_message(&d, &e[1], at(2));
    assert_eq!(
        advance(store, &e[1], sent(&elsewhere), next.clone(), at(2)).await,
        Advanced::Done
    );
    let batch = |messages: &[NewMessage]| -> Vec<Advance> {
        e[..3]
            .iter()
            .zip(messages)
            .map(|(e, m)| Advance {
                enrollment: e.clone(),
                taken: sent(m),
                next: next.clone(),
            })
            .chain(std::iter::once(Advance {
                enrollment: e[3].clone(),
                taken: None,
                next: Next::Exited("opted_out".into()),
            }))
            .collect()
    };
    let messages: Vec<NewMessage> = e[..3].iter().map(|e| step_message(&d, e, at(3))).collect();
    assert_eq!(
        store
            .advance_enrollments(&batch(&messages), at(3))
            .await
            .unwrap(),
        vec![
            Advanced::Done,
            Advanced::Moved,
            Advanced::Done,
            Advanced::Done
        ]
    );
    assert!(stored(store, scope, messages[0].id).await);
    assert!(
        !stored(store, scope, messages[1].id).await,
        "the moved step sent nothing"
    );
    assert!(stored(store, scope, messages[2].id).await);
    assert_eq!(
        read_enrollment(store, &e[3]).await.state,
        EnrollmentState::Exited
    );
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 3);
    // A number's active enrolments: the one still going, not the one that left, and not
    // another organization's.
    let active = store
        .active_enrollments(scope.org_id, &e[0].phone)
        .await
        .unwrap();
    assert_eq!(active, vec![read_enrollment(store, &e[0]).await]);
    assert!(
        store
            .active_enrollments(scope.org_id, &e[3].phone)
            .await
            .unwrap()
            .is_empty()
    );
    let other = organization(store, "globex").await;
    assert!(
        store
            .active_enrollments(other.org_id, &e[0].phone)
            .await
            .unwrap()
            .is_empty()
    );

    // Three more messages with no credit left: the whole batch changes nothing.
    let d2 = drip(scope, "second");
    create_drip(store, &d2).await;
    let f: Vec<Enrollment> = ["+12025550105", "+12025550106"]
        .iter()
        .map(|phone| enrollment(&d2, phone, at(1)))
        .collect();
    store.enrol(&f).await.unwrap();
    let refused: Vec<Advance> = f
        .iter()
        .map(|e| Advance {
            enrollment: e.clone(),
            taken: sent(&step_message(&d2, e, at(4))),
            next: next.clone(),
        })
        .collect();
    let outcomes = store.advance_enrollments(&refused, at(4)).await.unwrap();
    assert!(
        outcomes.iter().all(|o| matches!(o, Advanced::Refused(_))),
        "{outcomes:?}"
    );
    for e in &f {
        assert_eq!(read_enrollment(store, e).await, *e, "nothing moved");
    }
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 3);
    assert_eq!(reserved(store, scope.org_id).await, 3);
}

pub async fn drip_stats_count_enrolments_by_state_and_steps_by_message(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let d = drip(scope, "welcome");
    create_drip(store, &d).await;
    assert_eq!(
        store.drip_stats(scope.org_id, d.id).await.unwrap(),
        DripStats::default()
    );
    let e: Vec<Enrollment> = {
        let mut all = Vec::new();
        for i in 1..=7 {
            all.push(enrolled(store, &d, &format!("+1202555010{i}"), at(1)).await);
        }
        all
    };
    let wait = |step| Next::Step { step, at: at(100) };

    // Step 0: three messages and one passed over; two exits.
    let m1 = step_message(&d, &e[0], at(2));
    let m2 = step_message(&d, &e[1], at(2));
    let m4 = step_message(&d, &e[3], at(2));
    assert_eq!(
        advance(store, &e[0], sent(&m1), wait(1), at(2)).await,
        Advanced::Done
    );
    assert_eq!(
        advance(store, &e[1], sent(&m2), wait(1), at(2)).await,
        Advanced::Done
    );
    let skipped = Some(StepTaken::Skipped("missing_variables".into()));
    assert_eq!(
        advance(store, &e[2], skipped, wait(1), at(2)).await,
        Advanced::Done
    );
    assert_eq!(
        advance(store, &e[3], sent(&m4), Next::Completed, at(2)).await,
        Advanced::Done
    );
    let opted_out = Next::Exited("opted_out".into());
    assert_eq!(
        advance(store, &e[4], None, opted_out, at(2)).await,
        Advanced::Done
    );
    let replied = Next::Exited("replied".into());
    assert_eq!(
        advance(store, &e[5], None, replied, at(2)).await,
        Advanced::Done
    );

    // m1 is sent, m2 fails, m4 is delivered.
    let claims = store
        .claim_due(at(3), at(3) + SignedDuration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(claims.len(), 3);
    let results: Vec<SendResult> = claims
        .iter()
        .map(|claim| {
            if claim.id == m2.id {
                SendResult {
                    id: claim.id,
                    attempt: claim.attempt,
                    provider: Some("simulator".into()),
                    outcome: SendOutcome::Failed {
                        code: "21211".into(),
                        message: "invalid number".into(),
                    },
                }
            } else {
                accepted(claim, &format!("SM-{}", claim.id))
            }
        })
        .collect();
    store.record_results(&results, at(4)).await.unwrap();
    let delivered = report(
        Some(m4.id),
        &format!("SM-{}", m4.id),
        ReportedStatus::Delivered,
    );
    store.apply_reports(&[delivered], at(5)).await.unwrap();

    // Step 1: one message waits in the queue, one is canceled.
    let e0 = read_enrollment(store, &e[0]).await;
    let e1 = read_enrollment(store, &e[1]).await;
    let m5 = step_message(&d, &e0, at(100));
    let m6 = step_message(&d, &e1, at(100));
    assert_eq!(
        advance(store, &e0, sent(&m5), Next::Completed, at(100)).await,
        Advanced::Done
    );
    assert_eq!(
        advance(store, &e1, sent(&m6), wait(2), at(100)).await,
        Advanced::Done
    );
    store
        .cancel_message(scope, m6.id, at(101))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .get_message(scope, m1.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        MessageStatus::Sent
    );

    let stats = store.drip_stats(scope.org_id, d.id).await.unwrap();
    assert_eq!(
        stats,
        DripStats {
            enrolled: 7,
            active: 3,
            completed: 2,
            exited: [("opted_out".to_owned(), 1), ("replied".to_owned(), 1)]
                .into_iter()
                .collect(),
            steps: vec![
                StepStats {
                    step: 0,
                    taken: 4,
                    sent: 1,
                    delivered: 1,
                    failed: 1,
                    skipped: 1,
                    ..Default::default()
                },
                StepStats {
                    step: 1,
                    taken: 2,
                    pending: 1,
                    canceled: 1,
                    ..Default::default()
                },
            ],
        }
    );
    assert_eq!(
        store.drip_stats(other.org_id, d.id).await.unwrap(),
        DripStats::default()
    );
}

pub async fn replies_are_found_after_a_time_and_only_the_organizations(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let inbound = |org_id: Uuid, from: &str, received_at: Timestamp| InboundMessage {
        id: Uuid::now_v7(),
        org_id,
        provider: "simulator".into(),
        provider_message_id: Uuid::now_v7().to_string(),
        from: from.to_owned(),
        to: "+12025550000".into(),
        body: "Thanks!".into(),
        received_at,
    };
    let phone = "+12025550101";
    assert!(
        !store
            .replied_since(scope.org_id, phone, t0())
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_inbound(&inbound(scope.org_id, phone, at(100)))
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_inbound(&inbound(other.org_id, "+12025550102", at(100)))
            .await
            .unwrap()
    );
    assert!(
        store
            .replied_since(scope.org_id, phone, at(50))
            .await
            .unwrap()
    );
    assert!(
        store
            .replied_since(scope.org_id, phone, at(99))
            .await
            .unwrap()
    );
    assert!(
        !store
            .replied_since(scope.org_id, phone, at(100))
            .await
            .unwrap(),
        "only after the time"
    );
    assert!(
        !store
            .replied_since(other.org_id, phone, at(50))
            .await
            .unwrap()
    );
    assert!(
        !store
            .replied_since(scope.org_id, "+12025550102", at(50))
            .await
            .unwrap()
    );
    let last = store
        .last_replies(
            scope.org_id,
            &[
                phone.to_owned(),
                "+12025550102".to_owned(),
                "+12025550103".to_owned(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        last,
        [(phone.to_owned(), at(100))].into(),
        "only this organization's"
    );
}

// --- triggers ------------------------------------------------------------------------------

pub async fn triggers_are_stored_listed_and_changed_only_in_their_scope(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let test = Scope {
        mode: Mode::Test,
        ..scope
    };
    let mut ids = Vec::new();
    for (name, kind) in [
        ("created", TriggerKind::ContactCreated),
        ("aged", TriggerKind::ContactAge),
        ("signup", TriggerKind::Event),
    ] {
        let mut t = trigger(scope, name, kind);
        t.api_key_id = Some(Uuid::now_v7());
        create_trigger(store, &t).await;
        assert_eq!(
            store.get_trigger(scope, t.id).await.unwrap(),
            Some(t.clone())
        );
        ids.push(t.id);
    }
    let theirs = trigger(other, "theirs", TriggerKind::Event);
    create_trigger(store, &theirs).await;

    ids.reverse();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_triggers(scope, after, 2).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|t| t.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert!(
        store
            .list_triggers(test, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        store.list_triggers(other, None, 10).await.unwrap().items,
        vec![theirs.clone()]
    );

    let first = store.get_trigger(scope, ids[0]).await.unwrap().unwrap();
    assert_eq!(store.get_trigger(other, first.id).await.unwrap(), None);
    assert_eq!(store.get_trigger(test, first.id).await.unwrap(), None);
    let mut stolen = first.clone();
    stolen.org_id = other.org_id;
    stolen.active = false;
    stolen.updated_at = at(5);
    assert!(
        !store
            .update_trigger(&stolen, first.updated_at)
            .await
            .unwrap()
    );
    assert!(!store.delete_trigger(other, first.id).await.unwrap());
    assert_eq!(
        store.get_trigger(scope, first.id).await.unwrap(),
        Some(first.clone())
    );

    let mut edit = first.clone();
    edit.name = "renamed".into();
    edit.active = false;
    edit.spec = json!({"action": {"enrol": {"drip": Uuid::nil()}}});
    edit.updated_at = at(10);
    assert!(store.update_trigger(&edit, first.updated_at).await.unwrap());
    assert_eq!(
        store.get_trigger(scope, first.id).await.unwrap(),
        Some(edit.clone())
    );
    let mut stale = first.clone();
    stale.name = "stale".into();
    stale.updated_at = at(20);
    assert!(
        !store
            .update_trigger(&stale, first.updated_at)
            .await
            .unwrap()
    );

    // Sweeps only move forward.
    let aged = ids[1];
    store.set_swept(aged, at(500)).await.unwrap();
    store.set_swept(aged, at(300)).await.unwrap();
    assert_eq!(
        store
            .get_trigger(scope, aged)
            .await
            .unwrap()
            .unwrap()
            .swept_until,
        at(500)
    );

    assert!(store.delete_trigger(scope, first.id).await.unwrap());
    assert!(!store.delete_trigger(scope, first.id).await.unwrap());
    assert_eq!(store.get_trigger(scope, first.id).await.unwrap(), None);
    assert_eq!(
        store.get_trigger(other, theirs.id).await.unwrap(),
        Some(theirs)
    );
}

pub async fn active_triggers_are_found_by_kind_and_event(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let test = Scope {
        mode: Mode::Test,
        ..scope
    };
    let created = trigger(scope, "created", TriggerKind::ContactCreated);
    let theirs_created = trigger(other, "created", TriggerKind::ContactCreated);
    let mut inactive = trigger(scope, "off", TriggerKind::ContactCreated);
    inactive.active = false;
    let aged = trigger(scope, "aged", TriggerKind::ContactAge);
    let signup = trigger(scope, "signup", TriggerKind::Event);
    let mut purchase = trigger(scope, "purchase", TriggerKind::Event);
    purchase.event = Some("purchase".into());
    let mut signup_off = trigger(scope, "signup off", TriggerKind::Event);
    signup_off.active = false;
    let theirs_signup = trigger(other, "signup", TriggerKind::Event);
    let test_signup = trigger(test, "signup", TriggerKind::Event);
    for t in [
        &created,
        &theirs_created,
        &inactive,
        &aged,
        &signup,
        &purchase,
        &signup_off,
        &theirs_signup,
        &test_signup,
    ] {
        create_trigger(store, t).await;
    }
    let ids = |ts: Vec<Trigger>| ts.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let mut every_created = vec![created.id, theirs_created.id];
    every_created.sort();
    assert_eq!(
        ids(store
            .active_triggers(TriggerKind::ContactCreated)
            .await
            .unwrap()),
        every_created,
        "every organization's, in id order"
    );
    assert_eq!(
        store
            .active_triggers(TriggerKind::ContactAge)
            .await
            .unwrap(),
        vec![aged]
    );
    assert_eq!(
        ids(store.event_triggers(scope, "signup").await.unwrap()),
        vec![signup.id]
    );
    assert_eq!(
        ids(store.event_triggers(test, "signup").await.unwrap()),
        vec![test_signup.id]
    );
    assert_eq!(
        ids(store.event_triggers(other, "signup").await.unwrap()),
        vec![theirs_signup.id]
    );
    assert!(
        store
            .event_triggers(scope, "nothing")
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn trigger_candidates_are_new_matching_contacts_in_the_window(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let t = trigger(scope, "welcome", TriggerKind::ContactCreated);
    create_trigger(store, &t).await;
    let another = trigger(scope, "another", TriggerKind::ContactCreated);
    create_trigger(store, &another).await;

    let before = new_contact(store, scope.org_id, "+12025550100", 5).await;
    let mut window = Vec::new();
    for (phone, created) in [
        ("+12025550101", 10),
        ("+12025550102", 20),
        ("+12025550103", 20),
        ("+12025550104", 30),
    ] {
        window.push(new_contact(store, scope.org_id, phone, created).await);
    }
    new_contact(store, scope.org_id, "+12025550105", 100).await;
    new_contact(store, other.org_id, "+12025550106", 15).await;
    // Two of them are VIPs, one a customer.
    for (i, tags, status) in [(1, true, "new"), (3, true, "customer")] {
        let mut c = window[i].clone();
        if tags {
            c.tags = vec!["vip".into()];
        }
        c.lead_status = status.into();
        c.updated_at = at(40);
        store
            .update_contact(&c, window[i].updated_at)
            .await
            .unwrap()
            .unwrap();
        window[i] = c;
    }
    window.sort_by_key(|c| (c.created_at, c.id));
    let now = at(200);
    let candidates =
        |rule: Option<crate::segment::Rule>, after: Option<(Timestamp, Uuid)>, limit: u32| {
            let t = t.clone();
            async move {
                store
                    .trigger_candidates(&t, rule.as_ref(), at(10), at(100), after, now, limit)
                    .await
                    .unwrap()
            }
        };
    let ids = |cs: &[Contact]| cs.iter().map(|c| c.id).collect::<Vec<_>>();

    // In [from, to), in creation order then id, read back whole.
    let all = candidates(None, None, 10).await;
    assert_eq!(all, window);
    assert!(!ids(&all).contains(&before.id));

    // A page at a time, after the last one seen, even within one creation time.
    let first = candidates(None, None, 2).await;
    assert_eq!(ids(&first), ids(&window[..2]));
    let last = &first[1];
    let rest = candidates(None, Some((last.created_at, last.id)), 10).await;
    assert_eq!(ids(&rest), ids(&window[2..]));

    // Only the contacts the rule selects.
    let vips = candidates(
        Some(rule(json!({"field":"tag","op":"eq","value":"vip"}))),
        None,
        10,
    )
    .await;
    let expected: Vec<Uuid> = window
        .iter()
        .filter(|c| c.tags.contains(&"vip".to_owned()))
        .map(|c| c.id)
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(ids(&vips), expected);
    let customers = candidates(
        Some(rule(
            json!({"field":"lead_status","op":"eq","value":"customer"}),
        )),
        None,
        10,
    )
    .await;
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].lead_status, "customer");

    // A contact the trigger fired for is no longer a candidate; another trigger's firing
    // does not count.
    let mut fired = firing(&t, &window[0].id.to_string(), "opted_out");
    fired.contact_id = Some(window[0].id);
    assert!(matches!(
        fire(store, &fired, FiringAction::Nothing).await,
        Fired::New(_)
    ));
    let mut elsewhere = firing(&another, &window[1].id.to_string(), "opted_out");
    elsewhere.contact_id = Some(window[1].id);
    assert!(matches!(
        fire(store, &elsewhere, FiringAction::Nothing).await,
        Fired::New(_)
    ));
    assert_eq!(ids(&candidates(None, None, 10).await), ids(&window[1..]));
}

pub async fn a_trigger_fires_once_per_key(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let t = trigger(scope, "welcome", TriggerKind::Event);
    create_trigger(store, &t).await;

    let m = message(scope, "+12025550100", at(1));
    let f = firing(&t, "evt-1", "sent");
    let Fired::New(first) = fire(store, &f, send(&m)).await else {
        panic!("a new key fires");
    };
    assert_eq!(first.message_id, Some(m.id));
    assert_eq!((first.id, first.outcome.as_str()), (f.id, "sent"));
    assert!(stored(store, scope, m.id).await);

    // The same key again: the first firing, and no second message.
    let again = message(scope, "+12025550100", at(2));
    assert_eq!(
        fire(store, &firing(&t, "evt-1", "sent"), send(&again)).await,
        Fired::Already(first.clone())
    );
    assert!(!stored(store, scope, again.id).await);
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 1);
    assert_eq!(
        store.get_firing(scope.org_id, t.id, "evt-1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.get_firing(other.org_id, t.id, "evt-1").await.unwrap(),
        None
    );
    assert_eq!(
        store.get_firing(scope.org_id, t.id, "evt-2").await.unwrap(),
        None
    );

    // A firing that does nothing is recorded with why.
    let quiet = firing(&t, "evt-2", "opted_out");
    let Fired::New(quiet) = fire(store, &quiet, FiringAction::Nothing).await else {
        panic!("a new key fires");
    };
    assert_eq!(
        (
            quiet.outcome.as_str(),
            quiet.message_id,
            quiet.enrollment_id
        ),
        ("opted_out", None, None)
    );

    // Enrolling: a number new to the drip is enrolled; one already in it is not again.
    let d = drip(scope, "welcome");
    create_drip(store, &d).await;
    let e = enrollment(&d, "+12025550100", at(3));
    let Fired::New(joined) = fire(
        store,
        &firing(&t, "evt-3", "enrolled"),
        FiringAction::Enrol(Box::new(e.clone())),
    )
    .await
    else {
        panic!("a new key fires");
    };
    assert_eq!(
        (joined.outcome.as_str(), joined.enrollment_id),
        ("enrolled", Some(e.id))
    );
    assert_eq!(read_enrollment(store, &e).await, e);
    let twice = enrollment(&d, "+12025550100", at(4));
    let Fired::New(already) = fire(
        store,
        &firing(&t, "evt-4", "enrolled"),
        FiringAction::Enrol(Box::new(twice.clone())),
    )
    .await
    else {
        panic!("a new key fires");
    };
    assert_eq!(
        (already.outcome.as_str(), already.enrollment_id),
        ("already_enrolled", Some(e.id))
    );
    assert_eq!(
        store.get_firing(scope.org_id, t.id, "evt-4").await.unwrap(),
        Some(already.clone())
    );
    assert_eq!(
        store
            .get_enrollment(scope.org_id, d.id, twice.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .list_enrollments(scope.org_id, d.id, None, 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // Firings list newest first, every one once, only in their organization.
    let expected = vec![already.id, joined.id, quiet.id, first.id];
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_firings(scope.org_id, t.id, after, 3)
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|f| f.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert!(
        store
            .list_firings(other.org_id, t.id, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

pub async fn a_firing_the_credits_do_not_cover_stores_nothing(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    grant(store, scope.org_id, 1).await;
    let t = trigger(scope, "welcome", TriggerKind::Event);
    create_trigger(store, &t).await;

    let mut long = message(scope, "+12025550100", at(1));
    long.segments = 2;
    assert_eq!(
        fire(store, &firing(&t, "evt-1", "sent"), send(&long)).await,
        Fired::Refused(CreditRefusal::InsufficientCredits {
            needed: 2,
            available: 1
        })
    );
    assert!(!stored(store, scope, long.id).await);
    assert_eq!(
        store.get_firing(scope.org_id, t.id, "evt-1").await.unwrap(),
        None
    );
    assert!(
        store
            .list_firings(scope.org_id, t.id, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(reserved(store, scope.org_id).await, 0);

    // The key is still free: a message the credits cover fires it.
    let short = message(scope, "+12025550100", at(2));
    assert!(matches!(
        fire(store, &firing(&t, "evt-1", "sent"), send(&short)).await,
        Fired::New(_)
    ));
    assert!(stored(store, scope, short.id).await);
    assert_eq!(reserved(store, scope.org_id).await, 1);
}

pub async fn concurrent_firings_with_one_key_fire_once(subject: &Subject) {
    let store = subject.store.as_ref();
    let elsewhere = subject.reconnect().await;
    let scope = organization(store, "acme").await;
    let t = trigger(scope, "welcome", TriggerKind::Event);
    create_trigger(store, &t).await;
    let d = drip(scope, "welcome");
    create_drip(store, &d).await;
    for i in 0..8 {
        let key = format!("evt-{i}");
        let (fa, fb) = (firing(&t, &key, "sent"), firing(&t, &key, "sent"));
        let (ma, mb) = (
            message(scope, "+12025550100", at(1)),
            message(scope, "+12025550100", at(1)),
        );
        let (ra, rb) = tokio::join!(store.fire(&fa, send(&ma)), elsewhere.fire(&fb, send(&mb)));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let winner = match (&ra, &rb) {
            (Fired::New(w), Fired::Already(seen)) | (Fired::Already(seen), Fired::New(w)) => {
                assert_eq!(w, seen, "the loser answers the winner's firing");
                w.clone()
            }
            other => panic!("expected one new firing and one repeat, got {other:?}"),
        };
        assert_eq!(
            stored(store, scope, ma.id).await as u8 + stored(store, scope, mb.id).await as u8,
            1
        );
        assert!(stored(store, scope, winner.message_id.unwrap()).await);

        // Enrolling through the same key, at once: one firing, one enrolment.
        let key = format!("join-{i}");
        let phone = format!("+1202555030{i}");
        let (fa, fb) = (firing(&t, &key, "enrolled"), firing(&t, &key, "enrolled"));
        let (ea, eb) = (enrollment(&d, &phone, at(5)), enrollment(&d, &phone, at(5)));
        let (ra, rb) = tokio::join!(
            store.fire(&fa, FiringAction::Enrol(Box::new(ea))),
            elsewhere.fire(&fb, FiringAction::Enrol(Box::new(eb))),
        );
        let news = [ra.unwrap(), rb.unwrap()]
            .iter()
            .filter(|r| matches!(r, Fired::New(_)))
            .count();
        assert_eq!(news, 1);
    }
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 8);
    assert_eq!(
        store
            .list_firings(scope.org_id, t.id, None, 100)
            .await
            .unwrap()
            .items
            .len(),
        16
    );
    assert_eq!(
        store
            .list_enrollments(scope.org_id, d.id, None, 100)
            .await
            .unwrap()
            .items
            .len(),
        8
    );
}
