//! Credits, spend limits, usage and geo permissions: `/v1/credits`, `/v1/usage` and
//! `/v1/settings/geo`.
//!
//! An organization reads its own account and usage with its API key and chooses the countries
//! it sends to. Adding credits, setting the spend limit and switching metering are the
//! operator's: they take the server's operator token instead of an API key, and name the
//! organization in the body.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::Response;
use herald_domain::message::{MessageType, Mode};
use herald_domain::money::Amount;
use herald_domain::phone::Region;
use herald_engine::keys;
use herald_store::{
    CreditAccount, CreditGrant, GrantOutcome, GrantRefusal, IdempotencyRecord, UsageRow, month_of,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::problem::{self, FieldProblem, Problem, ProblemBody};

/// This module's routes, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_credits, grant_credits))
        .routes(routes!(set_spend_limit))
        .routes(routes!(set_metering))
        .routes(routes!(get_usage))
        .routes(routes!(get_geo, put_geo))
}

/// Most credits one grant may add or take back: a typo, not a purchase, beyond this.
const MAX_GRANT: i64 = 1_000_000_000;

/// The caller holds the server's operator token.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(Problem::new(
                &problem::UNAUTHORIZED,
                "missing operator token: send `Authorization: Bearer <operator token>`",
            )
            .with_header(header::WWW_AUTHENTICATE, "Bearer"));
        };
        let Some(expected) = state.engine.config.operator_token else {
            return Err(Problem::new(
                &problem::OPERATOR_REQUIRED,
                "this server has no operator token configured; use `herald credits` instead",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        // Digests are compared, so the time taken says nothing about the token.
        if keys::hash(given) == expected {
            Ok(Operator)
        } else {
            Err(Problem::new(
                &problem::OPERATOR_REQUIRED,
                "this needs the operator token; an organization's API key cannot do it",
            ))
        }
    }
}

/// An organization's credits.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsView {
    pub organization_id: Uuid,
    /// Whether sends use credits: off until credits are first granted.
    pub metered: bool,
    /// Credits owned (1 credit = 1 segment), including those reserved.
    pub balance: i64,
    /// Held by messages queued but not yet handed to a provider.
    pub reserved: i64,
    /// What new messages may still use: `balance - reserved`.
    pub available: i64,
    /// Most the organization may spend per calendar month (UTC), in its price currency;
    /// `null` for no limit.
    #[schema(value_type = Option<String>, example = "250.00")]
    pub monthly_spend_limit: Option<Amount>,
    /// `YYYY-MM`, UTC.
    pub month: String,
    /// Estimated cost of the metered messages accepted this month (released ones excluded).
    #[schema(value_type = String, example = "12.50")]
    pub month_spend: Amount,
    #[schema(example = "USD")]
    pub currency: String,
}

fn credits_view(state: &AppState, account: CreditAccount, month: String) -> CreditsView {
    CreditsView {
        organization_id: account.org_id,
        metered: account.metered,
        available: account.available(),
        balance: account.balance,
        reserved: account.reserved,
        monthly_spend_limit: account.spend_limit,
        month,
        month_spend: account.month_spend,
        currency: state
            .engine
            .config
            .intake
            .prices
            .currency()
            .as_str()
            .to_owned(),
    }
}

async fn account_of(state: &AppState, org_id: Uuid) -> Result<CreditsView, Problem> {
    let month = month_of(state.engine.clock.now());
    let account = state
        .engine
        .store
        .credit_account(org_id, &month)
        .await?
        .ok_or_else(|| Problem::new(&problem::NOT_FOUND, "no such organization"))?;
    Ok(credits_view(state, account, month))
}

/// The organization's credits: balance, reserved, available, spend limit and this month's
/// spend.
#[utoipa::path(
    get,
    path = "/v1/credits",
    tag = "billing",
    responses(
        (status = 200, body = CreditsView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_credits(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<CreditsView>, Problem> {
    account_of(&state, caller.org.id).await.map(Json)
}

/// Credits to add to an organization (operator only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantCredits {
    pub organization_id: Option<String>,
    /// Whole credits to add; negative takes back credits not reserved.
    #[schema(value_type = i64, example = 1000)]
    pub credits: Option<serde_json::Value>,
    /// Why, for the ledger (at most 200 characters).
    pub reason: Option<String>,
}

/// A grant as recorded in the ledger. The account it changed is at `GET /v1/credits`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantView {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub credits: i64,
    pub reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// The same grant request, however its JSON was spelled, hashes the same; the route is part of
/// it, so a key never replays something else.
fn request_hash(org_id: Uuid, credits: i64, reason: Option<&str>) -> [u8; 32] {
    let canonical =
        serde_json::json!({"organization_id": org_id, "credits": credits, "reason": reason});
    let mut hasher = Sha256::new();
    hasher.update(b"POST /v1/credits\n");
    hasher.update(canonical.to_string());
    hasher.finalize().into()
}

fn organization_id(input: Option<&str>, errors: &mut Vec<FieldProblem>) -> Option<Uuid> {
    match input.map(str::trim) {
        None | Some("") => {
            errors.push(FieldProblem::new(
                "organization_id",
                "required",
                "`organization_id` is required",
            ));
            None
        }
        Some(text) => match Uuid::parse_str(text) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.push(FieldProblem::new(
                    "organization_id",
                    "invalid_id",
                    "`organization_id` must be an organization's id (a UUID)",
                ));
                None
            }
        },
    }
}

/// Add credits to an organization, or take back unreserved ones (operator only). The first
/// grant turns metering on: from then on every send reserves credits. With an
/// `Idempotency-Key`, repeating the same request within 24 hours returns the first response
/// instead of granting again.
#[utoipa::path(
    post,
    path = "/v1/credits",
    tag = "billing",
    request_body = GrantCredits,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours return the first response.")),
    responses(
        (status = 201, description = "Granted", body = GrantView),
        (status = 400, body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, taking back more than is available, or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("operator_token" = []))
)]
pub async fn grant_credits(
    State(state): State<AppState>,
    _operator: Operator,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(request): ApiJson<GrantCredits>,
) -> Result<Response, Problem> {
    let mut errors = Vec::new();
    let org_id = organization_id(request.organization_id.as_deref(), &mut errors);
    let credits = match &request.credits {
        None => {
            errors.push(FieldProblem::new(
                "credits",
                "required",
                "`credits` is required",
            ));
            None
        }
        Some(value) => match value.as_i64() {
            Some(0) => {
                errors.push(FieldProblem::new(
                    "credits",
                    "zero",
                    "`credits` must not be 0",
                ));
                None
            }
            Some(n) if n.abs() <= MAX_GRANT => Some(n),
            _ => {
                errors.push(FieldProblem::new(
                    "credits",
                    "invalid_credits",
                    format!(
                        "`credits` must be a whole number between -{MAX_GRANT} and {MAX_GRANT}"
                    ),
                ));
                None
            }
        },
    };
    let reason = request
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.chars().count() > 200 || r.contains('\0')) {
        errors.push(FieldProblem::new(
            "reason",
            "invalid_reason",
            "`reason` must be at most 200 characters of text",
        ));
    }
    let (Some(org_id), Some(credits)) = (org_id, credits) else {
        return Err(Problem::invalid_fields(errors));
    };
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let now = state.engine.clock.now();
    let grant = CreditGrant {
        id: Uuid::now_v7(),
        org_id,
        credits,
        reason: reason.map(str::to_owned),
        granted_by: "operator".into(),
        created_at: now,
    };
    let first_response = serde_json::to_vec(&GrantView {
        id: grant.id,
        organization_id: org_id,
        credits,
        reason: grant.reason.clone(),
        created_at: now,
    })
    .map_err(|e| Problem::internal("failed to render a grant", &e))?;
    // Operator keys are kept apart from the organization's own, which it chooses freely.
    let idempotency = idempotency_key.map(|key| IdempotencyRecord {
        key: format!("operator:{key}"),
        request_hash: request_hash(org_id, credits, reason),
        response: first_response.clone(),
        expires_at: now + state.engine.config.intake.idempotency_ttl,
    });
    let month = month_of(now);
    let store = &state.engine.store;
    match store
        .grant_credits(&grant, idempotency.as_ref(), &month)
        .await?
    {
        Ok(GrantOutcome::Granted(account)) => {
            tracing::info!(org_id = %org_id, credits, balance = account.balance, "credits granted");
            Ok(crate::json_response(
                StatusCode::CREATED,
                first_response,
                None,
                false,
            ))
        }
        Ok(GrantOutcome::Replayed { response, .. }) => Ok(crate::json_response(
            StatusCode::CREATED,
            response,
            None,
            true,
        )),
        Ok(GrantOutcome::KeyReused) => Err(Problem::field(
            &problem::IDEMPOTENCY_KEY_REUSED,
            "Idempotency-Key",
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
        Err(GrantRefusal::NotFound) => {
            Err(Problem::new(&problem::NOT_FOUND, "no such organization"))
        }
        Err(GrantRefusal::WouldOverdraw { available }) => Err(Problem::field(
            &problem::VALIDATION_FAILED,
            "credits",
            "would_overdraw",
            format!("only {available} credits are available to take back"),
        )),
    }
}

/// A monthly spend limit (operator only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendLimit {
    pub organization_id: Option<String>,
    /// A decimal amount in the organization's price currency (`"250.00"`), or `null` for no
    /// limit.
    #[schema(value_type = Option<String>, example = "250.00")]
    pub monthly_spend_limit: Option<serde_json::Value>,
}

/// Set or clear an organization's monthly spend limit (operator only). Applies to metered
/// organizations: a send whose estimated cost would take the month's spend over it is refused
/// with `402`.
#[utoipa::path(
    put,
    path = "/v1/credits/limit",
    tag = "billing",
    request_body = SpendLimit,
    responses(
        (status = 200, body = CreditsView),
        (status = 400, body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("operator_token" = []))
)]
pub async fn set_spend_limit(
    State(state): State<AppState>,
    _operator: Operator,
    ApiJson(request): ApiJson<SpendLimit>,
) -> Result<Json<CreditsView>, Problem> {
    let mut errors = Vec::new();
    let org_id = organization_id(request.organization_id.as_deref(), &mut errors);
    let limit = match &request.monthly_spend_limit {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => match Amount::parse(text) {
            Ok(amount) if amount.micros() >= 0 => Ok(Some(amount)),
            _ => Err(()),
        },
        Some(_) => Err(()),
    };
    let limit = match limit {
        Ok(limit) => Some(limit),
        Err(()) => {
            errors.push(FieldProblem::new(
                "monthly_spend_limit",
                "invalid_amount",
                "`monthly_spend_limit` must be a decimal amount as a string (\"250.00\"), at most 6 decimals, not negative; or null",
            ));
            None
        }
    };
    let (Some(org_id), Some(limit)) = (org_id, limit) else {
        return Err(Problem::invalid_fields(errors));
    };
    if !state.engine.store.set_spend_limit(org_id, limit).await? {
        return Err(Problem::new(&problem::NOT_FOUND, "no such organization"));
    }
    account_of(&state, org_id).await.map(Json)
}

/// Metering on or off (operator only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Metering {
    pub organization_id: Option<String>,
    pub metered: Option<bool>,
}

/// Switch an organization's metering on or off (operator only). Off, its sends reserve
/// nothing; messages already queued keep what they reserved.
#[utoipa::path(
    put,
    path = "/v1/credits/metering",
    tag = "billing",
    request_body = Metering,
    responses(
        (status = 200, body = CreditsView),
        (status = 400, body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("operator_token" = []))
)]
pub async fn set_metering(
    State(state): State<AppState>,
    _operator: Operator,
    ApiJson(request): ApiJson<Metering>,
) -> Result<Json<CreditsView>, Problem> {
    let mut errors = Vec::new();
    let org_id = organization_id(request.organization_id.as_deref(), &mut errors);
    if request.metered.is_none() {
        errors.push(FieldProblem::new(
            "metered",
            "required",
            "`metered` is required (true or false)",
        ));
    }
    let (Some(org_id), Some(metered)) = (org_id, request.metered) else {
        return Err(Problem::invalid_fields(errors));
    };
    if !state.engine.store.set_metered(org_id, metered).await? {
        return Err(Problem::new(&problem::NOT_FOUND, "no such organization"));
    }
    account_of(&state, org_id).await.map(Json)
}

/// Which month to report.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// `YYYY-MM` (UTC); the current month when left out.
    pub month: Option<String>,
}

/// One destination country and message type of a month's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLine {
    /// ISO 3166-1 alpha-2; `null` for numbers of no country.
    #[schema(value_type = Option<String>, example = "US")]
    pub country: Option<Region>,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "transactional")]
    pub kind: MessageType,
    /// Messages accepted (every status, suppressed and canceled included).
    pub messages: u64,
    pub segments: u64,
    /// Of them, how many a provider accepted.
    pub sent: u64,
    #[schema(value_type = String, example = "0.0158")]
    pub estimated_cost: Amount,
    /// What providers reported charging (messages without a reported price count 0).
    #[schema(value_type = String, example = "0.0158")]
    pub actual_cost: Amount,
    #[schema(example = "USD")]
    pub currency: String,
}

/// A month's usage of the key's organization and mode.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub month: String,
    #[schema(value_type = String, example = "live")]
    pub mode: Mode,
    pub messages: u64,
    pub segments: u64,
    pub data: Vec<UsageLine>,
}

impl From<UsageRow> for UsageLine {
    fn from(row: UsageRow) -> UsageLine {
        UsageLine {
            country: row.country,
            kind: row.kind,
            messages: row.messages,
            segments: row.segments,
            sent: row.sent,
            estimated_cost: row.estimated_cost,
            actual_cost: row.actual_cost,
            currency: row.currency.as_str().to_owned(),
        }
    }
}

/// The first instant of `YYYY-MM` and of the month after, in UTC.
fn month_bounds(month: &str) -> Option<(Timestamp, Timestamp)> {
    let (year, number) = month.split_once('-')?;
    if year.len() != 4 || number.len() != 2 {
        return None;
    }
    let year: i16 = year.parse().ok()?;
    let number: i8 = number.parse().ok()?;
    let start = jiff::civil::Date::new(year, number, 1).ok()?;
    let end = start.checked_add(jiff::Span::new().months(1)).ok()?;
    let utc = |date: jiff::civil::Date| {
        date.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    };
    Some((utc(start)?, utc(end)?))
}

/// Messages, segments and cost of a month, by destination country and message type, for the
/// key's organization and mode (live and test keys see their own traffic).
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "billing",
    params(UsageQuery),
    responses(
        (status = 200, body = UsageView),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid month", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_usage(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<UsageView>, Problem> {
    let month = query
        .month
        .unwrap_or_else(|| month_of(state.engine.clock.now()));
    let (from, until) = month_bounds(&month).ok_or_else(|| {
        Problem::field(
            &problem::VALIDATION_FAILED,
            "month",
            "invalid_month",
            "`month` must be a month as YYYY-MM, e.g. 2026-11",
        )
    })?;
    let rows = state
        .engine
        .store
        .usage(caller.scope(), from, until)
        .await?;
    let data: Vec<UsageLine> = rows.into_iter().map(UsageLine::from).collect();
    Ok(Json(UsageView {
        month,
        mode: caller.key.mode,
        messages: data.iter().map(|l| l.messages).sum(),
        segments: data.iter().map(|l| l.segments).sum(),
        data,
    }))
}

/// The destination countries the organization may send to.
#[derive(Debug, Serialize, ToSchema)]
pub struct GeoView {
    /// ISO 3166-1 alpha-2 codes.
    #[schema(value_type = Vec<String>, example = json!(["US", "CA"]))]
    pub countries: Vec<Region>,
    /// Whether this is the default (the organization's own country) because none was chosen.
    pub default: bool,
}

/// The destination countries to allow.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutGeo {
    /// ISO 3166-1 alpha-2 codes, at least one.
    #[schema(value_type = Vec<String>, example = json!(["US", "CA"]))]
    pub countries: Option<Vec<serde_json::Value>>,
}

/// The destination countries the organization may send to; a send elsewhere is refused with
/// `422` on `to` (`country_not_permitted`).
#[utoipa::path(
    get,
    path = "/v1/settings/geo",
    tag = "messages",
    responses(
        (status = 200, body = GeoView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_geo(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<GeoView>, Problem> {
    let chosen = state.engine.store.allowed_countries(caller.org.id).await?;
    Ok(Json(GeoView {
        default: chosen.is_none(),
        countries: chosen.unwrap_or_else(|| vec![caller.org.default_region]),
    }))
}

/// Replace the destination countries the organization may send to (live key only).
#[utoipa::path(
    put,
    path = "/v1/settings/geo",
    tag = "messages",
    request_body = PutGeo,
    responses(
        (status = 200, body = GeoView),
        (status = 400, body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Missing, empty or unknown country codes", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn put_geo(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<PutGeo>,
) -> Result<Json<GeoView>, Problem> {
    let countries = match request.countries {
        None => Err("`countries` is required".to_owned()),
        Some(list) if list.is_empty() => {
            Err("`countries` must name at least one country".to_owned())
        }
        Some(list) if list.len() > 300 => Err("`countries` lists too many codes".to_owned()),
        Some(list) => {
            let mut countries = Vec::with_capacity(list.len());
            let mut bad = Vec::new();
            for value in &list {
                match value.as_str().map(Region::parse) {
                    Some(Ok(region)) => countries.push(region),
                    _ => bad.push(value.to_string()),
                }
            }
            if bad.is_empty() {
                Ok(countries)
            } else {
                Err(format!(
                    "`countries` must be ISO 3166-1 alpha-2 codes such as \"US\"; not {}",
                    bad.join(", ")
                ))
            }
        }
    };
    let mut countries = countries.map_err(|message| {
        Problem::field(
            &problem::VALIDATION_FAILED,
            "countries",
            "invalid_countries",
            message,
        )
    })?;
    if caller.key.mode != Mode::Live {
        return Err(Problem::new(
            &problem::LIVE_KEY_REQUIRED,
            "allowed countries can only be changed with a live key",
        ));
    }
    countries.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    countries.dedup();
    if !state
        .engine
        .set_allowed_countries(caller.org.id, &countries)
        .await?
    {
        return Err(Problem::new(&problem::NOT_FOUND, "no such organization"));
    }
    Ok(Json(GeoView {
        countries,
        default: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_bounded_by_their_first_instants_in_utc() {
        let (from, until) = month_bounds("2026-12").unwrap();
        assert_eq!(from, "2026-12-01T00:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(until, "2027-01-01T00:00:00Z".parse::<Timestamp>().unwrap());
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "", "2026-00"] {
            assert!(month_bounds(bad).is_none(), "{bad}");
        }
    }
}
