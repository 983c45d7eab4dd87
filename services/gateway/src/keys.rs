//! API key resolution with a small cache, so a call costs one hash and one map lookup.

use std::collections::HashMap;
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
struct TtlMap<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

const MAX_ENTRIES: usize = 100_000;

impl<V: Clone> TtlMap<V> {
    fn new(ttl: Duration) -> Self {
        TtlMap {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn get(&self, k: &str) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let (at, v) = entries.get(k)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    fn put(&self, k: &str, v: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                // Bounded memory under a flood of random keys: start over rather than grow.
                entries.clear();
            }
            entries.insert(k.to_string(), (Instant::now(), v));
        }
    }

    fn clear(&self) {
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }
}

/// Caches the resolver's answers for `ttl`. `invalidate` drops everything, for revocations
/// made in the same process; across processes a revocation takes effect within `ttl`.
#[derive(Clone)]
pub struct KeyCache {
    resolver: Arc<dyn KeyResolver>,
    by_hash: Arc<TtlMap<Option<ResolvedKey>>>,
    by_id: Arc<TtlMap<Option<ResolvedKey>>>,
    issuers: Arc<TtlMap<Option<ResolvedIssuer>>>,
}

impl KeyCache {
    pub fn new(resolver: Arc<dyn KeyResolver>, ttl: Duration) -> KeyCache {
        KeyCache {
            resolver,
            by_hash: Arc::new(TtlMap::new(ttl)),
            by_id: Arc::new(TtlMap::new(ttl)),
            issuers: Arc::new(TtlMap::new(ttl)),
        }
    }

    pub fn invalidate(&self) {
        self.by_hash.clear();
        self.by_id.clear();
        self.issuers.clear();
    }

    pub async fn resolve(&self, secret_hash: &str) -> Result<Option<ResolvedKey>, String> {
        if let Some(k) = self.by_hash.get(secret_hash) {
            return Ok(k);
        }
        let key = self.resolver.resolve(secret_hash).await?;
        self.by_hash.put(secret_hash, key.clone());
        Ok(key)
    }

    pub async fn resolve_id(&self, key_id: &str) -> Result<Option<ResolvedKey>, String> {
        if let Some(k) = self.by_id.get(key_id) {
            return Ok(k);
        }
        let key = self.resolver.resolve_id(key_id).await?;
        self.by_id.put(key_id, key.clone());
        Ok(key)
    }

    pub async fn issuer(&self, iss: &str) -> Result<Option<ResolvedIssuer>, String> {
        if let Some(i) = self.issuers.get(iss) {
            return Ok(i);
        }
        let issuer = self.resolver.issuer(iss).await?;
        self.issuers.put(iss, issuer.clone());
        Ok(issuer)
    }
}
