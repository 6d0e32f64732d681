//! Checking each field of an account or route as the API or the command line gave it, and
//! reporting every problem at once, each under the name the client used for the field.

use std::collections::BTreeMap;

use herald_domain::phone::{PhoneNumber, Region};
use herald_store::{ProviderKind, RateLimits, RouteKey, Sender, SenderKind};

use super::{AccountInput, Credentials, DEFAULT_MESSAGES_PER_SECOND, FieldError, Secret};

/// No provider we know of allows more; a larger number is a typo.
const MAX_RATE: f64 = 100_000.0;
const MAX_SENDERS: usize = 100;

/// Read a route's key from its API or command-line form: a country code or `default`, and an
/// optional prefix of E.164 digits that must start with the country's calling code.
pub fn route_key(country: &str, prefix: Option<&str>) -> Result<RouteKey, Vec<FieldError>> {
    let mut errors = Vec::new();
    let country = if country.eq_ignore_ascii_case("default") {
        if prefix.is_some() {
            errors.push(FieldError::new(
                "prefix",
                "not_allowed",
                "the default route has no prefix",
            ));
        }
        None
    } else {
        match Region::parse(country) {
            Ok(region) => Some(region),
            Err(_) => {
                errors.push(FieldError::new(
                    "country",
                    "invalid_country",
                    format!("{country:?} is not an ISO 3166-1 alpha-2 country code (or `default`)"),
                ));
                None
            }
        }
    };
    let prefix = prefix.and_then(|prefix| {
        let digits = prefix.strip_prefix('+').unwrap_or(prefix);
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            errors.push(FieldError::new(
                "prefix",
                "invalid_prefix",
                "`prefix` must be 1 to 15 digits of an E.164 number, e.g. 1415",
            ));
            return None;
        }
        if let Some(region) = country {
            let code = region.calling_code().to_string();
            if !digits.starts_with(&code) {
                errors.push(FieldError::new(
                    "prefix",
                    "prefix_outside_country",
                    format!(
                        "numbers of {} start with {code}, so `prefix` must too",
                        region.as_str()
                    ),
                ));
                return None;
            }
        }
        Some(digits.to_owned())
    });
    if errors.is_empty() {
        Ok(RouteKey { country, prefix })
    } else {
        Err(errors)
    }
}

pub(super) fn name(given: Option<&str>, errors: &mut Vec<FieldError>) -> Option<String> {
    let name = given.map(str::trim).unwrap_or("");
    if name.is_empty() {
        errors.push(FieldError::new("name", "required", "`name` is required"));
        None
    } else if name.chars().count() > 100 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "name",
            "invalid_name",
            "`name` must be at most 100 characters, without control characters",
        ));
        None
    } else {
        Some(name.to_owned())
    }
}

pub(super) fn kind(text: &str, errors: &mut Vec<FieldError>) -> Option<ProviderKind> {
    let kind = text.parse().ok();
    if kind.is_none() {
        errors.push(FieldError::new(
            "kind",
            "invalid_kind",
            format!("{text:?} is not a provider kind: use twilio, sns or simulator"),
        ));
    }
    kind
}

/// The fields each kind takes: name, whether it is required, and its check.
type FieldCheck = (&'static str, bool, fn(&str) -> Result<(), &'static str>);

const TWILIO_FIELDS: &[FieldCheck] = &[
    ("account_sid", true, |v| {
        sid(v, "AC")
            .then_some(())
            .ok_or("must be `AC` followed by 32 hexadecimal digits")
    }),
    ("auth_token", true, secret_text),
    ("base_url", false, url),
];

const SNS_FIELDS: &[FieldCheck] = &[
    ("region", true, |v| {
        let ok = (4..=32).contains(&v.len())
            && v.contains('-')
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        ok.then_some(())
            .ok_or("must be an AWS region such as us-east-1")
    }),
    ("access_key_id", true, |v| {
        let ok = (16..=128).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        ok.then_some(())
            .ok_or("must be an AWS access key id such as AKIAIOSFODNN7EXAMPLE")
    }),
    ("secret_access_key", true, secret_text),
    ("endpoint", false, url),
    ("webhook_secret", false, |v| {
        let ok = (16..=256).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic());
        ok.then_some(())
            .ok_or("must be 16 to 256 printable characters without spaces")
    }),
];

fn sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn secret_text(value: &str) -> Result<(), &'static str> {
    let ok = (8..=256).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(())
        .ok_or("must be 8 to 256 printable characters without spaces")
}

fn url(value: &str) -> Result<(), &'static str> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    let ok = rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && value.len() <= 2048
        && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(()).ok_or("must be an http:// or https:// URL")
}

pub(super) fn credentials(
    kind: ProviderKind,
    given: &BTreeMap<String, String>,
    errors: &mut Vec<FieldError>,
) -> Option<Credentials> {
    let fields: &[FieldCheck] = match kind {
        ProviderKind::Twilio => TWILIO_FIELDS,
        ProviderKind::Sns => SNS_FIELDS,
        ProviderKind::Simulator => &[],
    };
    let before = errors.len();
    for name in given.keys() {
        if !fields.iter().any(|(field, _, _)| field == name) {
            errors.push(FieldError::new(
                format!("credentials.{name}"),
                "unknown_field",
                format!("a {} account has no credential `{name}`", kind.as_str()),
            ));
        }
    }
    for (field, required, check) in fields {
        match given.get(*field) {
            None if *required => errors.push(FieldError::new(
                format!("credentials.{field}"),
                "required",
                format!(
                    "`credentials.{field}` is required for a {} account",
                    kind.as_str()
                ),
            )),
            None => {}
            Some(value) => {
                if let Err(problem) = check(value) {
                    errors.push(FieldError::new(
                        format!("credentials.{field}"),
                        "invalid_credential",
                        format!("`credentials.{field}` {problem}"),
                    ));
                }
            }
        }
    }
    if errors.len() > before {
        return None;
    }
    let get = |name: &str| given.get(name).cloned().unwrap_or_default();
    Some(match kind {
        ProviderKind::Twilio => Credentials::Twilio {
            account_sid: get("account_sid"),
            auth_token: Secret(get("auth_token")),
            base_url: given.get("base_url").cloned(),
        },
        ProviderKind::Sns => Credentials::Sns {
            region: get("region"),
            access_key_id: get("access_key_id"),
            secret_access_key: Secret(get("secret_access_key")),
            endpoint: given.get("endpoint").cloned(),
            webhook_secret: given.get("webhook_secret").cloned().map(Secret),
        },
        ProviderKind::Simulator => Credentials::Simulator,
    })
}

pub(super) fn senders(
    kind: Option<ProviderKind>,
    given: &[(String, String)],
    errors: &mut Vec<FieldError>,
) -> Vec<Sender> {
    if given.len() > MAX_SENDERS {
        errors.push(FieldError::new(
            "senders",
            "too_many",
            format!("an account has at most {MAX_SENDERS} senders"),
        ));
        return Vec::new();
    }
    let mut senders: Vec<Sender> = Vec::new();
    for (i, (kind_text, value)) in given.iter().enumerate() {
        let field = format!("senders[{i}]");
        let mut invalid =
            |code, message: String| errors.push(FieldError::new(&field, code, message));
        let sender = match kind_text.parse::<SenderKind>() {
            Err(_) => {
                invalid(
                    "invalid_sender_type",
                    format!(
                        "{kind_text:?} is not a sender type: use phone_number, \
                         messaging_service_sid or alphanumeric_id"
                    ),
                );
                continue;
            }
            Ok(SenderKind::PhoneNumber) => match PhoneNumber::parse(value, None) {
                Ok(number) if value.starts_with('+') => Sender {
                    kind: SenderKind::PhoneNumber,
                    value: number.e164().to_owned(),
                },
                _ => {
                    invalid(
                        "invalid_phone",
                        format!("{value:?} is not a valid E.164 number such as +14155550100"),
                    );
                    continue;
                }
            },
            Ok(SenderKind::MessagingServiceSid) => {
                if kind.is_some_and(|k| k != ProviderKind::Twilio) {
                    invalid(
                        "not_supported",
                        "only Twilio accounts have Messaging Services".to_owned(),
                    );
                    continue;
                }
                if !sid(value, "MG") {
                    invalid(
                        "invalid_messaging_service_sid",
                        "a Messaging Service SID is `MG` followed by 32 hexadecimal digits".into(),
                    );
                    continue;
                }
                Sender {
                    kind: SenderKind::MessagingServiceSid,
                    value: value.clone(),
                }
            }
            Ok(SenderKind::AlphanumericId) => {
                let ok = (1..=11).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b' ')
                    && value.bytes().any(|b| b.is_ascii_alphabetic());
                if !ok {
                    invalid(
                        "invalid_sender_id",
                        "an alphanumeric sender ID is 1 to 11 letters, digits or spaces, \
                         with at least one letter"
                            .into(),
                    );
                    continue;
                }
                Sender {
                    kind: SenderKind::AlphanumericId,
                    value: value.clone(),
                }
            }
        };
        if senders.contains(&sender) {
            invalid("duplicate_sender", "this sender is already listed".into());
            continue;
        }
        senders.push(sender);
    }
    senders
}

pub(super) fn limits(
    current: Option<RateLimits>,
    input: &AccountInput,
    errors: &mut Vec<FieldError>,
) -> RateLimits {
    let mut check = |field: &str, value: f64| {
        if !(value.is_finite() && value > 0.0 && value <= MAX_RATE) {
            errors.push(FieldError::new(
                format!("rate_limit.{field}"),
                "invalid_rate",
                format!("`rate_limit.{field}` must be more than 0 and at most {MAX_RATE}"),
            ));
        }
    };
    let mut limits = current.unwrap_or(RateLimits {
        messages_per_second: DEFAULT_MESSAGES_PER_SECOND,
        segments_per_second: None,
        sender_messages_per_second: None,
    });
    if let Some(rate) = input.messages_per_second {
        check("messages_per_second", rate);
        limits.messages_per_second = rate;
    }
    if let Some(rate) = input.segments_per_second {
        if let Some(rate) = rate {
            check("segments_per_second", rate);
        }
        limits.segments_per_second = rate;
    }
    if let Some(rate) = input.sender_messages_per_second {
        if let Some(rate) = rate {
            check("per_sender_messages_per_second", rate);
        }
        limits.sender_messages_per_second = rate;
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twilio_credentials() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("account_sid".into(), format!("AC{}", "0a".repeat(16))),
            ("auth_token".into(), "tok3n-s3cret".into()),
        ])
    }

    #[test]
    fn credentials_are_checked_field_by_field_for_their_kind() {
        let mut errors = Vec::new();
        let parsed = credentials(ProviderKind::Twilio, &twilio_credentials(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let parsed = parsed.unwrap();
        assert_eq!(
            parsed.shown(),
            vec![
                ("account_sid".to_owned(), format!("AC{}", "0a".repeat(16))),
                ("auth_token".to_owned(), "set".to_owned()),
            ]
        );
        assert!(
            !format!("{parsed:?}").contains("tok3n"),
            "Debug hides secrets"
        );
        let round = Credentials::from_plaintext(ProviderKind::Twilio, &parsed.to_plaintext());
        assert_eq!(round, Some(parsed));

        let mut errors = Vec::new();
        let given = BTreeMap::from([
            ("account_sid".into(), "XX".into()),
            ("region".into(), "us-east-1".into()),
        ]);
        assert!(credentials(ProviderKind::Twilio, &given, &mut errors).is_none());
        let fields: Vec<_> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            fields,
            [
                ("credentials.region", "unknown_field"),
                ("credentials.account_sid", "invalid_credential"),
                ("credentials.auth_token", "required"),
            ]
        );
    }

    #[test]
    fn senders_must_be_e164_numbers_service_sids_or_sender_ids() {
        let given: Vec<(String, String)> = [
            ("phone_number", "+14155550100"),
            ("phone_number", "4155550100"),
            ("phone_number", "+1555"),
            ("alphanumeric_id", "ACME"),
            ("alphanumeric_id", "TOO LONG SENDER"),
            ("messaging_service_sid", "MG123"),
            ("fax", "1"),
            ("phone_number", "+14155550100"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut errors = Vec::new();
        let senders = senders(Some(ProviderKind::Twilio), &given, &mut errors);
        assert_eq!(senders.len(), 2);
        let codes: Vec<_> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            codes,
            [
                ("senders[1]", "invalid_phone"),
                ("senders[2]", "invalid_phone"),
                ("senders[4]", "invalid_sender_id"),
                ("senders[5]", "invalid_messaging_service_sid"),
                ("senders[6]", "invalid_sender_type"),
                ("senders[7]", "duplicate_sender"),
            ]
        );
    }

    #[test]
    fn route_prefixes_are_digits_within_their_country() {
        let us = route_key("US", Some("1415")).unwrap();
        assert_eq!(us.prefix.as_deref(), Some("1415"));
        assert_eq!(route_key("default", None).unwrap(), RouteKey::DEFAULT);
        let code = |country, prefix| route_key(country, prefix).unwrap_err()[0].code;
        assert_eq!(code("US", Some("4420")), "prefix_outside_country");
        assert_eq!(code("US", Some("14a5")), "invalid_prefix");
        assert_eq!(code("XX", None), "invalid_country");
        assert_eq!(code("default", Some("1")), "not_allowed");
    }

    #[test]
    fn rates_must_be_positive_and_finite() {
        let input = AccountInput {
            messages_per_second: Some(0.0),
            segments_per_second: Some(Some(f64::NAN)),
            sender_messages_per_second: Some(Some(-1.0)),
            ..AccountInput::default()
        };
        let mut errors = Vec::new();
        limits(None, &input, &mut errors);
        assert_eq!(errors.len(), 3);
        let mut errors = Vec::new();
        let cleared = AccountInput {
            segments_per_second: Some(None),
            ..AccountInput::default()
        };
        let current = RateLimits {
            messages_per_second: 3.0,
            segments_per_second: Some(5.0),
            sender_messages_per_second: Some(1.0),
        };
        let limits = limits(Some(current), &cleared, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(limits.segments_per_second, None);
        assert_eq!(limits.messages_per_second, 3.0);
    }
}
