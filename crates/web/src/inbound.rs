//! Inbound messages: what people sent to an organization's numbers, as `GET /v1/inbound`.

use axum::Json;
use axum::extract::State;
use herald_domain::message::Mode;
use herald_store::InboundMessage;
use jiff::Timestamp;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::ApiQuery;
use crate::paging::{self, ListQuery};
use crate::problem::{Problem, ProblemBody};

/// One inbound message.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboundView {
    pub id: Uuid,
    /// The sender, as the provider gave it (E.164 for phones).
    pub from: String,
    /// The organization's number it was sent to.
    pub to: String,
    pub body: String,
    /// `twilio`, or `twilio/{account id}` for the organization's own account.
    pub provider: String,
    pub provider_message_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub received_at: Timestamp,
}

impl From<&InboundMessage> for InboundView {
    fn from(m: &InboundMessage) -> InboundView {
        InboundView {
            id: m.id,
            from: m.from.clone(),
            to: m.to.clone(),
            body: m.body.clone(),
            provider: m.provider.clone(),
            provider_message_id: m.provider_message_id.clone(),
            received_at: m.received_at,
        }
    }
}

/// A page of inbound messages.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboundPage {
    pub data: Vec<InboundView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// List inbound messages, newest first. They are live traffic: a test key sees none.
#[utoipa::path(
    get,
    path = "/v1/inbound",
    tag = "messages",
    params(ListQuery),
    responses(
        (status = 200, body = InboundPage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_inbound(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<InboundPage>, Problem> {
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    if caller.key.mode == Mode::Test {
        return Ok(Json(InboundPage {
            data: Vec::new(),
            next_cursor: None,
        }));
    }
    let page = state
        .engine
        .store
        .list_inbound(caller.org.id, after, limit)
        .await?;
    Ok(Json(InboundPage {
        data: page.items.iter().map(InboundView::from).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}

/// A reply to simulate, as if a recipient had texted the organization.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulatedReply {
    /// The recipient replying: E.164, or national in the organization's region.
    #[schema(example = "+14155550100")]
    pub from: Option<String>,
    /// The organization's number it is sent to (default: the simulator's).
    pub to: Option<String>,
    #[schema(example = "STOP")]
    pub body: Option<String>,
}

/// What a simulated reply did.
#[derive(Debug, Serialize, ToSchema)]
pub struct SimulatedReplyResult {
    pub message: InboundView,
    /// What Herald answered, for a HELP.
    pub reply: Option<String>,
}

/// Deliver a reply from a recipient through the simulator, exactly as a provider's inbound
/// webhook would: it is stored as an inbound message, and STOP, START and HELP act on the
/// suppression list and answer as they would from a real phone. Like the suppression list, it
/// needs a live key.
#[utoipa::path(
    post,
    path = "/v1/simulator/inbound",
    tag = "messages",
    request_body = SimulatedReply,
    responses(
        (status = 201, body = SimulatedReplyResult),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "A test key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn simulate_reply(
    State(state): State<AppState>,
    caller: Caller,
    crate::extract::ApiJson(reply): crate::extract::ApiJson<SimulatedReply>,
) -> Result<(axum::http::StatusCode, Json<SimulatedReplyResult>), Problem> {
    if caller.key.mode != Mode::Live {
        return Err(Problem::new(
            &crate::problem::LIVE_KEY_REQUIRED,
            "a simulated reply acts on the suppression list, which only a live key may change",
        ));
    }
    let mut errors = Vec::new();
    let from = match reply
        .from
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        None => {
            errors.push(crate::problem::FieldProblem::new(
                "from",
                "required",
                "`from` is required",
            ));
            None
        }
        Some(text) => {
            match herald_domain::phone::PhoneNumber::parse(text, Some(caller.org.default_region)) {
                Ok(number) => Some(number.e164().to_owned()),
                Err(error) => {
                    errors.push(crate::problem::FieldProblem::new(
                        "from",
                        error.code(),
                        format!("`from` is not a valid phone number: {error}"),
                    ));
                    None
                }
            }
        }
    };
    let body = match reply.body {
        Some(body) if !body.contains('\0') && body.chars().count() <= 1_600 => Some(body),
        Some(_) => {
            errors.push(crate::problem::FieldProblem::new(
                "body",
                "invalid_body",
                "`body` is at most 1,600 characters, without NUL",
            ));
            None
        }
        None => {
            errors.push(crate::problem::FieldProblem::new(
                "body",
                "required",
                "`body` is required",
            ));
            None
        }
    };
    let (Some(from), Some(body), true) = (from, body, errors.is_empty()) else {
        return Err(Problem::invalid_fields(errors));
    };
    let now = state.engine.clock.now();
    let id = Uuid::now_v7();
    let message = InboundMessage {
        id,
        org_id: caller.org.id,
        provider: herald_providers::simulator::NAME.to_owned(),
        provider_message_id: format!("SIM{}", id.simple()),
        from,
        to: reply.to.unwrap_or_else(|| "simulator".to_owned()),
        body,
        received_at: now,
    };
    state.engine.store.insert_inbound(&message).await?;
    let answer = crate::hooks::act_on_keyword(&state, caller.org.id, &message).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(SimulatedReplyResult {
            message: InboundView::from(&message),
            reply: answer,
        }),
    ))
}
