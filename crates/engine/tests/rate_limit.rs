//! Rate limits hold across processes: two engines ("processes") with their own dispatchers
//! share one PostgreSQL database, and the sends they make together are counted per one-second
//! window. Each limit is checked with generous bounds that sending without it would break by
//! far; the tests never assert how fast the machine is.
//!
//! - messages per second of a configured provider;
//! - segments per second of a configured provider, with 3-segment messages;
//! - messages per second from one sender number of an organization's own account, for
//!   messages that name it and messages that leave it to the account's default.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_engine::accounts::{AccountInput, create_account, set_route};
use herald_engine::clock::{Clock, SystemClock};
use herald_engine::intake::SendRequest;
use herald_engine::limits::Limits;
use herald_engine::{Engine, EngineConfig};
use herald_providers::simulator::SimulatorConfig;
use herald_providers::{Accepted, Lookup, LookupQuery, Outbound, Provider, SendError};
use herald_store::rate::Rate;
use herald_store::{Insertion, Organization, RouteKey, Scope, Store};
use herald_store_postgres::test_support::{TestDatabase, fresh_database};
use herald_store_postgres::{PostgresConfig, PostgresStore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A send and how many segments it carried, on a timeline shared by both processes.
type Timeline = Arc<Mutex<Vec<(Instant, usize)>>>;

/// One process's handle on the provider: counts its own sends, stamps them on the timeline.
struct Counting {
    sent: AtomicUsize,
    timeline: Timeline,
}

#[async_trait]
impl Provider for Counting {
    fn name(&self) -> &str {
        "limited"
    }

    async fn send(&self, message: &Outbound) -> Result<Accepted, SendError> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.timeline
            .lock()
            .unwrap()
            .push((Instant::now(), message.segments as usize));
        Ok(Accepted {
            provider_message_id: message.message_id.to_string(),
            cost: None,
        })
    }

    async fn lookup(&self, _: &LookupQuery) -> Result<Lookup, SendError> {
        Ok(Lookup::Unsupported)
    }
}

fn config(limits: HashMap<String, Limits>) -> EngineConfig {
    let mut config = EngineConfig {
        simulator: SimulatorConfig {
            auto_report: false,
            ..SimulatorConfig::default()
        },
        ..EngineConfig::default()
    };
    // One small batch at a time per process: a dispatcher that claimed ahead (several batches
    // in flight) could take every message before the other first looks, and then the test
    // would prove nothing about sharing a limit across processes. Each batch takes the limiter
    // a second or more, while the idle process looks every 20 ms.
    config.dispatcher.batch_size = 5;
    config.dispatcher.max_batches = 1;
    config.dispatcher.idle_poll = Duration::from_millis(20);
    config.dispatcher.rate_limits = limits;
    config
}

/// Two engines on one fresh database, each with its own counting provider.
async fn two_engines(
    config: EngineConfig,
    timeline: &Timeline,
) -> Option<(TestDatabase, Vec<Engine>, Vec<Arc<Counting>>)> {
    let database = fresh_database().await?;
    let mut engines = Vec::new();
    let mut providers = Vec::new();
    for _ in 0..2 {
        let store: Arc<dyn Store> = Arc::new(
            PostgresStore::connect(database.url(), &PostgresConfig::default())
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        let provider = Arc::new(Counting {
            sent: AtomicUsize::new(0),
            timeline: timeline.clone(),
        });
        let engine = Engine::with_providers(
            store,
            Arc::new(SystemClock),
            config.clone(),
            vec![provider.clone()],
        )
        .unwrap();
        engines.push(engine);
        providers.push(provider);
    }
    Some((database, engines, providers))
}

async fn organization(engine: &Engine) -> Organization {
    let org = Organization {
        id: Uuid::now_v7(),
        name: "acme".into(),
        default_region: Region::parse("US").unwrap(),
        created_at: SystemClock.now(),
    };
    engine.store.create_organization(&org, &[]).await.unwrap();
    org
}

/// Queue `count` live messages of `body`, the `i`th from `from(i)`.
async fn queue(
    engine: &Engine,
    org: &Organization,
    count: usize,
    body: &str,
    from: impl Fn(usize) -> Option<String>,
) {
    let scope = Scope {
        org_id: org.id,
        mode: Mode::Live,
    };
    for i in 0..count {
        let request = SendRequest {
            to: Some(format!("+1415555{:04}", 100 + i)),
            body: Some(body.into()),
            from: from(i),
            ..SendRequest::default()
        };
        let message = engine.prepare(org, scope, None, &request).unwrap();
        assert!(matches!(
            engine.accept(&message, None).await.unwrap(),
            Insertion::Created(_)
        ));
    }
}

/// Run both engines until `done` (bounded, so a broken limiter fails the test rather than
/// hanging it), calling `sample` every few milliseconds meanwhile.
async fn run_until(engines: &[Engine], done: impl Fn() -> bool, mut sample: impl FnMut()) {
    let shutdown = CancellationToken::new();
    let mut workers: Vec<_> = engines.iter().map(|e| e.start(shutdown.clone())).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "the messages were never all sent"
        );
        sample();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sample();
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    for set in &mut workers {
        while set.join_next().await.is_some() {}
    }
}

/// The most sent (weighted: messages or segments) in any window of less than a second. The
/// timeline holds `(time, weight)` sends, or running totals when `cumulative`.
fn busiest_second(mut timeline: Vec<(Instant, usize)>, cumulative: bool) -> usize {
    timeline.sort();
    let mut busiest = 0;
    for (i, (start, before)) in timeline.iter().enumerate() {
        let within = timeline[i..]
            .iter()
            .take_while(|(t, _)| t.duration_since(*start) < Duration::from_secs(1));
        let sent = if cumulative {
            within.map(|(_, total)| total - before).max().unwrap_or(0)
        } else {
            within.map(|(_, weight)| weight).sum()
        };
        busiest = busiest.max(sent);
    }
    busiest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_one_providers_rate_limit() {
    const MESSAGES: usize = 100;
    const PER_SECOND: f64 = 20.0;
    const BURST: f64 = 5.0;
    let limits = Limits::messages(Rate {
        per_second: PER_SECOND,
        burst: BURST,
    });
    let timeline = Timeline::default();
    let Some((database, engines, providers)) = two_engines(
        config(HashMap::from([("limited".to_owned(), limits)])),
        &timeline,
    )
    .await
    else {
        return;
    };
    let org = organization(&engines[0]).await;
    queue(&engines[0], &org, MESSAGES, "Hello", |_| None).await;

    run_until(
        &engines,
        || timeline.lock().unwrap().len() >= MESSAGES,
        || {},
    )
    .await;

    let sends: Vec<usize> = providers
        .iter()
        .map(|p| p.sent.load(Ordering::SeqCst))
        .collect();
    assert_eq!(sends.iter().sum::<usize>(), MESSAGES, "each message once");
    assert!(
        sends.iter().all(|&n| n > 0),
        "both dispatchers took part: {sends:?}"
    );
    // In any one-second window: at most a second's worth, the burst, and what the two
    // processes may hold in their reservoirs — with room to spare. Without a shared limit
    // both would send all 100 within a fraction of a second.
    let busiest = busiest_second(timeline.lock().unwrap().clone(), false);
    let bound = (PER_SECOND + BURST) as usize + 5;
    assert!(
        busiest <= bound,
        "{busiest} sends in one second (limit {PER_SECOND}/s, burst {BURST})"
    );
    drop(engines);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_one_providers_segments_per_second() {
    const MESSAGES: usize = 30;
    const SEGMENTS_PER_SECOND: f64 = 15.0;
    // Messages alone would let everything through at once.
    let limits = Limits {
        messages: Some(Rate::per_second(1_000.0)),
        segments: Some(Rate::per_second(SEGMENTS_PER_SECOND)),
        ..Limits::default()
    };
    let timeline = Timeline::default();
    let Some((database, engines, providers)) = two_engines(
        config(HashMap::from([("limited".to_owned(), limits)])),
        &timeline,
    )
    .await
    else {
        return;
    };
    let org = organization(&engines[0]).await;
    // 400 GSM-7 characters: 3 segments of 153.
    queue(&engines[0], &org, MESSAGES, &"a".repeat(400), |_| None).await;

    run_until(
        &engines,
        || timeline.lock().unwrap().len() >= MESSAGES,
        || {},
    )
    .await;

    let times = timeline.lock().unwrap().clone();
    assert!(times.iter().all(|&(_, segments)| segments == 3));
    // A second's worth, the burst (one second's worth) and a message's segments held in each
    // process's reservoir, with room to spare: 39 of the 90 segments. Without the segments
    // limit all 90 would go within a fraction of a second.
    let busiest = busiest_second(times, false);
    let bound = 2 * SEGMENTS_PER_SECOND as usize + 2 * 3 + 3;
    assert!(
        busiest <= bound,
        "{busiest} segments in one second (limit {SEGMENTS_PER_SECOND}/s)"
    );
    let sends: Vec<usize> = providers
        .iter()
        .map(|p| p.sent.load(Ordering::SeqCst))
        .collect();
    assert_eq!(sends.iter().sum::<usize>(), MESSAGES, "each message once");
    assert!(
        sends.iter().all(|&n| n > 0),
        "both dispatchers took part: {sends:?}"
    );
    drop(engines);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_one_sender_numbers_rate_limit() {
    const MESSAGES: usize = 30;
    const PER_SENDER: f64 = 5.0;
    const NUMBER: &str = "+14155550100";
    let timeline = Timeline::default();
    let Some((database, engines, _)) = two_engines(config(HashMap::new()), &timeline).await else {
        return;
    };
    let org = organization(&engines[0]).await;
    // The organization's own (simulated) account: fast as an account, slow per number.
    let account = create_account(
        engines[0].store.as_ref(),
        None,
        org.id,
        &AccountInput {
            name: Some("long-code".into()),
            kind: Some("simulator".into()),
            senders: Some(vec![("phone_number".into(), NUMBER.into())]),
            messages_per_second: Some(1_000.0),
            sender_messages_per_second: Some(Some(PER_SENDER)),
            ..AccountInput::default()
        },
        SystemClock.now(),
    )
    .await
    .unwrap();
    set_route(
        engines[0].store.as_ref(),
        org.id,
        RouteKey::DEFAULT,
        &[account.id.to_string()],
        SystemClock.now(),
    )
    .await
    .unwrap();
    // Half name the number, half leave it to the account's default: one sender either way.
    queue(&engines[0], &org, MESSAGES, "Hello", |i| {
        (i % 2 == 0).then(|| NUMBER.to_owned())
    })
    .await;

    // Both processes' simulators stand for the account; their running total is sampled.
    let accepted = || {
        engines
            .iter()
            .map(|e| e.simulator.total_accepted() as usize)
            .sum::<usize>()
    };
    let mut totals = Vec::new();
    run_until(
        &engines,
        || accepted() >= MESSAGES,
        || totals.push((Instant::now(), accepted())),
    )
    .await;

    assert_eq!(accepted(), MESSAGES, "each message once");
    assert!(
        engines.iter().all(|e| e.simulator.total_accepted() > 0),
        "both dispatchers took part"
    );
    // A second's worth, the burst (one second's worth) and a token in each process's
    // reservoir, with room to spare: 14 of the 30. Without the per-sender limit all 30 would go
    // within a fraction of a second.
    let busiest = busiest_second(totals, true);
    let bound = 2 * PER_SENDER as usize + 4;
    assert!(
        busiest <= bound,
        "{busiest} sends from one number in one second (limit {PER_SENDER}/s)"
    );
    drop(engines);
    database.drop_database().await;
}
