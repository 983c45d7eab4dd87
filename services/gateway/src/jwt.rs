//! JWT bearer tokens: Péage's own (OAuth2 client credentials, `EdDSA`) and those of a partner's
//! own issuer (its JWKS URL, one pinned algorithm). Verified locally against cached JWKS; a
//! token whose `kid` is unknown triggers one refresh (at most once a second per JWKS).
//!
//! Refused with 401: malformed tokens, `alg: none` and any algorithm other than the issuer's
//! pinned one (so no HS/RS confusion), bad signatures, expired or not-yet-valid tokens, the
//! wrong audience, unknown issuers, revoked keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::clients::{GuardedClient, HttpClient};
use crate::keys::{KeyCache, ResolvedKey};

#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Péage's own tokens: their `iss`, `aud`, and where their JWKS is served.
    pub issuer: String,
    pub audience: String,
    pub jwks_url: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// 401: the token is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// 503: the token could not be checked (JWKS or key store unreachable).
    #[error("{0}")]
    Unavailable(String),
}

fn invalid(s: impl Into<String>) -> JwtError {
    JwtError::Invalid(s.into())
}

#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    key_id: Option<String>,
    scope: Option<String>,
}

struct KeySet {
    fetched: Instant,
    keys: HashMap<String, DecodingKey>,
    /// The key of a set with a single key, for tokens without `kid`.
    only: Option<DecodingKey>,
}

const JWKS_TTL: Duration = Duration::from_secs(300);
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(1);

type JwksClient = HttpClient<http_body_util::Full<bytes::Bytes>>;
type PartnerJwksClient = GuardedClient<http_body_util::Full<bytes::Bytes>>;

pub struct JwtVerifier {
    config: JwtConfig,
    /// For Péage's own JWKS (the operator's billing URL).
    client: JwksClient,
    /// For partners' JWKS: under the outbound policy, so a registered URL cannot make the
    /// gateway call its loopback or private network.
    partner_client: PartnerJwksClient,
    /// JWKS are fetched here (the runtime that made the verifier), not on serving threads.
    background: tokio::runtime::Handle,
    /// Read on every token; written only when a JWKS is (re)fetched.
    sets: RwLock<HashMap<String, Arc<KeySet>>>,
    /// Per JWKS URL: one fetch at a time, and when the last one failed. A slow partner JWKS
    /// never holds up tokens of other issuers.
    fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl JwtVerifier {
    /// Call within the gateway's background runtime; the clients come from the gateway's
    /// [`crate::Clients`].
    pub fn new(
        config: JwtConfig,
        client: JwksClient,
        partner_client: PartnerJwksClient,
    ) -> JwtVerifier {
        JwtVerifier {
            config,
            client,
            partner_client,
            background: tokio::runtime::Handle::current(),
            sets: Default::default(),
            fetches: Default::default(),
        }
    }

    async fn fetch(&self, url: &str) -> Result<KeySet, JwtError> {
        let unavailable = |e: String| JwtError::Unavailable(format!("JWKS {url}: {e}"));
        let uri: http::Uri = url.parse().map_err(|e| unavailable(format!("{e}")))?;
        let req = http::Request::get(uri)
            .body(http_body_util::Full::default())
            .map_err(|e| unavailable(e.to_string()))?;
        let (client, partner_client) = (self.client.clone(), self.partner_client.clone());
        let own = url == self.config.jwks_url;
        let owned_url = url.to_string();
        let fetch = async move {
            let unavailable = |e: String| JwtError::Unavailable(format!("JWKS {owned_url}: {e}"));
            let sent = if own {
                client.request(req).await
            } else {
                partner_client.request(req).await
            };
            let resp = sent.map_err(|e| match peage_net::refusal_in(&e) {
                Some(refused) => unavailable(format!("refused by the outbound policy: {refused}")),
                None => unavailable(e.to_string()),
            })?;
            if !resp.status().is_success() {
                return Err(unavailable(format!("answered {}", resp.status())));
            }
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .to_bytes();
            serde_json::from_slice::<JwkSet>(&body).map_err(|e| unavailable(e.to_string()))
        };
        let set = self
            .background
            .spawn(tokio::time::timeout(Duration::from_secs(5), fetch))
            .await
            .map_err(|e| unavailable(format!("fetch task failed: {e}")))?
            .map_err(|_| unavailable("timed out".into()))??;
        let mut keys = HashMap::new();
        let mut all = Vec::new();
        for jwk in &set.keys {
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    if let Some(kid) = &jwk.common.key_id {
                        keys.insert(kid.clone(), k.clone());
                    }
                    all.push(k);
                }
                Err(e) => tracing::warn!(url, error = %e, "gateway: skipped an unusable JWK"),
            }
        }
        Ok(KeySet {
            fetched: Instant::now(),
            keys,
            only: (all.len() == 1).then(|| all.remove(0)),
        })
    }

    fn cached(&self, url: &str) -> Option<Arc<KeySet>> {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        sets.get(url).cloned()
    }

    /// The key `kid` of the JWKS at `url`, fetching it when missing or stale.
    async fn key(&self, url: &str, kid: Option<&str>) -> Result<DecodingKey, JwtError> {
        let pick = |set: &KeySet| match kid {
            Some(kid) => set.keys.get(kid).cloned(),
            None => set.only.clone(),
        };
        let unknown = || invalid("the token's signing key (kid) is unknown");
        // Fresh and known, or fetched too recently to refresh for an unknown kid (a rotation
        // is picked up within a second; random kids cannot make the gateway hammer a JWKS).
        let settled = |set: &KeySet| {
            let fresh = set.fetched.elapsed() < JWKS_TTL;
            match pick(set) {
                Some(k) if fresh => Some(Ok(k)),
                None if fresh && set.fetched.elapsed() < JWKS_MIN_REFRESH => Some(Err(unknown())),
                _ => None,
            }
        };
        if let Some(answer) = self.cached(url).and_then(|set| settled(&set)) {
            return answer;
        }
        let lock = {
            let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(fetches.entry(url.to_string()).or_default())
        };
        let mut last_failure = lock.lock().await;
        // Another call may have fetched while this one waited.
        if let Some(answer) = self.cached(url).and_then(|set| settled(&set)) {
            return answer;
        }
        let fetched = if last_failure.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            Err(JwtError::Unavailable(format!(
                "JWKS {url} failed moments ago"
            )))
        } else {
            self.fetch(url).await
        };
        match fetched {
            Ok(set) => {
                *last_failure = None;
                let k = pick(&set);
                let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
                sets.insert(url.to_string(), Arc::new(set));
                k.ok_or_else(unknown)
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                // A stale set still verifies tokens while the JWKS is unreachable.
                self.cached(url).and_then(|set| pick(&set)).ok_or(e)
            }
        }
    }

    /// Verifies `token` and says whom it stands for.
    pub async fn verify(&self, token: &str, keys: &KeyCache) -> Result<ResolvedKey, JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| invalid(format!("not an acceptable JWT: {e}")))?;
        let iss = // Only to pick the issuer whose key then verifies the whole token.
            jsonwebtoken::dangerous::insecure_decode_claims::<Unverified>(token)
            .ok()
            .and_then(|c| c.iss)
            .ok_or_else(|| invalid("the token has no issuer (iss)"))?;
        let ours = iss == self.config.issuer;
        let partner_issuer = if ours {
            None
        } else {
            let found = keys
                .issuer(&iss)
                .await
                .map_err(|e| JwtError::Unavailable(e.to_string()))?
                .ok_or_else(|| invalid(format!("tokens from issuer {iss:?} are not accepted")))?;
            Some(found)
        };
        let (pinned, audience, jwks_url) = match &partner_issuer {
            None => (
                Algorithm::EdDSA,
                self.config.audience.clone(),
                self.config.jwks_url.clone(),
            ),
            Some(i) => (
                i.algorithm
                    .parse::<Algorithm>()
                    .map_err(|_| invalid("the issuer's pinned algorithm is unusable"))?,
                i.audience.clone(),
                i.jwks_url.clone(),
            ),
        };
        if header.alg != pinned {
            return Err(invalid(format!(
                "alg {:?} is not accepted from this issuer (it signs with {pinned:?})",
                header.alg
            )));
        }
        let key = self.key(&jwks_url, header.kid.as_deref()).await?;
        let mut validation = Validation::new(pinned);
        validation.set_audience(&[&audience]);
        validation.set_issuer(&[&iss]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                ErrorKind::InvalidAudience => "the token is for another audience (aud)".to_string(),
                ErrorKind::InvalidIssuer => "the token's issuer is wrong (iss)".to_string(),
                ErrorKind::InvalidSignature => "the token's signature is wrong".to_string(),
                ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".to_string(),
                ErrorKind::MissingRequiredClaim(c) => format!("the token lacks the {c} claim"),
                other => format!("the token is not acceptable: {other:?}"),
            })
        })?;
        let claims = data.claims;
        let scopes = claims
            .scope
            .map(|s| s.split_whitespace().map(str::to_string).collect());
        match partner_issuer {
            Some(i) => Ok(ResolvedKey {
                key_id: i.id,
                partner_id: i.partner_id,
                env: i.env,
                revoked: false,
                expires_at: None,
                plan_id: i.plan_id,
                scopes,
            }),
            None => {
                let key_id = claims
                    .key_id
                    .ok_or_else(|| invalid("the token lacks its key_id claim"))?;
                let key = keys
                    .resolve_id(&key_id)
                    .await
                    .map_err(|e| JwtError::Unavailable(e.to_string()))?
                    .ok_or_else(|| invalid("the token's API key no longer exists"))?;
                if key.revoked {
                    return Err(invalid("the token's API key has been revoked"));
                }
                if claims.sub.as_deref() != Some(key.partner_id.as_str()) {
                    return Err(invalid("the token's subject does not own its key"));
                }
                Ok(ResolvedKey {
                    scopes,
                    ..(*key).clone()
                })
            }
        }
    }
}

/// Whether `scopes` (from a token) allow calling `api` at `version`.
pub fn scope_allows(scopes: &[String], api: &str, version: &str) -> bool {
    scopes.iter().any(|s| match s.split_once(':') {
        Some((a, v)) => a == api && v == version,
        None => s == api,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_name_an_api_or_one_version() {
        let s = vec!["weather".to_string(), "maps:v2".to_string()];
        assert!(scope_allows(&s, "weather", "v1"));
        assert!(scope_allows(&s, "maps", "v2"));
        assert!(!scope_allows(&s, "maps", "v1"));
        assert!(!scope_allows(&s, "billing", "v1"));
        assert!(!scope_allows(&[], "weather", "v1"));
    }
}
