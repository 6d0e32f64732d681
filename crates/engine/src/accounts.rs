//! Provider accounts and routes as an organization configures them: validating what the API or
//! the command line was given (both go through here, so they accept exactly the same things),
//! sealing credentials with the server's [`SecretKey`], and opening them again for the code that
//! builds a provider client — [`open_credentials`] is the only place they are ever decrypted.

use std::collections::{BTreeMap, HashSet};

use herald_domain::phone::{PhoneNumber, Region};
use herald_store::{
    AccountRefusal, ProviderAccount, ProviderKind, RateLimits, Route, RouteKey, Sender, SenderKind,
    Store, StoreError,
};
use jiff::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::secrets::{CannotOpen, SecretKey};

/// Sending rate of an account created without one: modest enough for a new Twilio or SNS
/// account, and easy to raise.
pub const DEFAULT_MESSAGES_PER_SECOND: f64 = 10.0;
/// No provider we know of allows more; a larger number is a typo.
const MAX_RATE: f64 = 100_000.0;
const MAX_SENDERS: usize = 100;
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
            } => {
                add("region", region);
                add("access_key_id", access_key_id);
                add("secret_access_key", "set");
                if let Some(url) = endpoint {
                    add("endpoint", url);
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
            } => json!({"region": region, "access_key_id": access_key_id,
                        "secret_access_key": secret_access_key.expose(), "endpoint": endpoint}),
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
    fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> FieldError {
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

/// Create an account for `org_id`.
pub async fn create_account(
    store: &dyn Store,
    key: Option<&SecretKey>,
    org_id: Uuid,
    input: &AccountInput,
    now: Timestamp,
) -> Result<ProviderAccount, AccountError> {
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
    match store.create_provider_account(&account, &sealed).await? {
        Ok(()) => Ok(account),
        Err(refusal) => Err(refused(refusal)),
    }
}

/// Change the fields `input` gives of an account of `org_id`.
pub async fn update_account(
    store: &dyn Store,
    key: Option<&SecretKey>,
    org_id: Uuid,
    id: Uuid,
    input: &AccountInput,
    now: Timestamp,
) -> Result<ProviderAccount, AccountError> {
    let current = store
        .get_provider_account(org_id, id)
        .await?
        .ok_or(AccountError::NotFound)?;
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
    match store
        .update_provider_account(&account, sealed.as_deref())
        .await?
    {
        Ok(()) => Ok(account),
        Err(refusal) => Err(refused(refusal)),
    }
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

/// Read a route's key from its API or command-line form: a country code or `default`, and an
/// optional prefix of E.164 digits that must start with the country's calling code.
pub fn route_key(country: &str, prefix: Option<&str>) -> Result<RouteKey, Vec<FieldError>> {
    let mut errors = Vec::new();
    let country = if country.eq_ignore_ascii_case("default") {
        if prefix.is_some() {
            errors.push(FieldError::new(
                "prefix",
                "not_allowed",
                "the default route has no prefix",
            ));
        }
        None
    } else {
        match Region::parse(country) {
            Ok(region) => Some(region),
            Err(_) => {
                errors.push(FieldError::new(
                    "country",
                    "invalid_country",
                    format!("{country:?} is not an ISO 3166-1 alpha-2 country code (or `default`)"),
                ));
                None
            }
        }
    };
    let prefix = prefix.and_then(|prefix| {
        let digits = prefix.strip_prefix('+').unwrap_or(prefix);
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            errors.push(FieldError::new(
                "prefix",
                "invalid_prefix",
                "`prefix` must be 1 to 15 digits of an E.164 number, e.g. 1415",
            ));
            return None;
        }
        if let Some(region) = country {
            let code = region.calling_code().to_string();
            if !digits.starts_with(&code) {
                errors.push(FieldError::new(
                    "prefix",
                    "prefix_outside_country",
                    format!(
                        "numbers of {} start with {code}, so `prefix` must too",
                        region.as_str()
                    ),
                ));
                return None;
            }
        }
        Some(digits.to_owned())
    });
    if errors.is_empty() {
        Ok(RouteKey { country, prefix })
    } else {
        Err(errors)
    }
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

fn name(given: Option<&str>, errors: &mut Vec<FieldError>) -> Option<String> {
    let name = given.map(str::trim).unwrap_or("");
    if name.is_empty() {
        errors.push(FieldError::new("name", "required", "`name` is required"));
        None
    } else if name.chars().count() > 100 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "name",
            "invalid_name",
            "`name` must be at most 100 characters, without control characters",
        ));
        None
    } else {
        Some(name.to_owned())
    }
}

fn kind(text: &str, errors: &mut Vec<FieldError>) -> Option<ProviderKind> {
    let kind = text.parse().ok();
    if kind.is_none() {
        errors.push(FieldError::new(
            "kind",
            "invalid_kind",
            format!("{text:?} is not a provider kind: use twilio, sns or simulator"),
        ));
    }
    kind
}

/// The fields each kind takes: name, whether it is required, and its check.
type FieldCheck = (&'static str, bool, fn(&str) -> Result<(), &'static str>);

const TWILIO_FIELDS: &[FieldCheck] = &[
    ("account_sid", true, |v| {
        sid(v, "AC")
            .then_some(())
            .ok_or("must be `AC` followed by 32 hexadecimal digits")
    }),
    ("auth_token", true, secret_text),
    ("base_url", false, url),
];

const SNS_FIELDS: &[FieldCheck] = &[
    ("region", true, |v| {
        let ok = (4..=32).contains(&v.len())
            && v.contains('-')
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        ok.then_some(())
            .ok_or("must be an AWS region such as us-east-1")
    }),
    ("access_key_id", true, |v| {
        let ok = (16..=128).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        ok.then_some(())
            .ok_or("must be an AWS access key id such as AKIAIOSFODNN7EXAMPLE")
    }),
    ("secret_access_key", true, secret_text),
    ("endpoint", false, url),
];

fn sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn secret_text(value: &str) -> Result<(), &'static str> {
    let ok = (8..=256).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(())
        .ok_or("must be 8 to 256 printable characters without spaces")
}

fn url(value: &str) -> Result<(), &'static str> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    let ok = rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && value.len() <= 2048
        && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(()).ok_or("must be an http:// or https:// URL")
}

fn credentials(
    kind: ProviderKind,
    given: &BTreeMap<String, String>,
    errors: &mut Vec<FieldError>,
) -> Option<Credentials> {
    let fields: &[FieldCheck] = match kind {
        ProviderKind::Twilio => TWILIO_FIELDS,
        ProviderKind::Sns => SNS_FIELDS,
        ProviderKind::Simulator => &[],
    };
    let before = errors.len();
    for name in given.keys() {
        if !fields.iter().any(|(field, _, _)| field == name) {
            errors.push(FieldError::new(
                format!("credentials.{name}"),
                "unknown_field",
                format!("a {} account has no credential `{name}`", kind.as_str()),
            ));
        }
    }
    for (field, required, check) in fields {
        match given.get(*field) {
            None if *required => errors.push(FieldError::new(
                format!("credentials.{field}"),
                "required",
                format!(
                    "`credentials.{field}` is required for a {} account",
                    kind.as_str()
                ),
            )),
            None => {}
            Some(value) => {
                if let Err(problem) = check(value) {
                    errors.push(FieldError::new(
                        format!("credentials.{field}"),
                        "invalid_credential",
                        format!("`credentials.{field}` {problem}"),
                    ));
                }
            }
        }
    }
    if errors.len() > before {
        return None;
    }
    let get = |name: &str| given.get(name).cloned().unwrap_or_default();
    Some(match kind {
        ProviderKind::Twilio => Credentials::Twilio {
            account_sid: get("account_sid"),
            auth_token: Secret(get("auth_token")),
            base_url: given.get("base_url").cloned(),
        },
        ProviderKind::Sns => Credentials::Sns {
            region: get("region"),
            access_key_id: get("access_key_id"),
            secret_access_key: Secret(get("secret_access_key")),
            endpoint: given.get("endpoint").cloned(),
        },
        ProviderKind::Simulator => Credentials::Simulator,
    })
}

fn senders(
    kind: Option<ProviderKind>,
    given: &[(String, String)],
    errors: &mut Vec<FieldError>,
) -> Vec<Sender> {
    if given.len() > MAX_SENDERS {
        errors.push(FieldError::new(
            "senders",
            "too_many",
            format!("an account has at most {MAX_SENDERS} senders"),
        ));
        return Vec::new();
    }
    let mut senders: Vec<Sender> = Vec::new();
    for (i, (kind_text, value)) in given.iter().enumerate() {
        let field = format!("senders[{i}]");
        let mut invalid =
            |code, message: String| errors.push(FieldError::new(&field, code, message));
        let sender = match kind_text.parse::<SenderKind>() {
            Err(_) => {
                invalid(
                    "invalid_sender_type",
                    format!(
                        "{kind_text:?} is not a sender type: use phone_number, \
                         messaging_service_sid or alphanumeric_id"
                    ),
                );
                continue;
            }
            Ok(SenderKind::PhoneNumber) => match PhoneNumber::parse(value, None) {
                Ok(number) if value.starts_with('+') => Sender {
                    kind: SenderKind::PhoneNumber,
                    value: number.e164().to_owned(),
                },
                _ => {
                    invalid(
                        "invalid_phone",
                        format!("{value:?} is not a valid E.164 number such as +14155550100"),
                    );
                    continue;
                }
            },
            Ok(SenderKind::MessagingServiceSid) => {
                if kind.is_some_and(|k| k != ProviderKind::Twilio) {
                    invalid(
                        "not_supported",
                        "only Twilio accounts have Messaging Services".to_owned(),
                    );
                    continue;
                }
                if !sid(value, "MG") {
                    invalid(
                        "invalid_messaging_service_sid",
                        "a Messaging Service SID is `MG` followed by 32 hexadecimal digits".into(),
                    );
                    continue;
                }
                Sender {
                    kind: SenderKind::MessagingServiceSid,
                    value: value.clone(),
                }
            }
            Ok(SenderKind::AlphanumericId) => {
                let ok = (1..=11).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b' ')
                    && value.bytes().any(|b| b.is_ascii_alphabetic());
                if !ok {
                    invalid(
                        "invalid_sender_id",
                        "an alphanumeric sender ID is 1 to 11 letters, digits or spaces, \
                         with at least one letter"
                            .into(),
                    );
                    continue;
                }
                Sender {
                    kind: SenderKind::AlphanumericId,
                    value: value.clone(),
                }
            }
        };
        if senders.contains(&sender) {
            invalid("duplicate_sender", "this sender is already listed".into());
            continue;
        }
        senders.push(sender);
    }
    senders
}

fn limits(
    current: Option<RateLimits>,
    input: &AccountInput,
    errors: &mut Vec<FieldError>,
) -> RateLimits {
    let mut check = |field: &str, value: f64| {
        if !(value.is_finite() && value > 0.0 && value <= MAX_RATE) {
            errors.push(FieldError::new(
                format!("rate_limit.{field}"),
                "invalid_rate",
                format!("`rate_limit.{field}` must be more than 0 and at most {MAX_RATE}"),
            ));
        }
    };
    let mut limits = current.unwrap_or(RateLimits {
        messages_per_second: DEFAULT_MESSAGES_PER_SECOND,
        segments_per_second: None,
        sender_messages_per_second: None,
    });
    if let Some(rate) = input.messages_per_second {
        check("messages_per_second", rate);
        limits.messages_per_second = rate;
    }
    if let Some(rate) = input.segments_per_second {
        if let Some(rate) = rate {
            check("segments_per_second", rate);
        }
        limits.segments_per_second = rate;
    }
    if let Some(rate) = input.sender_messages_per_second {
        if let Some(rate) = rate {
            check("per_sender_messages_per_second", rate);
        }
        limits.sender_messages_per_second = rate;
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twilio_credentials() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("account_sid".into(), format!("AC{}", "0a".repeat(16))),
            ("auth_token".into(), "tok3n-s3cret".into()),
        ])
    }

    #[test]
    fn credentials_are_checked_field_by_field_for_their_kind() {
        let mut errors = Vec::new();
        let parsed = credentials(ProviderKind::Twilio, &twilio_credentials(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let parsed = parsed.unwrap();
        assert_eq!(
            parsed.shown(),
            vec![
                ("account_sid".to_owned(), format!("AC{}", "0a".repeat(16))),
                ("auth_token".to_owned(), "set".to_owned()),
            ]
        );
        assert!(
            !format!("{parsed:?}").contains("tok3n"),
            "Debug hides secrets"
        );
        let round = Credentials::from_plaintext(ProviderKind::Twilio, &parsed.to_plaintext());
        assert_eq!(round, Some(parsed));

        let mut errors = Vec::new();
        let given = BTreeMap::from([
            ("account_sid".into(), "XX".into()),
            ("region".into(), "us-east-1".into()),
        ]);
        assert!(credentials(ProviderKind::Twilio, &given, &mut errors).is_none());
        let fields: Vec<_> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            fields,
            [
                ("credentials.region", "unknown_field"),
                ("credentials.account_sid", "invalid_credential"),
                ("credentials.auth_token", "required"),
            ]
        );
    }

    #[test]
    fn senders_must_be_e164_numbers_service_sids_or_sender_ids() {
        let given: Vec<(String, String)> = [
            ("phone_number", "+14155550100"),
            ("phone_number", "4155550100"),
            ("phone_number", "+1555"),
            ("alphanumeric_id", "ACME"),
            ("alphanumeric_id", "TOO LONG SENDER"),
            ("messaging_service_sid", "MG123"),
            ("fax", "1"),
            ("phone_number", "+14155550100"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut errors = Vec::new();
        let senders = senders(Some(ProviderKind::Twilio), &given, &mut errors);
        assert_eq!(senders.len(), 2);
        let codes: Vec<_> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            codes,
            [
                ("senders[1]", "invalid_phone"),
                ("senders[2]", "invalid_phone"),
                ("senders[4]", "invalid_sender_id"),
                ("senders[5]", "invalid_messaging_service_sid"),
                ("senders[6]", "invalid_sender_type"),
                ("senders[7]", "duplicate_sender"),
            ]
        );
    }

    #[test]
    fn route_prefixes_are_digits_within_their_country() {
        let us = route_key("US", Some("1415")).unwrap();
        assert_eq!(us.prefix.as_deref(), Some("1415"));
        assert_eq!(route_key("default", None).unwrap(), RouteKey::DEFAULT);
        let code = |country, prefix| route_key(country, prefix).unwrap_err()[0].code;
        assert_eq!(code("US", Some("4420")), "prefix_outside_country");
        assert_eq!(code("US", Some("14a5")), "invalid_prefix");
        assert_eq!(code("XX", None), "invalid_country");
        assert_eq!(code("default", Some("1")), "not_allowed");
    }

    #[test]
    fn rates_must_be_positive_and_finite() {
        let input = AccountInput {
            messages_per_second: Some(0.0),
            segments_per_second: Some(Some(f64::NAN)),
            sender_messages_per_second: Some(Some(-1.0)),
            ..AccountInput::default()
        };
        let mut errors = Vec::new();
        limits(None, &input, &mut errors);
        assert_eq!(errors.len(), 3);
        let mut errors = Vec::new();
        let cleared = AccountInput {
            segments_per_second: Some(None),
            ..AccountInput::default()
        };
        let current = RateLimits {
            messages_per_second: 3.0,
            segments_per_second: Some(5.0),
            sender_messages_per_second: Some(1.0),
        };
        let limits = limits(Some(current), &cleared, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(limits.segments_per_second, None);
        assert_eq!(limits.messages_per_second, 3.0);
    }
}
