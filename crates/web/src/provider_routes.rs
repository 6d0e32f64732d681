//! `/v1/routes`: which provider accounts an organization's live messages go through, by
//! destination country and number prefix, with a default route for everything else.
//!
//! A route is addressed by its path: `/v1/routes/default`, `/v1/routes/US` or
//! `/v1/routes/US/1415` (E.164 digits, starting with the country's calling code). Like provider
//! accounts, routes may be read with a test key but changed only with a live key.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_engine::accounts;
use herald_store::{Route, RouteKey};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::ApiJson;
use crate::problem::{self, Problem, ProblemBody};
use crate::providers::{account_problem, field_problems, require_live};

/// The provider accounts of a route, in the order they are tried.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    /// 1 to 10 provider account ids of this organization.
    #[schema(value_type = Vec<String>)]
    pub providers: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RouteView {
    /// ISO 3166-1 alpha-2; `null` for the default route.
    #[schema(value_type = Option<String>, example = "US")]
    pub country: Option<String>,
    /// E.164 digits the recipient's number starts with; `null` for the whole country.
    #[schema(example = "1415")]
    pub prefix: Option<String>,
    /// Provider account ids, tried in this order.
    pub providers: Vec<Uuid>,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<&Route> for RouteView {
    fn from(route: &Route) -> Self {
        RouteView {
            country: route.key.country.map(|c| c.as_str().to_owned()),
            prefix: route.key.prefix.clone(),
            providers: route.accounts.clone(),
            updated_at: route.updated_at,
        }
    }
}

/// Every route of the organization. An organization has few routes, so they come in one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoutePage {
    /// The default route first, then by country and prefix.
    pub data: Vec<RouteView>,
    /// Always `null`: there is never a second page.
    pub next_cursor: Option<String>,
}

/// List routes.
#[utoipa::path(
    get,
    path = "/v1/routes",
    tag = "providers",
    responses(
        (status = 200, body = RoutePage),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_routes(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RoutePage>, Problem> {
    let routes = state.engine.store.list_routes(caller.org.id).await?;
    Ok(Json(RoutePage {
        data: routes.iter().map(RouteView::from).collect(),
        next_cursor: None,
    }))
}

fn key(country: &str, prefix: Option<&str>) -> Result<RouteKey, Problem> {
    accounts::route_key(country, prefix).map_err(field_problems)
}

async fn put(
    state: AppState,
    caller: Caller,
    key: RouteKey,
    body: RouteBody,
) -> Result<Json<RouteView>, Problem> {
    require_live(&caller)?;
    let Some(providers) = body.providers else {
        return Err(Problem::field(
            &problem::VALIDATION_FAILED,
            "providers",
            "required",
            "`providers` is required: the account ids to route through, in order",
        ));
    };
    let engine = &state.engine;
    let route = accounts::set_route(
        engine.store.as_ref(),
        caller.org.id,
        key,
        &providers,
        engine.clock.now(),
    )
    .await
    .map_err(account_problem)?;
    tracing::info!(org_id = %caller.org.id, route = %route.key, "route set");
    Ok(Json(RouteView::from(&route)))
}

async fn delete(state: AppState, caller: Caller, key: RouteKey) -> Result<StatusCode, Problem> {
    require_live(&caller)?;
    if state.engine.store.delete_route(caller.org.id, &key).await? {
        tracing::info!(org_id = %caller.org.id, route = %key, "route deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::new(&problem::NOT_FOUND, "no such route"))
    }
}

/// Set the route for a country, or the default route (`default`).
#[utoipa::path(
    put,
    path = "/v1/routes/{country}",
    tag = "providers",
    params(("country" = String, Path, description = "ISO 3166-1 alpha-2 code, or `default`")),
    request_body = RouteBody,
    responses(
        (status = 200, body = RouteView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad country or unknown provider account", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn put_country_route(
    State(state): State<AppState>,
    caller: Caller,
    Path(country): Path<String>,
    ApiJson(body): ApiJson<RouteBody>,
) -> Result<Json<RouteView>, Problem> {
    let key = key(&country, None)?;
    put(state, caller, key, body).await
}

/// Delete the route for a country, or the default route (`default`).
#[utoipa::path(
    delete,
    path = "/v1/routes/{country}",
    tag = "providers",
    params(("country" = String, Path, description = "ISO 3166-1 alpha-2 code, or `default`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad country", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_country_route(
    State(state): State<AppState>,
    caller: Caller,
    Path(country): Path<String>,
) -> Result<StatusCode, Problem> {
    let key = key(&country, None)?;
    delete(state, caller, key).await
}

/// Set the route for numbers of a country starting with a prefix.
#[utoipa::path(
    put,
    path = "/v1/routes/{country}/{prefix}",
    tag = "providers",
    params(
        ("country" = String, Path, description = "ISO 3166-1 alpha-2 code"),
        ("prefix" = String, Path, description = "E.164 digits starting with the country's calling code, e.g. 1415"),
    ),
    request_body = RouteBody,
    responses(
        (status = 200, body = RouteView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad country or prefix, or unknown provider account", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn put_prefix_route(
    State(state): State<AppState>,
    caller: Caller,
    Path((country, prefix)): Path<(String, String)>,
    ApiJson(body): ApiJson<RouteBody>,
) -> Result<Json<RouteView>, Problem> {
    let key = key(&country, Some(&prefix))?;
    put(state, caller, key, body).await
}

/// Delete the route for numbers of a country starting with a prefix.
#[utoipa::path(
    delete,
    path = "/v1/routes/{country}/{prefix}",
    tag = "providers",
    params(
        ("country" = String, Path, description = "ISO 3166-1 alpha-2 code"),
        ("prefix" = String, Path, description = "E.164 digits, e.g. 1415"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad country or prefix", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_prefix_route(
    State(state): State<AppState>,
    caller: Caller,
    Path((country, prefix)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let key = key(&country, Some(&prefix))?;
    delete(state, caller, key).await
}
