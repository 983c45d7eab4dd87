//! The billing ledger: plan versions, partner billing profiles, prepaid credits, invoices and
//! their lifecycle, and webhook deliveries. The SQL is written once, in portable SQL with `$n`
//! parameters, text times and text decimals, and instantiated for SQLite and PostgreSQL by
//! [`ledger_store!`], so the two stores cannot drift (the conformance suite runs on both).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::invoice::{Invoice, InvoiceRecord, InvoiceStatus};
use peage_core::pricing::TaxRate;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::BillingStoreError;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BillingProfile {
    pub partner_id: String,
    /// IANA time zone; billing periods start at local midnight.
    pub timezone: String,
    /// Replaces the plan's tax (for example a reverse-charge 0 %).
    pub tax: Option<TaxRate>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CreditEntry {
    pub id: String,
    pub partner_id: String,
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
    pub partner_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WebhookEndpoint {
    pub id: String,
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
    pub id: String,
    pub endpoint_id: String,
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
    Staff { staff_id: String },
    Partner { partner_id: String },
}

impl DashboardRole {
    /// The role's name (`staff` or `partner`), its partner and its staff member, as stored.
    pub fn columns(&self) -> (&'static str, Option<&str>, Option<&str>) {
        match self {
            DashboardRole::Staff { staff_id } => ("staff", None, Some(staff_id)),
            DashboardRole::Partner { partner_id } => ("partner", Some(partner_id), None),
        }
    }

    pub(crate) fn from_columns(
        role: &str,
        partner_id: Option<String>,
        staff_id: Option<String>,
    ) -> Result<Self, BillingStoreError> {
        match (role, partner_id, staff_id) {
            ("staff", None, Some(staff_id)) => Ok(DashboardRole::Staff { staff_id }),
            ("partner", Some(partner_id), None) => Ok(DashboardRole::Partner { partner_id }),
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
        partner_id: &str,
    ) -> Result<Option<BillingProfile>, BillingStoreError>;
    async fn put_billing_profile(&self, profile: &BillingProfile) -> Result<(), BillingStoreError>;
    /// Every partner's billing profile (an invoice run reads them at once).
    async fn billing_profiles(&self) -> Result<Vec<BillingProfile>, BillingStoreError>;

    async fn add_credit(&self, entry: &CreditEntry) -> Result<(), BillingStoreError>;
    async fn credit_entries(&self, partner_id: &str)
        -> Result<Vec<CreditEntry>, BillingStoreError>;
    async fn credit_balance(
        &self,
        partner_id: &str,
        currency: &str,
    ) -> Result<Decimal, BillingStoreError>;
    /// Every partner's balance per currency: `(partner_id, currency) → balance`.
    async fn credit_balances(
        &self,
    ) -> Result<std::collections::HashMap<(String, String), Decimal>, BillingStoreError>;

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
    async fn invoice(&self, id: &str) -> Result<Option<InvoiceRecord>, BillingStoreError>;
    /// Finalizes a draft in one transaction: the next number of `prefix` for the year of `at`
    /// (no gaps: a failed finalization takes no number), credits applied from the balance.
    /// `by` names who did it (the audit log's actor). Its `invoice.finalized` webhook is
    /// queued in the same transaction (an outbox: a crash cannot keep one without the other),
    /// with message ids from `ids`.
    async fn finalize_invoice(
        &self,
        id: &str,
        prefix: &str,
        at: DateTime<Utc>,
        by: &str,
        ids: &mut (dyn Iterator<Item = String> + Send),
    ) -> Result<InvoiceRecord, BillingStoreError>;
    /// Voids a draft or a finalized invoice; credits it took go back to the balance. `by` names
    /// who did it.
    async fn void_invoice(
        &self,
        id: &str,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<InvoiceRecord, BillingStoreError>;

    async fn add_webhook_endpoint(&self, ep: &WebhookEndpoint) -> Result<(), BillingStoreError>;
    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, BillingStoreError>;
    /// Replaces an endpoint's stored secret with the same secret in another form (encrypted, or
    /// under a new key-encryption key); `NotFound` for an unknown endpoint.
    async fn replace_webhook_secret(&self, id: &str, secret: &str)
        -> Result<(), BillingStoreError>;
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
        id: &str,
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

/// The columns a record is read from, in this order.
pub(crate) const INVOICE_COLUMNS: &str = "id, number, status, partner_id, period_label, created_at, updated_at, finalized_at, voided_at, finalized_by, voided_by, document";

pub(crate) struct InvoiceRow {
    pub id: String,
    pub number: Option<String>,
    pub status: String,
    pub partner_id: String,
    pub period_label: String,
    pub created_at: String,
    pub updated_at: String,
    pub finalized_at: Option<String>,
    pub voided_at: Option<String>,
    pub finalized_by: Option<String>,
    pub voided_by: Option<String>,
    pub document: String,
}

impl InvoiceRow {
    pub fn record(self) -> Result<InvoiceRecord, BillingStoreError> {
        let corrupt = |reason: String| BillingStoreError::Corrupt {
            what: "invoice",
            reason,
        };
        Ok(InvoiceRecord {
            status: InvoiceStatus::parse(&self.status)
                .ok_or_else(|| corrupt(format!("status {:?}", self.status)))?,
            invoice: serde_json::from_str(&self.document)
                .map_err(|e| corrupt(format!("{}: {e}", self.id)))?,
            created_at: parse_time("invoice", &self.created_at)?,
            updated_at: parse_time("invoice", &self.updated_at)?,
            finalized_at: parse_opt_time("invoice", self.finalized_at)?,
            voided_at: parse_opt_time("invoice", self.voided_at)?,
            finalized_by: self.finalized_by,
            voided_by: self.voided_by,
            id: self.id,
            number: self.number,
            partner_id: self.partner_id,
            period_label: self.period_label,
        })
    }
}

pub(crate) fn invoice_number(prefix: &str, year: i32, n: i64) -> String {
    format!("{prefix}-{year}-{n:06}")
}

pub(crate) fn not_found(what: &'static str, id: &str) -> BillingStoreError {
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

/// Implements [`LedgerStore`] for a store with a `pool` field of an sqlx pool type. `$begin`
/// starts a write transaction: SQLite needs `BEGIN IMMEDIATE`, or a transaction that reads
/// before it writes fails with "database is locked" when another connection writes meanwhile.
macro_rules! ledger_store {
    ($store:ty, $db:ty, $begin:literal) => {
        const _: () = {
            use chrono::Datelike;
            use sqlx::Row as _;
            use $crate::ledger::*;

            type DbRow = <$db as sqlx::Database>::Row;

            fn invoice_row(row: &DbRow) -> Result<InvoiceRow, sqlx::Error>
            {
                Ok(InvoiceRow {
                    id: row.try_get("id")?,
                    number: row.try_get("number")?,
                    status: row.try_get("status")?,
                    partner_id: row.try_get("partner_id")?,
                    period_label: row.try_get("period_label")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    finalized_at: row.try_get("finalized_at")?,
                    voided_at: row.try_get("voided_at")?,
                    finalized_by: row.try_get("finalized_by")?,
                    voided_by: row.try_get("voided_by")?,
                    document: row.try_get("document")?,
                })
            }

/// Queues `payload` for every active endpoint subscribed to `event_type`, once per
            /// `event_key`, in the caller's transaction.
            async fn queue_webhook(
                tx: &mut sqlx::Transaction<'_, $db>,
                event_type: &str,
                event_key: &str,
                payload: &str,
                ids: &mut (dyn Iterator<Item = String> + Send),
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<usize, $crate::BillingStoreError> {
                let rows = sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e"))
                    .fetch_all(&mut **tx)
                    .await?;
                let mut queued = 0;
                for row in &rows {
                    let ep = endpoint_row(row, "e_")?;
                    if ep.disabled_at.is_some() || !ep.events.iter().any(|t| t == event_type || t == "*") {
                        continue;
                    }
                    let Some(id) = ids.next() else { break };
                    let done = sqlx::query(
                        "INSERT INTO webhook_deliveries (id, endpoint_id, event_type, event_key, payload, status, \
                         attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) \
                         ON CONFLICT (endpoint_id, event_key) DO NOTHING",
                    )
                    .bind(id)
                    .bind(&ep.id)
                    .bind(event_type)
                    .bind(event_key)
                    .bind(payload)
                    .bind(ts(at))
                    .execute(&mut **tx)
                    .await?;
                    queued += done.rows_affected() as usize;
                }
                Ok(queued)
            }

            fn credit_row(row: &DbRow) -> Result<CreditEntry, $crate::BillingStoreError>
            {
                Ok(CreditEntry {
                    id: row.try_get("id")?,
                    partner_id: row.try_get("partner_id")?,
                    currency: row.try_get("currency")?,
                    amount: parse_decimal("credit", &row.try_get::<String, _>("amount")?)?,
                    description: row.try_get("description")?,
                    invoice_id: row.try_get("invoice_id")?,
                    created_at: parse_time("credit", &row.try_get::<String, _>("created_at")?)?,
                })
            }

            fn endpoint_row(row: &DbRow, prefix: &str) -> Result<WebhookEndpoint, $crate::BillingStoreError>
            {
                let col = |c: &str| format!("{prefix}{c}");
                Ok(WebhookEndpoint {
                    id: row.try_get(col("id").as_str())?,
                    url: row.try_get(col("url").as_str())?,
                    secret: row.try_get(col("secret").as_str())?,
                    events: endpoint_events(&row.try_get::<String, _>(col("events").as_str())?),
                    created_at: parse_time(
                        "webhook endpoint",
                        &row.try_get::<String, _>(col("created_at").as_str())?,
                    )?,
                    disabled_at: parse_opt_time(
                        "webhook endpoint",
                        row.try_get(col("disabled_at").as_str())?,
                    )?,
                })
            }

            fn delivery_row(row: &DbRow) -> Result<WebhookDelivery, $crate::BillingStoreError>
            {
                Ok(WebhookDelivery {
                    id: row.try_get("id")?,
                    endpoint_id: row.try_get("endpoint_id")?,
                    event_type: row.try_get("event_type")?,
                    event_key: row.try_get("event_key")?,
                    payload: row.try_get("payload")?,
                    status: row.try_get("status")?,
                    attempts: row.try_get("attempts")?,
                    next_attempt_at: parse_time(
                        "webhook delivery",
                        &row.try_get::<String, _>("next_attempt_at")?,
                    )?,
                    last_attempt_at: parse_opt_time(
                        "webhook delivery",
                        row.try_get("last_attempt_at")?,
                    )?,
                    last_status: row.try_get("last_status")?,
                    last_error: row.try_get("last_error")?,
                    created_at: parse_time(
                        "webhook delivery",
                        &row.try_get::<String, _>("created_at")?,
                    )?,
                })
            }

            fn profile_row(row: &DbRow) -> Result<BillingProfile, $crate::BillingStoreError>
            {
                let rate: Option<String> = row.try_get("tax_rate")?;
                let label: Option<String> = row.try_get("tax_label")?;
                let tax = match rate {
                    Some(r) => Some(peage_core::pricing::TaxRate {
                        rate: parse_decimal("billing profile", &r)?,
                        label: label.unwrap_or_default(),
                    }),
                    None => None,
                };
                Ok(BillingProfile {
                    partner_id: row.try_get("partner_id")?,
                    timezone: row.try_get("timezone")?,
                    tax,
                    updated_at: parse_time(
                        "billing profile",
                        &row.try_get::<String, _>("updated_at")?,
                    )?,
                })
            }

            const PROFILE_COLUMNS: &str = "partner_id, timezone, tax_rate, tax_label, updated_at";

            /// The live (not void) invoices of these partners, by (partner, period start).
            async fn live_invoices(
                tx: &mut sqlx::Transaction<'_, $db>,
                partners: &[&str],
            ) -> Result<
                std::collections::HashMap<(String, String), peage_core::InvoiceRecord>,
                $crate::BillingStoreError,
            > {
                let mut out = std::collections::HashMap::new();
                for chunk in partners.chunks(500) {
                    let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                    let sql = format!(
                        "SELECT {INVOICE_COLUMNS}, period_start FROM invoices \
                         WHERE status <> 'void' AND partner_id IN ({})",
                        params.join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for p in chunk {
                        q = q.bind(*p);
                    }
                    for row in q.fetch_all(&mut **tx).await? {
                        let start: String = row.try_get("period_start")?;
                        let record = invoice_row(&row)?.record()?;
                        out.insert((record.partner_id.clone(), start), record);
                    }
                }
                Ok(out)
            }

            /// Saves drafts inside `tx` (see `LedgerStore::save_draft`).
            async fn save_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                drafts: &[peage_core::InvoiceRecord],
            ) -> Result<Vec<DraftOutcome>, $crate::BillingStoreError> {
                let partners: Vec<&str> = drafts.iter().map(|d| d.invoice.partner_id.as_str()).collect();
                let mut live = live_invoices(tx, &partners).await?;
                let mut out = Vec::with_capacity(drafts.len());
                for draft in drafts {
                    let inv = &draft.invoice;
                    let key = (inv.partner_id.clone(), ts(inv.period.start));
                    let Some(current) = live.remove(&key) else {
                        sqlx::query(
                            "INSERT INTO invoices (id, partner_id, period_label, period_start, period_end, status, \
                             number, currency, total, document, created_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, 'draft', NULL, $6, $7, $8, $9, $10)",
                        )
                        .bind(&draft.id)
                        .bind(&inv.partner_id)
                        .bind(&draft.period_label)
                        .bind(ts(inv.period.start))
                        .bind(ts(inv.period.end))
                        .bind(inv.currency.code())
                        .bind(inv.total.to_string())
                        .bind(document(inv)?)
                        .bind(ts(draft.created_at))
                        .bind(ts(draft.updated_at))
                        .execute(&mut **tx)
                        .await?;
                        let mut created = draft.clone();
                        created.status = peage_core::InvoiceStatus::Draft;
                        created.number = None;
                        out.push(DraftOutcome::Created(created));
                        continue;
                    };
                    if current.status != peage_core::InvoiceStatus::Draft {
                        out.push(DraftOutcome::AlreadyFinal(current));
                        continue;
                    }
                    if current.invoice == *inv {
                        out.push(DraftOutcome::Unchanged(current));
                        continue;
                    }
                    sqlx::query(
                        "UPDATE invoices SET document = $1, total = $2, currency = $3, period_end = $4, \
                         updated_at = $5 WHERE id = $6 AND status = 'draft'",
                    )
                    .bind(document(inv)?)
                    .bind(inv.total.to_string())
                    .bind(inv.currency.code())
                    .bind(ts(inv.period.end))
                    .bind(ts(draft.updated_at))
                    .bind(&current.id)
                    .execute(&mut **tx)
                    .await?;
                    out.push(DraftOutcome::Updated(peage_core::InvoiceRecord {
                        invoice: inv.clone(),
                        updated_at: draft.updated_at,
                        ..current
                    }));
                }
                Ok(out)
            }

            async fn insert_credit<'e, E>(exec: E, e: &CreditEntry) -> Result<(), $crate::BillingStoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                sqlx::query(
                    "INSERT INTO credit_entries (id, partner_id, currency, amount, description, invoice_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&e.id)
                .bind(&e.partner_id)
                .bind(&e.currency)
                .bind(e.amount.to_string())
                .bind(&e.description)
                .bind(&e.invoice_id)
                .bind(ts(e.created_at))
                .execute(exec)
                .await?;
                Ok(())
            }

            const DELIVERY_COLUMNS: &str = "d.id, d.endpoint_id, d.event_type, d.event_key, d.payload, d.status, d.attempts, d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error, d.created_at";
            const ENDPOINT_COLUMNS: &str = "e.id AS e_id, e.url AS e_url, e.secret AS e_secret, e.events AS e_events, e.created_at AS e_created_at, e.disabled_at AS e_disabled_at";

            #[async_trait::async_trait]
            impl LedgerStore for $store {
                async fn put_plan_version(
                    &self,
                    plan_id: &str,
                    version: &str,
                    definition: &str,
                    at: chrono::DateTime<chrono::Utc>,
                ) -> Result<(), $crate::BillingStoreError> {
                    sqlx::query(
                        "INSERT INTO plan_versions (plan_id, version, definition, first_seen) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (plan_id, version) DO NOTHING",
                    )
                    .bind(plan_id)
                    .bind(version)
                    .bind(definition)
                    .bind(ts(at))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn plan_version(
                    &self,
                    plan_id: &str,
                    version: &str,
                ) -> Result<Option<String>, $crate::BillingStoreError> {
                    let row = sqlx::query(
                        "SELECT definition FROM plan_versions WHERE plan_id = $1 AND version = $2",
                    )
                    .bind(plan_id)
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(row.map(|r| r.try_get("definition")).transpose()?)
                }

                async fn billing_profile(
                    &self,
                    partner_id: &str,
                ) -> Result<Option<BillingProfile>, $crate::BillingStoreError> {
                    let row = sqlx::query(&format!(
                        "SELECT {PROFILE_COLUMNS} FROM partner_billing WHERE partner_id = $1"
                    ))
                    .bind(partner_id)
                    .fetch_optional(&self.pool)
                    .await?;
                    row.as_ref().map(profile_row).transpose()
                }

                async fn billing_profiles(
                    &self,
                ) -> Result<Vec<BillingProfile>, $crate::BillingStoreError> {
                    let rows = sqlx::query(&format!(
                        "SELECT {PROFILE_COLUMNS} FROM partner_billing ORDER BY partner_id"
                    ))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(profile_row).collect()
                }

                async fn put_billing_profile(
                    &self,
                    p: &BillingProfile,
                ) -> Result<(), $crate::BillingStoreError> {
                    sqlx::query(
                        "INSERT INTO partner_billing (partner_id, timezone, tax_rate, tax_label, updated_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (partner_id) DO UPDATE SET \
                         timezone = excluded.timezone, tax_rate = excluded.tax_rate, \
                         tax_label = excluded.tax_label, updated_at = excluded.updated_at",
                    )
                    .bind(&p.partner_id)
                    .bind(&p.timezone)
                    .bind(p.tax.as_ref().map(|t| t.rate.to_string()))
                    .bind(p.tax.as_ref().map(|t| t.label.clone()))
                    .bind(ts(p.updated_at))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn add_credit(&self, e: &CreditEntry) -> Result<(), $crate::BillingStoreError> {
                    insert_credit(&self.pool, e).await
                }

                async fn credit_entries(
                    &self,
                    partner_id: &str,
                ) -> Result<Vec<CreditEntry>, $crate::BillingStoreError> {
                    let rows = sqlx::query(
                        "SELECT id, partner_id, currency, amount, description, invoice_id, created_at \
                         FROM credit_entries WHERE partner_id = $1 ORDER BY created_at, id",
                    )
                    .bind(partner_id)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(credit_row).collect()
                }

                async fn credit_balance(
                    &self,
                    partner_id: &str,
                    currency: &str,
                ) -> Result<rust_decimal::Decimal, $crate::BillingStoreError> {
                    let rows = sqlx::query(
                        "SELECT amount FROM credit_entries WHERE partner_id = $1 AND currency = $2",
                    )
                    .bind(partner_id)
                    .bind(currency)
                    .fetch_all(&self.pool)
                    .await?;
                    let mut sum = rust_decimal::Decimal::ZERO;
                    for r in &rows {
                        let amount = parse_decimal("credit", &r.try_get::<String, _>("amount")?)?;
                        sum = add_stored("credit", sum, amount)?;
                    }
                    Ok(sum)
                }

                async fn credit_balances(
                    &self,
                ) -> Result<
                    std::collections::HashMap<(String, String), rust_decimal::Decimal>,
                    $crate::BillingStoreError,
                > {
                    let rows = sqlx::query("SELECT partner_id, currency, amount FROM credit_entries")
                        .fetch_all(&self.pool)
                        .await?;
                    let mut out: std::collections::HashMap<(String, String), rust_decimal::Decimal> =
                        Default::default();
                    for r in &rows {
                        let amount = parse_decimal("credit", &r.try_get::<String, _>("amount")?)?;
                        let b = out
                            .entry((r.try_get("partner_id")?, r.try_get("currency")?))
                            .or_default();
                        *b = add_stored("credit", *b, amount)?;
                    }
                    Ok(out)
                }

                async fn save_draft(
                    &self,
                    draft: &peage_core::InvoiceRecord,
                ) -> Result<DraftOutcome, $crate::BillingStoreError> {
                    let mut tx = self.pool.begin_with($begin).await?;
                    let outcome = save_in(&mut tx, std::slice::from_ref(draft)).await?;
                    tx.commit().await?;
                    outcome.into_iter().next().ok_or_else(|| {
                        $crate::BillingStoreError::Conflict("the draft was not saved".into())
                    })
                }

                async fn save_drafts(
                    &self,
                    drafts: &[peage_core::InvoiceRecord],
                ) -> Result<Vec<DraftOutcome>, $crate::BillingStoreError> {
                    let mut tx = self.pool.begin_with($begin).await?;
                    let out = save_in(&mut tx, drafts).await?;
                    tx.commit().await?;
                    Ok(out)
                }

                async fn invoices(
                    &self,
                    f: &InvoiceFilter,
                ) -> Result<Vec<peage_core::InvoiceRecord>, $crate::BillingStoreError> {
                    // Optional filters as `($n IS NULL OR col = $n)`, so the SQL stays static.
                    let rows = sqlx::query(&format!(
                        "SELECT {INVOICE_COLUMNS} FROM invoices \
                         WHERE ($1 IS NULL OR period_label = $1) AND ($2 IS NULL OR status = $2) \
                         AND ($3 IS NULL OR partner_id = $3) \
                         ORDER BY period_start, partner_id, created_at"
                    ))
                    .bind(f.period_label.as_deref())
                    .bind(f.status.map(|s| s.as_str()))
                    .bind(f.partner_id.as_deref())
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(|r| invoice_row(r)?.record()).collect()
                }

                async fn invoice(
                    &self,
                    id: &str,
                ) -> Result<Option<peage_core::InvoiceRecord>, $crate::BillingStoreError> {
                    let row = sqlx::query(&format!(
                        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                    row.map(|r| invoice_row(&r)?.record()).transpose()
                }

                async fn finalize_invoice(
                    &self,
                    id: &str,
                    prefix: &str,
                    at: chrono::DateTime<chrono::Utc>,
                    by: &str,
                    ids: &mut (dyn Iterator<Item = String> + Send),
                ) -> Result<peage_core::InvoiceRecord, $crate::BillingStoreError> {
                    // Stored to the microsecond: answer what is stored.
                    let at = parse_time("invoice", &ts(at))?;
                    let year = at.year();
                    let mut tx = self.pool.begin_with($begin).await?;
                    // The number first: its row lock serialises finalizations of one issuer,
                    // and rolling back gives the number back.
                    let n: i64 = sqlx::query(
                        "INSERT INTO invoice_numbers (prefix, year, last) VALUES ($1, $2, 1) \
                         ON CONFLICT (prefix, year) DO UPDATE SET last = invoice_numbers.last + 1 \
                         RETURNING last",
                    )
                    .bind(prefix)
                    .bind(i64::from(year))
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("last")?;
                    let row = sqlx::query(&format!(
                        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| not_found("invoice", id))?;
                    let mut record = invoice_row(&row)?.record()?;
                    if record.status != peage_core::InvoiceStatus::Draft {
                        return Err($crate::BillingStoreError::Conflict(format!(
                            "invoice {id} is {}; only a draft can be finalized",
                            record.status.as_str()
                        )));
                    }
                    let currency = record.invoice.currency.code().to_string();
                    let rows = sqlx::query(
                        "SELECT amount FROM credit_entries WHERE partner_id = $1 AND currency = $2",
                    )
                    .bind(&record.partner_id)
                    .bind(&currency)
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut balance = rust_decimal::Decimal::ZERO;
                    for r in &rows {
                        let amount = parse_decimal("credit", &r.try_get::<String, _>("amount")?)?;
                        balance = add_stored("credit", balance, amount)?;
                    }
                    record.invoice.apply_credits(balance);
                    let number = invoice_number(prefix, year, n);
                    if !record.invoice.credits_applied.is_zero() {
                        let entry = CreditEntry {
                            id: format!("crd_{}", &id[4.min(id.len())..]),
                            partner_id: record.partner_id.clone(),
                            currency: currency.clone(),
                            amount: -record.invoice.credits_applied,
                            description: format!("invoice {number}"),
                            invoice_id: Some(id.to_string()),
                            created_at: at,
                        };
                        insert_credit(&mut *tx, &entry).await?;
                    }
                    sqlx::query(
                        "UPDATE invoices SET status = 'finalized', number = $1, document = $2, total = $3, \
                         finalized_at = $4, updated_at = $4, finalized_by = $5 WHERE id = $6 AND status = 'draft'",
                    )
                    .bind(&number)
                    .bind(document(&record.invoice)?)
                    .bind(record.invoice.total.to_string())
                    .bind(ts(at))
                    .bind(by)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    record.status = peage_core::InvoiceStatus::Finalized;
                    record.number = Some(number);
                    record.finalized_at = Some(at);
                    record.finalized_by = Some(by.to_string());
                    record.updated_at = at;
                    let event = "invoice.finalized";
                    let payload = peage_core::invoice::webhook_message(event, at, record.finalized_event());
                    queue_webhook(&mut tx, event, &format!("{event}:{id}"), &payload, ids, at).await?;
                    tx.commit().await?;
                    Ok(record)
                }

                async fn void_invoice(
                    &self,
                    id: &str,
                    at: chrono::DateTime<chrono::Utc>,
                    by: &str,
                ) -> Result<peage_core::InvoiceRecord, $crate::BillingStoreError> {
                    let at = parse_time("invoice", &ts(at))?;
                    let mut tx = self.pool.begin_with($begin).await?;
                    let changed = sqlx::query(
                        "UPDATE invoices SET status = 'void', voided_at = $1, updated_at = $1, voided_by = $2 \
                         WHERE id = $3 AND status IN ('draft', 'finalized')",
                    )
                    .bind(ts(at))
                    .bind(by)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    let row = sqlx::query(&format!(
                        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| not_found("invoice", id))?;
                    let record = invoice_row(&row)?.record()?;
                    if changed.rows_affected() == 0 {
                        return Err($crate::BillingStoreError::Conflict(format!(
                            "invoice {id} is already void"
                        )));
                    }
                    let taken = record.invoice.credits_applied;
                    if record.number.is_some() && !taken.is_zero() {
                        let entry = CreditEntry {
                            id: format!("crd_v{}", &id[4.min(id.len())..]),
                            partner_id: record.partner_id.clone(),
                            currency: record.invoice.currency.code().to_string(),
                            amount: taken,
                            description: format!(
                                "invoice {} voided",
                                record.number.as_deref().unwrap_or(id)
                            ),
                            invoice_id: Some(id.to_string()),
                            created_at: at,
                        };
                        insert_credit(&mut *tx, &entry).await?;
                    }
                    tx.commit().await?;
                    Ok(record)
                }

                async fn add_webhook_endpoint(
                    &self,
                    ep: &WebhookEndpoint,
                ) -> Result<(), $crate::BillingStoreError> {
                    sqlx::query(
                        "INSERT INTO webhook_endpoints (id, url, secret, events, created_at, disabled_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&ep.id)
                    .bind(&ep.url)
                    .bind(&ep.secret)
                    .bind(ep.events.join(","))
                    .bind(ts(ep.created_at))
                    .bind(ep.disabled_at.map(ts))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn replace_webhook_secret(
                    &self,
                    id: &str,
                    secret: &str,
                ) -> Result<(), $crate::BillingStoreError> {
                    let done = sqlx::query("UPDATE webhook_endpoints SET secret = $1 WHERE id = $2")
                        .bind(secret)
                        .bind(id)
                        .execute(&self.pool)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err($crate::BillingStoreError::NotFound {
                            what: "webhook endpoint",
                            id: id.to_string(),
                        });
                    }
                    Ok(())
                }

                async fn replace_signing_seed(
                    &self,
                    kid: &str,
                    seed: &str,
                ) -> Result<(), $crate::BillingStoreError> {
                    let done = sqlx::query("UPDATE signing_keys SET seed = $1 WHERE kid = $2")
                        .bind(seed)
                        .bind(kid)
                        .execute(&self.pool)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err($crate::BillingStoreError::NotFound {
                            what: "signing key",
                            id: kid.to_string(),
                        });
                    }
                    Ok(())
                }

                async fn webhook_endpoints(
                    &self,
                ) -> Result<Vec<WebhookEndpoint>, $crate::BillingStoreError> {
                    let rows = sqlx::query(&format!(
                        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e ORDER BY e.created_at, e.id"
                    ))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(|r| endpoint_row(r, "e_")).collect()
                }

                async fn enqueue_webhook(
                    &self,
                    event_type: &str,
                    event_key: &str,
                    payload: &str,
                    ids: &mut (dyn Iterator<Item = String> + Send),
                    at: chrono::DateTime<chrono::Utc>,
                ) -> Result<usize, $crate::BillingStoreError> {
                    let mut tx = self.pool.begin_with($begin).await?;
                    let queued = queue_webhook(&mut tx, event_type, event_key, payload, ids, at).await?;
                    tx.commit().await?;
                    Ok(queued)
                }

                async fn due_webhooks(
                    &self,
                    now: chrono::DateTime<chrono::Utc>,
                    limit: i64,
                ) -> Result<Vec<(WebhookDelivery, WebhookEndpoint)>, $crate::BillingStoreError> {
                    let rows = sqlx::query(&format!(
                        "SELECT {DELIVERY_COLUMNS}, {ENDPOINT_COLUMNS} FROM webhook_deliveries d \
                         JOIN webhook_endpoints e ON e.id = d.endpoint_id \
                         WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
                         ORDER BY d.next_attempt_at, d.id LIMIT $2"
                    ))
                    .bind(ts(now))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|r| Ok((delivery_row(r)?, endpoint_row(r, "e_")?)))
                        .collect()
                }

                async fn record_webhook_attempt(
                    &self,
                    id: &str,
                    at: chrono::DateTime<chrono::Utc>,
                    attempt: &Attempt,
                ) -> Result<(), $crate::BillingStoreError> {
                    let (status, next, code, error) = match attempt {
                        Attempt::Delivered { status } => ("delivered", at, Some(*status), None),
                        Attempt::Retry { next, status, error } => {
                            ("pending", *next, *status, Some(error.clone()))
                        }
                        Attempt::GaveUp { status, error } => ("failed", at, *status, Some(error.clone())),
                    };
                    sqlx::query(
                        "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, \
                         next_attempt_at = $2, last_attempt_at = $3, last_status = $4, last_error = $5 \
                         WHERE id = $6",
                    )
                    .bind(status)
                    .bind(ts(next))
                    .bind(ts(at))
                    .bind(code)
                    .bind(error)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn webhook_deliveries(
                    &self,
                    limit: i64,
                ) -> Result<Vec<WebhookDelivery>, $crate::BillingStoreError> {
                    let rows = sqlx::query(&format!(
                        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
                         ORDER BY d.created_at DESC, d.id DESC LIMIT $1"
                    ))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(delivery_row).collect()
                }

                async fn create_sign_in_link(
                    &self,
                    link: &DashboardGrant,
                ) -> Result<(), $crate::BillingStoreError> {
                    let (role, partner, staff) = link.role.columns();
                    // Housekeeping: links a day past their expiry and sessions a month past
                    // theirs are of no use any more (not even to tell why a link failed).
                    let day = chrono::Duration::days(1);
                    sqlx::query("DELETE FROM dashboard_sign_in_links WHERE expires_at < $1")
                        .bind(ts(link.created_at - day))
                        .execute(&self.pool)
                        .await?;
                    sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at < $1")
                        .bind(ts(link.created_at - day * 30))
                        .execute(&self.pool)
                        .await?;
                    sqlx::query(
                        "INSERT INTO dashboard_sign_in_links (token_hash, role, partner_id, staff_id, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&link.token_hash)
                    .bind(role)
                    .bind(partner)
                    .bind(staff)
                    .bind(ts(link.created_at))
                    .bind(ts(link.expires_at))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn redeem_sign_in_link(
                    &self,
                    link_hash: &str,
                    now: DateTime<Utc>,
                    session_hash: &str,
                    session_expires_at: DateTime<Utc>,
                ) -> Result<Option<DashboardGrant>, $crate::BillingStoreError> {
                    let mut tx = self.pool.begin_with($begin).await?;
                    // Times are fixed-width UTC text, so text order is time order.
                    let row = sqlx::query(
                        "UPDATE dashboard_sign_in_links SET used_at = $1 \
                         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
                         RETURNING role, partner_id, staff_id",
                    )
                    .bind(ts(now))
                    .bind(link_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(row) = row else { return Ok(None) };
                    let role = DashboardRole::from_columns(
                        &row.try_get::<String, _>("role")?,
                        row.try_get("partner_id")?,
                        row.try_get("staff_id")?,
                    )?;
                    let (r, p, st) = role.columns();
                    sqlx::query(
                        "INSERT INTO dashboard_sessions (token_hash, role, partner_id, staff_id, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(session_hash)
                    .bind(r)
                    .bind(p)
                    .bind(st)
                    .bind(ts(now))
                    .bind(ts(session_expires_at))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(Some(DashboardGrant {
                        token_hash: session_hash.to_string(),
                        role,
                        created_at: now,
                        expires_at: session_expires_at,
                    }))
                }

                async fn dashboard_session(
                    &self,
                    session_hash: &str,
                    now: DateTime<Utc>,
                ) -> Result<Option<DashboardGrant>, $crate::BillingStoreError> {
                    let row = sqlx::query(
                        "SELECT role, partner_id, staff_id, created_at, expires_at FROM dashboard_sessions \
                         WHERE token_hash = $1 AND ended_at IS NULL AND expires_at > $2",
                    )
                    .bind(session_hash)
                    .bind(ts(now))
                    .fetch_optional(&self.pool)
                    .await?;
                    let Some(row) = row else { return Ok(None) };
                    Ok(Some(DashboardGrant {
                        token_hash: session_hash.to_string(),
                        role: DashboardRole::from_columns(
                            &row.try_get::<String, _>("role")?,
                            row.try_get("partner_id")?,
                            row.try_get("staff_id")?,
                        )?,
                        created_at: parse_time("dashboard session", &row.try_get::<String, _>("created_at")?)?,
                        expires_at: parse_time("dashboard session", &row.try_get::<String, _>("expires_at")?)?,
                    }))
                }

                async fn end_dashboard_session(
                    &self,
                    session_hash: &str,
                    now: DateTime<Utc>,
                ) -> Result<(), $crate::BillingStoreError> {
                    sqlx::query(
                        "UPDATE dashboard_sessions SET ended_at = $1 WHERE token_hash = $2 AND ended_at IS NULL",
                    )
                    .bind(ts(now))
                    .bind(session_hash)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }
            }
        };
    };
}
pub(crate) use ledger_store;
