//! Conformance cases for campaigns: stored and read only in their scope, created once per
//! idempotency key, edited only while editable and unchanged, moved through their lifecycle only
//! from the statuses each change allows; runs taken by one owner at a time, their audience
//! written once per number, released to the queue together with their recipients' marks (or not
//! at all), held while paused, canceled with their unsent messages, and finished only once
//! everything is settled; their books add up to the audience at every step.

use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_domain::status::{MessageStatus, ReportedStatus};
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::{Subject, accepted, at, message, organization, report, t0};
use crate::*;

fn draft(scope: Scope, name: &str) -> Campaign {
    with_status(scope, name, CampaignStatus::Draft)
}

fn with_status(scope: Scope, name: &str, status: CampaignStatus) -> Campaign {
    Campaign {
        id: Uuid::now_v7(),
        org_id: scope.org_id,
        mode: scope.mode,
        name: name.to_owned(),
        status,
        spec: serde_json::json!({
            "variants": [{"body": "Hello {{first_name}}"}, {"body": "Hi there"}],
            "audience": {"lists": ["vip"]},
            "throttle": {"per_minute": 60}
        }),
        api_key_id: None,
        next_run_at: None,
        current_run: None,
        runs: 0,
        error: None,
        created_at: t0(),
        updated_at: t0(),
    }
}

fn lease(owner: Uuid, until: Timestamp) -> Lease {
    Lease { owner, until }
}

/// A new run of `c`, not yet held by anyone.
fn new_run(c: &Campaign) -> CampaignRun {
    CampaignRun {
        id: Uuid::now_v7(),
        campaign_id: c.id,
        org_id: c.org_id,
        mode: c.mode,
        occurrence: t0(),
        phase: RunPhase::Snapshot,
        audience: 0,
        position: None,
        lease: None,
        next_release_at: None,
        error: None,
        created_at: t0(),
        finished_at: None,
        ab_winner: None,
    }
}

fn person(phone: &str, variant: u16, due_at: Timestamp) -> NewRecipient {
    NewRecipient {
        phone: phone.to_owned(),
        contact_id: Some(Uuid::now_v7()),
        country: Some(Region::parse("US").unwrap()),
        variant,
        body: Some(format!("Hello {phone}")),
        due_at,
        state: RecipientState::Pending,
        reason: None,
    }
}

fn suppressed(phone: &str, reason: &str) -> NewRecipient {
    NewRecipient {
        body: None,
        state: RecipientState::Suppressed,
        reason: Some(reason.to_owned()),
        ..person(phone, 0, t0())
    }
}

/// The message a recipient becomes when released at `created_at`.
fn release_of(run: &CampaignRun, r: &RunRecipient, created_at: Timestamp) -> (u64, NewMessage) {
    let mut m = message(run.scope(), &r.phone, created_at);
    m.body = r.body.clone().unwrap_or_default();
    m.campaign_run_id = Some(run.id);
    (r.seq, m)
}

async fn create(store: &dyn Store, c: &Campaign) {
    assert_eq!(
        store.create_campaign(c, None, t0()).await.unwrap(),
        CampaignCreation::Created
    );
}

async fn transition(
    store: &dyn Store,
    c: &Campaign,
    change: Transition,
    now: Timestamp,
) -> Result<Campaign, CampaignRefusal> {
    store
        .transition_campaign(c.scope(), c.id, &change, now)
        .await
        .unwrap()
}

/// A running campaign and its run, taken by `owner` until `at(600)`.
async fn started(store: &dyn Store, scope: Scope, owner: Uuid) -> (Campaign, CampaignRun) {
    let c = draft(scope, "launch");
    create(store, &c).await;
    let run = new_run(&c);
    let c = transition(
        store,
        &c,
        Transition::Start {
            run: Box::new(run.clone()),
        },
        t0(),
    )
    .await
    .expect("a draft starts");
    let taken = store
        .take_runs(lease(owner, at(600)), t0(), 10)
        .await
        .unwrap();
    let run = taken
        .into_iter()
        .find(|r| r.id == run.id)
        .expect("the new run is free to take");
    (c, run)
}

/// Write `recipients` as the run's whole audience and move it on to sending; answers the run
/// as stored.
async fn snapshot(
    store: &dyn Store,
    run: &CampaignRun,
    recipients: &[NewRecipient],
) -> CampaignRun {
    let mut run = run.clone();
    run.phase = RunPhase::Send;
    run.position = Some(serde_json::json!({"done": true}));
    store
        .store_snapshot_batch(&run, recipients)
        .await
        .unwrap()
        .expect("the owner writes the snapshot");
    store
        .get_run(run.scope(), run.id)
        .await
        .unwrap()
        .expect("the run exists")
}

/// The run's books, checked to add up to its audience.
async fn books(store: &dyn Store, run_id: Uuid) -> RunBooks {
    let books = store.run_books(run_id).await.unwrap();
    assert_eq!(books.accounted(), books.audience, "{books:?}");
    books
}

async fn recipients(store: &dyn Store, run: &CampaignRun) -> Vec<RunRecipient> {
    store
        .list_recipients(run.scope(), run.id, None, 1_000)
        .await
        .unwrap()
}

async fn release(
    store: &dyn Store,
    run: &CampaignRun,
    chosen: &[RunRecipient],
    now: Timestamp,
) -> ReleaseOutcome {
    let batch: Vec<(u64, NewMessage)> = chosen.iter().map(|r| release_of(run, r, now)).collect();
    store.release_recipients(run, &batch).await.unwrap()
}

async fn claim_all(store: &dyn Store, now: Timestamp) -> Vec<Claimed> {
    store
        .claim_due(now, now + SignedDuration::from_secs(30), 100)
        .await
        .unwrap()
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

// --- cases ---------------------------------------------------------------------------------

pub async fn campaigns_are_stored_and_listed_only_in_their_scope(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "globex").await;
    let test = Scope {
        mode: Mode::Test,
        ..scope
    };
    let mut ids = Vec::new();
    for name in ["one", "two", "three", "four", "five"] {
        let mut c = draft(scope, name);
        c.api_key_id = Some(Uuid::now_v7());
        c.next_run_at = Some(at(3600));
        create(store, &c).await;
        assert_eq!(
            store.get_campaign(scope, c.id).await.unwrap(),
            Some(c.clone())
        );
        ids.push(c.id);
    }
    let elsewhere = draft(other, "theirs");
    create(store, &elsewhere).await;

    // Newest first, every campaign exactly once.
    ids.reverse();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_campaigns(scope, after, 2).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|c| c.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    // Another organization or the other mode sees none of them, and cannot change them.
    let first = ids[0];
    assert_eq!(store.get_campaign(other, first).await.unwrap(), None);
    assert_eq!(store.get_campaign(test, first).await.unwrap(), None);
    assert!(
        store
            .list_campaigns(test, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let theirs = store.list_campaigns(other, None, 10).await.unwrap().items;
    assert_eq!(theirs, vec![elsewhere]);
    assert_eq!(
        store
            .transition_campaign(other, first, &Transition::Cancel, at(1))
            .await
            .unwrap(),
        Err(CampaignRefusal::NotFound)
    );
    assert_eq!(
        store.delete_campaign(other, first).await.unwrap(),
        Err(CampaignRefusal::NotFound)
    );
    let mut stolen = store.get_campaign(scope, first).await.unwrap().unwrap();
    stolen.org_id = other.org_id;
    stolen.name = "stolen".into();
    assert_eq!(
        store.update_campaign(&stolen, t0()).await.unwrap(),
        Err(CampaignRefusal::NotFound)
    );
    let kept = store.get_campaign(scope, first).await.unwrap().unwrap();
    assert_eq!(
        (kept.name.as_str(), kept.status),
        ("five", CampaignStatus::Draft)
    );
}

pub async fn an_idempotency_key_replays_a_campaign_creation(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let record = IdempotencyRecord {
        key: "campaign-1".into(),
        request_hash: [3; 32],
        response: b"{}".to_vec(),
        expires_at: at(3600),
    };
    let first = draft(scope, "launch");
    assert_eq!(
        store
            .create_campaign(&first, Some(&record), t0())
            .await
            .unwrap(),
        CampaignCreation::Created
    );
    let retry = draft(scope, "launch");
    assert_eq!(
        store
            .create_campaign(&retry, Some(&record), at(1))
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
            .create_campaign(&draft(scope, "other"), Some(&different), at(2))
            .await
            .unwrap(),
        CampaignCreation::KeyReused
    );
    assert_eq!(store.get_campaign(scope, retry.id).await.unwrap(), None);
    let listed = store.list_campaigns(scope, None, 10).await.unwrap().items;
    assert_eq!(listed.len(), 1);

    // Keys are kept per organization.
    let other = organization(store, "globex").await;
    assert_eq!(
        store
            .create_campaign(&draft(other, "launch"), Some(&record), at(3))
            .await
            .unwrap(),
        CampaignCreation::Created
    );
}

pub async fn campaign_updates_need_an_editable_campaign_unchanged_since_it_was_read(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let c = draft(scope, "launch");
    create(store, &c).await;

    let mut edit = c.clone();
    edit.name = "relaunch".into();
    edit.spec = serde_json::json!({"variants": [{"body": "New"}]});
    edit.next_run_at = Some(at(7200));
    edit.updated_at = at(10);
    let updated = store
        .update_campaign(&edit, c.updated_at)
        .await
        .unwrap()
        .expect("a draft read just now can change");
    assert_eq!(updated, edit);
    assert_eq!(
        store.get_campaign(scope, c.id).await.unwrap(),
        Some(edit.clone())
    );

    // A change based on the first read is stale now.
    let mut stale = c.clone();
    stale.name = "stale".into();
    stale.updated_at = at(20);
    assert_eq!(
        store.update_campaign(&stale, c.updated_at).await.unwrap(),
        Err(CampaignRefusal::State(CampaignStatus::Draft))
    );

    // Scheduled is still editable; running is not.
    let scheduled = transition(
        store,
        &c,
        Transition::Schedule {
            next_run_at: at(7200),
        },
        at(30),
    )
    .await
    .unwrap();
    let mut later = scheduled.clone();
    later.next_run_at = Some(at(9000));
    later.updated_at = at(40);
    let updated = store
        .update_campaign(&later, scheduled.updated_at)
        .await
        .unwrap()
        .expect("a scheduled campaign can change");
    assert_eq!(updated.next_run_at, Some(at(9000)));
    assert_eq!(updated.status, CampaignStatus::Scheduled);

    let running = transition(
        store,
        &updated,
        Transition::Start {
            run: Box::new(new_run(&c)),
        },
        at(50),
    )
    .await
    .unwrap();
    let mut late = running.clone();
    late.name = "too late".into();
    late.updated_at = at(60);
    assert_eq!(
        store
            .update_campaign(&late, running.updated_at)
            .await
            .unwrap(),
        Err(CampaignRefusal::State(CampaignStatus::Running))
    );
    let mut missing = draft(scope, "missing");
    missing.updated_at = at(60);
    assert_eq!(
        store.update_campaign(&missing, t0()).await.unwrap(),
        Err(CampaignRefusal::NotFound)
    );
}

pub async fn every_transition_is_made_only_from_the_statuses_it_allows(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    for status in CampaignStatus::ALL {
        let changes = [
            Transition::Schedule {
                next_run_at: at(3600),
            },
            Transition::Start {
                run: Box::new(new_run(&draft(scope, "placeholder"))),
            },
            Transition::Pause,
            Transition::Resume,
            Transition::Cancel,
        ];
        for change in changes {
            let c = with_status(scope, "campaign", status);
            create(store, &c).await;
            let change = match change {
                Transition::Start { .. } => Transition::Start {
                    run: Box::new(new_run(&c)),
                },
                other => other,
            };
            let outcome = transition(store, &c, change.clone(), at(5)).await;
            let stored = store.get_campaign(scope, c.id).await.unwrap().unwrap();
            if change.from().contains(&status) {
                let now = outcome.unwrap_or_else(|e| panic!("{change:?} from {status}: {e:?}"));
                assert_eq!(now.status, change.to(), "{change:?} from {status}");
                assert_eq!(now, stored);
                assert_eq!(now.updated_at, at(5));
                match &change {
                    Transition::Schedule { next_run_at } => {
                        assert_eq!(now.next_run_at, Some(*next_run_at));
                    }
                    Transition::Start { run } => {
                        assert_eq!((now.current_run, now.runs), (Some(run.id), 1));
                        assert_eq!(now.next_run_at, None);
                        let stored = store.get_run(scope, run.id).await.unwrap();
                        assert_eq!(stored.as_ref(), Some(&**run));
                        let runs = store.list_runs(scope, c.id, None, 10).await.unwrap();
                        assert_eq!(runs.items, vec![(**run).clone()]);
                    }
                    _ => {}
                }
            } else {
                assert_eq!(
                    outcome,
                    Err(CampaignRefusal::State(status)),
                    "{change:?} from {status}"
                );
                assert_eq!(stored, c, "a refused change writes nothing");
                if let Transition::Start { run } = &change {
                    assert_eq!(store.get_run(scope, run.id).await.unwrap(), None);
                }
            }
        }
    }
    let nowhere = draft(scope, "never stored");
    assert_eq!(
        transition(store, &nowhere, Transition::Pause, at(5)).await,
        Err(CampaignRefusal::NotFound)
    );
}

pub async fn only_campaigns_not_under_way_can_be_deleted(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    for status in CampaignStatus::ALL {
        let c = with_status(scope, "campaign", status);
        create(store, &c).await;
        let outcome = store.delete_campaign(scope, c.id).await.unwrap();
        let left = store.get_campaign(scope, c.id).await.unwrap();
        if matches!(status, CampaignStatus::Running | CampaignStatus::Paused) {
            assert_eq!(outcome, Err(CampaignRefusal::State(status)));
            assert_eq!(left, Some(c));
        } else {
            assert_eq!(outcome, Ok(()), "{status}");
            assert_eq!(left, None);
        }
    }
    assert_eq!(
        store.delete_campaign(scope, Uuid::now_v7()).await.unwrap(),
        Err(CampaignRefusal::NotFound)
    );

    // A completed campaign goes with its runs.
    let owner = Uuid::now_v7();
    let (c, run) = started(store, scope, owner).await;
    let run = snapshot(store, &run, &[]).await;
    assert!(
        store
            .finish_run(&run, RunEnd::Completed, at(10))
            .await
            .unwrap()
    );
    assert_eq!(store.delete_campaign(scope, c.id).await.unwrap(), Ok(()));
    assert_eq!(store.get_run(scope, run.id).await.unwrap(), None);
}

pub async fn a_run_is_taken_by_one_owner_until_its_lease_runs_out(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;

    // A scheduled campaign is due once its time comes, whatever its organization.
    let mut later = draft(scope, "later");
    later.status = CampaignStatus::Scheduled;
    later.next_run_at = Some(at(100));
    create(store, &later).await;
    assert!(store.due_campaigns(at(99), 10).await.unwrap().is_empty());
    assert_eq!(
        store.due_campaigns(at(100), 10).await.unwrap(),
        vec![later.clone()]
    );

    let c = transition(
        store,
        &later,
        Transition::Start {
            run: Box::new(new_run(&later)),
        },
        at(100),
    )
    .await
    .unwrap();
    assert!(store.due_campaigns(at(200), 10).await.unwrap().is_empty());
    let run_id = c.current_run.unwrap();

    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let taken = store
        .take_runs(lease(a, at(160)), at(100), 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, run_id);
    assert_eq!(taken[0].lease, Some(lease(a, at(160))));
    assert_eq!(taken[0].phase, RunPhase::Snapshot);

    // Another owner gets nothing while the lease holds; the owner renews it.
    assert!(
        store
            .take_runs(lease(b, at(170)), at(110), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let renewed = store
        .take_runs(lease(a, at(180)), at(120), 10)
        .await
        .unwrap();
    assert_eq!(renewed.len(), 1);
    assert_eq!(renewed[0].lease, Some(lease(a, at(180))));
    let held_by_a = renewed[0].clone();
    let mut batch = held_by_a.clone();
    batch.position = Some(serde_json::json!({"after": "+12025550101"}));
    assert_eq!(
        store
            .store_snapshot_batch(&batch, &[person("+12025550101", 0, at(100))])
            .await
            .unwrap(),
        Some(1)
    );

    // Once it runs out, another owner takes the run over, where the snapshot had come to.
    let over = store
        .take_runs(lease(b, at(300)), at(180), 10)
        .await
        .unwrap();
    assert_eq!(over.len(), 1);
    assert_eq!(over[0].lease, Some(lease(b, at(300))));
    assert_eq!(over[0].audience, 1);
    assert_eq!(over[0].position, batch.position);
    assert!(
        store
            .take_runs(lease(a, at(400)), at(200), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The former owner writes nothing more.
    assert_eq!(
        store
            .store_snapshot_batch(&held_by_a, &[person("+12025550102", 0, at(100))])
            .await
            .unwrap(),
        None
    );
    assert_eq!(books(store, run_id).await.audience, 1);

    // A paused campaign's run is nobody's work.
    transition(store, &c, Transition::Pause, at(210))
        .await
        .unwrap();
    assert!(
        store
            .take_runs(lease(b, at(900)), at(800), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .store_snapshot_batch(&over[0], &[person("+12025550102", 0, at(100))])
            .await
            .unwrap(),
        None
    );
    transition(store, &c, Transition::Resume, at(220))
        .await
        .unwrap();
    assert_eq!(
        store
            .take_runs(lease(b, at(900)), at(230), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Two processes taking at once: one of them gets the new run.
    let fresh = draft(scope, "raced");
    create(store, &fresh).await;
    let raced = new_run(&fresh);
    transition(
        store,
        &fresh,
        Transition::Start {
            run: Box::new(raced.clone()),
        },
        at(240),
    )
    .await
    .unwrap();
    let second = subject.reconnect().await;
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    let (mine, theirs) = futures::join!(
        store.take_runs(lease(x, at(900)), at(240), 10),
        second.take_runs(lease(y, at(900)), at(240), 10)
    );
    let winners: Vec<Uuid> = mine
        .unwrap()
        .into_iter()
        .chain(theirs.unwrap())
        .map(|r| r.id)
        .filter(|id| *id == raced.id)
        .collect();
    assert_eq!(winners, vec![raced.id]);
}

pub async fn the_snapshot_keeps_one_recipient_per_number_in_due_order(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let owner = Uuid::now_v7();
    let (_, run) = started(store, scope, owner).await;

    let first = [
        person("+12025550103", 0, at(30)),
        person("+12025550101", 1, at(10)),
        person("+12025550103", 1, at(5)),
        suppressed("+12025550109", "opted_out"),
    ];
    let mut writing = run.clone();
    writing.position = Some(serde_json::json!({"page": 1}));
    assert_eq!(
        store.store_snapshot_batch(&writing, &first).await.unwrap(),
        Some(3)
    );
    let stored = store.get_run(scope, run.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.audience, stored.phase, stored.position.clone()),
        (3, RunPhase::Snapshot, writing.position.clone())
    );
    let so_far = books(store, run.id).await;
    assert_eq!((so_far.pending, so_far.suppressed), (2, 1));

    // Someone else's lease writes nothing.
    let mut stranger = writing.clone();
    stranger.lease = Some(lease(Uuid::now_v7(), at(600)));
    assert_eq!(
        store
            .store_snapshot_batch(&stranger, &[person("+12025550199", 0, t0())])
            .await
            .unwrap(),
        None
    );
    let mut unheld = writing.clone();
    unheld.lease = None;
    assert_eq!(
        store
            .store_snapshot_batch(&unheld, &[person("+12025550199", 0, t0())])
            .await
            .unwrap(),
        None
    );

    // Numbers already in the run are dropped from later batches too.
    let second = [
        person("+12025550101", 0, at(1)),
        person("+12025550102", 0, at(10)),
        person("+12025550104", 0, at(20)),
    ];
    let run = snapshot(store, &writing, &second).await;
    assert_eq!(run.audience, 5);
    let stored = store.get_run(scope, run.id).await.unwrap().unwrap();
    assert_eq!((stored.audience, stored.phase), (5, RunPhase::Send));
    // The snapshot is over: another batch is refused.
    assert_eq!(
        store
            .store_snapshot_batch(&run, &[person("+12025550199", 0, t0())])
            .await
            .unwrap(),
        None
    );

    let all = recipients(store, &run).await;
    let phones: Vec<&str> = all.iter().map(|r| r.phone.as_str()).collect();
    assert_eq!(
        phones,
        [
            "+12025550103",
            "+12025550101",
            "+12025550109",
            "+12025550102",
            "+12025550104"
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let kept = &all[0];
    assert_eq!(
        (kept.variant, kept.due_at, kept.state, kept.message_id),
        (0, at(30), RecipientState::Pending, None)
    );
    assert_eq!(kept.body.as_deref(), Some("Hello +12025550103"));
    assert_eq!(kept.country, Some(Region::parse("US").unwrap()));
    assert_eq!(
        (all[2].state, all[2].reason.as_deref()),
        (RecipientState::Suppressed, Some("opted_out"))
    );
    assert_eq!(all[2].body, None);

    // Recipients page by seq.
    let page = store
        .list_recipients(scope, run.id, Some(all[1].seq), 2)
        .await
        .unwrap();
    assert_eq!(page, all[2..4].to_vec());
    let other = organization(store, "globex").await;
    assert!(
        store
            .list_recipients(other, run.id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Due recipients: pending ones due by now, earliest first.
    let due = store.due_recipients(run.id, at(20), 10).await.unwrap();
    let due: Vec<(&str, Timestamp)> = due.iter().map(|r| (r.phone.as_str(), r.due_at)).collect();
    assert_eq!(
        due,
        [
            ("+12025550101", at(10)),
            ("+12025550102", at(10)),
            ("+12025550104", at(20))
        ]
    );
    let first_two = store.due_recipients(run.id, at(100), 2).await.unwrap();
    assert_eq!(first_two.len(), 2);
    assert_eq!(first_two[0].phone, "+12025550101");
    let books = books(store, run.id).await;
    assert_eq!((books.audience, books.pending, books.suppressed), (5, 4, 1));
}

pub async fn a_release_stores_messages_and_marks_recipients_together_or_not_at_all(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let owner = Uuid::now_v7();
    let (c, run) = started(store, scope, owner).await;
    let mut run = snapshot(
        store,
        &run,
        &[
            person("+12025550101", 0, t0()),
            person("+12025550102", 1, t0()),
            person("+12025550103", 0, t0()),
        ],
    )
    .await;
    let all = recipients(store, &run).await;

    run.next_release_at = Some(at(70));
    run.lease = Some(lease(owner, at(700)));
    let batch = vec![
        release_of(&run, &all[0], at(10)),
        release_of(&run, &all[1], at(10)),
    ];
    assert_eq!(
        store.release_recipients(&run, &batch).await.unwrap(),
        ReleaseOutcome::Stored
    );
    let stored = store.get_run(scope, run.id).await.unwrap().unwrap();
    assert_eq!(stored.next_release_at, Some(at(70)));
    assert_eq!(stored.lease, Some(lease(owner, at(700))));
    let listed = recipients(store, &run).await;
    assert_eq!(listed[0].state, RecipientState::Released);
    assert_eq!(listed[0].message_id, Some(batch[0].1.id));
    assert_eq!(listed[0].status, Some(MessageStatus::Queued));
    assert_eq!(listed[0].estimated_cost, Some(7_900));
    assert_eq!(listed[2].state, RecipientState::Pending);
    assert_eq!(listed[2].status, None);
    assert_eq!(store.released_since(run.id, at(9)).await.unwrap(), 2);
    assert_eq!(store.released_since(run.id, at(10)).await.unwrap(), 0);
    assert_eq!(
        store.due_recipients(run.id, at(10), 10).await.unwrap(),
        vec![listed[2].clone()]
    );
    let message = store
        .get_message(scope, batch[0].1.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.status, MessageStatus::Queued);
    let b = books(store, run.id).await;
    assert_eq!((b.audience, b.pending), (3, 3));

    // A recipient released already cannot be released again: the whole batch is refused.
    let again = vec![
        release_of(&run, &all[2], at(11)),
        release_of(&run, &all[0], at(11)),
    ];
    assert_eq!(
        store.release_recipients(&run, &again).await.unwrap(),
        ReleaseOutcome::Lost
    );
    assert!(
        store
            .get_message(scope, again[0].1.id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        recipients(store, &run).await[2].state,
        RecipientState::Pending
    );

    // Nor by someone else's lease, nor once the lease is gone.
    let mut stranger = run.clone();
    stranger.lease = Some(lease(Uuid::now_v7(), at(700)));
    let third = vec![release_of(&run, &all[2], at(12))];
    assert_eq!(
        store.release_recipients(&stranger, &third).await.unwrap(),
        ReleaseOutcome::Lost
    );
    let mut unheld = run.clone();
    unheld.lease = None;
    assert_eq!(
        store.release_recipients(&unheld, &third).await.unwrap(),
        ReleaseOutcome::Lost
    );
    assert!(
        store
            .get_message(scope, third[0].1.id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.released_since(run.id, t0()).await.unwrap(), 2);

    // Suppressing at release marks only pending recipients, and only for the owner.
    assert_eq!(
        store
            .suppress_recipients(&stranger, &[(all[2].seq, "no_consent".into())])
            .await
            .unwrap(),
        ReleaseOutcome::Lost
    );
    assert_eq!(
        store
            .suppress_recipients(
                &run,
                &[
                    (all[2].seq, "no_consent".into()),
                    (all[0].seq, "no_consent".into())
                ]
            )
            .await
            .unwrap(),
        ReleaseOutcome::Stored
    );
    let listed = recipients(store, &run).await;
    assert_eq!(listed[0].state, RecipientState::Released);
    assert_eq!(
        (listed[2].state, listed[2].reason.as_deref()),
        (RecipientState::Suppressed, Some("no_consent"))
    );
    let b = books(store, run.id).await;
    assert_eq!((b.pending, b.suppressed), (2, 1));

    // The claimed messages name their run.
    let claimed = claim_all(store, at(20)).await;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|m| m.campaign_run_id == Some(run.id)));
    assert_eq!(store.in_flight(run.id).await.unwrap(), 2);
    assert_eq!(
        store
            .campaign_facts(scope, c.id, None, 10)
            .await
            .unwrap()
            .0
            .len(),
        2
    );
    books(store, run.id).await;
}

pub async fn a_release_the_credits_do_not_cover_stores_nothing(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    grant(store, scope.org_id, 1).await;
    let owner = Uuid::now_v7();
    let (_, run) = started(store, scope, owner).await;
    let run = snapshot(
        store,
        &run,
        &[
            person("+12025550101", 0, t0()),
            person("+12025550102", 0, t0()),
        ],
    )
    .await;
    let all = recipients(store, &run).await;
    let batch = vec![
        release_of(&run, &all[0], at(1)),
        release_of(&run, &all[1], at(1)),
    ];
    assert_eq!(
        store.release_recipients(&run, &batch).await.unwrap(),
        ReleaseOutcome::Refused(CreditRefusal::InsufficientCredits {
            needed: 2,
            available: 1
        })
    );
    assert!(
        store
            .get_message(scope, batch[0].1.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        recipients(store, &run)
            .await
            .iter()
            .all(|r| r.state == RecipientState::Pending)
    );
    assert_eq!(reserved(store, scope.org_id).await, 0);
    assert_eq!(books(store, run.id).await.pending, 2);

    // What the credits cover goes through.
    let one = vec![release_of(&run, &all[0], at(2))];
    assert_eq!(
        store.release_recipients(&run, &one).await.unwrap(),
        ReleaseOutcome::Stored
    );
    assert_eq!(reserved(store, scope.org_id).await, 1);
    assert_eq!(books(store, run.id).await.pending, 2);
}

pub async fn pausing_holds_queued_messages_and_resuming_releases_them(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let owner = Uuid::now_v7();
    let (c, run) = started(store, scope, owner).await;
    let run = snapshot(
        store,
        &run,
        &[
            person("+12025550101", 0, t0()),
            person("+12025550102", 0, t0()),
            person("+12025550103", 0, t0()),
        ],
    )
    .await;
    let all = recipients(store, &run).await;
    assert_eq!(
        release(store, &run, &all[..2], at(1)).await,
        ReleaseOutcome::Stored
    );
    assert!(store.held_runs(&[run.id]).await.unwrap().is_empty());

    let paused = transition(store, &c, Transition::Pause, at(2))
        .await
        .unwrap();
    assert_eq!(paused.status, CampaignStatus::Paused);
    assert_eq!(
        store.held_runs(&[run.id, Uuid::now_v7()]).await.unwrap(),
        vec![(run.id, CampaignStatus::Paused)]
    );
    // Held: not claimed however late it gets, and nothing more is released.
    assert!(claim_all(store, at(86_400 * 365)).await.is_empty());
    assert_eq!(
        release(store, &run, &all[2..], at(3)).await,
        ReleaseOutcome::Lost
    );
    assert_eq!(
        store
            .suppress_recipients(&run, &[(all[2].seq, "no_consent".into())])
            .await
            .unwrap(),
        ReleaseOutcome::Lost
    );
    assert!(
        !store
            .finish_run(&run, RunEnd::Completed, at(3))
            .await
            .unwrap()
    );
    let b = books(store, run.id).await;
    assert_eq!(b.pending, 3);

    let resumed = transition(store, &c, Transition::Resume, at(10))
        .await
        .unwrap();
    assert_eq!(resumed.status, CampaignStatus::Running);
    assert!(store.held_runs(&[run.id]).await.unwrap().is_empty());
    assert!(claim_all(store, at(9)).await.is_empty(), "due when resumed");
    let claimed = claim_all(store, at(10)).await;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|m| m.campaign_run_id == Some(run.id)));
    assert_eq!(
        release(store, &run, &all[2..], at(11)).await,
        ReleaseOutcome::Stored
    );

    // A pause for want of credits says why, and holds the queue the same way.
    store
        .pause_for(&run, "insufficient_credits", at(12))
        .await
        .unwrap();
    let paused = store.get_campaign(scope, c.id).await.unwrap().unwrap();
    assert_eq!(
        (paused.status, paused.error.as_deref()),
        (CampaignStatus::Paused, Some("insufficient_credits"))
    );
    assert!(claim_all(store, at(100)).await.is_empty());
    let resumed = transition(store, &c, Transition::Resume, at(20))
        .await
        .unwrap();
    assert_eq!(resumed.error, None);
    assert_eq!(claim_all(store, at(20)).await.len(), 1);
    let b = books(store, run.id).await;
    assert_eq!((b.audience, b.pending), (3, 3));
}

pub async fn canceling_cancels_pending_recipients_and_unsent_messages(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    grant(store, scope.org_id, 10).await;
    let owner = Uuid::now_v7();
    let (c, run) = started(store, scope, owner).await;
    let run = snapshot(
        store,
        &run,
        &[
            person("+12025550101", 0, t0()),
            person("+12025550102", 0, t0()),
            person("+12025550103", 0, t0()),
            suppressed("+12025550104", "opted_out"),
        ],
    )
    .await;
    let all = recipients(store, &run).await;
    assert_eq!(
        release(store, &run, &all[..2], at(1)).await,
        ReleaseOutcome::Stored
    );
    assert_eq!(reserved(store, scope.org_id).await, 2);
    transition(store, &c, Transition::Pause, at(2))
        .await
        .unwrap();

    let canceled = transition(store, &c, Transition::Cancel, at(3))
        .await
        .unwrap();
    assert_eq!(canceled.status, CampaignStatus::Cancelled);
    assert_eq!(reserved(store, scope.org_id).await, 0);
    let stored = store.get_run(scope, run.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.phase, stored.lease, stored.finished_at),
        (RunPhase::Canceled, None, Some(at(3)))
    );
    let listed = recipients(store, &run).await;
    let states: Vec<RecipientState> = listed.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            RecipientState::Released,
            RecipientState::Released,
            RecipientState::Canceled,
            RecipientState::Suppressed
        ]
    );
    assert_eq!(listed[0].status, Some(MessageStatus::Canceled));
    let b = books(store, run.id).await;
    assert_eq!(
        (b.audience, b.pending, b.canceled, b.suppressed),
        (4, 0, 3, 1)
    );
    assert!(claim_all(store, at(100)).await.is_empty());

    // Nothing more happens to it.
    assert_eq!(
        release(store, &run, &all[2..3], at(4)).await,
        ReleaseOutcome::Lost
    );
    assert!(
        !store
            .finish_run(&run, RunEnd::Completed, at(4))
            .await
            .unwrap()
    );
    assert!(
        store
            .take_runs(lease(owner, at(900)), at(800), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        transition(store, &c, Transition::Cancel, at(5)).await,
        Err(CampaignRefusal::State(CampaignStatus::Cancelled))
    );
    assert_eq!(
        store.held_runs(&[run.id]).await.unwrap(),
        vec![(run.id, CampaignStatus::Cancelled)]
    );

    // A message of the run that arrived after the cancel is swept, releasing its credits.
    let mut late = message(scope, "+12025550103", at(6));
    late.campaign_run_id = Some(run.id);
    store.insert_messages(&[late.clone()]).await.unwrap();
    assert_eq!(reserved(store, scope.org_id).await, 1);
    assert_eq!(store.sweep_canceled_run(run.id, at(7)).await.unwrap(), 1);
    assert_eq!(reserved(store, scope.org_id).await, 0);
    let swept = store.get_message(scope, late.id).await.unwrap().unwrap();
    assert_eq!(swept.status, MessageStatus::Canceled);
    assert_eq!(store.sweep_canceled_run(run.id, at(8)).await.unwrap(), 0);

    // A run that is not canceled is not swept.
    let (_, live) = started(store, scope, owner).await;
    let live = snapshot(store, &live, &[person("+12025550101", 0, t0())]).await;
    let listed = recipients(store, &live).await;
    assert_eq!(
        release(store, &live, &listed, at(9)).await,
        ReleaseOutcome::Stored
    );
    assert_eq!(store.sweep_canceled_run(live.id, at(10)).await.unwrap(), 0);
    assert_eq!(books(store, live.id).await.pending, 1);

    // Canceling before anything was released cancels every pending recipient.
    let (early, first) = started(store, scope, owner).await;
    let first = snapshot(
        store,
        &first,
        &[
            person("+12025550101", 0, t0()),
            person("+12025550102", 0, t0()),
        ],
    )
    .await;
    transition(store, &early, Transition::Cancel, at(11))
        .await
        .unwrap();
    let b = books(store, first.id).await;
    assert_eq!((b.audience, b.canceled), (2, 2));
}

pub async fn a_run_finishes_only_once_everything_is_settled(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let owner = Uuid::now_v7();
    let (c, run) = started(store, scope, owner).await;

    // Still writing its snapshot: not finished.
    assert!(
        !store
            .finish_run(&run, RunEnd::Completed, at(1))
            .await
            .unwrap()
    );
    let run = snapshot(
        store,
        &run,
        &[
            person("+12025550101", 0, t0()),
            person("+12025550102", 0, t0()),
            person("+12025550103", 0, t0()),
        ],
    )
    .await;
    let all = recipients(store, &run).await;
    assert!(
        !store
            .finish_run(&run, RunEnd::Completed, at(1))
            .await
            .unwrap()
    );
    assert_eq!(
        release(store, &run, &all[..2], at(1)).await,
        ReleaseOutcome::Stored
    );
    assert_eq!(
        store
            .suppress_recipients(&run, &[(all[2].seq, "country_not_allowed".into())])
            .await
            .unwrap(),
        ReleaseOutcome::Stored
    );
    // Queued messages are not settled.
    assert!(
        !store
            .finish_run(&run, RunEnd::Completed, at(2))
            .await
            .unwrap()
    );

    let claimed = claim_all(store, at(2)).await;
    assert_eq!(claimed.len(), 2);
    assert_eq!(store.in_flight(run.id).await.unwrap(), 2);
    // Being sent is not settled either.
    assert!(
        !store
            .finish_run(&run, RunEnd::Completed, at(3))
            .await
            .unwrap()
    );
    let results: Vec<SendResult> = claimed
        .iter()
        .enumerate()
        .map(|(i, m)| accepted(m, &format!("SM{i}")))
        .collect();
    store.record(&results, &[], at(3)).await.unwrap();
    store
        .record(
            &[],
            &[report(None, "SM0", ReportedStatus::Delivered)],
            at(4),
        )
        .await
        .unwrap();
    assert_eq!(store.in_flight(run.id).await.unwrap(), 0);
    let b = books(store, run.id).await;
    assert_eq!(
        (b.audience, b.pending, b.sent, b.delivered, b.suppressed),
        (3, 0, 1, 1, 1)
    );

    // Only the owner finishes it; the campaign then waits for its next occurrence.
    let mut stranger = run.clone();
    stranger.lease = Some(lease(Uuid::now_v7(), at(600)));
    assert!(
        !store
            .finish_run(&stranger, RunEnd::Completed, at(5))
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_run(&run, RunEnd::Next(at(3600)), at(5))
            .await
            .unwrap()
    );
    let done = store.get_run(scope, run.id).await.unwrap().unwrap();
    assert_eq!(
        (done.phase, done.lease, done.finished_at),
        (RunPhase::Done, None, Some(at(5)))
    );
    let waiting = store.get_campaign(scope, c.id).await.unwrap().unwrap();
    assert_eq!(
        (waiting.status, waiting.next_run_at, waiting.current_run),
        (CampaignStatus::Scheduled, Some(at(3600)), Some(run.id))
    );
    assert!(
        !store
            .finish_run(&run, RunEnd::Completed, at(6))
            .await
            .unwrap()
    );
    assert_eq!(
        store.due_campaigns(at(3600), 10).await.unwrap(),
        vec![waiting.clone()]
    );
    assert!(
        store
            .take_runs(lease(owner, at(900)), at(10), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The next occurrence is a run of its own; with nothing to send it completes the campaign.
    let mut second = new_run(&c);
    second.occurrence = at(3600);
    second.created_at = at(3600);
    second.lease = Some(lease(owner, at(4000)));
    let started_again = transition(
        store,
        &waiting,
        Transition::Start {
            run: Box::new(second.clone()),
        },
        at(3600),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            started_again.runs,
            started_again.current_run,
            started_again.next_run_at
        ),
        (2, Some(second.id), None)
    );
    let runs = store.list_runs(scope, c.id, None, 1).await.unwrap();
    assert_eq!(runs.items, vec![second.clone()]);
    let older = store.list_runs(scope, c.id, runs.next, 1).await.unwrap();
    assert_eq!(older.items, vec![done]);
    assert_eq!(older.next, None);
    let second = snapshot(store, &second, &[]).await;
    assert_eq!(books(store, second.id).await, RunBooks::default());
    assert!(
        store
            .finish_run(&second, RunEnd::Completed, at(3601))
            .await
            .unwrap()
    );
    let completed = store.get_campaign(scope, c.id).await.unwrap().unwrap();
    assert_eq!(
        (completed.status, completed.next_run_at),
        (CampaignStatus::Completed, None)
    );
    assert_eq!(
        store.held_runs(&[run.id, second.id]).await.unwrap().len(),
        2
    );
}

pub async fn campaign_facts_walk_released_messages_by_run_and_seq(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let owner = Uuid::now_v7();
    let (c, run) = started(store, scope, owner).await;
    let run = snapshot(
        store,
        &run,
        &[
            person("+12025550101", 0, t0()),
            person("+12025550102", 1, t0()),
            person("+12025550103", 0, t0()),
            suppressed("+12025550104", "opted_out"),
        ],
    )
    .await;
    let all = recipients(store, &run).await;
    assert_eq!(
        release(store, &run, &all[..3], at(1)).await,
        ReleaseOutcome::Stored
    );
    let claimed = claim_all(store, at(2)).await;
    let first = claimed
        .iter()
        .find(|m| m.to == "+12025550101")
        .expect("claimed");
    store
        .record(&[accepted(first, "SM1")], &[], at(3))
        .await
        .unwrap();
    store
        .record(
            &[],
            &[report(None, "SM1", ReportedStatus::Delivered)],
            at(4),
        )
        .await
        .unwrap();

    let (page, next) = store.campaign_facts(scope, c.id, None, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(next, Some((run.id, all[1].seq)));
    let fact = &page[0];
    assert_eq!(
        (fact.run_id, fact.variant, fact.phone.as_str(), fact.status),
        (run.id, 0, "+12025550101", MessageStatus::Delivered)
    );
    assert_eq!(
        (fact.sent_at, fact.delivered_at, fact.created_at),
        (Some(at(3)), Some(at(4)), at(1))
    );
    assert_eq!(
        (fact.segments, fact.estimated_cost, fact.currency.as_str()),
        (1, 7_900, "USD")
    );
    assert_eq!(fact.provider.as_deref(), Some("simulator"));
    assert_eq!(fact.country, Some(Region::parse("US").unwrap()));
    assert_eq!(
        (page[1].variant, page[1].status),
        (1, MessageStatus::Sending)
    );
    assert_eq!(page[1].sent_at, None);

    let (rest, end) = store.campaign_facts(scope, c.id, next, 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].phone, "+12025550103");
    assert_eq!(end, None);

    let other = organization(store, "globex").await;
    assert_eq!(
        store.campaign_facts(other, c.id, None, 10).await.unwrap(),
        (Vec::new(), None)
    );
}

pub async fn replies_and_opt_outs_after_a_message_are_counted_per_variant(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let owner = Uuid::now_v7();
    let (c, run) = started(store, scope, owner).await;
    let run = snapshot(
        store,
        &run,
        &[
            person("+12025550101", 0, t0()),
            person("+12025550102", 0, t0()),
            person("+12025550103", 1, t0()),
            person("+12025550104", 1, t0()),
        ],
    )
    .await;
    let all = recipients(store, &run).await;
    assert_eq!(
        release(store, &run, &all, at(100)).await,
        ReleaseOutcome::Stored
    );
    assert!(
        store
            .campaign_responses(scope, c.id)
            .await
            .unwrap()
            .iter()
            .all(|(_, replies, opt_outs)| (*replies, *opt_outs) == (0, 0))
    );

    let inbound = |from: &str, received_at: Timestamp| InboundMessage {
        id: Uuid::now_v7(),
        org_id: scope.org_id,
        provider: "simulator".into(),
        provider_message_id: Uuid::now_v7().to_string(),
        from: from.to_owned(),
        to: "+12025550000".into(),
        body: "Thanks!".into(),
        received_at,
    };
    // A reply after the message counts; one from before it does not.
    assert!(
        store
            .insert_inbound(&inbound("+12025550101", at(150)))
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_inbound(&inbound("+12025550101", at(160)))
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_inbound(&inbound("+12025550102", at(50)))
            .await
            .unwrap()
    );
    // An opt-out after the message counts, one before it does not.
    assert!(
        store
            .opt_out(scope.org_id, "+12025550103", "keyword", None, at(200))
            .await
            .unwrap()
    );
    assert!(
        store
            .opt_out(scope.org_id, "+12025550102", "api", None, at(10))
            .await
            .unwrap()
    );
    // Another organization's replies are not this campaign's.
    let other = organization(store, "globex").await;
    let mut theirs = inbound("+12025550104", at(150));
    theirs.org_id = other.org_id;
    assert!(store.insert_inbound(&theirs).await.unwrap());

    assert_eq!(
        store.campaign_responses(scope, c.id).await.unwrap(),
        vec![(0, 1, 0), (1, 0, 1)]
    );
    assert!(
        store
            .campaign_responses(other, c.id)
            .await
            .unwrap()
            .is_empty()
    );
}
