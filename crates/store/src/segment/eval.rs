//! Evaluating a rule in memory against one contact and what is known about it. This is the
//! reference the compiled SQL is tested against, so it follows the module doc's semantics as
//! literally as possible rather than quickly.

use jiff::Timestamp;
use serde_json::Value;
use uuid::Uuid;

use super::parse::num_order;
use super::*;
use crate::contacts::Contact;

/// A contact with everything a rule can ask about it.
#[derive(Clone, Debug)]
pub struct ContactFacts {
    pub contact: Contact,
    /// The lists it belongs to.
    pub lists: Vec<Uuid>,
    /// Creation time of the last live message to its phone number.
    pub last_message_at: Option<Timestamp>,
    /// Live messages to its phone number that were delivered.
    pub delivered: i64,
    /// Whether any inbound message came from its phone number.
    pub replied: bool,
}

/// Whether `facts` satisfies `rule` at `now`.
pub fn matches(rule: &Rule, facts: &ContactFacts, now: Timestamp) -> bool {
    match rule {
        Rule::And(rules) => rules.iter().all(|r| matches(r, facts, now)),
        Rule::Or(rules) => rules.iter().any(|r| matches(r, facts, now)),
        Rule::Not(rule) => !matches(rule, facts, now),
        Rule::Leaf(condition) => holds(condition, facts, now),
    }
}

fn text_value(contact: &Contact, field: TextField) -> Option<&str> {
    match field {
        TextField::Phone => Some(&contact.phone),
        TextField::FirstName => contact.first_name.as_deref(),
        TextField::LastName => contact.last_name.as_deref(),
        TextField::Email => contact.email.as_deref(),
        TextField::TimeZone => contact.time_zone.as_deref(),
        TextField::Language => contact.language.as_deref(),
        TextField::Country => contact.country.as_ref().map(|r| r.as_str()),
        TextField::LeadStatus => Some(&contact.lead_status),
    }
}

fn text(value: &str, test: &TextTest) -> bool {
    match test {
        TextTest::Eq(s) => value == s,
        TextTest::Ne(s) => value != s,
        TextTest::In(items) => items.iter().any(|s| s == value),
        TextTest::Contains(s) => value.contains(s.as_str()),
    }
}

fn number<N>(value: &N, test: &NumTest<N>, order: impl Fn(&N, &N) -> std::cmp::Ordering) -> bool {
    match test {
        NumTest::Cmp(cmp, n) => cmp.holds(order(value, n)),
        NumTest::Between(low, high) => order(value, low).is_ge() && order(value, high).is_le(),
        NumTest::In(items) => items.iter().any(|n| order(value, n).is_eq()),
    }
}

fn time(value: Timestamp, test: &TimeTest, now: Timestamp) -> bool {
    match test.resolve(now) {
        TimeRange::Cmp(cmp, at) => cmp.holds(value.cmp(&at)),
        TimeRange::Between(from, to) => from <= value && value <= to,
    }
}

/// Custom dates compare as their UTC second-precision strings (see [`custom_date_key`]).
fn custom_date(value: &str, test: &TimeTest, now: Timestamp) -> bool {
    let Some(key) = custom_date_key(value) else {
        return false;
    };
    match test.resolve(now) {
        TimeRange::Cmp(cmp, at) => cmp.holds(key.as_str().cmp(&date_key(at))),
        TimeRange::Between(from, to) => date_key(from) <= key && key <= date_key(to),
    }
}

fn custom(value: Option<&Value>, test: &CustomTest, now: Timestamp) -> bool {
    let value = value.filter(|v| !v.is_null());
    match (test, value) {
        (CustomTest::Exists(wanted), value) => value.is_some() == *wanted,
        (CustomTest::Text(test), Some(Value::String(s))) => text(s, test),
        (CustomTest::Number(test), Some(Value::Number(n))) => number(n, test, num_order),
        (CustomTest::Bool(wanted), Some(Value::Bool(b))) => b == wanted,
        (CustomTest::Date(test), Some(Value::String(s))) => custom_date(s, test, now),
        _ => false,
    }
}

/// Whole days from `at` to `now`, rounded down.
fn days_since(at: Timestamp, now: Timestamp) -> i64 {
    (now.as_microsecond() - at.as_microsecond()).div_euclid(DAY_MICROS)
}

fn holds(condition: &Condition, facts: &ContactFacts, now: Timestamp) -> bool {
    let contact = &facts.contact;
    match condition {
        Condition::Text(field, test) => text_value(contact, *field).is_some_and(|v| text(v, test)),
        Condition::TextExists(field, wanted) => text_value(contact, *field).is_some() == *wanted,
        Condition::Consent(wanted) => contact.consent == *wanted,
        Condition::Time(field, test) => {
            let value = match field {
                TimeField::CreatedAt => contact.created_at,
                TimeField::UpdatedAt => contact.updated_at,
            };
            time(value, test, now)
        }
        Condition::Tag(tag) => contact.tags.contains(tag),
        Condition::AnyTag(tags) => tags.iter().any(|t| contact.tags.contains(t)),
        Condition::TagsExist(wanted) => contact.tags.is_empty() != *wanted,
        Condition::InList(ids) => ids.iter().any(|id| facts.lists.contains(id)),
        Condition::Custom(key, test) => custom(contact.custom.get(key), test, now),
        Condition::LastMessageDays(test) => facts
            .last_message_at
            .is_some_and(|at| number(&days_since(at, now), test, i64::cmp)),
        Condition::Messaged(wanted) => facts.last_message_at.is_some() == *wanted,
        Condition::DeliveredCount(test) => number(&facts.delivered, test, i64::cmp),
        Condition::Replied(wanted) => facts.replied == *wanted,
    }
}
