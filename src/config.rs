//! Configuration: command-line flags, then `HERALD_…` environment variables (both through
//! clap), then an optional TOML file, then defaults — in that order of precedence.
//!
//! Secrets never reach logs or `Debug` output: the database URL prints with its password
//! masked.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use herald_domain::money::{Amount, Currency, Price, PriceTable};
use herald_domain::phone::Region;
use herald_engine::EngineConfig;
use serde::Deserialize;

/// A database URL, whose password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    /// The real URL, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres:") || self.0.starts_with("postgresql:")
    }
}

/// `postgres://herald:****@db/herald`: everything but the password.
impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = &self.0;
        let masked = url.split_once("://").and_then(|(scheme, rest)| {
            let (authority, tail) = rest.split_once('@')?;
            let (user, _password) = authority.split_once(':')?;
            Some(format!("{scheme}://{user}:****@{tail}"))
        });
        f.write_str(masked.as_deref().unwrap_or(url))
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl::new(url))
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(DatabaseUrl)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The server's secret key as configured (64 hex digits or base64), never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKeyText(String);

impl SecretKeyText {
    pub fn parse(&self) -> Result<herald_engine::secrets::SecretKey> {
        herald_engine::secrets::SecretKey::parse(&self.0).context("invalid secret key")
    }
}

impl std::str::FromStr for SecretKeyText {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(SecretKeyText(text.to_owned()))
    }
}

impl<'de> Deserialize<'de> for SecretKeyText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretKeyText)
    }
}

impl std::fmt::Debug for SecretKeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKeyText(****)")
    }
}

/// The operator token as configured, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken(String);

impl OperatorToken {
    /// Its SHA-256, as the server keeps it. Refused when too short to resist guessing.
    pub fn digest(&self) -> Result<[u8; 32]> {
        if self.0.trim().chars().count() < 16 {
            bail!("operator_token must be at least 16 characters (`openssl rand -base64 32`)");
        }
        Ok(herald_engine::keys::hash(self.0.trim()))
    }
}

impl std::str::FromStr for OperatorToken {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(OperatorToken(text.to_owned()))
    }
}

impl<'de> Deserialize<'de> for OperatorToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(OperatorToken)
    }
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(****)")
    }
}

/// The optional TOML file. Every key is optional; unknown keys are an error, so a typo is
/// caught at start-up rather than silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub database_url: Option<DatabaseUrl>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    /// Region for national-format numbers of the first organization.
    pub default_region: Option<String>,
    /// Name of the organization created on first start.
    pub organization_name: Option<String>,
    /// Herald's base URL as providers reach it (`https://herald.example.com`): provider
    /// callbacks are addressed to it and their signatures checked against it.
    pub public_url: Option<String>,
    /// Encrypts provider credentials at rest (`--secret-key` and `HERALD_SECRET_KEY` take
    /// precedence). Without one, accounts with secrets cannot be added.
    pub secret_key: Option<SecretKeyText>,
    /// Lets its bearer grant credits and set spend limits through the API (`--operator-token`
    /// and `HERALD_OPERATOR_TOKEN` take precedence). Without one, only the CLI can.
    pub operator_token: Option<OperatorToken>,
    pub twilio: Option<TwilioFile>,
    pub sns: Option<SnsFile>,
    #[serde(default)]
    pub sqlite: SqliteFile,
    #[serde(default)]
    pub dispatcher: DispatcherFile,
    #[serde(default)]
    pub simulator: SimulatorFile,
    #[serde(default)]
    pub prices: PricesFile,
    #[serde(default)]
    pub routing: RoutingFile,
    #[serde(default)]
    pub quiet_hours: QuietHoursFile,
}

/// When promotional messages may reach people, in their local time.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursFile {
    /// The window, `HH:MM-HH:MM` (default `09:00-21:00`).
    pub window: Option<String>,
    /// Windows for destination countries (ISO 3166 alpha-2 → `HH:MM-HH:MM`).
    #[serde(default)]
    pub countries: BTreeMap<String, String>,
}

/// Routes for live traffic by destination, and the circuit breakers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// Providers for destinations no route names, first preferred (default: every configured
    /// live provider).
    #[serde(default)]
    pub default: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// Consecutive failures after which a provider rests.
    pub breaker_failures: Option<u32>,
    /// How long a provider rests before one message probes it.
    pub breaker_cool_down_seconds: Option<u64>,
    /// Messages (and segments) per second per provider, shared by every process on the
    /// database.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    pub per_second: f64,
    /// The largest burst (default: one second's worth).
    pub burst: Option<f64>,
    /// For providers that meter segments: a message of N segments takes N; bursts up to one
    /// second's worth.
    pub segments_per_second: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// ISO 3166 alpha-2 country of the destination.
    pub country: Option<String>,
    /// E.164 digits the destination starts with, without `+`.
    pub prefix: Option<String>,
    pub providers: Vec<String>,
}

/// A Twilio account for live traffic. Each key can also come from `HERALD_TWILIO_<KEY>`
/// (e.g. `HERALD_TWILIO_AUTH_TOKEN`), which takes precedence.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioFile {
    pub account_sid: Option<String>,
    pub auth_token: Option<String>,
    pub base_url: Option<String>,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub timeout_ms: Option<u64>,
    /// `MaxPrice`: the most Twilio may charge per segment, in USD (e.g. `"0.05"`).
    pub max_price: Option<String>,
    /// `ValidityPeriod`: seconds Twilio may keep trying to deliver, 1 to 36000.
    pub validity_period: Option<u32>,
    /// Estimate costs with Twilio's Pricing API (default true).
    pub fetch_prices: Option<bool>,
    /// Where the Pricing API is (default `https://pricing.twilio.com`).
    pub pricing_base_url: Option<String>,
}

impl std::fmt::Debug for TwilioFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioFile")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "****"))
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// An AWS SNS account for live traffic. Each key can also come from `HERALD_SNS_<KEY>`, which
/// takes precedence. Without keys the AWS credential chain is used (environment, profile, role).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnsFile {
    pub region: Option<String>,
    /// A different endpoint, e.g. a local SNS implementation.
    pub endpoint_url: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `AWS.SNS.SMS.SenderID` for messages that name no sender.
    pub sender_id: Option<String>,
    /// `AWS.SNS.SMS.MaxPrice`, USD per message.
    pub max_price: Option<String>,
    pub timeout_ms: Option<u64>,
    /// Ask SNS whether a number opted out before each send (one more call per message), so
    /// such a message fails visibly instead of being silently dropped by SNS.
    pub check_opt_out: Option<bool>,
    /// The secret forwarded delivery status logs are signed with (`/hooks/sns/status`).
    pub webhook_secret: Option<String>,
}

impl std::fmt::Debug for SnsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsFile")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "****"),
            )
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "****"),
            )
            .finish_non_exhaustive()
    }
}

/// The SNS account and the secret its forwarded logs are signed with.
pub struct SnsSetup {
    pub config: herald_providers::sns::SnsConfig,
    pub webhook_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteFile {
    /// `full` (default: every commit survives power loss) or `normal`.
    pub synchronous: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherFile {
    pub batch_size: Option<u32>,
    pub max_in_flight: Option<usize>,
    pub lease_seconds: Option<u64>,
    pub send_timeout_ms: Option<u64>,
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorFile {
    pub delivery_delay_ms: Option<u64>,
    pub latency_ms: Option<u64>,
    pub failure_rate: Option<f64>,
    /// Carrier errors for undelivered messages, e.g.
    /// `[{ code = "30003", message = "Unreachable destination handset" }]`.
    pub failure_codes: Option<Vec<FailureCode>>,
    pub transient_error_rate: Option<f64>,
    pub timeout_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureCode {
    pub code: String,
    pub message: String,
}

/// Segment prices: `default` for unlisted countries, `countries` by ISO code.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesFile {
    pub currency: Option<String>,
    pub default: Option<String>,
    #[serde(default)]
    pub countries: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("invalid configuration file {}", path.display()))
    }

    pub fn default_region(&self) -> Result<Region> {
        let region = self.default_region.as_deref().unwrap_or("US");
        Region::parse(region)
            .with_context(|| format!("default_region {region:?} is not a region code"))
    }

    pub fn sqlite_synchronous_full(&self) -> Result<bool> {
        match self.sqlite.synchronous.as_deref() {
            None | Some("full") => Ok(true),
            Some("normal") => Ok(false),
            Some(other) => bail!("sqlite.synchronous must be `full` or `normal`, not {other:?}"),
        }
    }

    /// The key that seals provider credentials, if one is configured.
    pub fn secret_key(&self) -> Result<Option<herald_engine::secrets::SecretKey>> {
        self.secret_key
            .as_ref()
            .map(SecretKeyText::parse)
            .transpose()
    }

    /// The engine's settings: defaults with the file's overrides.
    pub fn engine(&self) -> Result<EngineConfig> {
        let mut config = EngineConfig::default();
        let d = &self.dispatcher;
        let dispatcher = &mut config.dispatcher;
        if let Some(n) = d.batch_size {
            dispatcher.batch_size = n.max(1);
        }
        if let Some(n) = d.max_in_flight {
            dispatcher.max_in_flight = n.max(1);
        }
        if let Some(secs) = d.lease_seconds {
            dispatcher.lease = Duration::from_secs(secs);
        }
        if let Some(ms) = d.send_timeout_ms {
            dispatcher.send_timeout = Duration::from_millis(ms);
        }
        if dispatcher.send_timeout >= dispatcher.lease {
            bail!("dispatcher.send_timeout_ms must be shorter than dispatcher.lease_seconds");
        }
        if let Some(n) = d.max_attempts {
            config.intake.max_attempts = n.max(1);
        }

        let s = &self.simulator;
        let simulator = &mut config.simulator;
        if let Some(ms) = s.delivery_delay_ms {
            simulator.delivery_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = s.latency_ms {
            simulator.latency = Duration::from_millis(ms);
        }
        for (name, value, target) in [
            (
                "simulator.failure_rate",
                s.failure_rate,
                &mut simulator.failure_rate,
            ),
            (
                "simulator.transient_error_rate",
                s.transient_error_rate,
                &mut simulator.transient_error_rate,
            ),
            (
                "simulator.timeout_rate",
                s.timeout_rate,
                &mut simulator.timeout_rate,
            ),
        ] {
            if let Some(rate) = value {
                if !(0.0..=1.0).contains(&rate) {
                    bail!("{name} must be between 0 and 1");
                }
                *target = rate;
            }
        }

        if let Some(codes) = &s.failure_codes {
            simulator.failure_codes = codes
                .iter()
                .map(|c| (c.code.clone(), c.message.clone()))
                .collect();
        }

        config.intake.prices = self.prices()?;
        config.intake.quiet_hours = self.quiet_hours()?;
        config.routing = self.routing()?;
        for (name, rate) in &self.routing.rate_limits {
            if !(rate.per_second > 0.0 && rate.per_second.is_finite()) {
                bail!("routing.rate_limits.{name}.per_second must be a positive number");
            }
            let mut limit = herald_store::rate::Rate::per_second(rate.per_second);
            if let Some(burst) = rate.burst {
                if !(burst >= 1.0 && burst.is_finite()) {
                    bail!("routing.rate_limits.{name}.burst must be at least 1");
                }
                limit.burst = burst;
            }
            let mut limits = herald_engine::limits::Limits::messages(limit);
            if let Some(segments) = rate.segments_per_second {
                if !(segments > 0.0 && segments.is_finite()) {
                    bail!(
                        "routing.rate_limits.{name}.segments_per_second must be a positive number"
                    );
                }
                limits.segments = Some(herald_store::rate::Rate::per_second(segments));
            }
            config.dispatcher.rate_limits.insert(name.clone(), limits);
        }
        config.secret_key = self.secret_key()?;
        config.operator_token = self
            .operator_token
            .as_ref()
            .map(OperatorToken::digest)
            .transpose()?;
        Ok(config)
    }

    /// The Twilio account, if one is configured (file, then `HERALD_TWILIO_*` overrides).
    pub fn twilio(&self) -> Result<Option<herald_providers::twilio::TwilioConfig>> {
        let file = self.twilio.as_ref();
        let pick = |key: &str, from_file: Option<&String>| {
            std::env::var(format!("HERALD_TWILIO_{key}"))
                .ok()
                .or_else(|| from_file.cloned())
        };
        let sid = pick("ACCOUNT_SID", file.and_then(|t| t.account_sid.as_ref()));
        let token = pick("AUTH_TOKEN", file.and_then(|t| t.auth_token.as_ref()));
        let (sid, token) = match (sid, token) {
            (Some(sid), Some(token)) => (sid, token),
            (None, None) => return Ok(None),
            _ => bail!("twilio needs both account_sid and auth_token"),
        };
        let mut config = herald_providers::twilio::TwilioConfig::new(sid, token);
        if let Some(base) = pick("BASE_URL", file.and_then(|t| t.base_url.as_ref())) {
            config.base_url = base;
        }
        config.from = pick("FROM", file.and_then(|t| t.from.as_ref()));
        config.messaging_service_sid = pick(
            "MESSAGING_SERVICE_SID",
            file.and_then(|t| t.messaging_service_sid.as_ref()),
        );
        if let Some(ms) = file.and_then(|t| t.timeout_ms) {
            config.timeout = Duration::from_millis(ms);
        }
        if let Some(price) = pick("MAX_PRICE", file.and_then(|t| t.max_price.as_ref())) {
            Amount::parse(&price)
                .with_context(|| format!("twilio.max_price {price:?} is not a decimal amount"))?;
            config.max_price = Some(price);
        }
        if let Some(seconds) = file.and_then(|t| t.validity_period) {
            if !(1..=36_000).contains(&seconds) {
                bail!("twilio.validity_period must be between 1 and 36000 seconds");
            }
            config.validity_period = Some(seconds);
        }
        Ok(Some(config))
    }

    /// Twilio's Pricing API for the configured account (`config`, from [`Self::twilio`]),
    /// unless turned off.
    pub fn twilio_pricing(
        &self,
        config: &herald_providers::twilio::TwilioConfig,
    ) -> Result<Option<herald_providers::twilio::pricing::TwilioPricing>> {
        let file = self.twilio.as_ref();
        if file.and_then(|t| t.fetch_prices) == Some(false) {
            return Ok(None);
        }
        let base = std::env::var("HERALD_TWILIO_PRICING_BASE_URL")
            .ok()
            .or_else(|| file.and_then(|t| t.pricing_base_url.clone()))
            .unwrap_or_else(|| herald_providers::twilio::pricing::DEFAULT_BASE_URL.to_owned());
        let pricing = herald_providers::twilio::pricing::TwilioPricing::new(
            &base,
            &config.account_sid,
            &config.auth_token,
        )
        .context("cannot set up the Twilio Pricing API client")?;
        Ok(Some(pricing))
    }

    /// The SNS account, if one is configured (file, then `HERALD_SNS_*` overrides).
    pub fn sns(&self) -> Result<Option<SnsSetup>> {
        let file = self.sns.as_ref();
        let pick = |key: &str, from_file: Option<&String>| {
            std::env::var(format!("HERALD_SNS_{key}"))
                .ok()
                .or_else(|| from_file.cloned())
        };
        let Some(region) = pick("REGION", file.and_then(|s| s.region.as_ref())) else {
            if file.is_some() {
                bail!("sns needs a region");
            }
            return Ok(None);
        };
        let mut config = herald_providers::sns::SnsConfig::new(region);
        config.endpoint_url = pick("ENDPOINT_URL", file.and_then(|s| s.endpoint_url.as_ref()));
        let key_id = pick("ACCESS_KEY_ID", file.and_then(|s| s.access_key_id.as_ref()));
        let secret = pick(
            "SECRET_ACCESS_KEY",
            file.and_then(|s| s.secret_access_key.as_ref()),
        );
        match (key_id, secret) {
            (Some(id), Some(secret)) => {
                config.keys = Some(herald_providers::sns::SnsKeys {
                    access_key_id: id,
                    secret_access_key: secret,
                })
            }
            (None, None) => {}
            _ => bail!("sns needs both access_key_id and secret_access_key, or neither"),
        }
        config.sender_id = pick("SENDER_ID", file.and_then(|s| s.sender_id.as_ref()));
        if let Some(price) = pick("MAX_PRICE", file.and_then(|s| s.max_price.as_ref())) {
            config.max_price = Some(
                Amount::parse(&price)
                    .with_context(|| format!("sns.max_price {price:?} is not a decimal amount"))?,
            );
        }
        if let Some(ms) = file.and_then(|s| s.timeout_ms) {
            config.timeout = Duration::from_millis(ms);
        }
        config.check_opt_out = file.and_then(|s| s.check_opt_out).unwrap_or(false);
        let webhook_secret = pick(
            "WEBHOOK_SECRET",
            file.and_then(|s| s.webhook_secret.as_ref()),
        );
        if webhook_secret.as_ref().is_some_and(|s| s.len() < 16) {
            bail!("sns.webhook_secret must be at least 16 characters");
        }
        Ok(Some(SnsSetup {
            config,
            webhook_secret,
        }))
    }

    fn routing(&self) -> Result<herald_engine::RoutingConfig> {
        use herald_engine::routing::{Route, RouteTable};
        let file = &self.routing;
        let mut routes = Vec::with_capacity(file.routes.len());
        for (i, route) in file.routes.iter().enumerate() {
            let country = route
                .country
                .as_deref()
                .map(|code| {
                    Region::parse(code).map_err(|_| {
                        anyhow::anyhow!("routing.routes[{i}].country {code:?} is not a region code")
                    })
                })
                .transpose()?;
            if let Some(prefix) = &route.prefix
                && (prefix.is_empty()
                    || prefix.len() > 15
                    || !prefix.bytes().all(|b| b.is_ascii_digit()))
            {
                bail!("routing.routes[{i}].prefix {prefix:?} must be 1 to 15 digits, without +");
            }
            if country.is_none() && route.prefix.is_none() {
                bail!("routing.routes[{i}] needs a country, a prefix or both");
            }
            if route.providers.is_empty() {
                bail!("routing.routes[{i}].providers must name at least one provider");
            }
            routes.push(Route {
                country,
                prefix: route.prefix.clone(),
                providers: route.providers.clone(),
            });
        }
        let mut breaker = herald_engine::routing::BreakerConfig::default();
        if let Some(n) = file.breaker_failures {
            breaker.failures_to_open = n.max(1);
        }
        if let Some(seconds) = file.breaker_cool_down_seconds {
            breaker.cool_down = Duration::from_secs(seconds);
        }
        Ok(herald_engine::RoutingConfig {
            table: RouteTable {
                routes,
                default: file.default.clone(),
            },
            breaker,
        })
    }

    fn quiet_hours(&self) -> Result<herald_domain::quiet_hours::QuietHours> {
        let q = &self.quiet_hours;
        let window = |name: &str, text: &str| {
            text.parse::<herald_domain::quiet_hours::Window>()
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))
        };
        let mut hours = herald_domain::quiet_hours::QuietHours::default();
        if let Some(text) = &q.window {
            hours.default = window("quiet_hours.window", text)?;
        }
        for (country, text) in &q.countries {
            let region = herald_domain::phone::Region::parse(country).map_err(|_| {
                anyhow::anyhow!("quiet_hours.countries: {country:?} is not a country code")
            })?;
            hours.countries.insert(
                region,
                window(&format!("quiet_hours.countries.{country}"), text)?,
            );
        }
        Ok(hours)
    }

    fn prices(&self) -> Result<PriceTable> {
        let fallback = PriceTable::default();
        let currency = match self.prices.currency.as_deref() {
            Some(code) => Currency::parse(code)
                .ok()
                .with_context(|| format!("prices.currency {code:?} is not an ISO 4217 code"))?,
            None => fallback.currency(),
        };
        let amount = |what: &str, text: &str| {
            Amount::parse(text).with_context(|| format!("{what} {text:?} is not a decimal amount"))
        };
        let default = match self.prices.default.as_deref() {
            Some(text) => amount("prices.default", text)?,
            None => fallback.price(None, herald_domain::message::MessageType::Transactional),
        };
        let mut table = PriceTable::new(currency, Price::flat(default));
        for (code, text) in &self.prices.countries {
            let region = Region::parse(code)
                .with_context(|| format!("prices.countries: {code:?} is not a region code"))?;
            table = table.with_region(region, Price::flat(amount("price", text)?));
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let url = DatabaseUrl::new("postgres://herald:s3cret@db.internal:5432/herald");
        assert_eq!(
            url.to_string(),
            "postgres://herald:****@db.internal:5432/herald"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            DatabaseUrl::new("sqlite://herald.db").to_string(),
            "sqlite://herald.db"
        );
    }

    #[test]
    fn operator_tokens_never_print_and_must_be_long_enough() {
        let file: FileConfig = toml::from_str("operator_token = \"op-0123456789abcdef\"").unwrap();
        assert!(!format!("{file:?}").contains("0123456789"));
        assert_eq!(
            file.engine().unwrap().operator_token,
            Some(herald_engine::keys::hash("op-0123456789abcdef"))
        );
        let short: FileConfig = toml::from_str("operator_token = \"short\"").unwrap();
        assert!(short.engine().is_err());
        assert!(
            FileConfig::default()
                .engine()
                .unwrap()
                .operator_token
                .is_none()
        );
    }

    #[test]
    fn secret_keys_never_print_and_must_be_32_bytes() {
        let file: FileConfig =
            toml::from_str(&format!("secret_key = \"{}\"", "ab".repeat(32))).unwrap();
        assert!(!format!("{file:?}").contains("abab"));
        assert!(file.engine().unwrap().secret_key.is_some());
        let short: FileConfig = toml::from_str("secret_key = \"abcd\"").unwrap();
        assert!(short.engine().is_err());
        assert!(FileConfig::default().engine().unwrap().secret_key.is_none());
    }

    #[test]
    fn the_file_overrides_defaults_and_rejects_typos() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = "0.0.0.0:9000"
            [simulator]
            delivery_delay_ms = 10
            failure_codes = [{ code = "30007", message = "Carrier violation" }]
            [prices]
            default = "0.05"
            countries = { GB = "0.04" }
            "#,
        )
        .unwrap();
        let engine = file.engine().unwrap();
        assert_eq!(engine.simulator.delivery_delay, Duration::from_millis(10));
        assert_eq!(
            engine.simulator.failure_codes,
            vec![("30007".into(), "Carrier violation".into())]
        );
        let gb = Region::parse("GB").ok();
        let kind = herald_domain::message::MessageType::Promotional;
        assert_eq!(engine.intake.prices.price(gb, kind).micros(), 40_000);
        assert_eq!(engine.intake.prices.price(None, kind).micros(), 50_000);
        assert!(toml::from_str::<FileConfig>("listne = \"x\"").is_err());
        let bad_rate: FileConfig = toml::from_str("[simulator]\nfailure_rate = 2.0").unwrap();
        assert!(bad_rate.engine().is_err());
    }

    #[test]
    fn routes_are_read_and_checked() {
        let file: FileConfig = toml::from_str(
            r#"
            [routing]
            default = ["twilio", "simulator"]
            breaker_failures = 3
            breaker_cool_down_seconds = 10
            rate_limits = { twilio = { per_second = 10, burst = 20, segments_per_second = 30 } }
            [[routing.routes]]
            country = "GB"
            providers = ["simulator"]
            [[routing.routes]]
            country = "US"
            prefix = "1415"
            providers = ["twilio"]
            "#,
        )
        .unwrap();
        let engine = file.engine().unwrap();
        let limits = &engine.dispatcher.rate_limits["twilio"];
        let messages = limits.messages.unwrap();
        assert_eq!((messages.per_second, messages.burst), (10.0, 20.0));
        let segments = limits.segments.unwrap();
        assert_eq!((segments.per_second, segments.burst), (30.0, 30.0));
        let routing = engine.routing;
        assert_eq!(routing.breaker.failures_to_open, 3);
        assert_eq!(routing.breaker.cool_down, Duration::from_secs(10));
        assert_eq!(
            routing
                .table
                .candidates("+14155550100", Region::parse("US").ok()),
            ["twilio"]
        );
        assert_eq!(
            routing
                .table
                .candidates("+33612345678", Region::parse("FR").ok()),
            ["twilio", "simulator"]
        );
        for bad in [
            "[[routing.routes]]\ncountry = \"XX\"\nproviders = [\"twilio\"]",
            "[[routing.routes]]\nprefix = \"+44\"\nproviders = [\"twilio\"]",
            "[[routing.routes]]\nproviders = [\"twilio\"]",
            "[[routing.routes]]\ncountry = \"GB\"\nproviders = []",
            "[routing.rate_limits]\ntwilio = { per_second = 0 }",
            "[routing.rate_limits]\ntwilio = { per_second = 5, burst = 0.5 }",
            "[routing.rate_limits]\ntwilio = { per_second = 5, segments_per_second = 0 }",
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            assert!(file.engine().is_err(), "{bad}");
        }
    }
}
