//! A Herald server on 127.0.0.1:0 for end-to-end tests, on a fresh SQLite file or a fresh
//! PostgreSQL database.

#![allow(dead_code)]

pub mod fake_twilio;

use std::sync::Arc;
use std::time::Duration;

use herald_domain::message::Mode;
use herald_domain::phone::Region;
use herald_engine::clock::{Clock, SystemClock};
use herald_engine::{Engine, EngineConfig, keys};
use herald_providers::Provider;
use herald_providers::twilio::{Twilio, TwilioConfig};
use herald_store::{Organization, Store};
use herald_store_postgres::test_support::{TestDatabase, fresh_database};
use herald_store_postgres::{PostgresConfig, PostgresStore};
use herald_store_sqlite::{SqliteConfig, SqliteStore};
use herald_web::AppState;
use herald_web::hooks::TwilioHook;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

enum Guard {
    Dir(tempfile::TempDir),
    Database(Box<TestDatabase>),
}

/// An organization with its keys.
pub struct Tenant {
    pub org_id: Uuid,
    pub live_key: String,
    pub test_key: String,
}

pub struct TestServer {
    pub base: String,
    /// The database the server runs on, for tests that look at raw rows.
    pub database_url: String,
    pub client: reqwest::Client,
    pub engine: Arc<Engine>,
    pub tenant: Tenant,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    workers: JoinSet<()>,
    guard: Guard,
}

/// The Twilio account of test servers with Twilio.
pub const TWILIO_TEST_SID: &str = "ACtest00000000000000000000000000";

pub fn test_config() -> EngineConfig {
    let mut config = EngineConfig {
        charge_delay: Duration::from_millis(50),
        secret_key: Some(herald_engine::secrets::SecretKey::parse(TEST_SECRET_KEY).unwrap()),
        ..EngineConfig::default()
    };
    config.simulator.delivery_delay = Duration::from_millis(20);
    config.maintenance.interval = Duration::from_millis(100);
    config.dispatcher.idle_poll = Duration::from_millis(50);
    config
}

/// The secret key test servers seal provider credentials with.
pub const TEST_SECRET_KEY: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

impl TestServer {
    /// A running server, or `None` when the backend is unavailable (PostgreSQL not running and
    /// not required).
    pub async fn start(backend: Backend) -> Option<TestServer> {
        TestServer::start_with(backend, test_config()).await
    }

    pub async fn start_with(backend: Backend, config: EngineConfig) -> Option<TestServer> {
        TestServer::start_full(backend, config, None).await
    }

    /// A server whose live traffic goes to Twilio at `twilio_base` with `auth_token`, and which
    /// verifies Twilio callbacks against its own address.
    pub async fn start_with_twilio(
        backend: Backend,
        twilio_base: &str,
        auth_token: &str,
    ) -> Option<TestServer> {
        TestServer::start_full(
            backend,
            test_config(),
            Some((twilio_base.to_owned(), auth_token.to_owned())),
        )
        .await
    }

    async fn start_full(
        backend: Backend,
        config: EngineConfig,
        twilio: Option<(String, String)>,
    ) -> Option<TestServer> {
        TestServer::start_with_providers(backend, config, twilio, None).await
    }

    /// A server whose live traffic goes to Twilio at `twilio` (base URL, auth token) and/or
    /// to SNS with `sns` (its configuration, and the secret its forwarded logs are signed
    /// with), routed by `config.routing`.
    pub async fn start_with_providers(
        backend: Backend,
        config: EngineConfig,
        twilio: Option<(String, String)>,
        sns: Option<(herald_providers::sns::SnsConfig, String)>,
    ) -> Option<TestServer> {
        TestServer::start_inner(backend, config, twilio, sns, Arc::new(SystemClock)).await
    }

    /// A server whose engine reads the time from `clock` (a `ManualClock` holds it still).
    pub async fn start_with_clock(
        backend: Backend,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Option<TestServer> {
        TestServer::start_inner(backend, config, None, None, clock).await
    }

    async fn start_inner(
        backend: Backend,
        config: EngineConfig,
        twilio: Option<(String, String)>,
        sns: Option<(herald_providers::sns::SnsConfig, String)>,
        clock: Arc<dyn Clock>,
    ) -> Option<TestServer> {
        let (store, guard, database_url): (Arc<dyn Store>, Guard, String) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("herald.db").display());
                let store = SqliteStore::connect(&url, &SqliteConfig::default())
                    .await
                    .unwrap();
                (Arc::new(store), Guard::Dir(dir), url)
            }
            Backend::Postgres => {
                let database = fresh_database().await?;
                let store = PostgresStore::connect(database.url(), &PostgresConfig::default())
                    .await
                    .unwrap();
                let url = database.url().to_owned();
                (Arc::new(store), Guard::Database(Box::new(database)), url)
            }
        };
        store.migrate().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut live: Vec<Arc<dyn Provider>> = Vec::new();
        let twilio_base = twilio.as_ref().map(|(base, _)| base.clone());
        let hook = match twilio {
            Some((twilio_base, auth_token)) => {
                let mut twilio = TwilioConfig::new(TWILIO_TEST_SID, &auth_token);
                twilio.base_url = twilio_base;
                twilio.from = Some("+15005550006".into());
                twilio.status_callback = Some(format!("{base}/hooks/twilio/status"));
                live.push(Arc::new(Twilio::new(twilio).unwrap()));
                Some(TwilioHook {
                    auth_token,
                    public_url: base.clone(),
                })
            }
            None => None,
        };
        let sns_hook = match sns {
            Some((config, secret)) => {
                live.push(Arc::new(herald_providers::sns::Sns::new(config).await));
                Some(Arc::new(herald_web::hooks::SnsHook::new(
                    secret.into_bytes(),
                )))
            }
            None => None,
        };
        let mut config = config;
        config.public_url = Some(base.clone());
        let pricing = twilio_base.as_deref().map(|base| {
            herald_providers::twilio::pricing::TwilioPricing::new(base, TWILIO_TEST_SID, "token")
                .unwrap()
        });
        let mut engine = Engine::with_providers(store, clock, config, live).unwrap();
        if let Some(pricing) = pricing {
            engine = engine.with_price_source(Arc::new(pricing)).await;
        }
        let engine = Arc::new(engine);
        let tenant = create_tenant(engine.store.as_ref(), "acme").await;

        let shutdown = CancellationToken::new();
        let mut workers = engine.start(shutdown.clone());
        workers.spawn(herald_engine::broadcasts::resume_periodically(
            engine.clone(),
            shutdown.clone(),
        ));
        workers.spawn(herald_engine::campaigns::runner::run_periodically(
            engine.clone(),
            shutdown.clone(),
        ));
        workers.spawn(herald_engine::automation::runner::run_periodically(
            engine.clone(),
            shutdown.clone(),
        ));
        let app = herald_web::app(AppState {
            twilio: hook,
            sns: sns_hook,
            replays: Default::default(),
            engine: engine.clone(),
        });
        let server = tokio::spawn(herald_web::serve(listener, app, shutdown.clone()));
        Some(TestServer {
            base,
            database_url,
            client: reqwest::Client::new(),
            engine,
            tenant,
            shutdown,
            server,
            workers,
            guard,
        })
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        while self.workers.join_next().await.is_some() {}
        if let Guard::Database(database) = self.guard {
            drop(self.engine);
            database.drop_database().await;
        }
    }

    pub async fn other_tenant(&self, name: &str) -> Tenant {
        create_tenant(self.engine.store.as_ref(), name).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, key: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url("/v1/messages"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        status_and_json(response).await
    }

    /// Any request with `key`, and a JSON body when given.
    pub async fn call(
        &self,
        method: reqwest::Method,
        key: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        status_and_json(request.send().await.unwrap()).await
    }

    pub async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        status_and_json(response).await
    }

    pub async fn post(&self, key: &str, path: &str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        status_and_json(response).await
    }

    /// Poll a message until it reaches `status`; panics with its last state after 20 s.
    pub async fn wait_for(&self, key: &str, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (code, message) = self.get(key, &format!("/v1/messages/{id}")).await;
            assert_eq!(code, 200, "{message}");
            if message["status"] == status {
                return message;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message never reached {status}: {message}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn message_count(&self) -> u64 {
        self.engine
            .store
            .count_messages(self.tenant.org_id)
            .await
            .unwrap()
    }
}

pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// An organization in the US allowed to send where the tests send: the US, Canada, the UK and
/// Guernsey, France and Germany.
pub async fn create_tenant(store: &dyn Store, name: &str) -> Tenant {
    let tenant = create_plain_tenant(store, name).await;
    let countries: Vec<Region> = ["US", "CA", "GB", "GG", "FR", "DE"]
        .iter()
        .map(|c| Region::parse(c).unwrap())
        .collect();
    assert!(
        store
            .set_allowed_countries(tenant.org_id, &countries)
            .await
            .unwrap()
    );
    tenant
}

/// An organization in the US as created by `herald org create`: it may send to the US only.
pub async fn create_plain_tenant(store: &dyn Store, name: &str) -> Tenant {
    let now = SystemClock.now();
    let org = Organization {
        id: Uuid::now_v7(),
        name: name.into(),
        default_region: Region::parse("US").unwrap(),
        created_at: now,
    };
    let live = keys::generate(org.id, Mode::Live, None, now);
    let test = keys::generate(org.id, Mode::Test, None, now);
    store
        .create_organization(&org, &[live.record, test.record])
        .await
        .unwrap();
    Tenant {
        org_id: org.id,
        live_key: live.secret,
        test_key: test.secret,
    }
}

/// Run each listed async fn (taking `&TestServer`) as a test on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = $crate::support::TestServer::start($crate::support::Backend::Sqlite).await.unwrap();
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(server) = $crate::support::TestServer::start($crate::support::Backend::Postgres).await else { return };
                    super::$case(&server).await;
                    server.stop().await;
                }
            )*
        }
    };
}
