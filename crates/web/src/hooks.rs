//! Provider callbacks under `/hooks/{provider}/…`. A callback is recorded only when its
//! signature proves it came from the provider, and acknowledged only once it is durable, so a
//! provider retrying a failed callback never loses a report and a forged one changes nothing.

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_providers::ReportSink;
use herald_providers::twilio::{self, signature};
use uuid::Uuid;

use crate::AppState;
use crate::problem::{self, Problem};

/// What verifying Twilio's callbacks needs.
#[derive(Clone)]
pub struct TwilioHook {
    pub auth_token: String,
    /// Herald's public base URL as Twilio calls it (`https://herald.example.com`), from which the
    /// signed URL is rebuilt, so verification works behind a reverse proxy.
    pub public_url: String,
}

impl std::fmt::Debug for TwilioHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioHook")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// `POST /hooks/twilio/status`: a message status callback.
pub async fn twilio_status(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let Some(hook) = &state.twilio else {
        return Err(Problem::new(
            &problem::NOT_FOUND,
            "Twilio is not configured",
        ));
    };
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|_| {
        Problem::new(
            &problem::MALFORMED_REQUEST,
            "the callback body is not a form",
        )
    })?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path}", hook.public_url.trim_end_matches('/'));
    let settings = headers
        .get(signature::SETTINGS_HEADER)
        .map(|value| value.to_str().unwrap_or_default());
    let signed = signature::Algorithm::from_settings(settings).is_some_and(|algorithm| {
        headers
            .get("x-twilio-signature")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|given| {
                signature::is_valid_with(algorithm, &hook.auth_token, &url, &params, given)
            })
    });
    if !signed {
        tracing::warn!(
            route = "/hooks/twilio/status",
            "callback with a missing or wrong signature refused"
        );
        return Err(Problem::new(
            &problem::FORBIDDEN,
            "missing or invalid X-Twilio-Signature",
        ));
    }

    let message_id = uri.query().and_then(|query| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "m")
            .and_then(|(_, v)| Uuid::parse_str(&v).ok())
    });
    if let Some(report) = twilio::status_report(&params, message_id) {
        state.engine.recorder.submit(vec![report]).await.map_err(|error| {
            tracing::error!(%error, "a Twilio status callback could not be recorded; Twilio will retry");
            Problem::new(&problem::UNAVAILABLE, "the report could not be recorded; retry")
        })?;
    }
    Ok(StatusCode::OK.into_response())
}
