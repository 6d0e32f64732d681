//! Conformance cases for credits: reservations that never overdraw and store nothing when
//! refused, consumption and release through every way a message ends, the spend limit, the
//! suppression list checked before queueing, allowed countries and usage.

use std::sync::Arc;

use herald_domain::money::Amount;
use herald_domain::phone::Region;
use herald_domain::status::{MessageStatus, ReportedStatus};
use jiff::SignedDuration;
use uuid::Uuid;

use super::{Subject, accepted, at, claim_one, get, message, organization, report, statuses, t0};
use crate::*;

fn grant(org_id: Uuid, credits: i64) -> CreditGrant {
    CreditGrant {
        id: Uuid::now_v7(),
        org_id,
        credits,
        reason: Some("test".into()),
        granted_by: "cli".into(),
        created_at: t0(),
    }
}

async fn granted(store: &dyn Store, org_id: Uuid, credits: i64) -> CreditAccount {
    match store
        .grant_credits(&grant(org_id, credits), None, &month_of(t0()))
        .await
        .unwrap()
    {
        Ok(GrantOutcome::Granted(account)) => account,
        other => panic!("expected a grant, got {other:?}"),
    }
}

async fn account(store: &dyn Store, org_id: Uuid) -> CreditAccount {
    store
        .credit_account(org_id, &month_of(t0()))
        .await
        .unwrap()
        .expect("organization exists")
}

async fn accept_one(store: &dyn Store, new: &NewMessage) -> Insertion {
    store
        .insert_message(new, None, new.created_at)
        .await
        .unwrap()
}

pub async fn an_organization_is_unmetered_until_credits_are_granted(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    assert_eq!(
        account(store, scope.org_id).await,
        CreditAccount::unmetered(scope.org_id)
    );
    let free = message(scope, "+12025550100", t0());
    assert!(matches!(
        accept_one(store, &free).await,
        Insertion::Created(_)
    ));

    let after = granted(store, scope.org_id, 3).await;
    assert!(after.metered);
    assert_eq!(
        (after.balance, after.reserved, after.available()),
        (3, 0, 3)
    );
    let ledger = store.list_credit_grants(scope.org_id, 10).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        (ledger[0].credits, ledger[0].granted_by.as_str()),
        (3, "cli")
    );

    // An idempotency key replays the first grant instead of granting twice.
    let record = IdempotencyRecord {
        key: "operator:grant-1".into(),
        request_hash: [7; 32],
        response: b"{\"first\":true}".to_vec(),
        expires_at: at(3600),
    };
    let first = grant(scope.org_id, 2);
    let granted_once = store
        .grant_credits(&first, Some(&record), &month_of(t0()))
        .await
        .unwrap();
    assert!(matches!(granted_once, Ok(GrantOutcome::Granted(ref a)) if a.balance == 5));
    let again = store
        .grant_credits(&grant(scope.org_id, 2), Some(&record), &month_of(t0()))
        .await
        .unwrap();
    assert_eq!(
        again,
        Ok(GrantOutcome::Replayed {
            grant_id: first.id,
            response: record.response.clone()
        })
    );
    let other_request = IdempotencyRecord {
        request_hash: [8; 32],
        ..record.clone()
    };
    assert_eq!(
        store
            .grant_credits(
                &grant(scope.org_id, 2),
                Some(&other_request),
                &month_of(t0())
            )
            .await
            .unwrap(),
        Ok(GrantOutcome::KeyReused)
    );
    assert_eq!(account(store, scope.org_id).await.balance, 5);

    assert!(store.set_metered(scope.org_id, false).await.unwrap());
    assert!(!account(store, scope.org_id).await.metered);
    assert_eq!(
        store
            .grant_credits(&grant(Uuid::now_v7(), 3), None, &month_of(t0()))
            .await
            .unwrap(),
        Err(GrantRefusal::NotFound)
    );
    assert_eq!(
        store
            .grant_credits(&grant(scope.org_id, -6), None, &month_of(t0()))
            .await
            .unwrap(),
        Err(GrantRefusal::WouldOverdraw { available: 5 })
    );
}

pub async fn a_send_that_would_overdraw_is_refused_and_stores_nothing(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    granted(store, scope.org_id, 3).await;
    let mut two = message(scope, "+12025550100", t0());
    two.segments = 2;
    assert!(matches!(
        accept_one(store, &two).await,
        Insertion::Created(_)
    ));
    let mut again = message(scope, "+12025550101", t0());
    again.segments = 2;
    let record = IdempotencyRecord {
        key: "k1".into(),
        request_hash: [1; 32],
        response: b"{}".to_vec(),
        expires_at: at(3600),
    };
    let refused = store
        .insert_message(&again, Some(&record), t0())
        .await
        .unwrap();
    assert_eq!(
        refused,
        Insertion::Refused(CreditRefusal::InsufficientCredits {
            needed: 2,
            available: 1
        })
    );
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 1);
    assert!(store.get_message(scope, again.id).await.unwrap().is_none());
    let state = account(store, scope.org_id).await;
    assert_eq!((state.balance, state.reserved), (3, 2));

    // The key was not kept: after a grant the same request goes through.
    granted(store, scope.org_id, 1).await;
    let retried = store
        .insert_message(&again, Some(&record), t0())
        .await
        .unwrap();
    assert!(matches!(retried, Insertion::Created(_)), "{retried:?}");

    // In a batch, a refused request leaves the others alone.
    let small = message(scope, "+12025550102", t0());
    let mut big = message(scope, "+12025550103", t0());
    big.segments = 5;
    let insertions = store
        .accept_messages(&[(big.clone(), None), (small.clone(), None)], t0())
        .await
        .unwrap();
    assert!(matches!(insertions[0], Insertion::Refused(_)));
    assert!(
        matches!(insertions[1], Insertion::Refused(_)),
        "no credit left"
    );
    let state = account(store, scope.org_id).await;
    assert_eq!((state.balance, state.reserved), (4, 4));

    // Test traffic only reaches the simulator and uses no credits.
    let test_scope = Scope {
        mode: herald_domain::message::Mode::Test,
        ..scope
    };
    let free = message(test_scope, "+12025550104", t0());
    assert!(matches!(
        accept_one(store, &free).await,
        Insertion::Created(_)
    ));
    assert_eq!(account(store, scope.org_id).await.reserved, 4);
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 3);

    // A bulk insert is all or nothing.
    let bulk = vec![small.clone(), big.clone()];
    let result = store.insert_messages(&bulk).await;
    assert!(matches!(result, Err(StoreError::Refused(_))), "{result:?}");
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 3);
}

pub async fn credits_are_consumed_on_sending_and_released_when_a_message_ends_unsent(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    granted(store, scope.org_id, 10).await;
    let mut sent = message(scope, "+12025550100", t0());
    sent.segments = 2;
    let cancelled = message(scope, "+12025550101", at(1));
    let failed = message(scope, "+12025550102", at(2));
    for new in [&sent, &cancelled, &failed] {
        assert!(matches!(
            accept_one(store, new).await,
            Insertion::Created(_)
        ));
    }
    let state = account(store, scope.org_id).await;
    assert_eq!((state.balance, state.reserved), (10, 4));
    assert_eq!(state.month_spend, Amount::from_micros(3 * 7_900));

    // Sent: consumed once, however often the result and reports arrive.
    let claim = claim_one(store, at(10)).await;
    assert_eq!(claim.id, sent.id);
    store
        .record_results(&[accepted(&claim, "SM1")], at(11))
        .await
        .unwrap();
    store
        .record_results(&[accepted(&claim, "SM1")], at(12))
        .await
        .unwrap();
    store
        .apply_reports(&[report(None, "SM1", ReportedStatus::Delivered)], at(13))
        .await
        .unwrap();
    store
        .apply_reports(&[report(None, "SM1", ReportedStatus::Delivered)], at(14))
        .await
        .unwrap();
    let state = account(store, scope.org_id).await;
    assert_eq!((state.balance, state.reserved), (8, 2));

    // Cancelled: released.
    store
        .cancel_message(scope, cancelled.id, at(15))
        .await
        .unwrap()
        .unwrap();
    let state = account(store, scope.org_id).await;
    assert_eq!((state.balance, state.reserved), (8, 1));
    assert_eq!(state.month_spend, Amount::from_micros(2 * 7_900));

    // A retry keeps the reservation; a permanent failure before any provider took it releases.
    let claim = claim_one(store, at(20)).await;
    assert_eq!(claim.id, failed.id);
    let retry = SendResult {
        id: claim.id,
        attempt: claim.attempt,
        provider: Some("simulator".into()),
        outcome: SendOutcome::Retry {
            retry_at: at(30),
            code: "busy".into(),
            message: "try later".into(),
        },
    };
    store.record_results(&[retry], at(21)).await.unwrap();
    assert_eq!(account(store, scope.org_id).await.reserved, 1);
    let claim = claim_one(store, at(30)).await;
    let fail = SendResult {
        id: claim.id,
        attempt: claim.attempt,
        provider: Some("simulator".into()),
        outcome: SendOutcome::Failed {
            code: "invalid".into(),
            message: "refused".into(),
        },
    };
    store
        .record_results(std::slice::from_ref(&fail), at(31))
        .await
        .unwrap();
    store.record_results(&[fail], at(32)).await.unwrap();
    let state = account(store, scope.org_id).await;
    assert_eq!((state.balance, state.reserved), (8, 0));
}

pub async fn a_message_suppressed_at_dispatch_releases_its_credits(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    granted(store, scope.org_id, 2).await;
    let new = message(scope, "+12025550100", t0());
    accept_one(store, &new).await;
    assert_eq!(account(store, scope.org_id).await.reserved, 1);
    let claim = claim_one(store, at(1)).await;
    let suppressed = SendResult {
        id: claim.id,
        attempt: claim.attempt,
        provider: None,
        outcome: SendOutcome::Suppressed {
            code: OPTED_OUT.into(),
            message: "the recipient opted out (api)".into(),
        },
    };
    store.record_results(&[suppressed], at(2)).await.unwrap();
    let state = account(store, scope.org_id).await;
    assert_eq!((state.balance, state.reserved), (2, 0));
}

pub async fn a_message_to_an_opted_out_number_is_stored_suppressed_and_never_queued(
    subject: &Subject,
) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "other").await;
    granted(store, scope.org_id, 5).await;
    store
        .opt_out(scope.org_id, "+12025550100", "api", None, t0())
        .await
        .unwrap();
    let blocked = message(scope, "+12025550100", at(1));
    let fine = message(scope, "+12025550101", at(1));
    let elsewhere = message(other, "+12025550100", at(1));
    let insertions = store
        .accept_messages(
            &[
                (blocked.clone(), None),
                (fine.clone(), None),
                (elsewhere.clone(), None),
            ],
            at(1),
        )
        .await
        .unwrap();
    let Insertion::Created(answered) = &insertions[0] else {
        panic!("{insertions:?}");
    };
    assert_eq!(answered.status, MessageStatus::Suppressed);
    assert_eq!(answered.error_code.as_deref(), Some(OPTED_OUT));
    let stored = get(store, scope, blocked.id).await;
    assert_eq!(**answered, stored, "the answer is what was stored");
    assert_eq!(
        statuses(&stored),
        vec![MessageStatus::Queued, MessageStatus::Suppressed]
    );
    assert_eq!(
        get(store, scope, fine.id).await.status,
        MessageStatus::Queued
    );
    assert_eq!(
        get(store, other, elsewhere.id).await.status,
        MessageStatus::Queued,
        "another organization's list does not apply"
    );
    // Only the message that was queued reserved credits.
    assert_eq!(account(store, scope.org_id).await.reserved, 1);

    // The bulk path checks the list too.
    let bulk = message(scope, "+12025550100", at(2));
    store
        .insert_messages(std::slice::from_ref(&bulk))
        .await
        .unwrap();
    assert_eq!(
        get(store, scope, bulk.id).await.status,
        MessageStatus::Suppressed
    );
    let claimed = store
        .claim_due(at(3), at(60), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect::<Vec<_>>();
    assert!(!claimed.contains(&blocked.id) && !claimed.contains(&bulk.id));
    assert_eq!(account(store, scope.org_id).await.reserved, 1);
}

pub async fn the_spend_limit_refuses_what_would_pass_it(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    granted(store, scope.org_id, 100).await;
    assert!(
        store
            .set_spend_limit(scope.org_id, Some(Amount::from_micros(20_000)))
            .await
            .unwrap()
    );
    assert!(matches!(
        accept_one(store, &message(scope, "+12025550100", t0())).await,
        Insertion::Created(_)
    ));
    assert!(matches!(
        accept_one(store, &message(scope, "+12025550101", t0())).await,
        Insertion::Created(_)
    ));
    let refused = accept_one(store, &message(scope, "+12025550102", t0())).await;
    assert_eq!(
        refused,
        Insertion::Refused(CreditRefusal::SpendLimitReached {
            needed: Amount::from_micros(7_900),
            spent: Amount::from_micros(15_800),
            limit: Amount::from_micros(20_000),
        })
    );
    let state = account(store, scope.org_id).await;
    assert_eq!(state.spend_limit, Some(Amount::from_micros(20_000)));
    assert_eq!(state.month_spend, Amount::from_micros(15_800));
    assert!(store.set_spend_limit(scope.org_id, None).await.unwrap());
    assert!(matches!(
        accept_one(store, &message(scope, "+12025550102", t0())).await,
        Insertion::Created(_)
    ));
}

pub async fn the_spend_limit_counts_actual_costs_once_known(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    granted(store, scope.org_id, 100).await;
    assert!(
        store
            .set_spend_limit(scope.org_id, Some(Amount::from_micros(30_000)))
            .await
            .unwrap()
    );
    let first = message(scope, "+12025550100", t0());
    assert!(matches!(
        accept_one(store, &first).await,
        Insertion::Created(_)
    ));
    assert_eq!(
        account(store, scope.org_id).await.month_spend,
        Amount::from_micros(7_900)
    );

    // The provider charged more than estimated: the actual cost counts from then on.
    let claim = claim_one(store, at(1)).await;
    let mut sent = accepted(&claim, "SM1");
    sent.outcome = SendOutcome::Accepted {
        provider_message_id: "SM1".into(),
        cost: Some(Amount::from_micros(20_000)),
    };
    store.record_results(&[sent.clone()], at(2)).await.unwrap();
    store.record_results(&[sent], at(3)).await.unwrap();
    assert_eq!(
        account(store, scope.org_id).await.month_spend,
        Amount::from_micros(20_000),
        "counted once, however often the result arrives"
    );
    // A later, different figure (a report with the final price) replaces it.
    let mut priced = report(None, "SM1", ReportedStatus::Delivered);
    priced.cost = Some(Amount::from_micros(18_000));
    store.apply_reports(&[priced], at(4)).await.unwrap();
    assert_eq!(
        account(store, scope.org_id).await.month_spend,
        Amount::from_micros(18_000)
    );

    // 18,000 spent: one more estimate of 7,900 fits under 30,000, a second does not.
    assert!(matches!(
        accept_one(store, &message(scope, "+12025550101", at(5))).await,
        Insertion::Created(_)
    ));
    let refused = accept_one(store, &message(scope, "+12025550102", at(6))).await;
    assert_eq!(
        refused,
        Insertion::Refused(CreditRefusal::SpendLimitReached {
            needed: Amount::from_micros(7_900),
            spent: Amount::from_micros(25_900),
            limit: Amount::from_micros(30_000),
        })
    );

    // An unmetered organization keeps no spend, whatever its costs.
    let free = organization(store, "free").await;
    let unmetered = message(free, "+12025550103", at(7));
    assert!(matches!(
        accept_one(store, &unmetered).await,
        Insertion::Created(_)
    ));
    let claimed = store
        .claim_due(at(8), at(38), 10)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == unmetered.id)
        .expect("claimed");
    let mut sent = accepted(&claimed, "SM2");
    sent.outcome = SendOutcome::Accepted {
        provider_message_id: "SM2".into(),
        cost: Some(Amount::from_micros(20_000)),
    };
    store.record_results(&[sent], at(9)).await.unwrap();
    assert_eq!(
        account(store, free.org_id).await.month_spend,
        Amount::from_micros(0)
    );
}

pub async fn concurrent_sends_against_a_small_balance_never_overdraw(subject: &Subject) {
    let store = subject.store.clone();
    let scope = organization(store.as_ref(), "acme").await;
    granted(store.as_ref(), scope.org_id, 7).await;
    let second = subject.reconnect().await;
    let mut tasks = Vec::new();
    for i in 0..24u32 {
        let store: Arc<dyn Store> = if i % 2 == 0 {
            store.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut new = message(scope, &format!("+1202555{:04}", 100 + i), t0());
            new.segments = 2;
            store.insert_message(&new, None, t0()).await.unwrap()
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Insertion::Created(_) => created += 1,
            Insertion::Refused(CreditRefusal::InsufficientCredits { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 3, "floor(7 / 2) sends fit");
    let state = account(store.as_ref(), scope.org_id).await;
    assert_eq!((state.balance, state.reserved), (7, 6));
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 3);
}

pub async fn allowed_countries_are_kept_per_organization(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "other").await;
    assert_eq!(store.allowed_countries(scope.org_id).await.unwrap(), None);
    let countries = [Region::parse("US").unwrap(), Region::parse("CA").unwrap()];
    assert!(
        store
            .set_allowed_countries(scope.org_id, &countries)
            .await
            .unwrap()
    );
    let mut sorted = countries.to_vec();
    sorted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(
        store.allowed_countries(scope.org_id).await.unwrap(),
        Some(sorted)
    );
    assert_eq!(store.allowed_countries(other.org_id).await.unwrap(), None);
    assert!(
        !store
            .set_allowed_countries(Uuid::now_v7(), &countries)
            .await
            .unwrap()
    );
}

pub async fn usage_sums_a_months_messages_by_country_and_type(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "other").await;
    let mut two = message(scope, "+12025550100", t0());
    two.segments = 2;
    two.estimated_cost = Amount::from_micros(15_800);
    let one = message(scope, "+12025550101", at(5));
    let mut gb = message(scope, "+447911123456", at(6));
    gb.country = Some(Region::parse("GB").unwrap());
    let next_month = message(
        scope,
        "+12025550102",
        t0() + SignedDuration::from_hours(24 * 40),
    );
    for new in [
        &two,
        &one,
        &gb,
        &next_month,
        &message(other, "+12025550100", t0()),
    ] {
        accept_one(store, new).await;
    }
    let claim = claim_one(store, at(10)).await;
    let mut result = accepted(&claim, "SM1");
    result.outcome = SendOutcome::Accepted {
        provider_message_id: "SM1".into(),
        cost: Some(Amount::from_micros(8_000)),
    };
    store.record_results(&[result], at(11)).await.unwrap();

    let rows = store
        .usage(scope, t0(), t0() + SignedDuration::from_hours(24 * 31))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let us = rows
        .iter()
        .find(|r| r.country.map(|c| c.as_str().to_owned()) == Some("US".into()))
        .unwrap();
    assert_eq!((us.messages, us.segments, us.sent), (2, 3, 1));
    assert_eq!(us.estimated_cost, Amount::from_micros(23_700));
    assert_eq!(us.actual_cost, Amount::from_micros(8_000));
    let gb_row = rows
        .iter()
        .find(|r| r.country.map(|c| c.as_str().to_owned()) == Some("GB".into()))
        .unwrap();
    assert_eq!((gb_row.messages, gb_row.segments, gb_row.sent), (1, 1, 0));
}
