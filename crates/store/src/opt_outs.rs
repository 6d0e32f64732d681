//! The suppression list: numbers that opted out of an organization's messages.
//!
//! When a person is erased, their number must leave the database but their opt-out must
//! not: the entry is kept under [`erased_key`], a one-way digest of the number, which matches
//! the number if it is ever sent to again.

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A number that opted out, and what said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptOut {
    /// E.164, or an [`erased_key`] for a person who was erased.
    pub phone: String,
    /// `api`, `twilio:21610`, `sns`…
    pub source: String,
    pub created_at: Timestamp,
}

/// How an organization answers keywords: its HELP text and its own opt-out and opt-in words
/// (the standard ones always apply).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeywordSettings {
    pub help_text: Option<String>,
    pub opt_out_words: Vec<String>,
    pub opt_in_words: Vec<String>,
}

/// A change to the suppression list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptOutAction {
    OptOut,
    OptIn,
}

impl OptOutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OptOutAction::OptOut => "opt_out",
            OptOutAction::OptIn => "opt_in",
        }
    }

    pub fn parse(text: &str) -> Option<OptOutAction> {
        [OptOutAction::OptOut, OptOutAction::OptIn]
            .into_iter()
            .find(|a| a.as_str() == text)
    }
}

/// One change to a number's place on the suppression list, and what caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptOutEvent {
    pub action: OptOutAction,
    /// `keyword`, `api`, `twilio:21610`, `sns`…
    pub source: String,
    /// The inbound message that asked for it (a STOP or START).
    pub message_id: Option<Uuid>,
    pub occurred_at: Timestamp,
}

/// What the suppression list keeps for `phone` once its person is erased. Salted by the
/// organization, so the same number has unrelated keys in different organizations.
pub fn erased_key(org_id: Uuid, phone: &str) -> String {
    let digest = Sha256::new()
        .chain_update(org_id.as_bytes())
        .chain_update(phone.as_bytes())
        .finalize();
    format!("erased:{}", hex::encode(digest))
}

/// The erased keys of numbers being checked against suppression lists, and the numbers they
/// stand for: an entry found under a key is that number's opt-out.
pub struct ErasedKeys<'a> {
    keys: std::collections::HashMap<String, (Uuid, &'a str)>,
}

impl<'a> ErasedKeys<'a> {
    pub fn of(wanted: &[(Uuid, &'a str)]) -> ErasedKeys<'a> {
        ErasedKeys {
            keys: wanted
                .iter()
                .map(|&(org_id, phone)| (erased_key(org_id, phone), (org_id, phone)))
                .collect(),
        }
    }

    /// The keys to look up, each with its organization.
    pub fn keys(&self) -> Vec<(Uuid, &str)> {
        self.keys
            .iter()
            .map(|(key, (org_id, _))| (*org_id, key.as_str()))
            .collect()
    }

    /// The organization and number an entry found under `key` belongs to.
    pub fn number(&self, org_id: Uuid, key: &str) -> Option<&'a str> {
        self.keys
            .get(key)
            .filter(|(org, _)| *org == org_id)
            .map(|(_, phone)| *phone)
    }
}

/// The error code of a message suppressed because its recipient opted out.
pub const OPTED_OUT: &str = "opted_out";

/// Why a message to a number already on the suppression list was not queued.
pub const OPTED_OUT_ON_ARRIVAL: &str = "the recipient had opted out before the message was sent";

/// The result that suppresses a message just inserted (attempt 0: never claimed), so the
/// backend applies it through the same [`crate::Batch`] rules as any other.
pub fn suppression_on_arrival(id: uuid::Uuid) -> crate::SendResult {
    crate::SendResult {
        id,
        attempt: 0,
        provider: None,
        outcome: crate::SendOutcome::Suppressed {
            code: OPTED_OUT.into(),
            message: OPTED_OUT_ON_ARRIVAL.into(),
        },
    }
}

/// `message` (as just inserted) as it reads once suppressed on arrival at `now`.
pub fn suppressed_on_arrival(message: &mut crate::Message, now: Timestamp) {
    use herald_domain::status::MessageStatus;
    message.status = MessageStatus::Suppressed;
    message.error_code = Some(OPTED_OUT.into());
    message.error_message = Some(OPTED_OUT_ON_ARRIVAL.into());
    message.updated_at = now;
    let seq = message.history.len() as u32 + 1;
    message.history.push(crate::StatusChange {
        seq,
        status: MessageStatus::Suppressed,
        at: now,
        error_code: Some(OPTED_OUT.into()),
        error_message: Some(OPTED_OUT_ON_ARRIVAL.into()),
    });
}
