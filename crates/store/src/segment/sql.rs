//! Compiling a validated [`Rule`] into a SQL boolean expression over `contacts c`, for SQLite
//! or PostgreSQL. Every value from the rule travels as a bind parameter; the only text spliced
//! into the SQL is this module's own: column names from the fixed field list, operators, and
//! placeholders. Custom keys are bound too (as a JSON path in SQLite, a key in PostgreSQL).
//!
//! Each leaf is wrapped in `coalesce(…, FALSE)` so it is never NULL, which keeps `NOT` an exact
//! complement as the evaluator has it.

use std::fmt::Write;

use jiff::Timestamp;
use serde_json::{Number, Value};
use uuid::Uuid;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value to bind, in the order of its placeholder number.
#[derive(Clone, Debug, PartialEq)]
pub enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Uuid(Uuid),
    Time(Timestamp),
}

/// A compiled rule: `sql` refers to placeholders `first..first + binds.len()`.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub sql: String,
    pub binds: Vec<Bind>,
}

/// Compile `rule` as of `now`; its placeholders are numbered from `first` (the caller's own
/// parameters come before).
pub fn compile(rule: &Rule, dialect: Dialect, now: Timestamp, first: usize) -> Compiled {
    let mut compiler = Compiler {
        dialect,
        now,
        first,
        sql: String::new(),
        binds: Vec::new(),
    };
    compiler.rule(rule);
    Compiled {
        sql: compiler.sql,
        binds: compiler.binds,
    }
}

struct Compiler {
    dialect: Dialect,
    now: Timestamp,
    first: usize,
    sql: String,
    binds: Vec<Bind>,
}

/// Where a live message to the contact is, for the history fields.
const MESSAGES_TO_CONTACT: &str =
    "FROM messages m WHERE m.org_id = c.org_id AND m.mode = 'live' AND m.recipient = c.phone";

impl Compiler {
    /// Add a bind; answers its placeholder.
    fn bind(&mut self, bind: Bind) -> String {
        self.binds.push(bind);
        let n = self.first + self.binds.len() - 1;
        match self.dialect {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// A JSON array bound as text: one parameter however many values.
    fn bind_json(&mut self, value: Value) -> String {
        let p = self.bind(Bind::Text(value.to_string()));
        match self.dialect {
            Dialect::Sqlite => p,
            Dialect::Postgres => format!("{p}::jsonb"),
        }
    }

    fn pg(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    fn rule(&mut self, rule: &Rule) {
        match rule {
            Rule::And(rules) | Rule::Or(rules) => {
                let joiner = if matches!(rule, Rule::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                self.sql.push('(');
                for (i, rule) in rules.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(joiner);
                    }
                    self.rule(rule);
                }
                self.sql.push(')');
            }
            Rule::Not(rule) => {
                self.sql.push_str("(NOT ");
                self.rule(rule);
                self.sql.push(')');
            }
            Rule::Leaf(condition) => {
                let expr = self.condition(condition);
                let _ = write!(self.sql, "coalesce(({expr}), FALSE)");
            }
        }
    }

    fn condition(&mut self, condition: &Condition) -> String {
        match condition {
            Condition::Text(field, test) => {
                let column = format!("c.{}", field.name());
                self.text(&column, test)
            }
            Condition::TextExists(field, true) => format!("c.{} IS NOT NULL", field.name()),
            Condition::TextExists(field, false) => format!("c.{} IS NULL", field.name()),
            Condition::Consent(wanted) => {
                let p = self.bind(Bind::Bool(*wanted));
                format!("c.consent = {p}")
            }
            Condition::Time(field, test) => {
                let column = format!("c.{}", field.name());
                match test.resolve(self.now) {
                    TimeRange::Cmp(cmp, at) => {
                        let p = self.bind(Bind::Time(at));
                        format!("{column} {} {p}", cmp.sql())
                    }
                    TimeRange::Between(from, to) => {
                        let (a, b) = (self.bind(Bind::Time(from)), self.bind(Bind::Time(to)));
                        format!("{column} >= {a} AND {column} <= {b}")
                    }
                }
            }
            Condition::Tag(tag) => {
                let p = self.bind(Bind::Text(tag.clone()));
                if self.pg() {
                    format!("c.tags @> jsonb_build_array({p}::text)")
                } else {
                    format!("EXISTS (SELECT 1 FROM json_each(c.tags) WHERE value = {p})")
                }
            }
            Condition::AnyTag(tags) => {
                let p = self.bind_json(Value::from(tags.clone()));
                if self.pg() {
                    format!("c.tags ?| ARRAY(SELECT jsonb_array_elements_text({p}))")
                } else {
                    format!(
                        "EXISTS (SELECT 1 FROM json_each(c.tags) \
                         WHERE value IN (SELECT value FROM json_each({p})))"
                    )
                }
            }
            Condition::TagsExist(wanted) => {
                let op = if *wanted { ">" } else { "=" };
                let f = if self.pg() {
                    "jsonb_array_length"
                } else {
                    "json_array_length"
                };
                format!("{f}(c.tags) {op} 0")
            }
            Condition::InList(ids) => {
                let ids: Vec<String> = ids.iter().map(|id| id.simple().to_string()).collect();
                let p = self.bind_json(Value::from(ids));
                let id = if self.pg() {
                    format!("SELECT jsonb_array_elements_text({p})::uuid")
                } else {
                    format!("SELECT unhex(value) FROM json_each({p})")
                };
                format!(
                    "EXISTS (SELECT 1 FROM list_members lm JOIN lists l ON l.id = lm.list_id \
                     WHERE lm.contact_id = c.id AND l.org_id = c.org_id AND lm.list_id IN ({id}))"
                )
            }
            Condition::Custom(key, test) => self.custom(key, test),
            Condition::LastMessageDays(test) => {
                let cond = self.days("max(m.created_at)", test);
                // The aggregate in the select list makes this an aggregate query (one row,
                // even with no messages) for SQLite as for PostgreSQL.
                format!("EXISTS (SELECT max(m.created_at) {MESSAGES_TO_CONTACT} HAVING {cond})")
            }
            Condition::Messaged(wanted) => {
                let not = if *wanted { "" } else { "NOT " };
                format!("{not}EXISTS (SELECT 1 {MESSAGES_TO_CONTACT})")
            }
            Condition::DeliveredCount(test) => {
                let cond = self.integers("count(*)", test);
                format!(
                    "EXISTS (SELECT count(*) {MESSAGES_TO_CONTACT} AND m.status = 'delivered' \
                     HAVING {cond})"
                )
            }
            Condition::Replied(wanted) => {
                let not = if *wanted { "" } else { "NOT " };
                format!(
                    "{not}EXISTS (SELECT 1 FROM inbound_messages i \
                     WHERE i.org_id = c.org_id AND i.from_number = c.phone)"
                )
            }
        }
    }

    fn text(&mut self, expr: &str, test: &TextTest) -> String {
        match test {
            TextTest::Eq(s) | TextTest::Ne(s) => {
                let op = if matches!(test, TextTest::Eq(_)) {
                    "="
                } else {
                    "<>"
                };
                let p = self.bind(Bind::Text(s.clone()));
                format!("{expr} {op} {p}")
            }
            TextTest::In(items) => {
                let p = self.bind_json(Value::from(items.clone()));
                if self.pg() {
                    format!("{expr} IN (SELECT jsonb_array_elements_text({p}))")
                } else {
                    format!("{expr} IN (SELECT value FROM json_each({p}))")
                }
            }
            TextTest::Contains(s) => {
                let p = self.bind(Bind::Text(s.clone()));
                if self.pg() {
                    format!("strpos({expr}, {p}) > 0")
                } else {
                    format!("instr({expr}, {p}) > 0")
                }
            }
        }
    }

    fn custom(&mut self, key: &str, test: &CustomTest) -> String {
        // The key is bound, never spliced: a JSON path in SQLite (validation refused keys
        // with quotes or backslashes, which could not be written inside one), a key in
        // PostgreSQL.
        let (kind, value, json) = if self.pg() {
            let k = self.bind(Bind::Text(key.to_owned()));
            (
                format!("jsonb_typeof(c.custom -> {k})"),
                format!("(c.custom ->> {k})"),
                // jsonb numbers compare as exact numerics.
                format!("(c.custom -> {k})"),
            )
        } else {
            let p = self.bind(Bind::Text(format!("$.\"{key}\"")));
            let value = format!("json_extract(c.custom, {p})");
            (format!("json_type(c.custom, {p})"), value.clone(), value)
        };
        let (text, number, yes, no) = if self.pg() {
            ("'string'", "= 'number'", "'true'", "'false'")
        } else {
            ("'text'", "IN ('integer', 'real')", "'true'", "'false'")
        };
        match test {
            CustomTest::Exists(wanted) => {
                let op = if *wanted { "<>" } else { "=" };
                format!("coalesce({kind}, 'null') {op} 'null'")
            }
            CustomTest::Text(test) => {
                let cond = self.text(&value, test);
                format!("{kind} = {text} AND {cond}")
            }
            CustomTest::Bool(wanted) => {
                let literal = if *wanted { yes } else { no };
                if self.pg() {
                    format!("{kind} = 'boolean' AND {value} = {literal}")
                } else {
                    format!("{kind} = {literal}")
                }
            }
            CustomTest::Number(test) => {
                let cond = self.numbers(&json, test);
                format!("{kind} {number} AND {cond}")
            }
            CustomTest::Date(test) => {
                let (shape, collate) = if self.pg() {
                    (
                        format!(
                            "{value} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}\
                             (T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}Z)?$'"
                        ),
                        " COLLATE \"C\"",
                    )
                } else {
                    let day = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]";
                    (
                        format!(
                            "({value} GLOB '{day}' OR \
                             {value} GLOB '{day}T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z')"
                        ),
                        "",
                    )
                };
                let key = format!(
                    "(CASE WHEN length({value}) = 10 THEN {value} || 'T00:00:00Z' \
                     ELSE {value} END){collate}"
                );
                let cond = match test.resolve(self.now) {
                    TimeRange::Cmp(cmp, at) => {
                        let p = self.bind(Bind::Text(date_key(at)));
                        format!("{key} {} {p}", cmp.sql())
                    }
                    TimeRange::Between(from, to) => {
                        let a = self.bind(Bind::Text(date_key(from)));
                        let b = self.bind(Bind::Text(date_key(to)));
                        format!("{key} >= {a} AND {key} <= {b}")
                    }
                };
                format!("{kind} = {text} AND {shape} AND {cond}")
            }
        }
    }

    /// A custom number: bound as a number in SQLite, as jsonb in PostgreSQL.
    fn number(&mut self, n: &Number) -> String {
        if self.pg() {
            let p = self.bind(Bind::Text(n.to_string()));
            format!("{p}::jsonb")
        } else if let Some(i) = n.as_i64() {
            self.bind(Bind::Int(i))
        } else {
            self.bind(Bind::Float(n.as_f64().unwrap_or(f64::NAN)))
        }
    }

    fn numbers(&mut self, expr: &str, test: &NumTest<Number>) -> String {
        match test {
            NumTest::Cmp(cmp, n) => {
                let p = self.number(n);
                format!("{expr} {} {p}", cmp.sql())
            }
            NumTest::Between(low, high) => {
                let (a, b) = (self.number(low), self.number(high));
                format!("{expr} >= {a} AND {expr} <= {b}")
            }
            NumTest::In(items) => {
                let p = self.bind_json(Value::from(items.clone()));
                if self.pg() {
                    format!("{expr} IN (SELECT jsonb_array_elements({p}))")
                } else {
                    format!("{expr} IN (SELECT value FROM json_each({p}))")
                }
            }
        }
    }

    fn integers(&mut self, expr: &str, test: &NumTest<i64>) -> String {
        match test {
            NumTest::Cmp(cmp, n) => {
                let p = self.bind(Bind::Int(*n));
                format!("{expr} {} {p}", cmp.sql())
            }
            NumTest::Between(low, high) => {
                let (a, b) = (self.bind(Bind::Int(*low)), self.bind(Bind::Int(*high)));
                format!("{expr} >= {a} AND {expr} <= {b}")
            }
            NumTest::In(items) => {
                let p = self.bind_json(Value::from(items.clone()));
                if self.pg() {
                    format!("{expr} IN (SELECT jsonb_array_elements_text({p})::bigint)")
                } else {
                    format!("{expr} IN (SELECT value FROM json_each({p}))")
                }
            }
        }
    }

    /// Whole days since `last` compared to N, as comparisons of `last` with instants: with
    /// `B(n) = now - n days`, `days >= n` ⇔ `last <= B(n)` and `days <= n` ⇔
    /// `last > B(n + 1)`. Exact, with no rounding in SQL.
    fn days(&mut self, last: &str, test: &NumTest<i64>) -> String {
        match test {
            NumTest::Cmp(cmp, n) => match cmp {
                Cmp::Gte => self.days_at_least(last, *n),
                Cmp::Gt => self.days_at_least(last, n + 1),
                Cmp::Lte => self.days_at_most(last, *n),
                Cmp::Lt => self.days_at_most(last, n - 1),
                Cmp::Eq => self.days_between(last, *n, *n),
                Cmp::Ne => {
                    let inside = self.days_between(last, *n, *n);
                    format!("NOT ({inside})")
                }
            },
            NumTest::Between(low, high) => self.days_between(last, *low, *high),
            NumTest::In(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|n| format!("({})", self.days_between(last, *n, *n)))
                    .collect();
                parts.join(" OR ")
            }
        }
    }

    fn days_at_least(&mut self, last: &str, n: i64) -> String {
        let p = self.bind(Bind::Time(days_before(self.now, n)));
        format!("{last} <= {p}")
    }

    fn days_at_most(&mut self, last: &str, n: i64) -> String {
        let p = self.bind(Bind::Time(days_before(self.now, n + 1)));
        format!("{last} > {p}")
    }

    fn days_between(&mut self, last: &str, low: i64, high: i64) -> String {
        let a = self.days_at_least(last, low);
        let b = self.days_at_most(last, high);
        format!("{a} AND {b}")
    }
}
