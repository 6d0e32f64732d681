//! Conversions between SQLite's column types and Herald's values.

use herald_domain::encoding::Encoding;
use herald_domain::message::{MessageType, Mode};
use herald_domain::money::{Amount, Currency};
use herald_domain::phone::Region;
use herald_domain::status::MessageStatus;
use herald_store::StoreError;
use jiff::Timestamp;

/// Attach what we were doing to a database error.
pub(crate) trait Ctx<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Ctx<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::backend(context, e))
    }
}

impl<T> Ctx<T> for Result<T, sqlx::migrate::MigrateError> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::backend(context, e))
    }
}

pub(crate) fn micros(ts: Timestamp) -> i64 {
    ts.as_microsecond()
}

pub(crate) fn timestamp(micros: i64) -> Result<Timestamp, StoreError> {
    // Seconds and their fraction apart: `Timestamp::from_microsecond` refuses the fractions of
    // the last representable second, where `held_until()` (`Timestamp::MAX`) is stored.
    let nanos = (micros.rem_euclid(1_000_000) * 1_000) as i32;
    Timestamp::new(micros.div_euclid(1_000_000), nanos)
        .map_err(|_| StoreError::Corrupt(format!("timestamp out of range: {micros}")))
}

pub(crate) fn opt_timestamp(micros: Option<i64>) -> Result<Option<Timestamp>, StoreError> {
    micros.map(timestamp).transpose()
}

pub(crate) fn status(text: &str) -> Result<MessageStatus, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("{e}")))
}

pub(crate) fn mode(text: &str) -> Result<Mode, StoreError> {
    text.parse().map_err(StoreError::Corrupt)
}

pub(crate) fn kind(text: &str) -> Result<MessageType, StoreError> {
    text.parse().map_err(StoreError::Corrupt)
}

pub(crate) fn encoding(text: &str) -> Result<Encoding, StoreError> {
    [Encoding::Gsm7, Encoding::Ucs2]
        .into_iter()
        .find(|e| e.as_str() == text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown encoding {text:?}")))
}

pub(crate) fn region(text: &str) -> Result<Region, StoreError> {
    Region::parse(text).map_err(|_| StoreError::Corrupt(format!("unknown region {text:?}")))
}

pub(crate) fn opt_region(text: Option<String>) -> Result<Option<Region>, StoreError> {
    text.as_deref().map(region).transpose()
}

pub(crate) fn currency(text: &str) -> Result<Currency, StoreError> {
    Currency::parse(text).map_err(|_| StoreError::Corrupt(format!("unknown currency {text:?}")))
}

pub(crate) fn amount(micros: i64) -> Amount {
    Amount::from_micros(micros)
}

/// Counts are stored as INTEGER; anything negative or huge means the row is damaged.
pub(crate) fn count(value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("count out of range: {value}")))
}
