//! Payments of finalized invoices, write-offs, and the overdue scan, each in one transaction
//! with the webhook it causes (`invoice.paid` when an invoice is first settled,
//! `invoice.overdue` once when its due date passes unpaid). The rules are
//! `peage_core::payment`'s.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use peage_core::ids::{InvoiceId, PaymentId};
use peage_core::invoice::InvoiceRecord;
use peage_core::payment::{check_payment, InvoiceState, PaymentError, PaymentRequest};
use rust_decimal::Decimal;
use serde::Serialize;

use super::db::{args, LedgerDb, Row};
use super::store::{invoice, queue_paid, queue_webhook};
use super::{sql, ts};
use crate::BillingStoreError;

/// A payment as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PaymentRecord {
    pub id: PaymentId,
    pub invoice_id: InvoiceId,
    pub partner_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub amount: Decimal,
    pub currency: String,
    pub paid_on: NaiveDate,
    pub reference: String,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: String,
}

const COLUMNS: &str =
    "id, invoice_id, partner_id, amount, currency, paid_on, reference, recorded_at, recorded_by";

fn payment(r: &Row) -> Result<PaymentRecord, BillingStoreError> {
    let paid_on = r.text("paid_on")?;
    Ok(PaymentRecord {
        id: r.id("payment", "id")?,
        invoice_id: r.id("payment", "invoice_id")?,
        partner_id: r.text("partner_id")?,
        amount: r.decimal("payment", "amount")?,
        currency: r.text("currency")?,
        paid_on: paid_on
            .parse()
            .map_err(|e: chrono::ParseError| BillingStoreError::Corrupt {
                what: "payment",
                reason: format!("paid_on {paid_on:?}: {e}"),
            })?,
        reference: r.text("reference")?,
        recorded_at: r.time("payment", "recorded_at")?,
        recorded_by: r.text("recorded_by")?,
    })
}

/// Why a payment or a write-off was refused: the store's own error, or the rule it broke.
#[derive(Debug)]
pub enum PaymentRefusal {
    Store(BillingStoreError),
    Rule(PaymentError),
}

impl From<BillingStoreError> for PaymentRefusal {
    fn from(e: BillingStoreError) -> Self {
        PaymentRefusal::Store(e)
    }
}

#[async_trait]
pub trait PaymentStore: Send + Sync + 'static {
    /// Records a payment of finalized invoice `invoice_id` at `at`, by `by`, checked against
    /// what is left due in the same transaction (two payments cannot both take the last
    /// euro); settles the invoice and queues `invoice.paid` when it covers the rest.
    #[allow(clippy::too_many_arguments)]
    async fn record_payment(
        &self,
        id: &PaymentId,
        invoice_id: &InvoiceId,
        req: &PaymentRequest,
        at: DateTime<Utc>,
        by: &str,
        ids: &mut (dyn Iterator<Item = String> + Send),
    ) -> Result<(PaymentRecord, InvoiceRecord), PaymentRefusal>;
    /// The invoice's payments, oldest first.
    async fn payments_of(
        &self,
        invoice_id: &InvoiceId,
    ) -> Result<Vec<PaymentRecord>, BillingStoreError>;
    /// Writes off an open or overdue invoice.
    async fn mark_uncollectible(
        &self,
        invoice_id: &InvoiceId,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<InvoiceRecord, BillingStoreError>;
    /// Marks the finalized invoices due by `now` and not settled nor written off as overdue,
    /// each once, queueing `invoice.overdue`; at most `limit` a call. Answers those marked.
    async fn mark_overdue(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        ids: &mut (dyn Iterator<Item = String> + Send),
    ) -> Result<Vec<InvoiceRecord>, BillingStoreError>;
}

#[async_trait]
impl<D: LedgerDb> PaymentStore for D {
    async fn record_payment(
        &self,
        id: &PaymentId,
        invoice_id: &InvoiceId,
        req: &PaymentRequest,
        at: DateTime<Utc>,
        by: &str,
        ids: &mut (dyn Iterator<Item = String> + Send),
    ) -> Result<(PaymentRecord, InvoiceRecord), PaymentRefusal> {
        let at = super::parse_time("payment", &ts(at))?;
        let mut tx = self.begin().await?;
        // Claims the invoice's row first (an update that changes nothing but takes the row
        // lock), so concurrent payments of one invoice are checked one after the other. Only a
        // finalized one: the others take no payment, and a void one takes no update at all.
        tx.execute(
            "UPDATE invoices SET updated_at = updated_at WHERE id = $1 AND status = 'finalized'",
            args![invoice_id],
        )
        .await?;
        let row = tx
            .fetch_optional(sql::INVOICE, args![invoice_id])
            .await?
            .ok_or_else(|| super::not_found("invoice", invoice_id))?;
        let mut record = invoice(&row)?;
        check_payment(&record, req, at).map_err(PaymentRefusal::Rule)?;
        // In the currency's minor units, as invoices show amounts (50 → 50.00).
        let minor = record.invoice.currency.minor_units();
        let mut amount = req.amount;
        amount.rescale(minor);
        let mut paid = record
            .payment
            .amount_paid
            .checked_add(amount)
            .ok_or_else(|| BillingStoreError::Conflict("payment total overflows".into()))?;
        paid.rescale(minor);
        record.payment.amount_paid = paid;
        let settled = record.left_due().is_zero();
        if settled {
            record.payment.paid_at = Some(at);
        }
        let made = PaymentRecord {
            id: id.clone(),
            invoice_id: invoice_id.clone(),
            partner_id: record.partner_id.clone(),
            amount,
            currency: record.invoice.currency.code().to_string(),
            paid_on: req.paid_on.unwrap_or_else(|| at.date_naive()),
            reference: req.reference.trim().to_string(),
            recorded_at: at,
            recorded_by: by.to_string(),
        };
        tx.execute(
            &format!(
                "INSERT INTO payments ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            args![
                id.as_str(),
                invoice_id,
                made.partner_id.as_str(),
                made.amount.to_string(),
                made.currency.as_str(),
                made.paid_on.to_string(),
                made.reference.as_str(),
                ts(at),
                by,
            ],
        )
        .await?;
        tx.execute(
            sql::SETTLE,
            args![
                record.payment.amount_paid.to_string(),
                record.payment.amount_credited.to_string(),
                record.payment.paid_at.map(ts),
                ts(at),
                invoice_id,
            ],
        )
        .await?;
        record.updated_at = at;
        let record = record.as_of(at);
        if settled {
            queue_paid(&mut *tx, &record, at, ids).await?;
        }
        tx.commit().await?;
        Ok((made, record))
    }

    async fn payments_of(
        &self,
        invoice_id: &InvoiceId,
    ) -> Result<Vec<PaymentRecord>, BillingStoreError> {
        self.sql()
            .fetch(
                &format!(
                    "SELECT {COLUMNS} FROM payments WHERE invoice_id = $1 ORDER BY recorded_at, id"
                ),
                args![invoice_id],
            )
            .await?
            .iter()
            .map(payment)
            .collect()
    }

    async fn mark_uncollectible(
        &self,
        invoice_id: &InvoiceId,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<InvoiceRecord, BillingStoreError> {
        let at = super::parse_time("invoice", &ts(at))?;
        let mut tx = self.begin().await?;
        let row = tx
            .fetch_optional(sql::INVOICE, args![invoice_id])
            .await?
            .ok_or_else(|| super::not_found("invoice", invoice_id))?;
        let record = invoice(&row)?;
        let state = record.state_at(at);
        if !matches!(state, InvoiceState::Open | InvoiceState::Overdue) {
            return Err(BillingStoreError::Conflict(format!(
                "invoice {invoice_id} is {}; only an open or overdue invoice is written off",
                state.as_str()
            )));
        }
        let changed = tx
            .execute(
                "UPDATE invoices SET uncollectible_at = $1, uncollectible_by = $2, updated_at = $1 \
                 WHERE id = $3 AND status = 'finalized' AND uncollectible_at IS NULL \
                 AND paid_at IS NULL",
                args![ts(at), by, invoice_id],
            )
            .await?;
        if changed == 0 {
            return Err(BillingStoreError::Conflict(format!(
                "invoice {invoice_id} changed meanwhile; read it again"
            )));
        }
        let row = tx
            .fetch_optional(sql::INVOICE, args![invoice_id])
            .await?
            .ok_or_else(|| super::not_found("invoice", invoice_id))?;
        tx.commit().await?;
        Ok(invoice(&row)?.as_of(at))
    }

    async fn mark_overdue(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        ids: &mut (dyn Iterator<Item = String> + Send),
    ) -> Result<Vec<InvoiceRecord>, BillingStoreError> {
        let now = super::parse_time("invoice", &ts(now))?;
        let due: Vec<String> = self
            .sql()
            .fetch(
                "SELECT id FROM invoices WHERE status = 'finalized' AND due_at <= $1 \
                 AND paid_at IS NULL AND uncollectible_at IS NULL AND overdue_at IS NULL \
                 ORDER BY due_at, id LIMIT $2",
                args![ts(now), limit],
            )
            .await?
            .iter()
            .map(|r| r.text("id"))
            .collect::<Result<_, _>>()?;
        let mut marked = Vec::new();
        for id in due {
            let mut tx = self.begin().await?;
            // Once, whichever billing instance gets there first.
            let changed = tx
                .execute(
                    "UPDATE invoices SET overdue_at = $1 WHERE id = $2 AND overdue_at IS NULL \
                     AND paid_at IS NULL AND uncollectible_at IS NULL AND status = 'finalized'",
                    args![ts(now), id.as_str()],
                )
                .await?;
            if changed == 0 {
                continue;
            }
            let row = tx
                .fetch_optional(sql::INVOICE, args![id.as_str()])
                .await?
                .ok_or_else(|| BillingStoreError::NotFound {
                    what: "invoice",
                    id: id.clone(),
                })?;
            // Finalized: the update above changed only a finalized invoice.
            let record = invoice(&row)?.as_of(now);
            let event = "invoice.overdue";
            let payload =
                peage_core::invoice::webhook_message(event, now, record.settlement_event());
            queue_webhook(
                &mut *tx,
                event,
                &format!("{event}:{id}"),
                &payload,
                ids,
                now,
            )
            .await?;
            tx.commit().await?;
            marked.push(record);
        }
        Ok(marked)
    }
}
