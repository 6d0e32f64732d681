//! Provider accounts and routes as an organization configures them: validating what the API or
//! the command line was given (both go through here, so they accept exactly the same things),
//! sealing credentials with the server's [`SecretKey`], and opening them again for the code that
//! builds a provider client — [`open_credentials`] is the only place they are ever decrypted.

use std::collections::{BTreeMap, HashSet};

use herald_store::{
    AccountCreation, AccountRefusal, IdempotencyRecord, ProviderAccount, ProviderKind, Route,
    RouteKey, Store, StoreError,
};
use jiff::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::secrets::{CannotOpen, SecretKey};

mod checks;

pub use checks::route_key;
use checks::{credentials, kind, limits, name, senders};

/// Sending rate of an account created without one: modest enough for a new Twilio or SNS
/// account, and easy to raise.
pub const DEFAULT_MESSAGES_PER_SECOND: f64 = 10.0;
/// Enough for ordered failover; more only slows a failing send down.
pub const MAX_ROUTE_ACCOUNTS: usize = 10;

/// A secret string. Shown as `****` by `Debug`, so credentials can be logged by accident
/// without leaking.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the provider client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

/// An account's decrypted credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    Twilio {
        account_sid: String,
        auth_token: Secret,
        /// Instead of `https://api.twilio.com` (tests point it at a local mock).
        base_url: Option<String>,
    },
    Sns {
        region: String,
        access_key_id: String,
        secret_access_key: Secret,
        /// Instead of AWS's regional endpoint (tests point it at a local SNS).
        endpoint: Option<String>,
        /// Signs the delivery status logs forwarded to this account's hook.
        webhook_secret: Option<Secret>,
    },
    Simulator,
}

impl Credentials {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Credentials::Twilio { .. } => ProviderKind::Twilio,
            Credentials::Sns { .. } => ProviderKind::Sns,
            Credentials::Simulator => ProviderKind::Simulator,
        }
    }

    /// Whether there is anything to encrypt.
    fn has_secrets(&self) -> bool {
        !matches!(self, Credentials::Simulator)
    }

    /// What may be shown: identifiers as they are, each secret only as `"set"`.
    pub fn shown(&self) -> Vec<(String, String)> {
        let mut shown = Vec::new();
        let mut add = |name: &str, value: &str| shown.push((name.to_owned(), value.to_owned()));
        match self {
            Credentials::Twilio {
                account_sid,
                auth_token: _,
                base_url,
            } => {
                add("account_sid", account_sid);
                add("auth_token", "set");
                if let Some(url) = base_url {
                    add("base_url", url);
                }
            }
            Credentials::Sns {
                region,
                access_key_id,
                secret_access_key: _,
                endpoint,
                webhook_secret,
            } => {
                add("region", region);
                add("access_key_id", access_key_id);
                add("secret_access_key", "set");
                if let Some(url) = endpoint {
                    add("endpoint", url);
                }
                if webhook_secret.is_some() {
                    add("webhook_secret", "set");
                }
            }
            Credentials::Simulator => {}
        }
        shown
    }

    fn to_plaintext(&self) -> Vec<u8> {
        let value = match self {
            Credentials::Twilio {
                account_sid,
                auth_token,
                base_url,
            } => {
                json!({"account_sid": account_sid, "auth_token": auth_token.expose(), "base_url": base_url})
            }
            Credentials::Sns {
                region,
                access_key_id,
                secret_access_key,
                endpoint,
                webhook_secret,
            } => json!({"region": region, "access_key_id": access_key_id,
                        "secret_access_key": secret_access_key.expose(), "endpoint": endpoint,
                        "webhook_secret": webhook_secret.as_ref().map(Secret::expose)}),
            Credentials::Simulator => json!({}),
        };
        value.to_string().into_bytes()
    }

    fn from_plaintext(kind: ProviderKind, bytes: &[u8]) -> Option<Credentials> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        Some(match kind {
            ProviderKind::Twilio => Credentials::Twilio {
                account_sid: text("account_sid")?,
                auth_token: Secret(text("auth_token")?),
                base_url: text("base_url"),
            },
            ProviderKind::Sns => Credentials::Sns {
                region: text("region")?,
                access_key_id: text("access_key_id")?,
                secret_access_key: Secret(text("secret_access_key")?),
                endpoint: text("endpoint"),
                webhook_secret: text("webhook_secret").map(Secret),
            },
            ProviderKind::Simulator => Credentials::Simulator,
        })
    }
}

/// A field at fault, named as the API client wrote it (`senders[1]`, `credentials.auth_token`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    /// Stable and machine-readable; `unknown_field` means a name the request may not use.
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(
        field: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> FieldError {
        FieldError {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

/// Everything an account can be given. Every field is optional so an update can use it too:
/// what is left out stays as it was (or takes its default on creation).
#[derive(Clone, Default)]
pub struct AccountInput {
    pub name: Option<String>,
    pub kind: Option<String>,
    /// All of the account's credentials; given on an update, they replace the old ones whole.
    pub credentials: Option<BTreeMap<String, String>>,
    /// `(type, value)` pairs; given on an update, they replace the old list.
    pub senders: Option<Vec<(String, String)>>,
    pub messages_per_second: Option<f64>,
    /// `Some(None)` clears the limit.
    pub segments_per_second: Option<Option<f64>>,
    pub sender_messages_per_second: Option<Option<f64>>,
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for AccountInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountInput")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|c| c.keys().collect::<Vec<_>>()),
            )
            .field("senders", &self.senders)
            .finish_non_exhaustive()
    }
}

/// Why an account or route operation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// Credentials with secrets, and no server key to encrypt them with.
    #[error("no secret key is configured (HERALD_SECRET_KEY), so credentials cannot be stored")]
    NoSecretKey,
    #[error("the organization already has a provider account with this name")]
    NameTaken,
    #[error("no such provider account")]
    NotFound,
    #[error("routes still use this provider account")]
    InUse(Vec<RouteKey>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why credentials could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("no secret key is configured (HERALD_SECRET_KEY), so credentials cannot be read")]
    NoSecretKey,
    #[error(transparent)]
    CannotOpen(#[from] CannotOpen),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new account, validated and with its credentials sealed, ready to store.
pub struct PreparedAccount {
    pub account: ProviderAccount,
    sealed: Vec<u8>,
}

impl std::fmt::Debug for PreparedAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedAccount")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// Create an account for `org_id`.
pub async fn create_account(
    store: &dyn Store,
    key: Option<&SecretKey>,
    org_id: Uuid,
    input: &AccountInput,
    now: Timestamp,
) -> Result<ProviderAccount, AccountError> {
    let prepared = prepare_account(key, org_id, input, now)?;
    store_account(store, &prepared, None, now).await?;
    Ok(prepared.account)
}

/// Store a prepared account, honouring an idempotency key: a retry of the same request gets
/// [`AccountCreation::Replayed`] and stores nothing.
pub async fn store_account(
    store: &dyn Store,
    prepared: &PreparedAccount,
    idempotency: Option<&IdempotencyRecord>,
    now: Timestamp,
) -> Result<AccountCreation, AccountError> {
    store
        .create_provider_account(&prepared.account, &prepared.sealed, idempotency, now)
        .await?
        .map_err(refused)
}

/// Validate `input` into a new account of `org_id` and seal its credentials.
pub fn prepare_account(
    key: Option<&SecretKey>,
    org_id: Uuid,
    input: &AccountInput,
    now: Timestamp,
) -> Result<PreparedAccount, AccountError> {
    let mut errors = Vec::new();
    let name = name(input.name.as_deref(), &mut errors);
    let kind = match input.kind.as_deref() {
        None => {
            errors.push(FieldError::new(
                "kind",
                "required",
                "`kind` is required: twilio, sns or simulator",
            ));
            None
        }
        Some(text) => kind(text, &mut errors),
    };
    let credentials = kind.and_then(|kind| match &input.credentials {
        Some(given) => credentials(kind, given, &mut errors),
        None if kind == ProviderKind::Simulator => Some(Credentials::Simulator),
        None => {
            errors.push(FieldError::new(
                "credentials",
                "required",
                format!("a {} account needs `credentials`", kind.as_str()),
            ));
            None
        }
    });
    let senders = senders(kind, input.senders.as_deref().unwrap_or(&[]), &mut errors);
    let limits = limits(None, input, &mut errors);
    let (Some(name), Some(credentials)) = (name, credentials) else {
        return Err(AccountError::Invalid(errors));
    };
    if !errors.is_empty() {
        return Err(AccountError::Invalid(errors));
    }
    let account = ProviderAccount {
        id: Uuid::now_v7(),
        org_id,
        name,
        kind: credentials.kind(),
        credentials_shown: credentials.shown(),
        senders,
        limits,
        enabled: input.enabled.unwrap_or(true),
        created_at: now,
        updated_at: now,
    };
    let sealed = seal(key, &account, &credentials)?;
    Ok(PreparedAccount { account, sealed })
}

/// Another writer may change the account between our read and our write; the write is
/// conditional, and a lost race applies the change again to what is there now.
const UPDATE_ATTEMPTS: usize = 5;

/// Change the fields `input` gives of an account of `org_id`.
pub async fn update_account(
    store: &dyn Store,
    key: Option<&SecretKey>,
    org_id: Uuid,
    id: Uuid,
    input: &AccountInput,
    now: Timestamp,
) -> Result<ProviderAccount, AccountError> {
    for _ in 0..UPDATE_ATTEMPTS {
        let current = store
            .get_provider_account(org_id, id)
            .await?
            .ok_or(AccountError::NotFound)?;
        let (account, sealed) = apply(key, &current, input, now)?;
        match store
            .update_provider_account(&account, sealed.as_deref(), current.updated_at)
            .await?
        {
            Ok(()) => return Ok(account),
            Err(AccountRefusal::Stale) => continue,
            Err(refusal) => return Err(refused(refusal)),
        }
    }
    Err(refused(AccountRefusal::Stale))
}

/// `current` with the changes `input` asks for, and newly sealed credentials if it gives any.
fn apply(
    key: Option<&SecretKey>,
    current: &ProviderAccount,
    input: &AccountInput,
    now: Timestamp,
) -> Result<(ProviderAccount, Option<Vec<u8>>), AccountError> {
    let mut errors = Vec::new();
    let mut account = current.clone();
    if input.name.is_some()
        && let Some(name) = name(input.name.as_deref(), &mut errors)
    {
        account.name = name;
    }
    if let Some(text) = input.kind.as_deref()
        && kind(text, &mut errors).is_some_and(|kind| kind != current.kind)
    {
        errors.push(FieldError::new(
            "kind",
            "immutable",
            "an account's kind cannot change; create another account",
        ));
    }
    let credentials = input
        .credentials
        .as_ref()
        .and_then(|given| credentials(current.kind, given, &mut errors));
    if let Some(given) = &input.senders {
        account.senders = senders(Some(current.kind), given, &mut errors);
    }
    account.limits = limits(Some(current.limits), input, &mut errors);
    if let Some(enabled) = input.enabled {
        account.enabled = enabled;
    }
    if !errors.is_empty() {
        return Err(AccountError::Invalid(errors));
    }
    let sealed = match &credentials {
        Some(credentials) => {
            account.credentials_shown = credentials.shown();
            Some(seal(key, &account, credentials)?)
        }
        None => None,
    };
    account.updated_at = now;
    Ok((account, sealed))
}

/// Delete an account that no route names.
pub async fn delete_account(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<(), AccountError> {
    match store.delete_provider_account(org_id, id).await? {
        Ok(()) => Ok(()),
        Err(refusal) => Err(refused(refusal)),
    }
}

/// An account of `org_id` with its decrypted credentials, for building its provider client;
/// `None` when the organization has no such account.
pub async fn open_credentials(
    store: &dyn Store,
    key: Option<&SecretKey>,
    org_id: Uuid,
    id: Uuid,
) -> Result<Option<(ProviderAccount, Credentials)>, CredentialsError> {
    let Some((account, sealed)) = store.provider_account_credentials(org_id, id).await? else {
        return Ok(None);
    };
    if sealed.is_empty() {
        return Ok(Some((account, Credentials::Simulator)));
    }
    let key = key.ok_or(CredentialsError::NoSecretKey)?;
    let plaintext = key.open(account.org_id, account.id, &sealed)?;
    let credentials = Credentials::from_plaintext(account.kind, &plaintext).ok_or(CannotOpen)?;
    Ok(Some((account, credentials)))
}

/// Create or replace the route for `key` with `providers`, account ids in the order to try.
pub async fn set_route(
    store: &dyn Store,
    org_id: Uuid,
    key: RouteKey,
    providers: &[String],
    now: Timestamp,
) -> Result<Route, AccountError> {
    let mut errors = Vec::new();
    if providers.is_empty() || providers.len() > MAX_ROUTE_ACCOUNTS {
        errors.push(FieldError::new(
            "providers",
            "invalid_length",
            format!("a route names 1 to {MAX_ROUTE_ACCOUNTS} provider accounts"),
        ));
    }
    let mut accounts = Vec::new();
    let mut seen = HashSet::new();
    for (i, text) in providers.iter().enumerate() {
        match Uuid::parse_str(text) {
            Ok(id) if seen.insert(id) => accounts.push(id),
            Ok(_) => errors.push(FieldError::new(
                format!("providers[{i}]"),
                "duplicate_provider",
                "each provider account may appear once in a route",
            )),
            Err(_) => errors.push(FieldError::new(
                format!("providers[{i}]"),
                "unknown_provider",
                format!("{text:?} is not a provider account id"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(AccountError::Invalid(errors));
    }
    let route = Route {
        key,
        accounts,
        updated_at: now,
    };
    match store.set_route(org_id, &route).await? {
        Ok(()) => Ok(route),
        Err(AccountRefusal::UnknownAccounts(unknown)) => Err(AccountError::Invalid(
            route
                .accounts
                .iter()
                .enumerate()
                .filter(|(_, id)| unknown.contains(id))
                .map(|(i, id)| {
                    FieldError::new(
                        format!("providers[{i}]"),
                        "unknown_provider",
                        format!("{id} is not a provider account of this organization"),
                    )
                })
                .collect(),
        )),
        Err(refusal) => Err(refused(refusal)),
    }
}

fn refused(refusal: AccountRefusal) -> AccountError {
    match refusal {
        AccountRefusal::NotFound => AccountError::NotFound,
        AccountRefusal::NameTaken => AccountError::NameTaken,
        AccountRefusal::InUse(routes) => AccountError::InUse(routes),
        AccountRefusal::UnknownAccounts(_) => AccountError::NotFound,
        AccountRefusal::Stale => AccountError::Store(StoreError::Conflict(
            "the provider account kept changing while it was being updated".into(),
        )),
    }
}

fn seal(
    key: Option<&SecretKey>,
    account: &ProviderAccount,
    credentials: &Credentials,
) -> Result<Vec<u8>, AccountError> {
    if !credentials.has_secrets() {
        return Ok(Vec::new());
    }
    let key = key.ok_or(AccountError::NoSecretKey)?;
    Ok(key.seal(account.org_id, account.id, &credentials.to_plaintext()))
}
