//! Contacts, `/v1/contacts`: the people an organization sends to — create, list with filters,
//! read, change, delete; CSV import (streamed, with a per-row report) and export (CSV or JSON,
//! streamed); a person's data export and erasure (GDPR); and the organization's lead statuses.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use herald_engine::contacts::{self, ContactInput, ImportError, Progress};
use herald_store::{
    AudienceCreation, Contact, ContactFilter, ContactImport, ContactRefusal, IdempotencyRecord,
    InboundMessage, Message, MessageFilter, RowError, Scope, Store,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::io::{StreamReader, SyncIoBridge};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::lists::{creation, request_hash};
use crate::paging::{self, ListQuery};
use crate::problem::{self, FieldProblem, Problem, ProblemBody};
use crate::providers::{field_problems, present};

/// Largest CSV file an import reads: it is streamed, so this bounds time, not memory.
const MAX_IMPORT_BYTES: usize = 4 * 1024 * 1024 * 1024;
/// Contacts read per query while exporting.
const EXPORT_PAGE: u32 = 100;

/// This module's routes, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    let imports = OpenApiRouter::new()
        .routes(routes!(import_contacts))
        .layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES));
    OpenApiRouter::new()
        .routes(routes!(create_contact, list_contacts))
        .routes(routes!(export_contacts))
        .routes(routes!(get_contact, update_contact, delete_contact))
        .routes(routes!(export_contact_data))
        .routes(routes!(get_import))
        .routes(routes!(list_import_errors))
        .routes(routes!(get_lead_statuses, set_lead_statuses))
        .merge(imports)
}

/// A contact to create, or the fields of one to change. Fields left out stay as they are;
/// `null` clears one.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactBody {
    /// E.164, or national in the organization's region. Required on creation.
    #[schema(example = "+14155550100")]
    pub phone: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "Ada")]
    pub first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "Lovelace")]
    pub last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "ada@example.com")]
    pub email: Option<Option<String>>,
    /// IANA time zone; quiet hours use it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "Europe/London")]
    pub time_zone: Option<Option<String>>,
    /// BCP 47 language tag.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "en")]
    pub language: Option<Option<String>>,
    /// One of the organization's lead statuses (default: the first, `new`).
    #[schema(example = "new")]
    pub lead_status: Option<String>,
    /// Replace the tags.
    pub tags: Option<Vec<String>>,
    /// Merged key by key into the custom fields; `null` removes a key. Values are strings,
    /// numbers or booleans.
    #[schema(value_type = Option<Object>, example = json!({"total_sales": 52000}))]
    pub custom: Option<Map<String, Value>>,
    /// Consent to promotional messages.
    pub consent: Option<bool>,
    /// Where the consent was given (a form, a call); default `api`.
    pub consent_source: Option<String>,
}

impl From<ContactBody> for ContactInput {
    fn from(b: ContactBody) -> ContactInput {
        ContactInput {
            phone: b.phone,
            first_name: b.first_name,
            last_name: b.last_name,
            email: b.email,
            time_zone: b.time_zone,
            language: b.language,
            lead_status: b.lead_status,
            tags: b.tags,
            custom: b.custom,
            consent: b.consent,
            consent_source: b.consent_source,
        }
    }
}

/// A contact.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContactView {
    pub id: Uuid,
    pub phone: String,
    /// ISO 3166 country of the number.
    pub country: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub time_zone: Option<String>,
    pub language: Option<String>,
    pub lead_status: String,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub custom: Map<String, Value>,
    pub consent: bool,
    pub consent_source: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub consent_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<Contact> for ContactView {
    fn from(c: Contact) -> ContactView {
        ContactView {
            id: c.id,
            phone: c.phone,
            country: c.country.map(|r| r.as_str().to_owned()),
            first_name: c.first_name,
            last_name: c.last_name,
            email: c.email,
            time_zone: c.time_zone,
            language: c.language,
            lead_status: c.lead_status,
            tags: c.tags,
            custom: c.custom,
            consent: c.consent,
            consent_source: c.consent_source,
            consent_at: c.consent_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// A page of contacts, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactPage {
    pub data: Vec<ContactView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

fn not_found() -> Problem {
    Problem::new(&problem::NOT_FOUND, "no such contact")
}

/// Path ids that are not UUIDs cannot name a contact: that is a 404, not a 400.
fn path_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| not_found())
}

fn phone_taken(existing: Uuid) -> Problem {
    Problem::field(
        &problem::PHONE_TAKEN,
        "phone",
        "phone_taken",
        format!("contact {existing} already has this phone number"),
    )
}

/// Add a contact.
///
/// The phone number is unique within the organization: adding a number twice is a 409 that
/// names the existing contact, so a retried request never makes a second contact. With an
/// `Idempotency-Key`, repeating the same request within 24 hours returns the original response
/// (marked `idempotent-replayed: true`) instead of that 409.
#[utoipa::path(
    post,
    path = "/v1/contacts",
    tag = "audience",
    request_body = ContactBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and request within 24 hours return the first response.")),
    responses(
        (status = 201, description = "Created", body = ContactView),
        (status = 400, description = "Malformed JSON, unknown field or malformed Idempotency-Key", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The number is already a contact", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or an idempotency key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn create_contact(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<ContactBody>,
) -> Result<Response, Problem> {
    // Hashed as parsed (validation consumes the body): a retry spelled differently matches.
    let hash = request_hash(
        "POST /v1/contacts",
        &serde_json::to_value(&body).unwrap_or_default(),
    );
    let store = &state.engine.store;
    let statuses = store.lead_statuses(caller.org.id).await?;
    let valid =
        contacts::validate(&body.into(), &caller.org, &statuses, true).map_err(field_problems)?;
    let phone = valid.phone.expect("required on creation");
    let now = state.engine.clock.now();
    let mut contact = Contact::new(caller.org.id, phone.e164(), phone.region(), now);
    if let Some(first) = statuses.first() {
        contact.lead_status.clone_from(first);
    }
    let mut patch = valid.patch;
    if let Some((consent, None)) = &patch.consent {
        patch.consent = Some((*consent, Some("api".into())));
    }
    patch.apply(&mut contact, now);
    contact.updated_at = now;
    let first_response = serde_json::to_vec(&ContactView::from(contact.clone()))
        .map_err(|e| Problem::internal("failed to render a contact", &e))?;
    let idempotency = idempotency_key.map(|key| IdempotencyRecord {
        key,
        request_hash: hash,
        response: first_response.clone(),
        expires_at: now + state.engine.config.intake.idempotency_ttl,
    });
    match store
        .create_contact(&contact, idempotency.as_ref(), now)
        .await?
    {
        Ok(outcome) => {
            if outcome == AudienceCreation::Created {
                tracing::info!(contact_id = %contact.id, org_id = %caller.org.id, "contact created");
            }
            creation(outcome, first_response, contact.id, "/v1/contacts")
        }
        Err(ContactRefusal::PhoneTaken { existing }) => Err(phone_taken(existing)),
        Err(_) => Err(not_found()),
    }
}

/// Filters and paging for the contact list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContactQuery {
    /// Page size, 1–100 (default 20).
    pub limit: Option<String>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Only contacts with this tag.
    pub tag: Option<String>,
    /// Only contacts in this lead status.
    pub lead_status: Option<String>,
    /// Only contacts whose name or number contains this text (any case).
    pub q: Option<String>,
    /// Only contacts created at or after this time (RFC 3339).
    pub created_after: Option<String>,
    /// Only contacts created before this time (RFC 3339).
    pub created_before: Option<String>,
    /// Export format: `csv` (default) or `json`. Only for `/v1/contacts/export`.
    pub format: Option<String>,
}

fn filter(query: &ContactQuery, errors: &mut Vec<FieldProblem>) -> ContactFilter {
    let mut time = |field: &str, value: Option<&str>| {
        value.and_then(|text| {
            let parsed = text.parse::<Timestamp>().ok();
            if parsed.is_none() {
                errors.push(FieldProblem {
                    field: field.into(),
                    code: "invalid_datetime".into(),
                    message: format!("`{field}` must be an RFC 3339 date-time"),
                });
            }
            parsed
        })
    };
    let created_from = time("created_after", query.created_after.as_deref());
    let created_to = time("created_before", query.created_before.as_deref());
    let text = |value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    ContactFilter {
        tag: text(&query.tag),
        lead_status: text(&query.lead_status),
        search: text(&query.q),
        created_from,
        created_to,
    }
}

/// List contacts, oldest first, with filters.
#[utoipa::path(
    get,
    path = "/v1/contacts",
    tag = "audience",
    params(ContactQuery),
    responses(
        (status = 200, body = ContactPage),
        (status = 400, description = "Unknown query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter, limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_contacts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ContactQuery>,
) -> Result<Json<ContactPage>, Problem> {
    let mut errors = Vec::new();
    let limit = paging::limit(query.limit.as_deref()).unwrap_or_else(|p| {
        errors.push(p);
        20
    });
    let after = paging::id_cursor(query.cursor.as_deref()).unwrap_or_else(|p| {
        errors.push(p);
        None
    });
    let filter = filter(&query, &mut errors);
    if query.format.is_some() {
        errors.push(FieldProblem {
            field: "format".into(),
            code: "unknown_parameter".into(),
            message: "`format` is only for /v1/contacts/export".into(),
        });
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let page = state
        .engine
        .store
        .list_contacts(caller.org.id, &filter, after, limit)
        .await?;
    Ok(Json(ContactPage {
        data: page.items.into_iter().map(ContactView::from).collect(),
        next_cursor: page.next.map(paging::encode),
    }))
}

/// Read a contact.
#[utoipa::path(
    get,
    path = "/v1/contacts/{id}",
    tag = "audience",
    params(("id" = Uuid, Path, description = "The contact id")),
    responses(
        (status = 200, body = ContactView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_contact(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ContactView>, Problem> {
    let id = path_id(&id)?;
    let contact = state.engine.store.get_contact(caller.org.id, id).await?;
    contact
        .map(|c| Json(ContactView::from(c)))
        .ok_or_else(not_found)
}

/// Change a contact.
///
/// Only the fields given change; `custom` merges key by key. Concurrent changes to the same
/// contact are applied one after the other, never lost.
#[utoipa::path(
    patch,
    path = "/v1/contacts/{id}",
    tag = "audience",
    params(("id" = Uuid, Path, description = "The contact id")),
    request_body = ContactBody,
    responses(
        (status = 200, body = ContactView),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Another contact has the new number", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn update_contact(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ContactBody>,
) -> Result<Json<ContactView>, Problem> {
    let id = path_id(&id)?;
    let store = &state.engine.store;
    let statuses = store.lead_statuses(caller.org.id).await?;
    let valid =
        contacts::validate(&body.into(), &caller.org, &statuses, false).map_err(field_problems)?;
    // A change made between our read and our write is not overwritten: read again and
    // re-apply, a few times at most.
    for attempt in 0..crate::audience::UPDATE_ATTEMPTS {
        if attempt > 0 {
            crate::audience::back_off(attempt).await;
        }
        let Some(mut contact) = store.get_contact(caller.org.id, id).await? else {
            return Err(not_found());
        };
        let read_at = contact.updated_at;
        let now = state.engine.clock.now().max(read_at);
        let mut changed = valid.patch.apply(&mut contact, now);
        if let Some(phone) = &valid.phone
            && phone.e164() != contact.phone
        {
            contact.phone = phone.e164().to_owned();
            contact.country = phone.region();
            changed = true;
        }
        if !changed {
            return Ok(Json(ContactView::from(contact)));
        }
        // Two changes within one clock tick must still differ in `updated_at`.
        if contact.updated_at == read_at {
            contact.updated_at = read_at + jiff::SignedDuration::from_micros(1);
        }
        match store.update_contact(&contact, read_at).await? {
            Ok(()) => return Ok(Json(ContactView::from(contact))),
            Err(ContactRefusal::Stale) => continue,
            Err(ContactRefusal::PhoneTaken { existing }) => return Err(phone_taken(existing)),
            Err(ContactRefusal::NotFound) => return Err(not_found()),
        }
    }
    Err(Problem::new(
        &problem::UNAVAILABLE,
        "the contact is being changed by other requests; retry",
    ))
}

/// How to delete.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// `true` erases the person (GDPR): their number and message texts are removed from
    /// every message to and from them, keeping only anonymous counts and costs. An opt-out
    /// stays in force under a one-way key.
    pub erase: Option<String>,
}

/// What an erasure removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureView {
    pub erased: bool,
    /// Messages to the person whose number and text were redacted.
    pub messages_redacted: u64,
    /// Messages from the person whose number and text were redacted.
    pub inbound_redacted: u64,
}

/// Delete a contact, or erase the person.
#[utoipa::path(
    delete,
    path = "/v1/contacts/{id}",
    tag = "audience",
    params(("id" = Uuid, Path, description = "The contact id"), DeleteQuery),
    responses(
        (status = 200, description = "Erased", body = ErasureView),
        (status = 204, description = "Deleted"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "`erase` is not true or false", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn delete_contact(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Response, Problem> {
    let id = path_id(&id)?;
    let erase = match query.erase.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(Problem::field(
                &problem::VALIDATION_FAILED,
                "erase",
                "invalid_boolean",
                "`erase` is `true` or `false`",
            ));
        }
    };
    let store = &state.engine.store;
    if erase {
        let now = state.engine.clock.now();
        let erasure = store
            .erase_contact(caller.org.id, id, now)
            .await?
            .ok_or_else(not_found)?;
        tracing::info!(contact_id = %id, org_id = %caller.org.id, messages = erasure.messages, inbound = erasure.inbound, "contact erased");
        return Ok(Json(ErasureView {
            erased: true,
            messages_redacted: erasure.messages,
            inbound_redacted: erasure.inbound,
        })
        .into_response());
    }
    if store.delete_contact(caller.org.id, id).await? {
        tracing::info!(contact_id = %id, org_id = %caller.org.id, "contact deleted");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found())
    }
}

/// A message to the person, as their data export shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedMessage {
    pub id: Uuid,
    /// `live` or `test`.
    pub mode: String,
    pub body: String,
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A message from the person.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedInbound {
    pub id: Uuid,
    pub body: String,
    #[schema(value_type = String, format = DateTime)]
    pub received_at: Timestamp,
}

/// The person's opt-out, if they opted out.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedOptOut {
    pub source: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Everything Herald holds about one person.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactExport {
    pub contact: ContactView,
    pub messages: Vec<ExportedMessage>,
    pub inbound: Vec<ExportedInbound>,
    pub opt_out: Option<ExportedOptOut>,
    /// Every change to the number's place on the suppression list, oldest first.
    pub opt_out_history: Vec<crate::opt_outs::OptOutEventView>,
}

async fn messages_to(
    store: &dyn Store,
    org_id: Uuid,
    phone: &str,
) -> Result<Vec<ExportedMessage>, Problem> {
    let mut out = Vec::new();
    for mode in [
        herald_domain::message::Mode::Live,
        herald_domain::message::Mode::Test,
    ] {
        let scope = Scope { org_id, mode };
        let filter = MessageFilter {
            to: Some(phone.to_owned()),
            ..MessageFilter::default()
        };
        let mut after = None;
        loop {
            let page = store.list_messages(scope, &filter, after, 100).await?;
            out.extend(page.items.into_iter().map(|m: Message| ExportedMessage {
                id: m.id,
                mode: mode.as_str().to_owned(),
                body: m.body,
                status: m.status.as_str().to_owned(),
                created_at: m.created_at,
            }));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(out)
}

async fn inbound_from(
    store: &dyn Store,
    org_id: Uuid,
    phone: &str,
) -> Result<Vec<ExportedInbound>, Problem> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_inbound(org_id, after, 100).await?;
        out.extend(
            page.items
                .into_iter()
                .filter(|m: &InboundMessage| m.from == phone)
                .map(|m| ExportedInbound {
                    id: m.id,
                    body: m.body,
                    received_at: m.received_at,
                }),
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(out)
}

/// Export everything Herald holds about a contact (GDPR access request): the contact, its
/// consent, every message to and from its number, and its opt-out.
#[utoipa::path(
    get,
    path = "/v1/contacts/{id}/export",
    tag = "audience",
    params(("id" = Uuid, Path, description = "The contact id")),
    responses(
        (status = 200, body = ContactExport),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn export_contact_data(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ContactExport>, Problem> {
    let id = path_id(&id)?;
    let store = state.engine.store.as_ref();
    let contact = store
        .get_contact(caller.org.id, id)
        .await?
        .ok_or_else(not_found)?;
    let messages = messages_to(store, caller.org.id, &contact.phone).await?;
    let inbound = inbound_from(store, caller.org.id, &contact.phone).await?;
    let opt_out = store
        .opted_out_among(caller.org.id, std::slice::from_ref(&contact.phone))
        .await?
        .into_iter()
        .next()
        .map(|o| ExportedOptOut {
            source: o.source,
            created_at: o.created_at,
        });
    let opt_out_history = store
        .opt_out_history(caller.org.id, &contact.phone)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(ContactExport {
        contact: ContactView::from(contact),
        messages,
        inbound,
        opt_out,
        opt_out_history,
    }))
}

/// The columns of a CSV export, in order; `custom.*` columns follow, one per custom field
/// found on the page being written.
const EXPORT_COLUMNS: [&str; 14] = [
    "id",
    "phone",
    "country",
    "first_name",
    "last_name",
    "email",
    "time_zone",
    "language",
    "lead_status",
    "tags",
    "consent",
    "consent_source",
    "consent_at",
    "created_at",
];

/// Export contacts as CSV or JSON (an array), streamed page by page, with the same filters as
/// the list. CSV puts custom fields in one `custom` column as JSON, so every row has the same
/// columns whatever fields each contact has; the file imports back as it is.
#[utoipa::path(
    get,
    path = "/v1/contacts/export",
    tag = "audience",
    params(ContactQuery),
    responses(
        (status = 200, description = "The contacts: CSV, or a JSON array of contacts with `format=json`", body = String, content_type = "text/csv"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter or format", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn export_contacts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ContactQuery>,
) -> Result<Response, Problem> {
    let mut errors = Vec::new();
    let filter = filter(&query, &mut errors);
    let json = match query.format.as_deref() {
        None | Some("csv") => false,
        Some("json") => true,
        Some(_) => {
            errors.push(FieldProblem {
                field: "format".into(),
                code: "invalid_format".into(),
                message: "`format` is `csv` or `json`".into(),
            });
            false
        }
    };
    for (field, given) in [("limit", &query.limit), ("cursor", &query.cursor)] {
        if given.is_some() {
            errors.push(FieldProblem {
                field: field.into(),
                code: "unknown_parameter".into(),
                message: format!("an export has every contact; `{field}` is for the list"),
            });
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    let store = state.engine.store.clone();
    let org_id = caller.org.id;
    // Pages are read as the client reads: memory holds one page, whatever the total.
    let pages = futures::stream::try_unfold((Some(None::<Uuid>), true), move |(cursor, first)| {
        let store = store.clone();
        let filter = filter.clone();
        async move {
            let Some(after) = cursor else {
                return Ok::<_, std::io::Error>(None);
            };
            let page = store
                .list_contacts(org_id, &filter, after, EXPORT_PAGE)
                .await
                .map_err(std::io::Error::other)?;
            let last = page.next.is_none();
            let chunk = if json {
                json_chunk(page.items, first, last)
            } else {
                csv_chunk(page.items, first)
            }?;
            let next = page.next.map(Some);
            Ok(Some((chunk, (next, false))))
        }
    });
    let (content_type, name) = if json {
        ("application/json", "contacts.json")
    } else {
        ("text/csv; charset=utf-8", "contacts.csv")
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(pages),
    )
        .into_response())
}

fn json_chunk(items: Vec<Contact>, first: bool, last: bool) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if first {
        out.push(b'[');
    }
    for (i, contact) in items.into_iter().enumerate() {
        if !(first && i == 0) {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &ContactView::from(contact))?;
    }
    if last {
        out.push(b']');
    }
    Ok(out)
}

fn csv_chunk(items: Vec<Contact>, first: bool) -> std::io::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    if first {
        writer.write_record(EXPORT_COLUMNS.iter().chain(&["custom"]))?;
    }
    let time = |t: Option<Timestamp>| t.map(|t| t.to_string()).unwrap_or_default();
    for c in items {
        writer.write_record([
            c.id.to_string(),
            c.phone,
            c.country.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            c.first_name.unwrap_or_default(),
            c.last_name.unwrap_or_default(),
            c.email.unwrap_or_default(),
            c.time_zone.unwrap_or_default(),
            c.language.unwrap_or_default(),
            c.lead_status,
            c.tags.join(";"),
            c.consent.to_string(),
            c.consent_source.unwrap_or_default(),
            time(c.consent_at),
            c.created_at.to_string(),
            Value::Object(c.custom).to_string(),
        ])?;
    }
    writer
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// How to read an import's columns.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Column mapping, `Header:field` pairs separated by commas (e.g.
    /// `Mobile:phone,Sales:custom.total_sales,Notes:ignore`). Unmapped headers are read by
    /// their own names (`phone`, `first_name`, `last_name`, `email`, `time_zone`, `language`,
    /// `lead_status`, `tags`, `consent`, `consent_source`, `custom.<name>`, and common aliases).
    pub map: Option<String>,
}

/// An import and what it did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportView {
    pub id: Uuid,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// Data rows read.
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Rows refused; `errors_url` lists why.
    pub invalid: u64,
    /// Why a failed import stopped; rows before that point were imported.
    pub error: Option<String>,
    pub errors_url: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

impl From<ContactImport> for ImportView {
    fn from(i: ContactImport) -> ImportView {
        ImportView {
            id: i.id,
            status: i.status.as_str().to_owned(),
            rows: i.rows,
            created: i.created,
            updated: i.updated,
            unchanged: i.unchanged,
            invalid: i.invalid,
            error: i.error,
            errors_url: format!("/v1/contacts/imports/{}/errors", i.id),
            created_at: i.created_at,
            finished_at: i.finished_at,
        }
    }
}

fn mapping(raw: Option<&str>) -> Result<HashMap<String, String>, Problem> {
    let mut map = HashMap::new();
    for pair in raw
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let Some((column, field)) = pair.rsplit_once(':') else {
            return Err(Problem::field(
                &problem::VALIDATION_FAILED,
                "map",
                "invalid_mapping",
                "`map` is `Header:field` pairs separated by commas",
            ));
        };
        if contacts::Column::parse(field).is_none() {
            return Err(Problem::field(
                &problem::VALIDATION_FAILED,
                "map",
                "unknown_field",
                format!(
                    "`map` maps a column to `{}`, which is not a contact field",
                    field.trim()
                ),
            ));
        }
        map.insert(column.trim().to_owned(), field.trim().to_owned());
    }
    Ok(map)
}

/// Import contacts from a CSV file.
///
/// Send the file as the body with `Content-Type: text/csv`; it is read as it arrives, so its
/// size is not limited by memory. The first row names the columns. Each row creates a contact,
/// or updates the contact with its number (empty cells leave fields as they are). Rows that
/// cannot be used are skipped and listed, with their line number and the reason, at
/// `errors_url`. Rows are committed in batches of 1,000; the answer comes when the file is
/// read.
#[utoipa::path(
    post,
    path = "/v1/contacts/imports",
    tag = "audience",
    params(ImportQuery),
    request_body(content = String, content_type = "text/csv", example = "phone,first_name,custom.total_sales\n+14155550100,Ada,52000\n"),
    responses(
        (status = 201, description = "Imported (see `status` and `invalid`)", body = ImportView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not `text/csv`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The header or mapping cannot be used; nothing was imported", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn import_contacts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ImportQuery>,
    request: Request,
) -> Result<Response, Problem> {
    let is_csv = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/csv"));
    if !is_csv {
        return Err(Problem::new(
            &problem::UNSUPPORTED_MEDIA_TYPE,
            "send the file as the body with `Content-Type: text/csv`",
        ));
    }
    let mapping = mapping(query.map.as_deref())?;
    let stream = request
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let engine = &state.engine;
    let import = contacts::import_csv(
        engine.store.clone(),
        engine.clock.clone(),
        caller.org.clone(),
        reader,
        mapping,
        Progress::default(),
    )
    .await
    .map_err(|error| match error {
        ImportError::Header(errors) => field_problems(errors),
        ImportError::Store(error) => error.into(),
    })?;
    let view = ImportView::from(import);
    let mut response = (StatusCode::CREATED, Json(&view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/contacts/imports/{}", view.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Read an import.
#[utoipa::path(
    get,
    path = "/v1/contacts/imports/{id}",
    tag = "audience",
    params(("id" = Uuid, Path, description = "The import id")),
    responses(
        (status = 200, body = ImportView),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_import(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ImportView>, Problem> {
    let not_found = || Problem::new(&problem::NOT_FOUND, "no such import");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let import = state
        .engine
        .store
        .get_contact_import(caller.org.id, id)
        .await?;
    import
        .map(|i| Json(ImportView::from(i)))
        .ok_or_else(not_found)
}

/// One refused row.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RowErrorView {
    /// The line in the file; the header is line 1.
    pub row: u64,
    pub field: String,
    pub code: String,
    pub message: String,
}

impl From<RowError> for RowErrorView {
    fn from(e: RowError) -> RowErrorView {
        RowErrorView {
            row: e.row,
            field: e.field,
            code: e.code,
            message: e.message,
        }
    }
}

/// A page of an import's refused rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowErrorPage {
    pub data: Vec<RowErrorView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// List the rows an import refused, by line. With `Accept: text/csv` the whole report comes
/// as one CSV file.
#[utoipa::path(
    get,
    path = "/v1/contacts/imports/{id}/errors",
    tag = "audience",
    params(("id" = Uuid, Path, description = "The import id"), ListQuery),
    responses(
        (status = 200, description = "A page of refused rows; with `Accept: text/csv`, all of them as CSV", body = RowErrorPage),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_import_errors(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    let not_found = || Problem::new(&problem::NOT_FOUND, "no such import");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let store = state.engine.store.clone();
    let org_id = caller.org.id;
    if store.get_contact_import(org_id, id).await?.is_none() {
        return Err(not_found());
    }
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    if wants_csv {
        let pages = futures::stream::try_unfold(Some(None::<u64>), move |cursor| {
            let store = store.clone();
            async move {
                let Some(after) = cursor else {
                    return Ok::<_, std::io::Error>(None);
                };
                let (errors, next) = store
                    .list_contact_import_errors(org_id, id, after, 1_000)
                    .await
                    .map_err(std::io::Error::other)?;
                let mut writer = csv::Writer::from_writer(Vec::new());
                if after.is_none() {
                    writer.write_record(["row", "field", "code", "message"])?;
                }
                for e in errors {
                    writer.write_record([e.row.to_string(), e.field, e.code, e.message])?;
                }
                let chunk = writer
                    .into_inner()
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(Some((chunk, next.map(Some))))
            }
        });
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"import-{id}-errors.csv\""),
                ),
            ],
            Body::from_stream(pages),
        )
            .into_response());
    }
    let (limit, after) = paging::params(&query, |raw| {
        paging::text_cursor(raw).and_then(|text| {
            text.map(|t| t.parse::<u64>())
                .transpose()
                .map_err(|_| FieldProblem {
                    field: "cursor".into(),
                    code: "invalid_cursor".into(),
                    message: "`cursor` is not a cursor this API returned".into(),
                })
        })
    })?;
    let (errors, next) = store
        .list_contact_import_errors(org_id, id, after, limit)
        .await?;
    Ok(Json(RowErrorPage {
        data: errors.into_iter().map(RowErrorView::from).collect(),
        next_cursor: next.map(|row| paging::encode(row.to_string())),
    })
    .into_response())
}

/// The organization's lead statuses, in order; the first is given to new contacts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeadStatuses {
    #[schema(example = json!(["new", "contacted", "qualified", "customer", "lost"]))]
    pub statuses: Vec<String>,
}

/// Read the organization's lead statuses.
#[utoipa::path(
    get,
    path = "/v1/lead-statuses",
    tag = "audience",
    responses(
        (status = 200, body = LeadStatuses),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn get_lead_statuses(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<LeadStatuses>, Problem> {
    let statuses = state.engine.store.lead_statuses(caller.org.id).await?;
    Ok(Json(LeadStatuses { statuses }))
}

/// Replace the organization's lead statuses. Statuses contacts still have cannot be left out.
#[utoipa::path(
    put,
    path = "/v1/lead-statuses",
    tag = "audience",
    request_body = LeadStatuses,
    responses(
        (status = 200, body = LeadStatuses),
        (status = 400, description = "Malformed JSON or unknown field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid statuses, or one still in use left out", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn set_lead_statuses(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<LeadStatuses>,
) -> Result<Json<LeadStatuses>, Problem> {
    let statuses: Vec<String> = body.statuses.iter().map(|s| s.trim().to_owned()).collect();
    let mut errors = Vec::new();
    if statuses.is_empty() || statuses.len() > 50 {
        errors.push(FieldProblem {
            field: "statuses".into(),
            code: "invalid_length".into(),
            message: "there are 1 to 50 lead statuses".into(),
        });
    }
    for (i, status) in statuses.iter().enumerate() {
        let valid = !status.is_empty()
            && status.len() <= 40
            && status
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            errors.push(FieldProblem {
                field: format!("statuses[{i}]"),
                code: "invalid_status".into(),
                message: "a lead status is 1 to 40 letters, digits, `_` or `-`".into(),
            });
        } else if statuses[..i].contains(status) {
            errors.push(FieldProblem {
                field: format!("statuses[{i}]"),
                code: "duplicate_status".into(),
                message: format!("`{status}` is listed twice"),
            });
        }
    }
    let store = &state.engine.store;
    if errors.is_empty() {
        for old in store.lead_statuses(caller.org.id).await? {
            if statuses.contains(&old) {
                continue;
            }
            let filter = ContactFilter {
                lead_status: Some(old.clone()),
                ..ContactFilter::default()
            };
            if !store
                .list_contacts(caller.org.id, &filter, None, 1)
                .await?
                .items
                .is_empty()
            {
                errors.push(FieldProblem {
                    field: "statuses".into(),
                    code: "status_in_use".into(),
                    message: format!("contacts are still `{old}`; move them first"),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_fields(errors));
    }
    store.set_lead_statuses(caller.org.id, &statuses).await?;
    Ok(Json(LeadStatuses { statuses }))
}
