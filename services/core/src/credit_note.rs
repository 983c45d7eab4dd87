//! Credit notes: a correction of a finalized invoice in the partner's favour, never an edit of
//! it (issue 21, "Credit notes"; docs/pricing.md rule 19).
//!
//! - **What is credited**: whole lines, part of lines, or an amount of the invoice's subtotal.
//!   Amounts are before tax; the note's tax is its subtotal at the invoice's rate, rounded once,
//!   like an invoice's, and held to what is left of the invoice's tax. Across all notes of an
//!   invoice, a line is never credited beyond its amount, the subtotal never beyond the
//!   invoice's subtotal, and so the total never beyond its total.
//! - **Where the money goes**: `refund` (paid back outside Péage; the note records it) or
//!   `credit` (added to the partner's prepaid balance in the note's currency).
//! - The invoice keeps its lines and total; what is left due is its amount due less its notes.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::invoice::{Invoice, LineKind, Tax};
use crate::money::{checked_total, Currency, Overflow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CreditMethod {
    /// Paid back to the partner outside Péage.
    Refund,
    /// Added to the partner's prepaid balance.
    Credit,
}

impl CreditMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CreditMethod::Refund => "refund",
            CreditMethod::Credit => "credit",
        }
    }
}

/// What finance asks to credit.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteRequest {
    /// Why, printed on the note.
    pub reason: String,
    pub method: CreditMethod,
    /// Lines of the invoice (0-based positions), each whole or for `amount` of it.
    #[serde(default)]
    pub lines: Vec<CreditedLineRequest>,
    /// Or an amount of the invoice's subtotal (before tax), not tied to a line.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>)]
    pub amount: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditedLineRequest {
    pub line: usize,
    /// Part of the line's amount; the whole line when absent.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>)]
    pub amount: Option<Decimal>,
}

/// One credited line of a note.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreditNoteLine {
    /// The invoice line credited (0-based), or none for an amount of the subtotal.
    pub line: Option<usize>,
    pub description: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// A credit note's content: computed once, stored whole, never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreditNote {
    pub invoice_id: String,
    pub invoice_number: String,
    pub partner_id: String,
    pub currency: Currency,
    pub reason: String,
    pub method: CreditMethod,
    pub lines: Vec<CreditNoteLine>,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    pub tax: Option<Tax>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

/// Why a credit note cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditNoteError {
    #[error("a credit note needs a reason")]
    NoReason,
    #[error("a credit note credits lines or an amount, not both, and not nothing")]
    LinesOrAmount,
    #[error("the invoice has no line {0} (lines are numbered from 0)")]
    NoSuchLine(usize),
    #[error("line {0} is credited twice in one note")]
    LineTwice(usize),
    #[error("line {line} ({description}) has {left} left to credit, not {asked}")]
    LineExceeded {
        line: usize,
        description: String,
        left: Decimal,
        asked: Decimal,
    },
    #[error("the invoice has {left} of its subtotal left to credit, not {asked}")]
    SubtotalExceeded { left: Decimal, asked: Decimal },
    #[error("amounts credited are above 0 with at most the currency's decimals, not {0}")]
    BadAmount(Decimal),
    #[error("amounts overflow")]
    Overflow,
}

impl From<Overflow> for CreditNoteError {
    fn from(_: Overflow) -> Self {
        CreditNoteError::Overflow
    }
}

/// What earlier notes of an invoice credited: per line, and in all (before tax).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credited {
    pub by_line: std::collections::BTreeMap<usize, Decimal>,
    pub subtotal: Decimal,
    pub tax: Decimal,
}

impl Credited {
    pub fn of<'a>(notes: impl IntoIterator<Item = &'a CreditNote>) -> Result<Credited, Overflow> {
        let mut c = Credited::default();
        for n in notes {
            for l in &n.lines {
                if let Some(i) = l.line {
                    let e = c.by_line.entry(i).or_default();
                    *e = e.checked_add(l.amount).ok_or(Overflow)?;
                }
            }
            c.subtotal = c.subtotal.checked_add(n.subtotal).ok_or(Overflow)?;
            let tax = n.tax.as_ref().map_or(Decimal::ZERO, |t| t.amount);
            c.tax = c.tax.checked_add(tax).ok_or(Overflow)?;
        }
        Ok(c)
    }
}

impl CreditNote {
    /// The note `req` asks for on `invoice` (finalized as `number`), given what `before`
    /// credited already.
    pub fn compute(
        invoice_id: &str,
        number: &str,
        invoice: &Invoice,
        before: &Credited,
        req: &CreditNoteRequest,
    ) -> Result<CreditNote, CreditNoteError> {
        if req.reason.trim().is_empty() {
            return Err(CreditNoteError::NoReason);
        }
        let cur = invoice.currency;
        let ok_amount = |a: Decimal| {
            if a <= Decimal::ZERO || cur.round(a) != a {
                Err(CreditNoteError::BadAmount(a))
            } else {
                Ok(a)
            }
        };
        let mut lines = Vec::new();
        match (req.lines.is_empty(), req.amount) {
            (false, None) => {
                for (k, l) in req.lines.iter().enumerate() {
                    if req.lines[..k].iter().any(|o| o.line == l.line) {
                        return Err(CreditNoteError::LineTwice(l.line));
                    }
                    let line = invoice
                        .lines
                        .get(l.line)
                        .filter(|x| x.kind != LineKind::Discount)
                        .ok_or(CreditNoteError::NoSuchLine(l.line))?;
                    let done = before.by_line.get(&l.line).copied().unwrap_or_default();
                    let left = (line.amount - done).max(Decimal::ZERO);
                    let asked = match l.amount {
                        Some(a) => ok_amount(a)?,
                        None => left,
                    };
                    if asked > left || asked.is_zero() {
                        return Err(CreditNoteError::LineExceeded {
                            line: l.line,
                            description: line.description.clone(),
                            left,
                            asked,
                        });
                    }
                    lines.push(CreditNoteLine {
                        line: Some(l.line),
                        description: line.description.clone(),
                        amount: asked,
                    });
                }
            }
            (true, Some(a)) => lines.push(CreditNoteLine {
                line: None,
                description: req.reason.trim().to_string(),
                amount: ok_amount(a)?,
            }),
            _ => return Err(CreditNoteError::LinesOrAmount),
        }
        let subtotal = checked_total(lines.iter().map(|l| l.amount)).ok_or(Overflow)?;
        let left = (invoice.subtotal - before.subtotal).max(Decimal::ZERO);
        if subtotal > left {
            return Err(CreditNoteError::SubtotalExceeded {
                left,
                asked: subtotal,
            });
        }
        // Each note's tax is rounded once; the last one is held to what is left of the
        // invoice's tax, so all of them never credit more tax than was charged.
        let tax = match &invoice.tax {
            Some(t) => Some(Tax {
                label: t.label.clone(),
                rate: t.rate,
                amount: cur
                    .round(subtotal.checked_mul(t.rate).ok_or(Overflow)?)
                    .min((t.amount - before.tax).max(Decimal::ZERO)),
            }),
            None => None,
        };
        let total = subtotal
            .checked_add(tax.as_ref().map_or(Decimal::ZERO, |t| t.amount))
            .ok_or(Overflow)?;
        Ok(CreditNote {
            invoice_id: invoice_id.to_string(),
            invoice_number: number.to_string(),
            partner_id: invoice.partner_id.clone(),
            currency: cur,
            reason: req.reason.trim().to_string(),
            method: req.method,
            lines,
            subtotal,
            tax,
            total,
        })
    }
}

/// `PEAGE-CN-2026-000001`: credit notes have their own gapless series per issuer and year.
pub fn credit_note_prefix(invoice_prefix: &str) -> String {
    format!("{invoice_prefix}-CN")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::MeterUsage;
    use crate::period::{BillingPeriod, PeriodRule};
    use crate::pricing::{Charge, ChargeModel, Plan, TaxRate};
    use chrono::{TimeZone, Utc};

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// 49.00 base fee + 1,500 calls at 0.01 = 64.00, VAT 20 % = 12.80, total 76.80.
    fn invoice() -> Invoice {
        let plan = Plan {
            id: "growth".into(),
            name: "Growth".into(),
            version: "v".into(),
            currency: Currency::parse("EUR").unwrap(),
            period: PeriodRule::Month { anchor_day: 1 },
            base_fee: d("49.00"),
            tax: Some(TaxRate {
                rate: d("0.20"),
                label: "VAT".into(),
            }),
            minimum_commitment: None,
            charges: vec![Charge {
                meter: "calls".into(),
                free: Decimal::ZERO,
                model: ChargeModel::PerUnit {
                    unit_price: d("0.01"),
                },
            }],
            quotas: vec![],
            rate_limit: None,
            net_days: None,
            apis: None,
            features: Vec::new(),
            self_serve: false,
        };
        let period = BillingPeriod {
            start: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
        };
        let usage = [MeterUsage {
            amounts: None,
            meter: "calls".into(),
            quantity: d("1500"),
            groups: vec![],
        }];
        Invoice::compute("prt_1", &plan, period, &usage).unwrap()
    }

    fn req(lines: &[(usize, Option<&str>)], amount: Option<&str>) -> CreditNoteRequest {
        CreditNoteRequest {
            reason: "outage on Nov 12".into(),
            method: CreditMethod::Credit,
            lines: lines
                .iter()
                .map(|(line, a)| CreditedLineRequest {
                    line: *line,
                    amount: a.map(d),
                })
                .collect(),
            amount: amount.map(d),
        }
    }

    #[test]
    fn partial_notes_add_up_to_at_most_the_invoice_with_tax_at_its_rate() {
        let inv = invoice();
        let note = |before: &[CreditNote], r: CreditNoteRequest| {
            CreditNote::compute(
                "inv_1",
                "PEAGE-2026-000001",
                &inv,
                &Credited::of(before).unwrap(),
                &r,
            )
        };
        // 5.00 of the calls line (line 1): VAT 1.00, 6.00 in all.
        let first = note(&[], req(&[(1, Some("5.00"))], None)).unwrap();
        assert_eq!((first.subtotal, first.total), (d("5.00"), d("6.00")));
        assert_eq!(first.lines[0].description, "calls: per unit");
        // The rest of that line: 10.00; then nothing is left of it.
        let second = note(std::slice::from_ref(&first), req(&[(1, None)], None)).unwrap();
        assert_eq!(second.subtotal, d("10.00"));
        let both = [first, second];
        assert!(matches!(
            note(&both, req(&[(1, Some("0.01"))], None)),
            Err(CreditNoteError::LineExceeded { .. })
        ));
        // 49.00 of the subtotal is left: 60 is refused, 49 is taken (58.80 with VAT).
        assert_eq!(
            note(&both, req(&[], Some("60"))),
            Err(CreditNoteError::SubtotalExceeded {
                left: d("49.00"),
                asked: d("60")
            })
        );
        let last = note(&both, req(&[], Some("49"))).unwrap();
        assert_eq!(last.total, d("58.80"));
        let all = Credited::of(both.iter().chain([&last])).unwrap();
        assert_eq!(all.subtotal, inv.subtotal);
    }

    #[test]
    fn a_note_asks_for_lines_or_an_amount_with_a_reason() {
        let inv = invoice();
        let none = Credited::default();
        let compute = |r: &CreditNoteRequest| CreditNote::compute("inv_1", "N", &inv, &none, r);
        assert_eq!(
            compute(&req(&[], None)),
            Err(CreditNoteError::LinesOrAmount)
        );
        assert_eq!(
            compute(&req(&[(0, None)], Some("1"))),
            Err(CreditNoteError::LinesOrAmount)
        );
        assert_eq!(
            compute(&req(&[(9, None)], None)),
            Err(CreditNoteError::NoSuchLine(9))
        );
        assert_eq!(
            compute(&req(&[(0, None), (0, None)], None)),
            Err(CreditNoteError::LineTwice(0))
        );
        assert_eq!(
            compute(&req(&[], Some("0.001"))),
            Err(CreditNoteError::BadAmount(d("0.001")))
        );
        let mut r = req(&[], Some("1"));
        r.reason = "  ".into();
        assert_eq!(compute(&r), Err(CreditNoteError::NoReason));
    }
}

#[cfg(test)]
mod property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// However an invoice is credited in parts, the notes never add up to more than it.
        #[test]
        fn notes_never_credit_more_than_the_invoice(parts in prop::collection::vec(1i64..5_000, 1..12), rate in 0i64..30) {
            let mut inv = tests_support::invoice_of("64.00", rate);
            inv.partner_id = "prt_1".into();
            let mut notes: Vec<CreditNote> = Vec::new();
            for p in parts {
                let r = CreditNoteRequest { reason: "r".into(), method: CreditMethod::Refund, lines: vec![], amount: Some(Decimal::new(p, 2)) };
                if let Ok(n) = CreditNote::compute("inv", "N", &inv, &Credited::of(&notes).unwrap(), &r) {
                    notes.push(n);
                }
            }
            let c = Credited::of(&notes).unwrap();
            prop_assert!(c.subtotal <= inv.subtotal);
            prop_assert!(c.tax <= inv.tax.as_ref().map_or(Decimal::ZERO, |t| t.amount));
            let total: Decimal = notes.iter().map(|n| n.total).sum();
            prop_assert!(total <= inv.total);
        }
    }

    mod tests_support {
        use super::*;
        use crate::invoice::Invoice;

        /// An invoice of one `subtotal` line, taxed at `rate` %.
        pub fn invoice_of(subtotal: &str, rate: i64) -> Invoice {
            let subtotal: Decimal = subtotal.parse().unwrap();
            let json = serde_json::json!({
                "partner_id": "prt_1", "plan_id": "p", "plan_version": "v", "currency": "EUR",
                "period": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
                "lines": [{"kind": "base_fee", "description": "base fee", "meter": null, "tier": null,
                           "quantity": "1", "unit_price": subtotal.to_string(), "amount": subtotal.to_string()}],
                "subtotal": subtotal.to_string(),
                "tax": {"label": "VAT", "rate": Decimal::new(rate, 2).to_string(),
                        "amount": (subtotal * Decimal::new(rate, 2)).round_dp(2).to_string()},
                "total": (subtotal + (subtotal * Decimal::new(rate, 2)).round_dp(2)).to_string()
            });
            serde_json::from_value(json).unwrap()
        }
    }
}
