//! The suppression list, `/v1/opt-outs`: numbers that receive nothing more from the
//! organization. Herald adds to it when a provider says a recipient opted out (Twilio 21610,
//! SNS's list); the organization reads it, adds numbers and takes them off.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_domain::message::Mode;
use herald_domain::phone::PhoneNumber;
use herald_store::OptOut;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery};
use crate::paging::{self, ListQuery};
use crate::problem::{self, Problem, ProblemBody};

/// A number on the suppression list.
#[derive(Debug, Serialize, ToSchema)]
pub struct OptOutView {
    /// E.164.
    pub phone: String,
    /// What put it there: `api`, or the provider that reported it (`twilio:21610`).
    pub source: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl From<OptOut> for OptOutView {
    fn from(o: OptOut) -> OptOutView {
        OptOutView {
            phone: o.phone,
            source: o.source,
            created_at: o.created_at,
        }
    }
}

/// A page of the suppression list, by number.
#[derive(Debug, Serialize, ToSchema)]
pub struct OptOutPage {
    pub data: Vec<OptOutView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A number to put on the suppression list.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddOptOut {
    /// E.164, or national in the organization's region.
    pub phone: Option<String>,
}

fn live_only(caller: &Caller) -> Result<(), Problem> {
    match caller.key.mode {
        Mode::Live => Ok(()),
        Mode::Test => Err(Problem::new(
            &problem::LIVE_KEY_REQUIRED,
            "the suppression list can only be changed with a live key",
        )),
    }
}

fn phone(caller: &Caller, input: Option<&str>) -> Result<String, Problem> {
    let Some(input) = input.map(str::trim).filter(|s| !s.is_empty()) else {
        return Err(Problem::field(
            &problem::VALIDATION_FAILED,
            "phone",
            "required",
            "`phone` is required",
        ));
    };
    PhoneNumber::parse(input, Some(caller.org.default_region))
        .map(|number| number.e164().to_owned())
        .map_err(|error| {
            Problem::field(
                &problem::VALIDATION_FAILED,
                "phone",
                error.code(),
                format!("`phone` is not a valid phone number: {error}"),
            )
        })
}

/// List the suppression list, by number.
#[utoipa::path(
    get,
    path = "/v1/opt-outs",
    tag = "messages",
    params(ListQuery),
    responses(
        (status = 200, body = OptOutPage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_opt_outs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<OptOutPage>, Problem> {
    let (limit, after) = paging::params(&query, paging::text_cursor)?;
    let (items, next) = state
        .engine
        .store
        .list_opt_outs(caller.org.id, after.as_deref(), limit)
        .await?;
    Ok(Json(OptOutPage {
        data: items.into_iter().map(OptOutView::from).collect(),
        next_cursor: next.map(paging::encode),
    }))
}

/// Put a number on the suppression list: nothing more is sent to it, including messages
/// already queued. `201` when added, `200` when it was already there.
#[utoipa::path(
    post,
    path = "/v1/opt-outs",
    tag = "messages",
    request_body = AddOptOut,
    responses(
        (status = 201, body = OptOutView),
        (status = 200, description = "Already on the list", body = OptOutView),
        (status = 400, body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn add_opt_out(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<AddOptOut>,
) -> Result<Response, Problem> {
    let phone = phone(&caller, request.phone.as_deref())?;
    live_only(&caller)?;
    let store = &state.engine.store;
    let now = state.engine.clock.now();
    if store.opt_out(caller.org.id, &phone, "api", now).await? {
        let entry = OptOut {
            phone,
            source: "api".into(),
            created_at: now,
        };
        return Ok((StatusCode::CREATED, Json(OptOutView::from(entry))).into_response());
    }
    // Already listed: answer with what put it there first.
    let entry = store
        .opted_out_among(caller.org.id, std::slice::from_ref(&phone))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Problem::new(&problem::UNAVAILABLE, "the number was removed meanwhile"))?;
    Ok((StatusCode::OK, Json(OptOutView::from(entry))).into_response())
}

/// Take a number off the suppression list (it opted back in); the organization's SNS accounts
/// are told too (`OptInPhoneNumber`).
#[utoipa::path(
    delete,
    path = "/v1/opt-outs/{phone}",
    tag = "messages",
    params(("phone" = String, Path, description = "The number, E.164 (`%2B14155550100`)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Not on the list", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn remove_opt_out(
    State(state): State<AppState>,
    caller: Caller,
    Path(input): Path<String>,
) -> Result<Response, Problem> {
    let phone = phone(&caller, Some(&input))?;
    live_only(&caller)?;
    if state.engine.store.opt_in(caller.org.id, &phone).await? {
        state.engine.sns_opt_in(caller.org.id, &phone).await;
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::new(
            &problem::NOT_FOUND,
            "this number is not on the suppression list",
        ))
    }
}

/// How many numbers an import added.
#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    pub imported: usize,
}

/// Import the numbers an SNS account lists as opted out (`ListPhoneNumbersOptedOut`) into the
/// suppression list: SNS drops messages to them silently, so Herald should not send them.
#[utoipa::path(
    post,
    path = "/v1/providers/{id}/opt-outs/sync",
    tag = "providers",
    params(("id" = String, Path, description = "An SNS provider account")),
    responses(
        (status = 200, body = Imported),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such SNS account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "SNS could not be asked", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn sync_sns_opt_outs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Imported>, Problem> {
    live_only(&caller)?;
    let not_found = || Problem::new(&problem::NOT_FOUND, "no such SNS account");
    let id = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    match state.engine.sync_sns_opt_outs(caller.org.id, id).await {
        Ok(Some(imported)) => Ok(Json(Imported { imported })),
        Ok(None) => Err(not_found()),
        Err(error) => {
            tracing::warn!(%error, account_id = %id, "opt-out import failed");
            Err(Problem::new(&problem::UNAVAILABLE, error))
        }
    }
}
