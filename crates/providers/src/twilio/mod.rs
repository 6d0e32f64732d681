//! The Twilio adapter: sends through the Messages API
//! (`POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded, HTTP Basic
//! auth), asks it about messages whose fate was not recorded, and turns its signed status
//! callbacks into [`ProviderReport`]s.
//!
//! The status callback URL carries Herald's message id (`?m=…`), so a callback finds its
//! message even when it overtakes the recording of the send result.

pub mod pricing;
pub mod signature;

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use herald_domain::money::Amount;
use herald_domain::status::ReportedStatus;
use herald_store::ProviderReport;
use serde::Deserialize;
use uuid::Uuid;

use crate::{Accepted, Lookup, LookupQuery, Outbound, Provider, SendError};

/// The name recorded on messages sent through Twilio.
pub const NAME: &str = "twilio";

/// A Twilio account. The auth token never appears in `Debug` output.
#[derive(Clone)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// `https://api.twilio.com`, or a local server in tests.
    pub base_url: String,
    /// Default sender number, used when a message names none.
    pub from: Option<String>,
    /// A Messaging Service, used instead of `from` when set.
    pub messaging_service_sid: Option<String>,
    /// Where Twilio should post status callbacks (`{public_url}/hooks/twilio/status`).
    pub status_callback: Option<String>,
    /// The most Twilio may charge per segment (`MaxPrice`, USD); dearer messages fail there.
    pub max_price: Option<String>,
    /// Seconds Twilio may keep trying to deliver (`ValidityPeriod`, 1–36000).
    pub validity_period: Option<u32>,
    /// How long a request may take before it counts as unanswered.
    pub timeout: Duration,
    /// Connections kept open to Twilio.
    pub max_idle_connections: usize,
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"****")
            .field("base_url", &self.base_url)
            .field("from", &self.from)
            .field("messaging_service_sid", &self.messaging_service_sid)
            .field("status_callback", &self.status_callback)
            .field("max_price", &self.max_price)
            .field("validity_period", &self.validity_period)
            .finish()
    }
}

impl TwilioConfig {
    pub fn new(account_sid: impl Into<String>, auth_token: impl Into<String>) -> TwilioConfig {
        TwilioConfig {
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
            base_url: "https://api.twilio.com".into(),
            from: None,
            messaging_service_sid: None,
            status_callback: None,
            max_price: None,
            validity_period: None,
            timeout: Duration::from_secs(10),
            max_idle_connections: 256,
        }
    }
}

/// The account settings cannot make a client.
#[derive(Debug, thiserror::Error)]
pub enum TwilioSetupError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the Twilio base URL is not valid: {0}")]
    Url(String),
    #[error("the Twilio credentials cannot be sent in a header")]
    Credentials,
}

/// The Twilio provider.
pub struct Twilio {
    config: TwilioConfig,
    client: reqwest::Client,
    /// Parsed once: at thousands of sends a second, parsing the URL and encoding the
    /// credentials on every request showed up in profiles.
    messages_url: reqwest::Url,
    authorization: reqwest::header::HeaderValue,
}

/// A message as Twilio describes it.
#[derive(Debug, Deserialize)]
struct MessageResource {
    sid: String,
    status: String,
    error_code: Option<i64>,
    /// Negative, as Twilio writes charges (`"-0.00750"`); null until Twilio has priced it.
    #[serde(default)]
    price: Option<String>,
}

/// A Twilio charge (`"-0.00750"`) as a positive amount.
fn charge(price: &str) -> Option<Amount> {
    let price = price.trim();
    if price.is_empty() {
        return None;
    }
    Amount::parse(price.trim_start_matches('-')).ok()
}

/// Twilio's error body.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    code: Option<i64>,
    message: Option<String>,
}

impl Twilio {
    pub fn new(config: TwilioConfig) -> Result<Twilio, TwilioSetupError> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_idle_connections)
            .connect_timeout(Duration::from_secs(5))
            .timeout(config.timeout)
            .build()?;
        let messages_url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            config.base_url.trim_end_matches('/'),
            config.account_sid
        );
        let messages_url =
            reqwest::Url::parse(&messages_url).map_err(|e| TwilioSetupError::Url(e.to_string()))?;
        let credentials = format!("{}:{}", config.account_sid, config.auth_token);
        let mut authorization = reqwest::header::HeaderValue::try_from(format!(
            "Basic {}",
            STANDARD.encode(credentials)
        ))
        .map_err(|_| TwilioSetupError::Credentials)?;
        authorization.set_sensitive(true);
        Ok(Twilio {
            config,
            client,
            messages_url,
            authorization,
        })
    }

    pub fn config(&self) -> &TwilioConfig {
        &self.config
    }

    /// The message resource of `sid` (`GET …/Messages/{sid}.json`); `None` when Twilio does
    /// not know it.
    async fn message_resource(&self, sid: &str) -> Result<Option<MessageResource>, SendError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages/{sid}.json",
            self.config.base_url.trim_end_matches('/'),
            self.config.account_sid
        );
        let response = self
            .client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .send()
            .await
            .map_err(request_error)?;
        match response.status().as_u16() {
            404 => Ok(None),
            200 => Ok(Some(response.json().await.map_err(request_error)?)),
            status => Err(SendError::Transient {
                code: status.to_string(),
                message: "Twilio could not say what became of a message".into(),
                retry_after: None,
            }),
        }
    }

    /// The form Herald posts for `message`.
    fn form(&self, message: &Outbound) -> Result<Vec<(&'static str, String)>, SendError> {
        let mut form = vec![("To", message.to.clone()), ("Body", message.body.clone())];
        match (
            &message.from,
            &self.config.messaging_service_sid,
            &self.config.from,
        ) {
            (Some(from), _, _) => form.push(("From", from.clone())),
            (None, Some(service), _) => form.push(("MessagingServiceSid", service.clone())),
            (None, None, Some(from)) => form.push(("From", from.clone())),
            (None, None, None) => {
                return Err(SendError::Permanent {
                    code: "no_sender".into(),
                    message: "no sender: configure a Twilio number or Messaging Service".into(),
                });
            }
        }
        if let Some(callback) = &self.config.status_callback {
            form.push((
                "StatusCallback",
                format!("{callback}?m={}", message.message_id),
            ));
        }
        if let Some(max_price) = &self.config.max_price {
            form.push(("MaxPrice", max_price.clone()));
        }
        if let Some(validity) = self.config.validity_period {
            form.push(("ValidityPeriod", validity.to_string()));
        }
        Ok(form)
    }
}

#[async_trait]
impl Provider for Twilio {
    fn name(&self) -> &str {
        NAME
    }

    async fn send(&self, message: &Outbound) -> Result<Accepted, SendError> {
        let form = self.form(message)?;
        let response = self
            .client
            .post(self.messages_url.clone())
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .form(&form)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(request_error)?;
        if (200..300).contains(&status) {
            let resource: MessageResource =
                serde_json::from_slice(&body).map_err(|e| SendError::Unanswered {
                    code: "bad_response".into(),
                    message: format!(
                        "Twilio accepted the request but its answer was unreadable: {e}"
                    ),
                })?;
            return Ok(Accepted {
                provider_message_id: resource.sid,
                cost: None,
            });
        }
        let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        Err(classify(status, error, retry_after))
    }

    async fn lookup(&self, query: &LookupQuery) -> Result<Lookup, SendError> {
        // Without Twilio's id the message cannot be told apart from others to the same number
        // with certainty; waiting is safer than guessing and sending twice.
        let Some(sid) = &query.provider_message_id else {
            return Ok(Lookup::Unsupported);
        };
        let Some(resource) = self.message_resource(sid).await? else {
            return Ok(Lookup::NotFound);
        };
        Ok(match reported_status(&resource.status) {
            Some(status) => Lookup::Found {
                provider_message_id: resource.sid,
                status,
                error_code: resource.error_code.map(|c| c.to_string()),
            },
            // Known to Twilio but not yet sent: it has it, so it must not be resent.
            None => Lookup::Found {
                provider_message_id: resource.sid,
                status: ReportedStatus::Sent,
                error_code: None,
            },
        })
    }

    async fn charged(&self, provider_message_id: &str) -> Result<Option<Amount>, SendError> {
        let resource = self.message_resource(provider_message_id).await?;
        Ok(resource.and_then(|r| r.price).as_deref().and_then(charge))
    }
}

/// A request that failed before any answer. A connection that was never made cannot have
/// delivered anything; anything else may have reached Twilio.
fn request_error(error: reqwest::Error) -> SendError {
    if error.is_connect() {
        SendError::Transient {
            code: "connect".into(),
            message: error.to_string(),
            retry_after: None,
        }
    } else if error.is_timeout() {
        SendError::Unanswered {
            code: "timeout".into(),
            message: "Twilio did not answer in time".into(),
        }
    } else {
        SendError::Unanswered {
            code: "request".into(),
            message: error.to_string(),
        }
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// Twilio's refusals, by HTTP status and error code. Throttling, server errors and an account
/// that cannot authenticate (a configuration to fix, not a message to drop) are worth retrying;
/// every other refusal is about the message itself.
fn classify(status: u16, error: ErrorBody, retry_after: Option<Duration>) -> SendError {
    let code = error
        .code
        .map_or_else(|| status.to_string(), |c| c.to_string());
    let message = error
        .message
        .unwrap_or_else(|| format!("Twilio answered HTTP {status}"));
    let transient = status == 429
        || status >= 500
        || matches!(status, 401 | 403)
        || matches!(error.code, Some(20429 | 14107 | 20003 | 30022));
    if transient {
        SendError::Transient {
            code,
            message,
            retry_after,
        }
    } else {
        SendError::Permanent { code, message }
    }
}

/// Herald's reading of a Twilio `MessageStatus`; `None` for statuses before `sent` (queued,
/// accepted, scheduled, sending), which say nothing a send result did not.
pub fn reported_status(status: &str) -> Option<ReportedStatus> {
    match status {
        "sent" => Some(ReportedStatus::Sent),
        "delivered" | "read" => Some(ReportedStatus::Delivered),
        "undelivered" => Some(ReportedStatus::Undelivered),
        "failed" | "canceled" => Some(ReportedStatus::Failed),
        _ => None,
    }
}

/// The report a status callback carries, or `None` when it carries nothing to record.
pub fn status_report(
    params: &[(String, String)],
    message_id: Option<Uuid>,
) -> Option<ProviderReport> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let sid = get("MessageSid").or_else(|| get("SmsSid"))?;
    let status = reported_status(get("MessageStatus").or_else(|| get("SmsStatus"))?)?;
    let error_code = get("ErrorCode")
        .filter(|code| !code.is_empty())
        .map(str::to_owned);
    Some(ProviderReport {
        provider: NAME.to_owned(),
        message_id,
        provider_message_id: sid.to_owned(),
        status,
        error_message: error_code
            .as_ref()
            .map(|code| format!("Twilio error {code}")),
        error_code,
        cost: get("Price").and_then(charge),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn refusals_are_classified_by_status_and_code() {
        let error = |code| ErrorBody {
            code: Some(code),
            message: Some("m".into()),
        };
        assert!(
            matches!(classify(400, error(21211), None), SendError::Permanent { code, .. } if code == "21211")
        );
        assert!(matches!(
            classify(400, error(21610), None),
            SendError::Permanent { .. }
        ));
        assert!(matches!(
            classify(429, error(20429), Some(Duration::from_secs(2))),
            SendError::Transient {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(
            matches!(classify(503, ErrorBody::default(), None), SendError::Transient { code, .. } if code == "503")
        );
        assert!(matches!(
            classify(401, error(20003), None),
            SendError::Transient { .. }
        ));
    }

    #[test]
    fn callbacks_map_onto_herald_statuses() {
        let id = Uuid::now_v7();
        let delivered = status_report(
            &params(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]),
            Some(id),
        )
        .unwrap();
        assert_eq!(
            (
                delivered.status,
                delivered.message_id,
                delivered.provider_message_id.as_str()
            ),
            (ReportedStatus::Delivered, Some(id), "SM1")
        );
        let failed = status_report(
            &params(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30003"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            (failed.status, failed.error_code.as_deref()),
            (ReportedStatus::Undelivered, Some("30003"))
        );
        assert_eq!(
            status_report(
                &params(&[("MessageSid", "SM1"), ("MessageStatus", "queued")]),
                None
            ),
            None
        );
        assert_eq!(
            status_report(&params(&[("MessageStatus", "sent")]), None),
            None
        );
    }

    #[test]
    fn the_auth_token_never_prints() {
        let config = TwilioConfig::new("AC1", "secret-token");
        assert!(!format!("{config:?}").contains("secret-token"));
    }
}
