//! The billing ledger: plan versions, partner billing profiles, prepaid credits, invoices and
//! their lifecycle, webhook deliveries and dashboard sessions.
//!
//! - `sql`: the statements, written once in portable SQL (`$n` parameters, text times and text
//!   decimals) for SQLite and PostgreSQL;
//! - `store`: [`LedgerStore`] over any backend, the statements' order and transactions;
//! - `db`: the row glue a backend provides (binding values, reading columns, transactions),
//!   implemented for each sqlx pool by [`db::ledger_glue!`];
//! - the rules (invoice numbers, credits taken by a finalized invoice and given back by a void)
//!   are `peage_core::invoice`'s.
//!
//! The conformance suite runs on both backends, so they cannot drift.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::ids::{InvoiceId, PartnerId, StaffId, WebhookEndpointId, WebhookMessageId};
use peage_core::invoice::{Invoice, InvoiceRecord, InvoiceStatus};
use peage_core::pricing::TaxRate;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::BillingStoreError;

pub(crate) mod alerts;
pub(crate) mod catalogs;
pub(crate) mod coupons;
pub(crate) mod credit_notes;
pub(crate) mod db;
pub(crate) mod leases;
pub(crate) mod payments;
pub(crate) mod plan_changes;
mod sql;
mod store;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BillingProfile {
    pub partner_id: PartnerId,
    /// IANA time zone; billing periods start at local midnight.
    pub timezone: String,
    /// Replaces the plan's tax (for example a reverse-charge 0 %).
    pub tax: Option<TaxRate>,
    /// Payment terms: net days from finalization to the due date; replaces the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_days: Option<u32>,
    /// Legal name, address, tax id and email printed under "Bill to" (set apart, with
    /// `PUT /v1/partners/{id}/billing-details`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<peage_core::invoice::BillTo>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CreditEntry {
    /// `crd_…`; a void's restitution is `crd_v…`.
    pub id: String,
    pub partner_id: PartnerId,
    pub currency: String,
    /// Positive: credits granted; negative: taken by an invoice.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub description: String,
    pub invoice_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What saving a draft did.
#[derive(Debug, Clone, PartialEq)]
pub enum DraftOutcome {
    Created(InvoiceRecord),
    Updated(InvoiceRecord),
    Unchanged(InvoiceRecord),
    /// The period is already finalized; nothing was written.
    AlreadyFinal(InvoiceRecord),
}

impl DraftOutcome {
    pub fn record(&self) -> &InvoiceRecord {
        match self {
            DraftOutcome::Created(r)
            | DraftOutcome::Updated(r)
            | DraftOutcome::Unchanged(r)
            | DraftOutcome::AlreadyFinal(r) => r,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct InvoiceFilter {
    pub period_label: Option<String>,
    pub status: Option<InvoiceStatus>,
    pub partner_id: Option<PartnerId>,
    /// Only invoices whose period ends after this.
    pub ended_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WebhookEndpoint {
    pub id: WebhookEndpointId,
    pub url: String,
    /// `whsec_…`: shown once when the endpoint is created.
    #[serde(skip)]
    pub secret: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WebhookDelivery {
    pub id: WebhookMessageId,
    pub endpoint_id: WebhookEndpointId,
    pub event_type: String,
    pub event_key: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Who a dashboard sign-in link or session belongs to: a named staff member (whose role is
/// read when the session is used, so a change of role or a disabling counts at once) or one
/// partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DashboardRole {
    Staff { staff_id: StaffId },
    Partner { partner_id: PartnerId },
}

impl DashboardRole {
    /// The role's name (`staff` or `partner`), its partner and its staff member, as stored.
    pub fn columns(&self) -> (&'static str, Option<&str>, Option<&str>) {
        match self {
            DashboardRole::Staff { staff_id } => ("staff", None, Some(staff_id.as_str())),
            DashboardRole::Partner { partner_id } => ("partner", Some(partner_id.as_str()), None),
        }
    }

    pub(crate) fn from_columns(
        role: &str,
        partner_id: Option<String>,
        staff_id: Option<String>,
    ) -> Result<Self, BillingStoreError> {
        match (role, partner_id, staff_id) {
            ("staff", None, Some(staff_id)) => Ok(DashboardRole::Staff {
                staff_id: crate::parse_id("dashboard session", staff_id)?,
            }),
            ("partner", Some(partner_id), None) => Ok(DashboardRole::Partner {
                partner_id: crate::parse_id("dashboard session", partner_id)?,
            }),
            (role, p, st) => Err(BillingStoreError::Corrupt {
                what: "dashboard session",
                reason: format!("role {role:?} with partner {p:?} and staff {st:?}"),
            }),
        }
    }
}

/// A one-time sign-in link (only the SHA-256 of its token is stored) or a session made from one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardGrant {
    pub token_hash: String,
    pub role: DashboardRole,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The result of one delivery attempt.
#[derive(Debug, Clone)]
pub enum Attempt {
    Delivered {
        status: i64,
    },
    /// Failed; try again at `next`.
    Retry {
        next: DateTime<Utc>,
        status: Option<i64>,
        error: String,
    },
    /// Failed for the last time.
    GaveUp {
        status: Option<i64>,
        error: String,
    },
}

#[async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    /// Records a plan version (idempotent: the first definition seen for a version stays).
    async fn put_plan_version(
        &self,
        plan_id: &str,
        version: &str,
        definition: &str,
        at: DateTime<Utc>,
    ) -> Result<(), BillingStoreError>;
    async fn plan_version(
        &self,
        plan_id: &str,
        version: &str,
    ) -> Result<Option<String>, BillingStoreError>;

    async fn billing_profile(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Option<BillingProfile>, BillingStoreError>;
    /// Sets finance's part of the profile (time zone, tax, payment terms); the billing details
    /// stay as they are.
    async fn put_billing_profile(&self, profile: &BillingProfile) -> Result<(), BillingStoreError>;
    /// Sets the partner's billing details; a partner without a profile gets one in UTC.
    async fn put_billing_details(
        &self,
        partner_id: &PartnerId,
        details: &peage_core::invoice::BillTo,
        at: DateTime<Utc>,
    ) -> Result<(), BillingStoreError>;
    /// Every partner's billing profile (an invoice run reads them at once).
    async fn billing_profiles(&self) -> Result<Vec<BillingProfile>, BillingStoreError>;

    async fn add_credit(&self, entry: &CreditEntry) -> Result<(), BillingStoreError>;
    async fn credit_entries(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Vec<CreditEntry>, BillingStoreError>;
    async fn credit_balance(
        &self,
        partner_id: &PartnerId,
        currency: &str,
    ) -> Result<Decimal, BillingStoreError>;
    /// Every partner's balance per currency: `(partner_id, currency) → balance`.
    async fn credit_balances(
        &self,
    ) -> Result<std::collections::HashMap<(PartnerId, String), Decimal>, BillingStoreError>;

    /// Stores the draft for its partner and period: inserts it, replaces an existing draft's
    /// document (keeping its id), or leaves a finalized invoice alone.
    async fn save_draft(&self, draft: &InvoiceRecord) -> Result<DraftOutcome, BillingStoreError>;
    /// [`LedgerStore::save_draft`] for many drafts in one transaction.
    async fn save_drafts(
        &self,
        drafts: &[InvoiceRecord],
    ) -> Result<Vec<DraftOutcome>, BillingStoreError>;
    async fn invoices(
        &self,
        filter: &InvoiceFilter,
    ) -> Result<Vec<InvoiceRecord>, BillingStoreError>;
    async fn invoice(&self, id: &InvoiceId) -> Result<Option<InvoiceRecord>, BillingStoreError>;
    /// Finalizes a draft in one transaction: the next number of `prefix` for the year of `at`
    /// (no gaps: a failed finalization takes no number), credits applied from the balance.
    /// `by` names who did it (the audit log's actor). Its `invoice.finalized` webhook is
    /// queued in the same transaction (an outbox: a crash cannot keep one without the other),
    /// with message ids from `ids`. It is due `net_days` after `at`; when prepaid credits
    /// leave nothing to pay, it is paid at once (`invoice.paid`, same transaction).
    #[allow(clippy::too_many_arguments)]
    async fn finalize_invoice(
        &self,
        id: &InvoiceId,
        prefix: &str,
        at: DateTime<Utc>,
        by: &str,
        net_days: u32,
        ids: &mut (dyn Iterator<Item = String> + Send),
    ) -> Result<InvoiceRecord, BillingStoreError>;
    /// Voids a draft or a finalized invoice; credits it took go back to the balance. `by` names
    /// who did it. `Conflict` once a payment is recorded (a credit note corrects it then).
    async fn void_invoice(
        &self,
        id: &InvoiceId,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<InvoiceRecord, BillingStoreError>;

    async fn add_webhook_endpoint(&self, ep: &WebhookEndpoint) -> Result<(), BillingStoreError>;
    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, BillingStoreError>;
    /// Replaces an endpoint's stored secret with the same secret in another form (encrypted, or
    /// under a new key-encryption key); `NotFound` for an unknown endpoint.
    async fn replace_webhook_secret(
        &self,
        id: &WebhookEndpointId,
        secret: &str,
    ) -> Result<(), BillingStoreError>;
    /// Replaces a signing key's stored seed, likewise.
    async fn replace_signing_seed(&self, kid: &str, seed: &str) -> Result<(), BillingStoreError>;
    /// Queues `payload` for every active endpoint subscribed to `event_type`, once per
    /// `event_key`; returns how many deliveries were queued.
    async fn enqueue_webhook(
        &self,
        event_type: &str,
        event_key: &str,
        payload: &str,
        ids: &mut (dyn Iterator<Item = String> + Send),
        at: DateTime<Utc>,
    ) -> Result<usize, BillingStoreError>;
    /// Pending deliveries due at `now`, oldest first, with their endpoint.
    async fn due_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(WebhookDelivery, WebhookEndpoint)>, BillingStoreError>;
    async fn record_webhook_attempt(
        &self,
        id: &WebhookMessageId,
        at: DateTime<Utc>,
        attempt: &Attempt,
    ) -> Result<(), BillingStoreError>;
    /// The delivery log, newest first.
    async fn webhook_deliveries(
        &self,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, BillingStoreError>;

    /// Stores a one-time dashboard sign-in link.
    async fn create_sign_in_link(&self, link: &DashboardGrant) -> Result<(), BillingStoreError>;
    /// Uses the link whose token hashes to `link_hash` (once: a second call finds nothing) and
    /// opens `session` for its role, in one transaction. `None` when the link is unknown,
    /// used or expired at `now`.
    async fn redeem_sign_in_link(
        &self,
        link_hash: &str,
        now: DateTime<Utc>,
        session_hash: &str,
        session_expires_at: DateTime<Utc>,
    ) -> Result<Option<DashboardGrant>, BillingStoreError>;
    /// The live session whose token hashes to `session_hash` at `now`.
    async fn dashboard_session(
        &self,
        session_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardGrant>, BillingStoreError>;
    /// Ends a session (sign out); ending an unknown or ended one is not an error.
    async fn end_dashboard_session(
        &self,
        session_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), BillingStoreError>;
}

pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub(crate) fn parse_time(what: &'static str, s: &str) -> Result<DateTime<Utc>, BillingStoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| BillingStoreError::Corrupt {
            what,
            reason: format!("time {s:?}: {e}"),
        })
}

pub(crate) fn parse_opt_time(
    what: &'static str,
    s: Option<String>,
) -> Result<Option<DateTime<Utc>>, BillingStoreError> {
    s.map(|s| parse_time(what, &s)).transpose()
}

pub(crate) fn parse_decimal(what: &'static str, s: &str) -> Result<Decimal, BillingStoreError> {
    s.parse().map_err(|e| BillingStoreError::Corrupt {
        what,
        reason: format!("amount {s:?}: {e}"),
    })
}

/// `sum + amount` of stored amounts, checked: an overflow (only possible from rows stored
/// before amounts were bounded) is an error naming what was summed, never a panic.
pub(crate) fn add_stored(
    what: &'static str,
    sum: Decimal,
    amount: Decimal,
) -> Result<Decimal, BillingStoreError> {
    sum.checked_add(amount)
        .ok_or_else(|| BillingStoreError::Corrupt {
            what,
            reason: format!("the sum of stored amounts overflows at {amount}; correct the entries"),
        })
}

pub(crate) fn document(inv: &Invoice) -> Result<String, BillingStoreError> {
    serde_json::to_string(inv).map_err(|e| BillingStoreError::Corrupt {
        what: "invoice",
        reason: e.to_string(),
    })
}

pub(crate) fn not_found(what: &'static str, id: impl std::fmt::Display) -> BillingStoreError {
    BillingStoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

pub(crate) fn endpoint_events(events: &str) -> Vec<String> {
    events
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}
