//! Keys, issuers and revocations from billing's control API (`/v1/gateway/*`) with the
//! gateway's own `gateway` service token: a distributed gateway needs no access to billing's
//! database. [`follow_revocations`] long-polls the revocation feed and drops the key cache when
//! a key is revoked anywhere, so the revocation is in force within about a second on every
//! gateway; the cache's TTL stays as a backstop for a feed that is unreachable.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{header, HeaderValue, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use peage_core::Env;
use serde::Deserialize;

use crate::clients::HttpClient;
use crate::keys::{KeyCache, KeyLookupError, KeyResolver, ResolvedIssuer, ResolvedKey};

/// How the gateway reaches billing.
#[derive(Clone)]
pub struct BillingKeys {
    client: HttpClient<Full<Bytes>>,
    base: String,
    authorization: HeaderValue,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Key {
    key_id: String,
    partner_id: String,
    env: Env,
    revoked: bool,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    plan_id: String,
}

#[derive(Deserialize)]
struct Issuer {
    id: String,
    partner_id: String,
    plan_id: String,
    jwks_url: String,
    algorithm: String,
    audience: String,
    env: Env,
}

#[derive(Deserialize)]
struct Page {
    revocations: Vec<serde_json::Value>,
    cursor: DateTime<Utc>,
}

impl From<Key> for ResolvedKey {
    fn from(k: Key) -> ResolvedKey {
        ResolvedKey {
            key_id: k.key_id,
            partner_id: k.partner_id,
            env: k.env,
            revoked: k.revoked,
            expires_at: k.expires_at,
            plan_id: k.plan_id,
            scopes: None,
        }
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A billing client that cannot be made from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingClientError {
    #[error("billing url {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("the billing token is not a valid header value")]
    Token,
}

impl BillingKeys {
    /// `billing_url` is the control API's base; `token` the gateway's service token.
    pub fn new(
        billing_url: &str,
        token: &str,
        timeout: Duration,
        clients: &crate::Clients,
    ) -> Result<BillingKeys, BillingClientError> {
        let base = billing_url.trim_end_matches('/').to_string();
        base.parse::<Uri>().map_err(|e| BillingClientError::Url {
            url: billing_url.to_string(),
            why: e.to_string(),
        })?;
        Ok(BillingKeys {
            client: clients.http(),
            base,
            authorization: HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| BillingClientError::Token)?,
            timeout,
        })
    }

    /// GETs `path`: `Ok(None)` for a 404, the body for a 2xx, an error otherwise.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<Option<T>, KeyLookupError> {
        self.get_unless(path, None, timeout).await
    }

    /// [`BillingKeys::get`], also `Ok(None)` for a 304 when `etag` is still current.
    async fn get_unless<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        etag: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<T>, KeyLookupError> {
        let unavailable = KeyLookupError::Unavailable;
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| unavailable(format!("{path}: {e}")))?;
        let mut req =
            http::Request::get(uri).header(header::AUTHORIZATION, self.authorization.clone());
        if let Some(tag) = etag {
            req = req.header(header::IF_NONE_MATCH, format!("\"{tag}\""));
        }
        let req = req
            .body(Full::default())
            .map_err(|e| unavailable(e.to_string()))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unavailable(format!("billing: {e}")))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unavailable(format!("billing: {e}")))?
                .to_bytes();
            match status {
                StatusCode::NOT_FOUND | StatusCode::NOT_MODIFIED => Ok(None),
                s if s.is_success() => serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| unavailable(format!("billing answered {path} unreadably: {e}"))),
                s => Err(unavailable(format!(
                    "billing answered {path} with {s}: {}",
                    String::from_utf8_lossy(&body)
                ))),
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "billing did not answer {path} in time"
                )))
            })
    }
}

#[async_trait]
impl KeyResolver for BillingKeys {
    async fn resolve(&self, secret_hash: &str) -> Result<Option<ResolvedKey>, KeyLookupError> {
        let path = format!("/v1/gateway/keys/{}", encode(secret_hash));
        Ok(self.get::<Key>(&path, self.timeout).await?.map(Into::into))
    }

    async fn resolve_id(&self, key_id: &str) -> Result<Option<ResolvedKey>, KeyLookupError> {
        let path = format!("/v1/gateway/key-ids/{}", encode(key_id));
        Ok(self.get::<Key>(&path, self.timeout).await?.map(Into::into))
    }

    async fn issuer(&self, iss: &str) -> Result<Option<ResolvedIssuer>, KeyLookupError> {
        let path = format!("/v1/gateway/issuers?iss={}", encode(iss));
        Ok(self
            .get::<Issuer>(&path, self.timeout)
            .await?
            .map(|i| ResolvedIssuer {
                id: i.id,
                partner_id: i.partner_id,
                plan_id: i.plan_id,
                jwks_url: i.jwks_url,
                algorithm: i.algorithm,
                audience: i.audience,
                env: i.env,
            }))
    }
}

/// Follows billing's revocation feed until `stop` resolves: each revocation drops `keys`'
/// cached answers, on every serving thread. Long polls of 15 s; after a failure, waits a
/// second and starts again from where it was.
pub async fn follow_revocations(
    billing: BillingKeys,
    keys: KeyCache,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    let mut cursor: Option<DateTime<Utc>> = None;
    loop {
        let path = match cursor {
            None => "/v1/gateway/revocations".to_string(),
            Some(c) => format!(
                "/v1/gateway/revocations?wait_ms=15000&after={}",
                encode(&c.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            ),
        };
        let page = tokio::select! {
            _ = &mut stop => return,
            page = billing.get::<Page>(&path, Duration::from_secs(20)) => page,
        };
        match page {
            Ok(Some(page)) => {
                if !page.revocations.is_empty() {
                    tracing::info!(
                        revoked = page.revocations.len(),
                        "gateway: keys revoked; cache dropped"
                    );
                    keys.invalidate();
                }
                cursor = Some(page.cursor);
            }
            Ok(None) | Err(_) => {
                if let Err(e) = page {
                    tracing::warn!(error = %e, "gateway: revocation feed unavailable; the key cache's TTL applies");
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// The catalog of record, as billing serves it (`GET /v1/catalog/active`).
#[derive(Deserialize)]
struct CatalogOfRecord {
    version: String,
    text: String,
}

/// Follows billing's catalog of record (docs/catalog.md, "One catalog across roles"): asks
/// every `every` with the version it runs (billing answers 304 while it is current, and records
/// what this gateway runs), validates a new one with this process's variables, and puts it in
/// force; one it cannot validate is logged once and the running catalog serves on.
pub async fn follow_catalog(
    billing: BillingKeys,
    gateway: std::sync::Arc<crate::Gateway>,
    instance: String,
    every: Duration,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    let mut refused: Option<String> = None;
    loop {
        let running = gateway.catalog().version.clone();
        let path = format!(
            "/v1/catalog/active?role=gateway&instance={}&running={}",
            encode(&instance),
            encode(&running)
        );
        let answer = tokio::select! {
            _ = &mut stop => return,
            a = billing.get_unless::<CatalogOfRecord>(&path, Some(&running), Duration::from_secs(10)) => a,
        };
        match answer {
            Ok(Some(record))
                if record.version != running && refused.as_ref() != Some(&record.version) =>
            {
                let vars = |name: &str| std::env::var(name).ok();
                match peage_core::Catalog::parse("catalog of record", &record.text, &vars) {
                    Ok(c) if c.version == record.version => {
                        gateway.set_catalog(std::sync::Arc::new(c));
                        refused = None;
                    }
                    Ok(c) => {
                        tracing::error!(expected = %record.version, parsed = %c.version, "gateway: the catalog of record reads as another version here; the running catalog serves on");
                        refused = Some(record.version);
                    }
                    Err(e) => {
                        tracing::error!(version = %record.version, error = %e, "gateway: the catalog of record does not validate here; the running catalog serves on");
                        refused = Some(record.version);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "gateway: cannot reach billing for the catalog of record; the running catalog serves on")
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parts_are_percent_encoded() {
        assert_eq!(
            encode("https://idp.example/a b"),
            "https%3A%2F%2Fidp.example%2Fa%20b"
        );
        assert_eq!(
            encode("2026-12-02T07:00:00.000001Z"),
            "2026-12-02T07%3A00%3A00.000001Z"
        );
        assert_eq!(encode("abc_DEF-1.~"), "abc_DEF-1.~");
    }
}
