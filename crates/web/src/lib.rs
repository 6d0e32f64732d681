//! Herald's HTTP layer: API v1 under `/v1`, `/health`, the OpenAPI document generated from the
//! handlers at `/openapi.json` with a browsable page at `/docs`, and the problem pages error
//! `type`s link to.
//!
//! [`serve`] is the launch seam: it takes a bound listener and a shutdown token, so the binary
//! binds the configured address and tests bind port 0.

mod audience;
pub mod auth;
pub mod automation;
pub mod broadcasts;
pub mod campaigns;
pub mod contacts;
pub mod credits;
pub mod extract;
pub mod hooks;
pub mod inbound;
pub mod lists;
pub mod messages;
pub mod opt_outs;
pub mod paging;
pub mod problem;
pub mod provider_routes;
pub mod providers;
pub mod segments;
pub mod templates;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_engine::Engine;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Set when a Twilio account is configured: verifies its callbacks.
    pub twilio: Option<hooks::TwilioHook>,
    /// Set when the server's SNS account takes delivery status logs: verifies them.
    pub sns: Option<Arc<hooks::SnsHook>>,
    /// Signed webhook requests already received, to refuse replays.
    pub replays: Arc<hooks::Replays>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Self-hosted SMS platform. Authenticate with `Authorization: Bearer sk_live_…` \
                       (or `sk_test_…`, which only ever reaches the simulator). Errors are \
                       `application/problem+json` (RFC 9457); lists are cursor-paginated."
    ),
    modifiers(&BearerKeys),
    tags(
        (name = "messages", description = "Send and track SMS"),
        (name = "audience", description = "Contacts, lists and segments"),
        (name = "templates", description = "Message templates"),
        (name = "broadcasts", description = "One message to many recipients"),
        (name = "campaigns", description = "Scheduled, recurring, throttled and A/B campaigns with exact pause, resume and cancel"),
        (name = "automation", description = "Drip sequences, triggers on contacts and named events"),
        (name = "billing", description = "Credits, spend limits and usage"),
        (name = "providers", description = "Provider accounts and the routes that choose between them"),
        (name = "operations", description = "Health"),
    ),
    components(schemas(problem::ProblemBody, problem::FieldProblem))
)]
struct ApiDoc;

struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some("An API key: `sk_live_…` or `sk_test_…`".into());
        components.add_security_scheme("api_key", SecurityScheme::Http(scheme));
        let mut operator = Http::new(HttpAuthScheme::Bearer);
        operator.description =
            Some("The server's operator token (`operator_token` in the configuration)".into());
        components.add_security_scheme("operator_token", SecurityScheme::Http(operator));
    }
}

/// The API routes and the OpenAPI document describing them, from the same declarations.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(messages::create_message, messages::list_messages))
        .routes(routes!(messages::get_message))
        .routes(routes!(messages::cancel_message))
        .routes(routes!(inbound::list_inbound))
        .routes(routes!(inbound::simulate_reply))
        .routes(routes!(opt_outs::list_opt_outs, opt_outs::add_opt_out))
        .routes(routes!(opt_outs::remove_opt_out))
        .routes(routes!(opt_outs::opt_out_history))
        .routes(routes!(opt_outs::get_keywords, opt_outs::set_keywords))
        .routes(routes!(opt_outs::sync_sns_opt_outs))
        .routes(routes!(
            providers::create_provider,
            providers::list_providers
        ))
        .routes(routes!(
            providers::get_provider,
            providers::update_provider,
            providers::delete_provider
        ))
        .routes(routes!(provider_routes::list_routes))
        .routes(routes!(
            provider_routes::put_country_route,
            provider_routes::delete_country_route
        ))
        .routes(routes!(
            provider_routes::put_prefix_route,
            provider_routes::delete_prefix_route
        ))
        .merge(contacts::routes())
        .merge(lists::routes())
        .merge(segments::routes())
        .merge(templates::routes())
        .merge(broadcasts::routes())
        .merge(campaigns::routes())
        .merge(automation::routes())
        .merge(credits::routes())
        .routes(routes!(health))
        .split_for_parts()
}

/// The OpenAPI 3.1 document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// The whole application.
/// A JSON answer, with the `Location` of what it describes and, when it repeats the answer to an
/// earlier request with the same `Idempotency-Key`, `idempotent-replayed: true`.
pub(crate) fn json_response(
    status: StatusCode,
    body: Vec<u8>,
    location: Option<&str>,
    replayed: bool,
) -> Response {
    use axum::http::{HeaderValue, header};
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

pub fn app(state: AppState) -> Router {
    let (api, openapi) = api();
    api.route("/problems/{slug}", get(problem::describe))
        .route(
            "/hooks/twilio/status",
            axum::routing::post(hooks::twilio_status),
        )
        .route(
            "/hooks/twilio/accounts/{account_id}/status",
            axum::routing::post(hooks::twilio_account_status),
        )
        .route(
            "/hooks/twilio/inbound",
            axum::routing::post(hooks::twilio_inbound),
        )
        .route(
            "/hooks/twilio/accounts/{account_id}/inbound",
            axum::routing::post(hooks::twilio_account_inbound),
        )
        .route("/hooks/sns/status", axum::routing::post(hooks::sns_status))
        .route(
            "/hooks/sns/accounts/{account_id}/status",
            axum::routing::post(hooks::sns_account_status),
        )
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    |response: &Response, latency: Duration, _: &tracing::Span| {
                        tracing::info!(
                            status = response.status().as_u16(),
                            latency_us = latency.as_micros() as u64,
                            "request"
                        );
                    },
                ),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The request's span names the route template, never the raw path or query, which can hold
/// phone numbers (`?to=+1415…`).
fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    tracing::info_span!(
        "http",
        method = %request.method(),
        route = route.as_deref().unwrap_or("unmatched"),
        request_id = %request_id,
    )
}

/// Serve `app` on `listener` until `shutdown`, then finish requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The health of Herald and what it depends on.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// `ok` or `unreachable`.
    pub database: &'static str,
}

/// Whether Herald can serve: the database answers.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health))
)]
pub async fn health(State(state): State<AppState>) -> Response {
    match state.engine.store.ping().await {
        Ok(()) => Json(Health {
            status: "ok",
            database: "ok",
        })
        .into_response(),
        Err(error) => {
            tracing::warn!(%error, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable",
                    database: "unreachable",
                }),
            )
                .into_response()
        }
    }
}
