//! Per-key rate limits (requests/s with burst), GCRA through the `governor` crate. These
//! protect upstreams; they are separate from billing quotas (PRODUCT.md §6.9) and never leave
//! the gateway process.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use peage_core::pricing::RateLimit;

type KeyLimiter = Arc<DefaultKeyedRateLimiter<String>>;

/// One keyed limiter per distinct (per_second, burst), keyed by API key id.
#[derive(Default)]
pub struct RateLimits {
    limiters: Mutex<HashMap<(u32, u32), KeyLimiter>>,
}

/// A refused call: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    pub per_second: u32,
}

impl RateLimits {
    fn limiter(&self, limit: &RateLimit) -> Option<KeyLimiter> {
        let per_second = NonZeroU32::new(limit.per_second)?;
        let burst = NonZeroU32::new(limit.burst)?;
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        Some(Arc::clone(
            limiters
                .entry((limit.per_second, limit.burst))
                .or_insert_with(|| {
                    Arc::new(DefaultKeyedRateLimiter::dashmap(
                        Quota::per_second(per_second).allow_burst(burst),
                    ))
                }),
        ))
    }

    /// Admits one call of `key_id` under `limit`, or says how long to wait.
    pub fn check(&self, key_id: &str, limit: &RateLimit) -> Result<(), Limited> {
        let Some(limiter) = self.limiter(limit) else {
            return Ok(());
        };
        limiter.check_key(&key_id.to_string()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Limited {
                retry_after: wait,
                per_second: limit.per_second,
            }
        })
    }

    /// Forgets keys idle long enough to be back at full burst; call now and then.
    pub fn retain_recent(&self) {
        let limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        for l in limiters.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_calls_are_spaced() {
        let limits = RateLimits::default();
        let limit = RateLimit {
            per_second: 10,
            burst: 5,
        };
        for _ in 0..5 {
            limits.check("key_a", &limit).unwrap();
        }
        let refused = limits.check("key_a", &limit).unwrap_err();
        assert!(refused.retry_after > Duration::ZERO);
        assert!(refused.retry_after <= Duration::from_millis(100));
        // Keys are limited separately.
        limits.check("key_b", &limit).unwrap();
        std::thread::sleep(Duration::from_millis(110));
        limits.check("key_a", &limit).unwrap();
    }
}
