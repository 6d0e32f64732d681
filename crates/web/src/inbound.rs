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
