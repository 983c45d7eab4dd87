//! Service credentials: tokens scoped to what a role or script does, stored as SHA-256 hashes
//! (docs/security.md, "Service tokens"). The SQL is written once for both stores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::ids::ServiceTokenId;
use serde::Serialize;

use crate::BillingStoreError;

/// A service token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServiceToken {
    pub id: ServiceTokenId,
    pub name: String,
    /// `gateway`, `events:write`, `finance`, `read-only` or `admin`.
    pub scope: String,
    #[serde(skip)]
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait ServiceTokenStore: Send + Sync + 'static {
    async fn create_service_token(&self, token: &ServiceToken) -> Result<(), BillingStoreError>;
    /// Every token, revoked ones included, oldest first.
    async fn service_tokens(&self) -> Result<Vec<ServiceToken>, BillingStoreError>;
    /// The token with this hash, revoked or not.
    async fn service_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<ServiceToken>, BillingStoreError>;
    /// Revokes (idempotent: the first revocation's time stays); `NotFound` for an unknown id.
    async fn revoke_service_token(
        &self,
        id: &ServiceTokenId,
        at: DateTime<Utc>,
    ) -> Result<ServiceToken, BillingStoreError>;
}

/// Implements [`ServiceTokenStore`] for a store with a `pool` field of an sqlx pool type.
macro_rules! service_token_store {
    ($store:ty, $db:ty) => {
        const _: () = {
            use sqlx::Row as _;
            use $crate::ledger::{parse_opt_time, parse_time, ts};
            use $crate::service_tokens::ServiceToken;

            const COLUMNS: &str = "id, name, scope, token_hash, created_at, revoked_at";

            fn row(r: &<$db as sqlx::Database>::Row) -> Result<ServiceToken, $crate::BillingStoreError> {
                Ok(ServiceToken {
                    id: $crate::parse_id("service token", r.try_get("id")?)?,
                    name: r.try_get("name")?,
                    scope: r.try_get("scope")?,
                    token_hash: r.try_get("token_hash")?,
                    created_at: parse_time("service token", &r.try_get::<String, _>("created_at")?)?,
                    revoked_at: parse_opt_time("service token", r.try_get("revoked_at")?)?,
                })
            }

            #[async_trait::async_trait]
            impl $crate::service_tokens::ServiceTokenStore for $store {
                async fn create_service_token(
                    &self,
                    t: &ServiceToken,
                ) -> Result<(), $crate::BillingStoreError> {
                    sqlx::query(&format!(
                        "INSERT INTO service_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
                    ))
                    .bind(t.id.as_str())
                    .bind(&t.name)
                    .bind(&t.scope)
                    .bind(&t.token_hash)
                    .bind(ts(t.created_at))
                    .bind(t.revoked_at.map(ts))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn service_tokens(
                    &self,
                ) -> Result<Vec<ServiceToken>, $crate::BillingStoreError> {
                    let rows = sqlx::query(&format!(
                        "SELECT {COLUMNS} FROM service_tokens ORDER BY created_at, id"
                    ))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(row).collect()
                }

                async fn service_token_by_hash(
                    &self,
                    token_hash: &str,
                ) -> Result<Option<ServiceToken>, $crate::BillingStoreError> {
                    let r = sqlx::query(&format!(
                        "SELECT {COLUMNS} FROM service_tokens WHERE token_hash = $1"
                    ))
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                    r.as_ref().map(row).transpose()
                }

                async fn revoke_service_token(
                    &self,
                    id: &peage_core::ids::ServiceTokenId,
                    at: chrono::DateTime<chrono::Utc>,
                ) -> Result<ServiceToken, $crate::BillingStoreError> {
                    sqlx::query(
                        "UPDATE service_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                    )
                    .bind(ts(at))
                    .bind(id.as_str())
                    .execute(&self.pool)
                    .await?;
                    let r = sqlx::query(&format!("SELECT {COLUMNS} FROM service_tokens WHERE id = $1"))
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    match r {
                        Some(r) => row(&r),
                        None => Err($crate::BillingStoreError::NotFound {
                            what: "service token",
                            id: id.to_string(),
                        }),
                    }
                }
            }
        };
    };
}
pub(crate) use service_token_store;
