//! Messages people send to an organization's numbers, as providers deliver them.

use jiff::Timestamp;
use uuid::Uuid;

/// One inbound message. `(provider, provider_message_id)` is unique: a provider delivering the
/// same message twice stores it once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMessage {
    pub id: Uuid,
    pub org_id: Uuid,
    /// The provider that delivered it: `twilio`, or an account's `twilio/{id}`.
    pub provider: String,
    pub provider_message_id: String,
    /// The sender, as the provider gave it (E.164 for phones).
    pub from: String,
    /// The organization's number it was sent to.
    pub to: String,
    pub body: String,
    pub received_at: Timestamp,
}
