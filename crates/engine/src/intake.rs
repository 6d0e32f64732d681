//! Turning a send request into a message ready to store: recipient parsed to E.164, body
//! encoded and counted (with smart encoding and `max_segments` applied), price estimated,
//! schedule checked. Every problem is reported at once, field by field, and nothing is stored
//! unless all of it is right.

use herald_domain::encoding::{self, BodyError, BodyOptions};
use herald_domain::message::MessageType;
use herald_domain::money::PriceTable;
use herald_domain::phone::{PhoneError, PhoneNumber};
use herald_store::{NewMessage, Organization, Scope};
use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use crate::pricing::SegmentPrices;

/// Limits and prices applied to incoming messages.
#[derive(Clone, Debug)]
pub struct IntakeConfig {
    pub prices: PriceTable,
    /// Attempts a message gets against transient provider errors.
    pub max_attempts: u32,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: SignedDuration,
    /// How far ahead `send_at` may be.
    pub max_schedule_ahead: SignedDuration,
    /// How far in the past `send_at` may be and still mean "now" (clocks disagree a little;
    /// a date long past is a mistake, not a request).
    pub send_at_grace: SignedDuration,
    /// Longest body accepted, in characters (Twilio's limit is 1,600).
    pub max_body_chars: usize,
    /// When promotional messages may reach recipients, in their local time.
    pub quiet_hours: herald_domain::quiet_hours::QuietHours,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            prices: PriceTable::default(),
            max_attempts: 5,
            idempotency_ttl: SignedDuration::from_hours(24),
            max_schedule_ahead: SignedDuration::from_hours(24 * 366),
            send_at_grace: SignedDuration::from_hours(1),
            max_body_chars: 1_600,
            quiet_hours: Default::default(),
        }
    }
}

/// A request to send one message, as the API or CLI received it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendRequest {
    pub to: Option<String>,
    /// `to` already validated (a stored contact's number, or one the caller parsed): used
    /// instead of parsing `to` again.
    pub to_number: Option<PhoneNumber>,
    pub body: Option<String>,
    pub kind: MessageType,
    pub from: Option<String>,
    pub send_at: Option<Timestamp>,
    pub max_segments: Option<u32>,
    pub truncate: bool,
    pub smart_encoding: bool,
}

/// One thing wrong with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The request field at fault, as the client named it.
    pub field: &'static str,
    /// A stable machine-readable code.
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    fn new(field: &'static str, code: &'static str, message: impl Into<String>) -> FieldError {
        FieldError {
            field,
            code,
            message: message.into(),
        }
    }
}

/// Validate and price `request`; on success the message is ready for [`herald_store::Store::insert_message`].
pub fn prepare(
    config: &IntakeConfig,
    prices: &dyn SegmentPrices,
    org: &Organization,
    scope: Scope,
    api_key_id: Option<Uuid>,
    request: &SendRequest,
    now: Timestamp,
) -> Result<NewMessage, Vec<FieldError>> {
    let mut errors = Vec::new();

    let to = match request.to.as_deref().map(str::trim) {
        _ if request.to_number.is_some() => request.to_number.clone(),
        None | Some("") => {
            errors.push(FieldError::new("to", "required", "`to` is required"));
            None
        }
        Some(input) => match PhoneNumber::parse(input, Some(org.default_region)) {
            Ok(number) => Some(number),
            Err(error) => {
                errors.push(phone_error("to", &error));
                None
            }
        },
    };

    let body = match request.body.as_deref() {
        None => {
            errors.push(FieldError::new("body", "required", "`body` is required"));
            None
        }
        // U+0000 has no place in an SMS and PostgreSQL cannot store it in text.
        Some(body) if body.contains('\0') => {
            errors.push(FieldError::new(
                "body",
                "invalid_character",
                "`body` must not contain NUL characters",
            ));
            None
        }
        Some(body) if body.chars().count() > config.max_body_chars => {
            errors.push(FieldError::new(
                "body",
                "body_too_long",
                format!("`body` is longer than {} characters", config.max_body_chars),
            ));
            None
        }
        Some(body) => {
            let options = BodyOptions {
                smart_encoding: request.smart_encoding,
                max_segments: request.max_segments,
                truncate: request.truncate,
            };
            match encoding::prepare_body(body, options) {
                Ok(prepared) => Some(prepared),
                Err(error) => {
                    let field = match error {
                        BodyError::InvalidMaxSegments => "max_segments",
                        BodyError::Empty | BodyError::TooManySegments { .. } => "body",
                    };
                    errors.push(FieldError::new(field, error.code(), error.to_string()));
                    None
                }
            }
        }
    };

    let sender = match request.from.as_deref().map(str::trim) {
        None => None,
        Some(from) => match sender(from) {
            Ok(sender) => Some(sender),
            Err(error) => {
                errors.push(error);
                None
            }
        },
    };

    if let Some(send_at) = request.send_at {
        if send_at < now - config.send_at_grace {
            errors.push(FieldError::new(
                "send_at",
                "send_at_in_past",
                "`send_at` is in the past",
            ));
        } else if send_at > now + config.max_schedule_ahead {
            errors.push(FieldError::new(
                "send_at",
                "send_at_too_far",
                format!(
                    "`send_at` is more than {} days ahead",
                    config.max_schedule_ahead.as_hours() / 24
                ),
            ));
        }
    }

    let (Some(to), Some(body), true) = (to, body, errors.is_empty()) else {
        return Err(errors);
    };
    let country = to.region();
    Ok(NewMessage {
        id: Uuid::now_v7(),
        scope,
        api_key_id,
        to: to.e164().to_owned(),
        country,
        sender,
        estimated_cost: prices.estimate(country, request.kind, body.info.segments),
        currency: prices.currency(),
        encoding: body.info.encoding,
        segments: body.info.segments,
        body: body.text,
        kind: request.kind,
        priority: request.kind.default_priority(),
        send_at: request.send_at.filter(|at| *at > now),
        max_attempts: config.max_attempts,
        created_at: now,
        broadcast_id: None,
        campaign_run_id: None,
    })
}

fn phone_error(field: &'static str, error: &PhoneError) -> FieldError {
    FieldError::new(
        field,
        error.code(),
        format!("`{field}` is not a valid phone number: {error}"),
    )
}

/// A sender is an E.164 number, a short code (3–8 digits) or an alphanumeric sender ID
/// (1–11 letters, digits and spaces, at least one letter — the GSM rule carriers enforce).
fn sender(from: &str) -> Result<String, FieldError> {
    if from.starts_with('+') {
        return PhoneNumber::parse(from, None)
            .map(|number| number.e164().to_owned())
            .map_err(|error| phone_error("from", &error));
    }
    let digits = from.bytes().all(|b| b.is_ascii_digit());
    if digits && (3..=8).contains(&from.len()) {
        return Ok(from.to_owned());
    }
    let alphanumeric = from.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ');
    let has_letter = from.bytes().any(|b| b.is_ascii_alphabetic());
    if alphanumeric && has_letter && (1..=11).contains(&from.len()) {
        return Ok(from.to_owned());
    }
    Err(FieldError::new(
        "from",
        "invalid_sender",
        "`from` must be an E.164 number, a short code or an alphanumeric sender ID of up to 11 characters",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_domain::encoding::Encoding;
    use herald_domain::message::Mode;
    use herald_domain::phone::Region;

    fn org() -> Organization {
        Organization {
            id: Uuid::now_v7(),
            name: "acme".into(),
            default_region: Region::parse("US").unwrap(),
            created_at: now(),
        }
    }

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn request(to: &str, body: &str) -> SendRequest {
        SendRequest {
            to: Some(to.into()),
            body: Some(body.into()),
            ..SendRequest::default()
        }
    }

    fn run(request: &SendRequest) -> Result<NewMessage, Vec<FieldError>> {
        let org = org();
        let scope = Scope {
            org_id: org.id,
            mode: Mode::Live,
        };
        let config = IntakeConfig::default();
        prepare(&config, &config.prices, &org, scope, None, request, now())
    }

    fn codes(result: Result<NewMessage, Vec<FieldError>>) -> Vec<(&'static str, &'static str)> {
        result
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect()
    }

    #[test]
    fn a_national_number_is_read_in_the_organizations_region_and_priced() {
        let message = run(&request("(415) 555-0100", "Hello")).unwrap();
        assert_eq!(message.to, "+14155550100");
        assert_eq!(message.country, Region::parse("US").ok());
        assert_eq!((message.encoding, message.segments), (Encoding::Gsm7, 1));
        assert_eq!(message.estimated_cost.micros(), 7_900);
        assert_eq!(message.send_at, None);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = SendRequest {
            to: Some("not a number".into()),
            body: Some(String::new()),
            from: Some("this sender is far too long".into()),
            send_at: Some(now() - SignedDuration::from_hours(48)),
            ..SendRequest::default()
        };
        assert_eq!(
            codes(run(&bad)),
            vec![
                ("to", "not_a_number"),
                ("body", "empty_body"),
                ("from", "invalid_sender"),
                ("send_at", "send_at_in_past"),
            ]
        );
        assert_eq!(
            codes(run(&SendRequest::default())),
            vec![("to", "required"), ("body", "required")]
        );
    }

    #[test]
    fn max_segments_rejects_or_truncates() {
        let long = "a".repeat(400);
        let mut req = request("+14155550100", &long);
        req.max_segments = Some(2);
        assert_eq!(codes(run(&req)), vec![("body", "too_many_segments")]);
        req.truncate = true;
        let message = run(&req).unwrap();
        assert_eq!((message.segments, message.body.len()), (2, 306));
        assert_eq!(message.estimated_cost.micros(), 15_800);
    }

    #[test]
    fn smart_encoding_keeps_a_body_in_gsm7() {
        let mut req = request("+14155550100", "It’s “quoted”");
        assert_eq!(run(&req).unwrap().encoding, Encoding::Ucs2);
        req.smart_encoding = true;
        let message = run(&req).unwrap();
        assert_eq!(
            (message.encoding, message.body.as_str()),
            (Encoding::Gsm7, "It's \"quoted\"")
        );
    }

    #[test]
    fn a_future_send_at_schedules_and_a_recent_past_one_sends_now() {
        let mut req = request("+14155550100", "Hi");
        req.send_at = Some(now() + SignedDuration::from_mins(5));
        assert_eq!(run(&req).unwrap().send_at, req.send_at);
        req.send_at = Some(now() - SignedDuration::from_secs(30));
        assert_eq!(run(&req).unwrap().send_at, None);
        req.send_at = Some(now() + SignedDuration::from_hours(24 * 400));
        assert_eq!(codes(run(&req)), vec![("send_at", "send_at_too_far")]);
    }

    #[test]
    fn senders_are_numbers_short_codes_or_alphanumeric_ids() {
        for good in ["+14155550100", "12345", "Herald", "My Salon 1"] {
            let mut req = request("+14155550100", "Hi");
            req.from = Some(good.into());
            assert!(run(&req).is_ok(), "{good}");
        }
        for bad in ["12", "123456789", "Twelve chars", "Hérald", "+1 555"] {
            let mut req = request("+14155550100", "Hi");
            req.from = Some(bad.into());
            assert_eq!(codes(run(&req))[0].0, "from", "{bad}");
        }
    }
}
