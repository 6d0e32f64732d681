//! How long to wait before trying a transiently refused message again.

use std::time::Duration;

use rand::RngExt;

/// Exponential backoff with jitter: attempt *n* waits between half and all of
/// `base × 2^(n-1)`, capped at `max`, and never less than the provider's `Retry-After`. The
/// jitter spreads retries of a burst that failed together, so they do not all return at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1 << exponent).min(self.max);
        let half = ceiling / 2;
        let jittered = half
            + ceiling
                .saturating_sub(half)
                .mul_f64(rand::rng().random::<f64>());
        jittered.max(retry_after.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_the_jitter_band_and_stop_at_the_cap() {
        let policy = RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        for _ in 0..200 {
            let first = policy.delay(1, None);
            assert!(
                first >= Duration::from_secs(1) && first <= Duration::from_secs(2),
                "{first:?}"
            );
            let third = policy.delay(3, None);
            assert!(
                third >= Duration::from_secs(4) && third <= Duration::from_secs(8),
                "{third:?}"
            );
            let late = policy.delay(40, None);
            assert!(
                late >= Duration::from_secs(30) && late <= Duration::from_secs(60),
                "{late:?}"
            );
        }
    }

    #[test]
    fn the_providers_retry_after_is_a_floor() {
        let policy = RetryPolicy::default();
        assert!(policy.delay(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
    }
}
