//! Small value types that every layer passes around with a message.

use serde::{Deserialize, Serialize};

/// Why a message is sent, which decides the rules it obeys (SPEC §2): promotional messages need
/// consent and respect quiet hours; transactional ones (OTPs, confirmations) obey opt-outs only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    #[default]
    Transactional,
    Promotional,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Transactional => "transactional",
            MessageType::Promotional => "promotional",
        }
    }

    /// Dispatch priority: an OTP must not wait behind a marketing blast already in the queue.
    pub fn default_priority(self) -> i16 {
        match self {
            MessageType::Transactional => 10,
            MessageType::Promotional => 0,
        }
    }
}

impl std::str::FromStr for MessageType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transactional" => Ok(MessageType::Transactional),
            "promotional" => Ok(MessageType::Promotional),
            other => Err(format!("unknown message type {other:?}")),
        }
    }
}

/// Whether an API key (and everything it creates) is live or a test. Test traffic always goes to
/// the simulator and is kept apart from live traffic, as with Stripe's and Twilio's test
/// credentials, so an integration test can never text a real person or show up in live reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Live,
    Test,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Test => "test",
        }
    }

    /// The visible prefix of API keys of this mode.
    pub fn key_prefix(self) -> &'static str {
        match self {
            Mode::Live => "sk_live_",
            Mode::Test => "sk_test_",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" => Ok(Mode::Live),
            "test" => Ok(Mode::Test),
            other => Err(format!("unknown key mode {other:?}")),
        }
    }
}
