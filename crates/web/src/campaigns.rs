//! Campaigns, `/v1/campaigns`: create and edit them, move them through their lifecycle, estimate
//! them, read their runs, recipients and analytics, and follow a running campaign live as
//! Server-Sent Events. What a campaign may say, running it and counting it are the engine's
//! ([`herald_engine::campaigns`]).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use herald_engine::campaigns::report::{self, Analytics, Bucket, Estimate};
use herald_engine::campaigns::{self as engine_campaigns, Action, CampaignSpec, Refused};
use herald_store::{Book, Campaign, CampaignRun, RunBooks, RunRecipient};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
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
        .routes(routes!(create_campaign, list_campaigns))
        .routes(routes!(get_campaign, update_campaign, delete_campaign))
        .routes(routes!(schedule_campaign))
        .routes(routes!(start_campaign))
        .routes(routes!(pause_campaign))
        .routes(routes!(resume_campaign))
        .routes(routes!(cancel_campaign))
        .routes(routes!(estimate_unsaved))
        .routes(routes!(estimate_campaign))
        .routes(routes!(campaign_analytics))
        .routes(routes!(campaign_events))
        .routes(routes!(list_runs))
        .routes(routes!(list_recipients))
}

/// How far a run has come.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub id: Uuid,
    /// `snapshot` (writing its audience), `send`, `done` or `canceled`.
    pub phase: String,
    /// The occurrence it is for.
    pub occurrence: Timestamp,
    #[schema(value_type = Object)]
    pub books: RunBooks,
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// The variant an A/B test chose for the rest of the audience, once chosen.
    pub ab_winner: Option<AbWinnerView>,
}

/// An A/B test's choice.
#[derive(Debug, Serialize, ToSchema)]
pub struct AbWinnerView {
    /// Its name, and its index among the campaign's variants.
    pub name: Option<String>,
    pub variant: u16,
    pub decided_at: Timestamp,
}

/// A campaign: what it says, where it stands, and its current run's books.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    pub id: Uuid,
    /// `draft`, `scheduled`, `running`, `paused`, `completed` or `cancelled`.
    pub status: String,
    /// Why it paused or stopped by itself (`insufficient_credits`, …).
    pub error: Option<String>,
    /// Everything the campaign says, as it was given.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub spec: Value,
    /// When its next run starts, while scheduled.
    pub next_run_at: Option<Timestamp>,
    /// The next occurrences of its schedule (up to 5).
    pub next_occurrences: Vec<Timestamp>,
    /// Runs started so far.
    pub runs: u32,
    pub current_run: Option<RunView>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignPage {
    pub data: Vec<CampaignView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    pub data: Vec<RunView>,
    pub next_cursor: Option<String>,
}

/// One recipient of a run and what became of its message.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientView {
    pub seq: u64,
    pub phone: String,
    pub contact_id: Option<Uuid>,
    pub variant: u16,
    pub body: Option<String>,
    pub due_at: Timestamp,
    /// `pending`, `sent`, `delivered`, `failed`, `suppressed` or `canceled`, as in the books.
    pub status: String,
    /// Why it was suppressed (`opted_out`, `no_consent`, …) or the message's error code.
    pub reason: Option<String>,
    pub message_id: Option<Uuid>,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub estimated_cost: Option<String>,
    pub actual_cost: Option<String>,
    pub retries: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientPage {
    pub data: Vec<RecipientView>,
    pub next_cursor: Option<String>,
}

fn not_found() -> Problem {
    Problem::new(&problem::NOT_FOUND, "no such campaign")
}

/// Path ids that are not UUIDs cannot name a campaign: that is a 404, not a 400.
fn campaign_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| not_found())
}

fn run_view(campaign: &Campaign, run: &CampaignRun, books: RunBooks) -> RunView {
    let ab_winner = run.ab_winner.map(|(variant, decided_at)| AbWinnerView {
        name: CampaignSpec::from_campaign(campaign).ok().and_then(|spec| {
            spec.variants
                .get(usize::from(variant))
                .map(|v| v.name.clone())
        }),
        variant,
        decided_at,
    });
    RunView {
        id: run.id,
        phase: run.phase.as_str().to_owned(),
        occurrence: run.occurrence,
        books,
        error: run.error.clone(),
        created_at: run.created_at,
        finished_at: run.finished_at,
        ab_winner,
    }
}

async fn view(state: &AppState, campaign: &Campaign) -> Result<CampaignView, Problem> {
    let store = &state.engine.store;
    let current_run = match campaign.current_run {
        Some(id) => match store.get_run(campaign.scope(), id).await? {
            Some(run) => Some(run_view(campaign, &run, store.run_books(run.id).await?)),
            None => None,
        },
        None => None,
    };
    let next_occurrences = match CampaignSpec::from_campaign(campaign) {
        Ok(spec) if !campaign.status.is_final() => {
            let from = state.engine.clock.now();
            engine_campaigns::occurrences_after(&spec, from, 5)
                .into_iter()
                .map(|o| o.at)
                .collect()
        }
        _ => Vec::new(),
    };
    Ok(CampaignView {
        id: campaign.id,
        status: campaign.status.as_str().to_owned(),
        error: campaign.error.clone(),
        spec: campaign.spec.clone(),
        next_run_at: campaign.next_run_at,
        next_occurrences,
        runs: campaign.runs,
        current_run,
        created_at: campaign.created_at,
        updated_at: campaign.updated_at,
    })
}

fn invalid(errors: Vec<herald_engine::accounts::FieldError>) -> Problem {
    Problem::invalid_fields(errors.into_iter().map(FieldProblem::from).collect())
}

fn refused(refusal: Refused) -> Problem {
    match refusal {
        Refused::NotFound => not_found(),
        Refused::State(status) => Problem::new(
            &problem::CAMPAIGN_STATE,
            format!("the campaign is {status}; that is not allowed now"),
        )
        .with_current_status(status.as_str()),
        Refused::Invalid(errors) => invalid(errors),
    }
}

/// Create a campaign, as a `draft`.
///
/// Give `name`; the content as one `body` or `template_id` (with fixed `variables`), or as A/B
/// `variants` (each a `name`, a `body` or `template_id`, and a `weight`); the `audience`
/// (`lists`, `segments`, `contacts`, `lead_statuses`, `phones`, less `exclude_lists` and
/// `exclude_segments`); and optionally `kind` (`blast`, `drip`, `reminder`, `promotional`),
/// `priority` (`low`, `normal`, `high`), `message_type`, `schedule` (`at`, a wall-clock time,
/// in `timezone`, or with `recipient_time_zone` at that time in each recipient's own zone),
/// `recurrence` (`rrule`, an RFC 5545 RRULE repeating the schedule), `throttle`
/// (`send_rate_per_minute`, `batch_size`), `max_retries` and `from`. A draft may leave the
/// audience empty; scheduling or starting it may not.
#[utoipa::path(
    post,
    path = "/v1/campaigns",
    tag = "campaigns",
    request_body(content = Object, description = "The campaign"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours answer the same campaign.")),
    responses(
        (status = 201, description = "Created", body = CampaignView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_campaign(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    let engine = &state.engine;
    let spec = engine_campaigns::parse_spec(body.clone()).map_err(|e| invalid(vec![e]))?;
    let idempotency =
        crate::lists::replay_key(&state, idempotency_key, "POST /v1/campaigns", &body);
    let created = engine_campaigns::create(
        engine,
        &caller.org,
        caller.scope(),
        Some(caller.key.id),
        spec,
        idempotency,
    )
    .await?
    .map_err(invalid)?;
    let (campaign, replayed) = crate::lists::made(
        created,
        |id| engine.store.get_campaign(caller.scope(), id),
        not_found,
    )
    .await?;
    tracing::info!(campaign_id = %campaign.id, "campaign created");
    let view = view(&state, &campaign).await?;
    crate::lists::created(&view, &format!("/v1/campaigns/{}", campaign.id), replayed)
}

/// List campaigns, newest first.
#[utoipa::path(
    get,
    path = "/v1/campaigns",
    tag = "campaigns",
    params(ListQuery),
    responses(
        (status = 200, body = CampaignPage),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_campaigns(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<CampaignPage>, Problem> {
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    let page = state
        .engine
        .store
        .list_campaigns(caller.scope(), after, limit)
        .await?;
    let mut data = Vec::with_capacity(page.items.len());
    for campaign in &page.items {
        data.push(view(&state, campaign).await?);
    }
    Ok(Json(CampaignPage {
        data,
        next_cursor: page.next.map(paging::encode),
    }))
}

/// Read a campaign with its current run's books.
#[utoipa::path(
    get,
    path = "/v1/campaigns/{id}",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, body = CampaignView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    let id = campaign_id(&id)?;
    let campaign = state
        .engine
        .store
        .get_campaign(caller.scope(), id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(view(&state, &campaign).await?))
}

/// Change a campaign while it is `draft` or `scheduled`: the fields given replace the
/// campaign's own. A scheduled campaign's next run follows its new schedule.
#[utoipa::path(
    patch,
    path = "/v1/campaigns/{id}",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    request_body(content = Object, description = "The fields to replace"),
    responses(
        (status = 200, body = CampaignView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not editable in its status (`current_status` says which)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn update_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<Map<String, Value>>,
) -> Result<Json<CampaignView>, Problem> {
    let id = campaign_id(&id)?;
    let campaign = engine_campaigns::update(&state.engine, &caller.org, caller.scope(), id, patch)
        .await?
        .map_err(refused)?;
    Ok(Json(view(&state, &campaign).await?))
}

/// Delete a campaign that is not running or paused (cancel it first). Its runs and their
/// recipients go with it; its messages stay.
#[utoipa::path(
    delete,
    path = "/v1/campaigns/{id}",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Running or paused", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = campaign_id(&id)?;
    state
        .engine
        .store
        .delete_campaign(caller.scope(), id)
        .await?
        .map_err(|r| refused(r.into()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn act(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: Action,
) -> Result<Json<CampaignView>, Problem> {
    let id = campaign_id(id)?;
    let campaign = engine_campaigns::act(&state.engine, &caller.org, caller.scope(), id, action)
        .await?
        .map_err(refused)?;
    tracing::info!(campaign_id = %id, status = %campaign.status, ?action, "campaign changed");
    Ok(Json(view(state, &campaign).await?))
}

/// Schedule a draft campaign for its `schedule` (and `recurrence`).
#[utoipa::path(
    post,
    path = "/v1/campaigns/{id}/schedule",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not a draft (`current_status` says what it is)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "No schedule, a schedule in the past, or no audience", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn schedule_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    act(&state, &caller, &id, Action::Schedule).await
}

/// Start a draft or scheduled campaign now: its audience is snapshotted and sending begins.
#[utoipa::path(
    post,
    path = "/v1/campaigns/{id}/start",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn start_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    act(&state, &caller, &id, Action::Start).await
}

/// Pause a running campaign. When this answers, no further message of the campaign will be
/// handed to a provider until it is resumed; queued ones are held.
#[utoipa::path(
    post,
    path = "/v1/campaigns/{id}/pause",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn pause_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    act(&state, &caller, &id, Action::Pause).await
}

/// Resume a paused campaign where it stopped: nothing is sent twice, nothing is skipped.
#[utoipa::path(
    post,
    path = "/v1/campaigns/{id}/resume",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn resume_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    act(&state, &caller, &id, Action::Resume).await
}

/// Cancel a campaign: recipients not yet sent to are `canceled` and their messages' reserved
/// credits released. Final.
#[utoipa::path(
    post,
    path = "/v1/campaigns/{id}/cancel",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, body = CampaignView),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn cancel_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, Problem> {
    act(&state, &caller, &id, Action::Cancel).await
}

/// Estimate a campaign that is not saved: the same body as creating one.
#[utoipa::path(
    post,
    path = "/v1/campaigns/estimate",
    tag = "campaigns",
    request_body(content = Object, description = "The campaign"),
    responses(
        (status = 200, body = Object, description = "Recipients, segments per variant, cost by country, credits needed and whether the balance and spend limit allow it"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn estimate_unsaved(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Estimate>, Problem> {
    let spec = engine_campaigns::parse_spec(body).map_err(|e| invalid(vec![e]))?;
    let estimate = report::estimate(
        &state.engine,
        &caller.org,
        caller.scope(),
        Some(caller.key.id),
        Uuid::now_v7(),
        spec,
    )
    .await?
    .map_err(invalid)?;
    Ok(Json(estimate))
}

/// Estimate a saved campaign as if it ran now.
#[utoipa::path(
    post,
    path = "/v1/campaigns/{id}/estimate",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, body = Object),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn estimate_campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Estimate>, Problem> {
    let id = campaign_id(&id)?;
    let campaign = state
        .engine
        .store
        .get_campaign(caller.scope(), id)
        .await?
        .ok_or_else(not_found)?;
    let spec = CampaignSpec::from_campaign(&campaign)?;
    let estimate = report::estimate(
        &state.engine,
        &caller.org,
        caller.scope(),
        campaign.api_key_id,
        campaign.id,
        spec,
    )
    .await?
    .map_err(invalid)?;
    Ok(Json(estimate))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    /// Timeline bucket: `minute` (default) or `hour`.
    pub bucket: Option<String>,
}

/// A campaign's analytics over all its runs.
#[utoipa::path(
    get,
    path = "/v1/campaigns/{id}/analytics",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id"), AnalyticsQuery),
    responses(
        (status = 200, body = Object, description = "Books, sent, delivered, failed, suppressed, delivery rate, costs, replies, opt-outs, timeline, providers and variants"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn campaign_analytics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<AnalyticsQuery>,
) -> Result<Json<Analytics>, Problem> {
    let id = campaign_id(&id)?;
    let bucket = match query.bucket.as_deref() {
        None | Some("minute") => Bucket::Minute,
        Some("hour") => Bucket::Hour,
        Some(_) => {
            return Err(Problem::invalid_fields(vec![FieldProblem::new(
                "bucket",
                "invalid_bucket",
                "`bucket` is `minute` or `hour`",
            )]));
        }
    };
    let campaign = state
        .engine
        .store
        .get_campaign(caller.scope(), id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(
        report::analytics(&state.engine, &campaign, bucket).await?,
    ))
}

/// How often the live stream looks at the campaign.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// How often it sends progress while the campaign runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Progress of a campaign, as sent on its live stream.
#[derive(Debug, Serialize)]
struct Progress {
    status: String,
    run_id: Option<Uuid>,
    books: RunBooks,
    /// Recipients settled per second since the last progress event.
    rate_per_second: f64,
    /// Seconds until everything pending is settled at that rate.
    eta_seconds: Option<u64>,
    at: Timestamp,
}

struct Follow {
    state: AppState,
    caller: Caller,
    id: Uuid,
    last_status: Option<String>,
    last_progress: Option<(tokio::time::Instant, u64)>,
    done: bool,
}

impl Follow {
    /// The next events to send, waiting as long as there is nothing to say.
    async fn next(&mut self) -> Option<Vec<Event>> {
        if self.done {
            return None;
        }
        let first = self.last_status.is_none();
        if !first {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        let store = &self.state.engine.store;
        let campaign = match store.get_campaign(self.caller.scope(), self.id).await {
            Ok(Some(campaign)) => campaign,
            // Deleted, or the database is away: end the stream (the client reconnects).
            _ => {
                self.done = true;
                return Some(Vec::new());
            }
        };
        let mut events = Vec::new();
        let status = campaign.status.as_str().to_owned();
        let changed = self.last_status.as_deref() != Some(status.as_str());
        let now = tokio::time::Instant::now();
        let due = self
            .last_progress
            .is_none_or(|(at, _)| now.duration_since(at) >= PROGRESS_EVERY);
        let running = campaign.status == herald_store::CampaignStatus::Running;
        if changed || (running && due) {
            let books = match campaign.current_run {
                Some(run) => store.run_books(run).await.unwrap_or_default(),
                None => RunBooks::default(),
            };
            let settled = books.audience - books.pending.min(books.audience);
            let rate = match self.last_progress {
                Some((at, before)) => {
                    let seconds = now.duration_since(at).as_secs_f64().max(0.001);
                    settled.saturating_sub(before) as f64 / seconds
                }
                None => 0.0,
            };
            let progress = Progress {
                status: status.clone(),
                run_id: campaign.current_run,
                books,
                rate_per_second: rate,
                eta_seconds: (rate > 0.0).then(|| (books.pending as f64 / rate).ceil() as u64),
                at: Timestamp::now(),
            };
            if changed && let Ok(event) = Event::default().event("status").json_data(&progress) {
                events.push(event);
            }
            if let Ok(event) = Event::default().event("progress").json_data(&progress) {
                events.push(event);
            }
            self.last_progress = Some((now, settled));
        }
        self.last_status = Some(status);
        if campaign.status.is_final() {
            self.done = true;
        }
        Some(events)
    }
}

/// Follow a campaign live, as Server-Sent Events: a `status` event on every change of status
/// and a `progress` event (its current run's books, the rate and the time left) at least every
/// second while it runs. The stream ends once the campaign is completed or cancelled.
#[utoipa::path(
    get,
    path = "/v1/campaigns/{id}/events",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn campaign_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = campaign_id(&id)?;
    state
        .engine
        .store
        .get_campaign(caller.scope(), id)
        .await?
        .ok_or_else(not_found)?;
    let follow = Follow {
        state,
        caller,
        id,
        last_status: None,
        last_progress: None,
        done: false,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let events = follow.next().await?;
        Some((futures::stream::iter(events.into_iter().map(Ok)), follow))
    });
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(futures::StreamExt::flatten(stream));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A campaign's runs, newest first.
#[utoipa::path(
    get,
    path = "/v1/campaigns/{id}/runs",
    tag = "campaigns",
    params(("id" = Uuid, Path, description = "The campaign id"), ListQuery),
    responses(
        (status = 200, body = RunPage),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<RunPage>, Problem> {
    let id = campaign_id(&id)?;
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    let store = &state.engine.store;
    let campaign = store
        .get_campaign(caller.scope(), id)
        .await?
        .ok_or_else(not_found)?;
    let page = store.list_runs(caller.scope(), id, after, limit).await?;
    let mut data = Vec::with_capacity(page.items.len());
    for run in &page.items {
        data.push(run_view(&campaign, run, store.run_books(run.id).await?));
    }
    Ok(Json(RunPage {
        data,
        next_cursor: page.next.map(paging::encode),
    }))
}

fn recipient_view(r: RunRecipient) -> RecipientView {
    let book = match (Book::of_recipient(r.state), r.status) {
        (Some(book), _) => book,
        (None, Some(status)) => Book::of_message(status),
        // Released, its message not read back.
        (None, None) => Book::Pending,
    };
    RecipientView {
        seq: r.seq,
        phone: r.phone,
        contact_id: r.contact_id,
        variant: r.variant,
        body: r.body,
        due_at: r.due_at,
        status: book.as_str().to_owned(),
        reason: r.reason.or(r.error_code),
        message_id: r.message_id,
        provider: r.provider,
        provider_message_id: r.provider_message_id,
        estimated_cost: r
            .estimated_cost
            .map(|c| herald_domain::money::Amount::from_micros(c).to_string()),
        actual_cost: r
            .actual_cost
            .map(|c| herald_domain::money::Amount::from_micros(c).to_string()),
        retries: r.attempts.saturating_sub(1),
    }
}

/// The recipients of one run of a campaign, in snapshot order, each with what became of it.
#[utoipa::path(
    get,
    path = "/v1/campaigns/{id}/runs/{run_id}/recipients",
    tag = "campaigns",
    params(
        ("id" = Uuid, Path, description = "The campaign id"),
        ("run_id" = Uuid, Path, description = "The run id"),
        ListQuery,
    ),
    responses(
        (status = 200, body = RecipientPage),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_recipients(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, run_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<RecipientPage>, Problem> {
    let id = campaign_id(&id)?;
    let run_id = campaign_id(&run_id)?;
    let (limit, after) = paging::params(&query, |raw| {
        paging::text_cursor(raw).and_then(|text| {
            text.map(|t| {
                t.parse::<u64>()
                    .map_err(|_| FieldProblem::new("cursor", "invalid_cursor", "not a cursor"))
            })
            .transpose()
        })
    })?;
    let store = &state.engine.store;
    let run = store
        .get_run(caller.scope(), run_id)
        .await?
        .filter(|run| run.campaign_id == id)
        .ok_or_else(not_found)?;
    let rows = store
        .list_recipients(caller.scope(), run.id, after, limit + 1)
        .await?;
    let more = rows.len() > limit as usize;
    let data: Vec<RecipientView> = rows
        .into_iter()
        .take(limit as usize)
        .map(recipient_view)
        .collect();
    let next_cursor = if more {
        data.last().map(|r| paging::encode(r.seq.to_string()))
    } else {
        None
    };
    Ok(Json(RecipientPage { data, next_cursor }))
}
