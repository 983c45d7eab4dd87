//! Billing state behind the `BillingStore` seam: partners, their plan history and API keys.
//! [`sqlite::SqliteBillingStore`] serves embedded mode; a PostgreSQL implementation plugs in
//! behind the same trait and the same test suite.

#[doc(hidden)]
pub mod conformance;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::Env;
use serde::Serialize;

pub use postgres::PostgresBillingStore;
pub use sqlite::SqliteBillingStore;

#[derive(Debug, thiserror::Error)]
pub enum BillingStoreError {
    #[error("billing store database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("billing store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partner {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub subscription: Subscription,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub plan_id: String,
    pub plan_version: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    pub key_id: String,
    pub partner_id: String,
    pub env: Env,
    /// The first characters of the secret (`pk_live_AbC1…`), to tell keys apart.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: String,
    pub partner_id: String,
    pub env: Env,
    pub secret_hash: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait BillingStore: Send + Sync + 'static {
    async fn create_partner(
        &self,
        id: &str,
        name: &str,
        plan: &Subscription,
    ) -> Result<Partner, BillingStoreError>;
    async fn partner(&self, id: &str) -> Result<Option<Partner>, BillingStoreError>;
    async fn partners(&self) -> Result<Vec<Partner>, BillingStoreError>;
    /// Ends the current subscription at `next.started_at` and starts `next`.
    async fn change_subscription(
        &self,
        partner_id: &str,
        next: &Subscription,
    ) -> Result<Partner, BillingStoreError>;
    /// Every subscription of the partner, oldest first.
    async fn subscriptions(&self, partner_id: &str)
        -> Result<Vec<Subscription>, BillingStoreError>;

    async fn create_key(&self, key: &NewKey) -> Result<ApiKey, BillingStoreError>;
    /// The key with this secret hash, revoked or not.
    async fn key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, BillingStoreError>;
    async fn keys(&self, partner_id: &str) -> Result<Vec<ApiKey>, BillingStoreError>;
    /// Revokes a key (idempotent); `NotFound` if there is no such key.
    async fn revoke_key(
        &self,
        key_id: &str,
        at: DateTime<Utc>,
    ) -> Result<ApiKey, BillingStoreError>;
}
