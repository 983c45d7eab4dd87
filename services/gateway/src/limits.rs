//! Per-key rate limits (requests/s with burst), GCRA through the `governor` crate. These
//! protect upstreams; they are separate from billing quotas (PRODUCT.md §6.9) and never leave
//! the gateway process.
//!
//! One keyed limiter per distinct (per_second, burst) of the catalog's plans, built when the
//! gateway starts, so a call looks its limiter up without a lock. Keys are the 64-bit hash of
//! the key id, so a check allocates nothing (two key ids sharing a hash would share a limit:
//! odds of 2⁻⁶⁴ a pair).

use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::Quota;
use peage_core::pricing::RateLimit;
use peage_core::Catalog;

type KeyLimiter = governor::RateLimiter<
    u64,
    governor::state::keyed::DashMapStateStore<u64, foldhash::fast::RandomState>,
    DefaultClock,
>;

pub struct RateLimits {
    limiters: foldhash::HashMap<(u32, u32), Arc<KeyLimiter>>,
    hasher: foldhash::quality::RandomState,
}

/// A refused call: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    pub per_second: u32,
}

impl RateLimits {
    /// The limiters of every plan's rate limit in `catalog`.
    pub fn for_catalog(catalog: &Catalog) -> RateLimits {
        RateLimits::for_catalog_after(catalog, None)
    }

    /// The same after a reload: a limit `before` had keeps its limiter, and so the calls its
    /// keys made (a reload does not give every key a fresh burst).
    pub fn for_catalog_after(catalog: &Catalog, before: Option<&RateLimits>) -> RateLimits {
        let mut limiters = foldhash::HashMap::default();
        for limit in catalog.plans.iter().filter_map(|p| p.rate_limit.as_ref()) {
            let (Some(per_second), Some(burst)) = (
                NonZeroU32::new(limit.per_second),
                NonZeroU32::new(limit.burst),
            ) else {
                continue;
            };
            let kept = before.and_then(|b| b.limiters.get(&(limit.per_second, limit.burst)));
            limiters
                .entry((limit.per_second, limit.burst))
                .or_insert_with(|| match kept {
                    Some(l) => Arc::clone(l),
                    None => Arc::new(governor::RateLimiter::dashmap_with_hasher(
                        Quota::per_second(per_second).allow_burst(burst),
                        foldhash::fast::RandomState::default(),
                    )),
                });
        }
        RateLimits {
            limiters,
            // The same hasher, so a kept limiter finds its keys.
            hasher: before.map_or_else(Default::default, |b| b.hasher.clone()),
        }
    }

    /// Admits one call of `key_id` under `limit`, or says how long to wait. A limit no plan of
    /// the catalog has (none can reach here) is not enforced.
    pub fn check(&self, key_id: &str, limit: &RateLimit) -> Result<(), Limited> {
        let Some(limiter) = self.limiters.get(&(limit.per_second, limit.burst)) else {
            return Ok(());
        };
        limiter
            .check_key(&self.hasher.hash_one(key_id))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Limited {
                    retry_after: wait,
                    per_second: limit.per_second,
                }
            })
    }

    /// Forgets keys idle long enough to be back at full burst; call now and then.
    pub fn retain_recent(&self) {
        for l in self.limiters.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(per_second: u32, burst: u32) -> Catalog {
        let text = format!(
            r#"
[[api]]
name = "demo"
[[api.versions]]
id = "v1"
live = "http://127.0.0.1:1"

[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "p"
currency = "EUR"
period = {{ every = "month", anchor_day = 1 }}
base_fee = "0"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.001" }}]
rate_limit = {{ per_second = {per_second}, burst = {burst} }}
"#
        );
        Catalog::parse("catalog.toml", &text, &|_| None).unwrap()
    }

    #[test]
    fn a_burst_is_allowed_then_calls_are_spaced() {
        let limits = RateLimits::for_catalog(&catalog(10, 5));
        let limit = RateLimit {
            shadow: false,
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
