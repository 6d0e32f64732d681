//! Reading requests strictly, so bad input always becomes a precise problem and never a guess.
//!
//! - [`ApiJson`]: a JSON body of at most 64 KiB, with `Content-Type: application/json`. Broken
//!   JSON and unknown fields are 400; a field of the wrong type or value is 422 naming the field.
//! - [`ApiQuery`]: a query string whose unknown or repeated parameters are 400.
//! - [`IdempotencyKey`]: the optional `Idempotency-Key` header.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use serde::de::DeserializeOwned;

use crate::problem::{self, FieldProblem, Problem};

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

/// How much of a too-large body is read and thrown away before answering 413. The HTTP server
/// closes a connection whose request body was not read; a client still writing its body then
/// gets a reset instead of the answer. Reading a bounded amount lets ordinary clients see the
/// 413; anything larger is cut off.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// A JSON request body, parsed strictly.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(Problem::new(
                &problem::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let too_large = || {
            Problem::new(
                &problem::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes"),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        if declared.is_some_and(|length| length > MAX_BODY) {
            if declared.is_some_and(|length| length <= DRAIN_LIMIT) {
                let _ = axum::body::to_bytes(request.into_body(), DRAIN_LIMIT).await;
            }
            return Err(too_large());
        }
        // The router's body limit also stops chunked bodies that declare no length.
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    Problem::new(
                        &problem::MALFORMED_REQUEST,
                        "the request body could not be read",
                    )
                }
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parse `bytes` as `T`, turning serde's complaint into the right problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(Problem::new(
                &problem::MALFORMED_REQUEST,
                "the request body is empty; expected a JSON object",
            ));
        }
        // serde would read a struct from an array too (`[to, body]`); requests are objects.
        Some(b'{') => {}
        Some(_) => {
            return Err(Problem::new(
                &problem::MALFORMED_REQUEST,
                "the body must be a JSON object",
            ));
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Data => {
                if let Some(field) = unknown_field(&message) {
                    // The path already ends at the unknown field, except at the top level.
                    let field = if path == "." { field } else { path };
                    Problem::new(
                        &problem::MALFORMED_REQUEST,
                        format!("unknown field `{field}`"),
                    )
                    .with_errors(vec![FieldProblem {
                        field,
                        code: "unknown_field".into(),
                        message: "this field is not part of the request".into(),
                    }])
                } else if path == "." {
                    Problem::new(
                        &problem::MALFORMED_REQUEST,
                        format!(
                            "the body must be a JSON object: {}",
                            strip_position(&message)
                        ),
                    )
                } else {
                    let message = strip_position(&message);
                    Problem::field(
                        &problem::VALIDATION_FAILED,
                        &path,
                        "invalid_value",
                        format!("`{path}`: {message}"),
                    )
                }
            }
            _ => Problem::new(
                &problem::MALFORMED_REQUEST,
                format!("the body is not valid JSON: {message}"),
            ),
        }
    })?;
    deserializer.end().map_err(|error| {
        Problem::new(
            &problem::MALFORMED_REQUEST,
            format!("the body is not valid JSON: {error}"),
        )
    })?;
    Ok(value)
}

/// serde says ``unknown field `foo`, expected one of …``; pull out `foo`.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// serde_json appends " at line 1 column 23", which means nothing to a client that sent the
/// field by name.
fn strip_position(message: &str) -> &str {
    message
        .find(" at line ")
        .map_or(message, |at| &message[..at])
}

/// A query string, parsed strictly.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|error| {
                let message = error.to_string();
                match unknown_field(&message) {
                    Some(field) => Problem::field(
                        &problem::MALFORMED_REQUEST,
                        &field,
                        "unknown_parameter",
                        format!("unknown query parameter `{field}`"),
                    ),
                    None => Problem::new(
                        &problem::MALFORMED_REQUEST,
                        format!("the query string is not valid: {message}"),
                    ),
                }
            })
    }
}

/// The `Idempotency-Key` header, if sent: 1 to 255 printable ASCII characters.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let key = value.to_str().ok().filter(|key| {
            (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        });
        match key {
            Some(key) => Ok(IdempotencyKey(Some(key.to_owned()))),
            None => Err(Problem::field(
                &problem::MALFORMED_REQUEST,
                "Idempotency-Key",
                "invalid_idempotency_key",
                "`Idempotency-Key` must be 1 to 255 printable ASCII characters",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        to: Option<String>,
        max_segments: Option<u32>,
    }

    fn problem(bytes: &[u8]) -> (u16, Vec<FieldProblem>) {
        let problem = parse_json::<Body>(bytes).unwrap_err();
        (problem.status().as_u16(), problem_errors(problem))
    }

    fn problem_errors(problem: Problem) -> Vec<FieldProblem> {
        let response = axum::response::IntoResponse::into_response(problem);
        let body = futures_body(response);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        serde_json::from_value::<Vec<serde_json::Value>>(value["errors"].clone())
            .unwrap_or_default()
            .into_iter()
            .map(|e| FieldProblem {
                field: e["field"].as_str().unwrap().into(),
                code: e["code"].as_str().unwrap().into(),
                message: e["message"].as_str().unwrap().into(),
            })
            .collect()
    }

    fn futures_body(response: axum::response::Response) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec()
        })
    }

    #[test]
    fn broken_json_and_unknown_fields_are_malformed_requests() {
        assert_eq!(problem(b"{\"to\":").0, 400);
        assert_eq!(problem(b"").0, 400);
        assert_eq!(problem(b"[1]").0, 400);
        assert_eq!(problem(b"{} {}").0, 400);
        let (status, errors) = problem(b"{\"to\":\"+1\",\"colour\":\"red\"}");
        assert_eq!(
            (status, errors[0].field.as_str(), errors[0].code.as_str()),
            (400, "colour", "unknown_field")
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_a_validation_failure_naming_it() {
        let (status, errors) = problem(b"{\"max_segments\":-1}");
        assert_eq!((status, errors[0].field.as_str()), (422, "max_segments"));
        let (status, errors) = problem(b"{\"to\":5}");
        assert_eq!((status, errors[0].field.as_str()), (422, "to"));
    }
}
