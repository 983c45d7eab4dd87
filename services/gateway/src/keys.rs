//! API key resolution with a small cache, so a call costs one hash and one map lookup. Answers
//! are shared (`Arc`), never copied per call; a miss asks the resolver on the gateway's
//! background runtime, whose connections (a database pool) must not be driven from serving
//! threads.
//!
//! When the resolver fails (billing or its database unreachable), an answer older than the TTL
//! but younger than the stale bound is served instead, counted in [`KeyStats`]: known keys keep
//! working through an outage. After a failure the resolver is not asked again for a second, so
//! calls during an outage are answered at once (stale, or a quick 503 for a key never seen)
//! rather than each waiting for the resolver's timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use peage_core::Env;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedKey {
    pub key_id: String,
    pub partner_id: String,
    pub env: Env,
    pub revoked: bool,
    /// A rotated key's last moment (its overlap window's end): refused from then on.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The partner's current plan: its rate limit and quotas apply to the call.
    pub plan_id: String,
    /// `None`: every API. `Some`: only these `{api}` or `{api}:{version}` (from a token's scope).
    pub scopes: Option<Vec<String>>,
}

/// A partner's own JWT issuer, as the gateway needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIssuer {
    /// Stands for the key id in events and rate limits of calls made with its tokens.
    pub id: String,
    pub partner_id: String,
    pub plan_id: String,
    pub jwks_url: String,
    pub algorithm: String,
    pub audience: String,
    pub env: Env,
}

/// Why a key or issuer could not be looked up, by cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    /// Where keys live did not answer, or answered with an error (the resolver's words).
    #[error("{0}")]
    Unavailable(String),
    /// A lookup failed within the last [`BACKOFF`]: the resolver is left alone meanwhile (the
    /// failure that started it was logged already).
    #[error("key lookups are failing; retrying within a second")]
    BackingOff,
    /// The lookup's task on the background runtime ended without an answer.
    #[error("key lookup task failed: {0}")]
    Task(String),
}

/// Where keys live (billing state); the gateway asks by secret hash, or by key id for a token.
#[async_trait]
pub trait KeyResolver: Send + Sync + 'static {
    async fn resolve(&self, secret_hash: &str) -> Result<Option<ResolvedKey>, KeyLookupError>;
    /// The key a Péage-issued token was obtained with.
    async fn resolve_id(&self, _key_id: &str) -> Result<Option<ResolvedKey>, KeyLookupError> {
        Ok(None)
    }
    /// A partner's trusted issuer, by the tokens' `iss`.
    async fn issuer(&self, _iss: &str) -> Result<Option<ResolvedIssuer>, KeyLookupError> {
        Ok(None)
    }
}

/// Answers (found or not) remembered for a while, bounded in size: fresh for `ttl`, kept for
/// `stale` (at least `ttl`) as a fallback while the resolver fails.
struct TtlMap<K, V> {
    ttl: Duration,
    stale: Duration,
    entries: Mutex<foldhash::HashMap<K, (Instant, V)>>,
}

const MAX_ENTRIES: usize = 100_000;

impl<K: std::hash::Hash + Eq, V: Clone> TtlMap<K, V> {
    fn new(ttl: Duration, stale: Duration) -> Self {
        TtlMap {
            ttl,
            stale: stale.max(ttl),
            entries: Mutex::default(),
        }
    }

    /// An answer past its TTL but within the stale bound, with when it was fetched.
    fn get_stale<Q>(&self, k: &Q) -> Option<(Instant, V)>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.get_within(k, self.stale)
    }

    /// An answer fetched less than `max_age` ago, with when it was fetched.
    fn get_within<Q>(&self, k: &Q, max_age: Duration) -> Option<(Instant, V)>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().ok()?;
        let (at, v) = entries.get(k)?;
        (at.elapsed() < max_age).then(|| (*at, v.clone()))
    }

    fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.get_since(k).map(|(_, v)| v)
    }

    /// The answer and when it was fetched.
    fn get_since<Q>(&self, k: &Q) -> Option<(Instant, V)>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.get_within(k, self.ttl)
    }

    fn put(&self, k: K, v: V) {
        self.put_at(k, Instant::now(), v);
    }

    /// Stores an answer fetched at `at` (a stale answer keeps its first fetch time).
    fn put_at(&self, k: K, at: Instant, v: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                // Bounded memory under a flood of random keys: start over rather than grow;
                // entries past the stale bound go first.
                let stale = self.stale;
                entries.retain(|_, (t, _)| t.elapsed() < stale);
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(k, (at, v));
        }
    }

    fn clear(&self) {
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }
}

/// A 128-bit keyed hash of a secret (SipHash with this process's random keys): the cache finds
/// a key it has seen without computing its SHA-256, and never holds the secret itself.
#[derive(Clone, Default)]
struct Fingerprints(
    std::collections::hash_map::RandomState,
    std::collections::hash_map::RandomState,
);

impl Fingerprints {
    fn of(&self, secret: &str) -> u128 {
        use std::hash::BuildHasher;
        let (a, b) = (self.0.hash_one(secret), self.1.hash_one(secret));
        (u128::from(a) << 64) | u128::from(b)
    }
}

/// One serving thread's copy of the keys it has seen, by fingerprint: (fetched, generation,
/// answer).
#[derive(Default)]
pub(crate) struct LocalKeys {
    entries: Mutex<foldhash::HashMap<u128, LocalKey>>,
}

/// When the answer was fetched, the cache generation it belongs to, and the answer.
type LocalKey = (Instant, u64, Option<Arc<ResolvedKey>>);

type Lookup<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, KeyLookupError>> + Send>>;

/// How long the resolver is left alone after it failed.
const BACKOFF: Duration = Duration::from_secs(1);

/// What the cache did when the resolver failed, for metrics and readiness.
#[derive(Default, Debug)]
pub struct KeyStats {
    /// Lookups the resolver failed (or that were not tried during the backoff after one).
    pub lookup_failures: std::sync::atomic::AtomicU64,
    /// Answers served past their TTL because the resolver failed.
    pub stale_answers: std::sync::atomic::AtomicU64,
    /// Until when the resolver is left alone (ms since `epoch`); 0: it answered last time.
    down_until_ms: std::sync::atomic::AtomicU64,
    /// After the backoff, one lookup at a time tries the resolver again; the others are
    /// answered from what is kept, at once.
    probing: std::sync::atomic::AtomicBool,
    epoch: std::sync::OnceLock<Instant>,
}

/// Lets the next lookup try the resolver again when this one is done (or dropped).
struct Probe<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl KeyStats {
    fn now_ms(&self) -> u64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the resolver answered its last lookup.
    pub fn reachable(&self) -> bool {
        self.down_until_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    }

    /// Whether this lookup may ask the resolver: always while it answers; after a failure, one
    /// lookup at a time once the backoff has passed (the guard lets the next one in).
    fn may_ask(&self) -> Result<Option<Probe<'_>>, ()> {
        let until = self
            .down_until_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if until == 0 {
            return Ok(None);
        }
        if self.now_ms() < until || self.probing.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Err(());
        }
        Ok(Some(Probe(&self.probing)))
    }

    fn failed(&self) {
        let until = (self.now_ms() + u64::try_from(BACKOFF.as_millis()).unwrap_or(1000)).max(1);
        self.down_until_ms
            .store(until, std::sync::atomic::Ordering::Relaxed);
        self.lookup_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn answered(&self) {
        self.down_until_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Caches the resolver's answers for `ttl`. `invalidate` drops everything, for revocations
/// made in the same process; across processes a revocation takes effect within `ttl`.
#[derive(Clone)]
pub struct KeyCache {
    resolver: Arc<dyn KeyResolver>,
    by_secret: Arc<TtlMap<u128, Option<Arc<ResolvedKey>>>>,
    fingerprints: Fingerprints,
    /// Bumped by `invalidate`, so threads' own copies ([`LocalKeys`]) are dropped too.
    generation: Arc<std::sync::atomic::AtomicU64>,
    by_hash: Arc<TtlMap<String, Option<Arc<ResolvedKey>>>>,
    by_id: Arc<TtlMap<String, Option<Arc<ResolvedKey>>>>,
    issuers: Arc<TtlMap<String, Option<ResolvedIssuer>>>,
    background: tokio::runtime::Handle,
    stats: Arc<KeyStats>,
}

/// By default an answer is served for up to 15 minutes while the resolver fails.
pub const DEFAULT_STALE: Duration = Duration::from_secs(15 * 60);

impl KeyCache {
    /// Call within the runtime the resolver's connections belong to: misses are resolved there.
    pub fn new(resolver: Arc<dyn KeyResolver>, ttl: Duration) -> KeyCache {
        KeyCache::with_stale(resolver, ttl, DEFAULT_STALE)
    }

    /// As [`KeyCache::new`], serving answers up to `stale` old while the resolver fails.
    pub fn with_stale(resolver: Arc<dyn KeyResolver>, ttl: Duration, stale: Duration) -> KeyCache {
        KeyCache {
            resolver,
            by_secret: Arc::new(TtlMap::new(ttl, stale)),
            fingerprints: Fingerprints::default(),
            generation: Arc::default(),
            by_hash: Arc::new(TtlMap::new(ttl, stale)),
            by_id: Arc::new(TtlMap::new(ttl, stale)),
            issuers: Arc::new(TtlMap::new(ttl, stale)),
            background: tokio::runtime::Handle::current(),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<KeyStats> {
        Arc::clone(&self.stats)
    }

    /// Runs `ask` against the resolver on the background runtime; during the backoff after a
    /// failure, fails at once without asking.
    async fn ask<T: Send + 'static>(
        &self,
        ask: impl FnOnce(Arc<dyn KeyResolver>) -> Lookup<T>,
    ) -> Result<T, KeyLookupError> {
        let Ok(_probe) = self.stats.may_ask() else {
            self.stats
                .lookup_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(KeyLookupError::BackingOff);
        };
        let fut = ask(Arc::clone(&self.resolver));
        let answer = self
            .background
            .spawn(fut)
            .await
            .map_err(|e| KeyLookupError::Task(e.to_string()))
            .and_then(|r| r);
        match &answer {
            Ok(_) => self.stats.answered(),
            Err(_) => self.stats.failed(),
        }
        answer
    }

    /// Asks with `ask` and caches the answer in `map` under `k`; when that fails, serves what
    /// `map` kept within its stale bound. Answers with when the answer was fetched.
    async fn fetch<K, V>(
        &self,
        map: &TtlMap<K, V>,
        k: K,
        ask: impl FnOnce(Arc<dyn KeyResolver>) -> Lookup<V>,
    ) -> Result<(Instant, V), KeyLookupError>
    where
        K: std::hash::Hash + Eq,
        V: Clone + Send + 'static,
    {
        match self.ask(ask).await {
            Ok(v) => {
                map.put(k, v.clone());
                Ok((Instant::now(), v))
            }
            Err(e) => match map.get_stale(&k) {
                Some(kept) => {
                    self.stats
                        .stale_answers
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(kept)
                }
                None => Err(e),
            },
        }
    }

    pub fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.by_secret.clear();
        self.by_hash.clear();
        self.by_id.clear();
        self.issuers.clear();
    }

    /// The key of an API key's secret, as [`KeyCache::resolve`] finds it by the secret's hash.
    pub async fn resolve_secret(
        &self,
        secret: &str,
    ) -> Result<Option<Arc<ResolvedKey>>, KeyLookupError> {
        Ok(self.resolve_fingerprinted(secret).await?.1)
    }

    /// As [`KeyCache::resolve_secret`], with the time the answer was fetched.
    async fn resolve_fingerprinted(
        &self,
        secret: &str,
    ) -> Result<(Instant, Option<Arc<ResolvedKey>>), KeyLookupError> {
        let fingerprint = self.fingerprints.of(secret);
        if let Some(k) = self.by_secret.get_since(&fingerprint) {
            return Ok(k);
        }
        let (at, key) = self
            .resolve_since(&peage_core::ids::api_key::secret_hash(secret))
            .await?;
        self.by_secret.put_at(fingerprint, at, key.clone());
        Ok((at, key))
    }

    /// As [`KeyCache::resolve_secret`], first in a thread's own copy: a serving thread finds
    /// a key it has seen with no lock shared with other threads. An answer is trusted for the
    /// cache's TTL from when it was fetched, not from when the thread copied it.
    pub(crate) async fn resolve_secret_in(
        &self,
        local: &LocalKeys,
        secret: &str,
    ) -> Result<Option<Arc<ResolvedKey>>, KeyLookupError> {
        let fingerprint = self.fingerprints.of(secret);
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        {
            let entries = local.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, g, k)) = entries.get(&fingerprint) {
                if *g == generation && at.elapsed() < self.by_secret.ttl {
                    return Ok(k.clone());
                }
            }
        }
        // A miss is rare; its future (a lookup on the background runtime) stays off the call's.
        let (at, key) = Box::pin(self.resolve_fingerprinted(secret)).await?;
        let mut entries = local.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(fingerprint, (at, generation, key.clone()));
        Ok(key)
    }

    pub async fn resolve(
        &self,
        secret_hash: &str,
    ) -> Result<Option<Arc<ResolvedKey>>, KeyLookupError> {
        Ok(self.resolve_since(secret_hash).await?.1)
    }

    async fn resolve_since(
        &self,
        secret_hash: &str,
    ) -> Result<(Instant, Option<Arc<ResolvedKey>>), KeyLookupError> {
        if let Some(k) = self.by_hash.get_since(secret_hash) {
            return Ok(k);
        }
        let hash = secret_hash.to_string();
        self.fetch(&self.by_hash, secret_hash.to_string(), move |r| {
            Box::pin(async move { Ok(r.resolve(&hash).await?.map(Arc::new)) })
        })
        .await
    }

    pub async fn resolve_id(
        &self,
        key_id: &str,
    ) -> Result<Option<Arc<ResolvedKey>>, KeyLookupError> {
        if let Some(k) = self.by_id.get(key_id) {
            return Ok(k);
        }
        let id = key_id.to_string();
        let (_, key) = self
            .fetch(&self.by_id, key_id.to_string(), move |r| {
                Box::pin(async move { Ok(r.resolve_id(&id).await?.map(Arc::new)) })
            })
            .await?;
        Ok(key)
    }

    pub async fn issuer(&self, iss: &str) -> Result<Option<ResolvedIssuer>, KeyLookupError> {
        if let Some(i) = self.issuers.get(iss) {
            return Ok(i);
        }
        let name = iss.to_string();
        let (_, issuer) = self
            .fetch(&self.issuers, iss.to_string(), move |r| {
                Box::pin(async move { r.issuer(&name).await })
            })
            .await?;
        Ok(issuer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Knows one key; fails while `down` is set; counts the lookups it is asked.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        asked: AtomicUsize,
    }

    #[async_trait]
    impl KeyResolver for Flaky {
        async fn resolve(&self, secret_hash: &str) -> Result<Option<ResolvedKey>, KeyLookupError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(KeyLookupError::Unavailable("billing unreachable".into()));
            }
            Ok((secret_hash == "known").then(|| ResolvedKey {
                key_id: "key_1".into(),
                partner_id: "prt_1".into(),
                env: Env::Live,
                revoked: false,
                expires_at: None,
                plan_id: "growth".into(),
                scopes: None,
            }))
        }
    }

    #[tokio::test]
    async fn known_keys_are_served_stale_through_an_outage_and_unknown_ones_fail_fast() {
        let flaky = Arc::new(Flaky::default());
        let cache = KeyCache::with_stale(
            Arc::clone(&flaky) as Arc<dyn KeyResolver>,
            Duration::from_millis(20),
            Duration::from_secs(60),
        );
        let found = cache.resolve("known").await.unwrap().unwrap();
        assert!(cache.resolve("unknown").await.unwrap().is_none());
        flaky.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Past the TTL with billing down: the last known answer, counted.
        assert_eq!(cache.resolve("known").await.unwrap().unwrap(), found);
        assert!(cache.resolve("unknown").await.unwrap().is_none());
        assert!(!cache.stats().reachable());
        // A key never seen fails, and within the backoff billing is not even asked.
        let asked = flaky.asked.load(Ordering::SeqCst);
        let t = Instant::now();
        assert!(cache.resolve("never-seen").await.is_err());
        assert!(cache.resolve("known").await.unwrap().is_some());
        assert!(t.elapsed() < Duration::from_millis(500));
        assert_eq!(
            flaky.asked.load(Ordering::SeqCst),
            asked,
            "left alone for a second"
        );
        let stats = cache.stats();
        assert_eq!(stats.stale_answers.load(Ordering::Relaxed), 3);
        assert!(stats.lookup_failures.load(Ordering::Relaxed) >= 3);
        // Billing back: after the backoff one lookup tries again, and answers are fresh.
        flaky.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(BACKOFF + Duration::from_millis(50)).await;
        assert!(cache.resolve("never-seen").await.unwrap().is_none());
        assert!(cache.stats().reachable());
    }

    #[tokio::test]
    async fn answers_older_than_the_stale_bound_are_not_served() {
        let flaky = Arc::new(Flaky::default());
        let cache = KeyCache::with_stale(
            Arc::clone(&flaky) as Arc<dyn KeyResolver>,
            Duration::from_millis(10),
            Duration::from_millis(40),
        );
        cache.resolve("known").await.unwrap().unwrap();
        flaky.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.resolve("known").await.is_err(), "too old to trust");
    }
}
