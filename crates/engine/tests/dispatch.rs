//! The dispatcher and reconciliation, stepped by hand with a manual clock over each real store
//! (a fresh SQLite file, a fresh PostgreSQL database): no sleeps decide an outcome here.

use std::sync::Arc;
use std::time::Duration;

use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_domain::status::MessageStatus;
use herald_engine::clock::{Clock, ManualClock};
use herald_engine::dispatcher::DispatcherConfig;
use herald_engine::intake::SendRequest;
use herald_engine::{Engine, EngineConfig};
use herald_providers::simulator::{Fault, SimulatorConfig};
use herald_providers::{Outbound, Provider};
use herald_store::{Insertion, Message, Organization, Scope, Store};
use herald_store_postgres::test_support::{TestDatabase, fresh_database};
use herald_store_postgres::{PostgresConfig, PostgresStore};
use herald_store_sqlite::{SqliteConfig, SqliteStore};
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Database(Box<TestDatabase>),
}

struct World {
    engine: Engine,
    clock: Arc<ManualClock>,
    org: Organization,
    scope: Scope,
    guard: Guard,
}

/// A world on `backend`, or `None` when PostgreSQL is unavailable and not required.
async fn world(backend: Backend, dispatcher: DispatcherConfig) -> Option<World> {
    let (store, guard): (Arc<dyn Store>, Guard) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("herald.db").display());
            let store = SqliteStore::connect(&url, &SqliteConfig::default())
                .await
                .unwrap();
            (Arc::new(store), Guard::Dir(dir))
        }
        Backend::Postgres => {
            let database = fresh_database().await?;
            let store = PostgresStore::connect(database.url(), &PostgresConfig::default())
                .await
                .unwrap();
            (Arc::new(store), Guard::Database(Box::new(database)))
        }
    };
    store.migrate().await.unwrap();
    let clock = Arc::new(ManualClock::new("2026-05-01T09:00:00Z".parse().unwrap()));
    let org = Organization {
        id: Uuid::now_v7(),
        name: "acme".into(),
        default_region: Region::parse("US").unwrap(),
        created_at: clock.now(),
    };
    store.create_organization(&org, &[]).await.unwrap();
    let config = EngineConfig {
        dispatcher,
        simulator: SimulatorConfig {
            auto_report: false,
            seed: Some(1),
            ..SimulatorConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = Engine::new(store, clock.clone(), config, None);
    let scope = Scope {
        org_id: org.id,
        mode: Mode::Live,
    };
    Some(World {
        engine,
        clock,
        org,
        scope,
        guard,
    })
}

/// Run each case (an async fn taking a backend) on both stores.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_stores!(
    a_message_is_sent_then_delivered_through_the_report_path,
    server_errors_and_rate_limits_are_retried_with_backoff_then_sent_once,
    a_message_out_of_attempts_fails_with_the_last_reason,
    a_permanent_refusal_fails_at_once_with_the_providers_code,
    a_timeout_after_the_provider_took_the_message_is_reconciled_not_resent,
    a_timeout_before_the_provider_took_the_message_is_requeued_and_sent_once,
    a_provider_slower_than_the_send_timeout_counts_as_unanswered,
    a_dispatcher_that_dies_before_calling_the_provider_loses_nothing,
    a_dispatcher_that_dies_after_the_provider_took_the_message_never_sends_it_twice,
    shutdown_returns_claimed_but_unsent_messages_to_the_queue,
    a_scheduled_message_waits_for_its_time,
    a_promotional_retry_due_in_quiet_hours_waits_for_the_window,
);

impl World {
    async fn send(&self, to: &str) -> Uuid {
        let request = SendRequest {
            to: Some(to.into()),
            body: Some("Hello".into()),
            ..SendRequest::default()
        };
        let message = self
            .engine
            .prepare(&self.org, self.scope, None, &request)
            .unwrap();
        match self.engine.accept(&message, None).await.unwrap() {
            Insertion::Created(created) => created.id,
            other => panic!("not created: {other:?}"),
        }
    }

    async fn get(&self, id: Uuid) -> Message {
        self.engine
            .store
            .get_message(self.scope, id)
            .await
            .unwrap()
            .unwrap()
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(SignedDuration::try_from(by).unwrap());
    }

    async fn finish(self) {
        if let Guard::Database(database) = self.guard {
            drop(self.engine);
            database.drop_database().await;
        }
    }
}

fn statuses(message: &Message) -> Vec<MessageStatus> {
    message.history.iter().map(|c| c.status).collect()
}

use MessageStatus::*;

async fn a_message_is_sent_then_delivered_through_the_report_path(backend: Backend) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    let id = w.send("+14155550100").await;
    let outcome = w.engine.dispatcher.dispatch_once().await.unwrap();
    assert_eq!((outcome.claimed, outcome.accepted), (1, 1));
    assert_eq!(w.get(id).await.status, Sent);

    assert_eq!(w.engine.simulator.flush_reports().await.unwrap(), 2);
    let message = w.get(id).await;
    assert_eq!(message.status, Delivered);
    assert_eq!(statuses(&message), vec![Queued, Sending, Sent, Delivered]);
    assert_eq!(message.provider.as_deref(), Some("simulator"));
    assert!(message.provider_message_id.unwrap().starts_with("SM"));
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().claimed,
        0
    );
    w.finish().await;
}

async fn server_errors_and_rate_limits_are_retried_with_backoff_then_sent_once(backend: Backend) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    let id = w.send("+14155550100").await;
    w.engine.simulator.inject(Fault::ServerError);
    w.engine.simulator.inject(Fault::RateLimited {
        retry_after: Duration::from_secs(30),
    });

    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().retried,
        1
    );
    let waiting = w.get(id).await;
    assert_eq!(
        (waiting.status, waiting.error_code.as_deref()),
        (Queued, Some("503"))
    );
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().claimed,
        0,
        "backing off"
    );

    w.advance(Duration::from_secs(2));
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().retried,
        1,
        "second attempt: 429"
    );
    w.advance(Duration::from_secs(29));
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().claimed,
        0,
        "Retry-After is honoured"
    );
    w.advance(Duration::from_secs(1));
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().accepted,
        1
    );

    let sent = w.get(id).await;
    assert_eq!((sent.status, sent.attempts), (Sent, 3));
    assert_eq!(
        statuses(&sent),
        vec![Queued, Sending, Queued, Sending, Queued, Sending, Sent]
    );
    assert_eq!(w.engine.simulator.times_accepted(id), 1);
    w.finish().await;
}

async fn a_message_out_of_attempts_fails_with_the_last_reason(backend: Backend) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    let id = w.send("+14155550100").await;
    for _ in 0..5 {
        w.engine.simulator.inject(Fault::ServerError);
    }
    for _ in 0..5 {
        w.engine.dispatcher.dispatch_once().await.unwrap();
        w.advance(Duration::from_secs(600));
    }
    let failed = w.get(id).await;
    assert_eq!((failed.status, failed.attempts), (Failed, 5));
    assert_eq!(failed.error_code.as_deref(), Some("503"));
    assert!(
        failed
            .error_message
            .unwrap()
            .contains("gave up after 5 attempts")
    );
    assert_eq!(w.engine.simulator.times_accepted(id), 0);
    w.finish().await;
}

async fn a_permanent_refusal_fails_at_once_with_the_providers_code(backend: Backend) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    let id = w.send("+15005550001").await;
    assert_eq!(w.engine.dispatcher.dispatch_once().await.unwrap().failed, 1);
    let failed = w.get(id).await;
    assert_eq!(
        (failed.status, failed.error_code.as_deref(), failed.attempts),
        (Failed, Some("21211"), 1)
    );
    w.finish().await;
}

async fn a_timeout_after_the_provider_took_the_message_is_reconciled_not_resent(backend: Backend) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    let id = w.send("+14155550100").await;
    w.engine.simulator.inject(Fault::Timeout { accepted: true });
    assert_eq!(
        w.engine
            .dispatcher
            .dispatch_once()
            .await
            .unwrap()
            .unanswered,
        1
    );
    assert_eq!(w.get(id).await.status, Unknown);
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().claimed,
        0,
        "never resent blindly"
    );

    let tick = w.engine.maintenance.tick_once().await.unwrap();
    assert_eq!(tick.found, 1);
    assert_eq!(w.get(id).await.status, Sent);
    w.engine.simulator.flush_reports().await.unwrap();
    let message = w.get(id).await;
    assert_eq!(
        statuses(&message),
        vec![Queued, Sending, Unknown, Sent, Delivered]
    );
    assert_eq!(w.engine.simulator.times_accepted(id), 1);
    w.finish().await;
}

async fn a_timeout_before_the_provider_took_the_message_is_requeued_and_sent_once(
    backend: Backend,
) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    let id = w.send("+14155550100").await;
    w.engine
        .simulator
        .inject(Fault::Timeout { accepted: false });
    w.engine.dispatcher.dispatch_once().await.unwrap();
    assert_eq!(w.engine.maintenance.tick_once().await.unwrap().requeued, 1);
    assert_eq!(w.get(id).await.status, Queued);
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().accepted,
        1
    );
    assert_eq!(w.engine.simulator.times_accepted(id), 1);
    w.finish().await;
}

async fn a_provider_slower_than_the_send_timeout_counts_as_unanswered(backend: Backend) {
    let config = DispatcherConfig {
        send_timeout: Duration::from_millis(50),
        ..DispatcherConfig::default()
    };
    let Some(w) = world(backend, config).await else {
        return;
    };
    let id = w.send("+14155550100").await;
    w.engine
        .simulator
        .inject(Fault::Delay(Duration::from_secs(3_600)));
    assert_eq!(
        w.engine
            .dispatcher
            .dispatch_once()
            .await
            .unwrap()
            .unanswered,
        1
    );
    let unknown = w.get(id).await;
    assert_eq!(
        (unknown.status, unknown.error_code.as_deref()),
        (Unknown, Some("timeout"))
    );
    w.finish().await;
}

async fn a_dispatcher_that_dies_before_calling_the_provider_loses_nothing(backend: Backend) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    let id = w.send("+14155550100").await;
    // A dispatcher claims, then its process dies: nothing is recorded.
    let now = w.clock.now();
    let claimed = w
        .engine
        .store
        .claim_due(now, now + SignedDuration::from_secs(120), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    assert_eq!(
        w.engine.maintenance.tick_once().await.unwrap().expired,
        0,
        "the lease still holds"
    );
    w.advance(Duration::from_secs(121));
    let tick = w.engine.maintenance.tick_once().await.unwrap();
    assert_eq!((tick.expired, tick.requeued), (1, 1));
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().accepted,
        1
    );
    let sent = w.get(id).await;
    assert_eq!(
        statuses(&sent),
        vec![Queued, Sending, Unknown, Queued, Sending, Sent]
    );
    assert_eq!(w.engine.simulator.times_accepted(id), 1);
    w.finish().await;
}

async fn a_dispatcher_that_dies_after_the_provider_took_the_message_never_sends_it_twice(
    backend: Backend,
) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    let id = w.send("+14155550100").await;
    let now = w.clock.now();
    let claimed = w
        .engine
        .store
        .claim_due(now, now + SignedDuration::from_secs(120), 10)
        .await
        .unwrap();
    let message = &claimed[0];
    // The provider takes the message; the process dies before recording the answer.
    let outbound = Outbound {
        message_id: message.id,
        to: message.to.clone(),
        from: None,
        body: message.body.clone(),
        encoding: message.encoding,
        segments: message.segments,
        kind: message.kind,
        attempt: message.attempt,
    };
    w.engine.simulator.send(&outbound).await.unwrap();

    w.advance(Duration::from_secs(121));
    let tick = w.engine.maintenance.tick_once().await.unwrap();
    assert_eq!((tick.expired, tick.found, tick.requeued), (1, 1, 0));
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().claimed,
        0
    );
    w.engine.simulator.flush_reports().await.unwrap();
    assert_eq!(w.get(id).await.status, Delivered);
    assert_eq!(w.engine.simulator.times_accepted(id), 1);
    w.finish().await;
}

async fn shutdown_returns_claimed_but_unsent_messages_to_the_queue(backend: Backend) {
    let config = DispatcherConfig {
        max_in_flight: 1,
        ..DispatcherConfig::default()
    };
    let Some(w) = world(backend, config).await else {
        return;
    };
    let ids = [
        w.send("+14155550100").await,
        w.send("+14155550101").await,
        w.send("+14155550102").await,
    ];
    w.engine
        .simulator
        .inject(Fault::Delay(Duration::from_millis(300)));

    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut workers = w.engine.start(shutdown.clone());
    // Wait until the slow first call is under way (it has taken the injected delay), with all
    // three claimed, then ask everything to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while w.engine.simulator.pending_faults() > 0 || futures_count(&w, &ids, Sending).await < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first call never started"
        );
        tokio::task::yield_now().await;
    }
    shutdown.cancel();
    while workers.join_next().await.is_some() {}

    let mut statuses = Vec::new();
    for id in ids {
        let message = w.get(id).await;
        statuses.push((message.status, message.attempts));
    }
    statuses.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(statuses, vec![(Queued, 0), (Queued, 0), (Sent, 1)]);
    assert_eq!(w.engine.simulator.total_accepted(), 1);
    w.finish().await;
}

async fn futures_count(w: &World, ids: &[Uuid], status: MessageStatus) -> usize {
    let mut count = 0;
    for id in ids {
        if w.get(*id).await.status == status {
            count += 1;
        }
    }
    count
}

async fn a_scheduled_message_waits_for_its_time(backend: Backend) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    let request = SendRequest {
        to: Some("+14155550100".into()),
        body: Some("Later".into()),
        send_at: Some(w.clock.now() + SignedDuration::from_mins(10)),
        ..SendRequest::default()
    };
    let message = w.engine.prepare(&w.org, w.scope, None, &request).unwrap();
    w.engine.accept(&message, None).await.unwrap();
    assert_eq!(w.engine.maintenance.tick_once().await.unwrap().released, 0);
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().claimed,
        0
    );
    w.advance(Duration::from_secs(600));
    assert_eq!(w.engine.maintenance.tick_once().await.unwrap().released, 1);
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().accepted,
        1
    );
    let sent = w.get(message.id).await;
    assert_eq!(statuses(&sent), vec![Scheduled, Queued, Sending, Sent]);
    let released_at: Timestamp = sent.history[1].at;
    assert_eq!(released_at, message.send_at.unwrap());
    w.finish().await;
}

/// The organization default window, 09:00–21:00, must be open in every US zone: in May from
/// 19:00 UTC (09:00 in Honolulu) to 01:00 UTC (21:00 in New York).
async fn a_promotional_retry_due_in_quiet_hours_waits_for_the_window(backend: Backend) {
    let Some(w) = world(backend, DispatcherConfig::default()).await else {
        return;
    };
    w.clock.set("2026-05-01T20:00:00Z".parse().unwrap());
    let promotion = SendRequest {
        to: Some("+14155550100".into()),
        body: Some("20% off this weekend".into()),
        kind: herald_domain::message::MessageType::Promotional,
        ..SendRequest::default()
    };
    let message = w.engine.prepare(&w.org, w.scope, None, &promotion).unwrap();
    let Insertion::Created(created) = w.engine.accept(&message, None).await.unwrap() else {
        panic!("not created");
    };
    let id = created.id;
    assert_eq!(created.status, Queued, "inside the window: queued at once");

    // The first attempt fails; its retry comes due after 21:00 in New York.
    w.engine.simulator.inject(Fault::ServerError);
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().retried,
        1
    );
    w.clock.set("2026-05-02T01:30:00Z".parse().unwrap());
    let transactional = w.send("+14155550101").await;
    let outcome = w.engine.dispatcher.dispatch_once().await.unwrap();
    assert_eq!(
        (outcome.claimed, outcome.deferred, outcome.accepted),
        (2, 1, 1),
        "the promotion waits; the transactional message goes: {outcome:?}"
    );
    assert_eq!(w.get(transactional).await.status, Sent);
    let waiting = w.get(id).await;
    assert_eq!(
        (waiting.status, waiting.attempts),
        (Queued, 1),
        "no attempt used"
    );

    // Nothing goes before 09:00 in Honolulu, and then it is sent.
    w.clock.set("2026-05-02T18:59:59Z".parse().unwrap());
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().claimed,
        0
    );
    w.clock.set("2026-05-02T19:00:00Z".parse().unwrap());
    assert_eq!(
        w.engine.dispatcher.dispatch_once().await.unwrap().accepted,
        1
    );
    let sent = w.get(id).await;
    assert_eq!((sent.status, sent.attempts), (Sent, 2));
    assert_eq!(w.engine.simulator.times_accepted(id), 1);
    w.finish().await;
}
