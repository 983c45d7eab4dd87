//! Getting paid (docs/pricing.md, "Payments"): finance records payments of finalized invoices
//! and writes off the ones it will not collect; partners see their invoices' payments. The
//! store does each in one transaction with its webhook; the overdue scan runs in the billing
//! role's scheduler ([`crate::service::invoicing::Invoicing::mark_overdue`]).

use chrono::Utc;
use peage_billing_store::payments::PaymentRefusal;
use peage_billing_store::PaymentRecord;
use peage_core::ids::{InvoiceId, PaymentId};
use peage_core::invoice::InvoiceRecord;
use peage_core::payment::PaymentRequest;
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;
use super::principal::Principal;
use super::webhooks;

/// A payment just recorded, and the invoice it paid as it now stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentMade {
    pub payment: PaymentRecord,
    pub invoice: InvoiceRecord,
}

/// An invoice's payments and what is left to pay.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentList {
    pub payments: Vec<PaymentRecord>,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub amount_paid: Decimal,
    /// The amount due less credit notes and payments, never below zero.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub left_due: Decimal,
    pub state: peage_core::payment::InvoiceState,
}

/// The CSV columns of a payments export.
pub const PAYMENT_CSV_HEADER: &str =
    "payment_id,invoice_id,partner_id,amount,currency,paid_on,reference,recorded_at,recorded_by";

/// One row per payment, under one header.
pub fn payments_csv<'a>(payments: impl IntoIterator<Item = &'a PaymentRecord>) -> String {
    use peage_core::invoice::csv_field as f;
    let mut out = vec![PAYMENT_CSV_HEADER.to_string()];
    for p in payments {
        out.push(
            [
                f(p.id.as_str()),
                f(p.invoice_id.as_str()),
                f(&p.partner_id),
                p.amount.to_string(),
                f(&p.currency),
                p.paid_on.to_string(),
                f(&p.reference),
                p.recorded_at.to_rfc3339(),
                f(&p.recorded_by),
            ]
            .join(","),
        );
    }
    out.join("\r\n") + "\r\n"
}

fn invoice_id(raw: &str) -> Result<InvoiceId, ServiceError> {
    InvoiceId::parse(raw).map_err(|_| ServiceError::not_found("invoice", raw))
}

impl Billing {
    /// `POST /v1/invoices/{id}/payments`.
    pub async fn record_payment(
        &self,
        invoice: &str,
        req: &PaymentRequest,
        by: &str,
    ) -> Result<PaymentMade, ServiceError> {
        let id = invoice_id(invoice)?;
        let (payment, invoice) = self
            .store
            .record_payment(
                &PaymentId::from_random(rand::random()),
                &id,
                req,
                Utc::now(),
                by,
                &mut webhooks::message_ids(),
            )
            .await
            .map_err(|e| match e {
                PaymentRefusal::Store(e) => ServiceError::from(e),
                PaymentRefusal::Rule(e @ peage_core::payment::PaymentError::NotPayable(_)) => {
                    ServiceError::WrongState(format!("invoice {id}: {e}"))
                }
                PaymentRefusal::Rule(e) => ServiceError::Invalid(e.to_string()),
            })?;
        tracing::info!(payment = %payment.id, invoice = %id, amount = %payment.amount, state = invoice.state.as_str(), by, "payment recorded");
        Ok(PaymentMade { payment, invoice })
    }

    /// `GET /v1/invoices/{id}/payments`: for staff, and for the partner of the invoice.
    pub async fn payments(
        &self,
        who: &Principal,
        invoice: &str,
    ) -> Result<PaymentList, ServiceError> {
        let id = invoice_id(invoice)?;
        let record = self
            .store
            .invoice(&id)
            .await?
            .filter(|r| who.may_see_invoice(r))
            .ok_or_else(|| ServiceError::not_found("invoice", invoice))?;
        Ok(PaymentList {
            payments: self.store.payments_of(&id).await?,
            amount_paid: record.payment.amount_paid,
            left_due: record.left_due(),
            state: record.state,
        })
    }

    /// Marks the invoices due by `now` and unpaid as overdue, each once (`invoice.overdue`),
    /// whichever billing instance gets there first. The billing role's upkeep calls it.
    pub async fn mark_overdue(
        &self,
        now: chrono::DateTime<Utc>,
    ) -> Result<Vec<InvoiceRecord>, ServiceError> {
        let marked = self
            .store
            .mark_overdue(now, 100, &mut webhooks::message_ids())
            .await?;
        for r in &marked {
            tracing::info!(invoice = %r.id, number = ?r.number, due_at = ?r.payment.due_at, left_due = %r.left_due(), "invoice overdue");
        }
        Ok(marked)
    }

    /// `POST /v1/invoices/{id}/mark-uncollectible`: the invoice before and after.
    pub async fn mark_uncollectible(
        &self,
        invoice: &str,
        by: &str,
    ) -> Result<(InvoiceRecord, InvoiceRecord), ServiceError> {
        let id = invoice_id(invoice)?;
        let before = self
            .store
            .invoice(&id)
            .await?
            .ok_or_else(|| ServiceError::not_found("invoice", invoice))?;
        let after = self.store.mark_uncollectible(&id, Utc::now(), by).await?;
        tracing::info!(invoice = %id, by, "invoice written off as uncollectible");
        Ok((before, after))
    }
}
