//! Token buckets kept in the database, so a rate limit holds across every process sharing it.
//!
//! A bucket fills at `rate` tokens a second up to `burst`; taking a token is allowed only when
//! one is there. Both backends read the bucket, compute with [`refill`] and write it back in
//! one transaction that locks the row, so two processes never spend the same token.

/// How fast a bucket fills and how much it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens the bucket holds, i.e. the largest burst; at least 1.
    pub burst: f64,
}

impl Rate {
    /// `per_second` with a burst of one second's worth (at least one token).
    pub fn per_second(per_second: f64) -> Rate {
        Rate {
            per_second,
            burst: per_second.max(1.0),
        }
    }
}

/// A bucket holding `tokens` at `updated_us` (microseconds since the epoch), refilled until
/// `now_us`, then up to `wanted` tokens taken: `(granted, tokens left)`. A bucket seen for the
/// first time (`None`) starts full. Time running backwards (another process's clock a little
/// ahead) adds nothing.
pub fn refill(bucket: Option<(f64, i64)>, now_us: i64, rate: Rate, wanted: u32) -> (u32, f64) {
    let burst = rate.burst.max(1.0);
    let tokens = match bucket {
        None => burst,
        Some((tokens, updated_us)) => {
            let elapsed = (now_us - updated_us).max(0) as f64 / 1e6;
            (tokens + elapsed * rate.per_second.max(0.0)).min(burst)
        }
    };
    let granted = (tokens.floor().max(0.0) as u64).min(u64::from(wanted)) as u32;
    (granted, tokens - f64::from(granted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_bucket_is_full_and_refills_at_its_rate_up_to_its_burst() {
        let rate = Rate {
            per_second: 10.0,
            burst: 5.0,
        };
        assert_eq!(refill(None, 0, rate, 8), (5, 0.0));
        // 0.25 s later: 2.5 tokens, two whole ones.
        let (granted, left) = refill(Some((0.0, 0)), 250_000, rate, 8);
        assert_eq!(granted, 2);
        assert!((left - 0.5).abs() < 1e-9);
        // Long idle: never more than the burst.
        assert_eq!(refill(Some((0.0, 0)), 60_000_000, rate, 100).0, 5);
        // A clock behind the bucket's adds nothing.
        assert_eq!(refill(Some((1.0, 1_000_000)), 0, rate, 3), (1, 0.0));
    }
}
