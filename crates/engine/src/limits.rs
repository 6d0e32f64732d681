//! Rate limits per provider: messages per second, enforced with token buckets kept in the
//! store, so the limit holds across every process sharing the database.
//!
//! Each process takes tokens in small chunks (a tenth of a second's worth) and spends them
//! locally, which keeps the database out of the way of every single send; tokens a process
//! holds are already spent from the shared bucket, so the combined rate never exceeds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_store::Store;
use herald_store::rate::Rate;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// One shared bucket and this process's tokens from it.
struct Bucket {
    key: String,
    rate: Rate,
    /// Tokens taken from the shared bucket and not yet spent; the lock also queues waiters.
    reservoir: Mutex<u32>,
}

impl Bucket {
    fn new(provider: &str, rate: Rate) -> Bucket {
        Bucket {
            key: format!("provider:{provider}"),
            rate,
            reservoir: Mutex::new(0),
        }
    }
}

/// The rate limits of every limited provider.
pub struct Limiter {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The server's providers, limited by configuration.
    buckets: HashMap<String, Arc<Bucket>>,
    /// Organizations' accounts, limited by their own settings; created on first use and
    /// replaced when the rate changes.
    accounts: std::sync::Mutex<HashMap<String, Arc<Bucket>>>,
}

impl Limiter {
    /// `limits` maps provider names to their rates; providers not named are not limited.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        limits: &HashMap<String, Rate>,
    ) -> Limiter {
        let buckets = limits
            .iter()
            .filter(|(_, rate)| rate.per_second > 0.0)
            .map(|(name, rate)| (name.clone(), Arc::new(Bucket::new(name, *rate))))
            .collect();
        Limiter {
            store,
            clock,
            buckets,
            accounts: std::sync::Mutex::default(),
        }
    }

    fn bucket(&self, provider: &str, rate: Option<Rate>) -> Option<Arc<Bucket>> {
        let Some(rate) = rate.filter(|r| r.per_second > 0.0) else {
            return self.buckets.get(provider).cloned();
        };
        let mut accounts = self.accounts.lock().expect("limiter lock");
        let bucket = accounts
            .entry(provider.to_owned())
            .or_insert_with(|| Arc::new(Bucket::new(provider, rate)));
        if bucket.rate != rate {
            *bucket = Arc::new(Bucket::new(provider, rate));
        }
        Some(bucket.clone())
    }

    /// Wait for a token to send one message through `provider` — limited by `rate` when given
    /// (an organization's account), else by the configuration; `false` when `shutdown` came
    /// first.
    pub async fn acquire(
        &self,
        provider: &str,
        rate: Option<Rate>,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(bucket) = self.bucket(provider, rate) else {
            return true;
        };
        let mut reservoir = tokio::select! {
            reservoir = bucket.reservoir.lock() => reservoir,
            _ = shutdown.cancelled() => return false,
        };
        let chunk = ((bucket.rate.per_second / 10.0).ceil() as u32)
            .clamp(1, bucket.rate.burst.max(1.0) as u32);
        // The time for one token to accrue: how long to wait when the bucket is empty.
        let one_token =
            Duration::from_secs_f64(1.0 / bucket.rate.per_second).min(Duration::from_secs(1));
        loop {
            if *reservoir > 0 {
                *reservoir -= 1;
                return true;
            }
            let wait = match self
                .store
                .take_tokens(&bucket.key, bucket.rate, chunk, self.clock.now())
                .await
            {
                Ok(0) => one_token,
                Ok(granted) => {
                    *reservoir = granted - 1;
                    return true;
                }
                Err(error) => {
                    tracing::warn!(%error, provider, "cannot read the rate limit; waiting");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }
}
