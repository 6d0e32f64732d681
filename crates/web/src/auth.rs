//! Bearer-key authentication.
//!
//! A key's shape is checked before any lookup, so junk never reaches the database; a known key
//! is looked up by its SHA-256. The answer for a missing, malformed, unknown or revoked key is
//! the same 401 status with a precise `detail`. Last-used times are written at most once a
//! minute per key, off the request path, so authentication stays a single indexed read.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use herald_engine::keys;
use herald_store::{ApiKey, Organization, Scope};
use jiff::SignedDuration;

use crate::AppState;
use crate::problem::{self, Problem};

/// How stale `last_used_at` may get before it is written again.
const TOUCH_EVERY: SignedDuration = SignedDuration::from_secs(60);

/// The caller, authenticated.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: ApiKey,
    pub org: Organization,
}

impl Caller {
    /// What this caller may see: its organization, and within it its key's mode.
    pub fn scope(&self) -> Scope {
        Scope {
            org_id: self.org.id,
            mode: self.key.mode,
        }
    }
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(&problem::UNAUTHORIZED, detail).with_header(header::WWW_AUTHENTICATE, "Bearer")
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "missing API key: send `Authorization: Bearer sk_live_…`",
            ));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|secret| keys::parse_mode(secret).is_some())
            .ok_or_else(|| {
                unauthorized("malformed API key: expected `Bearer sk_live_…` or `Bearer sk_test_…`")
            })?;

        let engine = &state.engine;
        let (key, org) = engine
            .store
            .find_api_key(&keys::hash(secret))
            .await?
            .ok_or_else(|| unauthorized("unknown API key"))?;
        if key.revoked_at.is_some() {
            return Err(unauthorized("this API key has been revoked"));
        }

        let now = engine.clock.now();
        if key
            .last_used_at
            .is_none_or(|at| now.duration_since(at) >= TOUCH_EVERY)
        {
            let store = engine.store.clone();
            let id = key.id;
            tokio::spawn(async move {
                if let Err(error) = store.touch_api_key(id, now).await {
                    tracing::warn!(%error, key_id = %id, "failed to record API key use");
                }
            });
        }
        Ok(Caller { key, org })
    }
}
