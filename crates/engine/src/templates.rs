//! Message templates as the API and senders use them: what a template may be saved with (its
//! body must parse, its declared variables must be ones the body uses), the variables a send or
//! preview fills it with (a contact's fields, overridden by the request's), and rendering for a
//! send, which is refused before anything is queued when a required variable has no value.

use std::borrow::Cow;
use std::collections::HashMap;

use herald_domain::template::{ParseError, Template};
use herald_store::{
    Contact, DeclaredVariable, IdempotencyRecord, MessageTemplate, Store, StoreError,
    TemplateCreation, TemplateRefusal,
};
use jiff::Timestamp;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::accounts::FieldError;

/// Longest template name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest category, in characters.
pub const MAX_CATEGORY_CHARS: usize = 50;
/// Longest template body, in characters: the longest message body a send accepts, since a
/// template rarely renders shorter than it is written.
pub const MAX_BODY_CHARS: usize = 1_600;
/// Most variables a template may declare.
pub const MAX_DECLARED: usize = 50;
/// Longest description or example of a declared variable, in characters.
pub const MAX_NOTE_CHARS: usize = 500;

/// How often an update re-reads and retries when another writer got there first.
const UPDATE_ATTEMPTS: usize = 5;

/// A template to create, or the fields of one to change: `None` leaves a field as it is, and
/// `category: Some(None)` clears the category.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateInput {
    pub name: Option<String>,
    pub category: Option<Option<String>>,
    pub body: Option<String>,
    pub variables: Option<Vec<DeclaredVariable>>,
    pub active: Option<bool>,
}

/// Why a template was not saved; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// The body is not a template; the error says where.
    #[error("the body is not a valid template: {0}")]
    Parse(ParseError),
    #[error("the organization already has a template with this name")]
    NameTaken,
    #[error("no such template")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A trimmed, non-empty, single-line text of at most `max` characters.
fn short_text(name: &str, value: &str, max: usize, errors: &mut Vec<FieldError>) -> String {
    let value = value.trim();
    if value.is_empty() {
        errors.push(FieldError::new(
            name,
            "required",
            format!("`{name}` must not be empty"),
        ));
    } else if value.chars().count() > max {
        errors.push(FieldError::new(
            name,
            "too_long",
            format!("`{name}` is longer than {max} characters"),
        ));
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new(
            name,
            "invalid_character",
            format!("`{name}` must not contain control characters"),
        ));
    }
    value.to_owned()
}

/// Check a template body's size and characters, then parse it.
pub fn parse_body(body: &str) -> Result<Template, TemplateError> {
    if body.trim().is_empty() {
        return Err(TemplateError::Invalid(vec![FieldError::new(
            "body",
            "required",
            "`body` must not be empty",
        )]));
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(TemplateError::Invalid(vec![FieldError::new(
            "body",
            "body_too_long",
            format!("`body` is longer than {MAX_BODY_CHARS} characters"),
        )]));
    }
    // U+0000 has no place in an SMS and PostgreSQL cannot store it in text.
    if body.contains('\0') {
        return Err(TemplateError::Invalid(vec![FieldError::new(
            "body",
            "invalid_character",
            "`body` must not contain NUL characters",
        )]));
    }
    Template::parse(body).map_err(TemplateError::Parse)
}

/// Declared variables must each be used by the body, once: a declaration documents a variable
/// for the people filling it in, and one the body never shows would mislead them.
fn check_declared(
    declared: &[DeclaredVariable],
    template: &Template,
    errors: &mut Vec<FieldError>,
) {
    if declared.len() > MAX_DECLARED {
        errors.push(FieldError::new(
            "variables",
            "too_many",
            format!("a template declares at most {MAX_DECLARED} variables"),
        ));
        return;
    }
    for (i, variable) in declared.iter().enumerate() {
        if !template.variables().iter().any(|v| v.name == variable.name) {
            errors.push(FieldError::new(
                format!("variables[{i}].name"),
                "unused_variable",
                format!("the body does not use `{}`", variable.name),
            ));
        } else if declared[..i].iter().any(|v| v.name == variable.name) {
            errors.push(FieldError::new(
                format!("variables[{i}].name"),
                "duplicate_variable",
                format!("`{}` is declared twice", variable.name),
            ));
        }
        for (note, text) in [
            ("description", &variable.description),
            ("example", &variable.example),
        ] {
            if text
                .as_ref()
                .is_some_and(|t| t.chars().count() > MAX_NOTE_CHARS)
            {
                errors.push(FieldError::new(
                    format!("variables[{i}].{note}"),
                    "too_long",
                    format!("`{note}` is longer than {MAX_NOTE_CHARS} characters"),
                ));
            }
        }
    }
}

/// `current` with the changes `input` asks for, checked whole: a new body must still use every
/// declared variable, and new declarations must be used by the (possibly unchanged) body.
fn apply(
    current: &MessageTemplate,
    input: &TemplateInput,
    now: Timestamp,
) -> Result<MessageTemplate, TemplateError> {
    let mut errors = Vec::new();
    let mut next = current.clone();
    if let Some(name) = &input.name {
        next.name = short_text("name", name, MAX_NAME_CHARS, &mut errors);
    }
    if let Some(category) = &input.category {
        next.category = category
            .as_deref()
            .map(|c| short_text("category", c, MAX_CATEGORY_CHARS, &mut errors));
    }
    if let Some(body) = &input.body {
        next.body.clone_from(body);
    }
    if let Some(variables) = &input.variables {
        next.variables.clone_from(variables);
    }
    if let Some(active) = input.active {
        next.active = active;
    }
    let template = parse_body(&next.body)?;
    check_declared(&next.variables, &template, &mut errors);
    if !errors.is_empty() {
        return Err(TemplateError::Invalid(errors));
    }
    if next != *current {
        next.updated_at = now;
    }
    Ok(next)
}

/// A new template of `org_id` from `input`, checked; `name` and `body` are required.
pub fn new_template(
    org_id: Uuid,
    input: &TemplateInput,
    now: Timestamp,
) -> Result<MessageTemplate, TemplateError> {
    let mut missing = Vec::new();
    for (name, given) in [
        ("name", input.name.is_some()),
        ("body", input.body.is_some()),
    ] {
        if !given {
            missing.push(FieldError::new(
                name,
                "required",
                format!("`{name}` is required"),
            ));
        }
    }
    if !missing.is_empty() {
        return Err(TemplateError::Invalid(missing));
    }
    let blank = MessageTemplate {
        id: Uuid::now_v7(),
        org_id,
        name: String::new(),
        category: None,
        body: String::new(),
        variables: Vec::new(),
        active: true,
        usage_count: 0,
        last_used_at: None,
        created_at: now,
        updated_at: now,
    };
    apply(&blank, input, now)
}

fn refused(refusal: TemplateRefusal) -> TemplateError {
    match refusal {
        TemplateRefusal::NameTaken => TemplateError::NameTaken,
        TemplateRefusal::NotFound | TemplateRefusal::Stale => TemplateError::NotFound,
    }
}

/// Store a template made by [`new_template`].
pub async fn create(
    store: &dyn Store,
    template: &MessageTemplate,
    idempotency: Option<&IdempotencyRecord>,
    now: Timestamp,
) -> Result<TemplateCreation, TemplateError> {
    store
        .create_template(template, idempotency, now)
        .await?
        .map_err(refused)
}

/// Change a template: read it, apply `input`, and write it back unless someone else wrote it
/// in between, in which case start again from their version.
pub async fn update(
    store: &dyn Store,
    org_id: Uuid,
    id: Uuid,
    input: &TemplateInput,
    now: Timestamp,
) -> Result<MessageTemplate, TemplateError> {
    for _ in 0..UPDATE_ATTEMPTS {
        let current = store
            .get_template(org_id, id)
            .await?
            .ok_or(TemplateError::NotFound)?;
        let next = apply(&current, input, now)?;
        if next == current {
            return Ok(current);
        }
        match store.update_template(&next, current.updated_at).await? {
            Ok(()) => return Ok(next),
            Err(TemplateRefusal::Stale) => continue,
            Err(refusal) => return Err(refused(refusal)),
        }
    }
    Err(StoreError::Conflict("the template kept changing while it was being updated".into()).into())
}

/// The text a JSON value stands for in a message: strings as they are, numbers and booleans as
/// written in JSON. `null` is no value; arrays and objects have no single text.
fn text_of(value: &Value) -> Option<Option<String>> {
    match value {
        Value::Null => Some(None),
        Value::String(s) => Some(Some(s.clone())),
        Value::Number(n) => Some(Some(n.to_string())),
        Value::Bool(b) => Some(Some(b.to_string())),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// The values a template is filled with: the contact's fields (`first_name`, `last_name`,
/// `phone`, `email` and each custom field under its own key), then the request's `variables`,
/// which win. A request variable that is not a string, number, boolean or `null` is an error
/// on `variables.<name>`.
pub fn variables(
    contact: Option<&Contact>,
    given: &Map<String, Value>,
) -> Result<HashMap<String, String>, Vec<FieldError>> {
    let mut values = HashMap::new();
    if let Some(contact) = contact {
        for (key, value) in &contact.custom {
            if let Some(Some(text)) = text_of(value) {
                values.insert(key.clone(), text);
            }
        }
        // The contact's own fields come last, so a custom field cannot hide them.
        values.insert("phone".to_owned(), contact.phone.clone());
        for (key, value) in [
            ("first_name", &contact.first_name),
            ("last_name", &contact.last_name),
            ("email", &contact.email),
        ] {
            match value {
                Some(text) => values.insert(key.to_owned(), text.clone()),
                None => values.remove(key),
            };
        }
    }
    let mut errors = Vec::new();
    for (key, value) in given {
        match text_of(value) {
            Some(Some(text)) => {
                values.insert(key.clone(), text);
            }
            Some(None) => {
                values.remove(key);
            }
            None => errors.push(FieldError::new(
                format!("variables.{key}"),
                "invalid_variable",
                format!("`variables.{key}` must be a string, number, boolean or null"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

/// A lookup over [`variables`]' result, for [`Template::render`].
pub fn lookup<'a>(
    values: &'a HashMap<String, String>,
) -> impl Fn(&str) -> Option<Cow<'a, str>> + 'a {
    move |name| values.get(name).map(|v| Cow::Borrowed(v.as_str()))
}

/// Why a send with a template was refused; nothing was queued.
#[derive(Debug, thiserror::Error)]
pub enum SendTemplateError {
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The body one recipient gets: `template` filled with the contact's fields and the `fixed`
/// variables (which win), or else the plain `body`; `None` when a variable has no value.
pub(crate) fn personalise(
    template: Option<&Template>,
    body: Option<&String>,
    contact: Option<&Contact>,
    fixed: &Map<String, Value>,
) -> Option<String> {
    match (template, body) {
        (Some(template), _) => variables(contact, fixed)
            .ok()
            .and_then(|values| template.render(lookup(&values)).ok()),
        (None, Some(body)) => Some(body.clone()),
        (None, None) => None,
    }
}

/// Template `id` of `org_id`, parsed, when messages may be sent with it; otherwise the fault,
/// reported at `field`: no such template (or another organization's), or an inactive one.
pub(crate) async fn sendable(
    store: &dyn Store,
    org_id: Uuid,
    id: Uuid,
    field: &str,
) -> Result<Result<(Template, MessageTemplate), FieldError>, StoreError> {
    let Some(stored) = store.get_template(org_id, id).await? else {
        return Ok(Err(FieldError::new(
            field,
            "unknown_template",
            format!("`{field}` names no template of this organization"),
        )));
    };
    if !stored.active {
        return Ok(Err(FieldError::new(
            field,
            "inactive_template",
            "the template is inactive; activate it before sending with it",
        )));
    }
    let template = Template::parse(&stored.body).map_err(|e| {
        StoreError::Corrupt(format!("template {} no longer parses: {e}", stored.id))
    })?;
    Ok(Ok((template, stored)))
}

/// The body a send with template `id` gets, and the template, or the fields at fault: an
/// unknown (or another organization's) or inactive template on `template_id`, every missing
/// required variable on `variables`.
pub async fn render_for_send(
    store: &dyn Store,
    org_id: Uuid,
    id: Uuid,
    values: &HashMap<String, String>,
) -> Result<(String, MessageTemplate), SendTemplateError> {
    let invalid = |f: FieldError| SendTemplateError::Invalid(vec![f]);
    let (template, stored) = sendable(store, org_id, id, "template_id")
        .await?
        .map_err(invalid)?;
    match template.render(lookup(values)) {
        Ok(body) => Ok((body, stored)),
        Err(missing) => Err(invalid(FieldError::new(
            "variables",
            "missing_variables",
            format!("the template needs a value for: {}", missing.0.join(", ")),
        ))),
    }
}

#[cfg(test)]
mod tests;
