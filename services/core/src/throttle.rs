//! Limits on wrong credentials per source address: the defence against guessing admin and
//! service tokens, sign-in links and API keys.
//!
//! A source (an IPv4 address, or an IPv6 /64: one host's share of a network) may fail
//! `limit` times in a fixed `window`; after that every attempt from it is refused, right or
//! wrong, until the window ends, so a correct guess cannot be told from a wrong one. Only
//! failures are recorded: a source that never fails is never tracked, and the check it goes
//! through is one atomic load when nobody is failing.
//!
//! Memory is bounded: at most `max_sources` sources are tracked; expired ones are dropped first,
//! and when the table is still full a new failing source is not tracked (counted in
//! [`ThrottleStats::untracked`]), so an attacker with more addresses than that cannot grow
//! memory, only stop being limited beyond it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Where an attempt came from, as the limiter counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(u128);

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                // The /64 prefix, tagged so it never equals an IPv4 source.
                None => Source((u128::from(v6) & !u128::from(u64::MAX)) | 1),
            },
        }
    }

    fn shard(self) -> usize {
        let x = self.0 ^ (self.0 >> 64);
        (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as usize >> 32 & (SHARDS - 1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Refused: too many failures from this source; try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

impl Throttled {
    /// Whole seconds for a `Retry-After` header, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// What the limiter has seen, for `/metrics`.
#[derive(Debug, Default)]
pub struct ThrottleStats {
    /// Wrong credentials recorded.
    pub failures: AtomicU64,
    /// Attempts refused because their source had failed too often.
    pub throttled: AtomicU64,
    /// Failures from new sources not tracked because the table was full.
    pub untracked: AtomicU64,
}

pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    max_per_shard: usize,
    shards: [Mutex<HashMap<Source, Window>>; SHARDS],
    /// Sources tracked across all shards: 0 makes [`FailureLimiter::check`] one load.
    tracked: AtomicUsize,
    pub stats: ThrottleStats,
}

impl FailureLimiter {
    /// `limit` failures per `window` per source; at most `max_sources` sources tracked.
    pub fn new(limit: u32, window: Duration, max_sources: usize) -> FailureLimiter {
        FailureLimiter {
            limit: limit.max(1),
            window,
            max_per_shard: (max_sources / SHARDS).max(1),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            tracked: AtomicUsize::new(0),
            stats: ThrottleStats::default(),
        }
    }

    /// Whether no source is tracked: then every [`FailureLimiter::check`] passes, and a caller
    /// on a hot path need not work out the source or read the clock for it.
    pub fn is_quiet(&self) -> bool {
        self.tracked.load(Ordering::Relaxed) == 0
    }

    fn lock(&self, source: Source) -> std::sync::MutexGuard<'_, HashMap<Source, Window>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.shards[source.shard()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an attempt from `ip` may be checked at all.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Throttled> {
        if self.is_quiet() {
            return Ok(());
        }
        let source = Source::of(ip);
        let mut map = self.lock(source);
        let Some(w) = map.get(&source).copied() else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(w.start);
        if elapsed >= self.window {
            // Over: forget it, so a quiet limiter goes back to its one-load check.
            map.remove(&source);
            self.tracked.fetch_sub(1, Ordering::Relaxed);
            return Ok(());
        }
        if w.failures < self.limit {
            return Ok(());
        }
        self.stats.throttled.fetch_add(1, Ordering::Relaxed);
        Err(Throttled {
            retry_after: self.window - elapsed,
        })
    }

    /// Records a wrong credential from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let source = Source::of(ip);
        let window = self.window;
        let mut map = self.lock(source);
        if let Some(w) = map.get_mut(&source) {
            if now.saturating_duration_since(w.start) >= window {
                *w = Window {
                    start: now,
                    failures: 1,
                };
            } else {
                w.failures = w.failures.saturating_add(1);
            }
            return;
        }
        if map.len() >= self.max_per_shard {
            let before = map.len();
            map.retain(|_, w| now.saturating_duration_since(w.start) < window);
            self.tracked
                .fetch_sub(before - map.len(), Ordering::Relaxed);
            if map.len() >= self.max_per_shard {
                self.stats.untracked.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        map.insert(
            source,
            Window {
                start: now,
                failures: 1,
            },
        );
        self.tracked.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, last))
    }

    #[test]
    fn a_source_is_refused_after_its_limit_until_the_window_ends() {
        let l = FailureLimiter::new(3, Duration::from_secs(60), 1024);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(v4(1), t0), Ok(()));
            l.failed(v4(1), t0);
        }
        let refused = l.check(v4(1), t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(50));
        assert_eq!(refused.retry_after_secs(), 50);
        // Another address is not affected; the window's end frees the first.
        assert_eq!(l.check(v4(2), t0), Ok(()));
        assert_eq!(l.check(v4(1), t0 + Duration::from_secs(60)), Ok(()));
        l.failed(v4(1), t0 + Duration::from_secs(61));
        assert_eq!(l.check(v4(1), t0 + Duration::from_secs(61)), Ok(()));
        assert_eq!(l.stats.failures.load(Ordering::Relaxed), 4);
        assert_eq!(l.stats.throttled.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ipv6_sources_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let l = FailureLimiter::new(2, Duration::from_secs(60), 1024);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        l.failed(a, t0);
        l.failed(b, t0);
        assert!(l.check(a, t0).is_err());
        assert_eq!(l.check(other, t0), Ok(()));
        let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped());
        l.failed(mapped, t0);
        l.failed(v4(7), t0);
        assert!(l.check(v4(7), t0).is_err());
        assert_ne!(
            Source::of(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            Source::of(v4(0))
        );
    }

    #[test]
    fn the_table_is_bounded_and_expired_sources_make_room() {
        let l = FailureLimiter::new(1, Duration::from_secs(60), SHARDS);
        let t0 = Instant::now();
        for i in 0..=255u8 {
            l.failed(v4(i), t0);
        }
        assert!(l.tracked.load(Ordering::Relaxed) <= SHARDS);
        assert!(l.stats.untracked.load(Ordering::Relaxed) > 0);
        // After the window every old entry can go, and new sources are tracked again.
        let later = t0 + Duration::from_secs(61);
        for i in 0..=255u8 {
            l.failed(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), later);
        }
        let tracked_new = (0..=255u8)
            .filter(|i| {
                l.check(IpAddr::V4(Ipv4Addr::new(198, 51, 100, *i)), later)
                    .is_err()
            })
            .count();
        assert!(tracked_new > 0);
        assert!(l.tracked.load(Ordering::Relaxed) <= SHARDS);
    }

    #[test]
    fn nobody_failing_means_nothing_tracked() {
        let l = FailureLimiter::new(20, Duration::from_secs(60), 65_536);
        assert!(l.is_quiet());
        assert_eq!(l.check(v4(1), Instant::now()), Ok(()));
        assert_eq!(l.tracked.load(Ordering::Relaxed), 0);
        l.failed(v4(1), Instant::now());
        assert!(!l.is_quiet());
    }
}
