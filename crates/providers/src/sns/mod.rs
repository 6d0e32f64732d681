//! The AWS SNS adapter: sends SMS with `Publish` to a phone number through the official SDK
//! (SigV4, the usual credential chain), keeps the account's opt-out list in step
//! (`ListPhoneNumbersOptedOut`, `CheckIfPhoneNumberIsOptedOut`, `OptInPhoneNumber`), and, in
//! [`status`], reads the delivery status logs that users forward to Herald.
//!
//! SNS answers a publish with nothing but a message id and never answers questions about a
//! message afterwards, so delivery reports only ever come from those forwarded logs.

mod errors;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sns::config::retry::RetryConfig;
use aws_sdk_sns::config::timeout::TimeoutConfig;
use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sns::types::MessageAttributeValue;
use herald_domain::message::MessageType;
use herald_domain::money::Amount;

use self::errors::{Transmitted, classify};
use crate::{Accepted, Lookup, LookupQuery, Outbound, Provider, SendError};

/// The name recorded on messages sent through SNS.
pub const NAME: &str = "sns";

/// The code of a refusal caused by the account rather than the message: unknown or disabled
/// keys, a wrong secret, a missing `sns:Publish` permission, a skewed clock. Such a refusal is
/// reported as [`SendError::Transient`] under this code: the message itself is fine and must not
/// be failed for good, while an operator fixes the account; the code lets routing and alerts
/// tell it apart from throttling.
pub const ACCOUNT_PROBLEM: &str = "AuthorizationError";

/// The code of a message refused because its number opted out at SNS.
pub const OPTED_OUT: &str = "OptedOut";

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
    /// Ask `CheckIfPhoneNumberIsOptedOut` before each publish: SNS drops messages to opted-out
    /// numbers without a word, so this is how such a message fails visibly instead of being
    /// reported sent.
    pub check_opt_out: bool,
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
            .field("check_opt_out", &self.check_opt_out)
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
            check_opt_out: false,
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
        Sns::with_sdk_config(config, builder)
    }

    /// Herald's settings on top of an SDK configuration that knows how to find credentials.
    fn with_sdk_config(config: SnsConfig, builder: aws_sdk_sns::config::Builder) -> Sns {
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
                .map_err(|e| classify(e, true))?;
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
            .map_err(|e| classify(e, true))?;
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
            .map_err(|e| classify(e, true))?;
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
            // A number (long code or short code) is an origination identity, which SNS takes in
            // its own attribute; a sender ID has at least one letter and shows as the sender
            // where the country allows it.
            Some(from) if is_number(from) => {
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

fn is_number(sender: &str) -> bool {
    let digits = sender.strip_prefix('+').unwrap_or(sender);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[async_trait]
impl Provider for Sns {
    fn name(&self) -> &str {
        NAME
    }

    async fn send(&self, message: &Outbound) -> Result<Accepted, SendError> {
        if self.config.check_opt_out && self.is_opted_out(&message.to).await? {
            return Err(SendError::Permanent {
                code: OPTED_OUT.into(),
                message: "the number has opted out of SMS at AWS SNS".into(),
            });
        }
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
        let transmitted = Arc::new(AtomicBool::new(false));
        let output = publish
            .customize()
            .interceptor(Transmitted(transmitted.clone()))
            .send()
            .await
            .map_err(|e| classify(e, transmitted.load(Ordering::Relaxed)))?;
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
        let short_code = sns.attributes(&outbound(MessageType::Transactional, Some("24365")));
        assert_eq!(
            short_code[1],
            ("AWS.MM.SMS.OriginationNumber", "String", "24365".to_owned())
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

    /// A credential source that has nothing, like the default chain on a machine without AWS
    /// configuration.
    #[derive(Debug)]
    struct NoCredentials;

    impl aws_sdk_sns::config::ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                aws_credential_types::provider::error::CredentialsError::not_loaded(
                    "no credentials here",
                ),
            ))
        }
    }

    #[tokio::test]
    async fn a_publish_without_credentials_never_leaves_and_is_retried() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut config = SnsConfig::new("eu-west-1");
        config.endpoint_url = Some(format!("http://{}", listener.local_addr().unwrap()));
        let builder = aws_sdk_sns::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(NoCredentials);
        let sns = Sns::with_sdk_config(config, builder);
        match sns.send(&outbound(MessageType::Transactional, None)).await {
            Err(SendError::Transient { code, message, .. }) => {
                assert_eq!(code, "not_sent");
                assert!(message.contains("no credentials here"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(listener.accept().is_err(), "nothing reached the endpoint");
    }

    #[test]
    fn the_secret_key_never_prints() {
        let config = SnsConfig::new("eu-west-1").with_keys("AKIDEXAMPLE", "wJalrXUtnFEMI");
        let printed = format!("{config:?}");
        assert!(printed.contains("AKIDEXAMPLE"));
        assert!(!printed.contains("wJalrXUtnFEMI"));
    }
}
