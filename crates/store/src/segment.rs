//! Segment rules: the JSON rule tree an organization saves to select contacts, its validation,
//! and the two ways of evaluating it — [`matches`] in memory and [`sql::compile`] to a
//! parameterized `WHERE` fragment for each backend. Both must select the same contacts; a
//! property test in the conformance suite holds them to it.
//!
//! # Shape
//!
//! A node is `{"and":[…]}`, `{"or":[…]}`, `{"not":{…}}` or a leaf
//! `{"field":"custom.total_sales","op":"gte","value":50000}`. Errors carry a JSON-pointer-like
//! path to the node at fault (`/and/1/value`) and a stable code.
//!
//! # Time
//!
//! Rules never read the clock: every evaluation takes `now`, the instant the caller (the
//! engine's clock in the server) says it is. `within_days N` means from `now - N days` to `now`,
//! both included. `last_message_days` is whole days elapsed since the contact's last message,
//! `floor((now - sent) / 24 h)`. Dates in rules are RFC 3339 instants or `YYYY-MM-DD` (that
//! day's midnight, UTC).
//!
//! # Missing values
//!
//! Every leaf is true or false, never unknown, so `not` is an exact complement. A leaf on a
//! field the contact does not have (no email, no such custom key, a custom value of another
//! type than the rule's value, never messaged for `last_message_days`) is false, whatever the
//! operator — `ne` included — except `exists`, which asks exactly that.
//!
//! # Custom fields
//!
//! A `custom.<key>` leaf is typed by its value: a number compares only with numbers, a string
//! only with strings, a boolean only with booleans. Ordering operators (`gt`, `gte`, `lt`,
//! `lte`, `between`, `within_days`) with a string value read it as a date and then compare
//! with custom values that are dates written `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ`, to the
//! second. Strings compare exactly (case-sensitive); `contains` is a substring test.
//!
//! # History
//!
//! Message history counts live-mode messages to the contact's phone number (test-mode messages
//! never reach a phone): `last_message_days` by their creation time whatever their status,
//! `delivered_count` those delivered. `replied` is true when any inbound message came from the
//! number.

mod eval;
mod parse;
pub mod sql;
#[cfg(test)]
mod tests;

use jiff::Timestamp;
use serde_json::Number;
use uuid::Uuid;

pub use eval::{ContactFacts, matches};
pub use parse::{Limits, RuleError, num_order, parse_rule};

/// A validated rule, ready to evaluate or compile.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Leaf(Condition),
}

/// A contact column holding text (or nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextField {
    Phone,
    FirstName,
    LastName,
    Email,
    TimeZone,
    Language,
    Country,
    LeadStatus,
}

impl TextField {
    /// The rule name, which is also the column's name.
    pub fn name(self) -> &'static str {
        match self {
            TextField::Phone => "phone",
            TextField::FirstName => "first_name",
            TextField::LastName => "last_name",
            TextField::Email => "email",
            TextField::TimeZone => "time_zone",
            TextField::Language => "language",
            TextField::Country => "country",
            TextField::LeadStatus => "lead_status",
        }
    }

    pub const ALL: [TextField; 8] = [
        TextField::Phone,
        TextField::FirstName,
        TextField::LastName,
        TextField::Email,
        TextField::TimeZone,
        TextField::Language,
        TextField::Country,
        TextField::LeadStatus,
    ];
}

/// A contact column holding an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeField {
    CreatedAt,
    UpdatedAt,
}

impl TimeField {
    pub fn name(self) -> &'static str {
        match self {
            TimeField::CreatedAt => "created_at",
            TimeField::UpdatedAt => "updated_at",
        }
    }
}

/// `eq`, `ne`, `gt`, `gte`, `lt`, `lte`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    /// Whether `ordering` (of the contact's value against the rule's) satisfies the operator.
    pub fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Cmp::Eq => ordering == Equal,
            Cmp::Ne => ordering != Equal,
            Cmp::Gt => ordering == Greater,
            Cmp::Gte => ordering != Less,
            Cmp::Lt => ordering == Less,
            Cmp::Lte => ordering != Greater,
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "<>",
            Cmp::Gt => ">",
            Cmp::Gte => ">=",
            Cmp::Lt => "<",
            Cmp::Lte => "<=",
        }
    }
}

/// A test on a text value.
#[derive(Clone, Debug, PartialEq)]
pub enum TextTest {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    Contains(String),
}

/// A test on a number (integers for counts and days).
#[derive(Clone, Debug, PartialEq)]
pub enum NumTest<N> {
    Cmp(Cmp, N),
    /// Both ends included.
    Between(N, N),
    In(Vec<N>),
}

/// A test on an instant. `within_days` is kept as given and resolved against `now` when the
/// rule is evaluated.
#[derive(Clone, Debug, PartialEq)]
pub enum TimeTest {
    /// `gt`, `gte`, `lt` or `lte`.
    Cmp(Cmp, Timestamp),
    Between(Timestamp, Timestamp),
    WithinDays(i64),
}

/// What a `custom.<key>` leaf asks of the value under the key.
#[derive(Clone, Debug, PartialEq)]
pub enum CustomTest {
    /// Present (and not null), or absent.
    Exists(bool),
    Text(TextTest),
    Number(NumTest<Number>),
    /// The value is this boolean.
    Bool(bool),
    /// The value is a date (see the module doc) passing the test.
    Date(TimeTest),
}

/// One leaf.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    Text(TextField, TextTest),
    /// The field has a value (`true`) or none (`false`).
    TextExists(TextField, bool),
    Consent(bool),
    Time(TimeField, TimeTest),
    /// The contact has this tag.
    Tag(String),
    /// The contact has at least one of these tags.
    AnyTag(Vec<String>),
    /// The contact has some tag (`true`) or none (`false`).
    TagsExist(bool),
    /// The contact is a member of at least one of these lists.
    InList(Vec<Uuid>),
    Custom(String, CustomTest),
    /// Whole days since the last message; never messaged contacts never match.
    LastMessageDays(NumTest<i64>),
    /// The contact was sent a message (`true`) or never was (`false`).
    Messaged(bool),
    DeliveredCount(NumTest<i64>),
    Replied(bool),
}

/// Length of a day for `within_days` and `last_message_days`.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// `now - days`, to the microsecond (saturating at the ends of time, which validated day
/// counts never reach).
pub fn days_before(now: Timestamp, days: i64) -> Timestamp {
    let micros = now
        .as_microsecond()
        .saturating_sub(days.saturating_mul(DAY_MICROS));
    Timestamp::from_microsecond(micros).unwrap_or(if days > 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// An instant as custom date strings are compared: UTC, to the second.
pub fn date_key(at: Timestamp) -> String {
    let seconds = at.as_second();
    let at = Timestamp::from_second(seconds).unwrap_or(at);
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A custom string as compared against dates, or `None` if it is not written as one of the
/// two accepted date forms.
pub fn custom_date_key(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    let date = b.len() >= 10 && digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-';
    let date = date && digits(8..10);
    match b.len() {
        10 if date => Some(format!("{text}T00:00:00Z")),
        20 if date
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && b[19] == b'Z' =>
        {
            Some(text.to_owned())
        }
        _ => None,
    }
}

/// A date test with `within_days` resolved against `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeRange {
    Cmp(Cmp, Timestamp),
    /// Both ends included.
    Between(Timestamp, Timestamp),
}

impl TimeTest {
    /// The test with `within_days` resolved against `now` into the range it stands for.
    pub fn resolve(&self, now: Timestamp) -> TimeRange {
        match *self {
            TimeTest::Cmp(cmp, at) => TimeRange::Cmp(cmp, at),
            TimeTest::Between(from, to) => TimeRange::Between(from, to),
            TimeTest::WithinDays(days) => TimeRange::Between(days_before(now, days), now),
        }
    }
}
