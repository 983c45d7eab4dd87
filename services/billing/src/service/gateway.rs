//! What a gateway needs from billing state, so it never connects to billing's database: API
//! keys by secret hash or id, partners' JWT issuers, and the feed of revocations it follows to
//! drop a revoked key within a second (docs/gateway.md, "Keys and revocation").

use std::time::Duration;

use chrono::{DateTime, Utc};
use peage_billing_store::{ApiKey, BillingStore, BillingStoreError, TrustedIssuer};
use peage_core::ids::{IssuerId, KeyId, PartnerId};
use peage_core::Env;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;

/// A key as a gateway caches it.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct GatewayKey {
    pub key_id: KeyId,
    pub partner_id: PartnerId,
    #[schema(value_type = String)]
    pub env: Env,
    pub revoked: bool,
    /// A rotated key's last moment (the overlap window): refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The partner's current plan: its rate limit and quotas apply.
    pub plan_id: String,
}

/// A partner's JWT issuer, as a gateway checks its tokens.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct GatewayIssuer {
    pub id: IssuerId,
    pub partner_id: PartnerId,
    pub plan_id: String,
    pub jwks_url: String,
    pub algorithm: String,
    pub audience: String,
    #[schema(value_type = String)]
    pub env: Env,
}

async fn plan_of(
    store: &dyn BillingStore,
    partner_id: &PartnerId,
) -> Result<String, BillingStoreError> {
    Ok(store
        .partner(partner_id)
        .await?
        .map(|p| p.subscription.plan_id)
        .unwrap_or_default())
}

/// A stored key as a gateway needs it, with its partner's current plan: what these routes
/// answer, and what `peage up`'s in-process gateway reads without HTTP.
pub async fn gateway_key(
    store: &dyn BillingStore,
    k: ApiKey,
) -> Result<GatewayKey, BillingStoreError> {
    Ok(GatewayKey {
        plan_id: plan_of(store, &k.partner_id).await?,
        key_id: k.key_id,
        env: k.env,
        // A revocation in the future is a rotation's overlap: valid until then.
        revoked: k.revoked_at.is_some_and(|t| t <= Utc::now()),
        expires_at: k.revoked_at.filter(|t| *t > Utc::now()),
        partner_id: k.partner_id,
    })
}

/// A stored issuer as a gateway needs it, likewise.
pub async fn gateway_issuer(
    store: &dyn BillingStore,
    i: TrustedIssuer,
) -> Result<GatewayIssuer, BillingStoreError> {
    Ok(GatewayIssuer {
        plan_id: plan_of(store, &i.partner_id).await?,
        id: i.id,
        partner_id: i.partner_id,
        jwks_url: i.jwks_url,
        algorithm: i.algorithm,
        audience: i.audience,
        env: i.env,
    })
}

/// Revocations after the cursor, and the cursor to ask from next.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct RevocationPage {
    pub revocations: Vec<RevokedKey>,
    pub cursor: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct RevokedKey {
    pub key_id: KeyId,
    pub revoked_at: DateTime<Utc>,
}

/// How often a waiting request looks for new revocations: a revocation reaches gateways within
/// about this, plus a round trip.
const POLL: Duration = Duration::from_millis(100);
/// The longest a request waits.
pub const MAX_WAIT: Duration = Duration::from_secs(15);

impl Billing {
    async fn gateway_view(&self, k: Option<ApiKey>) -> Result<GatewayKey, ServiceError> {
        let Some(k) = k else {
            return Err(ServiceError::NotFound("no such key".into()));
        };
        Ok(gateway_key(self.store.as_ref(), k).await?)
    }

    /// The key whose secret hashes (SHA-256, hex) to `secret_hash`.
    pub async fn gateway_key_by_hash(&self, secret_hash: &str) -> Result<GatewayKey, ServiceError> {
        let k = self.store.key_by_hash(secret_hash).await?;
        self.gateway_view(k).await
    }

    /// The key a Péage token was obtained with.
    pub async fn gateway_key_by_id(&self, key_id: &str) -> Result<GatewayKey, ServiceError> {
        let Ok(key_id) = KeyId::parse(key_id) else {
            return Err(ServiceError::NotFound("no such key".into()));
        };
        let k = self.store.key(&key_id).await?;
        self.gateway_view(k).await
    }

    /// The partner issuer of tokens whose `iss` is `iss`.
    pub async fn gateway_issuer(&self, iss: &str) -> Result<GatewayIssuer, ServiceError> {
        let Some(i) = self.store.issuer(iss).await? else {
            return Err(ServiceError::NotFound("no such issuer".into()));
        };
        Ok(gateway_issuer(self.store.as_ref(), i).await?)
    }

    /// Keys revoked after `after` (from now when `None`), waiting up to `wait` (at most
    /// [`MAX_WAIT`]) for one when there are none yet: a long poll.
    pub async fn revocations(
        &self,
        after: Option<DateTime<Utc>>,
        wait: Duration,
    ) -> Result<RevocationPage, ServiceError> {
        let started = tokio::time::Instant::now();
        let wait = wait.min(MAX_WAIT);
        let Some(after) = after else {
            return Ok(RevocationPage {
                revocations: Vec::new(),
                cursor: Utc::now(),
            });
        };
        loop {
            let found = self.store.keys_revoked_since(after, 1000).await?;
            if !found.is_empty() || started.elapsed() >= wait {
                let cursor = found.last().map_or(after, |r| r.revoked_at);
                return Ok(RevocationPage {
                    revocations: found
                        .into_iter()
                        .map(|r| RevokedKey {
                            key_id: r.key_id,
                            revoked_at: r.revoked_at,
                        })
                        .collect(),
                    cursor,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
