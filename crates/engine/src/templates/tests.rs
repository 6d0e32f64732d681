use serde_json::json;

use super::*;

fn now() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn input(name: &str, body: &str) -> TemplateInput {
    TemplateInput {
        name: Some(name.into()),
        body: Some(body.into()),
        ..TemplateInput::default()
    }
}

fn declared(name: &str) -> DeclaredVariable {
    DeclaredVariable {
        name: name.into(),
        ..DeclaredVariable::default()
    }
}

fn codes(error: TemplateError) -> Vec<(String, &'static str)> {
    match error {
        TemplateError::Invalid(errors) => errors.into_iter().map(|e| (e.field, e.code)).collect(),
        other => panic!("expected field errors, got {other:?}"),
    }
}

#[test]
fn a_new_template_is_active_trimmed_and_needs_a_name_and_a_body() {
    let org = Uuid::now_v7();
    let t = new_template(org, &input("  welcome ", "Hi {{name}}"), now()).unwrap();
    assert_eq!(
        (t.name.as_str(), t.active, t.org_id),
        ("welcome", true, org)
    );
    assert_eq!(
        codes(new_template(org, &TemplateInput::default(), now()).unwrap_err()),
        [("name".into(), "required"), ("body".into(), "required")]
    );
    assert_eq!(
        codes(new_template(org, &input(" ", "x"), now()).unwrap_err()),
        [("name".into(), "required")]
    );
}

#[test]
fn a_body_that_does_not_parse_is_refused_with_where() {
    let error = new_template(Uuid::now_v7(), &input("a", "Hi {{ name | upper }}"), now());
    match error {
        Err(TemplateError::Parse(e)) => {
            assert_eq!((e.code.as_str(), e.offset), ("unknown_filter", 13))
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn declared_variables_must_be_used_by_the_body_once() {
    let mut given = input("a", "Hi {{name}}");
    given.variables = Some(vec![declared("name"), declared("code"), declared("name")]);
    assert_eq!(
        codes(new_template(Uuid::now_v7(), &given, now()).unwrap_err()),
        [
            ("variables[1].name".into(), "unused_variable"),
            ("variables[2].name".into(), "duplicate_variable")
        ]
    );
}

#[test]
fn a_change_is_checked_against_the_whole_result_and_moves_updated_at_only_if_real() {
    let mut given = input("a", "Hi {{name}}");
    given.variables = Some(vec![declared("name")]);
    let current = new_template(Uuid::now_v7(), &given, now()).unwrap();
    let later = now() + jiff::SignedDuration::from_secs(60);

    // Dropping `name` from the body while it is still declared is refused.
    let change = TemplateInput {
        body: Some("Hello".into()),
        ..TemplateInput::default()
    };
    assert_eq!(
        codes(apply(&current, &change, later).unwrap_err()),
        [("variables[0].name".into(), "unused_variable")]
    );

    let same = TemplateInput {
        name: Some("a".into()),
        ..TemplateInput::default()
    };
    assert_eq!(apply(&current, &same, later).unwrap(), current);

    let clear = TemplateInput {
        category: Some(None),
        active: Some(false),
        ..TemplateInput::default()
    };
    let changed = apply(&current, &clear, later).unwrap();
    assert_eq!((changed.active, changed.updated_at), (false, later));
}

fn contact() -> Contact {
    let custom =
        json!({"plan": "gold", "visits": 3, "vip": true, "tags": ["x"], "first_name": "Custom"});
    Contact {
        id: Uuid::now_v7(),
        org_id: Uuid::now_v7(),
        phone: "+14155550100".into(),
        country: None,
        first_name: Some("Ada".into()),
        last_name: None,
        email: Some("ada@example.com".into()),
        time_zone: None,
        language: None,
        lead_status: "new".into(),
        tags: vec![],
        custom: custom.as_object().unwrap().clone(),
        consent: true,
        consent_source: None,
        consent_at: None,
        created_at: now(),
        updated_at: now(),
    }
}

#[test]
fn variables_come_from_the_contact_and_the_request_overrides_them() {
    let given = json!({"plan": "silver", "code": 1234, "email": null});
    let values = variables(Some(&contact()), given.as_object().unwrap()).unwrap();
    let get = |k: &str| values.get(k).map(String::as_str);
    assert_eq!(
        get("first_name"),
        Some("Ada"),
        "a custom field cannot hide a contact field"
    );
    assert_eq!(get("last_name"), None);
    assert_eq!(get("phone"), Some("+14155550100"));
    assert_eq!(get("plan"), Some("silver"));
    assert_eq!(get("visits"), Some("3"));
    assert_eq!(get("vip"), Some("true"));
    assert_eq!(get("tags"), None, "a list has no single text");
    assert_eq!(get("code"), Some("1234"));
    assert_eq!(get("email"), None, "null in the request removes the value");
}

#[test]
fn request_variables_that_are_lists_or_objects_are_refused() {
    let given = json!({"a": [1], "b": {"c": 1}, "d": "ok"});
    let errors = variables(None, given.as_object().unwrap()).unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["variables.a", "variables.b"]);
}
