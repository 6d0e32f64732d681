//! Provider callbacks under `/hooks/{provider}/…`: Twilio's status callbacks and forwarded
//! AWS SNS delivery status logs. A callback is recorded only when its
//! signature proves it came from the provider, and acknowledged only once it is durable, so a
//! provider retrying a failed callback never loses a report and a forged one changes nothing.

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_domain::keywords::Keyword;
use herald_domain::message::Mode;
use herald_domain::phone::PhoneNumber;
use herald_engine::accounts::{Credentials, open_credentials};
use herald_providers::ReportSink;
use herald_providers::sns;
use herald_providers::twilio::{self, signature};
use herald_store::{ProviderKind, Scope};
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

/// `POST /hooks/twilio/status`: a message status callback for the server's Twilio account.
pub async fn twilio_status(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let params = server_twilio_form(&state, &uri, &headers, &body)?;
    if let Some(report) = twilio::status_report(&params, callback_message_id(&uri)) {
        // The server's own account: its provider is found by name, whatever the organization.
        record_twilio_report(&state, Uuid::nil(), report).await?;
    }
    Ok(StatusCode::OK.into_response())
}

/// `POST /hooks/twilio/accounts/{account_id}/status`: a status callback for a message sent
/// through an organization's own Twilio account, signed with that account's auth token.
pub async fn twilio_account_status(
    State(state): State<AppState>,
    Path(account_id): Path<Uuid>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let engine = &state.engine;
    let (account, auth_token, public_url) = twilio_account(&state, account_id).await?;
    let params = verified_twilio_form(&uri, &headers, &body, &auth_token, &public_url)?;
    let Some(mut report) = twilio::status_report(&params, callback_message_id(&uri)) else {
        return Ok(StatusCode::OK.into_response());
    };
    let name = format!("{}/{}", ProviderKind::Twilio.as_str(), account.id);
    // Only a message this account sent, of this account's organization: a valid signature
    // from one account must not move another's messages.
    let scope = Scope {
        org_id: account.org_id,
        mode: Mode::Live,
    };
    let Some(id) = report.message_id else {
        return Ok(StatusCode::OK.into_response());
    };
    let ours = engine
        .store
        .get_message(scope, id)
        .await?
        .is_some_and(|message| message.provider.as_deref() == Some(name.as_str()));
    if !ours {
        tracing::warn!(%account_id, message_id = %id, "callback for a message this account did not send ignored");
        return Ok(StatusCode::OK.into_response());
    }
    report.provider = name;
    record_twilio_report(&state, account.org_id, report).await?;
    Ok(StatusCode::OK.into_response())
}

/// An empty TwiML answer: the message is taken, nothing is sent back.
const TWIML_EMPTY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

fn twiml(document: impl Into<String>) -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        document.into(),
    )
        .into_response()
}

/// `POST /hooks/twilio/inbound`: a message sent to a number of the server's Twilio account,
/// stored for the organization whose provider account lists that number as a sender.
pub async fn twilio_inbound(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let params = server_twilio_form(&state, &uri, &headers, &body)?;
    let to = form_value(&params, "To").unwrap_or_default();
    let Some((org_id, _)) = state
        .engine
        .store
        .find_number_owner(ProviderKind::Twilio, to)
        .await?
    else {
        // Refused rather than dropped: Twilio shows the failed webhook to the number's owner.
        tracing::warn!(
            to = %herald_domain::phone::mask_phone(to),
            "inbound message to a number no organization lists"
        );
        return Err(Problem::new(
            &problem::NOT_FOUND,
            "no organization lists this number as a sender",
        ));
    };
    store_twilio_inbound(&state, org_id, twilio::NAME.to_owned(), &params).await
}

/// `POST /hooks/twilio/accounts/{account_id}/inbound`: a message sent to a number of an
/// organization's own Twilio account, signed with that account's auth token.
pub async fn twilio_account_inbound(
    State(state): State<AppState>,
    Path(account_id): Path<Uuid>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let (account, auth_token, public_url) = twilio_account(&state, account_id).await?;
    let params = verified_twilio_form(&uri, &headers, &body, &auth_token, &public_url)?;
    let name = format!("{}/{}", ProviderKind::Twilio.as_str(), account.id);
    store_twilio_inbound(&state, account.org_id, name, &params).await
}

async fn store_twilio_inbound(
    state: &AppState,
    org_id: Uuid,
    provider: String,
    params: &[(String, String)],
) -> Result<Response, Problem> {
    let Some(sid) = form_value(params, "MessageSid").or_else(|| form_value(params, "SmsSid"))
    else {
        return Err(Problem::field(
            &problem::VALIDATION_FAILED,
            "MessageSid",
            "missing",
            "an inbound message needs its MessageSid",
        ));
    };
    let message = herald_store::InboundMessage {
        id: Uuid::now_v7(),
        org_id,
        provider,
        provider_message_id: sid.to_owned(),
        from: form_value(params, "From").unwrap_or_default().to_owned(),
        to: form_value(params, "To").unwrap_or_default().to_owned(),
        body: form_value(params, "Body").unwrap_or_default().to_owned(),
        received_at: state.engine.clock.now(),
    };
    // A repeat delivery (Twilio retries when it saw no answer) is stored once, answered alike.
    state.engine.store.insert_inbound(&message).await?;
    answer_keyword(state, org_id, &message).await
}

/// Answer an inbound message with TwiML: empty, or the reply a HELP asks for.
async fn answer_keyword(
    state: &AppState,
    org_id: Uuid,
    message: &herald_store::InboundMessage,
) -> Result<Response, Problem> {
    Ok(match act_on_keyword(state, org_id, message).await? {
        None => twiml(TWIML_EMPTY),
        Some(reply) => twiml(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
            xml_escape(&reply)
        )),
    })
}

/// Act on a keyword message: STOP and its kin put the sender on the organization's
/// suppression list, START and its kin take it off, HELP is answered with who is writing (the
/// reply returned). Acting twice on a repeat delivery changes nothing.
pub(crate) async fn act_on_keyword(
    state: &AppState,
    org_id: Uuid,
    message: &herald_store::InboundMessage,
) -> Result<Option<String>, Problem> {
    let settings = state
        .engine
        .store
        .keyword_settings(org_id)
        .await?
        .unwrap_or_default();
    let extra = herald_domain::keywords::ExtraWords {
        opt_out: settings.opt_out_words,
        opt_in: settings.opt_in_words,
    };
    let keyword = Keyword::of_with(&message.body, &extra);
    // Only a phone number can be suppressed (not, say, a chat channel's address).
    let Ok(sender) = PhoneNumber::parse(&message.from, None) else {
        return Ok(None);
    };
    let engine = &state.engine;
    let phone = sender.e164();
    let opted_out = keyword == Some(Keyword::OptOut);
    // An opt-out or a reply ends the drips the number is in; the suppression list below is
    // checked again when a step comes due, so a failure here loses nothing.
    if let Err(error) =
        herald_engine::automation::drips::on_inbound(engine, org_id, phone, opted_out).await
    {
        tracing::warn!(%error, "failed to end drips on an inbound message");
    }
    let Some(keyword) = keyword else {
        return Ok(None);
    };
    match keyword {
        Keyword::OptOut => {
            engine
                .store
                .opt_out(
                    org_id,
                    phone,
                    "keyword",
                    Some(message.id),
                    message.received_at,
                )
                .await?;
            Ok(None)
        }
        Keyword::OptIn => {
            if engine
                .store
                .opt_in(
                    org_id,
                    phone,
                    "keyword",
                    Some(message.id),
                    message.received_at,
                )
                .await?
            {
                engine.sns_opt_in(org_id, phone).await;
            }
            Ok(None)
        }
        Keyword::Help => {
            if let Some(text) = settings.help_text {
                return Ok(Some(text));
            }
            let name = engine
                .store
                .get_organization(org_id)
                .await?
                .map_or_else(|| "We".to_owned(), |org| org.name);
            Ok(Some(format!(
                "{name}: you get messages from us at this number. Reply STOP to unsubscribe, START to subscribe again."
            )))
        }
    }
}

/// Text for an XML element.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn form_value<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An organization's account of `kind` whose webhook this is, with its credentials opened:
/// `None` when there is no such account. Opening may fail (the secret key changed): the
/// provider should retry, so that is 503.
async fn hook_account(
    state: &AppState,
    account_id: Uuid,
    kind: ProviderKind,
) -> Result<Option<(herald_store::ProviderAccount, Credentials)>, Problem> {
    let engine = &state.engine;
    let Some(account) = engine
        .store
        .find_provider_account(account_id)
        .await?
        .filter(|account| account.kind == kind)
    else {
        return Ok(None);
    };
    open_credentials(
        engine.store.as_ref(),
        engine.config.secret_key.as_ref(),
        account.org_id,
        account.id,
    )
    .await
    .map_err(|error| {
        tracing::error!(%error, %account_id, "cannot open an account to verify its webhook");
        Problem::new(
            &problem::UNAVAILABLE,
            "the request cannot be verified now; retry",
        )
    })
}

/// An organization's Twilio account with its auth token and the public URL its callbacks are
/// signed against; 404 when there is no such account or no public URL.
async fn twilio_account(
    state: &AppState,
    account_id: Uuid,
) -> Result<(herald_store::ProviderAccount, String, String), Problem> {
    let not_found = || Problem::new(&problem::NOT_FOUND, "no such Twilio account");
    let Some(public_url) = state.engine.config.public_url.as_deref() else {
        return Err(not_found());
    };
    let credentials = hook_account(state, account_id, ProviderKind::Twilio).await?;
    let Some((account, Credentials::Twilio { auth_token, .. })) = credentials else {
        return Err(not_found());
    };
    Ok((
        account,
        auth_token.expose().to_owned(),
        public_url.trim_end_matches('/').to_owned(),
    ))
}

/// The form of a callback for the server's own Twilio account, verified with its token; 404
/// when no Twilio account is configured.
fn server_twilio_form(
    state: &AppState,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, Problem> {
    let Some(hook) = &state.twilio else {
        return Err(Problem::new(
            &problem::NOT_FOUND,
            "Twilio is not configured",
        ));
    };
    verified_twilio_form(uri, headers, body, &hook.auth_token, &hook.public_url)
}

/// The form of a Twilio callback whose `X-Twilio-Signature` holds for `auth_token` and the URL
/// Twilio called (rebuilt from `public_url`); 403 otherwise.
fn verified_twilio_form(
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    auth_token: &str,
    public_url: &str,
) -> Result<Vec<(String, String)>, Problem> {
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|_| {
        Problem::new(
            &problem::MALFORMED_REQUEST,
            "the callback body is not a form",
        )
    })?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path}", public_url.trim_end_matches('/'));
    let settings = headers
        .get(signature::SETTINGS_HEADER)
        .map(|value| value.to_str().unwrap_or_default());
    let signed = signature::Algorithm::from_settings(settings).is_some_and(|algorithm| {
        headers
            .get("x-twilio-signature")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|given| {
                signature::is_valid_with(algorithm, auth_token, &url, &params, given)
            })
    });
    if !signed {
        tracing::warn!(
            route = uri.path(),
            "callback with a missing or wrong signature refused"
        );
        return Err(Problem::new(
            &problem::FORBIDDEN,
            "missing or invalid X-Twilio-Signature",
        ));
    }
    Ok(params)
}

/// Herald's message id, carried in the callback URL (`?m=…`).
fn callback_message_id(uri: &axum::http::Uri) -> Option<Uuid> {
    uri.query().and_then(|query| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "m")
            .and_then(|(_, v)| Uuid::parse_str(&v).ok())
    })
}

/// Record a callback's report; once a message is settled, find out what it cost.
async fn record_twilio_report(
    state: &AppState,
    org_id: Uuid,
    report: herald_store::ProviderReport,
) -> Result<(), Problem> {
    state
        .engine
        .recorder
        .submit(vec![report.clone()])
        .await
        .map_err(|error| {
            tracing::error!(%error, "a Twilio status callback could not be recorded; Twilio will retry");
            Problem::new(&problem::UNAVAILABLE, "the report could not be recorded; retry")
        })?;
    state.engine.collect_charge(org_id, report);
    Ok(())
}

/// Signed requests already received, remembered while their timestamps are fresh, so a
/// replayed request is refused. The memory is this process's; processes behind one load
/// balancer each keep their own.
#[derive(Debug, Default)]
pub struct Replays {
    seen: std::sync::Mutex<std::collections::HashMap<[u8; 32], jiff::Timestamp>>,
}

impl Replays {
    /// Remember a verified request; `false` when it was seen before.
    fn first_sighting(&self, verified: &sns::status::Verified, now: jiff::Timestamp) -> bool {
        let mut seen = self.seen.lock().expect("replay memory lock");
        // Forget what the timestamp check now refuses on its own.
        seen.retain(|_, until| *until >= now);
        seen.insert(verified.digest, verified.remember_until)
            .is_none()
    }

    /// Forget a request that could not be recorded, so the forwarder's retry is taken.
    fn forget(&self, verified: &sns::status::Verified) {
        self.seen
            .lock()
            .expect("replay memory lock")
            .remove(&verified.digest);
    }
}

/// What verifying forwarded SNS delivery status logs for the server's SNS account needs.
pub struct SnsHook {
    secret: Vec<u8>,
}

impl SnsHook {
    pub fn new(secret: impl Into<Vec<u8>>) -> SnsHook {
        SnsHook {
            secret: secret.into(),
        }
    }
}

impl std::fmt::Debug for SnsHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsHook").finish_non_exhaustive()
    }
}

/// `POST /hooks/sns/status`: SNS SMS delivery status logs for the server's SNS account, one
/// object or an array, forwarded by the user's subscription (see the README), signed with the
/// webhook secret: `X-Herald-Timestamp` (Unix seconds) and `X-Herald-Signature` (hex
/// HMAC-SHA256 of `timestamp + "." + body`). A batch is recorded whole or not at all.
pub async fn sns_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let Some(hook) = &state.sns else {
        return Err(Problem::new(&problem::NOT_FOUND, "SNS is not configured"));
    };
    record_sns_logs(&state, &hook.secret, None, &headers, &body).await
}

/// `POST /hooks/sns/accounts/{account_id}/status`: the same for an organization's own SNS
/// account, signed with the `webhook_secret` of its credentials; the logs can only settle
/// messages that account sent.
pub async fn sns_account_status(
    State(state): State<AppState>,
    Path(account_id): Path<Uuid>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let not_found = || {
        Problem::new(
            &problem::NOT_FOUND,
            "no SNS account takes delivery logs here (its credentials need a webhook_secret)",
        )
    };
    let credentials = hook_account(&state, account_id, ProviderKind::Sns).await?;
    let Some((
        account,
        Credentials::Sns {
            webhook_secret: Some(secret),
            ..
        },
    )) = credentials
    else {
        return Err(not_found());
    };
    let name = format!("{}/{}", ProviderKind::Sns.as_str(), account.id);
    record_sns_logs(
        &state,
        secret.expose().as_bytes(),
        Some(name),
        &headers,
        &body,
    )
    .await
}

/// Verify, parse and record forwarded delivery status logs. `provider` names the account the
/// reports are for (an organization's `sns/{id}`); the server's account otherwise.
async fn record_sns_logs(
    state: &AppState,
    secret: &[u8],
    provider: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Problem> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    let now = state.engine.clock.now();
    let verified = sns::status::verify(
        secret,
        header(sns::status::TIMESTAMP_HEADER),
        header(sns::status::SIGNATURE_HEADER),
        body,
        now,
        sns::status::DEFAULT_TOLERANCE,
    )
    .map_err(|error| {
        tracing::warn!(%error, "delivery status log refused");
        Problem::new(
            &problem::FORBIDDEN,
            "missing, invalid or stale X-Herald-Signature / X-Herald-Timestamp",
        )
    })?;
    let logs = sns::status::parse(body).map_err(|error| {
        Problem::field(
            &problem::VALIDATION_FAILED,
            "body",
            "invalid_delivery_log",
            error.to_string(),
        )
    })?;
    // Remembered only once the body is known to be good, so a forwarder can fix and resend.
    if !state.replays.first_sighting(&verified, now) {
        tracing::warn!("replayed delivery status log refused");
        return Err(Problem::new(
            &problem::FORBIDDEN,
            "this signed request was already received",
        ));
    }
    let reports = logs
        .into_iter()
        .map(|log| {
            let mut report = log.report;
            if let Some(provider) = &provider {
                report.provider = provider.clone();
            }
            report
        })
        .collect();
    state
        .engine
        .recorder
        .submit(reports)
        .await
        .map_err(|error| {
            state.replays.forget(&verified);
            tracing::error!(%error, "SNS delivery status logs could not be recorded");
            Problem::new(
                &problem::UNAVAILABLE,
                "the logs could not be recorded; retry",
            )
        })?;
    Ok(StatusCode::OK.into_response())
}
