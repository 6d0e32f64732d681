//! Herald's engine: everything between the API and the providers.
//!
//! - [`intake`]: validating, encoding and pricing a send request into a storable message.
//! - [`acceptor`]: storing accepted messages with group commit.
//! - [`dispatcher`]: claiming due messages with leases and handing them to providers.
//! - [`routing`]: routes by destination, failover and circuit breakers.
//! - [`directory`]: organizations' own provider accounts and routes, as live providers.
//! - [`limits`]: rate limits (messages, segments, per sender) shared by every process on the
//!   database.
//! - [`pricing`]: segment prices, configured and learned from a provider's pricing API.
//! - [`recorder`]: recording send results and provider reports with group commit.
//! - [`charges`]: asking providers what settled messages cost.
//! - [`opt_outs`]: keeping organizations' suppression lists in step with SNS's.
//! - [`maintenance`]: releasing scheduled messages, expiring leases, reconciliation.
//! - [`templates`]: checking templates before they are saved, and rendering them for a send
//!   with a contact's fields and the request's variables.
//! - [`automation`]: drip sequences and triggers (contact created, contact age, named events).
//! - [`clock`]: the time source, replaceable in tests.
//! - [`credits`]: organizations' allowed destination countries, read through a short cache.
//! - [`accounts`]: organizations' provider accounts and routes; [`secrets`] seals their
//!   credentials with the server's key, and [`routing`] picks the route for a recipient.
//!
//! [`Engine`] wires these together over one [`Store`]; the web layer and the CLI use it.

pub mod acceptor;
pub mod accounts;
pub mod automation;
pub mod broadcasts;
pub mod campaigns;
pub mod charges;
pub mod clock;
pub mod contacts;
pub mod credits;
pub mod directory;
pub mod dispatcher;
pub mod intake;
pub mod keys;
pub mod limits;
pub mod maintenance;
pub mod opt_outs;
pub mod pricing;
pub mod recorder;
pub mod retry;
pub mod routing;
pub mod secrets;
pub mod stats;
pub mod templates;

use std::sync::Arc;

use herald_domain::status::MessageStatus;
use herald_providers::Provider;
use herald_providers::simulator::{Simulator, SimulatorConfig};
use herald_store::{
    IdempotencyRecord, Insertion, NewMessage, Organization, Scope, Store, StoreError,
};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use acceptor::Acceptor;
use clock::Clock;
use dispatcher::{Dispatcher, DispatcherConfig, Router, UnknownProvider};
use intake::{FieldError, IntakeConfig, SendRequest};
use maintenance::{Maintenance, MaintenanceConfig};
use recorder::Recorder;

/// How creating something that takes an idempotency key went (a campaign, a drip, a trigger).
#[derive(Debug)]
pub enum Created<T> {
    Created(T),
    /// The key was used before with the same request: the id of what was created then.
    Replayed(Uuid),
    /// The key was used before with a different request; nothing was stored.
    KeyReused,
}

impl<T> Created<T> {
    /// What the store said of storing `made`.
    pub(crate) fn of(creation: herald_store::CampaignCreation, made: T) -> Created<T> {
        match creation {
            herald_store::CampaignCreation::Created => Created::Created(made),
            herald_store::CampaignCreation::Replayed(id) => Created::Replayed(id),
            herald_store::CampaignCreation::KeyReused => Created::KeyReused,
        }
    }
}

/// Everything the engine can be tuned by.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub intake: IntakeConfig,
    pub dispatcher: DispatcherConfig,
    pub maintenance: MaintenanceConfig,
    pub simulator: SimulatorConfig,
    pub routing: RoutingConfig,
    /// Seals provider credentials at rest; without it, accounts with secrets are refused.
    pub secret_key: Option<secrets::SecretKey>,
    /// Lets the bearer grant credits and set spend limits through the API (`POST /v1/credits`);
    /// without it those endpoints refuse everyone. Kept as its SHA-256, so it is compared
    /// without revealing it.
    pub operator_token: Option<[u8; 32]>,
    /// Herald's base URL as providers reach it, for the status callbacks of organizations'
    /// Twilio accounts.
    pub public_url: Option<String>,
    /// How long after a message's final status to ask its provider what it charged (Twilio
    /// prices a message a little after delivery); asked again at 3× and 10× this.
    pub charge_delay: std::time::Duration,
    /// How often organizations' SNS accounts' opted-out lists are imported into their
    /// suppression lists (also on demand through the API).
    pub sns_opt_out_sync: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            intake: IntakeConfig::default(),
            dispatcher: DispatcherConfig::default(),
            maintenance: MaintenanceConfig::default(),
            simulator: SimulatorConfig::default(),
            routing: RoutingConfig::default(),
            secret_key: None,
            operator_token: None,
            public_url: None,
            charge_delay: std::time::Duration::from_secs(60),
            sns_opt_out_sync: std::time::Duration::from_secs(6 * 60 * 60),
        }
    }
}

/// Routes for live traffic and the circuit breakers' settings.
#[derive(Clone, Debug, Default)]
pub struct RoutingConfig {
    pub table: routing::RouteTable,
    pub breaker: routing::BreakerConfig,
}

/// The engine over one store.
pub struct Engine {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: EngineConfig,
    pub simulator: Simulator,
    pub router: Arc<Router>,
    /// Segment prices for estimates.
    pub prices: Arc<pricing::PriceBook>,
    pub recorder: Recorder,
    charges: charges::Charges,
    pub acceptor: Acceptor,
    pub dispatcher: Arc<Dispatcher>,
    pub maintenance: Arc<Maintenance>,
    /// What the engine has done since it started.
    pub counters: Arc<stats::Counters>,
    /// Wakes the dispatcher when this process queues work.
    wake: Arc<Notify>,
    /// Allowed destination countries, cached.
    geo: credits::Geo,
    /// Campaign runs whose messages this process's dispatchers hold back.
    pub campaign_holds: Arc<campaigns::CampaignHolds>,
    /// This process, as the holder of campaign runs' leases.
    pub campaign_owner: Uuid,
    /// Wakes the campaign runner (a campaign started or resumed).
    pub campaign_wake: Arc<Notify>,
}

impl Engine {
    /// Build the engine with at most one live provider and no routes. Spawns the report writer
    /// (and the simulator's reporter), so it must be called inside a Tokio runtime.
    ///
    /// # Panics
    /// When `config.routing` names a provider other than `live` or the simulator; use
    /// [`Engine::with_providers`] to have that reported.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        live: Option<Arc<dyn Provider>>,
    ) -> Engine {
        Engine::with_providers(store, clock, config, live.into_iter().collect())
            .expect("the routes name only configured providers")
    }

    /// Build the engine over the live providers `live` (in order of preference where no route
    /// says otherwise), routed by `config.routing`.
    pub fn with_providers(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        live: Vec<Arc<dyn Provider>>,
    ) -> Result<Engine, UnknownProvider> {
        let counters = Arc::new(stats::Counters::default());
        let recorder = Recorder::spawn(store.clone(), clock.clone(), counters.clone());
        let acceptor = Acceptor::spawn(store.clone(), clock.clone());
        let simulator = Simulator::new(config.simulator.clone(), Arc::new(recorder.clone()));
        let directory = Arc::new(directory::Directory::new(
            store.clone(),
            config.secret_key.clone(),
            config.public_url.clone(),
            Arc::new(simulator.clone()),
        ));
        let router = Arc::new(
            Router::with_routes(
                Arc::new(simulator.clone()),
                live,
                config.routing.table.clone(),
                config.routing.breaker,
            )?
            .with_directory(directory),
        );
        if let Some(name) = config
            .dispatcher
            .rate_limits
            .keys()
            .find(|name| router.by_name(name).is_none())
        {
            return Err(UnknownProvider {
                place: "a rate limit".into(),
                name: name.clone(),
            });
        }
        let wake = Arc::new(Notify::new());
        let campaign_holds = Arc::new(campaigns::CampaignHolds::default());
        let dispatcher = Arc::new(
            Dispatcher::new(
                store.clone(),
                router.clone(),
                recorder.clone(),
                clock.clone(),
                config.dispatcher.clone(),
                counters.clone(),
                config.intake.quiet_hours.clone(),
            )
            .with_campaign_holds(campaign_holds.clone()),
        );
        let maintenance = Arc::new(Maintenance::new(
            store.clone(),
            router.clone(),
            clock.clone(),
            config.maintenance.clone(),
            wake.clone(),
        ));
        let prices = Arc::new(pricing::PriceBook::new(
            config.intake.prices.clone(),
            None,
            store.clone(),
            clock.clone(),
        ));
        let charges =
            charges::Charges::spawn(router.clone(), recorder.clone(), config.charge_delay);
        Ok(Engine {
            charges,
            prices,
            store,
            clock,
            config,
            simulator,
            router,
            recorder,
            acceptor,
            dispatcher,
            maintenance,
            counters,
            wake,
            geo: credits::Geo::default(),
            campaign_holds,
            campaign_owner: Uuid::now_v7(),
            campaign_wake: Arc::new(Notify::new()),
        })
    }

    /// Refine the configured prices with `source`'s pricing API, starting from the prices it
    /// gave before (kept in the store).
    pub async fn with_price_source(mut self, source: Arc<dyn pricing::PriceSource>) -> Engine {
        let book = pricing::PriceBook::new(
            self.config.intake.prices.clone(),
            Some(source),
            self.store.clone(),
            self.clock.clone(),
        );
        book.load().await;
        self.prices = Arc::new(book);
        self
    }

    /// Refuse `message` (field `to`) when its destination country is not one `org` may send
    /// to. Checked before anything is stored.
    /// The destination countries `org` may send to.
    pub async fn allowed_countries(
        &self,
        org: &Organization,
    ) -> Result<Arc<Vec<herald_domain::phone::Region>>, StoreError> {
        self.geo.allowed(self.store.as_ref(), org).await
    }

    pub async fn check_destination(
        &self,
        org: &Organization,
        message: &NewMessage,
    ) -> Result<Result<(), FieldError>, StoreError> {
        let allowed = self.geo.allowed(self.store.as_ref(), org).await?;
        Ok(credits::Geo::check(&allowed, message))
    }

    /// Replace the destination countries `org_id` may send to; `false` when there is no such
    /// organization.
    pub async fn set_allowed_countries(
        &self,
        org_id: Uuid,
        countries: &[herald_domain::phone::Region],
    ) -> Result<bool, StoreError> {
        let done = self.store.set_allowed_countries(org_id, countries).await?;
        self.geo.forget(org_id);
        Ok(done)
    }

    /// After a provider reported a message's final status without its price, ask the provider
    /// what it charged (see [`charges`]) and record it as the message's actual cost.
    pub fn collect_charge(&self, org_id: Uuid, report: herald_store::ProviderReport) {
        self.charges.collect(org_id, report);
    }

    /// Import the numbers SNS lists as opted out for an organization's SNS account into the
    /// organization's suppression list; see [`opt_outs::import_sns`].
    pub async fn sync_sns_opt_outs(
        &self,
        org_id: Uuid,
        account_id: Uuid,
    ) -> Result<Option<usize>, String> {
        opt_outs::import_sns(
            self.store.as_ref(),
            self.config.secret_key.as_ref(),
            self.clock.as_ref(),
            org_id,
            account_id,
        )
        .await
    }

    /// Tell the organization's SNS accounts that `phone` opted back in; see
    /// [`opt_outs::sns_opt_in`].
    pub async fn sns_opt_in(&self, org_id: Uuid, phone: &str) {
        opt_outs::sns_opt_in(
            self.store.as_ref(),
            self.config.secret_key.as_ref(),
            org_id,
            phone,
        )
        .await
    }

    /// Validate and price a send request for `org`.
    pub fn prepare(
        &self,
        org: &Organization,
        scope: Scope,
        api_key_id: Option<Uuid>,
        request: &SendRequest,
    ) -> Result<NewMessage, Vec<FieldError>> {
        intake::prepare(
            &self.config.intake,
            &self.prices,
            org,
            scope,
            api_key_id,
            request,
            self.clock.now(),
        )
    }

    /// Hold a promotional message until the recipient's quiet hours end: its send time moves
    /// to the next opening of the window in the contact's own time zone, else in every zone of
    /// its number's country. Transactional messages, and messages already due inside the
    /// window, are left as they are. Returns whether the message was held.
    pub async fn hold_for_quiet_hours(
        &self,
        org_id: Uuid,
        message: &mut NewMessage,
    ) -> Result<bool, StoreError> {
        if message.kind != herald_domain::message::MessageType::Promotional {
            return Ok(false);
        }
        let contact = self
            .store
            .find_contact_by_phone(org_id, &message.to)
            .await?;
        Ok(hold_for_quiet_hours(
            &self.config.intake.quiet_hours,
            contact.as_ref(),
            message,
        ))
    }

    /// An account of `org_id` with its decrypted credentials, for building its provider client.
    pub async fn provider_credentials(
        &self,
        org_id: Uuid,
        account_id: Uuid,
    ) -> Result<
        Option<(herald_store::ProviderAccount, accounts::Credentials)>,
        accounts::CredentialsError,
    > {
        accounts::open_credentials(
            self.store.as_ref(),
            self.config.secret_key.as_ref(),
            org_id,
            account_id,
        )
        .await
    }

    /// Store a prepared message durably and wake the dispatcher if it can go now.
    pub async fn accept(
        &self,
        message: &NewMessage,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<Insertion, StoreError> {
        let insertion = self
            .acceptor
            .accept(message.clone(), idempotency.cloned())
            .await?;
        if let Insertion::Created(created) = &insertion
            && created.status == MessageStatus::Queued
        {
            self.wake.notify_one();
        }
        Ok(insertion)
    }

    /// Run the dispatcher and the scheduler until `shutdown`; the returned set finishes when
    /// both have stopped cleanly.
    pub fn start(&self, shutdown: CancellationToken) -> JoinSet<()> {
        let mut workers = JoinSet::new();
        workers.spawn(
            self.dispatcher
                .clone()
                .run(shutdown.clone(), self.wake.clone()),
        );
        workers.spawn(self.maintenance.clone().run(shutdown.clone()));
        workers.spawn(opt_outs::sync_periodically(
            self.store.clone(),
            self.config.secret_key.clone(),
            self.config.sns_opt_out_sync,
            self.clock.clone(),
            shutdown,
        ));
        workers
    }
}

/// Hold a promotional `message` for its recipient's quiet hours (`contact`'s time zone when it
/// has one, else the number's country): `send_at` moves to the window's next opening. Answers
/// whether it moved.
pub(crate) fn hold_for_quiet_hours(
    quiet_hours: &herald_domain::quiet_hours::QuietHours,
    contact: Option<&herald_store::Contact>,
    message: &mut NewMessage,
) -> bool {
    use herald_domain::quiet_hours::Whereabouts;
    if message.kind != herald_domain::message::MessageType::Promotional {
        return false;
    }
    let zone = contact.and_then(contact_zone);
    let due = message.send_at.unwrap_or(message.created_at);
    match quiet_hours.next_allowed(
        due,
        Whereabouts::of(zone.as_ref(), message.country),
        message.country,
    ) {
        Some(allowed) if allowed > due => {
            message.send_at = Some(allowed);
            true
        }
        _ => false,
    }
}

/// A recipient's own time zone: their contact's, else their number's country's when it has
/// only one; `None` when that says nothing.
pub(crate) fn own_zone(
    contact: Option<&herald_store::Contact>,
    country: Option<herald_domain::phone::Region>,
) -> Option<jiff::tz::TimeZone> {
    contact.and_then(contact_zone).or_else(|| {
        match country.map(herald_domain::quiet_hours::zones_of) {
            Some([only]) => Some(only.clone()),
            _ => None,
        }
    })
}

/// A contact's own time zone, when it names one the zone database knows.
pub(crate) fn contact_zone(contact: &herald_store::Contact) -> Option<jiff::tz::TimeZone> {
    contact
        .time_zone
        .as_deref()
        .and_then(|name| jiff::tz::TimeZone::get(name).ok())
}
