//! Tests of rule validation and compilation that need no database; the property test holding
//! the compiled SQL to the evaluator runs against each backend in the conformance suite.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::sql::{Bind, Dialect, compile};
use super::*;

fn errors(value: Value) -> Vec<(String, &'static str)> {
    parse_rule(&value, &Limits::default())
        .expect_err("the rule is invalid")
        .into_iter()
        .map(|e| (e.path, e.code))
        .collect()
}

#[test]
fn the_specs_example_reads_as_two_conditions() {
    let rule = parse_rule(
        &json!({"and":[{"field":"custom.total_sales","op":"gte","value":50000},
                       {"field":"last_message_days","op":"lte","value":90}]}),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        rule,
        Rule::And(vec![
            Rule::Leaf(Condition::Custom(
                "total_sales".into(),
                CustomTest::Number(NumTest::Cmp(Cmp::Gte, 50000.into()))
            )),
            Rule::Leaf(Condition::LastMessageDays(NumTest::Cmp(Cmp::Lte, 90))),
        ])
    );
}

#[test]
fn every_bad_node_is_reported_with_its_path_and_code() {
    let found = errors(json!({"and":[
        {"field":"shoe_size","op":"eq","value":42},
        {"field":"first_name","op":"gte","value":"A"},
        {"or":[{"field":"consent","op":"eq","value":"yes"},
               {"field":"tag","op":"like","value":"x"}]},
        {"not":{"field":"created_at","op":"gt","value":"yesterday"}},
        {"field":"delivered_count","op":"between","value":[5,1]},
        {"field":"custom.a\"b","op":"exists"},
        {"and":[]},
    ]}));
    assert_eq!(
        found,
        vec![
            ("/and/0/field".into(), "unknown_field"),
            ("/and/1/op".into(), "operator_not_allowed_for_field"),
            ("/and/2/or/0/value".into(), "wrong_type"),
            ("/and/2/or/1/op".into(), "unknown_operator"),
            ("/and/3/not/value".into(), "wrong_type"),
            ("/and/4/value".into(), "invalid_range"),
            ("/and/5/field".into(), "invalid_custom_key"),
            ("/and/6/and".into(), "empty_group"),
        ]
    );
}

#[test]
fn limits_bound_depth_leaves_values_and_strings() {
    let mut deep = json!({"field":"consent","op":"eq","value":true});
    for _ in 0..10 {
        deep = json!({ "not": deep });
    }
    assert!(errors(deep).iter().any(|(_, code)| *code == "too_deep"));
    let leaves: Vec<Value> = (0..201)
        .map(|_| json!({"field":"consent","op":"eq","value":true}))
        .collect();
    assert_eq!(
        errors(json!({ "or": leaves })),
        vec![("".into(), "too_many_leaves")]
    );
    let values: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    assert_eq!(
        errors(json!({"field":"tag","op":"in","value":values})),
        vec![("/value".into(), "too_many_values")]
    );
    assert_eq!(
        errors(json!({"field":"email","op":"contains","value":"x".repeat(501)})),
        vec![("/value".into(), "too_long")]
    );
}

#[test]
fn custom_values_are_typed_by_the_rules_value() {
    let read = |v: Value| match parse_rule(&v, &Limits::default()).unwrap() {
        Rule::Leaf(Condition::Custom(_, test)) => test,
        other => panic!("unexpected {other:?}"),
    };
    assert!(matches!(
        read(json!({"field":"custom.vip","op":"eq","value":true})),
        CustomTest::Bool(true)
    ));
    assert!(matches!(
        read(json!({"field":"custom.vip","op":"ne","value":true})),
        CustomTest::Bool(false)
    ));
    assert!(matches!(
        read(json!({"field":"custom.since","op":"gte","value":"2025-01-01"})),
        CustomTest::Date(TimeTest::Cmp(Cmp::Gte, _))
    ));
    assert!(matches!(
        read(json!({"field":"custom.city","op":"in","value":["Paris","Lyon"]})),
        CustomTest::Text(TextTest::In(_))
    ));
    assert!(matches!(
        read(json!({"field":"custom.score","op":"between","value":[1,2.5]})),
        CustomTest::Number(NumTest::Between(_, _))
    ));
}

const HOSTILE: &str = "x' OR 1=1; DROP TABLE contacts; --";

#[test]
fn values_and_custom_keys_only_ever_travel_as_binds() {
    let rule = parse_rule(
        &json!({"or": [
            {"field": "first_name", "op": "eq", "value": HOSTILE},
            {"field": "tag", "op": "in", "value": [HOSTILE]},
            {"field": format!("custom.{HOSTILE}"), "op": "contains", "value": HOSTILE},
            {"not": {"field": "email", "op": "contains", "value": HOSTILE}},
        ]}),
        &Default::default(),
    )
    .unwrap();
    let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let compiled = compile(&rule, dialect, now, 3);
        assert!(!compiled.sql.contains("DROP"), "{}", compiled.sql);
        assert!(!compiled.sql.contains("1=1"), "{}", compiled.sql);
        let texts: Vec<&str> = compiled
            .binds
            .iter()
            .filter_map(|b| match b {
                Bind::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert!(texts.iter().filter(|t| t.contains("DROP")).count() >= 4);
        // Placeholders are numbered from the caller's first, one per bind.
        let last = 3 + compiled.binds.len() - 1;
        let mark = if dialect == Dialect::Sqlite { '?' } else { '$' };
        assert!(compiled.sql.contains(&format!("{mark}3")));
        assert!(compiled.sql.contains(&format!("{mark}{last}")));
        assert!(!compiled.sql.contains(&format!("{mark}{}", last + 1)));
    }
}

#[test]
fn last_message_days_become_exact_instant_bounds() {
    let rule = parse_rule(
        &json!({"field": "last_message_days", "op": "lte", "value": 90}),
        &Default::default(),
    )
    .unwrap();
    let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    let compiled = compile(&rule, Dialect::Postgres, now, 1);
    assert!(
        compiled.sql.contains("max(m.created_at) > $1"),
        "{}",
        compiled.sql
    );
    // 90 whole days or fewer: sent after 91 days before now.
    assert_eq!(
        compiled.binds,
        vec![Bind::Time("2026-03-02T00:00:00Z".parse().unwrap())]
    );
}
