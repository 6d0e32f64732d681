//! The messages benchmarks send: distinct valid recipients, a typical OTP body, prepared by
//! the same intake code the API uses (parse, encode, count segments, price), stored in chunks
//! so memory stays flat however many there are.

use anyhow::{Result, anyhow};
use herald_engine::clock::{Clock, SystemClock};
use herald_engine::intake::{self, IntakeConfig, SendRequest};
use herald_store::{NewMessage, Organization, Scope, Store};

/// A typical one-segment transactional body.
pub const BODY: &str = "Your Herald code is 482913. It expires in 10 minutes.";

/// Messages prepared and stored per round.
const CHUNK: u64 = 10_000;

/// The i-th recipient: distinct valid US numbers from +1 415-200-0000.
pub fn recipient(i: u64) -> String {
    format!("+1415{:07}", 2_000_000 + (i % 8_000_000))
}

/// Prepare `n` messages like the API would, in chunks.
pub fn prepare_chunk(
    config: &IntakeConfig,
    org: &Organization,
    scope: Scope,
    range: std::ops::Range<u64>,
) -> Result<Vec<NewMessage>> {
    let now = SystemClock.now();
    range
        .map(|i| {
            let request = SendRequest {
                to: Some(recipient(i)),
                body: Some(BODY.to_owned()),
                ..SendRequest::default()
            };
            intake::prepare(config, org, scope, None, &request, now)
                .map_err(|errors| anyhow!("the benchmark workload is invalid: {errors:?}"))
        })
        .collect()
}

/// Prepare and store `n` queued messages.
pub async fn enqueue(
    store: &dyn Store,
    config: &IntakeConfig,
    org: &Organization,
    scope: Scope,
    n: u64,
) -> Result<()> {
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        let chunk = prepare_chunk(config, org, scope, start..end)?;
        store.insert_messages(&chunk).await?;
        start = end;
    }
    Ok(())
}
