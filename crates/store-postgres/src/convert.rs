//! Conversions between PostgreSQL's column types and Herald's values, and the error context
//! every query attaches.

use herald_domain::encoding::Encoding;
use herald_domain::message::{MessageType, Mode};
use herald_domain::money::{Amount, Currency};
use herald_domain::phone::Region;
use herald_domain::status::MessageStatus;
use herald_store::StoreError;
use jiff::Timestamp;
use jiff_sqlx::ToSqlx;
use sqlx::postgres::PgRow;
use sqlx::{Decode, Postgres, Row, Type};

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

/// A `timestamptz` parameter.
pub(crate) fn ts(at: Timestamp) -> jiff_sqlx::Timestamp {
    at.to_sqlx()
}

/// An `integer` parameter. Counts come from validated requests and never approach 2³¹; one
/// that does is refused rather than wrapped.
pub(crate) fn int(value: u32) -> Result<i32, StoreError> {
    i32::try_from(value).map_err(|e| StoreError::backend("count out of range for PostgreSQL", e))
}

/// Read column `index`; a type mismatch means the schema and the code disagree, which is
/// reported as a damaged row rather than a panic.
pub(crate) fn col<'r, T>(row: &'r PgRow, index: usize) -> Result<T, StoreError>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(index)
        .map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
}

pub(crate) fn timestamp(row: &PgRow, index: usize) -> Result<Timestamp, StoreError> {
    col::<jiff_sqlx::Timestamp>(row, index).map(jiff_sqlx::Timestamp::to_jiff)
}

pub(crate) fn opt_timestamp(row: &PgRow, index: usize) -> Result<Option<Timestamp>, StoreError> {
    Ok(col::<Option<jiff_sqlx::Timestamp>>(row, index)?.map(jiff_sqlx::Timestamp::to_jiff))
}

/// An `integer` count; anything negative means the row is damaged.
pub(crate) fn count(row: &PgRow, index: usize) -> Result<u32, StoreError> {
    let value: i32 = col(row, index)?;
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("count out of range: {value}")))
}

pub(crate) fn status(row: &PgRow, index: usize) -> Result<MessageStatus, StoreError> {
    col::<&str>(row, index)?
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("{e}")))
}

pub(crate) fn mode(row: &PgRow, index: usize) -> Result<Mode, StoreError> {
    col::<&str>(row, index)?
        .parse()
        .map_err(StoreError::Corrupt)
}

pub(crate) fn kind(row: &PgRow, index: usize) -> Result<MessageType, StoreError> {
    col::<&str>(row, index)?
        .parse()
        .map_err(StoreError::Corrupt)
}

pub(crate) fn encoding(row: &PgRow, index: usize) -> Result<Encoding, StoreError> {
    let text: &str = col(row, index)?;
    [Encoding::Gsm7, Encoding::Ucs2]
        .into_iter()
        .find(|e| e.as_str() == text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown encoding {text:?}")))
}

pub(crate) fn parse_region(text: &str) -> Result<Region, StoreError> {
    Region::parse(text).map_err(|_| StoreError::Corrupt(format!("unknown region {text:?}")))
}

pub(crate) fn region(row: &PgRow, index: usize) -> Result<Region, StoreError> {
    parse_region(col(row, index)?)
}

pub(crate) fn opt_region(row: &PgRow, index: usize) -> Result<Option<Region>, StoreError> {
    col::<Option<&str>>(row, index)?
        .map(parse_region)
        .transpose()
}

pub(crate) fn currency(row: &PgRow, index: usize) -> Result<Currency, StoreError> {
    let text: &str = col(row, index)?;
    Currency::parse(text).map_err(|_| StoreError::Corrupt(format!("unknown currency {text:?}")))
}

pub(crate) fn amount(row: &PgRow, index: usize) -> Result<Amount, StoreError> {
    col::<i64>(row, index).map(Amount::from_micros)
}

pub(crate) fn opt_amount(row: &PgRow, index: usize) -> Result<Option<Amount>, StoreError> {
    Ok(col::<Option<i64>>(row, index)?.map(Amount::from_micros))
}
