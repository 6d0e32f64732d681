//! Reading a rule from JSON: every error found, each with the path of its node, so a rule
//! builder can point at all of them at once.

use jiff::Timestamp;
use serde_json::{Map, Number, Value};
use uuid::Uuid;

use super::*;

/// How big a rule may be. Bounds the SQL a rule compiles to and the work it costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Nesting of `and`/`or`/`not`, the root counting as one.
    pub depth: usize,
    pub leaves: usize,
    /// Values in one `in`.
    pub in_values: usize,
    /// Characters in one string value.
    pub string_chars: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            depth: 10,
            leaves: 200,
            in_values: 1_000,
            string_chars: 500,
        }
    }
}

/// Largest day count accepted (`within_days`, `last_message_days`): about 270 years.
const MAX_DAYS: i64 = 100_000;
/// Largest `delivered_count` accepted.
const MAX_COUNT: i64 = 1_000_000_000;
/// Longest custom field key.
const MAX_KEY_CHARS: usize = 100;

/// What is wrong with one node of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// JSON-pointer-like path of the node at fault, from the rule's root: `/and/1/value`.
    pub path: String,
    /// Stable, machine-readable: `unknown_field`, `unknown_operator`, `wrong_type`,
    /// `operator_not_allowed_for_field`, `invalid_node`, `unknown_key`, `missing`,
    /// `empty_group`, `too_deep`, `too_many_leaves`, `too_many_values`, `too_long`,
    /// `out_of_range`, `invalid_range`, `invalid_custom_key`.
    pub code: &'static str,
    pub message: String,
}

/// Read and validate a rule; `Err` lists every problem found.
pub fn parse_rule(value: &Value, limits: &Limits) -> Result<Rule, Vec<RuleError>> {
    let mut parser = Parser {
        limits,
        errors: Vec::new(),
        leaves: 0,
    };
    let rule = parser.node(value, "", 1);
    if parser.leaves > limits.leaves {
        parser.errors.push(RuleError {
            path: String::new(),
            code: "too_many_leaves",
            message: format!(
                "a rule may have at most {} conditions, this one has {}",
                limits.leaves, parser.leaves
            ),
        });
    }
    match rule {
        Some(rule) if parser.errors.is_empty() => Ok(rule),
        _ => Err(parser.errors),
    }
}

/// What a leaf's `field` names.
enum Field {
    Text(TextField),
    Consent,
    Time(TimeField),
    Tag,
    List,
    Custom(String),
    LastMessageDays,
    DeliveredCount,
    Replied,
}

const OPERATORS: [&str; 11] = [
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "contains",
    "exists",
    "between",
    "within_days",
];

struct Parser<'a> {
    limits: &'a Limits,
    errors: Vec<RuleError>,
    leaves: usize,
}

impl Parser<'_> {
    fn error(&mut self, path: String, code: &'static str, message: impl Into<String>) {
        self.errors.push(RuleError {
            path,
            code,
            message: message.into(),
        });
    }

    fn node(&mut self, value: &Value, path: &str, depth: usize) -> Option<Rule> {
        let Some(object) = value.as_object() else {
            self.error(
                path.into(),
                "invalid_node",
                "a rule node must be a JSON object",
            );
            return None;
        };
        if depth > self.limits.depth {
            self.error(
                path.into(),
                "too_deep",
                format!("rules may nest at most {} levels", self.limits.depth),
            );
            return None;
        }
        let group = ["and", "or", "not"]
            .into_iter()
            .find(|k| object.contains_key(*k));
        match group {
            Some(kind) => {
                if object.len() != 1 {
                    for key in object.keys().filter(|k| *k != kind) {
                        self.error(
                            format!("{path}/{key}"),
                            "unknown_key",
                            format!("an `{kind}` node has no other keys"),
                        );
                    }
                }
                let inner = &object[kind];
                let inner_path = format!("{path}/{kind}");
                if kind == "not" {
                    return self
                        .node(inner, &inner_path, depth + 1)
                        .map(|r| Rule::Not(Box::new(r)));
                }
                let Some(items) = inner.as_array() else {
                    self.error(inner_path, "wrong_type", format!("`{kind}` takes an array"));
                    return None;
                };
                if items.is_empty() {
                    self.error(
                        inner_path.clone(),
                        "empty_group",
                        format!("`{kind}` needs at least one rule"),
                    );
                }
                let mut rules = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if let Some(rule) = self.node(item, &format!("{inner_path}/{i}"), depth + 1) {
                        rules.push(rule);
                    }
                }
                (rules.len() == items.len() && !rules.is_empty()).then(|| {
                    if kind == "and" {
                        Rule::And(rules)
                    } else {
                        Rule::Or(rules)
                    }
                })
            }
            None => self.leaf(object, path),
        }
    }

    fn leaf(&mut self, object: &Map<String, Value>, path: &str) -> Option<Rule> {
        self.leaves += 1;
        for key in object.keys() {
            if !["field", "op", "value"].contains(&key.as_str()) {
                self.error(
                    format!("{path}/{key}"),
                    "unknown_key",
                    "a condition has `field`, `op` and `value`; groups are `and`, `or`, `not`",
                );
            }
        }
        let field = match object.get("field") {
            Some(Value::String(name)) => self.field(name, &format!("{path}/field")),
            Some(_) => {
                self.error(format!("{path}/field"), "wrong_type", "`field` is a string");
                None
            }
            None => {
                self.error(format!("{path}/field"), "missing", "`field` is required");
                None
            }
        };
        let op = match object.get("op") {
            Some(Value::String(op)) if OPERATORS.contains(&op.as_str()) => Some(op.as_str()),
            Some(Value::String(op)) => {
                self.error(
                    format!("{path}/op"),
                    "unknown_operator",
                    format!("unknown operator {op:?}; one of {}", OPERATORS.join(", ")),
                );
                None
            }
            Some(_) => {
                self.error(format!("{path}/op"), "wrong_type", "`op` is a string");
                None
            }
            None => {
                self.error(format!("{path}/op"), "missing", "`op` is required");
                None
            }
        };
        let (field, op) = (field?, op?);
        let value_path = format!("{path}/value");
        let value = match object.get("value") {
            Some(value) => value,
            // `exists` reads naturally without a value: it asks for presence.
            None if op == "exists" => &Value::Bool(true),
            None => {
                self.error(value_path, "missing", "`value` is required");
                return None;
            }
        };
        let mut leaf = Leaf {
            parser: self,
            op,
            value,
            path: value_path,
            op_path: format!("{path}/op"),
        };
        leaf.build(field)
    }

    fn field(&mut self, name: &str, path: &str) -> Option<Field> {
        if let Some(field) = TextField::ALL.into_iter().find(|f| f.name() == name) {
            return Some(Field::Text(field));
        }
        let field = match name {
            "consent" => Field::Consent,
            "created_at" => Field::Time(TimeField::CreatedAt),
            "updated_at" => Field::Time(TimeField::UpdatedAt),
            "tag" | "tags" => Field::Tag,
            "list" | "lists" => Field::List,
            "last_message_days" => Field::LastMessageDays,
            "delivered_count" => Field::DeliveredCount,
            "replied" => Field::Replied,
            _ => match name.strip_prefix("custom.") {
                Some(key) => {
                    let valid = !key.is_empty()
                        && key.chars().count() <= MAX_KEY_CHARS
                        && !key.chars().any(|c| c == '"' || c == '\\' || c.is_control());
                    if !valid {
                        self.error(
                            path.into(),
                            "invalid_custom_key",
                            format!(
                                "a custom field key has 1 to {MAX_KEY_CHARS} characters, without \
                                 quotes, backslashes or control characters"
                            ),
                        );
                        return None;
                    }
                    Field::Custom(key.to_owned())
                }
                None => {
                    self.error(
                        path.into(),
                        "unknown_field",
                        format!(
                            "unknown field {name:?}; one of phone, first_name, last_name, email, \
                             time_zone, language, country, lead_status, consent, created_at, \
                             updated_at, tag, list, custom.<key>, last_message_days, \
                             delivered_count, replied"
                        ),
                    );
                    return None;
                }
            },
        };
        Some(field)
    }
}

/// One leaf being read: its operator and value, and where to report problems.
struct Leaf<'p, 'a> {
    parser: &'p mut Parser<'a>,
    op: &'p str,
    value: &'p Value,
    path: String,
    op_path: String,
}

fn cmp(op: &str) -> Option<Cmp> {
    Some(match op {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "gt" => Cmp::Gt,
        "gte" => Cmp::Gte,
        "lt" => Cmp::Lt,
        "lte" => Cmp::Lte,
        _ => return None,
    })
}

fn leaf(condition: Condition) -> Rule {
    Rule::Leaf(condition)
}

impl Leaf<'_, '_> {
    fn not_allowed(&mut self, field: &str) -> Option<Rule> {
        let message = format!("operator `{}` does not apply to {field}", self.op);
        self.parser.error(
            std::mem::take(&mut self.op_path),
            "operator_not_allowed_for_field",
            message,
        );
        None
    }

    fn wrong_type(&mut self, path: String, expected: &str) -> Option<Rule> {
        self.parser
            .error(path, "wrong_type", format!("expected {expected}"));
        None
    }

    fn build(&mut self, field: Field) -> Option<Rule> {
        match field {
            Field::Text(f) => self.text(f),
            Field::Consent => match self.op {
                "eq" | "ne" => {
                    let b = self.boolean()?;
                    Some(leaf(Condition::Consent(b == (self.op == "eq"))))
                }
                _ => self.not_allowed("consent"),
            },
            Field::Time(f) => {
                let test = self.time(f.name())?;
                Some(leaf(Condition::Time(f, test)))
            }
            Field::Tag => match self.op {
                "eq" => Some(leaf(Condition::Tag(self.string()?))),
                "ne" => Some(Rule::Not(Box::new(leaf(Condition::Tag(self.string()?))))),
                "in" => Some(leaf(Condition::AnyTag(self.strings()?))),
                "exists" => Some(leaf(Condition::TagsExist(self.boolean()?))),
                _ => self.not_allowed("tag"),
            },
            Field::List => match self.op {
                "eq" => Some(leaf(Condition::InList(vec![self.uuid()?]))),
                "ne" => Some(Rule::Not(Box::new(leaf(Condition::InList(vec![
                    self.uuid()?,
                ]))))),
                "in" => Some(leaf(Condition::InList(self.uuids()?))),
                _ => self.not_allowed("list"),
            },
            Field::Custom(key) => self.custom(key),
            Field::LastMessageDays => {
                if self.op == "exists" {
                    return Some(leaf(Condition::Messaged(self.boolean()?)));
                }
                let test = self.integers("last_message_days", 0, MAX_DAYS)?;
                Some(leaf(Condition::LastMessageDays(test)))
            }
            Field::DeliveredCount => {
                let test = self.integers("delivered_count", 0, MAX_COUNT)?;
                Some(leaf(Condition::DeliveredCount(test)))
            }
            Field::Replied => match self.op {
                "eq" | "ne" => {
                    let b = self.boolean()?;
                    Some(leaf(Condition::Replied(b == (self.op == "eq"))))
                }
                _ => self.not_allowed("replied"),
            },
        }
    }

    fn text(&mut self, field: TextField) -> Option<Rule> {
        let test = match self.op {
            "eq" => TextTest::Eq(self.string()?),
            "ne" => TextTest::Ne(self.string()?),
            "in" => TextTest::In(self.strings()?),
            "contains" => TextTest::Contains(self.string()?),
            "exists" => return Some(leaf(Condition::TextExists(field, self.boolean()?))),
            _ => return self.not_allowed(field.name()),
        };
        Some(leaf(Condition::Text(field, test)))
    }

    fn custom(&mut self, key: String) -> Option<Rule> {
        let test = match (self.op, self.value) {
            ("exists", _) => CustomTest::Exists(self.boolean()?),
            ("eq" | "ne", Value::String(_)) => {
                let s = self.string()?;
                CustomTest::Text(if self.op == "eq" {
                    TextTest::Eq(s)
                } else {
                    TextTest::Ne(s)
                })
            }
            ("eq" | "ne", Value::Bool(b)) => CustomTest::Bool(*b == (self.op == "eq")),
            ("eq" | "ne" | "gt" | "gte" | "lt" | "lte", Value::Number(n)) => {
                CustomTest::Number(NumTest::Cmp(cmp(self.op)?, n.clone()))
            }
            ("gt" | "gte" | "lt" | "lte" | "between" | "within_days", _) if !matches!(self.value, Value::Array(a) if a.first().is_some_and(Value::is_number)) => {
                CustomTest::Date(self.time("a custom date")?)
            }
            ("between", _) => {
                let (low, high) = self.pair(|v, _| v.as_number().cloned(), "numbers")?;
                if num_order(&low, &high).is_gt() {
                    return self.invalid_range();
                }
                CustomTest::Number(NumTest::Between(low, high))
            }
            ("in", Value::Array(items)) if items.first().is_some_and(Value::is_number) => {
                CustomTest::Number(NumTest::In(
                    self.list(|v, _| v.as_number().cloned(), "numbers")?,
                ))
            }
            ("in", _) => CustomTest::Text(TextTest::In(self.strings()?)),
            ("contains", _) => CustomTest::Text(TextTest::Contains(self.string()?)),
            ("eq" | "ne", _) => {
                return self.wrong_type(self.path.clone(), "a string, a number or a boolean");
            }
            _ => return self.not_allowed("custom fields"),
        };
        Some(leaf(Condition::Custom(key, test)))
    }

    fn invalid_range(&mut self) -> Option<Rule> {
        self.parser.error(
            self.path.clone(),
            "invalid_range",
            "`between` takes [low, high] with low ≤ high",
        );
        None
    }

    /// `gt`/`gte`/`lt`/`lte` a date, `between` two dates, or `within_days` N.
    fn time(&mut self, what: &str) -> Option<TimeTest> {
        match self.op {
            "gt" | "gte" | "lt" | "lte" => {
                let at = self.date(self.value, self.path.clone())?;
                Some(TimeTest::Cmp(cmp(self.op)?, at))
            }
            "between" => {
                let (from, to) = self.pair(|v, _| v.as_str().and_then(parse_date), "dates")?;
                if from > to {
                    self.invalid_range();
                    return None;
                }
                Some(TimeTest::Between(from, to))
            }
            "within_days" => Some(TimeTest::WithinDays(self.integer(0, MAX_DAYS)?)),
            _ => {
                self.not_allowed(what);
                None
            }
        }
    }

    fn integers(&mut self, what: &str, min: i64, max: i64) -> Option<NumTest<i64>> {
        let in_range = |v: &Value| v.as_i64().filter(|n| (min..=max).contains(n));
        match self.op {
            "eq" | "ne" | "gt" | "gte" | "lt" | "lte" => {
                Some(NumTest::Cmp(cmp(self.op)?, self.integer(min, max)?))
            }
            "between" => {
                let (low, high) = self.pair(|v, _| in_range(v), "whole numbers")?;
                if low > high {
                    self.invalid_range();
                    return None;
                }
                Some(NumTest::Between(low, high))
            }
            "in" => Some(NumTest::In(self.list(|v, _| in_range(v), "whole numbers")?)),
            _ => {
                self.not_allowed(what);
                None
            }
        }
    }

    fn integer(&mut self, min: i64, max: i64) -> Option<i64> {
        match self.value.as_i64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(_) => {
                self.parser.error(
                    self.path.clone(),
                    "out_of_range",
                    format!("expected a whole number from {min} to {max}"),
                );
                None
            }
            None => {
                self.wrong_type(self.path.clone(), "a whole number");
                None
            }
        }
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(self.path.clone(), "true or false");
                None
            }
        }
    }

    fn checked_string(&mut self, value: &Value, path: String) -> Option<String> {
        match value {
            Value::String(s) if s.chars().count() <= self.parser.limits.string_chars => {
                Some(s.clone())
            }
            Value::String(_) => {
                let limit = self.parser.limits.string_chars;
                self.parser.error(
                    path,
                    "too_long",
                    format!("strings have at most {limit} characters"),
                );
                None
            }
            _ => {
                self.wrong_type(path, "a string");
                None
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        self.checked_string(self.value, self.path.clone())
    }

    fn strings(&mut self) -> Option<Vec<String>> {
        let items = self.items()?.clone();
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.checked_string(item, format!("{}/{i}", self.path)) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn uuid(&mut self) -> Option<Uuid> {
        match self.value.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) => Some(id),
            None => {
                self.wrong_type(self.path.clone(), "a list id");
                None
            }
        }
    }

    fn uuids(&mut self) -> Option<Vec<Uuid>> {
        self.list(
            |v, _| v.as_str().and_then(|s| Uuid::parse_str(s).ok()),
            "list ids",
        )
    }

    /// The `in` array, non-empty and within the limit.
    fn items(&mut self) -> Option<&'_ Vec<Value>> {
        let limit = self.parser.limits.in_values;
        match self.value {
            Value::Array(items) if items.is_empty() => {
                self.parser
                    .error(self.path.clone(), "empty_group", "`in` needs values");
                None
            }
            Value::Array(items) if items.len() > limit => {
                self.parser.error(
                    self.path.clone(),
                    "too_many_values",
                    format!("`in` takes at most {limit} values"),
                );
                None
            }
            Value::Array(items) => Some(items),
            _ => {
                self.wrong_type(self.path.clone(), "an array");
                None
            }
        }
    }

    fn list<T>(
        &mut self,
        read: impl Fn(&Value, usize) -> Option<T>,
        expected: &str,
    ) -> Option<Vec<T>> {
        let items = self.items()?.clone();
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match read(item, i) {
                Some(v) => out.push(v),
                None => {
                    self.wrong_type(format!("{}/{i}", self.path), &format!("{expected} only"));
                }
            }
        }
        (out.len() == items.len()).then_some(out)
    }

    fn pair<T>(
        &mut self,
        read: impl Fn(&Value, usize) -> Option<T>,
        expected: &str,
    ) -> Option<(T, T)> {
        match self.value {
            Value::Array(items) if items.len() == 2 => {
                let items = items.clone();
                let low = read(&items[0], 0);
                let high = read(&items[1], 1);
                if low.is_none() {
                    self.wrong_type(format!("{}/0", self.path), expected);
                }
                if high.is_none() {
                    self.wrong_type(format!("{}/1", self.path), expected);
                }
                Some((low?, high?))
            }
            _ => {
                self.wrong_type(self.path.clone(), &format!("[low, high] of {expected}"));
                None
            }
        }
    }

    fn date(&mut self, value: &Value, path: String) -> Option<Timestamp> {
        match value.as_str().and_then(parse_date) {
            Some(at) => Some(at),
            None => {
                self.wrong_type(path, "a date (RFC 3339 or YYYY-MM-DD)");
                None
            }
        }
    }
}

/// An RFC 3339 instant or a `YYYY-MM-DD` day (its midnight, UTC), to the microsecond.
pub(crate) fn parse_date(text: &str) -> Option<Timestamp> {
    let at = if text.len() == 10 {
        let date: jiff::civil::Date = text.parse().ok()?;
        date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp()
    } else {
        text.parse::<Timestamp>().ok()?
    };
    Timestamp::from_microsecond(at.as_microsecond()).ok()
}

/// Numbers as rules compare them: exactly as integers when both are, else as floats.
pub fn num_order(a: &Number, b: &Number) -> std::cmp::Ordering {
    match (a.as_i64(), b.as_i64()) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => {
            let (a, b) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
        }
    }
}
