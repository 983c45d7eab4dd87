//! Getting paid: payment terms and due dates, payments recorded against finalized invoices, and
//! the state an invoice is in for finance (docs/pricing.md, "Payments").
//!
//! An invoice's stored lifecycle is draft → finalized (→ void); once finalized, what finance
//! sees is its [`InvoiceState`]: `open` until it is settled or due, `paid` when payments and
//! credit notes cover its amount due, `overdue` when its due date passes first, and
//! `uncollectible` when finance writes it off. Payments may be partial; none may pay more than
//! is left due.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::invoice::{InvoiceRecord, InvoiceStatus};

/// Net days when neither the partner's billing profile nor the plan says otherwise.
pub const DEFAULT_NET_DAYS: u32 = 30;

/// The most net days a plan or a partner may give (ten years).
pub const MAX_NET_DAYS: u32 = 3650;

/// What finance sees of an invoice.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceState {
    /// Recomputed by invoice runs until it is finalized.
    #[default]
    Draft,
    /// Finalized, not settled, not yet due.
    Open,
    /// Settled by payments and credit notes.
    Paid,
    /// Past its due date and not settled.
    Overdue,
    /// Written off by finance.
    Uncollectible,
    /// Cancelled.
    Void,
}

impl InvoiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceState::Draft => "draft",
            InvoiceState::Open => "open",
            InvoiceState::Paid => "paid",
            InvoiceState::Overdue => "overdue",
            InvoiceState::Uncollectible => "uncollectible",
            InvoiceState::Void => "void",
        }
    }
}

/// The payment side of a finalized invoice, as billing keeps it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Settlement {
    /// Finalization plus the payment terms' net days.
    pub due_at: Option<DateTime<Utc>>,
    /// The sum of the payments recorded.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub amount_paid: Decimal,
    /// The sum of the credit notes made on it.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub amount_credited: Decimal,
    /// When payments and credit notes first covered the amount due (`invoice.paid`).
    pub paid_at: Option<DateTime<Utc>>,
    /// When `invoice.overdue` was sent.
    pub overdue_at: Option<DateTime<Utc>>,
    pub uncollectible_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncollectible_by: Option<String>,
}

/// The due date of an invoice finalized at `finalized_at` on `net_days` terms.
pub fn due_at(finalized_at: DateTime<Utc>, net_days: u32) -> DateTime<Utc> {
    finalized_at + Duration::days(i64::from(net_days.min(MAX_NET_DAYS)))
}

impl InvoiceRecord {
    /// The record with its state at `now`.
    pub fn as_of(mut self, now: DateTime<Utc>) -> InvoiceRecord {
        self.state = self.state_at(now);
        self
    }

    /// The data of `invoice.paid` and `invoice.overdue`: the invoice's identity, amounts and
    /// settlement.
    pub fn settlement_event(&self) -> serde_json::Value {
        serde_json::json!({
            "invoice_id": self.id,
            "number": self.number,
            "partner_id": self.partner_id,
            "period_label": self.period_label,
            "currency": self.invoice.currency.code(),
            "amount_due": self.invoice.amount_due.to_string(),
            "amount_paid": self.payment.amount_paid.to_string(),
            "amount_credited": self.payment.amount_credited.to_string(),
            "left_due": self.left_due().to_string(),
            "due_at": self.payment.due_at,
            "state": self.state.as_str(),
        })
    }

    /// What is left to pay: the amount due less credit notes and payments, never below zero.
    pub fn left_due(&self) -> Decimal {
        let s = &self.payment;
        let mut left = self
            .invoice
            .amount_due
            .checked_sub(s.amount_credited)
            .and_then(|d| d.checked_sub(s.amount_paid))
            .unwrap_or(Decimal::ZERO)
            .max(Decimal::ZERO);
        left.rescale(self.invoice.currency.minor_units());
        left
    }

    /// The invoice's state at `now`.
    pub fn state_at(&self, now: DateTime<Utc>) -> InvoiceState {
        let s = &self.payment;
        match self.status {
            InvoiceStatus::Draft => InvoiceState::Draft,
            InvoiceStatus::Void => InvoiceState::Void,
            InvoiceStatus::Finalized if s.uncollectible_at.is_some() => InvoiceState::Uncollectible,
            InvoiceStatus::Finalized if s.paid_at.is_some() || self.left_due().is_zero() => {
                InvoiceState::Paid
            }
            InvoiceStatus::Finalized if s.due_at.is_some_and(|d| d <= now) => InvoiceState::Overdue,
            InvoiceStatus::Finalized => InvoiceState::Open,
        }
    }
}

/// A payment finance records: how much, the day it was received, and its reference (a bank
/// transfer's, a card payment's id).
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct PaymentRequest {
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "120.00")]
    pub amount: Decimal,
    /// The day it was received (default: today, UTC).
    #[serde(default)]
    pub paid_on: Option<NaiveDate>,
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PaymentError {
    #[error("a payment amount is above zero")]
    NotPositive,
    #[error("{amount} has more decimals than {currency} has minor units")]
    TooPrecise { amount: Decimal, currency: String },
    #[error("a payment needs a reference (1 to 200 characters): the transfer's or the charge's")]
    Reference,
    #[error("invoice is {0}; payments are recorded on open and overdue invoices")]
    NotPayable(&'static str),
    #[error("{amount} is more than the {left} left due")]
    Overpaid { amount: Decimal, left: Decimal },
}

/// Checks a payment against the invoice it pays, at `now`.
pub fn check_payment(
    record: &InvoiceRecord,
    req: &PaymentRequest,
    now: DateTime<Utc>,
) -> Result<(), PaymentError> {
    let state = record.state_at(now);
    if !matches!(state, InvoiceState::Open | InvoiceState::Overdue) {
        return Err(PaymentError::NotPayable(state.as_str()));
    }
    if req.amount <= Decimal::ZERO {
        return Err(PaymentError::NotPositive);
    }
    let currency = record.invoice.currency;
    if currency.round(req.amount) != req.amount {
        return Err(PaymentError::TooPrecise {
            amount: req.amount,
            currency: currency.code().to_string(),
        });
    }
    let reference = req.reference.trim();
    if reference.is_empty() || reference.chars().count() > 200 {
        return Err(PaymentError::Reference);
    }
    let left = record.left_due();
    if req.amount > left {
        return Err(PaymentError::Overpaid {
            amount: req.amount,
            left,
        });
    }
    Ok(())
}
