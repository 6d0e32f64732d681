//! What a failed SNS call means for the message: SNS's own refusals sorted by error code and
//! HTTP status, and failures below SNS sorted by whether the request can have reached it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_sdk_sns::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sns::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sns::error::{BoxError, ProvideErrorMetadata, SdkError};

use super::ACCOUNT_PROBLEM;
use crate::SendError;

/// Notes that a request got as far as the network. An error before that point (no credentials
/// found, an endpoint that cannot be resolved) means SNS cannot have the message; the SDK
/// reports some of those errors exactly as it reports a connection lost mid-request.
#[derive(Debug)]
pub(super) struct Transmitted(pub(super) Arc<AtomicBool>);

impl Intercept for Transmitted {
    fn name(&self) -> &'static str {
        "HeraldTransmitted"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Sorts a failed SDK call by what the dispatcher may safely do next. `transmitted` says whether
/// the request reached the network; calls that are safe to repeat (the opt-out ones) pass
/// `true` without tracking it.
pub(super) fn classify<E>(
    error: SdkError<E, aws_sdk_sns::config::http::HttpResponse>,
    transmitted: bool,
) -> SendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &error {
        SdkError::ServiceError(service) => {
            let raw = service.raw();
            let body = raw.body().bytes().map(String::from_utf8_lossy);
            // The SDK reads the code from `ErrorResponse/Error/Code`. Some SNS-compatible
            // servers (moto, for signature and permission errors) nest it differently; they
            // still name it in the `x-amzn-ErrorType` header and in a `<Code>` element.
            let code = service
                .err()
                .code()
                .map(str::to_owned)
                .or_else(|| {
                    let header = raw.headers().get("x-amzn-errortype")?;
                    Some(header.split(':').next().unwrap_or(header).to_owned())
                })
                .or_else(|| xml_text(body.as_deref()?, "Code"));
            let message = service
                .err()
                .message()
                .map(str::to_owned)
                .or_else(|| xml_text(body.as_deref()?, "Message"));
            refusal(raw.status().as_u16(), code.as_deref(), message.as_deref())
        }
        // The request was never sent: nothing to duplicate.
        SdkError::ConstructionFailure(_) => SendError::Transient {
            code: "not_sent".into(),
            message: error_chain(&error),
            retry_after: None,
        },
        _ if !transmitted => SendError::Transient {
            code: "not_sent".into(),
            message: error_chain(&error),
            retry_after: None,
        },
        SdkError::DispatchFailure(failure)
            if never_connected(
                failure.is_timeout(),
                failure.is_io(),
                failure
                    .as_connector_error()
                    .map(|e| e as &(dyn std::error::Error + 'static)),
            ) =>
        {
            SendError::Transient {
                code: "connect".into(),
                message: error_chain(&error),
                retry_after: None,
            }
        }
        SdkError::TimeoutError(_) => SendError::Unanswered {
            code: "timeout".into(),
            message: "SNS did not answer in time".into(),
        },
        _ => SendError::Unanswered {
            code: "request".into(),
            message: error_chain(&error),
        },
    }
}

/// Whether a dispatch failed before any byte could reach SNS. The connector's own timeout is
/// the connect timeout (the whole attempt is bounded separately and fails as
/// [`SdkError::TimeoutError`]); a refused or unreachable address is reported as an I/O error of
/// that kind somewhere in the error's causes.
fn never_connected(
    timeout: bool,
    io: bool,
    connector: Option<&(dyn std::error::Error + 'static)>,
) -> bool {
    if timeout {
        return true;
    }
    if !io {
        return false;
    }
    let mut cause = connector;
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | NetworkUnreachable | HostUnreachable
            ) {
                return true;
            }
        }
        cause = error.source();
    }
    false
}

/// The text of the first `<tag>` element in `xml`, if it is plain text.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    let text = xml[start..end].trim();
    (!text.is_empty() && !text.contains('<')).then(|| text.to_owned())
}

/// An error with its causes, which the SDK keeps out of its top-level message.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// SNS's answer to a call it refused, by error code and HTTP status.
fn refusal(status: u16, code: Option<&str>, message: Option<&str>) -> SendError {
    let message = message.map_or_else(|| format!("SNS answered HTTP {status}"), str::to_owned);
    let code = code.map_or_else(|| status.to_string(), str::to_owned);
    // Every 401 or 403 from SNS is about the account (keys, signature, permissions), whatever
    // code, if any, the body names.
    let account = matches!(status, 401 | 403)
        || matches!(
            code.as_str(),
            "AuthorizationError"
                | "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "SignatureDoesNotMatch"
                | "IncompleteSignature"
                | "MissingAuthenticationToken"
                | "InvalidAccessKeyId"
                | "ExpiredToken"
                | "ExpiredTokenException"
                | "RequestExpired"
                | "OptInRequired"
        );
    if account {
        return SendError::Transient {
            code: ACCOUNT_PROBLEM.into(),
            message: format!("{code}: {message}"),
            retry_after: None,
        };
    }
    let transient = status == 429
        || status >= 500
        || matches!(
            code.as_str(),
            "Throttling"
                | "ThrottlingException"
                | "ThrottledException"
                | "RequestLimitExceeded"
                | "KMSThrottling"
                | "InternalError"
                | "InternalFailure"
                | "ServiceUnavailable"
        );
    if transient {
        SendError::Transient {
            code,
            message,
            retry_after: None,
        }
    } else {
        SendError::Permanent { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_fail_for_good() {
        for code in ["InvalidParameter", "InvalidParameterValue"] {
            assert!(
                matches!(refusal(400, Some(code), Some("m")), SendError::Permanent { code: c, .. } if c == code)
            );
        }
    }

    #[test]
    fn account_problems_are_retried_under_one_code() {
        for (status, code) in [
            (403, "AuthorizationError"),
            (403, "InvalidClientTokenId"),
            (403, "SignatureDoesNotMatch"),
            (400, "UnrecognizedClientException"),
        ] {
            match refusal(status, Some(code), Some("no")) {
                SendError::Transient {
                    code: c, message, ..
                } => {
                    assert_eq!(c, ACCOUNT_PROBLEM);
                    assert!(message.starts_with(code), "{message}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        for (status, code) in [
            (400, Some("Throttling")),
            (400, Some("KMSThrottling")),
            (500, Some("InternalError")),
            (503, None),
            (429, None),
        ] {
            assert!(
                matches!(refusal(status, code, None), SendError::Transient { .. }),
                "{status} {code:?}"
            );
        }
    }

    #[test]
    fn an_error_code_is_found_in_any_xml_nesting() {
        let body = "<?xml version=\"1.0\"?><ErrorResponse><Errors><Error>\
            <Code>SignatureDoesNotMatch</Code><Message>no</Message></Error></Errors></ErrorResponse>";
        assert_eq!(
            xml_text(body, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(xml_text(body, "Message").as_deref(), Some("no"));
        assert_eq!(xml_text(body, "Type"), None);
        assert_eq!(xml_text("<Code><b>x</b></Code>", "Code"), None);
    }
}
