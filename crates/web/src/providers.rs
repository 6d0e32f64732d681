//! `/v1/providers`: an organization's provider accounts — create, list, read, change (including
//! rotating credentials) and delete.
//!
//! Credentials are write-only: a response shows identifiers (an account SID, a region) and
//! `"set"` for each secret, never a secret. Accounts configure live traffic (test keys always
//! reach the simulator), so a test key may read them but only a live key may change them.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use herald_domain::message::Mode;
use herald_engine::accounts::{self, AccountError, AccountInput, FieldError};
use herald_store::{AccountCreation, IdempotencyRecord, ProviderAccount, RouteKey};
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::paging::{self, ListQuery};
use crate::problem::{self, FieldProblem, Problem, ProblemBody};

/// A provider account to create, or the fields of one to change. On a change, `credentials`
/// and `senders` replace the old ones whole; everything left out stays as it was.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderBody {
    /// Unique within the organization.
    #[schema(example = "twilio-us")]
    pub name: Option<String>,
    /// `twilio`, `sns` or `simulator`; required on creation, and cannot change.
    #[schema(example = "twilio")]
    pub kind: Option<String>,
    /// twilio: `account_sid`, `auth_token`, optional `base_url`. sns: `region`,
    /// `access_key_id`, `secret_access_key`, optional `endpoint` and `webhook_secret`.
    /// simulator: none.
    #[schema(value_type = Option<Object>, example = json!({"account_sid": "ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "auth_token": "your_auth_token"}))]
    pub credentials: Option<serde_json::Map<String, Value>>,
    /// Numbers, Messaging Services and sender IDs this account sends from.
    pub senders: Option<Vec<SenderBody>>,
    pub rate_limit: Option<RateLimitBody>,
    /// Default `true`. A disabled account stays in its routes but is passed over.
    pub enabled: Option<bool>,
}

/// Only the names of the credentials: a request body may be logged while debugging, and its
/// secrets must not be.
impl std::fmt::Debug for ProviderBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderBody")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|c| c.keys().collect::<Vec<_>>()),
            )
            .field("senders", &self.senders)
            .field("rate_limit", &self.rate_limit)
            .field("enabled", &self.enabled)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SenderBody {
    /// `phone_number` (E.164), `messaging_service_sid` (Twilio `MG…`) or `alphanumeric_id`.
    #[serde(rename = "type")]
    #[schema(example = "phone_number")]
    pub kind: String,
    #[schema(example = "+14155550100")]
    pub value: String,
}

/// Sending rates, each more than 0.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    /// Default 10.
    #[schema(example = 10.0)]
    pub messages_per_second: Option<f64>,
    /// `null` removes the limit.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>)]
    pub segments_per_second: Option<Option<f64>>,
    /// For each sender number on its own; `null` removes the limit.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>, example = 1.0)]
    pub per_sender_messages_per_second: Option<Option<f64>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitView {
    pub messages_per_second: f64,
    pub segments_per_second: Option<f64>,
    pub per_sender_messages_per_second: Option<f64>,
}

/// A provider account. Secrets are never shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub id: Uuid,
    pub name: String,
    #[schema(example = "twilio")]
    pub kind: String,
    /// Identifiers as configured, and `"set"` in place of each secret.
    #[schema(value_type = Object, example = json!({"account_sid": "ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "auth_token": "set"}))]
    pub credentials: BTreeMap<String, String>,
    pub senders: Vec<SenderBody>,
    pub rate_limit: RateLimitView,
    pub enabled: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<&ProviderAccount> for ProviderView {
    fn from(a: &ProviderAccount) -> Self {
        ProviderView {
            id: a.id,
            name: a.name.clone(),
            kind: a.kind.as_str().to_owned(),
            credentials: a.credentials_shown.iter().cloned().collect(),
            senders: a
                .senders
                .iter()
                .map(|s| SenderBody {
                    kind: s.kind.as_str().to_owned(),
                    value: s.value.clone(),
                })
                .collect(),
            rate_limit: RateLimitView {
                messages_per_second: a.limits.messages_per_second,
                segments_per_second: a.limits.segments_per_second,
                per_sender_messages_per_second: a.limits.sender_messages_per_second,
            },
            enabled: a.enabled,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// A page of provider accounts, in the order they were created.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderPage {
    pub data: Vec<ProviderView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The same request, however its JSON was spelled or ordered, hashes the same; the route is
/// part of it, so a key used to send a message never replays an account.
fn request_hash(body: &ProviderBody) -> [u8; 32] {
    let credentials: Option<BTreeMap<&String, &Value>> =
        body.credentials.as_ref().map(|c| c.iter().collect());
    let canonical = serde_json::json!({
        "name": body.name, "kind": body.kind, "credentials": credentials,
        "senders": body.senders, "rate_limit": body.rate_limit, "enabled": body.enabled,
    });
    let mut hasher = Sha256::new();
    hasher.update(b"POST /v1/providers\n");
    hasher.update(canonical.to_string());
    hasher.finalize().into()
}

/// The engine's input from a request body; credentials that are not strings are errors here.
fn input(body: ProviderBody) -> Result<AccountInput, Problem> {
    let mut errors = Vec::new();
    let credentials = body.credentials.map(|given| {
        let mut credentials = BTreeMap::new();
        for (name, value) in given {
            match value {
                Value::String(text) => {
                    credentials.insert(name, text);
                }
                _ => errors.push(FieldError {
                    field: format!("credentials.{name}"),
                    code: "invalid_value",
                    message: format!("`credentials.{name}` must be a string"),
                }),
            }
        }
        credentials
    });
    if !errors.is_empty() {
        return Err(field_problems(errors));
    }
    let rate = body.rate_limit;
    Ok(AccountInput {
        name: body.name,
        kind: body.kind,
        credentials,
        senders: body
            .senders
            .map(|senders| senders.into_iter().map(|s| (s.kind, s.value)).collect()),
        messages_per_second: rate.as_ref().and_then(|r| r.messages_per_second),
        segments_per_second: rate.as_ref().and_then(|r| r.segments_per_second),
        sender_messages_per_second: rate.as_ref().and_then(|r| r.per_sender_messages_per_second),
        enabled: body.enabled,
    })
}

/// Field errors as one problem: 400 if a field may not be used at all, else 422.
pub(crate) fn field_problems(errors: Vec<FieldError>) -> Problem {
    let kind = if errors.iter().any(|e| e.code == "unknown_field") {
        &problem::MALFORMED_REQUEST
    } else {
        &problem::VALIDATION_FAILED
    };
    let detail = match errors.as_slice() {
        [only] => only.message.clone(),
        many => format!("{} fields are invalid", many.len()),
    };
    Problem::new(kind, detail).with_errors(errors.into_iter().map(FieldProblem::from).collect())
}

pub(crate) fn account_problem(error: AccountError) -> Problem {
    match error {
        AccountError::Invalid(errors) => field_problems(errors),
        AccountError::NoSecretKey => Problem::new(
            &problem::SECRET_KEY_MISSING,
            "this server has no secret key to encrypt provider credentials with; set \
             HERALD_SECRET_KEY (32 bytes, hex or base64) and restart",
        ),
        AccountError::NameTaken => Problem::field(
            &problem::NAME_TAKEN,
            "name",
            "name_taken",
            "the organization already has a provider account with this name",
        ),
        AccountError::NotFound => not_found(),
        AccountError::InUse(routes) => Problem::new(
            &problem::PROVIDER_IN_USE,
            "routes still send through this provider account; take it out of them first",
        )
        .with_routes(routes.iter().map(RouteKey::to_string).collect()),
        AccountError::Store(error) => error.into(),
    }
}

fn not_found() -> Problem {
    Problem::new(&problem::NOT_FOUND, "no such provider account")
}

/// Changes need a live key: test keys only ever reach the simulator, whatever is configured.
pub(crate) fn require_live(caller: &Caller) -> Result<(), Problem> {
    match caller.key.mode {
        Mode::Live => Ok(()),
        Mode::Test => Err(Problem::new(
            &problem::LIVE_KEY_REQUIRED,
            "provider accounts and routes can only be changed with a live key",
        )),
    }
}

/// Path ids that are not UUIDs cannot name an account: that is a 404, not a 400.
fn account_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| not_found())
}

/// Add a provider account.
///
/// Secrets are encrypted with the server's secret key before they are stored; a server without
/// one refuses accounts that have secrets. With an `Idempotency-Key`, repeating the same
/// request within 24 hours returns the original response instead of adding another account.
#[utoipa::path(
    post,
    path = "/v1/providers",
    tag = "providers",
    request_body = ProviderBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours return the first response.")),
    responses(
        (status = 201, description = "Created", body = ProviderView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name taken, or no secret key configured", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_provider(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<ProviderBody>,
) -> Result<Response, Problem> {
    require_live(&caller)?;
    let engine = &state.engine;
    let now = engine.clock.now();
    let hash = request_hash(&body);
    let prepared = accounts::prepare_account(
        engine.config.secret_key.as_ref(),
        caller.org.id,
        &input(body)?,
        now,
    )
    .map_err(account_problem)?;
    let account = &prepared.account;
    let first_response = serde_json::to_vec(&ProviderView::from(account))
        .map_err(|e| Problem::internal("failed to render a provider account", &e))?;
    let idempotency = idempotency_key.map(|key| IdempotencyRecord {
        key,
        request_hash: hash,
        response: first_response.clone(),
        expires_at: now + engine.config.intake.idempotency_ttl,
    });
    let stored =
        accounts::store_account(engine.store.as_ref(), &prepared, idempotency.as_ref(), now)
            .await
            .map_err(account_problem)?;
    match stored {
        AccountCreation::Created => {
            tracing::info!(account_id = %account.id, org_id = %account.org_id, kind = account.kind.as_str(), "provider account created");
            let location = format!("/v1/providers/{}", account.id);
            Ok(crate::json_response(
                StatusCode::CREATED,
                first_response,
                Some(&location),
                false,
            ))
        }
        AccountCreation::Replayed { id, response } => {
            let location = format!("/v1/providers/{id}");
            Ok(crate::json_response(
                StatusCode::CREATED,
                response,
                Some(&location),
                true,
            ))
        }
        AccountCreation::KeyReused => Err(Problem::field(
            &problem::IDEMPOTENCY_KEY_REUSED,
            "Idempotency-Key",
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
    }
}

/// List provider accounts, in the order they were created.
#[utoipa::path(
    get,
    path = "/v1/providers",
    tag = "providers",
    params(ListQuery),
    responses(
        (status = 200, body = ProviderPage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_providers(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ProviderPage>, Problem> {
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    let page = state
        .engine
        .store
        .list_provider_accounts(caller.org.id, after, limit)
        .await?;
    Ok(Json(ProviderPage {
        data: page.items.iter().map(ProviderView::from).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}

/// Read a provider account.
#[utoipa::path(
    get,
    path = "/v1/providers/{id}",
    tag = "providers",
    params(("id" = Uuid, Path, description = "The provider account id")),
    responses(
        (status = 200, body = ProviderView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_provider(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProviderView>, Problem> {
    let id = account_id(&id)?;
    let account = state
        .engine
        .store
        .get_provider_account(caller.org.id, id)
        .await?;
    account
        .map(|a| Json(ProviderView::from(&a)))
        .ok_or_else(not_found)
}

/// Change a provider account.
///
/// Only the fields given change. `credentials` replace all the old credentials (send every
/// field, e.g. the account SID with a new auth token); `senders` replace the old list.
#[utoipa::path(
    patch,
    path = "/v1/providers/{id}",
    tag = "providers",
    params(("id" = Uuid, Path, description = "The provider account id")),
    request_body = ProviderBody,
    responses(
        (status = 200, body = ProviderView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Name taken, or no secret key configured", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn update_provider(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ProviderBody>,
) -> Result<Json<ProviderView>, Problem> {
    let id = account_id(&id)?;
    require_live(&caller)?;
    let engine = &state.engine;
    let rotated = body.credentials.is_some();
    let account = accounts::update_account(
        engine.store.as_ref(),
        engine.config.secret_key.as_ref(),
        caller.org.id,
        id,
        &input(body)?,
        engine.clock.now(),
    )
    .await
    .map_err(account_problem)?;
    tracing::info!(account_id = %account.id, org_id = %account.org_id, credentials_rotated = rotated, "provider account updated");
    Ok(Json(ProviderView::from(&account)))
}

/// Delete a provider account that no route names.
#[utoipa::path(
    delete,
    path = "/v1/providers/{id}",
    tag = "providers",
    params(("id" = Uuid, Path, description = "The provider account id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Routes still name the account", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_provider(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = account_id(&id)?;
    require_live(&caller)?;
    accounts::delete_account(state.engine.store.as_ref(), caller.org.id, id)
        .await
        .map_err(account_problem)?;
    tracing::info!(account_id = %id, org_id = %caller.org.id, "provider account deleted");
    Ok(StatusCode::NO_CONTENT)
}
