//! The AWS SNS adapter: sends SMS with `Publish` to a phone number through the official SDK
//! (SigV4, the usual credential chain), keeps the account's opt-out list in step
//! (`ListPhoneNumbersOptedOut`, `CheckIfPhoneNumberIsOptedOut`, `OptInPhoneNumber`), and, in
//! [`status`], reads the delivery status logs that users forward to Herald.
//!
//! SNS answers a publish with nothing but a message id and never answers questions about a
//! message afterwards, so delivery reports only ever come from those forwarded logs.

pub mod status;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sns::config::retry::RetryConfig;
use aws_sdk_sns::config::timeout::TimeoutConfig;
use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;
use herald_domain::message::MessageType;
use herald_domain::money::Amount;

use crate::{Accepted, Lookup, LookupQuery, Outbound, Provider, SendError};

/// The name recorded on messages sent through SNS.
pub const NAME: &str = "sns";

/// The code of a refusal caused by the account rather than the message: unknown or disabled
/// keys, a wrong secret, a missing `sns:Publish` permission, a skewed clock. Such a refusal is
/// reported as [`SendError::Transient`] under this code: the message itself is fine and must not
/// be failed for good, while an operator fixes the account; the code lets routing and alerts
/// tell it apart from throttling.
pub const ACCOUNT_PROBLEM: &str = "AuthorizationError";

/// An SNS account. The secret access key never appears in `Debug` output.
#[derive(Clone)]
pub struct SnsConfig {
    /// The AWS region whose SNS endpoint sends the messages, e.g. `eu-west-1`.
    pub region: String,
    /// Overrides the regional endpoint: a VPC endpoint, or a local SNS implementation in tests.
    pub endpoint_url: Option<String>,
    /// Static keys; without them the SDK's credential chain is used (environment, profiles,
    /// container and instance roles).
    pub keys: Option<SnsKeys>,
    /// Sent as `AWS.SNS.SMS.SenderID` when a message names no sender; countries that support
    /// alphanumeric sender IDs show it instead of a number.
    pub sender_id: Option<String>,
    /// The most, in USD, SNS may spend on one message (`AWS.SNS.SMS.MaxPrice`); dearer messages
    /// are not sent.
    pub max_price: Option<Amount>,
    /// How long one publish may take before it counts as unanswered.
    pub timeout: Duration,
    /// How long opening a connection may take; a connection never opened delivered nothing, so
    /// this can be short and its failures retried safely.
    pub connect_timeout: Duration,
}

/// An access key pair.
#[derive(Clone)]
pub struct SnsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for SnsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsKeys")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"****")
            .finish()
    }
}

impl std::fmt::Debug for SnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsConfig")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("keys", &self.keys)
            .field("sender_id", &self.sender_id)
            .field("max_price", &self.max_price)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl SnsConfig {
    pub fn new(region: impl Into<String>) -> SnsConfig {
        SnsConfig {
            region: region.into(),
            endpoint_url: None,
            keys: None,
            sender_id: None,
            max_price: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// Use these static keys instead of the credential chain.
    pub fn with_keys(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> SnsConfig {
        self.keys = Some(SnsKeys {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        });
        self
    }
}

/// The SNS provider.
pub struct Sns {
    config: SnsConfig,
    client: aws_sdk_sns::Client,
}

impl Sns {
    /// A client for `config`. Without static keys this resolves the credential chain's sources
    /// (it may read files and the environment), hence `async`.
    pub async fn new(config: SnsConfig) -> Sns {
        let builder = match &config.keys {
            Some(keys) => aws_sdk_sns::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .credentials_provider(Credentials::new(
                    &keys.access_key_id,
                    &keys.secret_access_key,
                    None,
                    None,
                    "herald-config",
                )),
            None => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(config.region.clone()))
                    .load()
                    .await;
                aws_sdk_sns::config::Builder::from(&shared)
            }
        };
        let mut builder = builder
            .region(Region::new(config.region.clone()))
            // The dispatcher owns retries: it knows the attempt count, backs off with jitter and
            // fails over to another provider. The SDK's own retries would also resend a publish
            // whose answer was lost, which could text someone twice.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_attempt_timeout(config.timeout)
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        Sns {
            client: aws_sdk_sns::Client::from_conf(builder.build()),
            config,
        }
    }

    pub fn config(&self) -> &SnsConfig {
        &self.config
    }

    /// Every number that has opted out of SMS from this AWS account, following `nextToken`
    /// through all pages (SNS gives at most 100 a page).
    pub async fn opted_out_numbers(&self) -> Result<Vec<String>, SendError> {
        let mut numbers = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_phone_numbers_opted_out()
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(classify)?;
            numbers.extend(page.phone_numbers().iter().cloned());
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(numbers),
            }
        }
    }

    /// Whether SNS will refuse to text `number` (E.164) because it opted out.
    pub async fn is_opted_out(&self, number: &str) -> Result<bool, SendError> {
        let answer = self
            .client
            .check_if_phone_number_is_opted_out()
            .phone_number(number)
            .send()
            .await
            .map_err(classify)?;
        Ok(answer.is_opted_out())
    }

    /// Take `number` off the account's opt-out list, after it asked to receive messages again.
    /// SNS allows this once every 30 days per number.
    pub async fn opt_in(&self, number: &str) -> Result<(), SendError> {
        self.client
            .opt_in_phone_number()
            .phone_number(number)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// The SMS attributes Herald sets on a publish.
    fn attributes(&self, message: &Outbound) -> Vec<(&'static str, &'static str, String)> {
        let sms_type = match message.kind {
            MessageType::Transactional => "Transactional",
            MessageType::Promotional => "Promotional",
        };
        let mut attributes = vec![("AWS.SNS.SMS.SMSType", "String", sms_type.to_owned())];
        match message.from.as_ref().or(self.config.sender_id.as_ref()) {
            // A number is an origination identity, which SNS takes in its own attribute; an
            // alphanumeric sender shows as the sender ID where the country allows it.
            Some(from) if from.starts_with('+') => {
                attributes.push(("AWS.MM.SMS.OriginationNumber", "String", from.clone()))
            }
            Some(sender_id) => {
                attributes.push(("AWS.SNS.SMS.SenderID", "String", sender_id.clone()))
            }
            None => {}
        }
        if let Some(max_price) = self.config.max_price {
            attributes.push(("AWS.SNS.SMS.MaxPrice", "Number", max_price.to_string()));
        }
        attributes
    }
}

#[async_trait]
impl Provider for Sns {
    fn name(&self) -> &str {
        NAME
    }

    async fn send(&self, message: &Outbound) -> Result<Accepted, SendError> {
        let mut publish = self
            .client
            .publish()
            .phone_number(&message.to)
            .message(&message.body);
        for (name, data_type, value) in self.attributes(message) {
            let value = MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(value)
                .build()
                .map_err(|e| SendError::Permanent {
                    code: "bad_attribute".into(),
                    message: format!("cannot build the SNS attribute {name}: {e}"),
                })?;
            publish = publish.message_attributes(name, value);
        }
        let output = publish.send().await.map_err(classify)?;
        let Some(id) = output.message_id() else {
            return Err(SendError::Unanswered {
                code: "bad_response".into(),
                message: "SNS accepted the publish but named no message id".into(),
            });
        };
        Ok(Accepted {
            provider_message_id: id.to_owned(),
            // SNS states the price only in the delivery status log.
            cost: None,
        })
    }

    async fn lookup(&self, _query: &LookupQuery) -> Result<Lookup, SendError> {
        // SNS has no API to ask about a published SMS: only the delivery status log can tell.
        Ok(Lookup::Unsupported)
    }
}

/// Sorts a failed SDK call by what the dispatcher may safely do next.
fn classify<E>(error: SdkError<E, aws_sdk_sns::config::http::HttpResponse>) -> SendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &error {
        SdkError::ServiceError(service) => {
            let raw = service.raw();
            let body = raw.body().bytes().map(String::from_utf8_lossy);
            // The SDK reads the code from `ErrorResponse/Error/Code`. Some SNS-compatible
            // servers (moto, for signature and permission errors) nest it differently; they
            // still name it in the `x-amzn-ErrorType` header and in a `<Code>` element.
            let code = service
                .err()
                .code()
                .map(str::to_owned)
                .or_else(|| {
                    let header = raw.headers().get("x-amzn-errortype")?;
                    Some(header.split(':').next().unwrap_or(header).to_owned())
                })
                .or_else(|| xml_text(body.as_deref()?, "Code"));
            let message = service
                .err()
                .message()
                .map(str::to_owned)
                .or_else(|| xml_text(body.as_deref()?, "Message"));
            refusal(raw.status().as_u16(), code.as_deref(), message.as_deref())
        }
        // The request was never sent (e.g. no credentials could be found): nothing to duplicate.
        SdkError::ConstructionFailure(_) => SendError::Transient {
            code: "not_sent".into(),
            message: error_chain(&error),
            retry_after: None,
        },
        SdkError::DispatchFailure(failure)
            if never_connected(
                failure.is_timeout(),
                failure.is_io(),
                failure
                    .as_connector_error()
                    .map(|e| e as &(dyn std::error::Error + 'static)),
            ) =>
        {
            SendError::Transient {
                code: "connect".into(),
                message: error_chain(&error),
                retry_after: None,
            }
        }
        SdkError::TimeoutError(_) => SendError::Unanswered {
            code: "timeout".into(),
            message: "SNS did not answer in time".into(),
        },
        _ => SendError::Unanswered {
            code: "request".into(),
            message: error_chain(&error),
        },
    }
}

/// Whether a dispatch failed before any byte could reach SNS. The connector's own timeout is
/// the connect timeout (the whole attempt is bounded separately and fails as
/// [`SdkError::TimeoutError`]); a refused or unreachable address is reported as an I/O error of
/// that kind somewhere in the error's causes.
fn never_connected(
    timeout: bool,
    io: bool,
    connector: Option<&(dyn std::error::Error + 'static)>,
) -> bool {
    if timeout {
        return true;
    }
    if !io {
        return false;
    }
    let mut cause = connector;
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | NetworkUnreachable | HostUnreachable
            ) {
                return true;
            }
        }
        cause = error.source();
    }
    false
}

/// The text of the first `<tag>` element in `xml`, if it is plain text.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    let text = xml[start..end].trim();
    (!text.is_empty() && !text.contains('<')).then(|| text.to_owned())
}

/// An error with its causes, which the SDK keeps out of its top-level message.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// SNS's answer to a call it refused, by error code and HTTP status.
fn refusal(status: u16, code: Option<&str>, message: Option<&str>) -> SendError {
    let message = message.map_or_else(|| format!("SNS answered HTTP {status}"), str::to_owned);
    let code = code.map_or_else(|| status.to_string(), str::to_owned);
    // Every 401 or 403 from SNS is about the account (keys, signature, permissions), whatever
    // code, if any, the body names.
    let account = matches!(status, 401 | 403)
        || matches!(
            code.as_str(),
            "AuthorizationError"
                | "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "SignatureDoesNotMatch"
                | "IncompleteSignature"
                | "MissingAuthenticationToken"
                | "InvalidAccessKeyId"
                | "ExpiredToken"
                | "ExpiredTokenException"
                | "RequestExpired"
                | "OptInRequired"
        );
    if account {
        return SendError::Transient {
            code: ACCOUNT_PROBLEM.into(),
            message: format!("{code}: {message}"),
            retry_after: None,
        };
    }
    let transient = status == 429
        || status >= 500
        || matches!(
            code.as_str(),
            "Throttling"
                | "ThrottlingException"
                | "ThrottledException"
                | "RequestLimitExceeded"
                | "KMSThrottling"
                | "InternalError"
                | "InternalFailure"
                | "ServiceUnavailable"
        );
    if transient {
        SendError::Transient {
            code,
            message,
            retry_after: None,
        }
    } else {
        SendError::Permanent { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn outbound(kind: MessageType, from: Option<&str>) -> Outbound {
        Outbound {
            message_id: Uuid::now_v7(),
            to: "+447700900123".into(),
            from: from.map(str::to_owned),
            body: "Hi".into(),
            encoding: herald_domain::encoding::Encoding::Gsm7,
            segments: 1,
            kind,
            attempt: 1,
        }
    }

    async fn sns(config: SnsConfig) -> Sns {
        Sns::new(config.with_keys("AKID", "secret")).await
    }

    #[test]
    fn bad_requests_fail_for_good() {
        for code in ["InvalidParameter", "InvalidParameterValue"] {
            assert!(
                matches!(refusal(400, Some(code), Some("m")), SendError::Permanent { code: c, .. } if c == code)
            );
        }
    }

    #[test]
    fn account_problems_are_retried_under_one_code() {
        for (status, code) in [
            (403, "AuthorizationError"),
            (403, "InvalidClientTokenId"),
            (403, "SignatureDoesNotMatch"),
            (400, "UnrecognizedClientException"),
        ] {
            match refusal(status, Some(code), Some("no")) {
                SendError::Transient {
                    code: c, message, ..
                } => {
                    assert_eq!(c, ACCOUNT_PROBLEM);
                    assert!(message.starts_with(code), "{message}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        for (status, code) in [
            (400, Some("Throttling")),
            (400, Some("KMSThrottling")),
            (500, Some("InternalError")),
            (503, None),
            (429, None),
        ] {
            assert!(
                matches!(refusal(status, code, None), SendError::Transient { .. }),
                "{status} {code:?}"
            );
        }
    }

    #[test]
    fn an_error_code_is_found_in_any_xml_nesting() {
        let body = "<?xml version=\"1.0\"?><ErrorResponse><Errors><Error>\
            <Code>SignatureDoesNotMatch</Code><Message>no</Message></Error></Errors></ErrorResponse>";
        assert_eq!(
            xml_text(body, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(xml_text(body, "Message").as_deref(), Some("no"));
        assert_eq!(xml_text(body, "Type"), None);
        assert_eq!(xml_text("<Code><b>x</b></Code>", "Code"), None);
    }

    #[tokio::test]
    async fn attributes_follow_the_message_type_and_sender() {
        let mut config = SnsConfig::new("eu-west-1");
        config.sender_id = Some("Herald".into());
        config.max_price = Some(Amount::parse("0.05").unwrap());
        let sns = sns(config).await;
        assert_eq!(
            sns.attributes(&outbound(MessageType::Promotional, None)),
            vec![
                ("AWS.SNS.SMS.SMSType", "String", "Promotional".to_owned()),
                ("AWS.SNS.SMS.SenderID", "String", "Herald".to_owned()),
                ("AWS.SNS.SMS.MaxPrice", "Number", "0.05".to_owned()),
            ]
        );
        let attributes = sns.attributes(&outbound(MessageType::Transactional, Some("+15550100")));
        assert_eq!(
            attributes[..2],
            [
                ("AWS.SNS.SMS.SMSType", "String", "Transactional".to_owned()),
                (
                    "AWS.MM.SMS.OriginationNumber",
                    "String",
                    "+15550100".to_owned()
                ),
            ]
        );
        let plain = self::sns(SnsConfig::new("eu-west-1")).await;
        assert_eq!(
            plain.attributes(&outbound(MessageType::Transactional, None)),
            vec![("AWS.SNS.SMS.SMSType", "String", "Transactional".to_owned())]
        );
    }

    #[tokio::test]
    async fn sns_cannot_be_asked_about_a_message() {
        let sns = sns(SnsConfig::new("eu-west-1")).await;
        let query = LookupQuery {
            message_id: Uuid::now_v7(),
            provider_message_id: Some("8a8f2b4e-0f5c-5d55-a3f1-1c2e5b1e4f00".into()),
            to: "+447700900123".into(),
        };
        assert_eq!(sns.lookup(&query).await, Ok(Lookup::Unsupported));
    }

    #[test]
    fn the_secret_key_never_prints() {
        let config = SnsConfig::new("eu-west-1").with_keys("AKIDEXAMPLE", "wJalrXUtnFEMI");
        let printed = format!("{config:?}");
        assert!(printed.contains("AKIDEXAMPLE"));
        assert!(!printed.contains("wJalrXUtnFEMI"));
    }
}
