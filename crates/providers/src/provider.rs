//! The contract between the dispatcher and a provider.

use std::time::Duration;

use async_trait::async_trait;
use herald_domain::encoding::Encoding;
use herald_domain::message::MessageType;
use herald_domain::money::Amount;
use herald_domain::status::ReportedStatus;
use herald_store::{ProviderReport, ReportOutcome};
use uuid::Uuid;

/// A message as handed to a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// Herald's id; providers that can carry a reference (a callback URL parameter, a client
    /// reference) send it along so reports and lookups can name the message.
    pub message_id: Uuid,
    /// E.164.
    pub to: String,
    pub from: Option<String>,
    pub body: String,
    pub encoding: Encoding,
    pub segments: u32,
    /// Some providers price, route or filter by it (SNS's `SMSType`).
    pub kind: MessageType,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// The provider took the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub provider_message_id: String,
    /// The price, when the provider says it at once.
    pub cost: Option<Amount>,
}

/// Why a send did not succeed. The three kinds decide what the dispatcher may safely do next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Refused without accepting (5xx, 429, connection refused): retrying cannot duplicate it.
    #[error("transient provider error {code}: {message}")]
    Transient {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Refused for good (invalid number, blocked): retrying would fail the same way.
    #[error("permanent provider error {code}: {message}")]
    Permanent { code: String, message: String },
    /// No answer (a timeout after the request left): the provider may have accepted it, so the
    /// message must be reconciled, never resent blindly.
    #[error("no answer from the provider ({code}): {message}")]
    Unanswered { code: String, message: String },
}

/// What a provider knows about a message Herald is unsure of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found {
        provider_message_id: String,
        status: ReportedStatus,
        error_code: Option<String>,
    },
    /// The provider has no such message: sending it again cannot duplicate it.
    NotFound,
    /// This provider cannot answer such questions.
    Unsupported,
}

/// The identifying details of a message to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupQuery {
    pub message_id: Uuid,
    pub provider_message_id: Option<String>,
    pub to: String,
}

/// An SMS provider account.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The name recorded on messages sent through this provider.
    fn name(&self) -> &str;

    async fn send(&self, message: &Outbound) -> Result<Accepted, SendError>;

    /// Ask the provider whether it has a message whose fate Herald did not record.
    async fn lookup(&self, query: &LookupQuery) -> Result<Lookup, SendError>;

    /// What the provider charged for a message it has settled, when it says (`None` until it
    /// knows, or for providers that never do).
    async fn charged(&self, _provider_message_id: &str) -> Result<Option<Amount>, SendError> {
        Ok(None)
    }
}

/// The sink could not take the reports (e.g. the database is down); the sender should retry,
/// as a real provider retries a callback that got an error.
#[derive(Debug, thiserror::Error)]
#[error("status reports not recorded: {0}")]
pub struct SinkError(pub String);

/// Where provider status reports go; answers once they are durably recorded.
#[async_trait]
pub trait ReportSink: Send + Sync + 'static {
    async fn submit(&self, reports: Vec<ProviderReport>) -> Result<Vec<ReportOutcome>, SinkError>;
}
