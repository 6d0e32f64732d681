//! A provider's rate limit holds across processes: two engines ("processes") with their own
//! dispatchers share one PostgreSQL database and one provider limited to N messages a second.
//! Counts per one-second window are checked with generous bounds; the test never asserts how
//! fast the machine is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_engine::clock::{Clock, SystemClock};
use herald_engine::intake::SendRequest;
use herald_engine::{Engine, EngineConfig};
use herald_providers::simulator::SimulatorConfig;
use herald_providers::{Accepted, Lookup, LookupQuery, Outbound, Provider, SendError};
use herald_store::rate::Rate;
use herald_store::{Insertion, Organization, Scope, Store};
use herald_store_postgres::test_support::fresh_database;
use herald_store_postgres::{PostgresConfig, PostgresStore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MESSAGES: usize = 100;
const PER_SECOND: f64 = 20.0;
const BURST: f64 = 5.0;

/// One process's handle on the provider: counts its own sends, stamps them on a timeline
/// shared with the other process.
struct Counting {
    sent: AtomicUsize,
    timeline: Arc<Mutex<Vec<Instant>>>,
}

#[async_trait]
impl Provider for Counting {
    fn name(&self) -> &str {
        "limited"
    }

    async fn send(&self, message: &Outbound) -> Result<Accepted, SendError> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.timeline.lock().unwrap().push(Instant::now());
        Ok(Accepted {
            provider_message_id: message.message_id.to_string(),
            cost: None,
        })
    }

    async fn lookup(&self, _: &LookupQuery) -> Result<Lookup, SendError> {
        Ok(Lookup::Unsupported)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_one_providers_rate_limit() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let mut config = EngineConfig {
        simulator: SimulatorConfig {
            auto_report: false,
            ..SimulatorConfig::default()
        },
        ..EngineConfig::default()
    };
    config.dispatcher.batch_size = 10;
    config.dispatcher.idle_poll = Duration::from_millis(20);
    config.dispatcher.rate_limits = HashMap::from([(
        "limited".to_owned(),
        Rate {
            per_second: PER_SECOND,
            burst: BURST,
        },
    )]);

    let timeline = Arc::new(Mutex::new(Vec::new()));
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

    let org = Organization {
        id: Uuid::now_v7(),
        name: "acme".into(),
        default_region: Region::parse("US").unwrap(),
        created_at: SystemClock.now(),
    };
    engines[0]
        .store
        .create_organization(&org, &[])
        .await
        .unwrap();
    let scope = Scope {
        org_id: org.id,
        mode: Mode::Live,
    };
    for i in 0..MESSAGES {
        let request = SendRequest {
            to: Some(format!("+1415555{:04}", 100 + i)),
            body: Some("Hello".into()),
            ..SendRequest::default()
        };
        let message = engines[0].prepare(&org, scope, None, &request).unwrap();
        assert!(matches!(
            engines[0].accept(&message, None).await.unwrap(),
            Insertion::Created(_)
        ));
    }

    let shutdown = CancellationToken::new();
    let mut workers: Vec<_> = engines.iter().map(|e| e.start(shutdown.clone())).collect();
    // Wait for every message to be handed over (bounded, so a broken limiter fails the test
    // rather than hanging it).
    let deadline = Instant::now() + Duration::from_secs(120);
    while timeline.lock().unwrap().len() < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "the messages were never all sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    for set in &mut workers {
        while set.join_next().await.is_some() {}
    }

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
    let mut times = timeline.lock().unwrap().clone();
    times.sort();
    let bound = (PER_SECOND + BURST) as usize + 5;
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= bound,
            "{in_window} sends in one second (limit {PER_SECOND}/s, burst {BURST})"
        );
    }
    drop(engines);
    database.drop_database().await;
}
