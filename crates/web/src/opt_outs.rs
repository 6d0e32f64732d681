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
use crate::problem::{self, FieldProblem, Problem, ProblemBody};

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
    if store
        .opt_out(caller.org.id, &phone, "api", None, now)
        .await?
    {
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
    let now = state.engine.clock.now();
    if state
        .engine
        .store
        .opt_in(caller.org.id, &phone, "api", None, now)
        .await?
    {
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

/// One change to a number's place on the suppression list.
#[derive(Debug, Serialize, ToSchema)]
pub struct OptOutEventView {
    /// `opt_out` or `opt_in`.
    pub action: &'static str,
    /// What caused it: `keyword` (the recipient texted STOP or START), `api`, or the provider
    /// that reported it (`twilio:21610`, `sns`).
    pub source: String,
    /// The inbound message that asked for it.
    pub message_id: Option<uuid::Uuid>,
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: Timestamp,
}

impl From<herald_store::OptOutEvent> for OptOutEventView {
    fn from(e: herald_store::OptOutEvent) -> OptOutEventView {
        OptOutEventView {
            action: e.action.as_str(),
            source: e.source,
            message_id: e.message_id,
            occurred_at: e.occurred_at,
        }
    }
}

/// A number's history on the suppression list.
#[derive(Debug, Serialize, ToSchema)]
pub struct OptOutHistory {
    pub phone: String,
    /// Whether the number is on the list now.
    pub opted_out: bool,
    /// Every change, oldest first.
    pub events: Vec<OptOutEventView>,
}

/// Every change to a number's place on the suppression list, oldest first: when, what caused
/// it, and the message that asked for it.
#[utoipa::path(
    get,
    path = "/v1/opt-outs/{phone}/history",
    tag = "messages",
    params(("phone" = String, Path, description = "The number, E.164 (`%2B14155550100`)")),
    responses(
        (status = 200, body = OptOutHistory),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn opt_out_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(input): Path<String>,
) -> Result<Json<OptOutHistory>, Problem> {
    let phone = phone(&caller, Some(&input))?;
    let store = &state.engine.store;
    let events = store.opt_out_history(caller.org.id, &phone).await?;
    let opted_out = !store
        .opted_out_among(caller.org.id, std::slice::from_ref(&phone))
        .await?
        .is_empty();
    Ok(Json(OptOutHistory {
        phone,
        opted_out,
        events: events.into_iter().map(OptOutEventView::from).collect(),
    }))
}

/// How the organization answers keywords texted to its numbers. The standard words always
/// apply (STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, ARRET, BAJA, ALTO; START, UNSTOP,
/// YES; HELP, INFO); these add the organization's own, e.g. in its customers' languages.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeywordSettingsBody {
    /// The answer to HELP (at most 320 characters); `null` for the standard answer naming the
    /// organization.
    #[schema(
        example = "Acme Travel: booking alerts. Reply STOP to unsubscribe. Help: acme.example/sms"
    )]
    pub help_text: Option<String>,
    /// More words that opt a number out.
    #[serde(default)]
    #[schema(example = json!(["STOPPEN", "DESABONNER"]))]
    pub opt_out_words: Vec<String>,
    /// More words that opt a number back in.
    #[serde(default)]
    #[schema(example = json!(["ANMELDEN"]))]
    pub opt_in_words: Vec<String>,
}

/// The organization's keyword settings.
#[utoipa::path(
    get,
    path = "/v1/settings/keywords",
    tag = "messages",
    responses(
        (status = 200, body = KeywordSettingsBody),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_keywords(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<KeywordSettingsBody>, Problem> {
    let settings = state
        .engine
        .store
        .keyword_settings(caller.org.id)
        .await?
        .unwrap_or_default();
    Ok(Json(KeywordSettingsBody {
        help_text: settings.help_text,
        opt_out_words: settings.opt_out_words,
        opt_in_words: settings.opt_in_words,
    }))
}

/// Replace the organization's keyword settings. Words are single words, compared without
/// regard to case; a word cannot both opt out and opt in, nor take back a standard word's
/// meaning.
#[utoipa::path(
    put,
    path = "/v1/settings/keywords",
    tag = "messages",
    request_body = KeywordSettingsBody,
    responses(
        (status = 200, body = KeywordSettingsBody),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid words or help text", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn set_keywords(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<KeywordSettingsBody>,
) -> Result<Json<KeywordSettingsBody>, Problem> {
    use herald_domain::keywords::{HELP, OPT_IN, OPT_OUT, normalize};
    live_only(&caller)?;
    let mut errors = Vec::new();
    let help_text = body
        .help_text
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if let Some(text) = &help_text
        && (text.chars().count() > 320 || text.contains('\0'))
    {
        errors.push(FieldProblem {
            field: "help_text".into(),
            code: "too_long".into(),
            message: "`help_text` is at most 320 characters".into(),
        });
    }
    let mut seen: Vec<String> = Vec::new();
    let mut words = |field: &str, given: &[String], others: &[&str]| -> Vec<String> {
        if given.len() > 20 {
            errors.push(FieldProblem {
                field: field.into(),
                code: "too_many_words".into(),
                message: format!("`{field}` has at most 20 words"),
            });
        }
        let mut kept = Vec::new();
        for (i, raw) in given.iter().enumerate() {
            let problem = |code: &str, message: String| FieldProblem {
                field: format!("{field}[{i}]"),
                code: code.into(),
                message,
            };
            match normalize(raw) {
                Some(word)
                    if word.chars().count() <= 20 && word.chars().all(char::is_alphanumeric) =>
                {
                    if others.contains(&word.as_str()) || seen.contains(&word) {
                        errors.push(problem(
                            "conflicting_word",
                            format!("`{word}` already means something else, or is listed twice"),
                        ));
                    } else {
                        seen.push(word.clone());
                        kept.push(word);
                    }
                }
                _ => errors.push(problem(
                    "invalid_word",
                    "a keyword is one word of at most 20 letters or digits".into(),
                )),
            }
        }
        kept
    };
    let not_out: Vec<&str> = OPT_IN.iter().chain(HELP).copied().collect();
    let not_in: Vec<&str> = OPT_OUT.iter().chain(HELP).copied().collect();
    let opt_out_words = words("opt_out_words", &body.opt_out_words, &not_out);
    let opt_in_words = words("opt_in_words", &body.opt_in_words, &not_in);
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let settings = herald_store::KeywordSettings {
        help_text,
        opt_out_words,
        opt_in_words,
    };
    state
        .engine
        .store
        .set_keyword_settings(caller.org.id, &settings)
        .await?;
    Ok(Json(KeywordSettingsBody {
        help_text: settings.help_text,
        opt_out_words: settings.opt_out_words,
        opt_in_words: settings.opt_in_words,
    }))
}
