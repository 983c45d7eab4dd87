//! Credit notes on finalized invoices, each made in one transaction: its number (a gapless
//! series of its own), the check against what earlier notes of the invoice credited, the note,
//! the partner's balance credit when the money goes there, and the `credit_note.created`
//! webhook.

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use peage_core::credit_note::{
    credit_note_prefix, CreditMethod, CreditNote, CreditNoteRequest, Credited,
};
use peage_core::ids::{CreditNoteId, InvoiceId};
use peage_core::invoice::{invoice_number, InvoiceStatus};
use serde::Serialize;

use super::db::{args, LedgerDb, Row};
use super::store::{insert_credit, invoice, queue_paid, queue_webhook};
use super::{sql, ts, CreditEntry};
use crate::BillingStoreError;

/// A credit note as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CreditNoteRecord {
    pub id: CreditNoteId,
    /// `PEAGE-CN-2026-000001`.
    pub number: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub note: CreditNote,
}

const COLUMNS: &str = "id, number, document, created_at, created_by";

fn record_from(r: &Row) -> Result<CreditNoteRecord, BillingStoreError> {
    Ok(CreditNoteRecord {
        id: r.id("credit note", "id")?,
        number: r.text("number")?,
        created_at: r.time("credit note", "created_at")?,
        created_by: r.text("created_by")?,
        note: serde_json::from_str(&r.text("document")?).map_err(|e| {
            BillingStoreError::Corrupt {
                what: "credit note",
                reason: e.to_string(),
            }
        })?,
    })
}

/// Why a note was refused: the store's own error, or the rule it broke.
#[derive(Debug)]
pub enum CreditNoteRefusal {
    Store(BillingStoreError),
    Rule(peage_core::credit_note::CreditNoteError),
}

impl From<BillingStoreError> for CreditNoteRefusal {
    fn from(e: BillingStoreError) -> Self {
        CreditNoteRefusal::Store(e)
    }
}

#[async_trait]
pub trait CreditNoteStore: Send + Sync + 'static {
    /// Makes the note `req` asks for on finalized invoice `invoice_id`, numbered in the series
    /// of `prefix` for the year of `at`. `Conflict` unless the invoice is finalized.
    #[allow(clippy::too_many_arguments)]
    async fn create_credit_note(
        &self,
        id: &CreditNoteId,
        invoice_id: &InvoiceId,
        req: &CreditNoteRequest,
        prefix: &str,
        at: DateTime<Utc>,
        by: &str,
        ids: &mut (dyn Iterator<Item = String> + Send),
    ) -> Result<CreditNoteRecord, CreditNoteRefusal>;
    /// The invoice's notes, oldest first.
    async fn credit_notes_of(
        &self,
        invoice_id: &InvoiceId,
    ) -> Result<Vec<CreditNoteRecord>, BillingStoreError>;
    async fn credit_note(
        &self,
        id: &CreditNoteId,
    ) -> Result<Option<CreditNoteRecord>, BillingStoreError>;
}

#[async_trait]
impl<D: LedgerDb> CreditNoteStore for D {
    async fn create_credit_note(
        &self,
        id: &CreditNoteId,
        invoice_id: &InvoiceId,
        req: &CreditNoteRequest,
        prefix: &str,
        at: DateTime<Utc>,
        by: &str,
        ids: &mut (dyn Iterator<Item = String> + Send),
    ) -> Result<CreditNoteRecord, CreditNoteRefusal> {
        let at = super::parse_time("credit note", &ts(at))?;
        let series = credit_note_prefix(prefix);
        let mut tx = self.begin().await?;
        // The number first: its row lock serialises the notes of one issuer (so two notes of
        // one invoice cannot both pass the check below), and a rollback gives it back.
        let n = tx
            .fetch_optional(
                sql::NEXT_INVOICE_NUMBER,
                args![series.as_str(), i64::from(at.year())],
            )
            .await?
            .ok_or_else(|| BillingStoreError::Conflict("no credit note number was given".into()))?
            .int("last")?;
        let row = tx
            .fetch_optional(sql::INVOICE, args![invoice_id])
            .await?
            .ok_or_else(|| super::not_found("invoice", invoice_id))?;
        let record = invoice(&row)?;
        let number = match (&record.status, &record.number) {
            (InvoiceStatus::Finalized, Some(number)) => number.clone(),
            _ => {
                return Err(BillingStoreError::Conflict(format!(
                    "invoice {invoice_id} is {}; only a finalized invoice takes credit notes (a draft is recomputed; a mistake is voided)",
                    record.status.as_str()
                ))
                .into())
            }
        };
        let before: Vec<CreditNoteRecord> = tx
            .fetch(
                &format!(
                    "SELECT {COLUMNS} FROM credit_notes WHERE invoice_id = $1 ORDER BY created_at, id"
                ),
                args![invoice_id],
            )
            .await?
            .iter()
            .map(record_from)
            .collect::<Result<_, _>>()?;
        let credited = Credited::of(before.iter().map(|r| &r.note)).map_err(|_| {
            CreditNoteRefusal::Rule(peage_core::credit_note::CreditNoteError::Overflow)
        })?;
        let note = CreditNote::compute(
            invoice_id.as_str(),
            &number,
            &record.invoice,
            &credited,
            req,
        )
        .map_err(CreditNoteRefusal::Rule)?;
        let note_number = invoice_number(&series, at.year(), n);
        let document = serde_json::to_string(&note).map_err(|e| BillingStoreError::Corrupt {
            what: "credit note",
            reason: e.to_string(),
        })?;
        tx.execute(
            &format!(
                "INSERT INTO credit_notes ({COLUMNS}, invoice_id, partner_id, total) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            args![
                id.as_str(),
                note_number.as_str(),
                document,
                ts(at),
                by,
                invoice_id,
                record.partner_id.as_str(),
                note.total.to_string()
            ],
        )
        .await?;
        if note.method == CreditMethod::Credit {
            insert_credit(
                &mut *tx,
                &CreditEntry {
                    id: format!("crd_{}", &id.as_str()[3..]),
                    partner_id: crate::parse_id("invoice", record.partner_id.clone())?,
                    currency: note.currency.code().to_string(),
                    amount: note.total,
                    description: format!("credit note {note_number} on invoice {number}"),
                    invoice_id: Some(invoice_id.to_string()),
                    created_at: at,
                },
            )
            .await?;
        }
        // What notes have covered, summed here (exact on both databases), and whether that
        // settles the invoice.
        let mut record = record;
        record.payment.amount_credited = before
            .iter()
            .map(|r| r.note.total)
            .chain([note.total])
            .try_fold(rust_decimal::Decimal::ZERO, |t, v| t.checked_add(v))
            .ok_or_else(|| {
                CreditNoteRefusal::Rule(peage_core::credit_note::CreditNoteError::Overflow)
            })?;
        let settled = record.payment.paid_at.is_none() && record.left_due().is_zero();
        if settled {
            record.payment.paid_at = Some(at);
        }
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
        if settled {
            queue_paid(&mut *tx, &record.clone().as_of(at), at, ids).await?;
        }
        let made = CreditNoteRecord {
            id: id.clone(),
            number: note_number,
            created_at: at,
            created_by: by.to_string(),
            note,
        };
        let event = "credit_note.created";
        let data = serde_json::to_value(&made).map_err(|e| BillingStoreError::Corrupt {
            what: "credit note",
            reason: e.to_string(),
        })?;
        let payload = peage_core::invoice::webhook_message(event, at, data);
        queue_webhook(&mut *tx, event, &format!("{event}:{id}"), &payload, ids, at).await?;
        tx.commit().await?;
        Ok(made)
    }

    async fn credit_notes_of(
        &self,
        invoice_id: &InvoiceId,
    ) -> Result<Vec<CreditNoteRecord>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(
                &format!(
                    "SELECT {COLUMNS} FROM credit_notes WHERE invoice_id = $1 ORDER BY created_at, id"
                ),
                args![invoice_id],
            )
            .await?;
        rows.iter().map(record_from).collect()
    }

    async fn credit_note(
        &self,
        id: &CreditNoteId,
    ) -> Result<Option<CreditNoteRecord>, BillingStoreError> {
        self.sql()
            .fetch_optional(
                &format!("SELECT {COLUMNS} FROM credit_notes WHERE id = $1"),
                args![id.as_str()],
            )
            .await?
            .as_ref()
            .map(record_from)
            .transpose()
    }
}
