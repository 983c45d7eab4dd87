//! Erasure of a partner's personal data on request (docs/operations.md, "Erasure"): its name,
//! external id and billing details, its keys' names, issuers and dashboard sessions. Its
//! invoices (finalized ones as issued, with the billing details they were issued to), credit
//! notes, payments and the audit log stay, as the law requires. One transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::ids::PartnerId;
use serde::Serialize;

use crate::BillingStoreError;

/// What an erasure changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Erased {
    pub partner_id: String,
    pub keys_revoked: u64,
    pub issuers_removed: u64,
    pub sessions_ended: u64,
    pub plan_changes_cancelled: u64,
    /// Invoices kept (the law's retention); their billing details are those they were issued
    /// with.
    pub invoices_kept: u64,
}

/// The end of the `Conflict` message for a partner erased before.
pub const ALREADY_ERASED: &str = "was erased already";

/// The name an erased partner keeps.
pub const ERASED_NAME: &str = "Erased partner";

#[async_trait]
pub trait ErasureStore: Send + Sync + 'static {
    /// Erases the partner's personal data at `at`. `Conflict` while it has draft invoices
    /// (finalize or void them first, so nothing is issued without its billing details) or when
    /// it was erased before; `NotFound` for an unknown partner.
    async fn erase_partner(
        &self,
        id: &PartnerId,
        at: DateTime<Utc>,
    ) -> Result<Erased, BillingStoreError>;
}

/// Implements [`ErasureStore`] for a store with a `pool` field; `$at` binds the time of
/// columns that are timestamps (PostgreSQL) or RFC 3339 text (SQLite).
macro_rules! erasure_store {
    ($store:ty, $ts_column:expr) => {
        #[async_trait::async_trait]
        impl $crate::erasure::ErasureStore for $store {
            async fn erase_partner(
                &self,
                id: &peage_core::ids::PartnerId,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::erasure::Erased, $crate::BillingStoreError> {
                use sqlx::Row as _;
                let text = $crate::ledger::ts(at);
                let stamp = ($ts_column)(at);
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query("SELECT erased_at FROM partners WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| $crate::BillingStoreError::NotFound {
                        what: "partner",
                        id: id.to_string(),
                    })?;
                if row.try_get::<Option<String>, _>("erased_at")?.is_some() {
                    return Err($crate::BillingStoreError::Conflict(format!(
                        "partner {id} {}",
                        $crate::erasure::ALREADY_ERASED
                    )));
                }
                let drafts: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM invoices WHERE partner_id = $1 AND status = 'draft' ORDER BY id",
                )
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await?;
                if !drafts.is_empty() {
                    return Err($crate::BillingStoreError::Conflict(format!(
                        "partner {id} has draft invoices ({}): finalize or void them first, so that nothing is issued without its billing details",
                        drafts.join(", ")
                    )));
                }
                sqlx::query(
                    "UPDATE partners SET name = $1, external_id = NULL, erased_at = $2 WHERE id = $3",
                )
                .bind($crate::erasure::ERASED_NAME)
                .bind(&text)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE partner_billing SET details = NULL WHERE partner_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let keys_revoked = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $1 WHERE partner_id = $2 \
                     AND (revoked_at IS NULL OR revoked_at > $1)",
                )
                .bind(&stamp)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                sqlx::query("UPDATE api_keys SET name = NULL WHERE partner_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let issuers_removed = sqlx::query("DELETE FROM partner_issuers WHERE partner_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let sessions_ended = sqlx::query("DELETE FROM dashboard_sessions WHERE partner_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query("DELETE FROM dashboard_sign_in_links WHERE partner_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let plan_changes_cancelled = sqlx::query(
                    "UPDATE plan_changes SET status = 'cancelled', settled_at = $1, settled_by = 'erasure' \
                     WHERE partner_id = $2 AND status = 'pending'",
                )
                .bind(&text)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // No period after this one: the subscription ends now.
                sqlx::query(
                    "UPDATE subscriptions SET ended_at = $1 WHERE partner_id = $2 AND ended_at IS NULL",
                )
                .bind(&stamp)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
                let invoices_kept: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM invoices WHERE partner_id = $1")
                        .bind(id.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok($crate::erasure::Erased {
                    partner_id: id.to_string(),
                    keys_revoked,
                    issuers_removed,
                    sessions_ended,
                    plan_changes_cancelled,
                    invoices_kept: u64::try_from(invoices_kept).unwrap_or(0),
                })
            }
        }
    };
}
pub(crate) use erasure_store;
