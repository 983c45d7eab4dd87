//! API key resolution with a small cache, so a call costs one hash and one map lookup. Answers
//! are shared (`Arc`), never copied per call; a miss asks the resolver on the gateway's
//! background runtime, whose connections (a database pool) must not be driven from serving
//! threads.

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

/// Where keys live (billing state); the gateway asks by secret hash, or by key id for a token.
#[async_trait]
pub trait KeyResolver: Send + Sync + 'static {
    async fn resolve(&self, secret_hash: &str) -> Result<Option<ResolvedKey>, String>;
    /// The key a Péage-issued token was obtained with.
    async fn resolve_id(&self, _key_id: &str) -> Result<Option<ResolvedKey>, String> {
        Ok(None)
    }
    /// A partner's trusted issuer, by the tokens' `iss`.
    async fn issuer(&self, _iss: &str) -> Result<Option<ResolvedIssuer>, String> {
        Ok(None)
    }
}

/// Answers (found or not) remembered for a while, bounded in size.
struct TtlMap<K, V> {
    ttl: Duration,
    entries: Mutex<foldhash::HashMap<K, (Instant, V)>>,
}

const MAX_ENTRIES: usize = 100_000;

impl<K: std::hash::Hash + Eq, V: Clone> TtlMap<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlMap {
            ttl,
            entries: Mutex::default(),
        }
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
        let entries = self.entries.lock().ok()?;
        let (at, v) = entries.get(k)?;
        (at.elapsed() < self.ttl).then(|| (*at, v.clone()))
    }

    fn put(&self, k: K, v: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                // Bounded memory under a flood of random keys: start over rather than grow.
                entries.clear();
            }
            entries.insert(k, (Instant::now(), v));
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

type Lookup<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send>>;

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
}

impl KeyCache {
    /// Call within the runtime the resolver's connections belong to: misses are resolved there.
    pub fn new(resolver: Arc<dyn KeyResolver>, ttl: Duration) -> KeyCache {
        KeyCache {
            resolver,
            by_secret: Arc::new(TtlMap::new(ttl)),
            fingerprints: Fingerprints::default(),
            generation: Arc::default(),
            by_hash: Arc::new(TtlMap::new(ttl)),
            by_id: Arc::new(TtlMap::new(ttl)),
            issuers: Arc::new(TtlMap::new(ttl)),
            background: tokio::runtime::Handle::current(),
        }
    }

    /// Runs `ask` against the resolver on the background runtime.
    async fn ask<T: Send + 'static>(
        &self,
        ask: impl FnOnce(Arc<dyn KeyResolver>) -> Lookup<T>,
    ) -> Result<T, String> {
        let fut = ask(Arc::clone(&self.resolver));
        self.background
            .spawn(fut)
            .await
            .map_err(|e| format!("key lookup task failed: {e}"))?
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
    pub async fn resolve_secret(&self, secret: &str) -> Result<Option<Arc<ResolvedKey>>, String> {
        Ok(self.resolve_fingerprinted(secret).await?.1)
    }

    /// As [`KeyCache::resolve_secret`], with the time the answer was fetched.
    async fn resolve_fingerprinted(
        &self,
        secret: &str,
    ) -> Result<(Instant, Option<Arc<ResolvedKey>>), String> {
        let fingerprint = self.fingerprints.of(secret);
        if let Some(k) = self.by_secret.get_since(&fingerprint) {
            return Ok(k);
        }
        let key = self
            .resolve(&peage_core::ids::api_key::secret_hash(secret))
            .await?;
        self.by_secret.put(fingerprint, key.clone());
        Ok((Instant::now(), key))
    }

    /// As [`KeyCache::resolve_secret`], first in a thread's own copy: a serving thread finds
    /// a key it has seen with no lock shared with other threads. An answer is trusted for the
    /// cache's TTL from when it was fetched, not from when the thread copied it.
    pub(crate) async fn resolve_secret_in(
        &self,
        local: &LocalKeys,
        secret: &str,
    ) -> Result<Option<Arc<ResolvedKey>>, String> {
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

    pub async fn resolve(&self, secret_hash: &str) -> Result<Option<Arc<ResolvedKey>>, String> {
        if let Some(k) = self.by_hash.get(secret_hash) {
            return Ok(k);
        }
        let hash = secret_hash.to_string();
        let key = self
            .ask(move |r| Box::pin(async move { r.resolve(&hash).await }))
            .await?
            .map(Arc::new);
        self.by_hash.put(secret_hash.to_string(), key.clone());
        Ok(key)
    }

    pub async fn resolve_id(&self, key_id: &str) -> Result<Option<Arc<ResolvedKey>>, String> {
        if let Some(k) = self.by_id.get(key_id) {
            return Ok(k);
        }
        let id = key_id.to_string();
        let key = self
            .ask(move |r| Box::pin(async move { r.resolve_id(&id).await }))
            .await?
            .map(Arc::new);
        self.by_id.put(key_id.to_string(), key.clone());
        Ok(key)
    }

    pub async fn issuer(&self, iss: &str) -> Result<Option<ResolvedIssuer>, String> {
        if let Some(i) = self.issuers.get(iss) {
            return Ok(i);
        }
        let name = iss.to_string();
        let issuer = self
            .ask(move |r| Box::pin(async move { r.issuer(&name).await }))
            .await?;
        self.issuers.put(iss.to_string(), issuer.clone());
        Ok(issuer)
    }
}
