//! Partners' API keys: issued with their secret shown once (only its SHA-256 is stored),
//! listed, revoked and rotated.

use chrono::Utc;
use peage_billing_store::{ApiKey, BillingStore, NewKey, Partner};
use peage_core::ids::api_key;
use peage_core::{Env, KeyId, PartnerId};

use super::billing::Billing;
use super::error::ServiceError;
use super::principal::Principal;

/// Issues a key; returns it with its secret, which exists nowhere else (only the hash is stored).
pub async fn issue_key(
    store: &dyn BillingStore,
    partner_id: &PartnerId,
    env: Env,
) -> Result<(ApiKey, String), ServiceError> {
    let secret = api_key::secret(env, rand::random());
    let key = NewKey {
        key_id: KeyId::from_random(rand::random()),
        partner_id: partner_id.clone(),
        env,
        secret_hash: api_key::secret_hash(&secret),
        prefix: secret.chars().take(12).collect(),
        created_at: Utc::now(),
    };
    let stored = store.create_key(&key).await?;
    tracing::info!(partner_id = %stored.partner_id, key_id = %stored.key_id, env = env.as_str(), "api key issued");
    Ok((stored, secret))
}

/// A key just issued: as stored, and its secret, shown this once.
pub struct IssuedKey {
    pub key: ApiKey,
    pub secret: String,
}

impl Billing {
    pub async fn issue_key(&self, partner: &Partner, env: Env) -> Result<IssuedKey, ServiceError> {
        let (key, secret) = issue_key(self.store.as_ref(), &partner.id, env).await?;
        Ok(IssuedKey { key, secret })
    }

    /// The partner's keys, without secrets.
    pub async fn keys(&self, partner: &Partner) -> Result<Vec<ApiKey>, ServiceError> {
        Ok(self.store.keys(&partner.id).await?)
    }

    /// The key `raw` names, if the caller may see its partner (else "not found").
    pub async fn owned_key(&self, who: &Principal, raw: &str) -> Result<ApiKey, ServiceError> {
        let missing = || ServiceError::not_found("api key", raw);
        let key_id = KeyId::parse(raw).map_err(|_| missing())?;
        let key = self.store.key(&key_id).await?.ok_or_else(missing)?;
        who.may_see(key.partner_id.as_str())
            .map_err(|_| missing())?;
        Ok(key)
    }

    /// Revokes the key `raw` names: answers it before and after.
    pub async fn revoke_key(
        &self,
        who: &Principal,
        raw: &str,
    ) -> Result<(ApiKey, ApiKey), ServiceError> {
        let before = self.owned_key(who, raw).await?;
        let key = self.store.revoke_key(&before.key_id, Utc::now()).await?;
        self.revoked();
        tracing::info!(key_id = %key.key_id, "api key revoked");
        Ok((before, key))
    }

    /// Issues a new key for the same partner and environment, then revokes the old one: the
    /// old key as it was, and the new one. A revoked key cannot be rotated.
    pub async fn rotate_key(
        &self,
        who: &Principal,
        raw: &str,
    ) -> Result<(ApiKey, IssuedKey), ServiceError> {
        let old = self.owned_key(who, raw).await?;
        if old.revoked_at.is_some() {
            return Err(ServiceError::WrongState(format!(
                "api key {} is revoked; issue a new one instead",
                old.key_id
            )));
        }
        let (key, secret) = issue_key(self.store.as_ref(), &old.partner_id, old.env).await?;
        self.store.revoke_key(&old.key_id, Utc::now()).await?;
        self.revoked();
        tracing::info!(old = %old.key_id, new = %key.key_id, "api key rotated");
        Ok((old, IssuedKey { key, secret }))
    }
}
