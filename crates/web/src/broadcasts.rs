//! Broadcasts, `/v1/broadcasts`: one message to a mixed set of recipients. The shape of the
//! request is checked here (each recipient entry with its path); what needs the store, the
//! resolution and the counting are the engine's ([`herald_engine::broadcasts`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use herald_engine::broadcasts::{
    self as engine_broadcasts, BroadcastError, BroadcastRequest, MAX_ENTRIES, Recipient, Started,
};
use herald_store::{Broadcast, BroadcastCancelRefusal, BroadcastCounts, BroadcastStatus};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
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
        .routes(routes!(create_broadcast, list_broadcasts))
        .routes(routes!(get_broadcast))
        .routes(routes!(cancel_broadcast))
}

/// A request to send one body or template to many recipients.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBroadcast {
    /// Up to 10,000 entries, each one of `{"type":"phone","phone":"+14155550100"}`,
    /// `{"type":"contact","id":…}`, `{"type":"list","id":…}`, `{"type":"segment","id":…}`,
    /// `{"type":"lead_status","status":"new"}`. A number reached twice is sent once.
    #[schema(value_type = Vec<Object>, example = json!([{"type": "phone", "phone": "+14155550100"}, {"type": "list", "id": "0190f7a4-7d4e-7c4a-9a65-3c1d2e4f5a6b"}]))]
    pub recipients: Option<Vec<Value>>,
    /// The text. Give this or `template_id`.
    pub body: Option<String>,
    /// A template, filled per recipient with the contact's fields and `variables`.
    pub template_id: Option<String>,
    /// Values for the template's variables, the same for every recipient; they win over the
    /// contact's fields.
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Map<String, Value>>,
    /// `transactional` (the default) or `promotional`: promotional messages go only to contacts
    /// who consented, and are held to the recipient's quiet hours.
    #[serde(rename = "type", default)]
    #[schema(value_type = String, example = "promotional")]
    pub kind: herald_domain::message::MessageType,
    /// The sender: an E.164 number, a short code, or an alphanumeric sender ID.
    pub from: Option<String>,
    /// When to send (RFC 3339). A future time schedules the messages.
    pub send_at: Option<String>,
}

/// What became of a broadcast's recipients. `requested` counts every individual recipient
/// resolved (each member of a list or segment); each is counted in exactly one other field, so
/// `requested = queued + duplicates + invalid + opted_out + no_consent + not_permitted +
/// not_sent` at all times.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountsView {
    pub requested: u64,
    pub queued: u64,
    /// A number already reached by an earlier recipient of the broadcast.
    pub duplicates: u64,
    /// Not a valid phone number, or no message could be made (a template variable the contact
    /// has no value for).
    pub invalid: u64,
    pub opted_out: u64,
    /// Promotional, and the recipient is not a contact who consented.
    pub no_consent: u64,
    /// A destination country the organization may not send to.
    pub not_permitted: u64,
    /// Resolved but never queued because the broadcast stopped (credits ran out).
    pub not_sent: u64,
}

impl From<&BroadcastCounts> for CountsView {
    fn from(c: &BroadcastCounts) -> Self {
        CountsView {
            requested: c.requested,
            queued: c.queued,
            duplicates: c.duplicates,
            invalid: c.invalid,
            opted_out: c.opted_out,
            no_consent: c.no_consent,
            not_permitted: c.not_permitted,
            not_sent: c.not_sent,
        }
    }
}

/// A broadcast and its counts. Its messages are listed by `GET /v1/messages?broadcast_id=…`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastView {
    pub id: Uuid,
    /// `resolving` (still being resolved in the background), `queued`, `partially_queued`
    /// (stopped by credits after some batches), `failed` or `canceled`.
    #[schema(example = "queued")]
    pub status: String,
    #[schema(value_type = String, example = "live")]
    pub mode: herald_domain::message::Mode,
    pub counts: CountsView,
    /// Queued messages canceled with the broadcast before they were handed to a provider (not
    /// one of the outcomes `requested` adds up to: they were queued first).
    pub canceled: u64,
    /// Why it stopped: `insufficient_credits`, `spend_limit_reached`…
    pub error: Option<String>,
    /// The request as accepted.
    #[schema(value_type = Object)]
    pub request: Value,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

impl From<&Broadcast> for BroadcastView {
    fn from(b: &Broadcast) -> Self {
        BroadcastView {
            id: b.id,
            status: b.status.as_str().to_owned(),
            mode: b.mode,
            counts: CountsView::from(&b.counts),
            canceled: b.canceled,
            error: b.error.clone(),
            request: b.request.clone(),
            created_at: b.created_at,
            finished_at: b.finished_at,
        }
    }
}

/// A page of broadcasts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastPage {
    pub data: Vec<BroadcastView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One recipient entry, or what is wrong with it (fields named `recipients[i].…`).
fn recipient(i: usize, entry: &Value, errors: &mut Vec<FieldProblem>) -> Option<Recipient> {
    let at = |name: &str| format!("recipients[{i}].{name}");
    let Some(object) = entry.as_object() else {
        errors.push(FieldProblem::new(
            format!("recipients[{i}]"),
            "invalid_recipient",
            "each recipient is an object with a `type`",
        ));
        return None;
    };
    let Some(kind) = object.get("type").and_then(Value::as_str) else {
        errors.push(FieldProblem::new(
            at("type"),
            "required",
            "`type` is one of phone, contact, list, segment, lead_status",
        ));
        return None;
    };
    let key = match kind {
        "phone" => "phone",
        "contact" | "list" | "segment" => "id",
        "lead_status" => "status",
        _ => {
            errors.push(FieldProblem::new(
                at("type"),
                "invalid_type",
                "`type` is one of phone, contact, list, segment, lead_status",
            ));
            return None;
        }
    };
    let mut ok = true;
    for name in object.keys() {
        if name != "type" && name != key {
            errors.push(FieldProblem::new(
                at(name),
                "unknown_field",
                format!("a `{kind}` recipient has only `type` and `{key}`"),
            ));
            ok = false;
        }
    }
    let text = match object.get(key).and_then(Value::as_str).map(str::trim) {
        Some(text) if !text.is_empty() => text,
        _ => {
            errors.push(FieldProblem::new(
                at(key),
                "required",
                format!("`{key}` is required and must be a non-empty string"),
            ));
            return None;
        }
    };
    if !ok {
        return None;
    }
    if key == "id" {
        let Ok(id) = Uuid::parse_str(text) else {
            errors.push(FieldProblem::new(
                at("id"),
                "invalid_id",
                "`id` must be a UUID",
            ));
            return None;
        };
        return Some(match kind {
            "contact" => Recipient::Contact(id),
            "list" => Recipient::List(id),
            _ => Recipient::Segment(id),
        });
    }
    Some(if kind == "phone" {
        Recipient::Phone(text.to_owned())
    } else {
        Recipient::LeadStatus(text.to_owned())
    })
}

fn accepted(view: &BroadcastView, replayed: bool) -> Result<Response, Problem> {
    let body = serde_json::to_vec(view)
        .map_err(|e| Problem::internal("failed to render a broadcast", &e))?;
    let location = format!("/v1/broadcasts/{}", view.id);
    Ok(crate::json_response(
        StatusCode::ACCEPTED,
        body,
        Some(&location),
        replayed,
    ))
}

/// Send a broadcast.
///
/// The whole request is validated first (every recipient entry; ids must name the
/// organization's contacts, lists and segments). Small broadcasts (only phone and contact
/// entries, at most 1,000) are resolved and queued before the answer, all or nothing: credits
/// that do not cover them answer 402 and nothing is queued. Larger ones answer `resolving` at
/// once and are resolved in batches of 1,000 in the background; a batch the credits do not
/// cover stops the broadcast (`partially_queued`, or `failed` when nothing was queued, with
/// `error: insufficient_credits`), the batches before it stay queued and the refused batch's
/// recipients are counted `not_sent`. With an `Idempotency-Key`, repeating the same request
/// within 24 hours answers the same broadcast as it now is.
#[utoipa::path(
    post,
    path = "/v1/broadcasts",
    tag = "broadcasts",
    request_body = CreateBroadcast,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours answer the same broadcast.")),
    responses(
        (status = 202, description = "Accepted: queued, or being resolved in the background", body = BroadcastView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 402, description = "Not enough credits, or the monthly spend limit would be passed; nothing was queued", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (named like `recipients[3].id`), or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_broadcast(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<CreateBroadcast>,
) -> Result<Response, Problem> {
    let mut errors = Vec::new();
    let mut recipients = Vec::new();
    match &body.recipients {
        None => errors.push(FieldProblem::new(
            "recipients",
            "required",
            "`recipients` is required",
        )),
        Some(entries) if entries.len() > MAX_ENTRIES => errors.push(FieldProblem::new(
            "recipients",
            "too_many_recipients",
            format!("`recipients` holds at most {MAX_ENTRIES} entries; use a list or segment"),
        )),
        Some(entries) => {
            for (i, entry) in entries.iter().enumerate() {
                if let Some(r) = recipient(i, entry, &mut errors) {
                    recipients.push(r);
                }
            }
        }
    }
    let template_id = body.template_id.as_deref().and_then(|raw| {
        let parsed = Uuid::parse_str(raw.trim()).ok();
        if parsed.is_none() {
            errors.push(FieldProblem::new(
                "template_id",
                "unknown_template",
                "`template_id` names no template of this organization",
            ));
        }
        parsed
    });
    let send_at = body.send_at.as_deref().and_then(|text| {
        let parsed = text.parse::<Timestamp>().ok();
        if parsed.is_none() {
            errors.push(FieldProblem::new(
                "send_at",
                "invalid_datetime",
                "`send_at` must be an RFC 3339 date-time, e.g. 2026-12-01T09:30:00Z",
            ));
        }
        parsed
    });
    if body.body.is_some() && body.template_id.is_some() {
        errors.push(FieldProblem::new(
            "template_id",
            "body_or_template",
            "give `body` or `template_id`, not both",
        ));
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }

    let engine = &state.engine;
    let request_json = serde_json::to_value(&body)
        .map_err(|e| Problem::internal("failed to read a request", &e))?;
    // A replay answers the broadcast as it is then, not this first snapshot.
    let idempotency = crate::lists::replay_key(
        &state,
        idempotency_key,
        "POST /v1/broadcasts",
        &request_json,
    );
    let request = BroadcastRequest {
        recipients,
        body: body.body.clone(),
        template_id,
        variables: body.variables.clone().unwrap_or_default(),
        kind: body.kind,
        from: body.from.clone(),
        send_at,
    };
    let started = engine_broadcasts::start(
        engine,
        &caller.org,
        caller.scope(),
        Some(caller.key.id),
        request,
        request_json,
        idempotency,
    )
    .await;
    match started {
        Ok(Started::Done(broadcast)) | Ok(Started::Background(broadcast)) => {
            tracing::info!(broadcast_id = %broadcast.id, status = %broadcast.status, "broadcast accepted");
            if let (Some(template_id), true) = (template_id, broadcast.counts.queued > 0) {
                crate::templates::record_use(&state, caller.org.id, template_id).await;
            }
            accepted(&BroadcastView::from(&broadcast), false)
        }
        Ok(Started::Replayed(id)) => {
            let broadcast = engine
                .store
                .get_broadcast(caller.scope(), id)
                .await?
                .ok_or_else(|| Problem::new(&problem::NOT_FOUND, "no such broadcast"))?;
            accepted(&BroadcastView::from(&broadcast), true)
        }
        Ok(Started::KeyReused) => Err(crate::lists::key_reused()),
        Err(BroadcastError::Invalid(found)) => Err(Problem::invalid_fields(
            found.into_iter().map(FieldProblem::from).collect(),
        )),
        Err(BroadcastError::Refused(refusal)) => Err(Problem::refused(&refusal)),
        Err(BroadcastError::Store(error)) => Err(error.into()),
    }
}

/// Path ids that are not UUIDs cannot name a broadcast: that is a 404, not a 400.
fn broadcast_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::new(&problem::NOT_FOUND, "no such broadcast"))
}

/// Read a broadcast with its counts.
#[utoipa::path(
    get,
    path = "/v1/broadcasts/{id}",
    tag = "broadcasts",
    params(("id" = Uuid, Path, description = "The broadcast id")),
    responses(
        (status = 200, body = BroadcastView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_broadcast(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BroadcastView>, Problem> {
    let id = broadcast_id(&id)?;
    let broadcast = state.engine.store.get_broadcast(caller.scope(), id).await?;
    broadcast
        .map(|b| Json(BroadcastView::from(&b)))
        .ok_or_else(|| Problem::new(&problem::NOT_FOUND, "no such broadcast"))
}

/// Cancel a broadcast.
///
/// Resolution stops (no further batch is queued) and every message of the broadcast not yet
/// handed to a provider, queued or scheduled, is canceled and its credits released; messages
/// already being sent are not recalled. Answers the broadcast with `canceled` counting the
/// messages stopped. Canceling a canceled broadcast returns it unchanged.
#[utoipa::path(
    post,
    path = "/v1/broadcasts/{id}/cancel",
    tag = "broadcasts",
    params(("id" = Uuid, Path, description = "The broadcast id")),
    responses(
        (status = 200, description = "Canceled", body = BroadcastView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "It failed before anything was queued", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn cancel_broadcast(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BroadcastView>, Problem> {
    let id = broadcast_id(&id)?;
    let engine = &state.engine;
    let not_found = || Problem::new(&problem::NOT_FOUND, "no such broadcast");
    match engine
        .store
        .cancel_broadcast(caller.scope(), id, engine.clock.now())
        .await?
    {
        Ok(broadcast) => {
            tracing::info!(broadcast_id = %id, canceled = broadcast.canceled, "broadcast canceled");
            Ok(Json(BroadcastView::from(&broadcast)))
        }
        Err(BroadcastCancelRefusal::NotFound) => Err(not_found()),
        Err(BroadcastCancelRefusal::Final(BroadcastStatus::Canceled)) => engine
            .store
            .get_broadcast(caller.scope(), id)
            .await?
            .map(|b| Json(BroadcastView::from(&b)))
            .ok_or_else(not_found),
        Err(BroadcastCancelRefusal::Final(status)) => Err(Problem::new(
            &problem::BROADCAST_NOT_CANCELABLE,
            format!("the broadcast is {status}; nothing of it was queued"),
        )
        .with_current_status(status.as_str())),
    }
}

/// List broadcasts, newest first.
#[utoipa::path(
    get,
    path = "/v1/broadcasts",
    tag = "broadcasts",
    params(ListQuery),
    responses(
        (status = 200, body = BroadcastPage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_broadcasts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<BroadcastPage>, Problem> {
    let (limit, after) = paging::params(&query, paging::id_cursor)?;
    let page = state
        .engine
        .store
        .list_broadcasts(caller.scope(), after, limit)
        .await?;
    Ok(Json(BroadcastPage {
        data: page.items.iter().map(BroadcastView::from).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}
