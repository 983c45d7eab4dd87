//! The feed of revoked API keys that gateways follow (docs/gateway.md, "Revocation"), written
//! once for both stores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::BillingStoreError;

/// One revoked key, as the feed gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Revocation {
    pub key_id: peage_core::ids::KeyId,
    pub revoked_at: DateTime<Utc>,
}

#[async_trait]
pub trait RevocationFeed: Send + Sync + 'static {
    /// Keys revoked after `since` and by now (a rotation's revocation waits for the end of its
    /// overlap window), oldest first, at most `limit`.
    async fn keys_revoked_since(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Revocation>, BillingStoreError>;
}

/// Implements [`RevocationFeed`]. `$bind` turns the `since` time into what the store's
/// `api_keys.revoked_at` compares with (text in SQLite, `timestamptz` in PostgreSQL), `$read`
/// reads the column back.
macro_rules! revocation_feed {
    ($store:ty, $bind:expr, $read:expr) => {
        #[async_trait::async_trait]
        impl $crate::revocations::RevocationFeed for $store {
            async fn keys_revoked_since(
                &self,
                since: chrono::DateTime<chrono::Utc>,
                limit: i64,
            ) -> Result<Vec<$crate::revocations::Revocation>, $crate::BillingStoreError> {
                use sqlx::Row as _;
                let rows = sqlx::query(
                    "SELECT key_id, revoked_at FROM api_keys WHERE revoked_at > $1 \
                     AND revoked_at <= $3 ORDER BY revoked_at, key_id LIMIT $2",
                )
                .bind(($bind)(since))
                .bind(limit)
                .bind(($bind)(chrono::Utc::now()))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok($crate::revocations::Revocation {
                            key_id: $crate::parse_id("api key", r.try_get("key_id")?)?,
                            revoked_at: ($read)(r)?,
                        })
                    })
                    .collect()
            }
        }
    };
}
pub(crate) use revocation_feed;
