//! What the list and segment handlers do alike, written once: creating one with its
//! `Idempotency-Key` (a retry replays the first response byte for byte), listing a page in
//! creation order, and changing one so that a change another request made in between is never
//! overwritten. [`Audience`] names what differs between the two.

use axum::response::Response;
use herald_store::{AudienceCreation, AudienceRefusal, IdempotencyRecord, Page, Store, StoreError};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::lists::{creation, name_taken, not_found, request_hash};
use crate::paging::{self, ListQuery};
use crate::problem::{self, Problem};

/// Reads and writes a change makes before it gives up on a list or segment that other requests
/// keep changing under it.
pub(crate) const UPDATE_ATTEMPTS: u32 = 8;

/// Before attempt `attempt` (from 1) of a change that found its row changed by others: a
/// random pause, growing with each attempt (up to 64 ms), so writers that collided do not
/// collide again by re-reading at the same instant.
pub(crate) async fn back_off(attempt: u32) {
    use rand::RngExt;
    let ceiling = 500u64 << attempt.min(7);
    let pause = rand::rng().random_range(0..=ceiling);
    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
}

/// A list or segment: how the API shows it and which store calls keep it.
pub(crate) trait Audience: Sized + Send + Sync {
    /// How problems name one: `list`, `segment`.
    const WHAT: &'static str;
    /// The collection's path, `/v1/lists`; one is at `{PATH}/{id}`.
    const PATH: &'static str;
    /// The API's view of one.
    type View: Serialize;

    fn view(&self) -> Self::View;
    fn id(&self) -> Uuid;
    fn updated_at_mut(&mut self) -> &mut Timestamp;

    fn insert(
        store: &dyn Store,
        row: &Self,
        idempotency: Option<&IdempotencyRecord>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Result<AudienceCreation, AudienceRefusal>, StoreError>> + Send;

    fn get(
        store: &dyn Store,
        org_id: Uuid,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Self>, StoreError>> + Send;

    /// Write `row` only while the stored one still has `read_at` as its `updated_at`.
    fn update(
        store: &dyn Store,
        row: &Self,
        read_at: Timestamp,
    ) -> impl Future<Output = Result<Result<(), AudienceRefusal>, StoreError>> + Send;

    fn page(
        store: &dyn Store,
        org_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> impl Future<Output = Result<Page<Self>, StoreError>> + Send;
}

/// Store `row`, new as of `now`, keeping its `Idempotency-Key` (if any) in the same
/// transaction: `201` with the new one, or the first response again when the key was used for
/// the same request. The request is hashed as parsed, so a retry spelled differently matches.
pub(crate) async fn create<A: Audience>(
    state: &AppState,
    row: A,
    idempotency_key: Option<String>,
    request: &impl Serialize,
    now: Timestamp,
) -> Result<Response, Problem> {
    let engine = &state.engine;
    let first_response = serde_json::to_vec(&row.view())
        .map_err(|e| Problem::internal(&format!("failed to render a {}", A::WHAT), &e))?;
    let idempotency = idempotency_key.map(|key| IdempotencyRecord {
        key,
        request_hash: request_hash(
            &format!("POST {}", A::PATH),
            &serde_json::to_value(request).unwrap_or_default(),
        ),
        response: first_response.clone(),
        expires_at: now + engine.config.intake.idempotency_ttl,
    });
    let outcome = A::insert(engine.store.as_ref(), &row, idempotency.as_ref(), now)
        .await?
        .map_err(|r| refusal(r, A::WHAT))?;
    creation(outcome, first_response, row.id(), A::PATH)
}

/// A page of the organization's lists or segments in creation order, with the cursor of the
/// next page (`None` on the last).
pub(crate) async fn page<A: Audience>(
    state: &AppState,
    org_id: Uuid,
    query: &ListQuery,
) -> Result<(Vec<A::View>, Option<String>), Problem> {
    let (limit, after) = paging::params(query, paging::id_cursor)?;
    let page = A::page(state.engine.store.as_ref(), org_id, after, limit).await?;
    Ok((
        page.items.iter().map(A::view).collect(),
        page.next.map(paging::encode),
    ))
}

/// Apply `change` to the organization's list or segment `id` and write it. A change made
/// between our read and our write is not overwritten: read again and re-apply, a few times at
/// most, then answer 503.
pub(crate) async fn update<A: Audience>(
    state: &AppState,
    org_id: Uuid,
    id: Uuid,
    change: impl Fn(&mut A) + Send,
) -> Result<A::View, Problem> {
    let store = state.engine.store.as_ref();
    for attempt in 0..UPDATE_ATTEMPTS {
        if attempt > 0 {
            back_off(attempt).await;
        }
        let mut row = A::get(store, org_id, id)
            .await?
            .ok_or_else(|| not_found(A::WHAT))?;
        let read_at = *row.updated_at_mut();
        change(&mut row);
        *row.updated_at_mut() = changed_at(state.engine.clock.now(), read_at);
        match A::update(store, &row, read_at).await? {
            Ok(()) => return Ok(row.view()),
            Err(AudienceRefusal::Stale) => continue,
            Err(r) => return Err(refusal(r, A::WHAT)),
        }
    }
    Err(busy(A::WHAT))
}

/// A change that found its list or segment changed by others at every attempt.
fn busy(what: &str) -> Problem {
    Problem::new(
        &problem::UNAVAILABLE,
        format!("the {what} is being changed by other requests; retry"),
    )
}

fn refusal(refusal: AudienceRefusal, what: &str) -> Problem {
    match refusal {
        AudienceRefusal::NotFound => not_found(what),
        AudienceRefusal::NameTaken => name_taken(what),
        AudienceRefusal::Stale => busy(what),
    }
}

/// The `updated_at` of a change to a row read with `read_at`: now, but always after the read.
/// Two changes within one clock tick must still differ in `updated_at`, or the second one's
/// stale check would pass over the first and overwrite it.
fn changed_at(now: Timestamp, read_at: Timestamp) -> Timestamp {
    if now > read_at {
        now
    } else {
        read_at + SignedDuration::from_micros(1)
    }
}
