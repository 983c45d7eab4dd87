//! Invoices: plans applied to a period's usage.
//!
//! The rules (docs/pricing.md has worked examples):
//! - Every line is rounded once, to the currency's minor unit, half to even
//!   ([`Currency::round`]); the subtotal is the sum of the rounded lines; tax is rounded once, on
//!   the subtotal; the total is subtotal plus tax. Nothing else rounds.
//! - A period may span several subscriptions (a plan change mid-period). Each part is priced by
//!   its own plan version with that part's usage; base fees and minimum commitments are prorated
//!   by the share of the period's time the part covers.
//! - Meters with `group_by` give one set of lines per group, each group priced on its own.
//! - Late usage for periods already finalized arrives as adjustment lines naming their period.
//! - Prepaid credits reduce the amount due, never below zero; a negative total (a correction
//!   in the partner's favour) goes back to their credit balance.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::coupon::{Coupon, Discount};
use crate::meter::MeterUsage;
use crate::money::{checked_total, Currency, Overflow};
use crate::period::BillingPeriod;
use crate::pricing::{Plan, TaxRate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    BaseFee,
    FreeAllowance,
    Usage,
    CommitmentTopUp,
    /// Late usage of an earlier, finalized period.
    Adjustment,
    /// A coupon's discount (negative).
    Discount,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::BaseFee => "base_fee",
            LineKind::FreeAllowance => "free_allowance",
            LineKind::Usage => "usage",
            LineKind::CommitmentTopUp => "commitment_top_up",
            LineKind::Adjustment => "adjustment",
            LineKind::Discount => "discount",
        }
    }
}

/// The finalized invoice an adjustment line corrects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdjustedInvoice {
    pub invoice_id: String,
    pub number: Option<String>,
    pub period: BillingPeriod,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub description: String,
    pub meter: Option<String>,
    /// The group's dimensions, for meters with `group_by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<BTreeMap<String, String>>,
    /// 1-based tier of a graduated or volume charge.
    pub tier: Option<u32>,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// `quantity × unit_price`, rounded to the currency's minor unit, half to even. Prorated
    /// base fees and commitments use the exact share of time; their quantity shows it to six
    /// decimals.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjusts: Option<AdjustedInvoice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tax {
    pub label: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// The plan version that priced part of the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanSpan {
    pub plan_id: String,
    pub plan_version: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invoice {
    pub partner_id: String,
    /// The plan in force at the end of the period (see `plans` for every part).
    pub plan_id: String,
    pub plan_version: String,
    pub currency: Currency,
    pub period: BillingPeriod,
    /// The IANA time zone the period's boundaries are midnights of.
    #[serde(default = "utc_name")]
    pub timezone: String,
    #[serde(default)]
    pub plans: Vec<PlanSpan>,
    pub lines: Vec<InvoiceLine>,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    pub tax: Option<Tax>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Taken from the partner's prepaid credits (negative: given back to them).
    #[serde(with = "rust_decimal::serde::str", default)]
    pub credits_applied: Decimal,
    /// `total − credits_applied`, never below zero.
    #[serde(with = "rust_decimal::serde::str", default)]
    pub amount_due: Decimal,
    /// Who is billed, as the partner's billing details said when the invoice was drafted
    /// (kept as they were once it is finalized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bill_to: Option<BillTo>,
}

/// A partner's billing details, printed under "Bill to" (docs/pricing.md, "Billing details").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BillTo {
    /// The legal name to bill, when it is not the partner's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_name: Option<String>,
    /// Postal address, one line each (at most 6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<String>,
    /// VAT or other tax id (`FR12345678901`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<String>,
    /// Where invoices go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl BillTo {
    /// The details trimmed, empty fields dropped; why not, when one breaks a rule.
    pub fn checked(self) -> Result<BillTo, String> {
        let clean = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let out = BillTo {
            legal_name: clean(self.legal_name),
            address: self
                .address
                .into_iter()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            tax_id: clean(self.tax_id),
            email: clean(self.email),
        };
        let printable = |s: &str| !s.chars().any(char::is_control);
        if let Some(n) = &out.legal_name {
            if n.chars().count() > 200 || !printable(n) {
                return Err("legal_name: at most 200 characters, no control characters".into());
            }
        }
        if out.address.len() > 6 {
            return Err("address: at most 6 lines".into());
        }
        if out
            .address
            .iter()
            .any(|l| l.chars().count() > 100 || !printable(l))
        {
            return Err("address: each line at most 100 characters, no control characters".into());
        }
        if let Some(t) = &out.tax_id {
            let fine = t.len() <= 32
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '.' | '/'));
            if !fine {
                return Err(format!(
                    "tax_id {t:?}: at most 32 letters, digits, spaces, '-', '.' or '/'"
                ));
            }
        }
        if let Some(e) = &out.email {
            let fine = e.len() <= 254
                && printable(e)
                && !e.contains(char::is_whitespace)
                && e.split_once('@')
                    .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
            if !fine {
                return Err(format!("email {e:?} is not an email address"));
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self == &BillTo::default()
    }
}

fn utc_name() -> String {
    "UTC".into()
}

/// One part of a period priced by one plan version: the part of the period it covers and the
/// usage metered in it.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub plan: &'a Plan,
    pub span: BillingPeriod,
    pub usage: &'a [MeterUsage],
}

/// What an invoice is computed from.
#[derive(Debug, Clone)]
pub struct InvoiceInput<'a> {
    pub partner_id: &'a str,
    pub period: BillingPeriod,
    pub timezone: &'a str,
    /// In time order, inside `period`, not overlapping.
    pub segments: Vec<Segment<'a>>,
    /// The partner's own tax rate, which replaces the plan's.
    pub tax: Option<&'a TaxRate>,
    /// Corrections of earlier periods (kind `Adjustment`, already rounded).
    pub adjustments: Vec<InvoiceLine>,
    /// The coupons that apply to this period, in the order they were attached
    /// (`crate::coupon`: the caller picks them by period index).
    pub coupons: Vec<&'a Coupon>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvoiceError {
    #[error("no subscription covers any part of the period")]
    NoPlan,
    #[error("the period mixes currencies ({0} and {1}); a plan change must keep the currency")]
    MixedCurrencies(String, String),
    #[error("the plan parts are out of order or outside the period")]
    BadSegments,
    #[error("meter {0} is priced event by event, but its events' amounts were not read")]
    AmountsMissing(String),
    #[error(transparent)]
    Overflow(#[from] Overflow),
}

/// The share of `period` that `span` covers, as the exact ratio `part / whole` (microseconds).
/// Amounts multiply by `part` first and divide by `whole` last, so a prorated amount that lands
/// exactly on a rounding midpoint is not nudged off it by a non-terminating share.
#[derive(Debug, Clone, Copy)]
struct Share {
    part: Decimal,
    whole: Decimal,
}

impl Share {
    fn of(span: &BillingPeriod, period: &BillingPeriod) -> Share {
        let whole = (period.end - period.start)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        let part = (span.end - span.start)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        if whole <= 0 {
            return Share {
                part: Decimal::ONE,
                whole: Decimal::ONE,
            };
        }
        Share {
            part: Decimal::from(part),
            whole: Decimal::from(whole),
        }
    }

    fn is_whole(&self) -> bool {
        self.part == self.whole
    }

    fn ratio(&self) -> Decimal {
        self.part / self.whole
    }
}

/// A prorated line: `amount = round(unit_price × part / whole)`; the quantity shows the share
/// to six decimals.
fn prorated_line(
    kind: LineKind,
    description: String,
    unit_price: Decimal,
    share: Share,
    cur: Currency,
) -> Result<InvoiceLine, Overflow> {
    let amount = unit_price
        .checked_mul(share.part)
        .and_then(|a| a.checked_div(share.whole))
        .ok_or(Overflow)?;
    Ok(InvoiceLine {
        kind,
        description,
        meter: None,
        group: None,
        tier: None,
        quantity: share
            .ratio()
            .round_dp_with_strategy(6, RoundingStrategy::MidpointNearestEven)
            .normalize(),
        unit_price: unit_price.normalize(),
        amount: cur.round(amount),
        adjusts: None,
    })
}

fn describe_span(span: &BillingPeriod, period: &BillingPeriod) -> String {
    if span == period {
        String::new()
    } else {
        format!(
            " ({} – {})",
            span.start.format("%Y-%m-%d %H:%M"),
            span.end.format("%Y-%m-%d %H:%M")
        )
    }
}

fn group_label(dims: &BTreeMap<String, String>) -> String {
    dims.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Adds one discount line per coupon that takes something, in order, each on what the ones
/// before it left of its lines (module `crate::coupon` states the rules).
fn discount(
    lines: &mut Vec<InvoiceLine>,
    coupons: &[&Coupon],
    plan_id: &str,
    cur: Currency,
) -> Result<(), Overflow> {
    // What each line still holds after earlier coupons: discounts are spread over the lines a
    // coupon covers, so a later coupon on fewer lines sees what is left of those.
    let mut left: Vec<Decimal> = lines.iter().map(|l| l.amount.max(Decimal::ZERO)).collect();
    // A negative line of a charge (each event held to its maximum) lowers what the charge's
    // lines before it hold: a coupon never takes more than the charge's net.
    for i in 0..lines.len() {
        let mut owed = -lines[i].amount.min(Decimal::ZERO);
        for j in (0..i).rev() {
            if owed.is_zero() {
                break;
            }
            if lines[j].kind == lines[i].kind && lines[j].meter == lines[i].meter {
                let take = owed.min(left[j]);
                left[j] -= take;
                owed -= take;
            }
        }
    }
    let own = lines.len();
    for coupon in coupons {
        if !coupon.plans.is_empty() && !coupon.plans.iter().any(|p| p == plan_id) {
            continue;
        }
        let covered: Vec<usize> = (0..own)
            .filter(|&i| {
                coupon.meters.is_empty()
                    || (lines[i].kind == LineKind::Usage
                        && lines[i]
                            .meter
                            .as_ref()
                            .is_some_and(|m| coupon.meters.contains(m)))
            })
            .collect();
        let base = checked_total(covered.iter().map(|&i| left[i])).ok_or(Overflow)?;
        let off = match &coupon.discount {
            Discount::Percent { rate } => cur.round(base.checked_mul(*rate).ok_or(Overflow)?),
            Discount::Amount { amount, currency } if *currency == cur => cur.round(*amount),
            Discount::Amount { .. } => Decimal::ZERO,
        }
        .min(base);
        if off <= Decimal::ZERO {
            continue;
        }
        // Taken from the covered lines in order, so the next coupon sees what remains.
        let mut rest = off;
        for &i in &covered {
            let take = rest.min(left[i]);
            left[i] -= take;
            rest -= take;
        }
        lines.push(InvoiceLine {
            kind: LineKind::Discount,
            description: coupon.describe(),
            meter: None,
            group: None,
            tier: None,
            quantity: Decimal::ONE,
            unit_price: -off,
            amount: -off,
            adjusts: None,
        });
    }
    Ok(())
}

impl Invoice {
    /// Prices `usage` (one entry per meter; missing meters count as zero) under one `plan` for
    /// the whole period, in UTC.
    pub fn compute(
        partner_id: &str,
        plan: &Plan,
        period: BillingPeriod,
        usage: &[MeterUsage],
    ) -> Result<Invoice, InvoiceError> {
        Invoice::build(&InvoiceInput {
            partner_id,
            period,
            timezone: "UTC",
            segments: vec![Segment {
                plan,
                span: period,
                usage,
            }],
            tax: None,
            adjustments: Vec::new(),
            coupons: Vec::new(),
        })
    }

    pub fn build(input: &InvoiceInput<'_>) -> Result<Invoice, InvoiceError> {
        let period = input.period;
        let last = input.segments.last().ok_or(InvoiceError::NoPlan)?;
        let cur = last.plan.currency;
        let mut previous_end = period.start;
        for s in &input.segments {
            if s.plan.currency != cur {
                return Err(InvoiceError::MixedCurrencies(
                    s.plan.currency.code().into(),
                    cur.code().into(),
                ));
            }
            if s.span.start < previous_end || s.span.end <= s.span.start || s.span.end > period.end
            {
                return Err(InvoiceError::BadSegments);
            }
            previous_end = s.span.end;
        }
        let mut lines = Vec::new();
        // Σ commitment × part, divided by the period's length once at the end.
        let mut commitment_parts = Decimal::ZERO;
        let mut has_commitment = false;
        let whole = Share::of(&period, &period).whole;
        for s in &input.segments {
            let plan = s.plan;
            let share = Share::of(&s.span, &period);
            let when = describe_span(&s.span, &period);
            if !plan.base_fee.is_zero() {
                let description = if share.is_whole() {
                    format!("{}: base fee", plan.name)
                } else {
                    format!("{}: base fee, prorated{when}", plan.name)
                };
                lines.push(prorated_line(
                    LineKind::BaseFee,
                    description,
                    plan.base_fee,
                    share,
                    cur,
                )?);
            }
            if let Some(c) = plan.minimum_commitment {
                commitment_parts = c
                    .checked_mul(share.part)
                    .and_then(|p| commitment_parts.checked_add(p))
                    .ok_or(Overflow)?;
                has_commitment = true;
            }
            let quantities: BTreeMap<&str, &MeterUsage> =
                s.usage.iter().map(|u| (u.meter.as_str(), u)).collect();
            for charge in &plan.charges {
                match quantities.get(charge.meter.as_str()) {
                    Some(u) if !u.groups.is_empty() => {
                        for g in &u.groups {
                            let label = group_label(&g.dimensions);
                            for mut l in charge.price(g.quantity, cur)? {
                                l.description = format!("{} [{label}]{when}", l.description);
                                l.group = Some(g.dimensions.clone());
                                lines.push(l);
                            }
                        }
                    }
                    other if charge.prices_each_event() => {
                        let amounts = match other {
                            None => &[][..],
                            Some(u) => u.amounts.as_deref().ok_or_else(|| {
                                InvoiceError::AmountsMissing(charge.meter.clone())
                            })?,
                        };
                        for mut l in charge.price_each_event(amounts, cur)? {
                            l.description.push_str(&when);
                            lines.push(l);
                        }
                    }
                    other => {
                        let q = other.map(|u| u.quantity).unwrap_or_default();
                        // A per-event fee counts the events of its own (ungrouped) meter.
                        let events = charge
                            .events_meter()
                            .and_then(|m| quantities.get(m))
                            .map(|u| u.quantity)
                            .unwrap_or_default();
                        for mut l in charge.price_with_events(q, events, cur)? {
                            l.description.push_str(&when);
                            lines.push(l);
                        }
                    }
                }
            }
        }
        if has_commitment {
            let usage_total = checked_total(
                lines
                    .iter()
                    .filter(|l| l.kind == LineKind::Usage)
                    .map(|l| l.amount),
            )
            .ok_or(Overflow)?;
            let commitment = cur.round(commitment_parts / whole);
            let top_up = commitment.checked_sub(usage_total).ok_or(Overflow)?;
            if top_up > Decimal::ZERO {
                lines.push(InvoiceLine {
                    kind: LineKind::CommitmentTopUp,
                    description: format!("minimum commitment of {} {}", commitment, cur.code()),
                    meter: None,
                    group: None,
                    tier: None,
                    quantity: Decimal::ONE,
                    unit_price: top_up,
                    amount: top_up,
                    adjusts: None,
                });
            }
        }
        discount(&mut lines, &input.coupons, &last.plan.id, cur)?;
        lines.extend(input.adjustments.iter().cloned());
        let subtotal = cur.round(checked_total(lines.iter().map(|l| l.amount)).ok_or(Overflow)?);
        let tax_rate = input.tax.or(last.plan.tax.as_ref());
        let tax = match tax_rate {
            Some(t) => Some(Tax {
                label: t.label.clone(),
                rate: t.rate,
                amount: cur.round(subtotal.checked_mul(t.rate).ok_or(Overflow)?),
            }),
            None => None,
        };
        let total = subtotal
            .checked_add(tax.as_ref().map_or(Decimal::ZERO, |t| t.amount))
            .ok_or(Overflow)?;
        let mut invoice = Invoice {
            partner_id: input.partner_id.to_string(),
            plan_id: last.plan.id.clone(),
            plan_version: last.plan.version.clone(),
            currency: cur,
            period,
            timezone: input.timezone.to_string(),
            plans: input
                .segments
                .iter()
                .map(|s| PlanSpan {
                    plan_id: s.plan.id.clone(),
                    plan_version: s.plan.version.clone(),
                    from: s.span.start,
                    to: s.span.end,
                })
                .collect(),
            lines,
            subtotal,
            tax,
            total,
            credits_applied: Decimal::ZERO,
            amount_due: total,
            bill_to: None,
        };
        invoice.apply_credits(Decimal::ZERO);
        Ok(invoice)
    }

    /// Takes what the partner's prepaid `balance` (in this currency) covers of the total. A
    /// negative total is given back: `credits_applied` is then negative and the amount due 0.
    pub fn apply_credits(&mut self, balance: Decimal) {
        let cur = self.currency;
        self.credits_applied = if self.total < Decimal::ZERO {
            self.total
        } else {
            cur.round(balance.max(Decimal::ZERO).min(self.total))
        };
        self.amount_due = self.total - self.credits_applied;
    }

    /// The subtotal of this period's own lines: what late usage of this period is compared with.
    pub fn own_subtotal(&self) -> Result<Decimal, Overflow> {
        checked_total(
            self.lines
                .iter()
                .filter(|l| l.kind != LineKind::Adjustment)
                .map(|l| l.amount),
        )
        .ok_or(Overflow)
    }

    /// The amounts of adjustment lines on this invoice that correct `invoice_id`.
    pub fn adjustments_of(&self, invoice_id: &str) -> Result<Decimal, Overflow> {
        checked_total(
            self.lines
                .iter()
                .filter(|l| {
                    l.adjusts
                        .as_ref()
                        .is_some_and(|a| a.invoice_id == invoice_id)
                })
                .map(|l| l.amount),
        )
        .ok_or(Overflow)
    }
}

/// The adjustment line for a finalized invoice whose period, priced again with today's usage,
/// comes to `repriced` (its own subtotal), when `billed` (its own subtotal plus adjustments
/// already finalized) differs.
pub fn late_usage_adjustment(
    of: &AdjustedInvoice,
    repriced: Decimal,
    billed: Decimal,
    cur: Currency,
) -> Result<Option<InvoiceLine>, Overflow> {
    let diff = cur.round(repriced.checked_sub(billed).ok_or(Overflow)?);
    Ok((!diff.is_zero()).then(|| InvoiceLine {
        kind: LineKind::Adjustment,
        description: format!(
            "late usage for {} – {}{}",
            of.period.start.format("%Y-%m-%d"),
            of.period.end.format("%Y-%m-%d"),
            of.number
                .as_ref()
                .map(|n| format!(" (invoice {n})"))
                .unwrap_or_default()
        ),
        meter: None,
        group: None,
        tier: None,
        quantity: Decimal::ONE,
        unit_price: diff,
        amount: diff,
        adjusts: Some(of.clone()),
    }))
}

/// Where an invoice is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Computed by an invoice run; recomputed by the next run until finance finalizes it.
    Draft,
    /// Numbered and immutable.
    Finalized,
    /// Cancelled by finance; keeps its number (if it had one) so numbering has no gaps.
    Void,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Finalized => "finalized",
            InvoiceStatus::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<InvoiceStatus> {
        match s {
            "draft" => Some(InvoiceStatus::Draft),
            "finalized" => Some(InvoiceStatus::Finalized),
            "void" => Some(InvoiceStatus::Void),
            _ => None,
        }
    }
}

/// An invoice as billing keeps it: the document plus its identity and lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvoiceRecord {
    pub id: String,
    pub number: Option<String>,
    pub status: InvoiceStatus,
    pub partner_id: String,
    /// The calendar month (`YYYY-MM`, partner time zone) the period starts in.
    pub period_label: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    /// Who finalized it (`staff:<email>`, `admin`, `service:<id>:<scope>`), when it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalized_by: Option<String>,
    /// Who voided it, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided_by: Option<String>,
    /// Due date, payments, credit notes and write-off (crate::payment).
    #[serde(default)]
    pub payment: crate::payment::Settlement,
    /// What finance sees ([`InvoiceRecord::state_at`]) when it was read.
    #[serde(default)]
    pub state: crate::payment::InvoiceState,
    pub invoice: Invoice,
}

/// `PEAGE-2026-000123`: the issuer's prefix, the year finalized in, and the year's running
/// number (gapless: a finalization that fails gives its number back).
pub fn invoice_number(prefix: &str, year: i32, n: i64) -> String {
    format!("{prefix}-{year}-{n:06}")
}

/// Prepaid credit an invoice moves: taken when it is finalized, given back when it is voided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditMovement {
    /// Derived from the invoice's id, so one invoice cannot move the same credit twice.
    pub id: String,
    /// Negative: taken from the balance; positive: given back.
    pub amount: Decimal,
    pub description: String,
}

/// The part of an invoice id after its prefix (`inv_`), which credit movements are named by.
fn id_body(id: &str) -> &str {
    id.get(4..).unwrap_or_default()
}

impl InvoiceRecord {
    /// Finalizes a draft at `at`, by `by`: numbers it, and takes what the partner's prepaid
    /// `balance` covers of it. The credit taken, if any, is for the caller to record in the same
    /// transaction as the invoice.
    pub fn finalize(
        &mut self,
        number: String,
        balance: Decimal,
        at: DateTime<Utc>,
        by: &str,
    ) -> Option<CreditMovement> {
        self.invoice.apply_credits(balance);
        let taken = self.invoice.credits_applied;
        let movement = (!taken.is_zero()).then(|| CreditMovement {
            id: format!("crd_{}", id_body(&self.id)),
            amount: -taken,
            description: format!("invoice {number}"),
        });
        self.status = InvoiceStatus::Finalized;
        self.number = Some(number);
        self.finalized_at = Some(at);
        self.finalized_by = Some(by.to_string());
        self.updated_at = at;
        movement
    }

    /// What voiding this invoice gives back to the partner's balance: the credit it took when
    /// it was finalized (a draft took none).
    pub fn void_restitution(&self) -> Option<CreditMovement> {
        let taken = self.invoice.credits_applied;
        let number = self.number.as_deref()?;
        (!taken.is_zero()).then(|| CreditMovement {
            id: format!("crd_v{}", id_body(&self.id)),
            amount: taken,
            description: format!("invoice {number} voided"),
        })
    }

    /// The `data` of its `invoice.finalized` webhook (docs/control-api.md, the webhook routes).
    pub fn finalized_event(&self) -> serde_json::Value {
        serde_json::json!({
            "invoice_id": self.id,
            "number": self.number,
            "partner_id": self.partner_id,
            "period_start": self.invoice.period.start,
            "period_end": self.invoice.period.end,
            "currency": self.invoice.currency.code(),
            "total": self.invoice.total.to_string(),
            "amount_due": self.invoice.amount_due.to_string(),
        })
    }
}

/// A webhook message's body: its type, when it happened, and its data (Standard Webhooks).
pub fn webhook_message(event_type: &str, at: DateTime<Utc>, data: serde_json::Value) -> String {
    serde_json::json!({
        "type": event_type,
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": data,
    })
    .to_string()
}

/// The CSV export's columns, in order (documented in docs/control-api.md).
pub const CSV_HEADER: &str = "invoice_id,number,status,partner_id,period_start,period_end,timezone,currency,kind,description,meter,group,tier,quantity,unit_price,amount,adjusts_invoice";

impl InvoiceRecord {
    /// One CSV row per invoice line, then a `tax` row when there is tax, a `credits` row when
    /// credits were applied, and a `total` row with the amount due.
    pub fn csv_rows(&self, out: &mut String) {
        let inv = &self.invoice;
        let start = inv
            .period
            .start
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let end = inv
            .period
            .end
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let number = self.number.clone().unwrap_or_default();
        let mut row = |kind: &str,
                       desc: &str,
                       meter: &str,
                       group: String,
                       tier: String,
                       q: String,
                       p: String,
                       a: String,
                       adjusts: &str| {
            let fields = [
                self.id.as_str(),
                &number,
                self.status.as_str(),
                &inv.partner_id,
                &start,
                &end,
                &inv.timezone,
                inv.currency.code(),
                kind,
                desc,
                meter,
                &group,
                &tier,
                &q,
                &p,
                &a,
                adjusts,
            ];
            let escaped: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&escaped.join(","));
            out.push_str("\r\n");
        };
        for l in &inv.lines {
            row(
                l.kind.as_str(),
                &l.description,
                l.meter.as_deref().unwrap_or(""),
                l.group.as_ref().map(group_label).unwrap_or_default(),
                l.tier.map(|t| t.to_string()).unwrap_or_default(),
                l.quantity.to_string(),
                l.unit_price.to_string(),
                l.amount.to_string(),
                l.adjusts.as_ref().map_or("", |a| a.invoice_id.as_str()),
            );
        }
        if let Some(t) = &inv.tax {
            row(
                "tax",
                &t.label,
                "",
                String::new(),
                String::new(),
                inv.subtotal.to_string(),
                t.rate.to_string(),
                t.amount.to_string(),
                "",
            );
        }
        if !inv.credits_applied.is_zero() {
            row(
                "credits",
                "prepaid credits",
                "",
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                (-inv.credits_applied).to_string(),
                "",
            );
        }
        row(
            "total",
            "amount due",
            "",
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            inv.amount_due.to_string(),
            "",
        );
    }

    /// The CSV of many invoices: one header, then every invoice's rows.
    pub fn to_csv<'a>(records: impl IntoIterator<Item = &'a InvoiceRecord>) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push_str("\r\n");
        for r in records {
            r.csv_rows(&mut out);
        }
        out
    }
}

/// RFC 4180 quoting, and a leading `'` on cells a spreadsheet would run as a formula.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '@', '\t', '\r'])
        || (s.starts_with('-') && s.parse::<Decimal>().is_err())
    {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod bill_to_tests {
    use super::BillTo;

    #[test]
    fn billing_details_are_trimmed_and_checked() {
        let ok = BillTo {
            legal_name: Some("  Initech SAS ".into()),
            address: vec!["12 rue de Rivoli".into(), "  ".into(), "75001 Paris".into()],
            tax_id: Some("FR12345678901".into()),
            email: Some("billing@initech.example".into()),
        }
        .checked()
        .unwrap();
        assert_eq!(ok.legal_name.as_deref(), Some("Initech SAS"));
        assert_eq!(ok.address, ["12 rue de Rivoli", "75001 Paris"]);
        for bad in [
            BillTo {
                email: Some("nobody".into()),
                ..Default::default()
            },
            BillTo {
                email: Some("a b@x.example".into()),
                ..Default::default()
            },
            BillTo {
                tax_id: Some("FR<script>".into()),
                ..Default::default()
            },
            BillTo {
                address: vec!["x".into(); 7],
                ..Default::default()
            },
            BillTo {
                legal_name: Some("A\u{0}B".into()),
                ..Default::default()
            },
        ] {
            assert!(bad.clone().checked().is_err(), "{bad:?}");
        }
        assert!(BillTo::default().checked().unwrap().is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::PeriodRule;
    use crate::pricing::{Charge, ChargeModel, TaxRate, Tier};
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn period() -> BillingPeriod {
        BillingPeriod {
            start: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
        }
    }

    fn plan(charges: Vec<Charge>) -> Plan {
        Plan {
            id: "growth".into(),
            name: "Growth".into(),
            version: "test".into(),
            currency: Currency::parse("EUR").unwrap(),
            period: PeriodRule::Month { anchor_day: 1 },
            base_fee: d("49.00"),
            tax: Some(TaxRate {
                rate: d("0.20"),
                label: "VAT".into(),
            }),
            minimum_commitment: None,
            charges,
            quotas: vec![],
            rate_limit: None,
            net_days: None,
            apis: None,
            features: Vec::new(),
            self_serve: false,
        }
    }

    fn usage(meter: &str, q: Decimal) -> Vec<MeterUsage> {
        vec![MeterUsage {
            amounts: None,
            meter: meter.into(),
            quantity: q,
            groups: vec![],
        }]
    }

    #[test]
    fn base_fee_49_plus_1500_calls_at_0_01_is_64_00_plus_vat_12_80_is_76_80() {
        let p = plan(vec![Charge {
            meter: "calls".into(),
            free: Decimal::ZERO,
            model: ChargeModel::PerUnit {
                unit_price: d("0.01"),
            },
        }]);
        let inv = Invoice::compute("prt_1", &p, period(), &usage("calls", d("1500"))).unwrap();
        assert_eq!(inv.subtotal.to_string(), "64.00");
        assert_eq!(inv.tax.as_ref().unwrap().amount.to_string(), "12.80");
        assert_eq!(inv.total.to_string(), "76.80");
    }

    #[test]
    fn commitment_of_100_with_30_of_usage_adds_a_70_top_up() {
        let mut p = plan(vec![Charge {
            meter: "calls".into(),
            free: Decimal::ZERO,
            model: ChargeModel::PerUnit {
                unit_price: d("0.01"),
            },
        }]);
        p.minimum_commitment = Some(d("100"));
        p.tax = None;
        let inv = Invoice::compute("prt_1", &p, period(), &usage("calls", d("3000"))).unwrap();
        let top_up = inv
            .lines
            .iter()
            .find(|l| l.kind == LineKind::CommitmentTopUp)
            .unwrap();
        assert_eq!(top_up.amount, d("70.00"));
        assert_eq!(inv.total, d("149.00"));
    }

    fn record(inv: Invoice) -> InvoiceRecord {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap();
        InvoiceRecord {
            id: "inv_1".into(),
            number: Some("PEAGE-2026-000001".into()),
            status: InvoiceStatus::Finalized,
            partner_id: inv.partner_id.clone(),
            period_label: "2026-11".into(),
            created_at: now,
            updated_at: now,
            finalized_at: Some(now),
            voided_at: None,
            finalized_by: None,
            voided_by: None,
            payment: Default::default(),
            state: Default::default(),
            invoice: inv,
        }
    }

    #[test]
    fn invoice_numbers_are_prefix_year_and_six_digits() {
        assert_eq!(invoice_number("PEAGE", 2026, 123), "PEAGE-2026-000123");
        assert_eq!(invoice_number("ACME", 2027, 1_234_567), "ACME-2027-1234567");
    }

    #[test]
    fn finalizing_takes_what_the_balance_covers_and_a_void_gives_it_back() {
        let p = plan(vec![]);
        let at = Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap();
        let mut r = record(Invoice::compute("prt_1", &p, period(), &[]).unwrap());
        r.status = InvoiceStatus::Draft;
        r.number = None;
        // 49.00 + 20 % VAT = 58.80; 20.00 of credit covers 20.00 of it.
        let taken = r
            .finalize(
                "PEAGE-2026-000007".into(),
                d("20"),
                at,
                "staff:ann@example.com",
            )
            .unwrap();
        assert_eq!(taken.amount, d("-20.00"));
        assert_eq!(taken.id, "crd_1");
        assert_eq!(taken.description, "invoice PEAGE-2026-000007");
        assert_eq!(r.invoice.amount_due, d("38.80"));
        assert_eq!(
            (r.status, r.number.as_deref(), r.finalized_at, r.updated_at),
            (
                InvoiceStatus::Finalized,
                Some("PEAGE-2026-000007"),
                Some(at),
                at
            )
        );
        let back = r.void_restitution().unwrap();
        assert_eq!(
            (back.id.as_str(), back.amount, back.description.as_str()),
            ("crd_v1", d("20.00"), "invoice PEAGE-2026-000007 voided")
        );

        // Without credit nothing moves, either way; a draft never took any.
        let mut none = record(Invoice::compute("prt_1", &p, period(), &[]).unwrap());
        none.status = InvoiceStatus::Draft;
        assert_eq!(
            none.finalize("N-1".into(), Decimal::ZERO, at, "admin"),
            None
        );
        assert_eq!(none.void_restitution(), None);
        let mut draft = record(Invoice::compute("prt_1", &p, period(), &[]).unwrap());
        draft.number = None;
        draft.invoice.apply_credits(d("5"));
        assert_eq!(draft.void_restitution(), None);
    }

    #[test]
    fn csv_has_one_row_per_line_plus_tax_and_total_and_escapes_text() {
        let mut p = plan(vec![]);
        p.name = "Growth, \"2026\"".into();
        let inv = Invoice::compute("prt_1", &p, period(), &[]).unwrap();
        let csv = InvoiceRecord::to_csv([&record(inv)]);
        let rows: Vec<&str> = csv.trim_end().split("\r\n").collect();
        assert_eq!(rows[0], CSV_HEADER);
        assert_eq!(rows.len(), 4, "{csv}");
        assert!(
            rows[1].contains("\"Growth, \"\"2026\"\": base fee\""),
            "{csv}"
        );
        assert!(
            rows[2].starts_with("inv_1,PEAGE-2026-000001,finalized,prt_1,2026-11-01T00:00:00Z"),
            "{csv}"
        );
        assert!(rows[2].ends_with(",tax,VAT,,,,49.00,0.20,9.80,"), "{csv}");
        assert!(rows[3].ends_with(",total,amount due,,,,,,58.80,"), "{csv}");
    }

    fn per_unit(meter: &str, price: &str) -> Charge {
        Charge {
            meter: meter.into(),
            free: Decimal::ZERO,
            model: ChargeModel::PerUnit {
                unit_price: d(price),
            },
        }
    }

    fn january() -> BillingPeriod {
        BillingPeriod {
            start: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap(),
        }
    }

    #[test]
    fn lago_upgrade_on_january_15th_prorates_100_and_200_base_fees_to_45_16_and_109_68() {
        // Lago, "Upgrades and downgrades", subscription paid in arrears: Plan A (€100/month)
        // from January 1st, upgraded to Plan B (€200/month) on January 15th: "14 days prorated
        // = €45.16 (14/31 × €100)"; Plan B covers the other 17 days: 17/31 × €200 = €109.68.
        // Lago puts the two parts on two invoices; Péage puts both on the period's invoice.
        let mut a = plan(vec![per_unit("calls", "0.01")]);
        a.id = "a".into();
        a.name = "Plan A".into();
        a.base_fee = d("100");
        a.tax = None;
        let mut b = plan(vec![per_unit("calls", "0.02")]);
        b.id = "b".into();
        b.name = "Plan B".into();
        b.base_fee = d("200");
        b.tax = None;
        let change = Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 0).unwrap();
        let p = january();
        let before = usage("calls", d("1000"));
        let after = usage("calls", d("500"));
        let inv = Invoice::build(&InvoiceInput {
            partner_id: "prt_1",
            period: p,
            timezone: "UTC",
            segments: vec![
                Segment {
                    plan: &a,
                    span: BillingPeriod {
                        start: p.start,
                        end: change,
                    },
                    usage: &before,
                },
                Segment {
                    plan: &b,
                    span: BillingPeriod {
                        start: change,
                        end: p.end,
                    },
                    usage: &after,
                },
            ],
            tax: None,
            adjustments: vec![],
            coupons: Vec::new(),
        })
        .unwrap();
        let amounts: Vec<String> = inv.lines.iter().map(|l| l.amount.to_string()).collect();
        // Each side's usage is priced by its own plan: 1000 × 0.01 and 500 × 0.02.
        assert_eq!(amounts, ["45.16", "10.00", "109.68", "10.00"]);
        assert_eq!(inv.lines[0].quantity, d("0.451613"));
        assert_eq!(inv.total, d("174.84"));
        assert_eq!(inv.plan_id, "b");
        assert_eq!(inv.plans.len(), 2);
        assert_eq!(inv.plans[0].to, change);
    }

    #[test]
    fn a_plan_change_across_currencies_is_refused() {
        let a = plan(vec![]);
        let mut b = plan(vec![]);
        b.currency = Currency::parse("USD").unwrap();
        let p = january();
        let mid = Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
        let err = Invoice::build(&InvoiceInput {
            partner_id: "prt_1",
            period: p,
            timezone: "UTC",
            segments: vec![
                Segment {
                    plan: &a,
                    span: BillingPeriod {
                        start: p.start,
                        end: mid,
                    },
                    usage: &[],
                },
                Segment {
                    plan: &b,
                    span: BillingPeriod {
                        start: mid,
                        end: p.end,
                    },
                    usage: &[],
                },
            ],
            tax: None,
            adjustments: vec![],
            coupons: Vec::new(),
        })
        .unwrap_err();
        assert_eq!(
            err,
            InvoiceError::MixedCurrencies("EUR".into(), "USD".into())
        );
    }

    #[test]
    fn a_grouped_meter_gives_one_line_per_group_each_with_its_own_free_allowance() {
        let mut c = per_unit("calls", "0.01");
        c.free = d("100");
        let p = plan(vec![c]);
        let group = |api: &str, q: &str| crate::meter::MeterGroup {
            dimensions: [("api".to_string(), api.to_string())].into_iter().collect(),
            quantity: d(q),
        };
        let u = vec![MeterUsage {
            amounts: None,
            meter: "calls".into(),
            quantity: d("1300"),
            groups: vec![group("maps", "1000"), group("weather", "300")],
        }];
        let inv = Invoice::compute("prt_1", &p, period(), &u).unwrap();
        let usage: Vec<(String, String)> = inv
            .lines
            .iter()
            .filter(|l| l.kind == LineKind::Usage)
            .map(|l| {
                (
                    l.group.as_ref().unwrap()["api"].clone(),
                    l.amount.to_string(),
                )
            })
            .collect();
        assert_eq!(
            usage,
            [
                ("maps".into(), "9.00".into()),
                ("weather".into(), "2.00".into())
            ]
        );
        assert!(
            inv.lines[2].description.contains("[api=maps]"),
            "{:?}",
            inv.lines
        );
    }

    #[test]
    fn a_partner_tax_rate_replaces_the_plan_s() {
        let p = plan(vec![]);
        let reverse_charge = TaxRate {
            rate: Decimal::ZERO,
            label: "VAT reverse charge".into(),
        };
        let inv = Invoice::build(&InvoiceInput {
            partner_id: "prt_1",
            period: period(),
            timezone: "UTC",
            segments: vec![Segment {
                plan: &p,
                span: period(),
                usage: &[],
            }],
            tax: Some(&reverse_charge),
            adjustments: vec![],
            coupons: Vec::new(),
        })
        .unwrap();
        let tax = inv.tax.unwrap();
        assert_eq!(tax.label, "VAT reverse charge");
        assert_eq!(tax.amount, d("0.00"));
        assert_eq!(inv.total, d("49.00"));
    }

    #[test]
    fn credits_cover_what_they_can_and_never_go_below_zero() {
        let mut inv = Invoice::compute("prt_1", &plan(vec![]), period(), &[]).unwrap();
        assert_eq!(inv.total, d("58.80"));
        inv.apply_credits(d("20"));
        assert_eq!(inv.credits_applied, d("20.00"));
        assert_eq!(inv.amount_due, d("38.80"));
        inv.apply_credits(d("500"));
        assert_eq!(inv.credits_applied, d("58.80"));
        assert_eq!(inv.amount_due, d("0.00"));
        inv.apply_credits(d("-5"));
        assert_eq!(inv.credits_applied, d("0.00"));
        assert_eq!(inv.amount_due, d("58.80"));
    }

    #[test]
    fn late_usage_becomes_an_adjustment_line_naming_its_period_and_is_taxed() {
        let p = plan(vec![per_unit("calls", "0.01")]);
        let october = BillingPeriod {
            start: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
        };
        let finalized = Invoice::compute("prt_1", &p, october, &usage("calls", d("1000"))).unwrap();
        let repriced = Invoice::compute("prt_1", &p, october, &usage("calls", d("1250"))).unwrap();
        let of = AdjustedInvoice {
            invoice_id: "inv_oct".into(),
            number: Some("PEAGE-2026-000007".into()),
            period: october,
        };
        let cur = p.currency;
        assert!(late_usage_adjustment(
            &of,
            finalized.own_subtotal().unwrap(),
            finalized.own_subtotal().unwrap(),
            cur
        )
        .unwrap()
        .is_none());
        let adj = late_usage_adjustment(
            &of,
            repriced.own_subtotal().unwrap(),
            finalized.own_subtotal().unwrap(),
            cur,
        )
        .unwrap()
        .unwrap();
        assert_eq!(adj.amount, d("2.50"));
        assert!(adj
            .description
            .contains("2026-10-01 – 2026-11-01 (invoice PEAGE-2026-000007)"));
        let nov = Invoice::build(&InvoiceInput {
            partner_id: "prt_1",
            period: period(),
            timezone: "UTC",
            segments: vec![Segment {
                plan: &p,
                span: period(),
                usage: &[],
            }],
            tax: None,
            adjustments: vec![adj],
            coupons: Vec::new(),
        })
        .unwrap();
        // 49.00 base + 0.00 usage + 2.50 late = 51.50, VAT 10.30.
        assert_eq!(nov.subtotal, d("51.50"));
        assert_eq!(nov.total, d("61.80"));
        assert_eq!(nov.adjustments_of("inv_oct").unwrap(), d("2.50"));
        assert_eq!(nov.own_subtotal().unwrap(), d("49.00"));
    }

    #[test]
    fn csv_neutralises_formula_cells() {
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("-3.50"), "-3.50");
    }

    fn coupon(code: &str, discount: Discount, meters: &[&str]) -> Coupon {
        Coupon {
            code: code.into(),
            name: code.into(),
            discount,
            duration: crate::coupon::CouponDuration::Forever,
            plans: vec![],
            meters: meters.iter().map(|m| m.to_string()).collect(),
            expires_at: None,
        }
    }

    fn with_coupons(p: &Plan, usage: &[MeterUsage], coupons: &[&Coupon]) -> Invoice {
        Invoice::build(&InvoiceInput {
            partner_id: "prt_1",
            period: period(),
            timezone: "UTC",
            segments: vec![Segment {
                plan: p,
                span: period(),
                usage,
            }],
            tax: None,
            adjustments: Vec::new(),
            coupons: coupons.to_vec(),
        })
        .unwrap()
    }

    #[test]
    fn coupons_apply_in_order_before_tax_each_on_what_the_last_left() {
        // 49.00 base + 1,500 calls at 0.01 = 64.00. 20 % off = 12.80, then 10.00 off: 41.20,
        // VAT 20 % = 8.24, total 49.44.
        let p = plan(vec![per_unit("calls", "0.01")]);
        let eur = Currency::parse("EUR").unwrap();
        let pct = coupon("LAUNCH20", Discount::Percent { rate: d("0.2") }, &[]);
        let ten = coupon(
            "WELCOME10",
            Discount::Amount {
                amount: d("10"),
                currency: eur,
            },
            &[],
        );
        let inv = with_coupons(&p, &usage("calls", d("1500")), &[&pct, &ten]);
        let discounts: Vec<(&str, Decimal)> = inv
            .lines
            .iter()
            .filter(|l| l.kind == LineKind::Discount)
            .map(|l| (l.description.as_str(), l.amount))
            .collect();
        assert_eq!(
            discounts,
            [
                ("coupon LAUNCH20 (20 %)", d("-12.80")),
                ("coupon WELCOME10 (10 EUR)", d("-10.00"))
            ]
        );
        assert_eq!(inv.subtotal, d("41.20"));
        assert_eq!(inv.tax.as_ref().unwrap().amount, d("8.24"));
        assert_eq!(inv.total, d("49.44"));
        // The other order: 10.00 off 64.00, then 20 % of 54.00 = 10.80.
        let inv = with_coupons(&p, &usage("calls", d("1500")), &[&ten, &pct]);
        assert_eq!(inv.subtotal, d("43.20"));
    }

    #[test]
    fn a_coupon_on_a_meter_takes_only_from_its_usage_and_never_more_than_there_is() {
        let p = plan(vec![per_unit("calls", "0.01"), per_unit("egress", "0.10")]);
        let eur = Currency::parse("EUR").unwrap();
        let u = vec![
            MeterUsage {
                amounts: None,
                meter: "calls".into(),
                quantity: d("1500"),
                groups: vec![],
            },
            MeterUsage {
                amounts: None,
                meter: "egress".into(),
                quantity: d("30"),
                groups: vec![],
            },
        ];
        // 50 % of egress (3.00) = 1.50; 100 EUR on calls takes the 15.00 there is.
        let half = coupon(
            "EGRESS50",
            Discount::Percent { rate: d("0.5") },
            &["egress"],
        );
        let big = coupon(
            "CALLS100",
            Discount::Amount {
                amount: d("100"),
                currency: eur,
            },
            &["calls"],
        );
        let inv = with_coupons(&p, &u, &[&half, &big]);
        assert_eq!(
            inv.subtotal,
            d("49.00") + d("15.00") + d("3.00") - d("1.50") - d("15.00")
        );
        // A fixed amount in another currency takes nothing; a plan it is not for, neither.
        let usd = coupon(
            "USD5",
            Discount::Amount {
                amount: d("5"),
                currency: Currency::parse("USD").unwrap(),
            },
            &[],
        );
        let mut other_plan = coupon("SCALE", Discount::Percent { rate: d("0.5") }, &[]);
        other_plan.plans = vec!["scale".into()];
        let inv = with_coupons(&p, &u, &[&usd, &other_plan]);
        assert_eq!(inv.subtotal, d("67.00"));
        assert!(inv.lines.iter().all(|l| l.kind != LineKind::Discount));
    }

    #[test]
    fn a_coupon_lasts_the_periods_it_says_from_the_one_it_was_attached_in() {
        use crate::coupon::CouponDuration;
        let mut c = coupon("X", Discount::Percent { rate: d("0.1") }, &[]);
        c.duration = CouponDuration::Once;
        assert!(c.applies_to_period(0) && !c.applies_to_period(1));
        c.duration = CouponDuration::Periods { count: 3 };
        assert_eq!(
            (0..5).map(|i| c.applies_to_period(i)).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        c.duration = CouponDuration::Forever;
        assert!(c.applies_to_period(1000));
        c.duration = CouponDuration::Periods { count: 0 };
        assert!(c.validate().is_err());
        c.duration = CouponDuration::Once;
        c.discount = Discount::Percent { rate: d("1.5") };
        assert!(c.validate().is_err());
        c.discount = Discount::Percent { rate: d("1") };
        c.code = "no spaces".into();
        assert!(c.validate().is_err());
    }

    // ---- property tests -------------------------------------------------------------------

    fn price() -> impl Strategy<Value = Decimal> {
        (0u64..100_000).prop_map(|n| Decimal::new(n as i64, 4))
    }

    /// Whole units, or amounts with up to 4 decimals (payment volumes, event prices).
    fn qty() -> impl Strategy<Value = Decimal> {
        (0i64..50_000_000_000, 0u32..=4).prop_map(|(n, scale)| Decimal::new(n, scale))
    }

    fn fee() -> impl Strategy<Value = Option<Decimal>> {
        prop::option::of(price())
    }

    fn tiers() -> impl Strategy<Value = Vec<Tier>> {
        (
            prop::collection::vec((1u64..1_000_000, price(), fee()), 0..4),
            price(),
            fee(),
        )
            .prop_map(|(mut bounded, last, last_fee)| {
                bounded.sort_by_key(|(b, _, _)| *b);
                bounded.dedup_by_key(|(b, _, _)| *b);
                let mut t: Vec<Tier> = bounded
                    .into_iter()
                    .map(|(b, p, f)| Tier {
                        up_to: Some(Decimal::from(b)),
                        unit_price: p,
                        flat_fee: f,
                    })
                    .collect();
                t.push(Tier {
                    up_to: None,
                    unit_price: last,
                    flat_fee: last_fee,
                });
                t
            })
    }

    fn model() -> impl Strategy<Value = ChargeModel> {
        prop_oneof![
            price().prop_map(|amount| ChargeModel::Flat { amount }),
            price().prop_map(|unit_price| ChargeModel::PerUnit { unit_price }),
            tiers().prop_map(|tiers| ChargeModel::Graduated { tiers }),
            tiers().prop_map(|tiers| ChargeModel::Volume { tiers }),
            (1u64..10_000, price()).prop_map(|(s, price)| ChargeModel::Package {
                size: Decimal::from(s),
                price
            }),
            // Rates are prices below 1 (the generator's prices are 0 to 9.9999).
            tiers().prop_map(|t| ChargeModel::GraduatedPercentage {
                tiers: t
                    .into_iter()
                    .map(|t| crate::pricing::PercentageTier {
                        up_to: t.up_to,
                        rate: (t.unit_price / Decimal::TEN).round_dp(5),
                        flat_fee: t.flat_fee,
                    })
                    .collect()
            }),
            Just(ChargeModel::Dynamic {}),
            (price(), fee(), prop::option::of(0u64..100), fee(), fee()).prop_map(
                |(r, fixed_fee, free, min, max)| {
                    ChargeModel::Percentage {
                        rate: (r / Decimal::TEN).round_dp(5),
                        events_meter: fixed_fee.map(|_| "m3".to_string()),
                        fixed_fee,
                        free_events: free.filter(|_| fixed_fee.is_some()).map(Decimal::from),
                        // A per-event minimum and maximum, the minimum never above the maximum.
                        min_per_event: min.map(|m| max.map_or(m, |x| m.min(x))),
                        max_per_event: max,
                    }
                }
            ),
        ]
    }

    fn arb_plan() -> impl Strategy<Value = Plan> {
        (
            prop::collection::vec((model(), 0u64..10_000), 0..4),
            price(),
            (0u64..30).prop_map(|n| Decimal::new(n as i64, 2)),
            prop_oneof![Just("EUR"), Just("JPY"), Just("KWD")],
            prop::option::of(price()),
        )
            .prop_map(|(charges, base_fee, rate, cur, commitment)| {
                let mut p = plan(
                    charges
                        .into_iter()
                        .enumerate()
                        .map(|(i, (model, free))| Charge {
                            meter: format!("m{i}"),
                            free: Decimal::from(free),
                            model,
                        })
                        .collect(),
                );
                p.base_fee = base_fee;
                p.currency = Currency::parse(cur).unwrap();
                p.tax = Some(TaxRate {
                    rate,
                    label: "VAT".into(),
                });
                p.minimum_commitment = commitment;
                p
            })
    }

    /// A quantity as the amounts of the events that make it up.
    fn in_events(q: Decimal) -> Vec<Decimal> {
        let a = (q / Decimal::from(3)).round_dp(2);
        let b = (q / Decimal::from(7)).round_dp(3);
        vec![a, Decimal::ZERO, b, q - a - b]
    }

    proptest! {
        #[test]
        fn total_is_the_sum_of_rounded_lines_plus_tax(p in arb_plan(), qs in prop::collection::vec(qty(), 4)) {
            let usage: Vec<MeterUsage> = qs.iter().enumerate().map(|(i, q)| MeterUsage { meter: format!("m{i}"), quantity: *q, groups: vec![], amounts: Some(in_events(*q)) }).collect();
            let inv = Invoice::compute("prt", &p, period(), &usage).unwrap();
            let cur = p.currency;
            for l in &inv.lines {
                prop_assert_eq!(cur.round(l.amount), l.amount, "line not rounded: {:?}", l);
            }
            let lines: Decimal = inv.lines.iter().map(|l| l.amount).sum();
            prop_assert_eq!(inv.subtotal, lines);
            let tax = inv.tax.as_ref().unwrap();
            prop_assert_eq!(cur.round(tax.amount), tax.amount);
            prop_assert_eq!(inv.total, lines + tax.amount);
        }

        #[test]
        fn coupons_keep_lines_rounded_and_never_take_more_than_the_lines(p in arb_plan(), qs in prop::collection::vec(qty(), 4), rates in prop::collection::vec(1u64..=100, 0..3), amount in price()) {
            let usage: Vec<MeterUsage> = qs.iter().enumerate().map(|(i, q)| MeterUsage { meter: format!("m{i}"), quantity: *q, groups: vec![], amounts: Some(in_events(*q)) }).collect();
            let mut coupons: Vec<Coupon> = rates.iter().enumerate().map(|(i, r)| coupon(&format!("P{i}"), Discount::Percent { rate: Decimal::new(*r as i64, 2) }, if i == 1 { &["m0"] } else { &[] })).collect();
            coupons.push(coupon("A", Discount::Amount { amount, currency: p.currency }, &[]));
            let refs: Vec<&Coupon> = coupons.iter().collect();
            let plain = Invoice::compute("prt", &p, period(), &usage).unwrap();
            let inv = with_coupons(&p, &usage, &refs);
            let cur = p.currency;
            for l in &inv.lines {
                prop_assert_eq!(cur.round(l.amount), l.amount, "line not rounded: {:?}", l);
            }
            let lines: Decimal = inv.lines.iter().map(|l| l.amount).sum();
            prop_assert_eq!(inv.subtotal, lines);
            prop_assert!(inv.subtotal >= Decimal::ZERO, "discounts took more than the lines: {:?}", inv.lines);
            prop_assert!(inv.subtotal <= plain.subtotal);
            prop_assert_eq!(inv.total, lines + inv.tax.as_ref().unwrap().amount);
        }

        #[test]
        fn graduated_never_decreases_as_usage_grows(t in tiers(), free in 0u64..10_000, a in qty(), b in qty()) {
            let c = Charge { meter: "m".into(), free: Decimal::from(free), model: ChargeModel::Graduated { tiers: t } };
            let eur = Currency::parse("EUR").unwrap();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let cost = |q| c.price(q, eur).unwrap().iter().map(|l| l.quantity * l.unit_price).sum::<Decimal>();
            prop_assert!(cost(lo) <= cost(hi));
        }

        #[test]
        fn one_tier_graduated_one_tier_volume_and_per_unit_agree(unit_price in price(), free in 0u64..10_000, q in qty()) {
            let eur = Currency::parse("EUR").unwrap();
            let one = vec![Tier { up_to: None, unit_price, flat_fee: None }];
            let total = |model: ChargeModel| {
                Charge { meter: "m".into(), free: Decimal::from(free), model }
                    .price(q, eur).unwrap().iter().map(|l| l.amount).sum::<Decimal>()
            };
            let per_unit = total(ChargeModel::PerUnit { unit_price });
            prop_assert_eq!(total(ChargeModel::Graduated { tiers: one.clone() }), per_unit);
            prop_assert_eq!(total(ChargeModel::Volume { tiers: one }), per_unit);
        }

        #[test]
        fn zero_usage_yields_the_base_fee_alone(mut p in arb_plan()) {
            p.tax = None;
            p.minimum_commitment = None;
            let inv = Invoice::compute("prt", &p, period(), &[]).unwrap();
            prop_assert_eq!(inv.total, p.currency.round(p.base_fee));
        }
    }
}
