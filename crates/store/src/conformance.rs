//! The conformance suite: what every [`Store`] backend must do, written once and run against
//! each backend by [`conformance_tests!`](crate::conformance_tests).
//!
//! Each case gets a fresh, empty database from the backend's test harness. Times are fixed
//! instants, not the clock, so the cases are exact.

use std::sync::Arc;

use futures::future::BoxFuture;
use herald_domain::encoding::Encoding;
use herald_domain::message::{MessageType, Mode};
use herald_domain::money::{Amount, Currency};
use herald_domain::phone::Region;
use herald_domain::status::{MessageStatus, ReportedStatus};
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use crate::*;

mod accounts;
mod audience;
mod automation;
mod broadcasts;
mod campaigns;
mod contacts;
mod credits;
mod segments;
mod templates;
pub use accounts::*;
pub use audience::*;
pub use automation::*;
pub use broadcasts::*;
pub use campaigns::*;
pub use contacts::*;
pub use credits::*;
pub use segments::*;
pub use templates::*;

/// A fresh database for one case.
pub struct Subject {
    pub store: Arc<dyn Store>,
    reconnect: Box<dyn Fn() -> BoxFuture<'static, Arc<dyn Store>> + Send + Sync>,
    /// Whatever keeps the database alive (e.g. a temporary directory), dropped with the subject.
    guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Subject {
    /// `reconnect` opens another, independent handle on the same database, as a second
    /// `herald serve` process would.
    pub fn new(
        store: Arc<dyn Store>,
        reconnect: impl Fn() -> BoxFuture<'static, Arc<dyn Store>> + Send + Sync + 'static,
    ) -> Subject {
        Subject {
            store,
            reconnect: Box::new(reconnect),
            guard: None,
        }
    }

    /// Keep `guard` alive as long as the subject.
    pub fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> Subject {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Take back what [`Subject::with_guard`] kept, e.g. to clean up asynchronously.
    pub fn into_guard(self) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        self.guard
    }

    pub async fn reconnect(&self) -> Arc<dyn Store> {
        (self.reconnect)().await
    }
}

/// Generate one `#[tokio::test]` per conformance case. `$subject` is an async fn returning
/// `Option<Subject>` (`None` skips the case, e.g. when PostgreSQL is unreachable) and
/// `$cleanup` an async fn taking the `Subject` back.
#[macro_export]
macro_rules! conformance_tests {
    ($subject:path, $cleanup:path) => {
        $crate::conformance_tests!(@cases $subject, $cleanup;
            migrations_can_run_twice,
            a_bootstrap_creates_one_organization_only,
            api_keys_are_found_by_hash_and_can_be_revoked,
            a_key_for_a_missing_organization_is_refused,
            an_inserted_message_reads_back_with_its_first_status,
            a_future_message_is_scheduled_until_released,
            messages_are_invisible_to_other_organizations_and_modes,
            listing_walks_every_message_newest_first_exactly_once,
            listing_filters_by_status_recipient_and_creation_time,
            an_idempotency_key_replays_the_original_response,
            purging_forgets_expired_idempotency_keys,
            claims_take_due_messages_by_priority_and_count_attempts,
            concurrent_claimers_never_share_a_message,
            an_accepted_result_marks_the_message_sent,
            a_transient_failure_requeues_the_message_until_its_retry_time,
            a_permanent_failure_fails_the_message_with_the_reason,
            a_stale_result_does_not_override_a_newer_claim,
            reports_move_messages_forward_only,
            a_report_may_overtake_the_send_result,
            reports_find_messages_by_provider_id,
            cancel_works_only_before_sending,
            expired_leases_become_unknown_and_are_reconciled,
            an_unclaimed_message_returns_to_the_queue_without_using_an_attempt,
            an_undecided_settlement_waits_until_its_retry_time,
            next_scheduled_at_is_the_earliest_send_time,
            bulk_inserted_messages_are_stored_like_single_ones,
            status_counts_cover_every_message,
            results_and_reports_recorded_together_apply_in_order,
            a_batch_of_accepted_messages_honours_its_keys_in_order,
            a_retry_failed_over_is_named_by_the_provider_that_took_it,
            token_buckets_refill_at_their_rate_and_concurrent_takers_share_them,
            the_suppression_list_is_kept_per_organization,
            keyword_settings_are_kept_per_organization,
            provider_accounts_read_back_only_in_their_organization,
            provider_account_names_are_unique_per_organization,
            updates_keep_sealed_credentials_unless_replaced_and_refuse_stale_reads,
            listing_provider_accounts_walks_every_page_exactly_once,
            routes_name_only_the_organizations_own_accounts,
            an_account_named_by_a_route_cannot_be_deleted,
            an_idempotency_key_replays_an_account_creation,
            inbound_messages_are_stored_once_per_provider_id_and_only_for_their_organization,
            contacts_are_one_per_number_and_only_their_organizations,
            an_idempotency_key_replays_a_contact_creation,
            contact_updates_refuse_stale_reads_and_taken_numbers,
            contacts_list_by_filter_and_page_exactly_once,
            imports_create_new_numbers_and_merge_known_ones,
            erasing_a_contact_leaves_its_number_nowhere_but_keeps_its_opt_out,
            lead_statuses_start_with_the_defaults_and_can_be_replaced,
            templates_read_back_only_in_their_organization,
            template_names_are_unique_per_organization,
            template_updates_refuse_stale_reads_and_keep_usage,
            template_use_is_counted_and_the_last_use_only_moves_forward,
            listing_templates_filters_and_walks_every_page_exactly_once,
            an_idempotency_key_replays_a_template_creation,
            lists_are_named_uniquely_and_kept_per_organization,
            an_idempotency_key_replays_a_list_creation,
            list_members_change_in_bulk_and_only_with_the_organizations_contacts,
            segments_are_named_uniquely_and_kept_per_organization,
            list_and_segment_updates_refuse_stale_reads,
            segment_rules_see_only_the_organizations_contacts_lists_and_history,
            segment_rules_select_the_same_contacts_in_sql_as_in_memory,
            an_organization_is_unmetered_until_credits_are_granted,
            a_send_that_would_overdraw_is_refused_and_stores_nothing,
            credits_are_consumed_on_sending_and_released_when_a_message_ends_unsent,
            a_message_suppressed_at_dispatch_releases_its_credits,
            a_message_to_an_opted_out_number_is_stored_suppressed_and_never_queued,
            the_spend_limit_refuses_what_would_pass_it,
            the_spend_limit_counts_actual_costs_once_known,
            concurrent_sends_against_a_small_balance_never_overdraw,
            allowed_countries_are_kept_per_organization,
            usage_sums_a_months_messages_by_country_and_type,
            broadcasts_are_stored_with_their_messages_and_only_for_their_organization,
            listing_broadcasts_walks_every_page_newest_first,
            an_idempotency_key_replays_a_broadcast_creation,
            a_broadcast_batch_that_would_overdraw_stores_nothing,
            broadcast_recipients_are_recorded_with_their_batch,
            only_the_resolver_holding_a_broadcast_writes_its_batches,
            canceling_a_broadcast_cancels_its_unsent_messages_and_stops_resolution,
            campaigns_are_stored_and_listed_only_in_their_scope,
            an_idempotency_key_replays_a_campaign_creation,
            campaign_updates_need_an_editable_campaign_unchanged_since_it_was_read,
            every_transition_is_made_only_from_the_statuses_it_allows,
            only_campaigns_not_under_way_can_be_deleted,
            a_run_is_taken_by_one_owner_until_its_lease_runs_out,
            the_snapshot_keeps_one_recipient_per_number_in_due_order,
            a_release_stores_messages_and_marks_recipients_together_or_not_at_all,
            a_release_the_credits_do_not_cover_stores_nothing,
            pausing_holds_queued_messages_and_resuming_releases_them,
            canceling_cancels_pending_recipients_and_unsent_messages,
            a_run_finishes_only_once_everything_is_settled,
            campaign_facts_walk_released_messages_by_run_and_seq,
            replies_and_opt_outs_after_a_message_are_counted_per_variant,
            drips_are_stored_listed_and_changed_only_in_their_scope,
            an_idempotency_key_replays_a_drip_or_trigger_creation,
            a_number_is_enrolled_in_a_drip_once,
            only_due_active_enrolments_of_active_drips_are_handed_out,
            a_step_is_taken_once_with_its_message,
            concurrent_takers_of_a_step_send_it_once,
            a_step_the_credits_do_not_cover_changes_nothing,
            a_batch_of_steps_is_taken_together,
            drip_stats_count_enrolments_by_state_and_steps_by_message,
            replies_are_found_after_a_time_and_only_the_organizations,
            triggers_are_stored_listed_and_changed_only_in_their_scope,
            active_triggers_are_found_by_kind_and_event,
            trigger_candidates_are_new_matching_contacts_in_the_window,
            a_trigger_fires_once_per_key,
            a_firing_the_credits_do_not_cover_stores_nothing,
            concurrent_firings_with_one_key_fire_once,
        );
    };
    (@cases $subject:path, $cleanup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(subject) = $subject().await else { return };
                $crate::conformance::$case(&subject).await;
                $cleanup(subject).await;
            }
        )*
    };
}

// --- fixtures ------------------------------------------------------------------------------

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn at(seconds: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(seconds)
}

async fn organization(store: &dyn Store, name: &str) -> Scope {
    let org = Organization {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        default_region: Region::parse("US").unwrap(),
        created_at: t0(),
    };
    store.create_organization(&org, &[]).await.unwrap();
    Scope {
        org_id: org.id,
        mode: Mode::Live,
    }
}

fn message(scope: Scope, to: &str, created_at: Timestamp) -> NewMessage {
    NewMessage {
        id: Uuid::now_v7(),
        scope,
        api_key_id: None,
        to: to.to_owned(),
        country: Some(Region::parse("US").unwrap()),
        sender: None,
        body: "Hello".to_owned(),
        encoding: Encoding::Gsm7,
        segments: 1,
        kind: MessageType::Transactional,
        priority: 10,
        estimated_cost: Amount::from_micros(7_900),
        currency: Currency::USD,
        send_at: None,
        max_attempts: 3,
        created_at,
        broadcast_id: None,
        campaign_run_id: None,
    }
}

async fn insert(store: &dyn Store, new: &NewMessage) -> Message {
    match store
        .insert_message(new, None, new.created_at)
        .await
        .unwrap()
    {
        Insertion::Created(message) => *message,
        other => panic!("expected a new message, got {other:?}"),
    }
}

async fn get(store: &dyn Store, scope: Scope, id: Uuid) -> Message {
    store
        .get_message(scope, id)
        .await
        .unwrap()
        .expect("message exists")
}

fn statuses(message: &Message) -> Vec<MessageStatus> {
    message.history.iter().map(|change| change.status).collect()
}

fn key(org_id: Uuid, mode: Mode, secret: u8) -> NewApiKey {
    NewApiKey {
        id: Uuid::now_v7(),
        org_id,
        mode,
        prefix: format!("{}abcd", mode.key_prefix()),
        hash: [secret; 32],
        name: Some("ci".into()),
        created_at: t0(),
    }
}

fn accepted(claim: &Claimed, provider_message_id: &str) -> SendResult {
    SendResult {
        id: claim.id,
        attempt: claim.attempt,
        provider: Some("simulator".into()),
        outcome: SendOutcome::Accepted {
            provider_message_id: provider_message_id.into(),
            cost: None,
        },
    }
}

fn report(id: Option<Uuid>, provider_message_id: &str, status: ReportedStatus) -> ProviderReport {
    ProviderReport {
        provider: "simulator".into(),
        message_id: id,
        provider_message_id: provider_message_id.into(),
        status,
        error_code: None,
        error_message: None,
        cost: None,
    }
}

async fn claim_one(store: &dyn Store, now: Timestamp) -> Claimed {
    let mut claimed = store
        .claim_due(now, now + SignedDuration::from_secs(30), 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "expected one claimable message");
    claimed.remove(0)
}

// --- cases ---------------------------------------------------------------------------------

pub async fn migrations_can_run_twice(subject: &Subject) {
    subject.store.migrate().await.unwrap();
    subject.store.migrate().await.unwrap();
    subject.store.ping().await.unwrap();
}

pub async fn a_bootstrap_creates_one_organization_only(subject: &Subject) {
    let other = subject.reconnect().await;
    let make = |name: &str| Organization {
        id: Uuid::now_v7(),
        name: name.into(),
        default_region: Region::parse("GB").unwrap(),
        created_at: t0(),
    };
    let (a, b) = (make("first"), make("second"));
    let (key_a, key_b) = (key(a.id, Mode::Live, 1), key(b.id, Mode::Live, 2));
    let (ra, rb) = tokio::join!(
        subject
            .store
            .bootstrap_organization(&a, std::slice::from_ref(&key_a)),
        other.bootstrap_organization(&b, std::slice::from_ref(&key_b)),
    );
    assert_eq!(
        ra.unwrap() as u8 + rb.unwrap() as u8,
        1,
        "exactly one bootstrap wins"
    );
    let again = make("third");
    assert!(
        !subject
            .store
            .bootstrap_organization(&again, &[])
            .await
            .unwrap()
    );
    let winner = if subject
        .store
        .get_organization(a.id)
        .await
        .unwrap()
        .is_some()
    {
        a
    } else {
        b
    };
    let stored = subject
        .store
        .get_organization(winner.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, winner);
    assert_eq!(
        subject.store.list_api_keys(winner.id).await.unwrap().len(),
        1
    );
}

pub async fn api_keys_are_found_by_hash_and_can_be_revoked(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let live = store
        .create_api_key(&key(scope.org_id, Mode::Live, 7))
        .await
        .unwrap();
    let test = store
        .create_api_key(&key(scope.org_id, Mode::Test, 8))
        .await
        .unwrap();

    let (found, org) = store.find_api_key(&[7; 32]).await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.mode, org.id),
        (live.id, Mode::Live, scope.org_id)
    );
    assert_eq!(
        store.find_api_key(&[8; 32]).await.unwrap().unwrap().0.mode,
        Mode::Test
    );
    assert!(store.find_api_key(&[9; 32]).await.unwrap().is_none());

    store.touch_api_key(live.id, at(5)).await.unwrap();
    let revoked = store
        .revoke_api_key(live.id, at(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at(10)));
    assert_eq!(revoked.last_used_at, Some(at(5)));
    let again = store
        .revoke_api_key(live.id, at(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.revoked_at,
        Some(at(10)),
        "the first revocation time stands"
    );
    let (found, _) = store.find_api_key(&[7; 32]).await.unwrap().unwrap();
    assert_eq!(found.revoked_at, Some(at(10)));
    assert!(
        store
            .revoke_api_key(Uuid::now_v7(), at(10))
            .await
            .unwrap()
            .is_none()
    );

    let keys = store.list_api_keys(scope.org_id).await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.id).collect::<Vec<_>>(),
        vec![live.id, test.id]
    );
}

pub async fn a_key_for_a_missing_organization_is_refused(subject: &Subject) {
    let result = subject
        .store
        .create_api_key(&key(Uuid::now_v7(), Mode::Live, 3))
        .await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
}

pub async fn an_inserted_message_reads_back_with_its_first_status(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(1));
    let created = insert(store, &new).await;
    let read = get(store, scope, new.id).await;
    assert_eq!(created, read);
    assert_eq!(
        read,
        new.initial_record(),
        "the store records exactly what was asked"
    );
    assert_eq!(read.to, "+14155550100");
    assert_eq!(read.status, MessageStatus::Queued);
    assert_eq!(
        (read.encoding, read.segments, read.kind),
        (Encoding::Gsm7, 1, MessageType::Transactional)
    );
    assert_eq!(read.estimated_cost, Amount::from_micros(7_900));
    assert_eq!((read.attempts, read.max_attempts), (0, 3));
    assert_eq!((read.created_at, read.updated_at), (at(1), at(1)));
    assert_eq!(read.history.len(), 1);
    assert_eq!(
        (
            read.history[0].seq,
            read.history[0].status,
            read.history[0].at
        ),
        (1, MessageStatus::Queued, at(1))
    );
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 1);
}

pub async fn a_future_message_is_scheduled_until_released(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let mut new = message(scope, "+14155550100", at(0));
    new.send_at = Some(at(3600));
    assert_eq!(insert(store, &new).await.status, MessageStatus::Scheduled);

    assert_eq!(store.release_due(at(3599), 100).await.unwrap(), 0);
    assert!(
        store
            .claim_due(at(3599), at(3630), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.release_due(at(3600), 100).await.unwrap(), 1);
    let released = get(store, scope, new.id).await;
    assert_eq!(
        statuses(&released),
        vec![MessageStatus::Scheduled, MessageStatus::Queued]
    );
    assert_eq!(released.history[1].at, at(3600));
    assert_eq!(claim_one(store, at(3600)).await.id, new.id);
}

pub async fn messages_are_invisible_to_other_organizations_and_modes(subject: &Subject) {
    let store = subject.store.as_ref();
    let a = organization(store, "a").await;
    let b = organization(store, "b").await;
    let a_test = Scope {
        mode: Mode::Test,
        ..a
    };
    let new = message(a, "+14155550100", at(1));
    insert(store, &new).await;

    assert!(store.get_message(b, new.id).await.unwrap().is_none());
    assert!(store.get_message(a_test, new.id).await.unwrap().is_none());
    let none = MessageFilter::default();
    assert!(
        store
            .list_messages(b, &none, None, 100)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        store
            .list_messages(a_test, &none, None, 100)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        store.cancel_message(b, new.id, at(2)).await.unwrap(),
        Err(CancelRefusal::NotFound)
    );
    assert_eq!(get(store, a, new.id).await.status, MessageStatus::Queued);
}

pub async fn listing_walks_every_message_newest_first_exactly_once(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let mut ids = Vec::new();
    for i in 0..23 {
        ids.push(
            insert(store, &message(scope, "+14155550100", at(i)))
                .await
                .id,
        );
    }
    ids.reverse();

    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_messages(scope, &MessageFilter::default(), after, 5)
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.len() <= 5);
        seen.extend(page.items.iter().map(|m| m.id));
        assert!(
            page.items.iter().all(|m| m.history.len() == 1),
            "history comes with the list"
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, 5);

    let exact = store
        .list_messages(scope, &MessageFilter::default(), None, 23)
        .await
        .unwrap();
    assert_eq!(
        (exact.items.len(), exact.next),
        (23, None),
        "a full last page has no next"
    );
}

pub async fn listing_filters_by_status_recipient_and_creation_time(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let first = insert(store, &message(scope, "+14155550100", at(10))).await;
    let second = insert(store, &message(scope, "+14155550101", at(20))).await;
    let third = insert(store, &message(scope, "+14155550100", at(30))).await;
    store
        .cancel_message(scope, second.id, at(21))
        .await
        .unwrap()
        .unwrap();

    let ids = |page: Page<Message>| page.items.into_iter().map(|m| m.id).collect::<Vec<_>>();
    let list = |filter: MessageFilter| async move {
        ids(store
            .list_messages(scope, &filter, None, 100)
            .await
            .unwrap())
    };
    let by_status = MessageFilter {
        status: Some(MessageStatus::Canceled),
        ..MessageFilter::default()
    };
    assert_eq!(list(by_status).await, vec![second.id]);
    let by_to = MessageFilter {
        to: Some("+14155550100".into()),
        ..MessageFilter::default()
    };
    assert_eq!(list(by_to).await, vec![third.id, first.id]);
    let window = MessageFilter {
        created_after: Some(at(10)),
        created_before: Some(at(30)),
        ..MessageFilter::default()
    };
    assert_eq!(
        list(window).await,
        vec![second.id],
        "both bounds are exclusive"
    );
}

pub async fn an_idempotency_key_replays_the_original_response(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "other").await;
    let record = IdempotencyRecord {
        key: "order-42".into(),
        request_hash: [1; 32],
        response: b"{\"original\":true}".to_vec(),
        expires_at: at(86_400),
    };
    let first = message(scope, "+14155550100", at(0));
    assert!(matches!(
        store
            .insert_message(&first, Some(&record), at(0))
            .await
            .unwrap(),
        Insertion::Created(_)
    ));

    let retry = message(scope, "+14155550100", at(5));
    assert_eq!(
        store
            .insert_message(&retry, Some(&record), at(5))
            .await
            .unwrap(),
        Insertion::Replayed {
            message_id: first.id,
            response: record.response.clone()
        }
    );
    let changed = IdempotencyRecord {
        request_hash: [2; 32],
        ..record.clone()
    };
    assert_eq!(
        store
            .insert_message(&retry, Some(&changed), at(6))
            .await
            .unwrap(),
        Insertion::KeyReused
    );
    assert_eq!(
        store.count_messages(scope.org_id).await.unwrap(),
        1,
        "replays store nothing"
    );

    let elsewhere = message(other, "+14155550100", at(7));
    assert!(
        matches!(
            store
                .insert_message(&elsewhere, Some(&record), at(7))
                .await
                .unwrap(),
            Insertion::Created(_)
        ),
        "keys belong to one organization"
    );

    let later = message(scope, "+14155550100", at(86_400));
    assert!(
        matches!(
            store
                .insert_message(&later, Some(&changed), at(86_400))
                .await
                .unwrap(),
            Insertion::Created(_)
        ),
        "an expired key may be used again"
    );
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 2);
}

pub async fn purging_forgets_expired_idempotency_keys(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    for (i, expires) in [(0u8, 100), (1, 200)] {
        let record = IdempotencyRecord {
            key: format!("k{i}"),
            request_hash: [i; 32],
            response: Vec::new(),
            expires_at: at(expires),
        };
        store
            .insert_message(&message(scope, "+14155550100", at(0)), Some(&record), at(0))
            .await
            .unwrap();
    }
    assert_eq!(store.purge_idempotency_keys(at(150)).await.unwrap(), 1);
    assert_eq!(store.purge_idempotency_keys(at(150)).await.unwrap(), 0);
    assert_eq!(store.purge_idempotency_keys(at(200)).await.unwrap(), 1);
}

pub async fn claims_take_due_messages_by_priority_and_count_attempts(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let mut promo = message(scope, "+14155550100", at(0));
    promo.kind = MessageType::Promotional;
    promo.priority = 0;
    insert(store, &promo).await;
    let otp = message(scope, "+14155550101", at(1));
    insert(store, &otp).await;

    let first = claim_one(store, at(2)).await;
    assert_eq!(first.id, otp.id, "higher priority first, even though newer");
    assert_eq!(
        (first.attempt, first.max_attempts, first.lease_expires_at),
        (1, 3, at(32))
    );
    assert_eq!(
        (first.to.as_str(), first.body.as_str(), first.segments),
        ("+14155550101", "Hello", 1)
    );
    let second = claim_one(store, at(2)).await;
    assert_eq!(second.id, promo.id);
    assert!(store.claim_due(at(2), at(32), 10).await.unwrap().is_empty());

    let sending = get(store, scope, otp.id).await;
    assert_eq!(sending.status, MessageStatus::Sending);
    assert_eq!(sending.attempts, 1);
    assert_eq!(
        statuses(&sending),
        vec![MessageStatus::Queued, MessageStatus::Sending]
    );
}

pub async fn concurrent_claimers_never_share_a_message(subject: &Subject) {
    let store = subject.store.clone();
    let scope = organization(store.as_ref(), "acme").await;
    for i in 0..200 {
        insert(store.as_ref(), &message(scope, "+14155550100", at(i))).await;
    }
    let other = subject.reconnect().await;
    let claimers = [store.clone(), other.clone(), store.clone(), other];
    let tasks = claimers.into_iter().map(|store| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store.claim_due(at(300), at(330), 7).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|c| c.id));
            }
        })
    });
    let mut all: Vec<Uuid> = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (total, all.len()),
        (200, 200),
        "every message claimed exactly once"
    );
}

pub async fn an_accepted_result_marks_the_message_sent(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    let claim = claim_one(store, at(1)).await;
    let mut result = accepted(&claim, "SM123");
    if let SendOutcome::Accepted { cost, .. } = &mut result.outcome {
        *cost = Some(Amount::from_micros(8_300));
    }
    store.record_results(&[result], at(2)).await.unwrap();

    let sent = get(store, scope, new.id).await;
    assert_eq!(sent.status, MessageStatus::Sent);
    assert_eq!(sent.provider.as_deref(), Some("simulator"));
    assert_eq!(sent.provider_message_id.as_deref(), Some("SM123"));
    assert_eq!(sent.actual_cost, Some(Amount::from_micros(8_300)));
    assert_eq!(
        statuses(&sent),
        vec![
            MessageStatus::Queued,
            MessageStatus::Sending,
            MessageStatus::Sent
        ]
    );
    assert_eq!(
        sent.history.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(sent.history[2].at, at(2));
    assert_eq!(sent.updated_at, at(2));
}

pub async fn a_transient_failure_requeues_the_message_until_its_retry_time(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    let claim = claim_one(store, at(1)).await;
    let retry = SendResult {
        id: claim.id,
        attempt: 1,
        provider: Some("simulator".into()),
        outcome: SendOutcome::Retry {
            retry_at: at(60),
            code: "503".into(),
            message: "unavailable".into(),
        },
    };
    store.record_results(&[retry], at(2)).await.unwrap();

    let queued = get(store, scope, new.id).await;
    assert_eq!(queued.status, MessageStatus::Queued);
    assert_eq!(queued.error_code.as_deref(), Some("503"));
    assert_eq!(queued.history[2].error_code.as_deref(), Some("503"));
    assert!(
        store
            .claim_due(at(59), at(89), 10)
            .await
            .unwrap()
            .is_empty(),
        "not before its retry time"
    );
    let again = claim_one(store, at(60)).await;
    assert_eq!(again.attempt, 2);
    store
        .record_results(&[accepted(&again, "SM1")], at(61))
        .await
        .unwrap();
    let sent = get(store, scope, new.id).await;
    assert_eq!(sent.status, MessageStatus::Sent);
    assert_eq!(
        sent.error_code, None,
        "the transient error no longer describes the message"
    );
}

pub async fn a_permanent_failure_fails_the_message_with_the_reason(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    let claim = claim_one(store, at(1)).await;
    let failed = SendResult {
        id: claim.id,
        attempt: 1,
        provider: Some("simulator".into()),
        outcome: SendOutcome::Failed {
            code: "21211".into(),
            message: "invalid number".into(),
        },
    };
    store.record_results(&[failed], at(2)).await.unwrap();
    let message = get(store, scope, new.id).await;
    assert_eq!(message.status, MessageStatus::Failed);
    assert_eq!(
        (
            message.error_code.as_deref(),
            message.error_message.as_deref()
        ),
        (Some("21211"), Some("invalid number"))
    );
    assert!(
        store
            .claim_due(at(100), at(130), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn a_stale_result_does_not_override_a_newer_claim(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    let first = claim_one(store, at(1)).await;
    let retry = |attempt| SendResult {
        id: new.id,
        attempt,
        provider: Some("simulator".into()),
        outcome: SendOutcome::Retry {
            retry_at: at(2),
            code: "429".into(),
            message: "slow down".into(),
        },
    };
    store
        .record_results(&[retry(first.attempt)], at(1))
        .await
        .unwrap();
    let second = claim_one(store, at(2)).await;
    assert_eq!(second.attempt, 2);

    store
        .record_results(&[retry(first.attempt)], at(3))
        .await
        .unwrap();
    assert_eq!(
        get(store, scope, new.id).await.status,
        MessageStatus::Sending,
        "stale retry ignored"
    );
    store
        .record_results(&[accepted(&first, "SM-old")], at(4))
        .await
        .unwrap();
    let sent = get(store, scope, new.id).await;
    assert_eq!(
        sent.status,
        MessageStatus::Sent,
        "a stale acceptance still counts: the provider has it"
    );
    assert_eq!(sent.provider_message_id.as_deref(), Some("SM-old"));
}

pub async fn reports_move_messages_forward_only(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    let claim = claim_one(store, at(1)).await;
    store
        .record_results(&[accepted(&claim, "SM9")], at(2))
        .await
        .unwrap();

    let delivered = report(Some(new.id), "SM9", ReportedStatus::Delivered);
    let sent = report(Some(new.id), "SM9", ReportedStatus::Sent);
    let failed = report(Some(new.id), "SM9", ReportedStatus::Failed);
    let outcomes = store
        .apply_reports(&[delivered.clone(), delivered, sent, failed], at(3))
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            ReportOutcome::Applied,
            ReportOutcome::Unchanged,
            ReportOutcome::Unchanged,
            ReportOutcome::Unchanged,
        ]
    );
    let message = get(store, scope, new.id).await;
    assert_eq!(message.status, MessageStatus::Delivered);
    assert_eq!(
        statuses(&message),
        vec![
            MessageStatus::Queued,
            MessageStatus::Sending,
            MessageStatus::Sent,
            MessageStatus::Delivered
        ]
    );
}

pub async fn a_report_may_overtake_the_send_result(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    let claim = claim_one(store, at(1)).await;
    let mut undelivered = report(Some(new.id), "SM7", ReportedStatus::Undelivered);
    undelivered.error_code = Some("30003".into());
    undelivered.error_message = Some("unreachable handset".into());
    assert_eq!(
        store.apply_reports(&[undelivered], at(2)).await.unwrap(),
        vec![ReportOutcome::Applied]
    );
    store
        .record_results(&[accepted(&claim, "SM7")], at(3))
        .await
        .unwrap();

    let message = get(store, scope, new.id).await;
    assert_eq!(message.status, MessageStatus::Undelivered);
    assert_eq!(message.error_code.as_deref(), Some("30003"));
    assert_eq!(message.provider_message_id.as_deref(), Some("SM7"));
    assert_eq!(
        statuses(&message),
        vec![
            MessageStatus::Queued,
            MessageStatus::Sending,
            MessageStatus::Undelivered
        ]
    );
}

pub async fn reports_find_messages_by_provider_id(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    let claim = claim_one(store, at(1)).await;
    store
        .record_results(&[accepted(&claim, "SM-by-ref")], at(2))
        .await
        .unwrap();

    let outcomes = store
        .apply_reports(
            &[
                report(None, "SM-by-ref", ReportedStatus::Delivered),
                report(None, "SM-nobody", ReportedStatus::Delivered),
                report(Some(Uuid::now_v7()), "SM-x", ReportedStatus::Delivered),
            ],
            at(3),
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            ReportOutcome::Applied,
            ReportOutcome::NotFound,
            ReportOutcome::NotFound
        ]
    );
    assert_eq!(
        get(store, scope, new.id).await.status,
        MessageStatus::Delivered
    );
}

pub async fn cancel_works_only_before_sending(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let queued = message(scope, "+14155550100", at(0));
    insert(store, &queued).await;
    let canceled = store
        .cancel_message(scope, queued.id, at(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(canceled.status, MessageStatus::Canceled);
    let again = store
        .cancel_message(scope, queued.id, at(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.history.len(), 2, "a second cancel changes nothing");
    assert!(
        store.claim_due(at(3), at(33), 10).await.unwrap().is_empty(),
        "canceled is never sent"
    );

    let mut scheduled = message(scope, "+14155550100", at(0));
    scheduled.send_at = Some(at(100));
    insert(store, &scheduled).await;
    assert_eq!(
        store
            .cancel_message(scope, scheduled.id, at(5))
            .await
            .unwrap()
            .unwrap()
            .status,
        MessageStatus::Canceled
    );
    assert_eq!(store.release_due(at(200), 10).await.unwrap(), 0);

    let sending = message(scope, "+14155550100", at(0));
    insert(store, &sending).await;
    claim_one(store, at(6)).await;
    assert_eq!(
        store
            .cancel_message(scope, sending.id, at(7))
            .await
            .unwrap(),
        Err(CancelRefusal::TooLate(MessageStatus::Sending))
    );
    assert_eq!(
        store
            .cancel_message(scope, Uuid::now_v7(), at(7))
            .await
            .unwrap(),
        Err(CancelRefusal::NotFound)
    );
}

pub async fn expired_leases_become_unknown_and_are_reconciled(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let lost = message(scope, "+14155550100", at(0));
    let kept = message(scope, "+14155550101", at(1));
    insert(store, &lost).await;
    insert(store, &kept).await;
    let claims = store.claim_due(at(2), at(32), 10).await.unwrap();
    assert_eq!(claims.len(), 2);

    assert_eq!(
        store.expire_leases(at(32), 100).await.unwrap(),
        0,
        "a lease is good until it ends"
    );
    assert_eq!(store.expire_leases(at(33), 100).await.unwrap(), 2);
    let unknown = get(store, scope, lost.id).await;
    assert_eq!(unknown.status, MessageStatus::Unknown);
    assert!(
        store
            .claim_due(at(34), at(64), 10)
            .await
            .unwrap()
            .is_empty(),
        "unknown is never resent blindly"
    );

    let unsettled = store.unsettled(at(33), 10).await.unwrap();
    assert_eq!(unsettled.len(), 2);
    store
        .settle(
            &[
                (lost.id, Settlement::NotFound),
                (
                    kept.id,
                    Settlement::Found {
                        provider: "simulator".into(),
                        provider_message_id: "SM-kept".into(),
                        status: ReportedStatus::Delivered,
                        error_code: None,
                    },
                ),
            ],
            at(34),
        )
        .await
        .unwrap();
    assert!(store.unsettled(at(100), 10).await.unwrap().is_empty());

    let delivered = get(store, scope, kept.id).await;
    assert_eq!(delivered.status, MessageStatus::Delivered);
    assert_eq!(delivered.provider_message_id.as_deref(), Some("SM-kept"));
    assert_eq!(delivered.error_code, None);
    let requeued = get(store, scope, lost.id).await;
    assert_eq!(
        statuses(&requeued),
        vec![
            MessageStatus::Queued,
            MessageStatus::Sending,
            MessageStatus::Unknown,
            MessageStatus::Queued
        ]
    );
    let retry = claim_one(store, at(35)).await;
    assert_eq!((retry.id, retry.attempt), (lost.id, 2));
}

pub async fn an_unclaimed_message_returns_to_the_queue_without_using_an_attempt(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    let claim = claim_one(store, at(1)).await;
    let unclaimed = SendResult {
        id: claim.id,
        attempt: claim.attempt,
        provider: Some("simulator".into()),
        outcome: SendOutcome::Unclaimed,
    };
    store.record_results(&[unclaimed], at(2)).await.unwrap();
    let queued = get(store, scope, new.id).await;
    assert_eq!(
        (queued.status, queued.attempts, queued.provider.as_deref()),
        (MessageStatus::Queued, 0, None)
    );
    assert_eq!(claim_one(store, at(2)).await.attempt, 1);
}

pub async fn an_undecided_settlement_waits_until_its_retry_time(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    claim_one(store, at(1)).await;
    store.expire_leases(at(40), 10).await.unwrap();
    store
        .settle(
            &[(new.id, Settlement::Undecided { retry_at: at(100) })],
            at(41),
        )
        .await
        .unwrap();
    assert!(store.unsettled(at(99), 10).await.unwrap().is_empty());
    assert_eq!(store.unsettled(at(100), 10).await.unwrap()[0].id, new.id);
    assert_eq!(
        get(store, scope, new.id).await.status,
        MessageStatus::Unknown
    );
}

pub async fn next_scheduled_at_is_the_earliest_send_time(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    assert_eq!(store.next_scheduled_at().await.unwrap(), None);
    let mut later = message(scope, "+14155550100", at(0));
    later.send_at = Some(at(500));
    insert(store, &later).await;
    let mut sooner = message(scope, "+14155550100", at(0));
    sooner.send_at = Some(at(300));
    insert(store, &sooner).await;
    insert(store, &message(scope, "+14155550100", at(7))).await;
    assert_eq!(
        store.next_scheduled_at().await.unwrap(),
        Some(at(300)),
        "queued messages do not count"
    );
    store
        .cancel_message(scope, sooner.id, at(8))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.next_scheduled_at().await.unwrap(), Some(at(500)));
}

pub async fn bulk_inserted_messages_are_stored_like_single_ones(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    // Enough to cross the backends' chunk boundaries.
    let messages: Vec<NewMessage> = (0..12_345)
        .map(|i| {
            let mut new = message(scope, &format!("+1415555{:04}", i % 10_000), at(0));
            if i % 5 == 0 {
                new.send_at = Some(at(600));
            }
            new
        })
        .collect();
    assert_eq!(store.insert_messages(&messages).await.unwrap(), 12_345);
    assert_eq!(store.insert_messages(&[]).await.unwrap(), 0);
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 12_345);
    for sample in [&messages[0], &messages[1], &messages[12_344]] {
        assert_eq!(get(store, scope, sample.id).await, sample.initial_record());
    }
    let mut counts = store.status_counts(scope.org_id).await.unwrap();
    counts.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(
        counts,
        vec![
            (MessageStatus::Queued, 9_876),
            (MessageStatus::Scheduled, 2_469)
        ]
    );
    let claimed = store.claim_due(at(1), at(31), 100).await.unwrap();
    assert_eq!(claimed.len(), 100, "bulk-inserted messages are claimable");
}

pub async fn status_counts_cover_every_message(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let other = organization(store, "other").await;
    assert!(store.status_counts(scope.org_id).await.unwrap().is_empty());
    for i in 0..3 {
        insert(store, &message(scope, "+14155550100", at(i))).await;
    }
    insert(store, &message(other, "+14155550100", at(0))).await;
    let claim = claim_one(store, at(5)).await;
    store
        .record_results(&[accepted(&claim, "SM1")], at(6))
        .await
        .unwrap();
    let canceled = store
        .list_messages(scope, &MessageFilter::default(), None, 1)
        .await
        .unwrap()
        .items[0]
        .id;
    store
        .cancel_message(scope, canceled, at(7))
        .await
        .unwrap()
        .unwrap();

    let mut counts = store.status_counts(scope.org_id).await.unwrap();
    counts.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(
        counts,
        vec![
            (MessageStatus::Canceled, 1),
            (MessageStatus::Queued, 1),
            (MessageStatus::Sent, 1),
        ]
    );
}

pub async fn results_and_reports_recorded_together_apply_in_order(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let a = message(scope, "+14155550100", at(0));
    let b = message(scope, "+14155550101", at(0));
    insert(store, &a).await;
    insert(store, &b).await;
    let claims = store.claim_due(at(1), at(31), 10).await.unwrap();
    let results: Vec<SendResult> = claims
        .iter()
        .map(|claim| accepted(claim, if claim.id == a.id { "SM-a" } else { "SM-b" }))
        .collect();
    // b's report names it only by the provider id its result, in the same call, records.
    let reports = [
        report(Some(a.id), "SM-a", ReportedStatus::Sent),
        report(Some(a.id), "SM-a", ReportedStatus::Delivered),
        report(None, "SM-b", ReportedStatus::Delivered),
        report(None, "SM-nobody", ReportedStatus::Delivered),
    ];
    let outcomes = store.record(&results, &reports, at(2)).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            ReportOutcome::Unchanged,
            ReportOutcome::Applied,
            ReportOutcome::Applied,
            ReportOutcome::NotFound,
        ]
    );
    for id in [a.id, b.id] {
        let message = get(store, scope, id).await;
        assert_eq!(
            statuses(&message),
            vec![
                MessageStatus::Queued,
                MessageStatus::Sending,
                MessageStatus::Sent,
                MessageStatus::Delivered
            ]
        );
    }
}

pub async fn a_batch_of_accepted_messages_honours_its_keys_in_order(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let key = |hash: u8| IdempotencyRecord {
        key: "k".into(),
        request_hash: [hash; 32],
        response: vec![hash],
        expires_at: at(86_400),
    };
    let first = message(scope, "+14155550100", at(1));
    let items = vec![
        (first.clone(), Some(key(1))),
        (message(scope, "+14155550100", at(1)), Some(key(1))),
        (message(scope, "+14155550100", at(1)), Some(key(2))),
        (message(scope, "+14155550101", at(1)), None),
    ];
    let insertions = store.accept_messages(&items, at(1)).await.unwrap();
    assert_eq!(insertions.len(), 4);
    assert_eq!(
        insertions[0],
        Insertion::Created(Box::new(first.initial_record()))
    );
    assert_eq!(
        insertions[1],
        Insertion::Replayed {
            message_id: first.id,
            response: vec![1]
        }
    );
    assert_eq!(insertions[2], Insertion::KeyReused);
    assert!(matches!(insertions[3], Insertion::Created(_)));
    assert_eq!(store.count_messages(scope.org_id).await.unwrap(), 2);
}

pub async fn a_retry_failed_over_is_named_by_the_provider_that_took_it(subject: &Subject) {
    let store = subject.store.as_ref();
    let scope = organization(store, "acme").await;
    let new = message(scope, "+14155550100", at(0));
    insert(store, &new).await;
    let claim = claim_one(store, at(1)).await;
    let refused = SendResult {
        id: claim.id,
        attempt: 1,
        provider: Some("alpha".into()),
        outcome: SendOutcome::Retry {
            retry_at: at(10),
            code: "503".into(),
            message: "unavailable".into(),
        },
    };
    store.record_results(&[refused], at(2)).await.unwrap();
    assert_eq!(
        get(store, scope, new.id).await.provider.as_deref(),
        Some("alpha")
    );

    let again = claim_one(store, at(10)).await;
    let taken = SendResult {
        provider: Some("beta".into()),
        ..accepted(&again, "B-1")
    };
    store.record_results(&[taken], at(11)).await.unwrap();
    let sent = get(store, scope, new.id).await;
    assert_eq!(
        (
            sent.provider.as_deref(),
            sent.provider_message_id.as_deref()
        ),
        (Some("beta"), Some("B-1"))
    );

    // beta's report finds the message by beta's id; a late result from alpha renames nothing.
    let mut delivered = report(None, "B-1", ReportedStatus::Delivered);
    delivered.provider = "beta".into();
    assert_eq!(
        store.apply_reports(&[delivered], at(12)).await.unwrap(),
        vec![ReportOutcome::Applied]
    );
    let late = SendResult {
        provider: Some("alpha".into()),
        ..accepted(&again, "A-9")
    };
    store.record_results(&[late], at(13)).await.unwrap();
    let settled = get(store, scope, new.id).await;
    assert_eq!(settled.status, MessageStatus::Delivered);
    assert_eq!(
        (
            settled.provider.as_deref(),
            settled.provider_message_id.as_deref()
        ),
        (Some("beta"), Some("B-1"))
    );
}

pub async fn token_buckets_refill_at_their_rate_and_concurrent_takers_share_them(
    subject: &Subject,
) {
    use crate::rate::Rate;
    let store = subject.store.as_ref();
    let rate = Rate {
        per_second: 2.0,
        burst: 5.0,
    };
    assert_eq!(store.take_tokens("a", rate, 3, at(0)).await.unwrap(), 3);
    assert_eq!(store.take_tokens("a", rate, 3, at(0)).await.unwrap(), 2);
    assert_eq!(store.take_tokens("a", rate, 3, at(0)).await.unwrap(), 0);
    assert_eq!(
        store.take_tokens("b", rate, 1, at(0)).await.unwrap(),
        1,
        "buckets are independent"
    );
    // One second at 2 a second: two more.
    assert_eq!(store.take_tokens("a", rate, 5, at(1)).await.unwrap(), 2);

    // Many takers at once, through separate connections, never get more than the bucket holds.
    let shared = subject.reconnect().await;
    let takers = (0..10).map(|i| {
        let store = if i % 2 == 0 {
            subject.store.clone()
        } else {
            shared.clone()
        };
        async move { store.take_tokens("c", rate, 1, at(0)).await.unwrap() }
    });
    let granted: u32 = futures::future::join_all(takers).await.into_iter().sum();
    assert_eq!(granted, 5);
}

pub async fn the_suppression_list_is_kept_per_organization(subject: &Subject) {
    let store = subject.store.as_ref();
    let stop_reply = Uuid::now_v7();
    let a = organization(store, "acme").await;
    let b = organization(store, "globex").await;
    assert!(
        store
            .opt_out(a.org_id, "+14155550100", "api", None, at(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .opt_out(a.org_id, "+14155550100", "twilio:21610", None, at(2))
            .await
            .unwrap(),
        "already there: the first source stays"
    );
    assert!(
        store
            .opt_out(a.org_id, "+14155550101", "sns", None, at(3))
            .await
            .unwrap()
    );
    let phones = ["+14155550100", "+14155550101", "+14155550102"].map(str::to_owned);
    let mut found = store.opted_out_among(a.org_id, &phones).await.unwrap();
    found.sort_by(|x, y| x.phone.cmp(&y.phone));
    assert_eq!(
        found
            .iter()
            .map(|o| (o.phone.as_str(), o.source.as_str()))
            .collect::<Vec<_>>(),
        [("+14155550100", "api"), ("+14155550101", "sns")]
    );
    assert_eq!(found[0].created_at, at(1));
    assert!(
        store
            .opted_out_among(b.org_id, &phones)
            .await
            .unwrap()
            .is_empty(),
        "another organization's list is its own"
    );
    assert!(
        store
            .opted_out_among(a.org_id, &[])
            .await
            .unwrap()
            .is_empty()
    );

    let (page, next) = store.list_opt_outs(a.org_id, None, 1).await.unwrap();
    assert_eq!(page[0].phone, "+14155550100");
    let (rest, last) = store
        .list_opt_outs(a.org_id, next.as_deref(), 1)
        .await
        .unwrap();
    assert_eq!((rest[0].phone.as_str(), last), ("+14155550101", None));

    assert!(
        store
            .opt_in(a.org_id, "+14155550100", "keyword", Some(stop_reply), at(4))
            .await
            .unwrap()
    );
    assert!(
        !store
            .opt_in(a.org_id, "+14155550100", "api", None, at(5))
            .await
            .unwrap()
    );
    assert!(
        !store
            .opt_in(b.org_id, "+14155550101", "api", None, at(5))
            .await
            .unwrap()
    );
    let history = store
        .opt_out_history(a.org_id, "+14155550100")
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| (e.action, e.source.as_str(), e.message_id, e.occurred_at))
            .collect::<Vec<_>>(),
        [
            (OptOutAction::OptOut, "api", None, at(1)),
            (OptOutAction::OptIn, "keyword", Some(stop_reply), at(4)),
        ],
        "only changes are recorded: the repeated opt-out and opt-in changed nothing"
    );
    assert!(
        store
            .opt_out_history(b.org_id, "+14155550100")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .opted_out_among(a.org_id, &phones)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn keyword_settings_are_kept_per_organization(subject: &Subject) {
    let store = subject.store.as_ref();
    let a = organization(store, "acme").await;
    let b = organization(store, "globex").await;
    assert_eq!(
        store.keyword_settings(a.org_id).await.unwrap(),
        Some(KeywordSettings::default())
    );
    assert_eq!(store.keyword_settings(Uuid::now_v7()).await.unwrap(), None);
    let mine = KeywordSettings {
        help_text: Some("Acme: reply STOPPEN to stop".into()),
        opt_out_words: vec!["STOPPEN".into(), "DÉSABONNER".into()],
        opt_in_words: vec!["ANMELDEN".into()],
    };
    store.set_keyword_settings(a.org_id, &mine).await.unwrap();
    assert_eq!(store.keyword_settings(a.org_id).await.unwrap(), Some(mine));
    assert_eq!(
        store.keyword_settings(b.org_id).await.unwrap(),
        Some(KeywordSettings::default())
    );
}
