//! Message templates: named bodies with `{{variables}}`, kept per organization.
//!
//! The store keeps a template's body as text: it is parsed (and refused when malformed) by the
//! layers above before it gets here, and parsed again when used, so the store needs no
//! knowledge of the syntax.

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{IdempotencyRecord, Page, StoreError};

/// A variable declared when the template was saved: documentation for the people using it.
/// Which variables a template really needs comes from parsing its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeclaredVariable {
    pub name: String,
    pub description: Option<String>,
    pub example: Option<String>,
}

/// A template of one organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageTemplate {
    pub id: Uuid,
    pub org_id: Uuid,
    /// Unique within the organization.
    pub name: String,
    /// Free text (`marketing`, `otp`…), for filtering.
    pub category: Option<String>,
    pub body: String,
    pub variables: Vec<DeclaredVariable>,
    /// An inactive template is kept but cannot be sent.
    pub active: bool,
    /// Messages sent with it.
    pub usage_count: u64,
    pub last_used_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// Moves with edits only, never with use.
    pub updated_at: Timestamp,
}

/// What narrows a template listing; every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateFilter {
    pub category: Option<String>,
    pub active: Option<bool>,
}

/// What creating a template did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateCreation {
    Created,
    /// The `Idempotency-Key` was used before with the same request: here is the template it
    /// created and the response given then.
    Replayed {
        id: Uuid,
        response: Vec<u8>,
    },
    /// The key was used before with a different request; nothing was stored.
    KeyReused,
}

/// Why a template write was refused; nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateRefusal {
    /// No such template (or organization) for this organization.
    NotFound,
    /// The organization already has a template with this name.
    NameTaken,
    /// The template changed since the caller read it.
    Stale,
}

/// Declared variables as stored: a JSON array of `{name, description?, example?}`.
pub fn encode_declared(variables: &[DeclaredVariable]) -> String {
    let items: Vec<Value> = variables
        .iter()
        .map(|v| {
            let mut item = Map::new();
            item.insert("name".into(), json!(v.name));
            if let Some(description) = &v.description {
                item.insert("description".into(), json!(description));
            }
            if let Some(example) = &v.example {
                item.insert("example".into(), json!(example));
            }
            Value::Object(item)
        })
        .collect();
    Value::Array(items).to_string()
}

/// The inverse of [`encode_declared`].
pub fn decode_declared(text: &str) -> Result<Vec<DeclaredVariable>, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("declared template variables {text:?}"));
    let value: Value = serde_json::from_str(text).map_err(|_| corrupt())?;
    let text_field = |item: &Value, key: &str| -> Result<Option<String>, StoreError> {
        match item.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(corrupt()),
        }
    };
    value
        .as_array()
        .ok_or_else(corrupt)?
        .iter()
        .map(|item| {
            Ok(DeclaredVariable {
                name: text_field(item, "name")?.ok_or_else(corrupt)?,
                description: text_field(item, "description")?,
                example: text_field(item, "example")?,
            })
        })
        .collect()
}

/// What the store keeps about templates. Every method is scoped by organization: another
/// organization's template id is simply not found.
#[async_trait]
pub trait TemplateStore: Send + Sync + 'static {
    /// Store a new template, honouring an `Idempotency-Key` (kept with the organization's live
    /// keys). Refused with [`TemplateRefusal::NameTaken`], or [`TemplateRefusal::NotFound`]
    /// when the organization does not exist.
    async fn create_template(
        &self,
        template: &MessageTemplate,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<TemplateCreation, TemplateRefusal>, StoreError>;

    async fn get_template(
        &self,
        org_id: Uuid,
        id: Uuid,
    ) -> Result<Option<MessageTemplate>, StoreError>;

    /// Oldest first, `limit` per page, starting after the template `after`.
    async fn list_templates(
        &self,
        org_id: Uuid,
        filter: &TemplateFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<MessageTemplate>, StoreError>;

    /// Replace the editable fields (name, category, body, variables, active, updated_at) of
    /// the template if it still has the `updated_at` it had when read at `read_at`;
    /// [`TemplateRefusal::Stale`] otherwise. Usage is never overwritten.
    async fn update_template(
        &self,
        template: &MessageTemplate,
        read_at: Timestamp,
    ) -> Result<Result<(), TemplateRefusal>, StoreError>;

    /// Whether there was such a template to delete.
    async fn delete_template(&self, org_id: Uuid, id: Uuid) -> Result<bool, StoreError>;

    /// Count `count` more messages sent with the template at `at` (the last use only ever moves
    /// forward). Whether the template exists.
    async fn record_template_use(
        &self,
        org_id: Uuid,
        id: Uuid,
        count: u32,
        at: Timestamp,
    ) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_variables_survive_their_encoding() {
        let variables = vec![
            DeclaredVariable {
                name: "first_name".into(),
                description: Some("Given \"name\"".into()),
                example: None,
            },
            DeclaredVariable {
                name: "code".into(),
                description: None,
                example: Some("1234".into()),
            },
        ];
        assert_eq!(
            decode_declared(&encode_declared(&variables)).unwrap(),
            variables
        );
        assert_eq!(decode_declared("[]").unwrap(), []);
        assert!(decode_declared("{}").is_err());
    }
}
