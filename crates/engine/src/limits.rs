//! Rate limits per provider: messages per second, segments per second and messages per second
//! from each sender, enforced with token buckets kept in the store, so every limit holds across
//! every process sharing the database.
//!
//! Each process takes tokens in small chunks (a tenth of a second's worth) and spends them
//! locally, which keeps the database out of the way of every single send; tokens a process
//! holds are already spent from the shared bucket, so the combined rate never exceeds it.
//!
//! A message takes one token from the provider's messages bucket, one from its sender's bucket
//! and as many as it has segments from the segments bucket. A message with more segments than
//! the segments bucket holds is still sent: the process keeps what the bucket grants and waits
//! for the rest to accrue, so such a message goes out once its segments' worth of time has
//! passed and the rate holds on average (the provider sees one message of N segments at once,
//! as it would from any sender).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_store::Store;
use herald_store::rate::Rate;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// Past this many buckets in memory, those no send is waiting on are forgotten, so senders
/// seen once do not accumulate. A forgotten bucket's unspent tokens are simply not used.
const MAX_BUCKETS: usize = 10_000;

/// How fast one provider may send; a limit left out does not apply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Messages per second through the provider.
    pub messages: Option<Rate>,
    /// Segments per second, for providers that meter segments rather than messages.
    pub segments: Option<Rate>,
    /// Messages per second from each sender on its own (a US long code manages about one).
    pub per_sender: Option<Rate>,
    /// The sender of messages that name none, for `per_sender`: the account's phone number.
    /// `None` when the provider picks the number itself (a Twilio Messaging Service).
    pub default_sender: Option<String>,
}

impl Limits {
    /// Only a messages-per-second limit.
    pub fn messages(rate: Rate) -> Limits {
        Limits {
            messages: Some(rate),
            ..Limits::default()
        }
    }
}

/// One shared bucket and this process's tokens from it.
struct Bucket {
    key: String,
    rate: Rate,
    /// Tokens taken from the shared bucket and not yet spent; the lock also queues waiters.
    reservoir: Mutex<u32>,
}

impl Bucket {
    /// The most tokens taken from the shared bucket at once: a tenth of a second's worth,
    /// within the burst.
    fn chunk(&self) -> u32 {
        ((self.rate.per_second / 10.0).ceil() as u32).clamp(1, self.rate.burst.max(1.0) as u32)
    }

    /// How long `tokens` take to accrue, at most a second so a changed bucket is soon seen.
    fn accrual(&self, tokens: u32) -> Duration {
        Duration::from_secs_f64(f64::from(tokens.max(1)) / self.rate.per_second)
            .min(Duration::from_secs(1))
    }
}

/// The rate limits of every limited provider.
pub struct Limiter {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The server's providers, limited by configuration.
    configured: HashMap<String, Limits>,
    /// Every bucket in use, by key; created on first use and replaced when its rate changes
    /// (organizations' accounts can change theirs at any time).
    buckets: std::sync::Mutex<HashMap<String, Arc<Bucket>>>,
}

impl Limiter {
    /// `limits` maps provider names to their limits; providers not named are not limited.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        limits: &HashMap<String, Limits>,
    ) -> Limiter {
        Limiter {
            store,
            clock,
            configured: limits.clone(),
            buckets: std::sync::Mutex::default(),
        }
    }

    /// The bucket under `key` at `rate`, or none when `rate` limits nothing.
    fn bucket(&self, key: String, rate: Option<Rate>) -> Option<Arc<Bucket>> {
        let rate = rate.filter(|r| r.per_second > 0.0)?;
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| Arc::strong_count(bucket) > 1);
        }
        let fresh = || {
            Arc::new(Bucket {
                key: key.clone(),
                rate,
                reservoir: Mutex::new(0),
            })
        };
        let bucket = buckets.entry(key.clone()).or_insert_with(fresh);
        if bucket.rate != rate {
            *bucket = fresh();
        }
        Some(bucket.clone())
    }

    /// The buckets a message from `sender` (else the default sender) with `segments` segments
    /// draws on, and how many tokens from each. The narrowest comes first, so a message
    /// waiting for its sender holds no token of the provider's that other senders could use.
    fn buckets_for(
        &self,
        provider: &str,
        limits: &Limits,
        segments: u32,
        sender: Option<&str>,
    ) -> Vec<(Arc<Bucket>, u32)> {
        let sender = sender.or(limits.default_sender.as_deref());
        let sender_bucket = sender.and_then(|sender| {
            self.bucket(format!("sender:{provider}:{sender}"), limits.per_sender)
        });
        [
            sender_bucket.map(|b| (b, 1)),
            self.bucket(format!("segments:{provider}"), limits.segments)
                .map(|b| (b, segments.max(1))),
            self.bucket(format!("provider:{provider}"), limits.messages)
                .map(|b| (b, 1)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Wait until a message of `segments` segments from `sender` may go through `provider` —
    /// limited by `limits` when given (an organization's account), else by the configuration;
    /// `false` when `shutdown` came first. Tokens already taken when it gives up are spent.
    pub async fn acquire(
        &self,
        provider: &str,
        limits: Option<&Limits>,
        segments: u32,
        sender: Option<&str>,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(limits) = limits.or_else(|| self.configured.get(provider)) else {
            return true;
        };
        for (bucket, tokens) in self.buckets_for(provider, limits, segments, sender) {
            if !self.take(&bucket, tokens, shutdown).await {
                return false;
            }
        }
        true
    }

    /// Take `tokens` from `bucket`, from this process's reservoir while it lasts, else from the
    /// shared bucket, waiting for them to accrue.
    async fn take(&self, bucket: &Bucket, tokens: u32, shutdown: &CancellationToken) -> bool {
        let mut reservoir = tokio::select! {
            reservoir = bucket.reservoir.lock() => reservoir,
            _ = shutdown.cancelled() => return false,
        };
        loop {
            if *reservoir >= tokens {
                *reservoir -= tokens;
                return true;
            }
            let missing = tokens - *reservoir;
            let wait = match self
                .store
                .take_tokens(
                    &bucket.key,
                    bucket.rate,
                    missing.max(bucket.chunk()),
                    self.clock.now(),
                )
                .await
            {
                Ok(granted) => {
                    // Partial grants are kept: a message larger than the burst collects its
                    // tokens over several refills.
                    *reservoir += granted;
                    if *reservoir >= tokens {
                        continue;
                    }
                    bucket.accrual(tokens - *reservoir)
                }
                Err(error) => {
                    tracing::warn!(%error, bucket = %bucket.key, "cannot read the rate limit; waiting");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use herald_store_sqlite::{SqliteConfig, SqliteStore};
    use jiff::Timestamp;

    fn rate(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }

    /// A limiter on a fresh SQLite store, with the directory that holds it.
    async fn limiter(clock: Arc<dyn Clock>) -> (Limiter, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::connect(&url, &SqliteConfig::default())
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        (Limiter::new(store, clock, &HashMap::new()), dir)
    }

    #[tokio::test]
    async fn a_message_draws_on_its_sender_its_segments_and_the_provider() {
        let clock = Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH));
        let (limiter, _dir) = limiter(clock).await;
        let limits = Limits {
            messages: Some(rate(10.0, 10.0)),
            segments: Some(rate(20.0, 20.0)),
            per_sender: Some(rate(1.0, 1.0)),
            default_sender: Some("+14155550100".into()),
        };
        let buckets = limiter.buckets_for("twilio/a", &limits, 3, None);
        let drawn: Vec<(&str, u32)> = buckets.iter().map(|(b, n)| (b.key.as_str(), *n)).collect();
        assert_eq!(
            drawn,
            [
                ("sender:twilio/a:+14155550100", 1),
                ("segments:twilio/a", 3),
                ("provider:twilio/a", 1),
            ]
        );
        // The message's own sender wins over the default; no sender, no sender bucket.
        let own = limiter.buckets_for("twilio/a", &limits, 1, Some("Acme"));
        assert_eq!(own[0].0.key, "sender:twilio/a:Acme");
        let anonymous = Limits {
            default_sender: None,
            ..limits
        };
        assert_eq!(
            limiter.buckets_for("twilio/a", &anonymous, 1, None).len(),
            2
        );
    }

    #[tokio::test]
    async fn each_sender_has_its_own_bucket() {
        let clock = Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH));
        let (limiter, _dir) = limiter(clock).await;
        let limits = Limits {
            per_sender: Some(rate(1.0, 1.0)),
            default_sender: Some("+14155550100".into()),
            ..Limits::default()
        };
        let now = CancellationToken::new();
        let first = limiter.acquire("p", Some(&limits), 1, None, &now);
        assert!(first.await);
        // The default sender's one token is spent; another sender still has its own.
        let other = limiter.acquire("p", Some(&limits), 1, Some("+14155550199"), &now);
        assert!(other.await);
        let again = limiter.acquire("p", Some(&limits), 1, None, &now);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), again)
                .await
                .is_err(),
            "the default sender's bucket is empty until time passes"
        );
    }

    #[tokio::test]
    async fn a_message_larger_than_the_burst_waits_for_its_segments_to_accrue() {
        // Real time: the bucket must refill while the message waits.
        let (limiter, _dir) = limiter(Arc::new(crate::clock::SystemClock)).await;
        let limits = Limits {
            segments: Some(rate(2.0, 2.0)),
            ..Limits::default()
        };
        let shutdown = CancellationToken::new();
        let started = std::time::Instant::now();
        let sending = limiter.acquire("p", Some(&limits), 5, None, &shutdown);
        assert!(
            tokio::time::timeout(Duration::from_secs(30), sending)
                .await
                .unwrap()
        );
        let sent = started.elapsed();
        // A full bucket of 2, then 3 more at 2 a second: never sooner than 1.5 s.
        assert!(sent >= Duration::from_millis(1_400), "sent after {sent:?}");
        // The bucket is empty: the next segment accrues in half a second.
        assert!(
            limiter
                .acquire("p", Some(&limits), 1, None, &shutdown)
                .await
        );
        let next = started.elapsed() - sent;
        assert!(next >= Duration::from_millis(400), "next after {next:?}");
    }

    #[tokio::test]
    async fn shutdown_ends_a_wait() {
        let clock = Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH));
        let (limiter, _dir) = limiter(clock).await;
        let limits = Limits::messages(rate(1.0, 1.0));
        let shutdown = CancellationToken::new();
        assert!(
            limiter
                .acquire("p", Some(&limits), 1, None, &shutdown)
                .await
        );
        let waiting = limiter.acquire("p", Some(&limits), 1, None, &shutdown);
        shutdown.cancel();
        assert!(!waiting.await);
    }

    #[tokio::test]
    async fn providers_without_limits_are_not_held_back() {
        let clock = Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH));
        let (limiter, _dir) = limiter(clock).await;
        let shutdown = CancellationToken::new();
        for _ in 0..100 {
            assert!(limiter.acquire("free", None, 9, Some("x"), &shutdown).await);
        }
    }
}
