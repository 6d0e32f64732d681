//! Automation over HTTP: drips (`/v1/drips`) with their enrolments and per-step stats,
//! triggers (`/v1/triggers`) with their firings, and named events (`POST /v1/events`). What
//! they may say and running them are the engine's ([`herald_engine::automation`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use herald_engine::automation::drips::{self, DripSpec, EnrolRequest, Enrolled};
use herald_engine::automation::parse_json;
use herald_engine::automation::triggers::{self, EventRequest, TriggerSpec};
use herald_store::{Drip, DripStats, Enrollment, Firing, Trigger};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::paging::{self, ListQuery};
use crate::problem::{self, FieldProblem, Problem, ProblemBody};

/// This module's routes, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_drip, list_drips))
        .routes(routes!(get_drip, update_drip, delete_drip))
        .routes(routes!(enrol, list_enrollments))
        .routes(routes!(get_enrollment))
        .routes(routes!(create_trigger, list_triggers))
        .routes(routes!(get_trigger, update_trigger, delete_trigger))
        .routes(routes!(list_firings))
        .routes(routes!(post_event))
}

fn invalid(errors: Vec<herald_engine::accounts::FieldError>) -> Problem {
    Problem::invalid_fields(errors.into_iter().map(FieldProblem::from).collect())
}

fn no_drip() -> Problem {
    Problem::new(&problem::NOT_FOUND, "no such drip")
}

fn no_trigger() -> Problem {
    Problem::new(&problem::NOT_FOUND, "no such trigger")
}

/// Path ids that are not UUIDs name nothing: that is a 404, not a 400.
fn path_id(raw: &str, missing: fn() -> Problem) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| missing())
}

// --- drips -----------------------------------------------------------------------------------

/// A drip: what it says, whether it takes steps, and (when read alone) how its enrolments and
/// steps stand.
#[derive(Debug, Serialize, ToSchema)]
pub struct DripView {
    pub id: Uuid,
    /// `active` or `paused`.
    pub status: String,
    /// Everything the drip says, as it was given.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Enrolments by state and exit reason, and each step's sends by where their messages
    /// stand.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub stats: Option<DripStats>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

fn drip_view(drip: &Drip, stats: Option<DripStats>) -> DripView {
    DripView {
        id: drip.id,
        status: drip.status.as_str().to_owned(),
        spec: drip.spec.clone(),
        stats,
        created_at: drip.created_at,
        updated_at: drip.updated_at,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DripPage {
    pub data: Vec<DripView>,
    pub next_cursor: Option<String>,
}

async fn read_drip(state: &AppState, caller: &Caller, id: &str) -> Result<Drip, Problem> {
    let id = path_id(id, no_drip)?;
    state
        .engine
        .store
        .get_drip(caller.scope(), id)
        .await?
        .ok_or_else(no_drip)
}

/// Create a drip sequence, active.
///
/// Give `name` and `steps`: each step has a `delay` (an ISO 8601 duration after the previous
/// step, or after enrolment for the first: `P2D`, `PT30M`), optionally `at` (then wait for
/// that time of day in the contact's own zone, else `timezone`), and a `template_id` (with
/// fixed `variables`) or a `body`. `exit_on_reply` (default true) lets a contact who replies
/// leave; an opt-out always does. `message_type` is `transactional` unless said otherwise.
#[utoipa::path(
    post,
    path = "/v1/drips",
    tag = "automation",
    request_body(content = Object, description = "The drip"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours answer the same drip.")),
    responses(
        (status = 201, description = "Created", body = DripView),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_drip(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    let spec: DripSpec = parse_json(body.clone()).map_err(|e| invalid(vec![e]))?;
    let record = crate::lists::replay_key(&state, key, "POST /v1/drips", &body);
    let engine = &state.engine;
    let done = drips::create(
        engine,
        &caller.org,
        caller.scope(),
        Some(caller.key.id),
        spec,
        record,
    )
    .await?
    .map_err(invalid)?;
    let (drip, replayed) = crate::lists::made(
        done,
        |id| engine.store.get_drip(caller.scope(), id),
        no_drip,
    )
    .await?;
    tracing::info!(drip_id = %drip.id, "drip created");
    crate::lists::created(
        &drip_view(&drip, None),
        &format!("/v1/drips/{}", drip.id),
        replayed,
    )
}

/// List drips, newest first.
#[utoipa::path(
    get,
    path = "/v1/drips",
    tag = "automation",
    params(ListQuery),
    responses(
        (status = 200, body = DripPage),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_drips(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<DripPage>, Problem> {
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    let page = state
        .engine
        .store
        .list_drips(caller.scope(), after, limit)
        .await?;
    Ok(Json(DripPage {
        data: page.items.iter().map(|d| drip_view(d, None)).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}

/// Read a drip with its enrolment and per-step stats.
#[utoipa::path(
    get,
    path = "/v1/drips/{id}",
    tag = "automation",
    params(("id" = Uuid, Path, description = "The drip id")),
    responses(
        (status = 200, body = DripView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_drip(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DripView>, Problem> {
    let drip = read_drip(&state, &caller, &id).await?;
    let stats = state
        .engine
        .store
        .drip_stats(caller.org.id, drip.id)
        .await?;
    Ok(Json(drip_view(&drip, Some(stats))))
}

/// Change a drip: the fields given replace its own; `status` (`active` or `paused`) pauses or
/// resumes it. Enrolments keep their place: step n is whatever step n now says.
#[utoipa::path(
    patch,
    path = "/v1/drips/{id}",
    tag = "automation",
    params(("id" = Uuid, Path, description = "The drip id")),
    request_body(content = Object, description = "The fields to replace"),
    responses(
        (status = 200, body = DripView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn update_drip(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> Result<Json<DripView>, Problem> {
    let id = path_id(&id, no_drip)?;
    let drip = drips::update(&state.engine, &caller.org, caller.scope(), id, patch)
        .await?
        .map_err(|refused| match refused {
            drips::Refused::NotFound => no_drip(),
            drips::Refused::Invalid(errors) => invalid(errors),
        })?;
    let stats = state
        .engine
        .store
        .drip_stats(caller.org.id, drip.id)
        .await?;
    Ok(Json(drip_view(&drip, Some(stats))))
}

/// Delete a drip with its enrolments; messages it sent stay.
#[utoipa::path(
    delete,
    path = "/v1/drips/{id}",
    tag = "automation",
    params(("id" = Uuid, Path, description = "The drip id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_drip(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = path_id(&id, no_drip)?;
    if !state.engine.store.delete_drip(caller.scope(), id).await? {
        return Err(no_drip());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A number's way through a drip.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentView {
    pub id: Uuid,
    pub drip_id: Uuid,
    pub phone: String,
    pub contact_id: Option<Uuid>,
    /// `contact`, `phone` or `trigger`.
    pub source: String,
    /// The next step (0-based), or the number of steps taken once over.
    pub step: u32,
    /// When the next step is due, while active.
    pub next_at: Option<Timestamp>,
    /// `active`, `completed` or `exited`.
    pub state: String,
    /// Why it left: `opted_out`, `replied`, `contact_deleted`.
    pub reason: Option<String>,
    /// Why its step is waiting to be tried again (`insufficient_credits`, …).
    pub error: Option<String>,
    pub enrolled_at: Timestamp,
    pub updated_at: Timestamp,
    /// Each step taken: its message, or why it was passed over (read alone only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepTakenView>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepTakenView {
    pub step: u32,
    pub message_id: Option<Uuid>,
    /// `sent`, or why nothing was sent (`no_consent`, `missing_variables`, …).
    pub outcome: String,
}

fn enrollment_view(e: Enrollment, steps: Option<Vec<StepTakenView>>) -> EnrollmentView {
    EnrollmentView {
        id: e.id,
        drip_id: e.drip_id,
        phone: e.phone,
        contact_id: e.contact_id,
        source: e.source,
        step: e.step,
        next_at: e.next_at,
        state: e.state.as_str().to_owned(),
        reason: e.reason,
        error: e.error,
        enrolled_at: e.enrolled_at,
        updated_at: e.updated_at,
        steps,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentPage {
    pub data: Vec<EnrollmentView>,
    pub next_cursor: Option<String>,
}

/// Enrol contacts, numbers, and the members of lists and segments (as they are now) in a
/// drip. A number already in it, or done with it, is not enrolled again.
#[utoipa::path(
    post,
    path = "/v1/drips/{id}/enrollments",
    tag = "automation",
    params(("id" = Uuid, Path, description = "The drip id")),
    request_body(content = Object, description = "`lists`, `segments`, `contacts` (ids) and `phones`"),
    responses(
        (status = 200, description = "How many were enrolled", body = Object),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn enrol(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Enrolled>, Problem> {
    let drip = read_drip(&state, &caller, &id).await?;
    let request: EnrolRequest = parse_json(body).map_err(|e| invalid(vec![e]))?;
    let done = drips::enrol(&state.engine, &caller.org, &drip, &request)
        .await?
        .map_err(invalid)?;
    tracing::info!(drip_id = %drip.id, enrolled = done.enrolled, "numbers enrolled");
    Ok(Json(done))
}

/// List a drip's enrolments, oldest first.
#[utoipa::path(
    get,
    path = "/v1/drips/{id}/enrollments",
    tag = "automation",
    params(("id" = Uuid, Path, description = "The drip id"), ListQuery),
    responses(
        (status = 200, body = EnrollmentPage),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_enrollments(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<EnrollmentPage>, Problem> {
    let drip = read_drip(&state, &caller, &id).await?;
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    let page = state
        .engine
        .store
        .list_enrollments(caller.org.id, drip.id, after, limit)
        .await?;
    Ok(Json(EnrollmentPage {
        data: page
            .items
            .into_iter()
            .map(|e| enrollment_view(e, None))
            .collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}

/// Read one enrolment with the steps it took.
#[utoipa::path(
    get,
    path = "/v1/drips/{id}/enrollments/{enrollment_id}",
    tag = "automation",
    params(
        ("id" = Uuid, Path, description = "The drip id"),
        ("enrollment_id" = Uuid, Path, description = "The enrolment id"),
    ),
    responses(
        (status = 200, body = EnrollmentView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_enrollment(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, enrollment_id)): Path<(String, String)>,
) -> Result<Json<EnrollmentView>, Problem> {
    let drip = read_drip(&state, &caller, &id).await?;
    let missing = || Problem::new(&problem::NOT_FOUND, "no such enrolment");
    let enrollment_id = Uuid::parse_str(&enrollment_id).map_err(|_| missing())?;
    let store = &state.engine.store;
    let enrollment = store
        .get_enrollment(caller.org.id, drip.id, enrollment_id)
        .await?
        .ok_or_else(missing)?;
    let steps = store
        .enrollment_sends(caller.org.id, enrollment.id)
        .await?
        .into_iter()
        .map(|(step, message_id, outcome)| StepTakenView {
            step,
            message_id,
            outcome,
        })
        .collect();
    Ok(Json(enrollment_view(enrollment, Some(steps))))
}

// --- triggers --------------------------------------------------------------------------------

/// A trigger: what it listens for and what it does.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerView {
    pub id: Uuid,
    pub active: bool,
    /// Everything the trigger says, as it was given.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub spec: Value,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

fn trigger_view(trigger: &Trigger) -> TriggerView {
    TriggerView {
        id: trigger.id,
        active: trigger.active,
        spec: trigger.spec.clone(),
        created_at: trigger.created_at,
        updated_at: trigger.updated_at,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerPage {
    pub data: Vec<TriggerView>,
    pub next_cursor: Option<String>,
}

async fn read_trigger(state: &AppState, caller: &Caller, id: &str) -> Result<Trigger, Problem> {
    let id = path_id(id, no_trigger)?;
    state
        .engine
        .store
        .get_trigger(caller.scope(), id)
        .await?
        .ok_or_else(no_trigger)
}

/// Create a trigger, active.
///
/// `event` is `contact.created` (a contact was created, by the API or an import),
/// `contact.age` (`days` after a contact was created, at `at` in the contact's own zone, else
/// `timezone`), or any other name, fired by `POST /v1/events`. The contact events take an
/// optional `filter`, a segment rule. The trigger sends a `template_id` (with fixed
/// `variables`, and an event's `data`) or a `body`, or enrols the contact in `drip_id`. A
/// contact trigger looks at contacts created from now on; each fires once per contact.
#[utoipa::path(
    post,
    path = "/v1/triggers",
    tag = "automation",
    request_body(content = Object, description = "The trigger"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours answer the same trigger.")),
    responses(
        (status = 201, description = "Created", body = TriggerView),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_trigger(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    let spec: TriggerSpec = parse_json(body.clone()).map_err(|e| invalid(vec![e]))?;
    let record = crate::lists::replay_key(&state, key, "POST /v1/triggers", &body);
    let engine = &state.engine;
    let done = triggers::create(
        engine,
        &caller.org,
        caller.scope(),
        Some(caller.key.id),
        spec,
        record,
    )
    .await?
    .map_err(invalid)?;
    let (trigger, replayed) = crate::lists::made(
        done,
        |id| engine.store.get_trigger(caller.scope(), id),
        no_trigger,
    )
    .await?;
    tracing::info!(trigger_id = %trigger.id, "trigger created");
    crate::lists::created(
        &trigger_view(&trigger),
        &format!("/v1/triggers/{}", trigger.id),
        replayed,
    )
}

/// List triggers, newest first.
#[utoipa::path(
    get,
    path = "/v1/triggers",
    tag = "automation",
    params(ListQuery),
    responses(
        (status = 200, body = TriggerPage),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_triggers(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<TriggerPage>, Problem> {
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    let page = state
        .engine
        .store
        .list_triggers(caller.scope(), after, limit)
        .await?;
    Ok(Json(TriggerPage {
        data: page.items.iter().map(trigger_view).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}

/// Read a trigger.
#[utoipa::path(
    get,
    path = "/v1/triggers/{id}",
    tag = "automation",
    params(("id" = Uuid, Path, description = "The trigger id")),
    responses(
        (status = 200, body = TriggerView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TriggerView>, Problem> {
    Ok(Json(trigger_view(
        &read_trigger(&state, &caller, &id).await?,
    )))
}

/// Change a trigger: the fields given replace its own; `active` switches it off and on. What
/// it listens for (`event`) cannot change.
#[utoipa::path(
    patch,
    path = "/v1/triggers/{id}",
    tag = "automation",
    params(("id" = Uuid, Path, description = "The trigger id")),
    request_body(content = Object, description = "The fields to replace"),
    responses(
        (status = 200, body = TriggerView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn update_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> Result<Json<TriggerView>, Problem> {
    let id = path_id(&id, no_trigger)?;
    let trigger = triggers::update(&state.engine, &caller.org, caller.scope(), id, patch)
        .await?
        .map_err(|refused| match refused {
            triggers::Refused::NotFound => no_trigger(),
            triggers::Refused::Invalid(errors) => invalid(errors),
        })?;
    Ok(Json(trigger_view(&trigger)))
}

/// Delete a trigger with its firings; messages it sent stay.
#[utoipa::path(
    delete,
    path = "/v1/triggers/{id}",
    tag = "automation",
    params(("id" = Uuid, Path, description = "The trigger id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = path_id(&id, no_trigger)?;
    if !state
        .engine
        .store
        .delete_trigger(caller.scope(), id)
        .await?
    {
        return Err(no_trigger());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// One firing of a trigger.
#[derive(Debug, Serialize, ToSchema)]
pub struct FiringView {
    pub id: Uuid,
    pub trigger_id: Uuid,
    /// The contact's id for contact events, the idempotency key for named events.
    pub key: String,
    pub contact_id: Option<Uuid>,
    pub phone: Option<String>,
    /// `sent`, `enrolled`, `already_enrolled`, or why nothing was sent (`opted_out`,
    /// `no_consent`, `missing_variables`, `insufficient_credits`, …).
    pub outcome: String,
    pub message_id: Option<Uuid>,
    pub enrollment_id: Option<Uuid>,
    pub created_at: Timestamp,
}

fn firing_view(f: Firing) -> FiringView {
    FiringView {
        id: f.id,
        trigger_id: f.trigger_id,
        key: f.key,
        contact_id: f.contact_id,
        phone: f.phone,
        outcome: f.outcome,
        message_id: f.message_id,
        enrollment_id: f.enrollment_id,
        created_at: f.created_at,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FiringPage {
    pub data: Vec<FiringView>,
    pub next_cursor: Option<String>,
}

/// List a trigger's firings, newest first.
#[utoipa::path(
    get,
    path = "/v1/triggers/{id}/firings",
    tag = "automation",
    params(("id" = Uuid, Path, description = "The trigger id"), ListQuery),
    responses(
        (status = 200, body = FiringPage),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_firings(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<FiringPage>, Problem> {
    let trigger = read_trigger(&state, &caller, &id).await?;
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    let page = state
        .engine
        .store
        .list_firings(caller.org.id, trigger.id, after, limit)
        .await?;
    Ok(Json(FiringPage {
        data: page.items.into_iter().map(firing_view).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}

/// What a posted event did.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub name: String,
    /// The idempotency key the event fired with (generated when none was sent).
    pub key: String,
    /// Each trigger it set off.
    pub firings: Vec<EventFiring>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventFiring {
    #[serde(flatten)]
    pub firing: FiringView,
    /// It fired before with this key; nothing was sent again.
    pub replayed: bool,
}

/// Post a named event for a contact (`contact_id`) or a number (`phone`): every active trigger
/// listening for `name` fires, sending its template with `data` as variables (or enrolling the
/// contact in its drip). With an `Idempotency-Key`, each trigger fires once for that key,
/// however often the event is posted.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "automation",
    request_body(content = Object, description = "`name`, `contact_id` or `phone`, and `data`"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Each trigger fires once per key, for good.")),
    responses(
        (status = 202, description = "Accepted: what each trigger did", body = EventView),
        (status = 400, description = "Malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn post_event(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<EventView>), Problem> {
    let event: EventRequest = parse_json(body).map_err(|e| invalid(vec![e]))?;
    let name = event.name.clone();
    let outcome = triggers::record_event(&state.engine, &caller.org, caller.scope(), event, key)
        .await?
        .map_err(invalid)?;
    let firings = outcome
        .firings
        .into_iter()
        .map(|(firing, replayed)| EventFiring {
            firing: firing_view(firing),
            replayed,
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(EventView {
            name,
            key: outcome.key,
            firings,
        }),
    ))
}
