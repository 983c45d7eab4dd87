//! Service tokens: scoped credentials for roles and scripts, created, listed and revoked
//! by admins (the admin token or an `admin` service token; not finance sessions). A token is
//! shown once; only its SHA-256 is stored.

use chrono::Utc;
use peage_billing_store::{BillingStore, ServiceToken};
use peage_core::ids::ServiceTokenId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;
use super::principal::ServiceScope;
use super::tokens::{new_token, token_hash, SERVICE_TOKEN_PREFIX};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewServiceToken {
    /// What uses it, for people: `gateway-eu-1`.
    pub name: String,
    /// `gateway`, `events:write`, `finance`, `read-only` or `admin`.
    pub scope: String,
}

/// A created token: `token` is shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedServiceToken {
    pub id: ServiceTokenId,
    pub name: String,
    pub scope: String,
    pub token: String,
    pub created_at: chrono::DateTime<Utc>,
}

/// Creates a token (what the route and `peage service-token create` do).
pub async fn create(
    store: &dyn BillingStore,
    name: &str,
    scope: &str,
) -> Result<CreatedServiceToken, ServiceError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ServiceError::Invalid(
            "name must be 1 to 100 characters".into(),
        ));
    }
    let scope = ServiceScope::parse(scope).ok_or_else(|| {
        ServiceError::Invalid(format!(
            "scope must be one of {}, not {scope:?}",
            ServiceScope::ALL.map(ServiceScope::as_str).join(", ")
        ))
    })?;
    let token = new_token(SERVICE_TOKEN_PREFIX);
    let stored = ServiceToken {
        id: ServiceTokenId::from_random(rand::random()),
        name: name.to_string(),
        scope: scope.as_str().to_string(),
        token_hash: token_hash(&token),
        created_at: Utc::now(),
        revoked_at: None,
    };
    store.create_service_token(&stored).await?;
    tracing::info!(id = %stored.id, scope = %stored.scope, name = %stored.name, "service token created");
    Ok(CreatedServiceToken {
        id: stored.id,
        name: stored.name,
        scope: stored.scope,
        token,
        created_at: stored.created_at,
    })
}

impl Billing {
    /// Every service token, without the tokens.
    pub async fn service_tokens(&self) -> Result<Vec<ServiceToken>, ServiceError> {
        Ok(self.store.service_tokens().await?)
    }

    /// Revokes a token (it stops working at once): the token before, if known, and after.
    pub async fn revoke_service_token(
        &self,
        id: &str,
    ) -> Result<(Option<ServiceToken>, ServiceToken), ServiceError> {
        let before = self
            .store
            .service_tokens()
            .await?
            .into_iter()
            .find(|t| t.id == id);
        let missing = || {
            ServiceError::Store(peage_billing_store::BillingStoreError::NotFound {
                what: "service token",
                id: id.to_string(),
            })
        };
        let token_id = ServiceTokenId::parse(id).map_err(|_| missing())?;
        let revoked = self
            .store
            .revoke_service_token(&token_id, Utc::now())
            .await?;
        tracing::info!(id = %revoked.id, "service token revoked");
        Ok((before, revoked))
    }
}
