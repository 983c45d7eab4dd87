//! Invoices: a plan applied to a period's usage. Lines are rounded once each; the subtotal is
//! their sum, tax is rounded once on the subtotal, and the total is subtotal plus tax.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::MeterUsage;
use crate::money::Currency;
use crate::period::BillingPeriod;
use crate::pricing::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    BaseFee,
    FreeAllowance,
    Usage,
    CommitmentTopUp,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::BaseFee => "base_fee",
            LineKind::FreeAllowance => "free_allowance",
            LineKind::Usage => "usage",
            LineKind::CommitmentTopUp => "commitment_top_up",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub description: String,
    pub meter: Option<String>,
    /// 1-based tier of a graduated or volume charge.
    pub tier: Option<u32>,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// `quantity × unit_price`, rounded to the currency's minor unit, half to even.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tax {
    pub label: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    pub partner_id: String,
    pub plan_id: String,
    pub plan_version: String,
    pub currency: Currency,
    pub period: BillingPeriod,
    pub lines: Vec<InvoiceLine>,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    pub tax: Option<Tax>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

impl Invoice {
    /// Prices `usage` (one entry per meter; missing meters count as zero) under `plan`.
    pub fn compute(
        partner_id: &str,
        plan: &Plan,
        period: BillingPeriod,
        usage: &[MeterUsage],
    ) -> Invoice {
        let cur = plan.currency;
        let quantities: BTreeMap<&str, Decimal> = usage
            .iter()
            .map(|u| (u.meter.as_str(), u.quantity))
            .collect();
        let mut lines = Vec::new();
        if !plan.base_fee.is_zero() {
            lines.push(InvoiceLine {
                kind: LineKind::BaseFee,
                description: format!("{}: base fee", plan.name),
                meter: None,
                tier: None,
                quantity: Decimal::ONE,
                unit_price: plan.base_fee,
                amount: cur.round(plan.base_fee),
            });
        }
        for charge in &plan.charges {
            let q = quantities
                .get(charge.meter.as_str())
                .copied()
                .unwrap_or_default();
            lines.extend(charge.price(q, cur));
        }
        if let Some(commitment) = plan.minimum_commitment {
            let usage_total: Decimal = lines
                .iter()
                .filter(|l| l.kind == LineKind::Usage)
                .map(|l| l.amount)
                .sum();
            let top_up = cur.round(commitment) - usage_total;
            if top_up > Decimal::ZERO {
                lines.push(InvoiceLine {
                    kind: LineKind::CommitmentTopUp,
                    description: format!(
                        "minimum commitment of {} {}",
                        cur.round(commitment),
                        cur.code()
                    ),
                    meter: None,
                    tier: None,
                    quantity: Decimal::ONE,
                    unit_price: top_up,
                    amount: top_up,
                });
            }
        }
        let subtotal = cur.round(lines.iter().map(|l| l.amount).sum());
        let tax = plan.tax.as_ref().map(|t| Tax {
            label: t.label.clone(),
            rate: t.rate,
            amount: cur.round(subtotal * t.rate),
        });
        let total = subtotal + tax.as_ref().map_or(Decimal::ZERO, |t| t.amount);
        Invoice {
            partner_id: partner_id.to_string(),
            plan_id: plan.id.clone(),
            plan_version: plan.version.clone(),
            currency: cur,
            period,
            lines,
            subtotal,
            tax,
            total,
        }
    }

    /// Finance CSV: one row per invoice line, then a `tax` row when the plan has tax.
    /// Columns are documented in docs/invoices.md.
    pub fn to_csv(&self) -> String {
        const HEADER: &str = "partner_id,plan_id,plan_version,period_start,period_end,currency,kind,description,meter,tier,quantity,unit_price,amount";
        let mut out = String::from(HEADER);
        out.push_str("\r\n");
        let start = self
            .period
            .start
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let end = self
            .period
            .end
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut row =
            |kind: &str, desc: &str, meter: &str, tier: String, q: String, p: String, a: String| {
                let fields = [
                    self.partner_id.as_str(),
                    &self.plan_id,
                    &self.plan_version,
                    &start,
                    &end,
                    self.currency.code(),
                    kind,
                    desc,
                    meter,
                    &tier,
                    &q,
                    &p,
                    &a,
                ];
                let escaped: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&escaped.join(","));
                out.push_str("\r\n");
            };
        for l in &self.lines {
            row(
                l.kind.as_str(),
                &l.description,
                l.meter.as_deref().unwrap_or(""),
                l.tier.map(|t| t.to_string()).unwrap_or_default(),
                l.quantity.to_string(),
                l.unit_price.to_string(),
                l.amount.to_string(),
            );
        }
        if let Some(t) = &self.tax {
            row(
                "tax",
                &t.label,
                "",
                String::new(),
                self.subtotal.to_string(),
                t.rate.to_string(),
                t.amount.to_string(),
            );
        }
        out
    }
}

/// RFC 4180 quoting, and a leading `'` on cells a spreadsheet would run as a formula.
fn csv_field(s: &str) -> String {
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
        }
    }

    fn usage(meter: &str, q: Decimal) -> Vec<MeterUsage> {
        vec![MeterUsage {
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
        let inv = Invoice::compute("prt_1", &p, period(), &usage("calls", d("1500")));
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
        let inv = Invoice::compute("prt_1", &p, period(), &usage("calls", d("3000")));
        let top_up = inv
            .lines
            .iter()
            .find(|l| l.kind == LineKind::CommitmentTopUp)
            .unwrap();
        assert_eq!(top_up.amount, d("70.00"));
        assert_eq!(inv.total, d("149.00"));
    }

    #[test]
    fn csv_has_one_row_per_line_plus_tax_and_escapes_text() {
        let mut p = plan(vec![]);
        p.name = "Growth, \"2026\"".into();
        let inv = Invoice::compute("prt_1", &p, period(), &[]);
        let csv = inv.to_csv();
        let rows: Vec<&str> = csv.trim_end().split("\r\n").collect();
        assert_eq!(rows.len(), 3, "{csv}");
        assert!(
            rows[1].contains("\"Growth, \"\"2026\"\": base fee\""),
            "{csv}"
        );
        assert!(
            rows[2].starts_with("prt_1,growth,test,2026-11-01T00:00:00Z"),
            "{csv}"
        );
        assert!(rows[2].ends_with(",tax,VAT,,,49.00,0.20,9.80"), "{csv}");
    }

    #[test]
    fn csv_neutralises_formula_cells() {
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_field("-3.50"), "-3.50");
    }

    // ---- property tests -------------------------------------------------------------------

    fn price() -> impl Strategy<Value = Decimal> {
        (0u64..100_000).prop_map(|n| Decimal::new(n as i64, 4))
    }

    fn qty() -> impl Strategy<Value = Decimal> {
        (0u64..5_000_000).prop_map(Decimal::from)
    }

    fn tiers() -> impl Strategy<Value = Vec<Tier>> {
        (
            prop::collection::vec((1u64..1_000_000, price()), 0..4),
            price(),
        )
            .prop_map(|(mut bounded, last)| {
                bounded.sort_by_key(|(b, _)| *b);
                bounded.dedup_by_key(|(b, _)| *b);
                let mut t: Vec<Tier> = bounded
                    .into_iter()
                    .map(|(b, p)| Tier {
                        up_to: Some(Decimal::from(b)),
                        unit_price: p,
                    })
                    .collect();
                t.push(Tier {
                    up_to: None,
                    unit_price: last,
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

    proptest! {
        #[test]
        fn total_is_the_sum_of_rounded_lines_plus_tax(p in arb_plan(), qs in prop::collection::vec(qty(), 4)) {
            let usage: Vec<MeterUsage> = qs.iter().enumerate().map(|(i, q)| MeterUsage { meter: format!("m{i}"), quantity: *q, groups: vec![] }).collect();
            let inv = Invoice::compute("prt", &p, period(), &usage);
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
        fn graduated_never_decreases_as_usage_grows(t in tiers(), free in 0u64..10_000, a in qty(), b in qty()) {
            let c = Charge { meter: "m".into(), free: Decimal::from(free), model: ChargeModel::Graduated { tiers: t } };
            let eur = Currency::parse("EUR").unwrap();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let cost = |q| c.price(q, eur).iter().map(|l| l.quantity * l.unit_price).sum::<Decimal>();
            prop_assert!(cost(lo) <= cost(hi));
        }

        #[test]
        fn one_tier_graduated_one_tier_volume_and_per_unit_agree(unit_price in price(), free in 0u64..10_000, q in qty()) {
            let eur = Currency::parse("EUR").unwrap();
            let one = vec![Tier { up_to: None, unit_price }];
            let total = |model: ChargeModel| {
                Charge { meter: "m".into(), free: Decimal::from(free), model }
                    .price(q, eur).iter().map(|l| l.amount).sum::<Decimal>()
            };
            let per_unit = total(ChargeModel::PerUnit { unit_price });
            prop_assert_eq!(total(ChargeModel::Graduated { tiers: one.clone() }), per_unit);
            prop_assert_eq!(total(ChargeModel::Volume { tiers: one }), per_unit);
        }

        #[test]
        fn zero_usage_yields_the_base_fee_alone(mut p in arb_plan()) {
            p.tax = None;
            p.minimum_commitment = None;
            let inv = Invoice::compute("prt", &p, period(), &[]);
            prop_assert_eq!(inv.total, p.currency.round(p.base_fee));
        }
    }
}
