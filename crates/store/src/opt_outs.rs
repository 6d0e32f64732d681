//! The suppression list: numbers that opted out of an organization's messages.

use jiff::Timestamp;

/// A number that opted out, and what said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptOut {
    /// E.164.
    pub phone: String,
    /// `api`, `twilio:21610`, `sns`…
    pub source: String,
    pub created_at: Timestamp,
}
