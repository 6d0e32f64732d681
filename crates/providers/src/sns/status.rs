//! SNS SMS delivery status logs, as the user's Lambda or log subscription forwards them to
//! Herald: their signature, and their reading as [`ProviderReport`]s.
//!
//! SNS itself only writes these logs to CloudWatch, so the forwarder signs what it posts:
//! hex HMAC-SHA256, keyed with a per-account secret, over `timestamp + "." + body`, where the
//! timestamp is Unix seconds sent beside the signature. A request whose timestamp is too far
//! from now is refused, so a captured request only works within that window; the web layer
//! remembers [`Verified::digest`] until [`Verified::remember_until`] to refuse a replay inside
//! it.
//!
//! A log entry looks like this (fields Herald does not use are left out):
//!
//! ```json
//! {"notification": {"messageId": "34d9b400-…", "timestamp": "2016-06-28 00:40:34.558"},
//!  "delivery": {"destination": "+15555550100", "priceInUSD": 0.00645,
//!               "numberOfMessageParts": 1, "providerResponse": "Message has been accepted by phone carrier",
//!               "dwellTimeMs": 599},
//!  "status": "SUCCESS"}
//! ```
//!
//! The body is one such object or a JSON array of them.

use std::time::Duration;

use herald_domain::money::Amount;
use herald_domain::status::ReportedStatus;
use herald_store::ProviderReport;
use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::NAME;

/// The header carrying the hex signature.
pub const SIGNATURE_HEADER: &str = "x-herald-signature";
/// The header carrying the Unix time, in seconds, at which the request was signed.
pub const TIMESTAMP_HEADER: &str = "x-herald-timestamp";
/// How far a signed timestamp may be from Herald's clock: room for clock skew and a slow
/// forwarder, short enough that the replay cache stays small.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A request whose signature holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// When the forwarder signed the request.
    pub signed_at: Timestamp,
    /// The request's MAC. The same request replayed has the same digest; any other request has
    /// a different one, so remembering digests refuses replays.
    pub digest: [u8; 32],
    /// After this, the timestamp alone refuses the request, so its digest can be forgotten.
    pub remember_until: Timestamp,
}

/// Why a request is refused. The web layer answers every kind the same way (403), and logs
/// the kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the timestamp is not a whole number of seconds")]
    MalformedTimestamp,
    #[error("the signature is not 64 hex digits")]
    MalformedSignature,
    #[error("the signature does not match")]
    Mismatch,
    #[error("signed {seconds} s ago, beyond the tolerance")]
    Stale { seconds: i64 },
    #[error("signed {seconds} s in the future, beyond the tolerance")]
    Future { seconds: i64 },
}

/// The hex signature of `body` signed at `timestamp` (Unix seconds), as a forwarder computes it.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, &timestamp.to_string(), body))
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Check a request's signature and freshness. `timestamp` and `signature` are the header values
/// as received; `body` is the raw request body.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: Timestamp,
    tolerance: Duration,
) -> Result<Verified, SignatureError> {
    let timestamp = timestamp.trim();
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::MalformedTimestamp)?;
    let signed_at =
        Timestamp::from_second(seconds).map_err(|_| SignatureError::MalformedTimestamp)?;
    let mut given = [0u8; 32];
    hex::decode_to_slice(signature.trim(), &mut given)
        .map_err(|_| SignatureError::MalformedSignature)?;
    // The MAC is checked before the time, so a forger learns nothing from which check failed.
    let digest = mac(secret, timestamp, body);
    if !bool::from(digest.ct_eq(&given)) {
        return Err(SignatureError::Mismatch);
    }
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    let age = now.as_second().saturating_sub(seconds);
    if age > tolerance {
        return Err(SignatureError::Stale { seconds: age });
    }
    if age < -tolerance {
        return Err(SignatureError::Future { seconds: -age });
    }
    Ok(Verified {
        signed_at,
        digest,
        remember_until: Timestamp::from_second(seconds.saturating_add(tolerance))
            .unwrap_or(Timestamp::MAX),
    })
}

/// One delivery status log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryLog {
    /// What to record: delivered, or failed with SNS's `providerResponse` as the reason, and the
    /// actual price as the cost.
    pub report: ProviderReport,
    /// When SNS published the message (`notification.timestamp`, UTC).
    pub published_at: Option<Timestamp>,
    /// E.164.
    pub destination: Option<String>,
    /// What SNS charged, in USD, for all of the message's parts.
    pub price_usd: Option<Amount>,
    pub parts: Option<u32>,
    /// How long SNS held the message before the carrier took it.
    pub dwell_time: Option<Duration>,
}

/// The body is not a delivery status log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("entry {index} is not a delivery status log: {reason}")]
    Entry { index: usize, reason: String },
}

#[derive(Deserialize)]
struct RawEntry {
    notification: RawNotification,
    #[serde(default)]
    delivery: RawDelivery,
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNotification {
    message_id: String,
    timestamp: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDelivery {
    destination: Option<String>,
    #[serde(rename = "priceInUSD")]
    price_in_usd: Option<RawPrice>,
    number_of_message_parts: Option<u32>,
    provider_response: Option<String>,
    dwell_time_ms: Option<u64>,
}

/// SNS writes the price as a JSON number; a forwarder may have turned it into a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPrice {
    Number(f64),
    Text(String),
}

/// Read a forwarded body: one log entry or an array of them. A batch is taken whole or not at
/// all, so a forwarder that sent something wrong hears about it instead of losing part of it.
pub fn parse(body: &[u8]) -> Result<Vec<DeliveryLog>, LogError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| LogError::NotJson(e.to_string()))?;
    let entries = match value {
        serde_json::Value::Array(entries) => entries,
        entry => vec![entry],
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| entry_log(entry).map_err(|reason| LogError::Entry { index, reason }))
        .collect()
}

fn entry_log(entry: serde_json::Value) -> Result<DeliveryLog, String> {
    let raw: RawEntry = serde_json::from_value(entry).map_err(|e| e.to_string())?;
    if raw.notification.message_id.is_empty() {
        return Err("notification.messageId is empty".into());
    }
    let status = match raw.status.as_str() {
        "SUCCESS" => ReportedStatus::Delivered,
        "FAILURE" => ReportedStatus::Failed,
        other => return Err(format!("unknown status {other:?}")),
    };
    let published_at = raw
        .notification
        .timestamp
        .as_deref()
        .map(published_at)
        .transpose()?;
    let price_usd = raw.delivery.price_in_usd.map(price).transpose()?;
    let error_message = match status {
        ReportedStatus::Failed => Some(
            raw.delivery
                .provider_response
                .unwrap_or_else(|| "SNS reported a delivery failure".into()),
        ),
        _ => None,
    };
    Ok(DeliveryLog {
        report: ProviderReport {
            provider: NAME.to_owned(),
            // SNS knows only its own id: the report finds its message by that.
            message_id: None,
            provider_message_id: raw.notification.message_id,
            status,
            // SNS gives no code, only `status` and a sentence; its status stands in as the
            // code so the reason is kept with the failure.
            error_code: error_message.as_ref().map(|_| raw.status.clone()),
            error_message,
            cost: price_usd,
        },
        published_at,
        destination: raw.delivery.destination,
        price_usd,
        parts: raw.delivery.number_of_message_parts,
        dwell_time: raw.delivery.dwell_time_ms.map(Duration::from_millis),
    })
}

/// SNS's `2016-06-28 00:40:34.558`, which is UTC.
fn published_at(text: &str) -> Result<Timestamp, String> {
    format!("{}Z", text.trim().replacen(' ', "T", 1))
        .parse()
        .map_err(|_| format!("notification.timestamp {text:?} is not a time"))
}

fn price(raw: RawPrice) -> Result<Amount, String> {
    let usd = match raw {
        RawPrice::Number(usd) => usd,
        RawPrice::Text(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("priceInUSD {text:?} is not a number"))?,
    };
    // Prices are at most a few dollars with a handful of decimals; micro-dollars hold them
    // exactly once the binary fraction is rounded away.
    if !usd.is_finite() || !(0.0..=1_000_000.0).contains(&usd) {
        return Err(format!("priceInUSD {usd} is out of range"));
    }
    Ok(Amount::from_micros((usd * 1_000_000.0).round() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";

    fn now() -> Timestamp {
        Timestamp::from_second(1_763_700_000).unwrap()
    }

    fn verify_at(
        timestamp: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<Verified, SignatureError> {
        verify(SECRET, timestamp, signature, body, now(), DEFAULT_TOLERANCE)
    }

    const SUCCESS: &str = r#"{
        "notification": {"messageId": "34d9b400-c6dd-5444-820d-fbeb0f1f54cf", "timestamp": "2016-06-28 00:40:34.558"},
        "delivery": {"phoneCarrier": "My Phone Carrier", "mnc": 270, "destination": "+15555550100",
                     "priceInUSD": 0.00645, "smsType": "Transactional", "mcc": 310,
                     "numberOfMessageParts": 1,
                     "providerResponse": "Message has been accepted by phone carrier",
                     "dwellTimeMs": 599, "dwellTimeMsUntilDeviceAck": 1344},
        "status": "SUCCESS"}"#;

    const FAILURE: &str = r#"{
        "notification": {"messageId": "1077257a-92f7-5f71-9e8a-d4c2fc7b6cf3", "timestamp": "2016-06-28 00:40:34.559"},
        "delivery": {"mnc": 0, "destination": "+15555550101", "priceInUSD": 0.00645,
                     "smsType": "Transactional", "mcc": 0, "numberOfMessageParts": 2,
                     "providerResponse": "Unknown error attempting to reach phone",
                     "dwellTimeMs": 1420},
        "status": "FAILURE"}"#;

    #[test]
    fn a_correct_signature_within_the_tolerance_verifies() {
        let body = SUCCESS.as_bytes();
        for offset in [0, -300, 300] {
            let signed = now().as_second() + offset;
            let verified = verify_at(&signed.to_string(), &sign(SECRET, signed, body), body)
                .unwrap_or_else(|e| panic!("offset {offset}: {e}"));
            assert_eq!(verified.signed_at.as_second(), signed);
            assert_eq!(verified.remember_until.as_second(), signed + 300);
        }
    }

    #[test]
    fn the_digest_names_the_request() {
        let t = now().as_second();
        let first = verify_at(&t.to_string(), &sign(SECRET, t, b"[]"), b"[]").unwrap();
        let again = verify_at(&t.to_string(), &sign(SECRET, t, b"[]"), b"[]").unwrap();
        let later = verify_at(&(t + 1).to_string(), &sign(SECRET, t + 1, b"[]"), b"[]").unwrap();
        assert_eq!(first.digest, again.digest);
        assert_ne!(first.digest, later.digest);
    }

    #[test]
    fn a_forged_or_altered_request_is_refused() {
        let t = now().as_second();
        let body = SUCCESS.as_bytes();
        let good = sign(SECRET, t, body);
        assert_eq!(
            verify_at(&t.to_string(), &sign(b"other secret", t, body), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_at(&t.to_string(), &good, FAILURE.as_bytes()),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_at(&(t - 1).to_string(), &good, body),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = good.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            verify_at(&t.to_string(), &String::from_utf8(flipped).unwrap(), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_stale_or_future_timestamp_is_refused_even_when_signed() {
        let body = b"[]";
        let old = now().as_second() - 301;
        assert_eq!(
            verify_at(&old.to_string(), &sign(SECRET, old, body), body),
            Err(SignatureError::Stale { seconds: 301 })
        );
        let ahead = now().as_second() + 301;
        assert_eq!(
            verify_at(&ahead.to_string(), &sign(SECRET, ahead, body), body),
            Err(SignatureError::Future { seconds: 301 })
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let t = now().as_second();
        let good = sign(SECRET, t, b"{}");
        for timestamp in ["", "soon", "1.5", "99999999999999999999"] {
            assert_eq!(
                verify_at(timestamp, &good, b"{}"),
                Err(SignatureError::MalformedTimestamp),
                "{timestamp:?}"
            );
        }
        for signature in [
            "",
            "zz",
            &good[..62],
            &format!("{good}00"),
            &format!("sha256={good}"),
        ] {
            assert_eq!(
                verify_at(&t.to_string(), signature, b"{}"),
                Err(SignatureError::MalformedSignature),
                "{signature:?}"
            );
        }
        assert!(verify_at(&t.to_string(), &good.to_uppercase(), b"{}").is_ok());
    }

    #[test]
    fn a_success_is_a_delivery_with_its_price() {
        let logs = parse(SUCCESS.as_bytes()).unwrap();
        assert_eq!(logs.len(), 1);
        let log = &logs[0];
        assert_eq!(
            log.report,
            ProviderReport {
                provider: "sns".into(),
                message_id: None,
                provider_message_id: "34d9b400-c6dd-5444-820d-fbeb0f1f54cf".into(),
                status: ReportedStatus::Delivered,
                error_code: None,
                error_message: None,
                cost: Some(Amount::from_micros(6450)),
            }
        );
        assert_eq!(log.price_usd, Some(Amount::from_micros(6450)));
        assert_eq!(log.destination.as_deref(), Some("+15555550100"));
        assert_eq!(log.parts, Some(1));
        assert_eq!(log.dwell_time, Some(Duration::from_millis(599)));
        assert_eq!(
            log.published_at.unwrap().to_string(),
            "2016-06-28T00:40:34.558Z"
        );
    }

    #[test]
    fn a_failure_carries_the_carriers_response_as_its_reason() {
        let log = &parse(FAILURE.as_bytes()).unwrap()[0];
        assert_eq!(log.report.status, ReportedStatus::Failed);
        assert_eq!(
            log.report.error_message.as_deref(),
            Some("Unknown error attempting to reach phone")
        );
        assert_eq!(log.parts, Some(2));
    }

    #[test]
    fn a_batch_is_read_in_order() {
        let batch = format!("[{SUCCESS}, {FAILURE}]");
        let logs = parse(batch.as_bytes()).unwrap();
        let statuses: Vec<_> = logs.iter().map(|l| l.report.status).collect();
        assert_eq!(
            statuses,
            [ReportedStatus::Delivered, ReportedStatus::Failed]
        );
        assert_eq!(parse(b"[]").unwrap(), []);
    }

    #[test]
    fn prices_in_any_json_spelling_are_read_exactly() {
        let with_price = |price: &str| {
            let body = format!(
                r#"{{"notification": {{"messageId": "m"}}, "delivery": {{"priceInUSD": {price}}}, "status": "SUCCESS"}}"#
            );
            parse(body.as_bytes()).map(|logs| logs[0].price_usd)
        };
        assert_eq!(with_price("0.00645"), Ok(Some(Amount::from_micros(6450))));
        assert_eq!(with_price("6.45e-3"), Ok(Some(Amount::from_micros(6450))));
        assert_eq!(
            with_price("\"0.0581\""),
            Ok(Some(Amount::from_micros(58100)))
        );
        assert_eq!(with_price("0"), Ok(Some(Amount::ZERO)));
        assert!(with_price("-1").is_err());
        assert!(with_price("\"cheap\"").is_err());
    }

    #[test]
    fn malformed_logs_are_refused_whole() {
        assert!(matches!(parse(b"not json"), Err(LogError::NotJson(_))));
        for (body, index) in [
            (r#"{"status": "SUCCESS"}"#.to_owned(), 0),
            (r#"{"notification": {"messageId": ""}, "status": "SUCCESS"}"#.to_owned(), 0),
            (r#"{"notification": {"messageId": "m"}, "status": "PENDING"}"#.to_owned(), 0),
            (
                r#"{"notification": {"messageId": "m", "timestamp": "yesterday"}, "status": "SUCCESS"}"#
                    .to_owned(),
                0,
            ),
            (format!("[{SUCCESS}, 42]"), 1),
            (format!("[{SUCCESS}, {FAILURE}, {{}}]"), 2),
        ] {
            match parse(body.as_bytes()) {
                Err(LogError::Entry { index: i, .. }) => assert_eq!(i, index, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
