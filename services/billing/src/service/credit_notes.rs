//! Credit notes on finalized invoices (docs/pricing.md rule 19): made by finance, read by the
//! partner they credit. The store makes each one in a single transaction.

use chrono::Utc;
use peage_billing_store::credit_notes::CreditNoteRefusal;
use peage_billing_store::CreditNoteRecord;
use peage_core::credit_note::CreditNoteRequest;
use peage_core::ids::{CreditNoteId, InvoiceId};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;
use super::principal::Principal;
use super::webhooks;

/// An invoice's credit notes and what is left due on it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditNoteList {
    pub credit_notes: Vec<CreditNoteRecord>,
    /// The notes' totals, with tax.
    #[serde(with = "rust_decimal::serde::str")]
    pub credited: Decimal,
    /// The invoice's amount due less its notes and payments, never below zero.
    #[serde(with = "rust_decimal::serde::str")]
    pub left_due: Decimal,
}

/// The CSV columns of a credit note export.
pub const CREDIT_NOTE_CSV_HEADER: &str =
    "credit_note_id,number,invoice_number,partner_id,created_at,method,reason,kind,description,amount,currency";

/// One row per credited line of each note, then its `tax` row when there is tax and its
/// `total` row, under one header.
pub fn credit_notes_csv<'a>(records: impl IntoIterator<Item = &'a CreditNoteRecord>) -> String {
    let mut out = vec![CREDIT_NOTE_CSV_HEADER.to_string()];
    for r in records {
        out.extend(note_rows(r));
    }
    out.join("\r\n") + "\r\n"
}

fn note_rows(r: &CreditNoteRecord) -> Vec<String> {
    use peage_core::invoice::csv_field as f;
    let n = &r.note;
    let row = |kind: &str, description: &str, amount: Decimal| {
        [
            f(r.id.as_str()),
            f(&r.number),
            f(&n.invoice_number),
            f(&n.partner_id),
            r.created_at.to_rfc3339(),
            n.method.as_str().to_string(),
            f(&n.reason),
            kind.to_string(),
            f(description),
            amount.to_string(),
            n.currency.code().to_string(),
        ]
        .join(",")
    };
    let mut out: Vec<String> = n
        .lines
        .iter()
        .map(|l| row("line", &l.description, l.amount))
        .collect();
    if let Some(t) = &n.tax {
        out.push(row("tax", &t.label, t.amount));
    }
    out.push(row("total", "total credited", n.total));
    out
}

impl Billing {
    fn invoice_id(raw: &str) -> Result<InvoiceId, ServiceError> {
        InvoiceId::parse(raw).map_err(|_| ServiceError::not_found("invoice", raw))
    }

    /// `POST /v1/invoices/{id}/credit-notes`.
    pub async fn create_credit_note(
        &self,
        invoice: &str,
        req: &CreditNoteRequest,
        by: &str,
    ) -> Result<CreditNoteRecord, ServiceError> {
        let invoice_id = Self::invoice_id(invoice)?;
        let id = CreditNoteId::from_random(rand::random());
        let made = self
            .store
            .create_credit_note(
                &id,
                &invoice_id,
                req,
                &self.issuer.prefix,
                Utc::now(),
                by,
                &mut webhooks::message_ids(),
            )
            .await
            .map_err(|e| match e {
                CreditNoteRefusal::Store(e) => ServiceError::from(e),
                CreditNoteRefusal::Rule(e) => ServiceError::Invalid(e.to_string()),
            })?;
        tracing::info!(credit_note = %made.id, number = %made.number, invoice = %invoice_id, by, "credit note made");
        Ok(made)
    }

    /// `GET /v1/invoices/{id}/credit-notes`: for staff, and for the partner of a finalized
    /// invoice.
    pub async fn credit_notes(
        &self,
        who: &Principal,
        invoice: &str,
    ) -> Result<CreditNoteList, ServiceError> {
        let invoice_id = Self::invoice_id(invoice)?;
        let record = self
            .store
            .invoice(&invoice_id)
            .await?
            .filter(|r| who.may_see_invoice(r))
            .ok_or_else(|| ServiceError::not_found("invoice", invoice))?;
        let credit_notes = self.store.credit_notes_of(&invoice_id).await?;
        let credited = peage_core::money::checked_total(credit_notes.iter().map(|n| n.note.total))
            .ok_or_else(|| ServiceError::Corrupt("credit note totals overflow".into()))?;
        Ok(CreditNoteList {
            credit_notes,
            credited,
            left_due: {
                let mut left = (record.invoice.amount_due - credited - record.payment.amount_paid)
                    .max(Decimal::ZERO);
                left.rescale(record.invoice.currency.minor_units());
                left
            },
        })
    }

    /// `GET /v1/credit-notes/{id}`, for staff and the partner it credits.
    pub async fn credit_note(
        &self,
        who: &Principal,
        raw: &str,
    ) -> Result<CreditNoteRecord, ServiceError> {
        let missing = || ServiceError::not_found("credit note", raw);
        let id = CreditNoteId::parse(raw).map_err(|_| missing())?;
        let note = self.store.credit_note(&id).await?.ok_or_else(missing)?;
        who.may_see(&note.note.partner_id).map_err(|_| missing())?;
        Ok(note)
    }
}
