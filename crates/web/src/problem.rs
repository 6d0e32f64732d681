//! Errors as RFC 9457 `application/problem+json`.
//!
//! Every error the API returns is a [`Problem`] built from one entry of [`CATALOGUE`], so each
//! has a stable `type` (a link to a page on this server describing it), a human `title` and
//! `detail`, and, for bad input, the fields at fault in `errors`. Internal causes are logged
//! once here and never shown to the client.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// One kind of problem: its slug (the last part of its `type`), status, title and explanation.
pub struct Kind {
    pub slug: &'static str,
    pub status: StatusCode,
    pub title: &'static str,
    pub description: &'static str,
}

macro_rules! kinds {
    ($($name:ident = ($slug:literal, $status:ident, $title:literal, $description:literal);)*) => {
        $(pub const $name: Kind = Kind {
            slug: $slug,
            status: StatusCode::$status,
            title: $title,
            description: $description,
        };)*
        /// Every problem the API can return.
        pub const CATALOGUE: &[Kind] = &[$($name),*];
    };
}

kinds! {
    MALFORMED_REQUEST = ("malformed-request", BAD_REQUEST, "Malformed request",
        "The request could not be read: the JSON is not well-formed, a field is unknown, or a query parameter is not recognised. Nothing was changed.");
    VALIDATION_FAILED = ("validation-failed", UNPROCESSABLE_ENTITY, "Validation failed",
        "The request was well-formed but some fields are not acceptable; `errors` lists each field with a code and a message. Nothing was changed.");
    IDEMPOTENCY_KEY_REUSED = ("idempotency-key-reused", UNPROCESSABLE_ENTITY, "Idempotency key reused",
        "The `Idempotency-Key` was already used in the last 24 hours with a different request. Use a new key for a new request.");
    UNAUTHORIZED = ("unauthorized", UNAUTHORIZED, "Unauthorized",
        "The request needs a valid API key in `Authorization: Bearer sk_live_…` (or `sk_test_…`). The key was missing, malformed, unknown or revoked.");
    FORBIDDEN = ("forbidden", FORBIDDEN, "Forbidden",
        "The request is not signed by the provider it claims to come from. Nothing was recorded.");
    NOT_FOUND = ("not-found", NOT_FOUND, "Not found",
        "There is no such resource for this API key.");
    METHOD_NOT_ALLOWED = ("method-not-allowed", METHOD_NOT_ALLOWED, "Method not allowed",
        "This resource does not support the request's HTTP method.");
    NOT_CANCELABLE = ("not-cancelable", CONFLICT, "Message can no longer be canceled",
        "Only scheduled or queued messages can be canceled; this one has already been handed to a provider or has ended.");
    BROADCAST_NOT_CANCELABLE = ("broadcast-not-cancelable", CONFLICT, "Broadcast cannot be canceled",
        "The broadcast failed before anything was queued: there is nothing to cancel. Nothing was changed.");
    CAMPAIGN_STATE = ("campaign-state", CONFLICT, "Not allowed in the campaign's status",
        "The campaign's status does not allow this (`current_status` says what it is): it is edited only while `draft` or `scheduled`, scheduled only from `draft`, started from `draft` or `scheduled`, paused only while `running`, resumed only while `paused`, and nothing changes once it is `completed` or `cancelled`. Nothing was changed.");
    LIVE_KEY_REQUIRED = ("live-key-required", FORBIDDEN, "Live key required",
        "Provider accounts and routes configure live traffic: a test key may read them, but only a live key may change them. Nothing was changed.");
    NAME_TAKEN = ("name-taken", CONFLICT, "Name already used",
        "The organization already has one of these (a provider account, a list, a segment) with this name. Nothing was changed.");
    PHONE_TAKEN = ("phone-taken", CONFLICT, "Phone number already a contact",
        "The organization already has a contact with this phone number; the detail names it. Change that contact instead. Nothing was changed.");
    TEMPLATE_NAME_TAKEN = ("template-name-taken", CONFLICT, "Template name already used",
        "The organization already has a template with this name. Choose another name, or change the existing template. Nothing was changed.");
    PROVIDER_IN_USE = ("provider-in-use", CONFLICT, "Provider account in use",
        "Routes still send through this provider account (`routes` lists them). Remove it from those routes, or delete them, before deleting the account. Nothing was changed.");
    SECRET_KEY_MISSING = ("secret-key-missing", CONFLICT, "No secret key configured",
        "This server has no secret key (`HERALD_SECRET_KEY`, `secret_key` or `--secret-key`), so it cannot encrypt provider credentials and will not store them. Configure a key and restart the server. Nothing was changed.");
    PAYLOAD_TOO_LARGE = ("payload-too-large", PAYLOAD_TOO_LARGE, "Request body too large",
        "Request bodies are limited to 64 KiB.");
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", UNSUPPORTED_MEDIA_TYPE, "Unsupported media type",
        "Request bodies must be JSON, sent with `Content-Type: application/json`.");
    INSUFFICIENT_CREDITS = ("insufficient-credits", PAYMENT_REQUIRED, "Insufficient credits",
        "The organization's available credits (balance less what queued messages hold; one credit per segment) do not cover this request. Nothing was queued. Ask the operator to add credits (`herald credits grant`), or wait for queued messages to be sent.");
    SPEND_LIMIT_REACHED = ("spend-limit-reached", PAYMENT_REQUIRED, "Monthly spend limit reached",
        "The estimated cost of this request would take the organization's spending this calendar month (UTC) over its limit. Nothing was queued. The operator can raise the limit.");
    OPERATOR_REQUIRED = ("operator-required", FORBIDDEN, "Operator token required",
        "Granting credits and setting spend limits need the server's operator token (`operator_token` in the configuration, or `HERALD_OPERATOR_TOKEN`) as `Authorization: Bearer …`; an organization's API key cannot do it. Nothing was changed.");
    INTERNAL = ("internal-error", INTERNAL_SERVER_ERROR, "Internal error",
        "Herald could not complete the request. It has been logged; the request may be retried.");
    UNAVAILABLE = ("unavailable", SERVICE_UNAVAILABLE, "Service unavailable",
        "A dependency (the database) is not reachable right now; retry later.");
}

/// A field at fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldProblem {
    /// The field as the client named it (`to`, `send_at`, a query parameter or header name).
    pub field: String,
    /// A stable machine-readable code, e.g. `invalid_phone`, `required`.
    pub code: String,
    pub message: String,
}

impl From<herald_engine::accounts::FieldError> for FieldProblem {
    fn from(error: herald_engine::accounts::FieldError) -> FieldProblem {
        FieldProblem::new(error.field, error.code, error.message)
    }
}

impl FieldProblem {
    pub fn new(field: impl Into<String>, code: &str, message: impl Into<String>) -> FieldProblem {
        FieldProblem {
            field: field.into(),
            code: code.into(),
            message: message.into(),
        }
    }
}

/// An error response body (RFC 9457).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// A link to a page describing this kind of problem; stable, compare it rather than `title`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// For `not-cancelable`: the message's current status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_status: Option<String>,
    /// For `provider-in-use`: the routes naming the account (`default`, `US`, `US/1415`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// For a template body that does not parse: where the fault is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<SourcePosition>,
}

/// A place in a text, so an editor can point at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct SourcePosition {
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
    /// 0-based, in characters from the start of the text.
    pub offset: u32,
}

/// An error on its way to the client. Boxed: it travels in every handler's `Result`, and the
/// happy path should not pay for its size.
#[derive(Debug)]
pub struct Problem(Box<Inner>);

#[derive(Debug)]
struct Inner {
    body: ProblemBody,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(kind: &Kind, detail: impl Into<String>) -> Problem {
        Problem(Box::new(Inner {
            body: ProblemBody {
                kind: format!("/problems/{}", kind.slug),
                title: kind.title.to_owned(),
                status: kind.status.as_u16(),
                detail: detail.into(),
                errors: Vec::new(),
                current_status: None,
                routes: None,
                position: None,
            },
            status: kind.status,
            headers: Vec::new(),
        }))
    }

    /// A problem with one field at fault.
    pub fn field(kind: &Kind, field: &str, code: &str, message: impl Into<String>) -> Problem {
        let message = message.into();
        Problem::new(kind, message.clone()).with_errors(vec![FieldProblem {
            field: field.to_owned(),
            code: code.to_owned(),
            message,
        }])
    }

    /// Field problems as one 422, naming every field at fault.
    pub fn invalid_fields(errors: Vec<FieldProblem>) -> Problem {
        let detail = match errors.as_slice() {
            [only] => only.message.clone(),
            many => format!("{} fields are invalid", many.len()),
        };
        Problem::new(&VALIDATION_FAILED, detail).with_errors(errors)
    }

    pub fn with_errors(mut self, errors: Vec<FieldProblem>) -> Problem {
        self.0.body.errors = errors;
        self
    }

    pub fn with_current_status(mut self, status: &str) -> Problem {
        self.0.body.current_status = Some(status.to_owned());
        self
    }

    pub fn with_routes(mut self, routes: Vec<String>) -> Problem {
        self.0.body.routes = Some(routes);
        self
    }

    pub fn with_position(mut self, position: SourcePosition) -> Problem {
        self.0.body.position = Some(position);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: &'static str) -> Problem {
        self.0.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// Log an internal failure once, with its cause, and hide it from the client.
    pub fn internal(context: &str, error: &dyn std::error::Error) -> Problem {
        let mut causes = String::new();
        let mut source = error.source();
        while let Some(cause) = source {
            causes.push_str(": ");
            causes.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::error!(error = %error, causes = %causes, "{context}");
        Problem::new(&INTERNAL, "an internal error occurred")
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }
}

impl Problem {
    /// A 402 for a request the organization's credits or spend limit do not cover.
    pub fn refused(refusal: &herald_store::CreditRefusal) -> Problem {
        let kind = match refusal {
            herald_store::CreditRefusal::InsufficientCredits { .. } => &INSUFFICIENT_CREDITS,
            herald_store::CreditRefusal::SpendLimitReached { .. } => &SPEND_LIMIT_REACHED,
        };
        Problem::new(kind, refusal.to_string())
    }
}

impl From<herald_store::StoreError> for Problem {
    fn from(error: herald_store::StoreError) -> Problem {
        match error {
            herald_store::StoreError::Refused(refusal) => Problem::refused(&refusal),
            error => Problem::internal("database operation failed", &error),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let Inner {
            body,
            status,
            headers,
        } = *self.0;
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response();
        for (name, value) in headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// `GET /problems/{slug}`: the page each problem `type` links to.
pub async fn describe(axum::extract::Path(slug): axum::extract::Path<String>) -> Response {
    match CATALOGUE.iter().find(|kind| kind.slug == slug) {
        Some(kind) => Html(format!(
            "<!doctype html><meta charset=utf-8><title>{title}</title>\
             <h1>{title}</h1><p>HTTP {status}</p><p>{description}</p>",
            title = kind.title,
            status = kind.status.as_u16(),
            description = kind.description,
        ))
        .into_response(),
        None => Problem::new(&NOT_FOUND, "no such problem type").into_response(),
    }
}

/// Unmatched paths.
pub async fn not_found() -> Problem {
    Problem::new(&NOT_FOUND, "no such resource")
}

/// Known paths with the wrong method.
pub async fn method_not_allowed() -> Problem {
    Problem::new(&METHOD_NOT_ALLOWED, "this method is not supported here")
}
