use std::borrow::Cow;
use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<Cow<'a, str>> {
    move |name| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| Cow::Borrowed(*v))
    }
}

fn none(_: &str) -> Option<Cow<'static, str>> {
    None
}

/// Code, line, column and offset of the error parsing `body`.
fn error(body: &str) -> (&'static str, u32, u32, u32) {
    let e = Template::parse(body).expect_err(body);
    (e.code.as_str(), e.line, e.column, e.offset)
}

#[test]
fn placeholders_render_with_their_values() {
    let t = Template::parse("Hi {{first_name}}, your code is {{ code }}.").unwrap();
    assert_eq!(
        t.render(vars(&[("first_name", "Ada"), ("code", "1234")])),
        Ok("Hi Ada, your code is 1234.".to_owned())
    );
    let names: Vec<_> = t.required().collect();
    assert_eq!(names, ["first_name", "code"]);
}

#[test]
fn defaults_fill_missing_or_empty_values_and_make_a_variable_optional() {
    let t = Template::parse(r#"Hi {{ name | default: "friend" }}!"#).unwrap();
    assert_eq!(t.render(none), Ok("Hi friend!".to_owned()));
    assert_eq!(t.render(vars(&[("name", "")])), Ok("Hi friend!".to_owned()));
    assert_eq!(t.render(vars(&[("name", "Bo")])), Ok("Hi Bo!".to_owned()));
    assert_eq!(
        t.variables(),
        [Variable {
            name: "name".into(),
            default: Some("friend".into()),
            required: false
        }]
    );
}

#[test]
fn a_variable_is_required_if_any_of_its_placeholders_lacks_a_default() {
    let t = Template::parse(r#"{{a|default:"x"}} {{a}} {{b.c}}"#).unwrap();
    let names: Vec<_> = t.required().collect();
    assert_eq!(names, ["a", "b.c"]);
    assert_eq!(t.variables()[0].default.as_deref(), Some("x"));
}

#[test]
fn default_strings_take_escaped_quotes_and_backslashes_and_may_hold_braces() {
    let t = Template::parse(r#"{{ q | default: "say \"hi\" \\ {{ok}}" }}"#).unwrap();
    assert_eq!(t.render(none), Ok(r#"say "hi" \ {{ok}}"#.to_owned()));
}

#[test]
fn single_braces_and_whitespace_inside_tags_are_fine() {
    let t = Template::parse("{a} }{ {{\n  name\t|\n default :  \"x\"\n}}").unwrap();
    assert_eq!(t.render(vars(&[("name", "N")])), Ok("{a} }{ N".to_owned()));
}

#[test]
fn rendering_names_every_missing_required_variable_once() {
    let t = Template::parse("{{a}} {{b}} {{a}} {{c|default:\"\"}}").unwrap();
    assert_eq!(
        t.render(none),
        Err(MissingVariables(vec!["a".into(), "b".into()]))
    );
    let lenient = t.render_lenient(vars(&[("b", "B")]));
    assert_eq!(lenient.text, "{{a}} B {{a}} ");
    assert_eq!(lenient.missing, ["a"]);
}

#[test]
fn an_unclosed_tag_points_at_its_opening() {
    assert_eq!(error("Hello {{ name"), ("unclosed_tag", 1, 7, 6));
    assert_eq!(error("ab\ncd {{ x {{ y }}"), ("unclosed_tag", 2, 4, 6));
    assert_eq!(error("{{"), ("unclosed_tag", 1, 1, 0));
}

#[test]
fn a_stray_close_is_refused_where_it_is() {
    assert_eq!(error("Hi }} there"), ("unexpected_close", 1, 4, 3));
    assert_eq!(error("{{a}}\n\n x }}"), ("unexpected_close", 3, 4, 10));
}

#[test]
fn empty_and_invalid_names_are_refused() {
    assert_eq!(error("x {{ }}"), ("empty_variable", 1, 6, 5));
    assert_eq!(
        error(r#"{{ | default: "a" }}"#),
        ("empty_variable", 1, 4, 3)
    );
    assert_eq!(error("{{ first name }}"), ("invalid_variable", 1, 10, 9));
    assert_eq!(error("{{ -x }}"), ("invalid_variable", 1, 4, 3));
    assert_eq!(error("{{ a..b }}"), ("invalid_variable", 1, 4, 3));
    assert_eq!(error("{{ na\"me }}"), ("invalid_variable", 1, 6, 5));
}

#[test]
fn unknown_filters_are_refused_at_the_filter() {
    assert_eq!(error("{{ name | upper }}"), ("unknown_filter", 1, 11, 10));
    assert_eq!(error("{{ name | }}"), ("unknown_filter", 1, 11, 10));
    assert_eq!(
        error(r#"{{ n | default: "x" | upper }}"#),
        ("unknown_filter", 1, 23, 22)
    );
}

#[test]
fn malformed_defaults_are_refused_where_they_go_wrong() {
    assert_eq!(error("{{ n | default }}"), ("malformed_default", 1, 16, 15));
    assert_eq!(
        error("{{ n | default: x }}"),
        ("malformed_default", 1, 17, 16)
    );
    assert_eq!(
        error(r#"{{ n | default: "x }}"#),
        ("malformed_default", 1, 17, 16)
    );
    assert_eq!(
        error(r#"{{ n | default: "a\nb" }}"#),
        ("malformed_default", 1, 19, 18)
    );
    assert_eq!(
        error(r#"{{ n | default: "x" y }}"#),
        ("malformed_default", 1, 21, 20)
    );
    assert_eq!(
        error(r#"{{ n | default: "x" | default: "y" }}"#),
        ("malformed_default", 1, 23, 22)
    );
}

#[test]
fn positions_count_characters_not_bytes() {
    assert_eq!(error("héllo 👋 }}"), ("unexpected_close", 1, 9, 8));
}

#[test]
fn errors_display_their_code_and_position() {
    let e = Template::parse("{{ x | upper }}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown_filter at line 1, column 8 (offset 7): unknown filter `upper`; the only filter \
         is `default`"
    );
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,6}(\\.[a-z0-9_]{1,4})?"
}

/// Template bodies built from pieces: text without braces, placeholders with and without
/// defaults (whose strings may hold escapes and braces), and single braces.
fn body() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[^{}]{0,12}",
        name().prop_map(|n| format!("{{{{{n}}}}}")),
        (name(), "[^\"\\\\{}]{0,8}").prop_map(|(n, d)| format!("{{{{ {n} | default: \"{d}\" }}}}")),
        Just("{x} ".to_owned()),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn text_without_braces_renders_to_itself(text in "[^{}]*") {
        let t = Template::parse(&text).unwrap();
        prop_assert!(t.variables().is_empty());
        prop_assert_eq!(t.render(none), Ok(text));
    }

    #[test]
    fn rendering_with_every_variable_supplied_never_fails(body in body(), value in "[^{}]{0,5}") {
        let t = Template::parse(&body).unwrap();
        let values: HashMap<String, String> = t
            .variables()
            .iter()
            .map(|v| (v.name.clone(), value.clone()))
            .collect();
        let rendered = t.render(|n| values.get(n).map(|v| Cow::Borrowed(v.as_str())));
        prop_assert!(rendered.is_ok());
        prop_assert!(!rendered.unwrap().contains("{{"));
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,40}") {
        let _ = Template::parse(&text);
    }
}
