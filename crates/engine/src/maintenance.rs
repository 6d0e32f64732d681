//! The scheduler and the janitor: releases scheduled messages when their time comes, turns
//! expired leases into `unknown`, reconciles `unknown` messages with their providers, and
//! forgets idempotency keys past their day.

use std::sync::Arc;
use std::time::Duration;

use herald_providers::{Lookup, LookupQuery};
use herald_store::{Settlement, Store, StoreError};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::dispatcher::Router;

/// Maintenance tuning.
#[derive(Clone, Debug)]
pub struct MaintenanceConfig {
    /// Longest sleep between ticks (the scheduler also wakes exactly when a message is due).
    pub interval: Duration,
    /// Rows per statement for releases and lease expiry.
    pub batch_size: u32,
    /// When a provider cannot say what became of a message, ask again after this long.
    pub reconcile_retry: Duration,
    /// How often expired idempotency keys are purged.
    pub purge_every: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            interval: Duration::from_secs(1),
            batch_size: 1_000,
            reconcile_retry: Duration::from_secs(30),
            purge_every: Duration::from_secs(600),
        }
    }
}

/// What one tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickOutcome {
    pub released: u64,
    pub expired: u64,
    pub found: usize,
    pub requeued: usize,
    pub undecided: usize,
}

pub struct Maintenance {
    store: Arc<dyn Store>,
    router: Arc<Router>,
    clock: Arc<dyn Clock>,
    config: MaintenanceConfig,
    /// Woken when messages become claimable.
    dispatch: Arc<Notify>,
}

impl Maintenance {
    pub fn new(
        store: Arc<dyn Store>,
        router: Arc<Router>,
        clock: Arc<dyn Clock>,
        config: MaintenanceConfig,
        dispatch: Arc<Notify>,
    ) -> Maintenance {
        Maintenance {
            store,
            router,
            clock,
            config,
            dispatch,
        }
    }

    /// Release what is due, expire dead leases, reconcile. Tests step time with this.
    pub async fn tick_once(&self) -> Result<TickOutcome, StoreError> {
        let mut outcome = TickOutcome::default();
        let now = self.clock.now();
        loop {
            let released = self.store.release_due(now, self.config.batch_size).await?;
            outcome.released += released;
            if released < u64::from(self.config.batch_size) {
                break;
            }
        }
        loop {
            let expired = self
                .store
                .expire_leases(now, self.config.batch_size)
                .await?;
            outcome.expired += expired;
            if expired < u64::from(self.config.batch_size) {
                break;
            }
        }
        self.reconcile(now, &mut outcome).await?;
        if outcome.released > 0 || outcome.requeued > 0 {
            self.dispatch.notify_one();
        }
        Ok(outcome)
    }

    async fn reconcile(&self, now: Timestamp, outcome: &mut TickOutcome) -> Result<(), StoreError> {
        let unsettled = self.store.unsettled(now, 200).await?;
        if unsettled.is_empty() {
            return Ok(());
        }
        let retry_at =
            now + SignedDuration::try_from(self.config.reconcile_retry).unwrap_or_default();
        let mut settlements = Vec::with_capacity(unsettled.len());
        for message in unsettled {
            // A message names the provider that may have it; asking any other could answer
            // "not found" and send it twice, so a provider that cannot be found now waits.
            let provider = match message.provider.as_deref() {
                Some(name) => self.router.provider_named(message.scope.org_id, name).await,
                None => Some(self.router.route(message.scope.mode).clone()),
            };
            let Some(provider) = provider else {
                outcome.undecided += 1;
                settlements.push((message.id, Settlement::Undecided { retry_at }));
                continue;
            };
            let query = LookupQuery {
                message_id: message.id,
                provider_message_id: message.provider_message_id.clone(),
                to: message.to.clone(),
            };
            let settlement = match provider.lookup(&query).await {
                Ok(Lookup::Found {
                    provider_message_id,
                    status,
                    error_code,
                }) => {
                    outcome.found += 1;
                    Settlement::Found {
                        provider: provider.name().to_owned(),
                        provider_message_id,
                        status,
                        error_code,
                    }
                }
                Ok(Lookup::NotFound) => {
                    outcome.requeued += 1;
                    Settlement::NotFound
                }
                Ok(Lookup::Unsupported) | Err(_) => {
                    outcome.undecided += 1;
                    Settlement::Undecided { retry_at }
                }
            };
            tracing::info!(message_id = %message.id, ?settlement, "reconciled a message of unknown fate");
            settlements.push((message.id, settlement));
        }
        self.store.settle(&settlements, now).await
    }

    /// Tick until `shutdown`, sleeping until the next scheduled message or the interval.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last_purge: Option<Timestamp> = None;
        loop {
            if let Err(error) = self.tick_once().await {
                tracing::error!(%error, "maintenance tick failed");
            }
            let now = self.clock.now();
            let purge_due = last_purge.is_none_or(|at| {
                now.duration_since(at)
                    >= SignedDuration::try_from(self.config.purge_every).unwrap_or_default()
            });
            if purge_due {
                match self.store.purge_idempotency_keys(now).await {
                    Ok(purged) if purged > 0 => {
                        tracing::info!(purged, "forgot expired idempotency keys")
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "failed to purge idempotency keys"),
                }
                last_purge = Some(now);
            }
            let pause = match self.store.next_scheduled_at().await {
                Ok(Some(due)) => Duration::try_from(due.duration_since(self.clock.now()))
                    .unwrap_or_default()
                    .clamp(Duration::from_millis(5), self.config.interval),
                _ => self.config.interval,
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tracing::info!("maintenance stopped");
    }
}
