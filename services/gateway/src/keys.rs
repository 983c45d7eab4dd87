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
}

/// Where keys live (billing state); the gateway only ever asks by secret hash.
#[async_trait]
pub trait KeyResolver: Send + Sync + 'static {
    async fn resolve(&self, secret_hash: &str) -> Result<Option<ResolvedKey>, String>;
}

/// Secret hash → when it was looked up, and what was found (`None`: no such key).
type Entries = HashMap<String, (Instant, Option<ResolvedKey>)>;

/// Caches answers (found or not) for `ttl`. `invalidate` drops everything, for revocations made
/// in the same process; across processes a revocation takes effect within `ttl`.
#[derive(Clone)]
pub struct KeyCache {
    resolver: Arc<dyn KeyResolver>,
    ttl: Duration,
    entries: Arc<Mutex<Entries>>,
}

const MAX_ENTRIES: usize = 100_000;

impl KeyCache {
    pub fn new(resolver: Arc<dyn KeyResolver>, ttl: Duration) -> KeyCache {
        KeyCache {
            resolver,
            ttl,
            entries: Arc::default(),
        }
    }

    pub fn invalidate(&self) {
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }

    pub async fn resolve(&self, secret_hash: &str) -> Result<Option<ResolvedKey>, String> {
        if let Ok(entries) = self.entries.lock() {
            if let Some((at, key)) = entries.get(secret_hash) {
                if at.elapsed() < self.ttl {
                    return Ok(key.clone());
                }
            }
        }
        let key = self.resolver.resolve(secret_hash).await?;
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                // Bounded memory under a flood of random keys: start over rather than grow.
                entries.clear();
            }
            entries.insert(secret_hash.to_string(), (Instant::now(), key.clone()));
        }
        Ok(key)
    }
}
