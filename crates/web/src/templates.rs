//! Templates, `/v1/templates`: named bodies with `{{variables}}` — create, list, read, change,
//! delete, and preview (rendered text, encoding, segments and cost) for saved and unsaved
//! bodies. Also what `POST /v1/messages` needs to send with a template or to a contact.
//!
//! A body is parsed when it is saved: a malformed one is refused with the fault's code and
//! position, so a template that is stored always renders.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use herald_domain::encoding;
use herald_domain::message::MessageType;
use herald_domain::phone::{PhoneNumber, Region};
use herald_domain::template::Template;
use herald_engine::templates::{self, SendTemplateError, TemplateError, TemplateInput};
use herald_store::{
    Contact, DeclaredVariable, IdempotencyRecord, MessageTemplate, TemplateCreation, TemplateFilter,
};
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::paging;
use crate::problem::{self, FieldProblem, Problem, ProblemBody, SourcePosition};
use crate::providers::field_problems;

/// This module's routes, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_template, list_templates))
        .routes(routes!(get_template, update_template, delete_template))
        .routes(routes!(preview_template))
        .routes(routes!(preview_draft))
}

/// A template to create, or the fields of one to change (everything left out stays as it was).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
    /// Unique within the organization; required on creation.
    #[schema(example = "appointment-reminder")]
    pub name: Option<String>,
    /// Free text for filtering (`marketing`, `otp`…); `null` removes it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "reminders")]
    pub category: Option<Option<String>>,
    /// The text, with `{{variable}}` and `{{variable | default: "text"}}` placeholders;
    /// required on creation.
    #[schema(example = "Hi {{first_name | default: \"there\"}}, see you on {{date}}.")]
    pub body: Option<String>,
    /// Documentation of the body's variables. Each must be used by the body; replaces the old
    /// list whole.
    pub variables: Option<Vec<DeclaredVariableBody>>,
    /// Default `true`. An inactive template cannot be sent.
    pub active: Option<bool>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclaredVariableBody {
    #[schema(example = "date")]
    pub name: String,
    #[schema(example = "Day of the appointment")]
    pub description: Option<String>,
    #[schema(example = "Monday 3 March")]
    pub example: Option<String>,
}

/// A variable the body uses.
#[derive(Debug, Serialize, ToSchema)]
pub struct VariableView {
    pub name: String,
    /// Whether a send must give it a value (it has a placeholder without a default).
    pub required: bool,
    /// The default of its first placeholder that has one.
    pub default: Option<String>,
    pub description: Option<String>,
    pub example: Option<String>,
}

/// A template.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub id: Uuid,
    pub name: String,
    pub category: Option<String>,
    pub body: String,
    /// Every variable the body uses, in order of first use, with what was declared about it.
    pub variables: Vec<VariableView>,
    pub active: bool,
    /// Messages sent with it.
    pub usage_count: u64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<&MessageTemplate> for TemplateView {
    fn from(t: &MessageTemplate) -> Self {
        // Bodies are parsed before they are stored, so this only lists nothing for a row
        // damaged outside Herald.
        let used = Template::parse(&t.body)
            .map(|parsed| parsed.variables().to_vec())
            .unwrap_or_default();
        let variables = used
            .into_iter()
            .map(|v| {
                let declared = t.variables.iter().find(|d| d.name == v.name);
                VariableView {
                    required: v.required,
                    default: v.default,
                    description: declared.and_then(|d| d.description.clone()),
                    example: declared.and_then(|d| d.example.clone()),
                    name: v.name,
                }
            })
            .collect();
        TemplateView {
            id: t.id,
            name: t.name.clone(),
            category: t.category.clone(),
            body: t.body.clone(),
            variables,
            active: t.active,
            usage_count: t.usage_count,
            last_used_at: t.last_used_at,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A page of templates, in the order they were created.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplatePage {
    pub data: Vec<TemplateView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and paging for listing templates.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TemplateQuery {
    /// Page size, 1–100 (default 20).
    pub limit: Option<String>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Only templates of this category.
    pub category: Option<String>,
    /// `true` or `false`: only active or only inactive templates.
    pub active: Option<String>,
}

fn input(body: TemplateBody) -> TemplateInput {
    TemplateInput {
        name: body.name,
        category: body.category,
        body: body.body,
        variables: body.variables.map(|variables| {
            variables
                .into_iter()
                .map(|v| DeclaredVariable {
                    name: v.name,
                    description: v.description,
                    example: v.example,
                })
                .collect()
        }),
        active: body.active,
    }
}

fn not_found() -> Problem {
    Problem::new(&problem::NOT_FOUND, "no such template")
}

/// Path ids that are not UUIDs cannot name a template: that is a 404, not a 400.
fn template_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| not_found())
}

fn template_problem(error: TemplateError) -> Problem {
    match error {
        TemplateError::Invalid(errors) => field_problems(errors),
        TemplateError::Parse(e) => Problem::field(
            &problem::VALIDATION_FAILED,
            "body",
            e.code.as_str(),
            format!("`body` is not a valid template: {e}"),
        )
        .with_position(SourcePosition {
            line: e.line,
            column: e.column,
            offset: e.offset,
        }),
        TemplateError::NameTaken => Problem::field(
            &problem::TEMPLATE_NAME_TAKEN,
            "name",
            "name_taken",
            "the organization already has a template with this name",
        ),
        TemplateError::NotFound => not_found(),
        TemplateError::Store(error) => error.into(),
    }
}

/// The same request, however its JSON was spelled, hashes the same; the route is part of it,
/// so a key used to send a message never replays a template.
fn request_hash(body: &TemplateBody) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"POST /v1/templates\n");
    hasher.update(serde_json::to_vec(body).unwrap_or_default());
    hasher.finalize().into()
}

/// Create a template.
///
/// The body is parsed first: a malformed placeholder is refused with 422 naming `body`, with
/// the fault's code (`unclosed_tag`, `unexpected_close`, `empty_variable`, `invalid_variable`,
/// `unknown_filter`, `malformed_default`) and its `position`. With an `Idempotency-Key`,
/// repeating the same request within 24 hours returns the original response.
#[utoipa::path(
    post,
    path = "/v1/templates",
    tag = "templates",
    request_body = TemplateBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours return the first response.")),
    responses(
        (status = 201, description = "Created", body = TemplateView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, a body that does not parse, or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_template(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<TemplateBody>,
) -> Result<Response, Problem> {
    let engine = &state.engine;
    let now = engine.clock.now();
    let hash = request_hash(&body);
    let template =
        templates::new_template(caller.org.id, &input(body), now).map_err(template_problem)?;
    let first_response = serde_json::to_vec(&TemplateView::from(&template))
        .map_err(|e| Problem::internal("failed to render a template", &e))?;
    let idempotency = idempotency_key.map(|key| IdempotencyRecord {
        key,
        request_hash: hash,
        response: first_response.clone(),
        expires_at: now + engine.config.intake.idempotency_ttl,
    });
    let stored = templates::create(engine.store.as_ref(), &template, idempotency.as_ref(), now)
        .await
        .map_err(template_problem)?;
    match stored {
        TemplateCreation::Created => {
            tracing::info!(template_id = %template.id, org_id = %template.org_id, "template created");
            let location = format!("/v1/templates/{}", template.id);
            Ok(crate::json_response(
                StatusCode::CREATED,
                first_response,
                Some(&location),
                false,
            ))
        }
        TemplateCreation::Replayed { id, response } => {
            let location = format!("/v1/templates/{id}");
            Ok(crate::json_response(
                StatusCode::CREATED,
                response,
                Some(&location),
                true,
            ))
        }
        TemplateCreation::KeyReused => Err(Problem::field(
            &problem::IDEMPOTENCY_KEY_REUSED,
            "Idempotency-Key",
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
    }
}

/// List templates, in the order they were created.
#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "templates",
    params(TemplateQuery),
    responses(
        (status = 200, body = TemplatePage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter, limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_templates(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TemplateQuery>,
) -> Result<Json<TemplatePage>, Problem> {
    let active = match query.active.as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(FieldProblem {
            field: "active".into(),
            code: "invalid_boolean".into(),
            message: "`active` must be `true` or `false`".into(),
        }),
    };
    let limit = paging::limit(query.limit.as_deref());
    let after = paging::id_cursor(query.cursor.as_deref());
    let (Ok(limit), Ok(after), Ok(active)) = (&limit, &after, &active) else {
        let errors = [limit.err(), after.err(), active.err()];
        return Err(Problem::invalid_fields(
            errors.into_iter().flatten().collect(),
        ));
    };
    let (limit, after, active) = (*limit, *after, *active);
    let filter = TemplateFilter {
        category: query.category,
        active,
    };
    let page = state
        .engine
        .store
        .list_templates(caller.org.id, &filter, after, limit)
        .await?;
    Ok(Json(TemplatePage {
        data: page.items.iter().map(TemplateView::from).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}

/// Read a template.
#[utoipa::path(
    get,
    path = "/v1/templates/{id}",
    tag = "templates",
    params(("id" = Uuid, Path, description = "The template id")),
    responses(
        (status = 200, body = TemplateView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_template(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TemplateView>, Problem> {
    let id = template_id(&id)?;
    let template = state.engine.store.get_template(caller.org.id, id).await?;
    template
        .map(|t| Json(TemplateView::from(&t)))
        .ok_or_else(not_found)
}

/// Change a template.
///
/// Only the fields given change; the result is checked whole (a new body must still use every
/// declared variable). Usage counts are kept.
#[utoipa::path(
    patch,
    path = "/v1/templates/{id}",
    tag = "templates",
    params(("id" = Uuid, Path, description = "The template id")),
    request_body = TemplateBody,
    responses(
        (status = 200, body = TemplateView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields or a body that does not parse", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn update_template(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TemplateBody>,
) -> Result<Json<TemplateView>, Problem> {
    let id = template_id(&id)?;
    let engine = &state.engine;
    let template = templates::update(
        engine.store.as_ref(),
        caller.org.id,
        id,
        &input(body),
        engine.clock.now(),
    )
    .await
    .map_err(template_problem)?;
    tracing::info!(template_id = %template.id, org_id = %template.org_id, "template updated");
    Ok(Json(TemplateView::from(&template)))
}

/// Delete a template. Messages sent with it keep their text.
#[utoipa::path(
    delete,
    path = "/v1/templates/{id}",
    tag = "templates",
    params(("id" = Uuid, Path, description = "The template id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_template(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = template_id(&id)?;
    if !state
        .engine
        .store
        .delete_template(caller.org.id, id)
        .await?
    {
        return Err(not_found());
    }
    tracing::info!(template_id = %id, org_id = %caller.org.id, "template deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// What to render a saved template with.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// Values for the template's variables: strings, numbers or booleans. They override the
    /// contact's fields.
    #[schema(value_type = Option<Object>, example = json!({"date": "Monday 3 March"}))]
    pub variables: Option<Map<String, Value>>,
    /// A contact whose fields (`first_name`, `last_name`, `phone`, `email`, custom fields)
    /// fill the variables; its phone prices the preview unless `to` is given.
    pub contact_id: Option<String>,
    /// A destination to price the message for (any format `POST /v1/messages` accepts).
    #[schema(example = "+14155550100")]
    pub to: Option<String>,
    /// `transactional` (default) or `promotional`, for the price.
    #[serde(rename = "type", default)]
    #[schema(value_type = Option<String>, example = "transactional")]
    pub kind: MessageType,
}

/// An unsaved body to render, with the same options as [`PreviewRequest`].
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftPreviewRequest {
    #[schema(example = "Hi {{first_name | default: \"there\"}}!")]
    pub body: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Map<String, Value>>,
    pub contact_id: Option<String>,
    pub to: Option<String>,
    #[serde(rename = "type", default)]
    #[schema(value_type = Option<String>)]
    pub kind: MessageType,
}

/// A rendered template and what sending it would take.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewView {
    /// The text as it would be sent; a missing variable is left as written.
    pub body: String,
    /// `GSM-7` or `UCS-2`.
    #[schema(value_type = String, example = "GSM-7")]
    pub encoding: encoding::Encoding,
    pub segments: u32,
    /// Unicode characters in `body`.
    pub characters: u32,
    /// Required variables without a value; a send would be refused until they have one.
    pub missing: Vec<String>,
    /// The destination priced, in E.164, when there is one.
    pub to: Option<String>,
    #[schema(value_type = Option<String>, example = "US")]
    pub country: Option<Region>,
    /// Segments × the destination's price; `null` without a destination.
    #[schema(value_type = Option<String>, example = "0.0079")]
    pub estimated_cost: Option<herald_domain::money::Amount>,
    #[schema(example = "USD")]
    pub currency: String,
}

/// The contact named by `raw`, or why there is none: an id of another organization reads the
/// same as one that does not exist.
async fn contact(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> Result<Result<Contact, FieldProblem>, Problem> {
    let unknown = || FieldProblem {
        field: "contact_id".into(),
        code: "unknown_contact".into(),
        message: "`contact_id` names no contact of this organization".into(),
    };
    let Ok(id) = Uuid::parse_str(raw) else {
        return Ok(Err(unknown()));
    };
    let found = state.engine.store.get_contact(caller.org.id, id).await?;
    Ok(found.ok_or_else(unknown))
}

/// Render `template` for a preview: fill it, count it and price it.
async fn preview(
    state: &AppState,
    caller: &Caller,
    template: &Template,
    request: PreviewRequest,
) -> Result<Json<PreviewView>, Problem> {
    let mut errors = Vec::new();
    let contact = match request.contact_id.as_deref() {
        None => None,
        Some(raw) => match contact(state, caller, raw).await? {
            Ok(contact) => Some(contact),
            Err(error) => {
                errors.push(error);
                None
            }
        },
    };
    let destination = request
        .to
        .as_deref()
        .or(contact.as_ref().map(|c| c.phone.as_str()));
    let to = match destination.map(|to| PhoneNumber::parse(to, Some(caller.org.default_region))) {
        None => None,
        Some(Ok(number)) => Some(number),
        Some(Err(error)) => {
            errors.push(FieldProblem {
                field: "to".into(),
                code: error.code().into(),
                message: format!("`to` is not a valid phone number: {error}"),
            });
            None
        }
    };
    let given = request.variables.unwrap_or_default();
    let values = match templates::variables(contact.as_ref(), &given) {
        Ok(values) => values,
        Err(found) => {
            errors.extend(found.into_iter().map(FieldProblem::from));
            Default::default()
        }
    };
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let rendered = template.render_lenient(templates::lookup(&values));
    let info = encoding::analyze(&rendered.text);
    let prices = &state.engine.prices;
    Ok(Json(PreviewView {
        encoding: info.encoding,
        segments: info.segments,
        characters: info.characters,
        missing: rendered.missing,
        estimated_cost: to
            .as_ref()
            .map(|to| prices.estimate(to.region(), request.kind, info.segments)),
        country: to.as_ref().and_then(PhoneNumber::region),
        to: to.map(|to| to.e164().to_owned()),
        currency: prices.currency().as_str().to_owned(),
        body: rendered.text,
    }))
}

/// Preview a saved template.
///
/// Renders it with `variables` and the fields of `contact_id`, and reports the encoding,
/// segments, characters and (with a destination) estimated cost. Missing required variables
/// are listed in `missing`, not refused.
#[utoipa::path(
    post,
    path = "/v1/templates/{id}/preview",
    tag = "templates",
    params(("id" = Uuid, Path, description = "The template id")),
    request_body = PreviewRequest,
    responses(
        (status = 200, body = PreviewView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid variables, contact or destination", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn preview_template(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<PreviewRequest>,
) -> Result<Json<PreviewView>, Problem> {
    let id = template_id(&id)?;
    let stored = state
        .engine
        .store
        .get_template(caller.org.id, id)
        .await?
        .ok_or_else(not_found)?;
    let template = Template::parse(&stored.body)
        .map_err(|e| Problem::internal("a stored template no longer parses", &e))?;
    preview(&state, &caller, &template, request).await
}

/// Preview an unsaved body.
///
/// The same as previewing a saved template, for a `body` being written: a body that does not
/// parse is refused as it would be on save.
#[utoipa::path(
    post,
    path = "/v1/templates/preview",
    tag = "templates",
    request_body = DraftPreviewRequest,
    responses(
        (status = 200, body = PreviewView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A body that does not parse, or invalid variables, contact or destination", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn preview_draft(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<DraftPreviewRequest>,
) -> Result<Json<PreviewView>, Problem> {
    let Some(body) = request.body else {
        return Err(Problem::field(
            &problem::VALIDATION_FAILED,
            "body",
            "required",
            "`body` is required",
        ));
    };
    let template = templates::parse_body(&body).map_err(template_problem)?;
    let options = PreviewRequest {
        variables: request.variables,
        contact_id: request.contact_id,
        to: request.to,
        kind: request.kind,
    };
    preview(&state, &caller, &template, options).await
}

/// Where a message's body and recipient come from when `POST /v1/messages` names a template or
/// a contact, and what was wrong with them.
#[derive(Debug, Default)]
pub(crate) struct SendSource {
    pub to: Option<String>,
    pub body: Option<String>,
    /// The template sent with, whose use is counted once the message is stored.
    pub template_id: Option<Uuid>,
    pub errors: Vec<FieldProblem>,
    /// The body could not be rendered, for a reason in `errors`: intake's "`body` is required"
    /// would only repeat it.
    pub body_failed: bool,
    /// The contact could not be found, for a reason in `errors`.
    pub to_failed: bool,
}

/// Resolve `to`/`contact_id` and `body`/`template_id` + `variables` of a send: exactly one of
/// each pair, a contact and template of the caller's organization, every required variable
/// given. Nothing is stored here.
pub(crate) async fn send_source(
    state: &AppState,
    caller: &Caller,
    to: Option<&str>,
    contact_id: Option<&str>,
    body: Option<&str>,
    template_id: Option<&str>,
    variables: Option<&Map<String, Value>>,
) -> Result<SendSource, Problem> {
    let mut source = SendSource {
        to: to.map(str::to_owned),
        body: body.map(str::to_owned),
        ..SendSource::default()
    };
    let conflict = |field: &str, other: &str| FieldProblem {
        field: field.into(),
        code: "conflicting_fields".into(),
        message: format!("give either `{other}` or `{field}`, not both"),
    };
    let mut contact_found = None;
    match (contact_id, to) {
        (Some(_), Some(_)) => source.errors.push(conflict("contact_id", "to")),
        (Some(raw), None) => match contact(state, caller, raw).await? {
            Ok(found) => {
                source.to = Some(found.phone.clone());
                contact_found = Some(found);
            }
            Err(error) => {
                source.errors.push(error);
                source.to_failed = true;
            }
        },
        (None, _) => {}
    }
    match (template_id, body) {
        (Some(_), Some(_)) => source.errors.push(conflict("template_id", "body")),
        (None, _) if variables.is_some() => source.errors.push(FieldProblem {
            field: "variables".into(),
            code: "template_required".into(),
            message: "`variables` only apply with `template_id`".into(),
        }),
        (None, _) => {}
        // Without its contact the variables cannot be judged; the contact's error says enough.
        (Some(_), None) if source.to_failed => source.body_failed = true,
        (Some(raw), None) => {
            source.body_failed = true;
            let Ok(id) = Uuid::parse_str(raw) else {
                source.errors.push(FieldProblem {
                    field: "template_id".into(),
                    code: "unknown_template".into(),
                    message: "`template_id` names no template of this organization".into(),
                });
                return Ok(source);
            };
            let empty = Map::new();
            let values =
                match templates::variables(contact_found.as_ref(), variables.unwrap_or(&empty)) {
                    Ok(values) => values,
                    Err(found) => {
                        source
                            .errors
                            .extend(found.into_iter().map(FieldProblem::from));
                        return Ok(source);
                    }
                };
            match templates::render_for_send(
                state.engine.store.as_ref(),
                caller.org.id,
                id,
                &values,
            )
            .await
            {
                Ok((text, template)) => {
                    source.body_failed = false;
                    source.body = Some(text);
                    source.template_id = Some(template.id);
                }
                Err(SendTemplateError::Invalid(found)) => {
                    source
                        .errors
                        .extend(found.into_iter().map(FieldProblem::from));
                }
                Err(SendTemplateError::Store(error)) => return Err(error.into()),
            }
        }
    }
    Ok(source)
}

/// Count one more message sent with the template. The message is already stored, so a failure
/// here is logged rather than failing the send.
pub(crate) async fn record_use(state: &AppState, org_id: Uuid, id: Uuid) {
    let now = state.engine.clock.now();
    if let Err(error) = state
        .engine
        .store
        .record_template_use(org_id, id, 1, now)
        .await
    {
        tracing::warn!(%error, template_id = %id, "failed to count a template's use");
    }
}
