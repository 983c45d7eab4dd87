//! Billing state behind the `BillingStore` seam: partners, their plan history and API keys.
//! [`sqlite::SqliteBillingStore`] serves embedded mode; a PostgreSQL implementation plugs in
//! behind the same trait and the same test suite.

pub mod audit;
#[doc(hidden)]
pub mod conformance;
pub mod erasure;
pub mod idempotency;
pub mod ledger;
pub mod postgres;
pub mod revocations;
pub mod service_tokens;
pub mod sqlite;
pub mod staff;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::ids::{IdError, IssuerId, KeyId, PartnerId};
use peage_core::pricing::Quota;
use peage_core::quota::{decide, Grant, QuotaLedger};
use peage_core::Env;
use rust_decimal::Decimal;
use serde::Serialize;

pub use audit::{AuditRecord, AuditStore};
pub use erasure::{Erased, ErasureStore};
pub use idempotency::{ClaimOutcome, IdempotencyClaim, IdempotencyStore, KeptAnswer};
pub use ledger::catalogs::{AcceptedCatalog, CatalogStore, RoleCatalog, StoredCatalog};
pub use ledger::coupons::{CouponRecord, CouponStore, PartnerCoupon};
pub use ledger::credit_notes::{CreditNoteRecord, CreditNoteStore};
pub mod credit_notes {
    pub use crate::ledger::credit_notes::CreditNoteRefusal;
}
pub use ledger::alerts::{AlertNotice, AlertRecord, AlertStore};
pub use ledger::leases::LeaseStore;
pub use ledger::payments::{PaymentRecord, PaymentStore};
pub mod payments {
    pub use crate::ledger::payments::PaymentRefusal;
}
pub use ledger::plan_changes::{PlanChange, PlanChangeStatus, PlanChangeStore};
pub use ledger::{
    Attempt, BillingProfile, CreditEntry, DashboardGrant, DashboardRole, DraftOutcome,
    InvoiceFilter, LedgerStore, WebhookDelivery, WebhookEndpoint,
};
pub use postgres::PostgresBillingStore;
pub use revocations::{Revocation, RevocationFeed};
pub use service_tokens::{ServiceToken, ServiceTokenStore};
pub use sqlite::SqliteBillingStore;
pub use staff::{StaffChange, StaffMember, StaffRole, StaffStore};

#[derive(Debug, thiserror::Error)]
pub enum BillingStoreError {
    #[error("billing store database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("billing store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

impl BillingStoreError {
    /// Whether the database could not be reached (down, restarting, no connection free in
    /// time): worth a quick 503 and a retry, unlike a wrong query or corrupt data.
    pub fn is_unavailable(&self) -> bool {
        let BillingStoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // PostgreSQL's connection exceptions (08…) and operator intervention (57P…:
            // shutting down, cannot connect now); SQLite's busy database.
            sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                c.starts_with("08") || c.starts_with("57P") || c == "5" || c == "517"
            }),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Partner {
    pub id: PartnerId,
    pub name: String,
    /// The partner's id in the company's own systems (usage events may name it so).
    pub external_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub subscription: Subscription,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    pub plan_id: String,
    pub plan_version: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub key_id: KeyId,
    pub partner_id: PartnerId,
    pub env: Env,
    /// The first characters of the secret (`pk_live_AbC1…`), to tell keys apart.
    pub prefix: String,
    /// The partner's name for the key ("production", "CI").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it stopped (or, after a rotation with an overlap window, stops) being accepted.
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: KeyId,
    pub partner_id: PartnerId,
    pub env: Env,
    pub secret_hash: String,
    pub prefix: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One of Péage's token-signing keys (Ed25519).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub kid: String,
    /// The 32-byte private seed, base64url.
    pub seed: String,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// A partner's own JWT issuer, trusted for that partner only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TrustedIssuer {
    pub id: IssuerId,
    pub partner_id: PartnerId,
    pub issuer: String,
    pub jwks_url: String,
    pub algorithm: String,
    pub audience: String,
    pub env: Env,
    pub created_at: DateTime<Utc>,
}

/// One quota of one partner in one billing period: the unit leases are granted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaKey {
    pub partner_id: PartnerId,
    pub env: Env,
    pub meter: String,
    pub period_start: DateTime<Utc>,
}

impl QuotaKey {
    fn lock_name(&self) -> String {
        format!(
            "quota:{}:{}:{}:{}",
            self.partner_id,
            self.env.as_str(),
            self.meter,
            self.period_start.timestamp_micros()
        )
    }
}

/// An id read from a column: text that is not one is corrupt data, never a panic.
pub(crate) fn parse_id<T: std::str::FromStr<Err = IdError>>(
    what: &'static str,
    s: String,
) -> Result<T, BillingStoreError> {
    s.parse().map_err(|e: IdError| BillingStoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

fn parse_granted(s: &str) -> Result<Decimal, BillingStoreError> {
    ledger::parse_decimal("quota grant", s)
}

/// Sums a period's grant rows (gateway id, amount) into a ledger; counts `gateway_id` among the
/// gateways even before its first grant. `used` is the caller's to fill.
fn ledger_of(
    rows: &[(String, String)],
    gateway_id: Option<&str>,
) -> Result<QuotaLedger, BillingStoreError> {
    let mut ledger = QuotaLedger::default();
    for (_, amount) in rows {
        ledger.granted = ledger::add_stored("quota grant", ledger.granted, parse_granted(amount)?)?;
    }
    let newcomer = gateway_id.is_some_and(|gw| !rows.iter().any(|(g, _)| g == gw));
    ledger.gateways = rows.len() as u32 + u32::from(newcomer);
    Ok(ledger)
}

/// The grant both stores make, from the period's rows read under their lock: the decision, and
/// `gateway_id`'s new running total to store when something was granted.
fn decide_grant(
    rows: &[(String, String)],
    gateway_id: &str,
    quota: &Quota,
    used: Decimal,
    want: Decimal,
) -> Result<(Grant, Option<Decimal>), BillingStoreError> {
    let mut ledger = ledger_of(rows, Some(gateway_id))?;
    ledger.used = used;
    let grant = decide(quota, &ledger, want);
    if grant.granted.is_zero() {
        return Ok((grant, None));
    }
    let mine = rows
        .iter()
        .find(|(g, _)| g == gateway_id)
        .map(|(_, a)| parse_granted(a))
        .transpose()?
        .unwrap_or_default();
    Ok((grant, Some(mine + grant.granted)))
}

#[async_trait]
pub trait BillingStore:
    LedgerStore
    + CatalogStore
    + PlanChangeStore
    + CouponStore
    + CreditNoteStore
    + PaymentStore
    + LeaseStore
    + AlertStore
    + IdempotencyStore
    + ServiceTokenStore
    + RevocationFeed
    + AuditStore
    + ErasureStore
    + StaffStore
    + Send
    + Sync
    + 'static
{
    async fn create_partner(
        &self,
        id: &PartnerId,
        name: &str,
        plan: &Subscription,
    ) -> Result<Partner, BillingStoreError>;
    async fn partner(&self, id: &PartnerId) -> Result<Option<Partner>, BillingStoreError>;
    /// The partner with this external id, if any.
    async fn partner_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<Partner>, BillingStoreError>;
    /// Sets or clears a partner's external id: `Conflict` if another partner holds it,
    /// `NotFound` for an unknown partner.
    async fn set_external_id(
        &self,
        partner_id: &PartnerId,
        external_id: Option<&str>,
    ) -> Result<Partner, BillingStoreError>;
    async fn partners(&self) -> Result<Vec<Partner>, BillingStoreError>;
    /// Ends the current subscription at `next.started_at` and starts `next`.
    async fn change_subscription(
        &self,
        partner_id: &PartnerId,
        next: &Subscription,
    ) -> Result<Partner, BillingStoreError>;
    /// Applies a pending scheduled change: marks it applied and moves the partner to `next`
    /// (from `next.started_at`) in one transaction; `None` when it is no longer pending
    /// (another billing instance applied it, or it was cancelled).
    async fn apply_plan_change(
        &self,
        change: &PlanChange,
        next: &Subscription,
        at: DateTime<Utc>,
    ) -> Result<Option<Partner>, BillingStoreError>;
    /// Moves every partner on `plan_id` at another version than `version` to `version` from
    /// `at` (their current subscription ends, a new one starts), in one transaction; answers
    /// the partners moved. Two callers at once move each partner once.
    async fn follow_plan_version(
        &self,
        plan_id: &str,
        version: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<PartnerId>, BillingStoreError>;
    /// Every subscription of the partner, oldest first.
    async fn subscriptions(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Vec<Subscription>, BillingStoreError>;
    /// Every subscription of every partner, oldest first per partner (an invoice run).
    async fn all_subscriptions(
        &self,
    ) -> Result<std::collections::HashMap<PartnerId, Vec<Subscription>>, BillingStoreError>;

    async fn create_key(&self, key: &NewKey) -> Result<ApiKey, BillingStoreError>;
    /// The key with this secret hash, revoked or not.
    async fn key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, BillingStoreError>;
    async fn keys(&self, partner_id: &PartnerId) -> Result<Vec<ApiKey>, BillingStoreError>;
    async fn key(&self, key_id: &KeyId) -> Result<Option<ApiKey>, BillingStoreError>;
    /// Revokes a key (idempotent); `NotFound` if there is no such key.
    async fn revoke_key(
        &self,
        key_id: &KeyId,
        at: DateTime<Utc>,
    ) -> Result<ApiKey, BillingStoreError>;

    /// Decides a lease with [`peage_core::quota::decide`] and records it for `gateway_id`, as one
    /// atomic step per quota: concurrent requests from many gateways (and many billing
    /// processes on PostgreSQL) never grant the same unit twice.
    async fn grant_quota(
        &self,
        key: &QuotaKey,
        gateway_id: &str,
        quota: &Quota,
        used: Decimal,
        want: Decimal,
    ) -> Result<Grant, BillingStoreError>;

    /// The period's grants so far (`used` left at zero).
    async fn quota_ledger(&self, key: &QuotaKey) -> Result<QuotaLedger, BillingStoreError>;

    /// Every signing key, newest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKey>, BillingStoreError>;
    /// Retires the keys in use at `next.created_at` and adds `next`, in one transaction.
    async fn rotate_signing_key(&self, next: &SigningKey) -> Result<(), BillingStoreError>;
    /// Adds or replaces (by `issuer`) a partner's trusted issuer; returns what is stored.
    async fn put_issuer(&self, issuer: &TrustedIssuer) -> Result<TrustedIssuer, BillingStoreError>;
    async fn issuer(&self, issuer: &str) -> Result<Option<TrustedIssuer>, BillingStoreError>;
}
