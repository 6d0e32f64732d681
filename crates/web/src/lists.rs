//! Lists, `/v1/lists`: static sets of an organization's contacts (a course's participants, an
//! event's guests), with members added and removed in bulk.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use herald_store::{
    AudienceCreation, AudienceRefusal, IdempotencyRecord, List, Membership, Page, Store, StoreError,
};
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::audience::{self, Audience};
use crate::auth::Caller;
use crate::contacts::ContactView;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::paging::{self, ListQuery};
use crate::problem::{self, FieldProblem, Problem, ProblemBody};

/// This module's routes, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_list, list_lists))
        .routes(routes!(get_list, update_list, delete_list))
        .routes(routes!(add_members, remove_members, list_members))
}

/// Longest list or segment name, in characters.
pub(crate) const MAX_NAME: usize = 200;
/// Longest description, in characters.
pub(crate) const MAX_DESCRIPTION: usize = 2_000;
/// Most contact ids in one membership change.
const MAX_IDS: usize = 1_000;

/// A list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub member_count: u64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<&List> for ListView {
    fn from(l: &List) -> ListView {
        ListView {
            id: l.id,
            name: l.name.clone(),
            description: l.description.clone(),
            member_count: l.member_count,
            created_at: l.created_at,
            updated_at: l.updated_at,
        }
    }
}

impl Audience for List {
    const WHAT: &'static str = "list";
    const PATH: &'static str = "/v1/lists";
    type View = ListView;

    fn view(&self) -> ListView {
        ListView::from(self)
    }

    fn id(&self) -> Uuid {
        self.id
    }

    fn updated_at_mut(&mut self) -> &mut Timestamp {
        &mut self.updated_at
    }

    async fn insert(
        store: &dyn Store,
        list: &List,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> Result<Result<AudienceCreation, AudienceRefusal>, StoreError> {
        store.create_list(list, idempotency, now).await
    }

    async fn get(store: &dyn Store, org_id: Uuid, id: Uuid) -> Result<Option<List>, StoreError> {
        store.get_list(org_id, id).await
    }

    async fn update(
        store: &dyn Store,
        list: &List,
        read_at: Timestamp,
    ) -> Result<Result<(), AudienceRefusal>, StoreError> {
        store.update_list(list, read_at).await
    }

    async fn page(
        store: &dyn Store,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<List>, StoreError> {
        store.list_lists(org_id, after, limit).await
    }
}

/// A page of lists, in creation order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListPage {
    pub data: Vec<ListView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A new list.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateList {
    /// Unique within the organization; 1 to 200 characters.
    pub name: Option<String>,
    pub description: Option<String>,
}

/// Changes to a list; fields left out stay as they are, a `null` description clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateList {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
}

/// Contacts to add to or remove from a list.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// Contact ids, 1 to 1,000.
    pub contact_ids: Option<Vec<String>>,
}

/// What adding members did. Ids that are not the organization's contacts are never added.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddedView {
    /// Contacts added.
    pub added: u64,
    /// Contacts that were already members.
    pub already: u64,
    /// How many ids name no contact of the organization.
    pub unknown: u64,
    #[schema(value_type = Vec<String>)]
    pub unknown_ids: Vec<Uuid>,
}

impl From<Membership> for AddedView {
    fn from(m: Membership) -> AddedView {
        AddedView {
            added: m.changed,
            already: m.unchanged,
            unknown: m.unknown.len() as u64,
            unknown_ids: m.unknown,
        }
    }
}

/// What removing members did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemovedView {
    /// Contacts taken out of the list.
    pub removed: u64,
    /// Contacts of the organization that were not members.
    pub absent: u64,
    /// How many ids name no contact of the organization.
    pub unknown: u64,
    #[schema(value_type = Vec<String>)]
    pub unknown_ids: Vec<Uuid>,
}

impl From<Membership> for RemovedView {
    fn from(m: Membership) -> RemovedView {
        RemovedView {
            removed: m.changed,
            absent: m.unchanged,
            unknown: m.unknown.len() as u64,
            unknown_ids: m.unknown,
        }
    }
}

/// A page of a list's members, by contact id.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberPage {
    pub data: Vec<ContactView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A field that was sent, even as `null`, is `Some`: `null` then means "clear it".
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A name as stored: trimmed, 1 to [`MAX_NAME`] characters.
pub(crate) fn name(raw: Option<&str>, errors: &mut Vec<FieldProblem>) -> Option<String> {
    match raw.map(str::trim) {
        None | Some("") => {
            errors.push(FieldProblem::new("name", "required", "`name` is required"));
            None
        }
        Some(name) if name.chars().count() > MAX_NAME => {
            errors.push(FieldProblem::new(
                "name",
                "too_long",
                format!("`name` has at most {MAX_NAME} characters"),
            ));
            None
        }
        Some(name) => Some(name.to_owned()),
    }
}

/// A description as stored: trimmed, empty meaning none.
pub(crate) fn description(
    raw: Option<&str>,
    errors: &mut Vec<FieldProblem>,
) -> Option<Option<String>> {
    match raw.map(str::trim) {
        Some(text) if text.chars().count() > MAX_DESCRIPTION => {
            errors.push(FieldProblem::new(
                "description",
                "too_long",
                format!("`description` has at most {MAX_DESCRIPTION} characters"),
            ));
            None
        }
        Some("") | None => Some(None),
        Some(text) => Some(Some(text.to_owned())),
    }
}

/// Path ids that are not UUIDs cannot name anything: that is a 404, not a 400.
pub(crate) fn path_id(raw: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| not_found(what))
}

pub(crate) fn not_found(what: &str) -> Problem {
    Problem::new(&problem::NOT_FOUND, format!("no such {what}"))
}

pub(crate) fn name_taken(what: &str) -> Problem {
    Problem::new(
        &problem::NAME_TAKEN,
        format!("the organization already has a {what} with this name"),
    )
    .with_errors(vec![FieldProblem::new(
        "name",
        "name_taken",
        format!("another {what} has this name"),
    )])
}

/// Hash of a create request as parsed, so a retry with other whitespace still matches.
pub(crate) fn request_hash(route: &str, canonical: &serde_json::Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.to_string());
    hasher.finalize().into()
}

/// The `Idempotency-Key` of a create whose retry answers the object as it is by then (no
/// response is kept with the key), or `None` without one.
pub(crate) fn replay_key(
    state: &AppState,
    key: Option<String>,
    route: &str,
    request: &serde_json::Value,
) -> Option<herald_store::IdempotencyRecord> {
    let engine = &state.engine;
    key.map(|key| herald_store::IdempotencyRecord {
        key,
        request_hash: request_hash(route, request),
        response: Vec::new(),
        expires_at: engine.clock.now() + engine.config.intake.idempotency_ttl,
    })
}

/// What a create keyed by [`replay_key`] made: the new object, or (`true`) the one an earlier
/// request with the key made, read by `earlier`; a key reused with another request is refused.
pub(crate) async fn made<T, Fut>(
    created: herald_engine::Created<T>,
    earlier: impl FnOnce(Uuid) -> Fut,
    missing: fn() -> Problem,
) -> Result<(T, bool), Problem>
where
    Fut: std::future::Future<Output = Result<Option<T>, herald_store::StoreError>>,
{
    match created {
        herald_engine::Created::Created(made) => Ok((made, false)),
        herald_engine::Created::Replayed(id) => Ok((earlier(id).await?.ok_or_else(missing)?, true)),
        herald_engine::Created::KeyReused => Err(key_reused()),
    }
}

/// 201 with `body` at `location`, marked replayed when an earlier request with the key made it.
pub(crate) fn created(
    body: &impl serde::Serialize,
    location: &str,
    replayed: bool,
) -> Result<Response, Problem> {
    let body = serde_json::to_vec(body)
        .map_err(|e| Problem::internal("failed to render a response", &e))?;
    Ok(crate::json_response(
        StatusCode::CREATED,
        body,
        Some(location),
        replayed,
    ))
}

pub(crate) fn key_reused() -> Problem {
    Problem::field(
        &problem::IDEMPOTENCY_KEY_REUSED,
        "Idempotency-Key",
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request",
    )
}

/// The response a creation calls for: the new object, or the one a retried key created.
pub(crate) fn creation(
    outcome: AudienceCreation,
    first_response: Vec<u8>,
    id: Uuid,
    collection: &str,
) -> Result<Response, Problem> {
    match outcome {
        AudienceCreation::Created => Ok(crate::json_response(
            StatusCode::CREATED,
            first_response,
            Some(&format!("{collection}/{id}")),
            false,
        )),
        AudienceCreation::Replayed { id, response } => Ok(crate::json_response(
            StatusCode::CREATED,
            response,
            Some(&format!("{collection}/{id}")),
            true,
        )),
        AudienceCreation::KeyReused => Err(key_reused()),
    }
}

fn contact_ids(body: Members) -> Result<Vec<Uuid>, Problem> {
    let Some(raw) = body.contact_ids else {
        return Err(Problem::invalid_fields(vec![FieldProblem::new(
            "contact_ids",
            "required",
            "`contact_ids` is required",
        )]));
    };
    if raw.is_empty() || raw.len() > MAX_IDS {
        return Err(Problem::invalid_fields(vec![FieldProblem::new(
            "contact_ids",
            "invalid_count",
            format!("`contact_ids` holds 1 to {MAX_IDS} ids"),
        )]));
    }
    let mut errors = Vec::new();
    let mut ids = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        match Uuid::parse_str(text) {
            Ok(id) => ids.push(id),
            Err(_) => errors.push(FieldProblem::new(
                format!("contact_ids/{i}"),
                "invalid_id",
                "not a contact id",
            )),
        }
    }
    if errors.is_empty() {
        Ok(ids)
    } else {
        Err(Problem::invalid_fields(errors))
    }
}

/// Create a list. With an `Idempotency-Key`, repeating the same request within 24 hours
/// returns the original response instead of creating another list.
#[utoipa::path(
    post,
    path = "/v1/lists",
    tag = "audience",
    request_body = CreateList,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours return the first response.")),
    responses(
        (status = 201, description = "Created", body = ListView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_list(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<CreateList>,
) -> Result<Response, Problem> {
    let mut errors = Vec::new();
    let name = name(body.name.as_deref(), &mut errors);
    let description = description(body.description.as_deref(), &mut errors);
    let (Some(name), Some(description)) = (name, description) else {
        return Err(Problem::invalid_fields(errors));
    };
    let now = state.engine.clock.now();
    let list = List {
        id: Uuid::now_v7(),
        org_id: caller.org.id,
        name,
        description,
        member_count: 0,
        created_at: now,
        updated_at: now,
    };
    audience::create(&state, list, idempotency_key, &body, now).await
}

/// List the organization's lists, in the order they were created.
#[utoipa::path(
    get,
    path = "/v1/lists",
    tag = "audience",
    params(ListQuery),
    responses(
        (status = 200, body = ListPage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_lists(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ListPage>, Problem> {
    let (data, next_cursor) = audience::page::<List>(&state, caller.org.id, &query).await?;
    Ok(Json(ListPage { data, next_cursor }))
}

/// Read a list.
#[utoipa::path(
    get,
    path = "/v1/lists/{id}",
    tag = "audience",
    params(("id" = String, Path, description = "The list's id")),
    responses(
        (status = 200, body = ListView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ListView>, Problem> {
    let id = path_id(&id, "list")?;
    let list = state
        .engine
        .store
        .get_list(caller.org.id, id)
        .await?
        .ok_or_else(|| not_found("list"))?;
    Ok(Json(ListView::from(&list)))
}

/// Rename a list or change its description.
///
/// Only the fields given change. Concurrent changes to the same list are applied one after the
/// other, never lost.
#[utoipa::path(
    patch,
    path = "/v1/lists/{id}",
    tag = "audience",
    params(("id" = String, Path, description = "The list's id")),
    request_body = UpdateList,
    responses(
        (status = 200, body = ListView),
        (status = 400, body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Other requests kept changing the list; retry", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn update_list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateList>,
) -> Result<Json<ListView>, Problem> {
    let id = path_id(&id, "list")?;
    let mut errors = Vec::new();
    let new_name = body.name.as_deref().map(|raw| name(Some(raw), &mut errors));
    let new_description = body
        .description
        .as_ref()
        .map(|raw| description(raw.as_deref(), &mut errors));
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let view = audience::update(&state, caller.org.id, id, |list: &mut List| {
        if let Some(Some(name)) = &new_name {
            list.name.clone_from(name);
        }
        if let Some(Some(description)) = &new_description {
            list.description.clone_from(description);
        }
    })
    .await?;
    Ok(Json(view))
}

/// Delete a list. Its contacts stay; only their membership goes.
#[utoipa::path(
    delete,
    path = "/v1/lists/{id}",
    tag = "audience",
    params(("id" = String, Path, description = "The list's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = path_id(&id, "list")?;
    if state.engine.store.delete_list(caller.org.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found("list"))
    }
}

/// Add contacts to a list in one step. Ids that are not the organization's contacts are
/// counted as `unknown` and never added; contacts already in the list are counted as
/// `already`.
#[utoipa::path(
    post,
    path = "/v1/lists/{id}/members",
    tag = "audience",
    params(("id" = String, Path, description = "The list's id")),
    request_body = Members,
    responses(
        (status = 200, body = AddedView),
        (status = 400, body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn add_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Members>,
) -> Result<Json<AddedView>, Problem> {
    let id = path_id(&id, "list")?;
    let ids = contact_ids(body)?;
    let now = state.engine.clock.now();
    let change = state
        .engine
        .store
        .add_list_members(caller.org.id, id, &ids, now)
        .await?
        .ok_or_else(|| not_found("list"))?;
    Ok(Json(AddedView::from(change)))
}

/// Remove contacts from a list in one step; the contacts themselves stay.
#[utoipa::path(
    delete,
    path = "/v1/lists/{id}/members",
    tag = "audience",
    params(("id" = String, Path, description = "The list's id")),
    request_body = Members,
    responses(
        (status = 200, body = RemovedView),
        (status = 400, body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn remove_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Members>,
) -> Result<Json<RemovedView>, Problem> {
    let id = path_id(&id, "list")?;
    let ids = contact_ids(body)?;
    let change = state
        .engine
        .store
        .remove_list_members(caller.org.id, id, &ids)
        .await?
        .ok_or_else(|| not_found("list"))?;
    Ok(Json(RemovedView::from(change)))
}

/// The members of a list, by contact id.
#[utoipa::path(
    get,
    path = "/v1/lists/{id}/members",
    tag = "audience",
    params(("id" = String, Path, description = "The list's id"), ListQuery),
    responses(
        (status = 200, body = MemberPage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<MemberPage>, Problem> {
    let id = path_id(&id, "list")?;
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    let store = &state.engine.store;
    let page = store
        .list_members(caller.org.id, id, after, limit)
        .await?
        .ok_or_else(|| not_found("list"))?;
    let contacts = store.contacts_by_id(caller.org.id, &page.items).await?;
    Ok(Json(MemberPage {
        data: contacts.into_iter().map(ContactView::from).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}
