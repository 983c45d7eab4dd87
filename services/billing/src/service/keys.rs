//! Partners' API keys: issued with their secret shown once (only its SHA-256 is stored),
//! listed, revoked and rotated.

use chrono::Utc;
use peage_billing_store::{ApiKey, BillingStore, NewKey, Partner};
use peage_core::ids::api_key;
use peage_core::{Env, KeyId, PartnerId};

use super::billing::Billing;
use super::error::ServiceError;
use super::principal::Principal;

/// How far back a key's last use is looked for.
pub const LAST_USED_DAYS: i64 = 90;

/// A key as listed: without its secret, with when it last made a call.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct KeyView {
    #[serde(flatten)]
    pub key: ApiKey,
    /// Its last call through the gateway (served or refused) in the last 90 days; none when
    /// it made none.
    pub last_used_at: Option<chrono::DateTime<Utc>>,
}

/// The longest overlap a rotation may give the old key (a week).
pub const MAX_OVERLAP_HOURS: u32 = 168;

/// A key's name, trimmed: 1 to 60 characters without control characters, or none.
fn key_name(name: Option<&str>) -> Result<Option<String>, ServiceError> {
    let Some(n) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if n.chars().count() > 60 || n.chars().any(char::is_control) {
        return Err(ServiceError::Invalid(
            "name: 1 to 60 characters, no control characters".into(),
        ));
    }
    Ok(Some(n.to_string()))
}

/// Issues a key; returns it with its secret, which exists nowhere else (only the hash is stored).
pub async fn issue_key(
    store: &dyn BillingStore,
    partner_id: &PartnerId,
    env: Env,
    name: Option<&str>,
) -> Result<(ApiKey, String), ServiceError> {
    let secret = api_key::secret(env, rand::random());
    let key = NewKey {
        key_id: KeyId::from_random(rand::random()),
        partner_id: partner_id.clone(),
        env,
        secret_hash: api_key::secret_hash(&secret),
        prefix: secret.chars().take(12).collect(),
        name: key_name(name)?,
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
    pub async fn issue_key(
        &self,
        partner: &Partner,
        env: Env,
        name: Option<&str>,
    ) -> Result<IssuedKey, ServiceError> {
        let (key, secret) = issue_key(self.store.as_ref(), &partner.id, env, name).await?;
        Ok(IssuedKey { key, secret })
    }

    /// The partner's keys, without secrets, each with its last call in the last
    /// [`LAST_USED_DAYS`] days.
    pub async fn keys(&self, partner: &Partner) -> Result<Vec<KeyView>, ServiceError> {
        let since = Utc::now() - chrono::Duration::days(LAST_USED_DAYS);
        let used: std::collections::HashMap<String, chrono::DateTime<Utc>> = self
            .usage
            .keys_last_used(partner.id.as_str(), since)
            .await?
            .into_iter()
            .collect();
        Ok(self
            .store
            .keys(&partner.id)
            .await?
            .into_iter()
            .map(|key| KeyView {
                last_used_at: used.get(key.key_id.as_str()).copied(),
                key,
            })
            .collect())
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

    /// Issues a new key for the same partner, environment and name, then revokes the old one,
    /// at once or at the end of an overlap of `overlap_hours` during which both keys work
    /// (Stripe's roll key): the old key as it was, and the new one. A revoked key, or one in
    /// its overlap already, cannot be rotated.
    pub async fn rotate_key(
        &self,
        who: &Principal,
        raw: &str,
        overlap_hours: u32,
    ) -> Result<(ApiKey, IssuedKey), ServiceError> {
        if overlap_hours > MAX_OVERLAP_HOURS {
            return Err(ServiceError::Invalid(format!(
                "overlap_hours is 0 to {MAX_OVERLAP_HOURS}, not {overlap_hours}"
            )));
        }
        let old = self.owned_key(who, raw).await?;
        if let Some(at) = old.revoked_at {
            return Err(ServiceError::WrongState(if at > Utc::now() {
                format!(
                    "api key {} was rotated already and stops at {}",
                    old.key_id,
                    at.to_rfc3339()
                )
            } else {
                format!("api key {} is revoked; issue a new one instead", old.key_id)
            }));
        }
        let (key, secret) = issue_key(
            self.store.as_ref(),
            &old.partner_id,
            old.env,
            old.name.as_deref(),
        )
        .await?;
        let ends = Utc::now() + chrono::Duration::hours(i64::from(overlap_hours));
        self.store.revoke_key(&old.key_id, ends).await?;
        self.revoked();
        tracing::info!(old = %old.key_id, new = %key.key_id, old_stops = %ends, "api key rotated");
        Ok((old, IssuedKey { key, secret }))
    }
}
