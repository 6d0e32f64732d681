//! Failover between the providers of a route and the circuit breaker, stepped by hand with a
//! manual clock over a real SQLite store. The two providers here are scripted in-process so
//! each step's outcome is exact; the same logic against Twilio's and SNS's real interfaces is
//! covered end to end elsewhere.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_domain::status::MessageStatus;
use herald_engine::clock::{Clock, ManualClock};
use herald_engine::dispatcher::DispatcherConfig;
use herald_engine::intake::SendRequest;
use herald_engine::routing::{BreakerConfig, Health, Route, RouteTable};
use herald_engine::{Engine, EngineConfig, RoutingConfig};
use herald_providers::simulator::SimulatorConfig;
use herald_providers::{Accepted, Lookup, LookupQuery, Outbound, Provider, SendError};
use herald_store::{Insertion, Message, Organization, Scope, Store};
use herald_store_sqlite::{SqliteConfig, SqliteStore};
use jiff::SignedDuration;
use uuid::Uuid;

/// A provider that accepts, or refuses transiently or permanently, as the test says.
struct Scripted {
    name: &'static str,
    /// Refuse as an account whose credentials are wrong.
    unauthorized: AtomicBool,
    transient: AtomicBool,
    permanent: AtomicBool,
    calls: AtomicUsize,
    sent_to: Mutex<Vec<String>>,
}

impl Scripted {
    fn new(name: &'static str) -> Arc<Scripted> {
        Arc::new(Scripted {
            name,
            unauthorized: AtomicBool::new(false),
            transient: AtomicBool::new(false),
            permanent: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            sent_to: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for Scripted {
    fn name(&self) -> &str {
        self.name
    }

    async fn send(&self, message: &Outbound) -> Result<Accepted, SendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.permanent.load(Ordering::SeqCst) {
            return Err(SendError::Permanent {
                code: "21211".into(),
                message: "invalid number".into(),
            });
        }
        if self.unauthorized.load(Ordering::SeqCst) {
            return Err(SendError::Transient {
                code: herald_providers::sns::ACCOUNT_PROBLEM.into(),
                message: "The security token included in the request is invalid".into(),
                retry_after: None,
            });
        }
        if self.transient.load(Ordering::SeqCst) {
            return Err(SendError::Transient {
                code: "503".into(),
                message: "unavailable".into(),
                retry_after: None,
            });
        }
        self.sent_to.lock().unwrap().push(message.to.clone());
        Ok(Accepted {
            provider_message_id: format!("{}-{}", self.name, message.message_id),
            cost: None,
        })
    }

    async fn lookup(&self, _: &LookupQuery) -> Result<Lookup, SendError> {
        Ok(Lookup::Unsupported)
    }
}

struct World {
    engine: Engine,
    clock: Arc<ManualClock>,
    org: Organization,
    scope: Scope,
    alpha: Arc<Scripted>,
    beta: Arc<Scripted>,
    _dir: tempfile::TempDir,
}

const COOL_DOWN: Duration = Duration::from_secs(60);

async fn world(table: RouteTable) -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("herald.db").display());
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::connect(&url, &SqliteConfig::default())
            .await
            .unwrap(),
    );
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
        simulator: SimulatorConfig {
            auto_report: false,
            ..SimulatorConfig::default()
        },
        routing: RoutingConfig {
            table,
            breaker: BreakerConfig {
                failures_to_open: 2,
                cool_down: COOL_DOWN,
            },
        },
        dispatcher: DispatcherConfig::default(),
        ..EngineConfig::default()
    };
    let alpha = Scripted::new("alpha");
    let beta = Scripted::new("beta");
    let engine = Engine::with_providers(
        store,
        clock.clone(),
        config,
        vec![alpha.clone(), beta.clone()],
    )
    .unwrap();
    World {
        engine,
        clock,
        scope: Scope {
            org_id: org.id,
            mode: Mode::Live,
        },
        org,
        alpha,
        beta,
        _dir: dir,
    }
}

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

    /// Move past any retry backoff (at most the policy's cap) and dispatch what is due.
    async fn later(&self, by: Duration) {
        self.clock.advance(SignedDuration::try_from(by).unwrap());
    }

    async fn dispatch(&self) -> usize {
        self.engine
            .dispatcher
            .dispatch_once()
            .await
            .unwrap()
            .claimed
    }

    fn health(&self, name: &str) -> Health {
        self.engine
            .router
            .health()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    }
}

#[tokio::test]
async fn a_failing_provider_is_failed_over_then_rested_then_probed_back() {
    let w = world(RouteTable::default()).await;
    w.alpha.transient.store(true, Ordering::SeqCst);

    // First attempt on the preferred provider fails; the retry goes to the next one.
    let first = w.send("+14155550100").await;
    assert_eq!(w.dispatch().await, 1);
    assert_eq!(w.get(first).await.status, MessageStatus::Queued);
    w.later(Duration::from_secs(5)).await;
    assert_eq!(w.dispatch().await, 1);
    let sent = w.get(first).await;
    assert_eq!(sent.status, MessageStatus::Sent);
    assert_eq!(sent.provider.as_deref(), Some("beta"));
    assert_eq!((w.alpha.calls(), w.beta.calls()), (1, 1));

    // A second failure in a row opens alpha's breaker.
    let second = w.send("+14155550101").await;
    w.dispatch().await;
    assert!(matches!(w.health("alpha"), Health::Open(_)));
    w.later(Duration::from_secs(5)).await;
    w.dispatch().await;
    assert_eq!(w.get(second).await.provider.as_deref(), Some("beta"));

    // While it is open, even first attempts go straight to beta: alpha is not called.
    let calls = w.alpha.calls();
    let resting = w.send("+14155550102").await;
    w.dispatch().await;
    let message = w.get(resting).await;
    assert_eq!(
        (
            message.status,
            message.provider.as_deref(),
            message.attempts
        ),
        (MessageStatus::Sent, Some("beta"), 1)
    );
    assert_eq!(w.alpha.calls(), calls);

    // After the cool-down one message probes alpha; it has recovered, so traffic returns.
    w.alpha.transient.store(false, Ordering::SeqCst);
    w.later(COOL_DOWN).await;
    let probe = w.send("+14155550103").await;
    w.dispatch().await;
    assert_eq!(w.get(probe).await.provider.as_deref(), Some("alpha"));
    assert_eq!(w.health("alpha"), Health::Closed);
    let back = w.send("+14155550104").await;
    w.dispatch().await;
    assert_eq!(w.get(back).await.provider.as_deref(), Some("alpha"));
}

#[tokio::test]
async fn a_failed_probe_rests_the_provider_again() {
    let w = world(RouteTable::default()).await;
    w.alpha.transient.store(true, Ordering::SeqCst);
    for to in ["+14155550100", "+14155550101"] {
        w.send(to).await;
        w.dispatch().await;
    }
    assert!(matches!(w.health("alpha"), Health::Open(_)));
    w.later(COOL_DOWN).await;
    w.send("+14155550102").await;
    w.dispatch().await;
    assert!(
        matches!(w.health("alpha"), Health::Open(_)),
        "the probe failed, so alpha rests for another cool-down"
    );
}

#[tokio::test]
async fn a_permanent_refusal_is_not_failed_over() {
    let w = world(RouteTable::default()).await;
    w.alpha.permanent.store(true, Ordering::SeqCst);
    let id = w.send("+14155550100").await;
    w.dispatch().await;
    let message = w.get(id).await;
    assert_eq!(message.status, MessageStatus::Failed);
    assert_eq!(message.error_code.as_deref(), Some("21211"));
    assert_eq!(w.beta.calls(), 0);
    assert_eq!(
        w.health("alpha"),
        Health::Closed,
        "the provider itself is fine"
    );
}

#[tokio::test]
async fn routes_send_each_destination_through_its_own_providers() {
    let table = RouteTable {
        routes: vec![
            Route {
                country: Some(Region::parse("GB").unwrap()),
                prefix: None,
                providers: vec!["beta".into()],
            },
            Route {
                country: Some(Region::parse("US").unwrap()),
                prefix: Some("1212".into()),
                providers: vec!["beta".into(), "alpha".into()],
            },
        ],
        default: vec![],
    };
    let w = world(table).await;
    let london = w.send("+442071838750").await;
    let new_york = w.send("+12125550100").await;
    let san_francisco = w.send("+14155550100").await;
    w.dispatch().await;
    assert_eq!(w.get(london).await.provider.as_deref(), Some("beta"));
    assert_eq!(w.get(new_york).await.provider.as_deref(), Some("beta"));
    assert_eq!(
        w.get(san_francisco).await.provider.as_deref(),
        Some("alpha")
    );
}

#[tokio::test]
async fn a_route_naming_an_unknown_provider_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("herald.db").display());
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::connect(&url, &SqliteConfig::default())
            .await
            .unwrap(),
    );
    let config = EngineConfig {
        routing: RoutingConfig {
            table: RouteTable {
                routes: vec![Route {
                    country: Some(Region::parse("FR").unwrap()),
                    prefix: None,
                    providers: vec!["nope".into()],
                }],
                default: vec![],
            },
            ..RoutingConfig::default()
        },
        ..EngineConfig::default()
    };
    let Err(error) = Engine::with_providers(
        store,
        Arc::new(ManualClock::new("2026-05-01T09:00:00Z".parse().unwrap())),
        config,
        vec![Scripted::new("alpha")],
    ) else {
        panic!("an unknown provider was accepted");
    };
    assert_eq!(
        error.to_string(),
        "the route for FR names provider \"nope\", which is not configured"
    );
}

#[tokio::test]
async fn an_account_refused_for_its_credentials_rests_at_once() {
    let w = world(RouteTable::default()).await;
    w.alpha.unauthorized.store(true, Ordering::SeqCst);
    let id = w.send("+14155550100").await;
    w.dispatch().await;
    // One refusal of the account is enough: no run of failures is needed.
    assert!(matches!(w.health("alpha"), Health::Open(_)));
    w.later(Duration::from_secs(5)).await;
    w.dispatch().await;
    assert_eq!(w.get(id).await.provider.as_deref(), Some("beta"));
}

#[tokio::test]
async fn a_last_attempts_server_error_still_counts_against_the_provider() {
    let w = world(RouteTable::default()).await;
    w.alpha.transient.store(true, Ordering::SeqCst);
    w.beta.transient.store(true, Ordering::SeqCst);
    let id = w.send("+14155550100").await;
    // Attempts alternate alpha, beta, alpha…; the message fails once they run out.
    for _ in 0..10 {
        w.later(Duration::from_secs(400)).await;
        if w.dispatch().await == 0 {
            break;
        }
    }
    assert_eq!(w.get(id).await.status, MessageStatus::Failed);
    // Every refusal counted against its provider, the last one too: both rest.
    assert!(matches!(w.health("alpha"), Health::Open(_)));
    assert!(matches!(w.health("beta"), Health::Open(_)));
}
