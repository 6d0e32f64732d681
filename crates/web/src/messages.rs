//! `/v1/messages`: send, list, read and cancel messages.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use herald_domain::phone::{PhoneNumber, mask_phone};
use herald_engine::intake::SendRequest;
use herald_store::{
    CancelRefusal, IdempotencyRecord, Insertion, Message, MessageFilter, StatusChange,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::paging;
use crate::problem::{self, FieldProblem, Problem, ProblemBody};

/// A request to send one SMS.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMessage {
    /// The recipient: E.164 (`+14155550100`), or national format read in the organization's
    /// default region. Give this or `contact_id`.
    #[schema(example = "+14155550100")]
    pub to: Option<String>,
    /// The text, up to 1,600 characters. It is sent as GSM-7 when every character allows,
    /// otherwise as UCS-2. Give this or `template_id`.
    #[schema(example = "Your code is 123456")]
    pub body: Option<String>,
    /// Send this template, filled with `variables` (and the fields of `contact_id`), instead
    /// of a `body`. A required variable without a value refuses the send.
    // Left out of the request hash when absent, so keys stored before templates still match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// Values for the template's variables: strings, numbers or booleans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, example = json!({"code": "123456"}))]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
    /// Send to this contact's phone number instead of `to`; its fields (`first_name`,
    /// `last_name`, `phone`, `email`, custom fields) fill the template's variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    /// `transactional` (the default: OTPs, confirmations) or `promotional` (marketing).
    #[serde(rename = "type", default)]
    #[schema(value_type = String, example = "transactional")]
    pub kind: herald_domain::message::MessageType,
    /// The sender: an E.164 number, a short code, or an alphanumeric sender ID.
    pub from: Option<String>,
    /// When to send (RFC 3339). A future time schedules the message.
    #[schema(example = "2026-12-01T09:30:00+01:00")]
    pub send_at: Option<String>,
    /// The most segments the body may take; longer bodies are refused, or cut with `truncate`.
    #[schema(minimum = 1)]
    pub max_segments: Option<u32>,
    /// Shorten a body longer than `max_segments` instead of refusing it.
    #[serde(default)]
    pub truncate: bool,
    /// Replace look-alike characters (curly quotes, dashes, non-breaking spaces…) with GSM-7
    /// ones, which can halve the segments a body takes.
    #[serde(default)]
    pub smart_encoding: bool,
}

/// One entry of a message's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusChangeView {
    #[schema(value_type = String, example = "delivered")]
    pub status: herald_domain::status::MessageStatus,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// A message and everything Herald knows about it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    /// `scheduled`, `queued`, `sending`, `sent`, `delivered`, `undelivered`, `failed`,
    /// `canceled`, `suppressed` or `unknown`.
    #[schema(value_type = String, example = "queued")]
    pub status: herald_domain::status::MessageStatus,
    /// `live` or `test` (test messages only ever reach the simulator).
    #[schema(value_type = String, example = "live")]
    pub mode: herald_domain::message::Mode,
    /// The recipient in E.164.
    #[schema(example = "+14155550100")]
    pub to: String,
    /// The recipient's country (ISO 3166-1 alpha-2), derived from the number.
    #[schema(value_type = Option<String>, example = "US")]
    pub country: Option<herald_domain::phone::Region>,
    pub from: Option<String>,
    pub body: String,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "transactional")]
    pub kind: herald_domain::message::MessageType,
    /// `GSM-7` or `UCS-2`.
    #[schema(value_type = String, example = "GSM-7")]
    pub encoding: herald_domain::encoding::Encoding,
    pub segments: u32,
    /// Segments × the destination's price, before sending.
    #[schema(value_type = String, example = "0.0079")]
    pub estimated_cost: herald_domain::money::Amount,
    /// The price the provider reported, once known.
    #[schema(value_type = Option<String>)]
    pub actual_cost: Option<herald_domain::money::Amount>,
    #[schema(example = "USD")]
    pub currency: String,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Provider calls made so far.
    pub attempts: u32,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub send_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// The broadcast that sent it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<Uuid>,
    /// Every status the message passed through, oldest first.
    pub status_history: Vec<StatusChangeView>,
}

impl From<&StatusChange> for StatusChangeView {
    fn from(change: &StatusChange) -> Self {
        StatusChangeView {
            status: change.status,
            at: change.at,
            error_code: change.error_code.clone(),
            error_message: change.error_message.clone(),
        }
    }
}

impl From<&Message> for MessageView {
    fn from(m: &Message) -> Self {
        MessageView {
            id: m.id,
            status: m.status,
            mode: m.scope.mode,
            to: m.to.clone(),
            country: m.country,
            from: m.sender.clone(),
            body: m.body.clone(),
            kind: m.kind,
            encoding: m.encoding,
            segments: m.segments,
            estimated_cost: m.estimated_cost,
            actual_cost: m.actual_cost,
            currency: m.currency.as_str().to_owned(),
            provider: m.provider.clone(),
            provider_message_id: m.provider_message_id.clone(),
            error_code: m.error_code.clone(),
            error_message: m.error_message.clone(),
            attempts: m.attempts,
            send_at: m.send_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
            broadcast_id: m.broadcast_id,
            status_history: m.history.iter().map(StatusChangeView::from).collect(),
        }
    }
}

/// A page of messages, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub data: Vec<MessageView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Send a message.
///
/// Validates, encodes and prices the message and stores it durably before answering; a
/// dispatcher then hands it to a provider. With an `Idempotency-Key`, repeating the same
/// request within 24 hours returns the original response instead of sending again.
#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "messages",
    request_body = CreateMessage,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours return the first response.")),
    responses(
        (status = 201, description = "Accepted and stored", body = MessageView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 402, description = "Not enough credits, or the monthly spend limit would be passed; nothing was queued", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (including a destination country the organization may not send to), or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_message(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(request): ApiJson<CreateMessage>,
) -> Result<Response, Problem> {
    let mut errors = Vec::new();
    let send_at = match request.send_at.as_deref() {
        None => None,
        Some(text) => match text.parse::<Timestamp>() {
            Ok(at) => Some(at),
            Err(_) => {
                errors.push(FieldProblem {
                    field: "send_at".into(),
                    code: "invalid_datetime".into(),
                    message: "`send_at` must be an RFC 3339 date-time, e.g. 2026-12-01T09:30:00Z"
                        .into(),
                });
                None
            }
        },
    };
    let source = crate::templates::send_source(
        &state,
        &caller,
        request.to.as_deref(),
        request.contact_id.as_deref(),
        request.body.as_deref(),
        request.template_id.as_deref(),
        request.variables.as_ref(),
    )
    .await?;
    let send = SendRequest {
        to: source.to.clone(),
        to_number: None,
        body: source.body.clone(),
        kind: request.kind,
        from: request.from.clone(),
        send_at,
        max_segments: request.max_segments,
        truncate: request.truncate,
        smart_encoding: request.smart_encoding,
    };
    let engine = &state.engine;
    let prepared = engine.prepare(&caller.org, caller.scope(), Some(caller.key.id), &send);
    errors.extend(source.errors);
    let mut message = match prepared {
        Ok(message) if errors.is_empty() => message,
        Ok(_) => return Err(Problem::invalid_fields(errors)),
        Err(found) => {
            let explained = |e: &herald_engine::intake::FieldError| {
                e.code == "required"
                    && ((e.field == "body" && source.body_failed)
                        || (e.field == "to" && source.to_failed))
            };
            errors.extend(
                found
                    .into_iter()
                    .filter(|e| !explained(e))
                    .map(|e| FieldProblem {
                        field: e.field.into(),
                        code: e.code.into(),
                        message: e.message,
                    }),
            );
            return Err(Problem::invalid_fields(errors));
        }
    };

    if let Err(refused) = engine.check_destination(&caller.org, &message).await? {
        return Err(Problem::field(
            &problem::VALIDATION_FAILED,
            refused.field,
            refused.code,
            refused.message,
        ));
    }

    if engine
        .hold_for_quiet_hours(caller.org.id, &mut message)
        .await?
    {
        tracing::debug!(message_id = %message.id, "promotional message held for quiet hours");
    }
    let first_response = serde_json::to_vec(&MessageView::from(&message.initial_record()))
        .map_err(|e| Problem::internal("failed to render a message", &e))?;
    let idempotency = idempotency_key.map(|key| IdempotencyRecord {
        key,
        request_hash: request_hash(&request),
        response: first_response.clone(),
        expires_at: engine.clock.now() + engine.config.intake.idempotency_ttl,
    });
    match engine.accept(&message, idempotency.as_ref()).await? {
        Insertion::Created(created) => {
            tracing::info!(message_id = %created.id, to = %mask_phone(&created.to), status = %created.status, "message accepted");
            if let Some(template_id) = source.template_id {
                crate::templates::record_use(&state, caller.org.id, template_id).await;
            }
            // Suppressed on arrival: answer what was stored, not what was asked.
            let body = if created.status == message.initial_status() {
                first_response
            } else {
                serde_json::to_vec(&MessageView::from(created.as_ref()))
                    .map_err(|e| Problem::internal("failed to render a message", &e))?
            };
            let location = format!("/v1/messages/{}", created.id);
            Ok(crate::json_response(
                StatusCode::CREATED,
                body,
                Some(&location),
                false,
            ))
        }
        Insertion::Replayed {
            message_id,
            response,
        } => {
            // No response kept: the first answer was the stored record (suppressed on
            // arrival, which never changes), so render it again.
            let response = if response.is_empty() {
                let stored = engine
                    .store
                    .get_message(caller.scope(), message_id)
                    .await?
                    .ok_or_else(|| Problem::new(&problem::NOT_FOUND, "no such message"))?;
                serde_json::to_vec(&MessageView::from(&stored))
                    .map_err(|e| Problem::internal("failed to render a message", &e))?
            } else {
                response
            };
            let location = format!("/v1/messages/{message_id}");
            let response =
                crate::json_response(StatusCode::CREATED, response, Some(&location), true);
            Ok(response)
        }
        Insertion::Refused(refusal) => Err(Problem::refused(&refusal)),
        Insertion::KeyReused => Err(Problem::field(
            &problem::IDEMPOTENCY_KEY_REUSED,
            "Idempotency-Key",
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
    }
}

/// The same request, however its JSON was spelled, hashes the same.
fn request_hash(request: &CreateMessage) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"POST /v1/messages\n");
    hasher.update(serde_json::to_vec(request).unwrap_or_default());
    hasher.finalize().into()
}

/// Filters and paging for listing messages.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1–100 (default 20).
    pub limit: Option<String>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Only messages in this status.
    pub status: Option<String>,
    /// Only messages to this number (any format the API accepts for `to`).
    pub to: Option<String>,
    /// Only messages created after this time (RFC 3339, exclusive).
    pub created_after: Option<String>,
    /// Only messages created before this time (RFC 3339, exclusive).
    pub created_before: Option<String>,
    /// Only the messages of this broadcast.
    pub broadcast_id: Option<String>,
}

/// List messages, newest first.
#[utoipa::path(
    get,
    path = "/v1/messages",
    tag = "messages",
    params(ListQuery),
    responses(
        (status = 200, body = MessagePage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<MessagePage>, Problem> {
    let mut errors = Vec::new();
    let limit = paging::limit(query.limit.as_deref()).unwrap_or_else(|problem| {
        errors.push(problem);
        20
    });
    let after = paging::id_cursor(query.cursor.as_deref()).unwrap_or_else(|problem| {
        errors.push(problem);
        None
    });
    let mut invalid = |field: &str, code: &str, message: &str| {
        errors.push(FieldProblem {
            field: field.into(),
            code: code.into(),
            message: message.into(),
        });
    };
    let status = query.status.as_deref().and_then(|status| {
        let parsed = status.parse().ok();
        if parsed.is_none() {
            invalid(
                "status",
                "invalid_status",
                "`status` is not a message status",
            );
        }
        parsed
    });
    let to = query.to.as_deref().and_then(|to| {
        match PhoneNumber::parse(to, Some(caller.org.default_region)) {
            Ok(number) => Some(number.e164().to_owned()),
            Err(error) => {
                invalid(
                    "to",
                    error.code(),
                    &format!("`to` is not a valid phone number: {error}"),
                );
                None
            }
        }
    });
    let mut time = |field: &str, value: Option<&str>| {
        value.and_then(|text| {
            let parsed = text.parse::<Timestamp>().ok();
            if parsed.is_none() {
                invalid(
                    field,
                    "invalid_datetime",
                    &format!("`{field}` must be an RFC 3339 date-time"),
                );
            }
            parsed
        })
    };
    let created_after = time("created_after", query.created_after.as_deref());
    let created_before = time("created_before", query.created_before.as_deref());
    let broadcast_id = query.broadcast_id.as_deref().and_then(|raw| {
        let parsed = Uuid::parse_str(raw).ok();
        if parsed.is_none() {
            invalid(
                "broadcast_id",
                "invalid_id",
                "`broadcast_id` must be a broadcast id",
            );
        }
        parsed
    });
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }

    let filter = MessageFilter {
        status,
        to,
        created_after,
        created_before,
        broadcast_id,
    };
    let page = state
        .engine
        .store
        .list_messages(caller.scope(), &filter, after, limit)
        .await?;
    Ok(Json(MessagePage {
        data: page.items.iter().map(MessageView::from).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}

/// Path ids that are not UUIDs cannot name a message: that is a 404, not a 400.
fn message_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::new(&problem::NOT_FOUND, "no such message"))
}

/// Read a message with its full history.
#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    tag = "messages",
    params(("id" = Uuid, Path, description = "The message id")),
    responses(
        (status = 200, body = MessageView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, Problem> {
    let id = message_id(&id)?;
    let message = state.engine.store.get_message(caller.scope(), id).await?;
    message
        .map(|m| Json(MessageView::from(&m)))
        .ok_or_else(|| Problem::new(&problem::NOT_FOUND, "no such message"))
}

/// Cancel a scheduled or queued message.
///
/// Canceling a message that is already canceled returns it unchanged.
#[utoipa::path(
    post,
    path = "/v1/messages/{id}/cancel",
    tag = "messages",
    params(("id" = Uuid, Path, description = "The message id")),
    responses(
        (status = 200, description = "Canceled", body = MessageView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Too late: already handed to a provider", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn cancel_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, Problem> {
    let id = message_id(&id)?;
    let engine = &state.engine;
    match engine
        .store
        .cancel_message(caller.scope(), id, engine.clock.now())
        .await?
    {
        Ok(message) => Ok(Json(MessageView::from(&message))),
        Err(CancelRefusal::NotFound) => Err(Problem::new(&problem::NOT_FOUND, "no such message")),
        Err(CancelRefusal::TooLate(status)) => Err(Problem::new(
            &problem::NOT_CANCELABLE,
            format!("the message is {status}; only scheduled or queued messages can be canceled"),
        )
        .with_current_status(status.as_str())),
    }
}
