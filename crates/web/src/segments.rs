//! Segments, `/v1/segments`: saved rules that select an organization's contacts, and previews
//! (a count and a sample) of saved or unsaved rules. A bad rule is refused with one error per
//! bad node, named by its path from `rule` (`rule/and/1/value`); so is a rule naming a list the
//! organization does not have.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use herald_store::segment::{Limits, Rule, parse_rule};
use herald_store::{
    AudienceCreation, AudienceRefusal, IdempotencyRecord, Page, Segment, Store, StoreError,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::audience::{self, Audience};
use crate::auth::Caller;
use crate::contacts::ContactView;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::lists::{description, name, not_found, path_id, present};
use crate::paging::ListQuery;
use crate::problem::{FieldProblem, Problem, ProblemBody};

/// This module's routes, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_segment, list_segments))
        .routes(routes!(preview_rule))
        .routes(routes!(get_segment, update_segment, delete_segment))
        .routes(routes!(preview_segment))
}

/// Contacts a preview shows.
const SAMPLE: u32 = 10;

/// A segment.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// The rule as given.
    #[schema(value_type = Object)]
    pub rule: Value,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<&Segment> for SegmentView {
    fn from(s: &Segment) -> SegmentView {
        SegmentView {
            id: s.id,
            name: s.name.clone(),
            description: s.description.clone(),
            rule: s.rule.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

impl Audience for Segment {
    const WHAT: &'static str = "segment";
    const PATH: &'static str = "/v1/segments";
    type View = SegmentView;

    fn view(&self) -> SegmentView {
        SegmentView::from(self)
    }

    fn id(&self) -> Uuid {
        self.id
    }

    fn updated_at_mut(&mut self) -> &mut Timestamp {
        &mut self.updated_at
    }

    async fn insert(
        store: &dyn Store,
        segment: &Segment,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AudienceCreation, AudienceRefusal>, StoreError> {
        store.create_segment(segment, idempotency, now).await
    }

    async fn get(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<Option<Segment>, StoreError> {
        store.get_segment(org_id, id).await
    }

    async fn update(
        store: &dyn Store,
        segment: &Segment,
        read_at: Timestamp,
    ) -> Result<Result<(), AudienceRefusal>, StoreError> {
        store.update_segment(segment, read_at).await
    }

    async fn page(
        store: &dyn Store,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Segment>, StoreError> {
        store.list_segments(org_id, after, limit).await
    }
}

/// A page of segments, in creation order.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentPage {
    pub data: Vec<SegmentView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A new segment.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSegment {
    /// Unique within the organization; 1 to 200 characters.
    pub name: Option<String>,
    pub description: Option<String>,
    /// A rule tree: `{"and":[…]}`, `{"or":[…]}`, `{"not":{…}}`, or a condition
    /// `{"field":"custom.total_sales","op":"gte","value":50000}`.
    #[schema(value_type = Object)]
    pub rule: Option<Value>,
}

/// Changes to a segment; fields left out stay as they are, a `null` description clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSegment {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[schema(value_type = Option<Object>)]
    pub rule: Option<Value>,
}

/// An unsaved rule to preview.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    #[schema(value_type = Object)]
    pub rule: Option<Value>,
}

/// How many contacts a rule selects now, and the first of them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    pub count: u64,
    /// Up to 10 of the contacts, by id.
    pub sample: Vec<ContactView>,
}

/// Read a rule, naming each bad node by its path under `rule`.
fn rule(raw: Option<&Value>, errors: &mut Vec<FieldProblem>) -> Option<Rule> {
    let Some(raw) = raw else {
        errors.push(FieldProblem::new("rule", "required", "`rule` is required"));
        return None;
    };
    match parse_rule(raw, &Limits::default()) {
        Ok(rule) => Some(rule),
        Err(found) => {
            errors.extend(found.into_iter().map(|e| FieldProblem {
                field: format!("rule{}", e.path),
                code: e.code.to_owned(),
                message: e.message,
            }));
            None
        }
    }
}

/// The list ids a rule names, each with the path of its value.
fn list_refs(node: &Value, path: &str, out: &mut Vec<(String, Uuid)>) {
    let Some(object) = node.as_object() else {
        return;
    };
    for kind in ["and", "or"] {
        if let Some(Value::Array(items)) = object.get(kind) {
            for (i, item) in items.iter().enumerate() {
                list_refs(item, &format!("{path}/{kind}/{i}"), out);
            }
        }
    }
    if let Some(inner) = object.get("not") {
        list_refs(inner, &format!("{path}/not"), out);
    }
    if matches!(
        object.get("field").and_then(Value::as_str),
        Some("list" | "lists")
    ) {
        let id = |v: &Value| v.as_str().and_then(|s| Uuid::parse_str(s).ok());
        match object.get("value") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(id) = id(item) {
                        out.push((format!("{path}/value/{i}"), id));
                    }
                }
            }
            Some(value) => out.extend(id(value).map(|id| (format!("{path}/value"), id))),
            None => {}
        }
    }
}

/// A valid rule may still name lists the organization does not have (deleted, or another
/// organization's): refused when the rule is written, so a typo is not a segment that is
/// silently empty. A saved rule whose list is deleted later simply matches no one through it.
async fn check_lists(state: &AppState, org_id: Uuid, raw: &Value) -> Result<(), Problem> {
    let mut refs = Vec::new();
    list_refs(raw, "", &mut refs);
    let mut known = std::collections::HashMap::new();
    let mut errors = Vec::new();
    for (path, id) in refs {
        let exists = match known.get(&id) {
            Some(exists) => *exists,
            None => {
                let exists = state.engine.store.get_list(org_id, id).await?.is_some();
                known.insert(id, exists);
                exists
            }
        };
        if !exists {
            errors.push(FieldProblem::new(
                format!("rule{path}"),
                "unknown_list",
                format!("the organization has no list {id}"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid_fields(errors))
    }
}

async fn preview(state: &AppState, org_id: Uuid, rule: &Rule) -> Result<Preview, Problem> {
    let store = &state.engine.store;
    let now = state.engine.clock.now();
    let count = store.count_segment(org_id, rule, now).await?;
    let page = store
        .segment_members(org_id, rule, now, None, SAMPLE)
        .await?;
    let contacts = store.contacts_by_id(org_id, &page.items).await?;
    Ok(Preview {
        count,
        sample: contacts.into_iter().map(ContactView::from).collect(),
    })
}

/// Save a segment. The rule is validated; a bad one is refused with every error found. With
/// an `Idempotency-Key`, repeating the same request within 24 hours returns the original
/// response instead of creating another segment.
#[utoipa::path(
    post,
    path = "/v1/segments",
    tag = "audience",
    request_body = CreateSegment,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours return the first response.")),
    responses(
        (status = 201, description = "Created", body = SegmentView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields or rule, or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_segment(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<CreateSegment>,
) -> Result<Response, Problem> {
    let mut errors = Vec::new();
    let name = name(body.name.as_deref(), &mut errors);
    let description = description(body.description.as_deref(), &mut errors);
    let parsed = rule(body.rule.as_ref(), &mut errors);
    let (Some(name), Some(description), Some(_), Some(rule)) =
        (name, description, parsed, body.rule.clone())
    else {
        return Err(Problem::invalid_fields(errors));
    };
    check_lists(&state, caller.org.id, &rule).await?;
    let now = state.engine.clock.now();
    let segment = Segment {
        id: Uuid::now_v7(),
        org_id: caller.org.id,
        name,
        description,
        rule,
        created_at: now,
        updated_at: now,
    };
    audience::create(&state, segment, idempotency_key, &body, now).await
}

/// List the organization's segments, in the order they were created.
#[utoipa::path(
    get,
    path = "/v1/segments",
    tag = "audience",
    params(ListQuery),
    responses(
        (status = 200, body = SegmentPage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_segments(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<SegmentPage>, Problem> {
    let (data, next_cursor) = audience::page::<Segment>(&state, caller.org.id, &query).await?;
    Ok(Json(SegmentPage { data, next_cursor }))
}

/// Read a segment.
#[utoipa::path(
    get,
    path = "/v1/segments/{id}",
    tag = "audience",
    params(("id" = String, Path, description = "The segment's id")),
    responses(
        (status = 200, body = SegmentView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SegmentView>, Problem> {
    let id = path_id(&id, "segment")?;
    let segment = state
        .engine
        .store
        .get_segment(caller.org.id, id)
        .await?
        .ok_or_else(|| not_found("segment"))?;
    Ok(Json(SegmentView::from(&segment)))
}

/// Change a segment's name, description or rule.
///
/// Only the fields given change. Concurrent changes to the same segment are applied one after
/// the other, never lost.
#[utoipa::path(
    patch,
    path = "/v1/segments/{id}",
    tag = "audience",
    params(("id" = String, Path, description = "The segment's id")),
    request_body = UpdateSegment,
    responses(
        (status = 200, body = SegmentView),
        (status = 400, body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields or rule", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Other requests kept changing the segment; retry", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn update_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateSegment>,
) -> Result<Json<SegmentView>, Problem> {
    let id = path_id(&id, "segment")?;
    let mut errors = Vec::new();
    let new_name = body.name.as_deref().map(|raw| name(Some(raw), &mut errors));
    let new_description = body
        .description
        .as_ref()
        .map(|raw| description(raw.as_deref(), &mut errors));
    if let Some(raw) = &body.rule {
        rule(Some(raw), &mut errors);
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    if let Some(raw) = &body.rule {
        check_lists(&state, caller.org.id, raw).await?;
    }
    let view = audience::update(&state, caller.org.id, id, |segment: &mut Segment| {
        if let Some(Some(name)) = &new_name {
            segment.name.clone_from(name);
        }
        if let Some(Some(description)) = &new_description {
            segment.description.clone_from(description);
        }
        if let Some(rule) = &body.rule {
            segment.rule.clone_from(rule);
        }
    })
    .await?;
    Ok(Json(view))
}

/// Delete a segment. Its contacts are not touched.
#[utoipa::path(
    delete,
    path = "/v1/segments/{id}",
    tag = "audience",
    params(("id" = String, Path, description = "The segment's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = path_id(&id, "segment")?;
    if state.engine.store.delete_segment(caller.org.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("segment"))
    }
}

/// How many contacts a saved segment selects now, with a sample of them.
#[utoipa::path(
    post,
    path = "/v1/segments/{id}/preview",
    tag = "audience",
    params(("id" = String, Path, description = "The segment's id")),
    responses(
        (status = 200, body = Preview),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn preview_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Preview>, Problem> {
    let id = path_id(&id, "segment")?;
    let segment = state
        .engine
        .store
        .get_segment(caller.org.id, id)
        .await?
        .ok_or_else(|| not_found("segment"))?;
    let mut errors = Vec::new();
    // Stored rules were validated when saved; one that no longer reads is reported, not run.
    let Some(rule) = rule(Some(&segment.rule), &mut errors) else {
        return Err(Problem::invalid_fields(errors));
    };
    Ok(Json(preview(&state, caller.org.id, &rule).await?))
}

/// How many contacts an unsaved rule selects now, with a sample of them: for a rule builder's
/// live count.
#[utoipa::path(
    post,
    path = "/v1/segments/preview",
    tag = "audience",
    request_body = PreviewRequest,
    responses(
        (status = 200, body = Preview),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid rule", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn preview_rule(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PreviewRequest>,
) -> Result<Json<Preview>, Problem> {
    let mut errors = Vec::new();
    let (Some(rule), Some(raw)) = (rule(body.rule.as_ref(), &mut errors), &body.rule) else {
        return Err(Problem::invalid_fields(errors));
    };
    check_lists(&state, caller.org.id, raw).await?;
    Ok(Json(preview(&state, caller.org.id, &rule).await?))
}
