//! The messages benchmarks send, materialised as a campaign would: recipients already
//! normalised (as contacts are stored), a body personalised per recipient, its encoding and
//! segments counted and its cost estimated, then stored queued with its first status — in
//! chunks, preparing the next chunk while the store writes the last, so memory stays flat and
//! both cores work.

use std::sync::Arc;

use anyhow::Result;
use herald_domain::encoding;
use herald_domain::message::MessageType;
use herald_domain::phone::Region;
use herald_engine::clock::{Clock, SystemClock};
use herald_engine::intake::IntakeConfig;
use herald_store::{NewMessage, Scope, Store};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Messages prepared and stored per round.
const CHUNK: u64 = 10_000;

const NAMES: [&str; 8] = [
    "Ana", "Bo", "Chidi", "Dana", "Émile", "Farah", "Gus", "Hiro",
];

/// The i-th recipient: distinct valid US numbers from +1 415-200-0000.
pub fn recipient(i: u64) -> String {
    format!("+1415{:07}", 2_000_000 + (i % 8_000_000))
}

/// A typical reminder, personalised (one name has an accent GSM-7 still covers).
pub fn body(i: u64) -> String {
    let name = NAMES[(i % NAMES.len() as u64) as usize];
    format!(
        "Hi {name}, your appointment is tomorrow at 10:00. Reply C to confirm or STOP to opt out."
    )
}

/// Materialise messages `range` for `scope`.
pub fn materialise(
    config: &IntakeConfig,
    scope: Scope,
    range: std::ops::Range<u64>,
) -> Vec<NewMessage> {
    let now = SystemClock.now();
    let us = Region::parse("US").ok();
    let kind = MessageType::Transactional;
    range
        .map(|i| {
            let text = body(i);
            let info = encoding::analyze(&text);
            NewMessage {
                id: Uuid::now_v7(),
                scope,
                api_key_id: None,
                to: recipient(i),
                country: us,
                sender: None,
                encoding: info.encoding,
                segments: info.segments,
                estimated_cost: config.prices.estimate(us, kind, info.segments),
                currency: config.prices.currency(),
                body: text,
                kind,
                priority: kind.default_priority(),
                send_at: None,
                max_attempts: config.max_attempts,
                created_at: now,
                broadcast_id: None,
                campaign_run_id: None,
            }
        })
        .collect()
}

/// Materialise and store `n` queued messages, preparing chunk k+1 while chunk k is written.
pub async fn enqueue(store: &dyn Store, config: &IntakeConfig, scope: Scope, n: u64) -> Result<()> {
    let (chunks, mut ready) = mpsc::channel::<Vec<NewMessage>>(2);
    let config = Arc::new(config.clone());
    let producer = tokio::task::spawn_blocking(move || {
        let mut start = 0;
        while start < n {
            let end = (start + CHUNK).min(n);
            if chunks
                .blocking_send(materialise(&config, scope, start..end))
                .is_err()
            {
                return;
            }
            start = end;
        }
    });
    while let Some(chunk) = ready.recv().await {
        store.insert_messages(&chunk).await?;
    }
    producer.await?;
    Ok(())
}
