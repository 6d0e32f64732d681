//! Organizations' own provider accounts as live providers.
//!
//! An organization that has set routes sends its live traffic through its own accounts: the
//! route for a recipient (see [`crate::routing::resolve`]) names accounts in order, and each
//! becomes a provider client built from its decrypted credentials. Routes and clients are
//! cached for a few seconds, so a send does not read them from the database, and a change made
//! through the API or the CLI (in any process) takes effect within that time; a client is
//! rebuilt only when its account changed, so its connections to the provider are kept.
//!
//! Each account's provider is named `{kind}/{account id}` on the messages it sends, so
//! reports, reconciliation, circuit breakers and rate limits all keep accounts apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_domain::phone::Region;
use herald_providers::sns::{Sns, SnsConfig, SnsKeys};
use herald_providers::twilio::{Twilio, TwilioConfig};
use herald_providers::{Accepted, Lookup, LookupQuery, Outbound, Provider, SendError};
use herald_store::rate::Rate;
use herald_store::{ProviderAccount, Route, SenderKind, Store};
use jiff::Timestamp;
use uuid::Uuid;

use crate::accounts::{Credentials, open_credentials};
use crate::limits::Limits;
use crate::routing::resolve;
use crate::secrets::SecretKey;

/// How long routes and accounts are used before they are read again.
const FRESH: Duration = Duration::from_secs(5);

/// One account, ready to send.
#[derive(Clone)]
pub struct AccountProvider {
    pub provider: Arc<dyn Provider>,
    /// The account's rate limits, shared by every message it sends.
    pub limits: Arc<Limits>,
    pub enabled: bool,
    updated_at: Timestamp,
    fetched: Instant,
}

/// What the organization's routes say for one recipient.
pub enum Candidates {
    /// The organization has no route for this recipient: the server's providers carry it.
    NoRoute,
    /// The accounts of its route, in order, those that are enabled and could be opened.
    Accounts(Vec<AccountProvider>),
}

/// An organization's routes and when they were read.
type CachedRoutes = (Instant, Arc<Vec<Route>>);

/// The accounts and routes of every organization, read through a short cache.
pub struct Directory {
    store: Arc<dyn Store>,
    key: Option<SecretKey>,
    /// Herald's public base URL, for the status callbacks of Twilio accounts.
    public_url: Option<String>,
    simulator: Arc<dyn Provider>,
    routes: Mutex<HashMap<Uuid, CachedRoutes>>,
    /// By organization and account, so one organization can never be handed another's.
    accounts: Mutex<HashMap<(Uuid, Uuid), AccountProvider>>,
}

impl Directory {
    pub fn new(
        store: Arc<dyn Store>,
        key: Option<SecretKey>,
        public_url: Option<String>,
        simulator: Arc<dyn Provider>,
    ) -> Directory {
        Directory {
            store,
            key,
            public_url: public_url.map(|url| url.trim_end_matches('/').to_owned()),
            simulator,
            routes: Mutex::default(),
            accounts: Mutex::default(),
        }
    }

    /// The accounts to try for a live message from `org_id` to `to`.
    pub async fn candidates(&self, org_id: Uuid, to: &str, country: Option<Region>) -> Candidates {
        let routes = match self.routes(org_id).await {
            Ok(routes) => routes,
            Err(error) => {
                tracing::warn!(%error, %org_id, "cannot read the organization's routes");
                return Candidates::Accounts(Vec::new());
            }
        };
        let Some(route) = resolve(&routes, to, country) else {
            return Candidates::NoRoute;
        };
        let mut accounts = Vec::with_capacity(route.accounts.len());
        for id in &route.accounts {
            if let Some(account) = self.account(org_id, *id).await
                && account.enabled
            {
                accounts.push(account);
            }
        }
        Candidates::Accounts(accounts)
    }

    /// The provider a message was recorded against, when it is one of `org_id`'s accounts.
    pub async fn provider_named(&self, org_id: Uuid, name: &str) -> Option<Arc<dyn Provider>> {
        let (_, id) = name.split_once('/')?;
        let id = Uuid::parse_str(id).ok()?;
        Some(self.account(org_id, id).await?.provider)
    }

    async fn routes(&self, org_id: Uuid) -> Result<Arc<Vec<Route>>, herald_store::StoreError> {
        if let Some((fetched, routes)) = self
            .routes
            .lock()
            .expect("directory cache lock")
            .get(&org_id)
            && fetched.elapsed() < FRESH
        {
            return Ok(routes.clone());
        }
        // Read without holding the cache: other organizations' sends must not wait on it.
        let routes = Arc::new(self.store.list_routes(org_id).await?);
        self.routes
            .lock()
            .expect("directory cache lock")
            .insert(org_id, (Instant::now(), routes.clone()));
        Ok(routes)
    }

    /// One account of `org_id`, from the cache while fresh; rebuilt only when it changed.
    async fn account(&self, org_id: Uuid, id: Uuid) -> Option<AccountProvider> {
        let cached = self
            .accounts
            .lock()
            .expect("directory cache lock")
            .get(&(org_id, id))
            .cloned();
        if let Some(cached) = &cached
            && cached.fetched.elapsed() < FRESH
        {
            return Some(cached.clone());
        }
        // Read and build without holding the cache (building an SNS client may read the AWS
        // credential chain): other accounts' sends must not wait on it.
        let current = match self.store.get_provider_account(org_id, id).await {
            Ok(Some(account)) => account,
            Ok(None) => {
                self.accounts
                    .lock()
                    .expect("directory cache lock")
                    .remove(&(org_id, id));
                return None;
            }
            Err(error) => {
                tracing::warn!(%error, account_id = %id, "cannot read a provider account");
                return cached;
            }
        };
        let provider = match cached {
            Some(cached) if cached.updated_at == current.updated_at => cached.provider,
            _ => self.build(org_id, id).await?,
        };
        let entry = AccountProvider {
            provider,
            limits: Arc::new(limits(&current)),
            enabled: current.enabled,
            updated_at: current.updated_at,
            fetched: Instant::now(),
        };
        self.accounts
            .lock()
            .expect("directory cache lock")
            .insert((org_id, id), entry.clone());
        Some(entry)
    }

    async fn build(&self, org_id: Uuid, id: Uuid) -> Option<Arc<dyn Provider>> {
        let (account, credentials) = match open_credentials(
            self.store.as_ref(),
            self.key.as_ref(),
            org_id,
            id,
        )
        .await
        {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(error) => {
                tracing::error!(%error, account_id = %id, "cannot open a provider account's credentials");
                return None;
            }
        };
        let name = format!("{}/{}", account.kind.as_str(), account.id);
        let inner: Arc<dyn Provider> = match credentials {
            Credentials::Twilio {
                account_sid,
                auth_token,
                base_url,
            } => {
                let mut config = TwilioConfig::new(account_sid, auth_token.expose());
                if let Some(base_url) = base_url {
                    config.base_url = base_url;
                }
                config.from = sender(&account, SenderKind::PhoneNumber);
                config.messaging_service_sid = sender(&account, SenderKind::MessagingServiceSid);
                config.status_callback = self
                    .public_url
                    .as_ref()
                    .map(|url| format!("{url}/hooks/twilio/accounts/{}/status", account.id));
                match Twilio::new(config) {
                    Ok(twilio) => Arc::new(twilio),
                    Err(error) => {
                        tracing::error!(%error, account_id = %id, "cannot set up a Twilio account");
                        return None;
                    }
                }
            }
            credentials @ Credentials::Sns { .. } => {
                Arc::new(sns_client(&account, credentials).await?)
            }
            Credentials::Simulator => self.simulator.clone(),
        };
        Some(Arc::new(Named { name, inner }))
    }
}

/// The account's limits as buckets. Messages that name no sender count against the account's
/// phone number, unless a Messaging Service picks the number (Twilio prefers it, see
/// `herald_providers::twilio`).
fn limits(account: &ProviderAccount) -> Limits {
    let default_sender = if sender(account, SenderKind::MessagingServiceSid).is_some() {
        None
    } else {
        sender(account, SenderKind::PhoneNumber)
    };
    Limits {
        messages: Some(Rate::per_second(account.limits.messages_per_second)),
        segments: account.limits.segments_per_second.map(Rate::per_second),
        per_sender: account
            .limits
            .sender_messages_per_second
            .map(Rate::per_second),
        default_sender,
    }
}

/// An SNS client for an organization's SNS account (`None` for other kinds).
pub async fn sns_client(account: &ProviderAccount, credentials: Credentials) -> Option<Sns> {
    let Credentials::Sns {
        region,
        access_key_id,
        secret_access_key,
        endpoint,
        ..
    } = credentials
    else {
        return None;
    };
    let mut config = SnsConfig::new(region);
    config.endpoint_url = endpoint;
    config.keys = Some(SnsKeys {
        access_key_id,
        secret_access_key: secret_access_key.expose().to_owned(),
    });
    config.sender_id = sender(account, SenderKind::AlphanumericId);
    Some(Sns::new(config).await)
}

/// The account's first sender of `kind`.
fn sender(account: &ProviderAccount, kind: SenderKind) -> Option<String> {
    account
        .senders
        .iter()
        .find(|s| s.kind == kind)
        .map(|s| s.value.clone())
}

/// A provider under an account's name.
struct Named {
    name: String,
    inner: Arc<dyn Provider>,
}

#[async_trait]
impl Provider for Named {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &Outbound) -> Result<Accepted, SendError> {
        self.inner.send(message).await
    }

    async fn lookup(&self, query: &LookupQuery) -> Result<Lookup, SendError> {
        self.inner.lookup(query).await
    }

    async fn charged(
        &self,
        provider_message_id: &str,
    ) -> Result<Option<herald_domain::money::Amount>, SendError> {
        self.inner.charged(provider_message_id).await
    }
}

#[cfg(test)]
mod tests {
    use herald_store::{ProviderKind, RateLimits, Sender};

    use super::*;

    fn account(senders: &[(SenderKind, &str)]) -> ProviderAccount {
        ProviderAccount {
            id: Uuid::nil(),
            org_id: Uuid::nil(),
            name: "twilio-us".into(),
            kind: ProviderKind::Twilio,
            credentials_shown: Vec::new(),
            senders: senders
                .iter()
                .map(|(kind, value)| Sender {
                    kind: *kind,
                    value: (*value).into(),
                })
                .collect(),
            limits: RateLimits {
                messages_per_second: 10.0,
                segments_per_second: Some(30.0),
                sender_messages_per_second: Some(1.0),
            },
            enabled: true,
            created_at: Timestamp::UNIX_EPOCH,
            updated_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn an_accounts_limits_become_buckets_of_one_seconds_worth() {
        let limits = limits(&account(&[
            (SenderKind::AlphanumericId, "ACME"),
            (SenderKind::PhoneNumber, "+14155550100"),
        ]));
        assert_eq!(limits.messages, Some(Rate::per_second(10.0)));
        assert_eq!(limits.segments, Some(Rate::per_second(30.0)));
        assert_eq!(limits.per_sender, Some(Rate::per_second(1.0)));
        assert_eq!(limits.default_sender.as_deref(), Some("+14155550100"));
    }

    #[test]
    fn a_messaging_service_leaves_no_default_sender_to_limit() {
        let limits = limits(&account(&[
            (SenderKind::PhoneNumber, "+14155550100"),
            (SenderKind::MessagingServiceSid, "MG0123"),
        ]));
        assert_eq!(limits.default_sender, None);
    }
}
