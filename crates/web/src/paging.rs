//! Cursor paging, the same for every list in the API: `limit` from 1 to 100 (default 20), and
//! `cursor`, the last item's key from the previous page, base64url-encoded so clients treat it
//! as opaque.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::problem::{FieldProblem, Problem};

/// Paging for lists without filters (provider accounts, inbound messages, opt-outs).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1–100 (default 20).
    pub limit: Option<String>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// The page size asked for.
pub fn limit(raw: Option<&str>) -> Result<u32, FieldProblem> {
    match raw.map(str::parse::<u32>) {
        None => Ok(20),
        Some(Ok(limit @ 1..=100)) => Ok(limit),
        Some(_) => Err(FieldProblem::new(
            "limit",
            "invalid_limit",
            "`limit` must be a whole number from 1 to 100",
        )),
    }
}

/// The key a cursor carries, read by `key` from its bytes.
fn cursor<T>(
    raw: Option<&str>,
    key: impl FnOnce(Vec<u8>) -> Option<T>,
) -> Result<Option<T>, FieldProblem> {
    let Some(raw) = raw else { return Ok(None) };
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(key)
        .map(Some)
        .ok_or_else(|| {
            FieldProblem::new(
                "cursor",
                "invalid_cursor",
                "`cursor` is not a cursor this API returned",
            )
        })
}

/// A cursor holding an id.
pub fn id_cursor(raw: Option<&str>) -> Result<Option<Uuid>, FieldProblem> {
    cursor(raw, |bytes| Uuid::from_slice(&bytes).ok())
}

/// A cursor holding a text key (a phone number).
pub fn text_cursor(raw: Option<&str>) -> Result<Option<String>, FieldProblem> {
    cursor(raw, |bytes| String::from_utf8(bytes).ok())
}

/// The cursor for the page after the one ending with `key`.
pub fn encode(key: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// The page size and position `query` asks for, with the cursor read by `read`.
pub fn params<K>(
    query: &ListQuery,
    read: impl FnOnce(Option<&str>) -> Result<Option<K>, FieldProblem>,
) -> Result<(u32, Option<K>), Problem> {
    match (limit(query.limit.as_deref()), read(query.cursor.as_deref())) {
        (Ok(limit), Ok(after)) => Ok((limit, after)),
        (limit, after) => Err(Problem::invalid_fields(
            [limit.err(), after.err()].into_iter().flatten().collect(),
        )),
    }
}
