//! Provider accounts and routes as the store keeps them: which provider accounts an organization
//! sends through, and which of them serve which destinations.
//!
//! Credentials arrive here already sealed (encrypted by the engine with the server's key); the
//! store keeps the sealed bytes beside the account and never sees a secret. What may be shown of
//! the credentials (an account SID, a region, `"set"` for a secret) travels separately as
//! [`ProviderAccount::credentials_shown`].

use herald_domain::phone::Region;
use jiff::Timestamp;
use uuid::Uuid;

/// Which provider an account belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Twilio,
    Sns,
    Simulator,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::Twilio,
        ProviderKind::Sns,
        ProviderKind::Simulator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Twilio => "twilio",
            ProviderKind::Sns => "sns",
            ProviderKind::Simulator => "simulator",
        }
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown provider kind {s:?}"))
    }
}

/// What a sender is: it decides how the provider is asked to send "from" it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SenderKind {
    /// An E.164 number (long code, toll-free or mobile).
    PhoneNumber,
    /// A Twilio Messaging Service (`MG…`), which picks the number itself.
    MessagingServiceSid,
    /// An alphanumeric sender ID (`ACME`), where the destination country allows one.
    AlphanumericId,
}

impl SenderKind {
    pub const ALL: [SenderKind; 3] = [
        SenderKind::PhoneNumber,
        SenderKind::MessagingServiceSid,
        SenderKind::AlphanumericId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SenderKind::PhoneNumber => "phone_number",
            SenderKind::MessagingServiceSid => "messaging_service_sid",
            SenderKind::AlphanumericId => "alphanumeric_id",
        }
    }
}

impl std::str::FromStr for SenderKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SenderKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown sender type {s:?}"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sender {
    pub kind: SenderKind,
    pub value: String,
}

/// How fast an account may send. The engine turns these into token buckets shared by every
/// worker process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    pub messages_per_second: f64,
    /// For providers that meter segments rather than messages.
    pub segments_per_second: Option<f64>,
    /// For each sender number on its own (a US long code manages about one per second).
    pub sender_messages_per_second: Option<f64>,
}

/// A provider account of one organization, without its secrets.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderAccount {
    pub id: Uuid,
    pub org_id: Uuid,
    /// Unique within the organization.
    pub name: String,
    pub kind: ProviderKind,
    /// What may be shown of the credentials: identifiers in clear, each secret only as `"set"`.
    pub credentials_shown: Vec<(String, String)>,
    pub senders: Vec<Sender>,
    pub limits: RateLimits,
    /// A disabled account stays in its routes but is passed over.
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Which destinations a route serves: a country, optionally narrowed to numbers starting with a
/// prefix; neither for the organization's default route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub country: Option<Region>,
    /// E.164 digits without `+`, starting with the country's calling code (`1415`).
    pub prefix: Option<String>,
}

impl RouteKey {
    pub const DEFAULT: RouteKey = RouteKey {
        country: None,
        prefix: None,
    };
}

/// `default`, `US` or `US/1415`: how routes are named in the API's paths and in messages.
impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.country, &self.prefix) {
            (None, _) => f.write_str("default"),
            (Some(country), None) => f.write_str(country.as_str()),
            (Some(country), Some(prefix)) => write!(f, "{}/{prefix}", country.as_str()),
        }
    }
}

/// Ordered provider accounts for a destination: the first is tried first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub key: RouteKey,
    pub accounts: Vec<Uuid>,
    pub updated_at: Timestamp,
}

/// What creating an account did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountCreation {
    Created,
    /// The `Idempotency-Key` was used before with the same request: here is the account it
    /// created and the response given then.
    Replayed {
        id: Uuid,
        response: Vec<u8>,
    },
    /// The key was used before with a different request; nothing was stored.
    KeyReused,
}

/// Why a write to accounts or routes was refused; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountRefusal {
    /// No such account (or organization) for this organization.
    NotFound,
    /// The organization already has an account with this name.
    NameTaken,
    /// Routes still name the account: it cannot be deleted until they no longer do.
    InUse(Vec<RouteKey>),
    /// These ids are not accounts of the organization.
    UnknownAccounts(Vec<Uuid>),
    /// The account changed since the caller read it.
    Stale,
}

/// Route keys are stored with `''` for "any": NULLs would not collide in a primary key.
pub fn route_columns(key: &RouteKey) -> (&str, &str) {
    (
        key.country.as_ref().map_or("", Region::as_str),
        key.prefix.as_deref().unwrap_or(""),
    )
}

/// The inverse of [`route_columns`]; `None` for a country the metadata no longer knows.
pub fn route_key(country: &str, prefix: &str) -> Option<RouteKey> {
    let country = match country {
        "" => None,
        code => Some(Region::parse(code).ok()?),
    };
    let prefix = (!prefix.is_empty()).then(|| prefix.to_owned());
    Some(RouteKey { country, prefix })
}

/// Senders as stored: one `kind:value` per line. Values are validated (E.164, `MG…`,
/// alphanumeric) before they get here, so neither contains a newline.
pub fn encode_senders(senders: &[Sender]) -> String {
    senders
        .iter()
        .map(|s| format!("{}:{}", s.kind.as_str(), s.value))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn decode_senders(text: &str) -> Result<Vec<Sender>, crate::StoreError> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (kind, value) = line
                .split_once(':')
                .ok_or_else(|| crate::StoreError::Corrupt(format!("sender {line:?}")))?;
            Ok(Sender {
                kind: kind.parse().map_err(crate::StoreError::Corrupt)?,
                value: value.to_owned(),
            })
        })
        .collect()
}

/// Shown credentials as stored: one `name=value` per line (names are fixed identifiers, values
/// validated single-line strings).
pub fn encode_shown(shown: &[(String, String)]) -> String {
    shown
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn decode_shown(text: &str) -> Result<Vec<(String, String)>, crate::StoreError> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split_once('=')
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .ok_or_else(|| crate::StoreError::Corrupt(format!("credential field {line:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_and_shown_credentials_survive_their_encoding() {
        let senders = vec![
            Sender {
                kind: SenderKind::PhoneNumber,
                value: "+14155550100".into(),
            },
            Sender {
                kind: SenderKind::AlphanumericId,
                value: "ACME Co".into(),
            },
        ];
        assert_eq!(decode_senders(&encode_senders(&senders)).unwrap(), senders);
        assert_eq!(decode_senders("").unwrap(), []);
        let shown = vec![
            ("account_sid".to_owned(), "AC123".to_owned()),
            ("base_url".to_owned(), "http://x/?a=b".to_owned()),
        ];
        assert_eq!(decode_shown(&encode_shown(&shown)).unwrap(), shown);
    }

    #[test]
    fn route_keys_round_trip_through_their_columns() {
        let key = RouteKey {
            country: Some(Region::parse("US").unwrap()),
            prefix: Some("1415".into()),
        };
        let (country, prefix) = route_columns(&key);
        assert_eq!(route_key(country, prefix), Some(key.clone()));
        assert_eq!(key.to_string(), "US/1415");
        assert_eq!(RouteKey::DEFAULT.to_string(), "default");
        let (country, prefix) = route_columns(&RouteKey::DEFAULT);
        assert_eq!((country, prefix), ("", ""));
        assert_eq!(route_key("", ""), Some(RouteKey::DEFAULT));
    }
}
