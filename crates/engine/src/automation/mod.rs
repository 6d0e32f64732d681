//! Automation: messages that go out because of what happens to a contact rather than because
//! someone pressed send.
//!
//! - [`drips`]: sequences of steps, each a delay (or a local time of day) and a message, that
//!   contacts go through one by one; a contact leaves on opt-out, on reply, or at the end.
//! - [`triggers`]: `contact.created`, `contact.age` and named events (`POST /v1/events`), each
//!   sending a message or enrolling the contact in a drip, once per key.
//! - [`runner`]: every process takes due drip steps and sweeps new and ageing contacts for
//!   their triggers.
//!
//! What a step or a firing sends goes through the same intake as any message (encoding,
//! pricing, sender, quiet hours for promotional messages, allowed countries, credits) and is
//! stored in the same transaction as the step or firing that sent it, so nothing is sent twice
//! and nothing recorded as sent is missing.

pub mod drips;
pub mod runner;
pub mod triggers;

use herald_domain::message::MessageType;
use herald_domain::phone::PhoneNumber;
use herald_domain::template::Template;
use herald_store::{Contact, NewMessage, Organization, Scope, StoreError};
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, ToSpan};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::Engine;
use crate::accounts::FieldError;
use crate::intake::SendRequest;

/// What a step or trigger sends, as its spec says it: a template filled with the contact's
/// fields and the fixed `variables` (and, for an event, its `data`), or a plain body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Content<'a> {
    pub template_id: Option<Uuid>,
    pub body: Option<&'a String>,
    pub variables: &'a Map<String, Value>,
}

/// Content whose template was found and parsed.
#[derive(Clone, Debug)]
pub struct Ready {
    pub template: Option<Template>,
    pub body: Option<String>,
    pub variables: Map<String, Value>,
}

/// Who sends a drip's or trigger's messages, and as what.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sender<'a> {
    pub org: &'a Organization,
    pub scope: Scope,
    pub api_key_id: Option<Uuid>,
    pub kind: MessageType,
    pub from: Option<&'a String>,
}

/// Check `content` as intake would for any recipient, naming faults under `prefix` (`""` or
/// `"steps[2]."`); answers it ready to render.
pub(crate) async fn check_content(
    engine: &Engine,
    sender: Sender<'_>,
    content: Content<'_>,
    prefix: &str,
) -> Result<Result<Ready, Vec<FieldError>>, StoreError> {
    let Sender {
        org,
        scope,
        api_key_id,
        kind,
        from,
    } = sender;
    let mut errors = Vec::new();
    if content.body.is_some() == content.template_id.is_some() {
        errors.push(FieldError::new(
            format!("{prefix}template_id"),
            "body_or_template",
            "give exactly one of `template_id` and `body`",
        ));
    }
    let mut template = None;
    if let Some(id) = content.template_id {
        let field = format!("{prefix}template_id");
        match crate::templates::sendable(engine.store.as_ref(), org.id, id, &field).await? {
            Ok((parsed, _)) => template = Some(parsed),
            Err(error) => errors.push(error),
        }
    }
    if let Err(found) = crate::templates::variables(None, content.variables) {
        errors.extend(
            found
                .into_iter()
                .map(|e| FieldError::new(format!("{prefix}{}", e.field), e.code, e.message)),
        );
    }
    let sample = SendRequest {
        body: Some(content.body.cloned().unwrap_or_else(|| "x".into())),
        kind,
        from: from.cloned(),
        ..Default::default()
    };
    errors.extend(
        crate::broadcasts::sample_problems(engine, org, scope, api_key_id, sample)
            .into_iter()
            .map(|e| FieldError::new(format!("{prefix}{}", e.field), e.code, e.message)),
    );
    Ok(if errors.is_empty() {
        Ok(Ready {
            template,
            body: content.body.cloned(),
            variables: content.variables.clone(),
        })
    } else {
        Err(errors)
    })
}

/// Whom a message goes to: a number, and the contact it belongs to when there is one.
#[derive(Clone, Debug)]
pub struct Recipient {
    pub phone: String,
    pub country: Option<herald_domain::phone::Region>,
    pub contact: Option<Contact>,
}

impl Recipient {
    pub fn of(contact: Contact) -> Recipient {
        Recipient {
            phone: contact.phone.clone(),
            country: contact.country,
            contact: Some(contact),
        }
    }

    /// The recipient's own time zone: the contact's, else their number's country's when it
    /// has only one, else `fallback`.
    pub fn zone(&self, fallback: &TimeZone) -> TimeZone {
        crate::own_zone(self.contact.as_ref(), self.country).unwrap_or_else(|| fallback.clone())
    }
}

/// The number `raw` in the organization's default region, with its contact when it has one.
pub(crate) async fn recipient_of_phone(
    engine: &Engine,
    org: &Organization,
    raw: &str,
) -> Result<Option<Recipient>, StoreError> {
    let Ok(number) = PhoneNumber::parse(raw, Some(org.default_region)) else {
        return Ok(None);
    };
    let contact = engine
        .store
        .find_contact_by_phone(org.id, number.e164())
        .await?;
    Ok(Some(Recipient {
        phone: number.e164().to_owned(),
        country: number.region(),
        contact,
    }))
}

/// Why nothing is sent to a recipient (a step passed over, a firing without a message).
pub type Skip = String;

/// The message `ready` becomes for `to`, through intake, or why it cannot be sent: the
/// recipient opted out, gave no consent to promotional messages, is in a country the
/// organization may not send to, or the template lacks a value.
pub(crate) async fn compose(
    engine: &Engine,
    sender: Sender<'_>,
    ready: &Ready,
    extra: Option<&Map<String, Value>>,
    to: &Recipient,
) -> Result<Result<NewMessage, Skip>, StoreError> {
    if !engine
        .store
        .opted_out_among(sender.org.id, std::slice::from_ref(&to.phone))
        .await?
        .is_empty()
    {
        return Ok(Err("opted_out".into()));
    }
    compose_checked(engine, sender, ready, extra, to).await
}

/// [`compose`] for a recipient already known not to have opted out.
pub(crate) async fn compose_checked(
    engine: &Engine,
    sender: Sender<'_>,
    ready: &Ready,
    extra: Option<&Map<String, Value>>,
    to: &Recipient,
) -> Result<Result<NewMessage, Skip>, StoreError> {
    let Sender {
        org,
        scope,
        api_key_id,
        kind,
        from,
    } = sender;
    if kind == MessageType::Promotional && !to.contact.as_ref().is_some_and(|c| c.consent) {
        return Ok(Err("no_consent".into()));
    }
    let mut fixed = ready.variables.clone();
    if let Some(extra) = extra {
        fixed.extend(extra.clone());
    }
    let Some(body) = crate::templates::personalise(
        ready.template.as_ref(),
        ready.body.as_ref(),
        to.contact.as_ref(),
        &fixed,
    ) else {
        return Ok(Err("missing_variables".into()));
    };
    let send = SendRequest {
        to: Some(to.phone.clone()),
        to_number: PhoneNumber::stored(&to.phone, to.country),
        body: Some(body),
        kind,
        from: from.cloned(),
        ..Default::default()
    };
    let mut message = match engine.prepare(org, scope, api_key_id, &send) {
        Ok(message) => message,
        Err(errors) => {
            // Checked when saved; what is left is the body's size once personalised.
            let code = errors.first().map_or("invalid", |e| e.code);
            return Ok(Err(code.to_owned()));
        }
    };
    if engine.check_destination(org, &message).await?.is_err() {
        return Ok(Err("not_permitted".into()));
    }
    crate::hold_for_quiet_hours(
        &engine.config.intake.quiet_hours,
        to.contact.as_ref(),
        &mut message,
    );
    Ok(Ok(message))
}

/// A stored spec with `patch`'s top-level fields in place of its own: how every `PATCH` of a
/// campaign, drip or trigger reads.
pub(crate) fn merge_patch(spec: &Value, patch: &Map<String, Value>) -> Value {
    let mut merged = match spec {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    merged.extend(patch.clone());
    Value::Object(merged)
}

/// Parse `value` as a `T`, naming the field at fault as the client wrote it (an unknown field
/// by its own name).
pub fn parse_json<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        let path = e.path().to_string();
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), unknown) {
            (".", Some(name)) => name.to_owned(),
            // Some structs report the unknown key as the path already.
            (path, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => {
                path.to_owned()
            }
            (path, Some(name)) => format!("{path}.{name}"),
            (".", None) => "body".to_owned(),
            (path, None) => path.to_owned(),
        };
        let code = if unknown.is_some() {
            "unknown_field"
        } else {
            "invalid"
        };
        FieldError::new(field, code, message)
    })
}

/// An ISO 8601 duration (`P2D`, `PT3H30M`), checked to be calendar-free of months and years
/// and at most `max_days`.
pub(crate) fn parse_delay(text: &str, max_days: i64) -> Result<Span, String> {
    let span: Span = text
        .parse()
        .map_err(|e| format!("`{text}` is not an ISO 8601 duration like P2D or PT3H: {e}"))?;
    if span.get_years() != 0 || span.get_months() != 0 || span.is_negative() {
        return Err("a delay is zero or more weeks, days, hours, minutes and seconds".into());
    }
    let total = span
        .total((jiff::Unit::Hour, jiff::SpanRelativeTo::days_are_24_hours()))
        .map_err(|e| e.to_string())?;
    if total > (max_days * 24) as f64 {
        return Err(format!("a delay is at most {max_days} days"));
    }
    Ok(span)
}

/// When a step waiting `delay` from `from` goes out, in `zone` (a day is a calendar day
/// there). With `at`, the delay picks the day: the step goes at `at` local time on the day the
/// delay ends ("day 2 at 10:00"), or the day after if that time is not after `from`.
pub(crate) fn next_time(
    from: Timestamp,
    delay: Span,
    at: Option<Time>,
    zone: &TimeZone,
) -> Timestamp {
    let zoned = from.to_zoned(zone.clone());
    let after = zoned.checked_add(delay).unwrap_or_else(|_| zoned.clone());
    let Some(at) = at else {
        return after.timestamp();
    };
    let mut date = after.date();
    for _ in 0..3 {
        if let Ok(candidate) = date.to_datetime(at).to_zoned(zone.clone())
            && candidate.timestamp() > from
        {
            return candidate.timestamp();
        }
        date = date.checked_add(1.day()).unwrap_or(date);
    }
    after.timestamp()
}
