//! The pricing engine against a small reference written here with plain integer arithmetic
//! (no `Decimal`, no code shared with the engine), over random plans, usage, plan changes and
//! credits: both must agree to the minor unit on every total.
//!
//! Money in the reference is an integer count of 1/10,000 of the currency unit (prices have at
//! most 4 decimals); rounding is to the currency's minor unit, half to even, from exact ratios.

use chrono::{TimeZone, Utc};
use peage_core::invoice::{InvoiceInput, Segment};
use peage_core::meter::MeterUsage;
use peage_core::period::{BillingPeriod, PeriodRule};
use peage_core::pricing::{Charge, ChargeModel, PercentageTier, Plan, TaxRate, Tier};
use peage_core::{Currency, Invoice};
use proptest::prelude::*;
use rust_decimal::Decimal;

/// `num / den` rounded half to even (den > 0).
fn round_ratio(num: i128, den: i128) -> i128 {
    let q = num.div_euclid(den);
    let r = num.rem_euclid(den);
    match (2 * r).cmp(&den) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

#[derive(Debug, Clone)]
enum RefModel {
    Flat(i128),
    PerUnit(i128),
    /// Tiers: (inclusive bound, price per unit or rate, flat fee), all prices in 1e-4.
    Graduated(Vec<(Option<i128>, i128, i128)>),
    Volume(Vec<(Option<i128>, i128, i128)>),
    /// The same walk as graduated, a rate in place of a unit price (rates ≤ 1).
    GraduatedPercentage(Vec<(Option<i128>, i128, i128)>),
    Package {
        size: i128,
        price: i128,
    },
    /// The quantity is the amount: each event carried its price.
    Dynamic,
    /// A rate (1e-4, at most 10,000) of the amount, a fee per event (1e-4; 0: none) beyond
    /// `free_events`, and each event's charge held between a minimum and a maximum (1e-4).
    Percentage {
        rate: i128,
        fee: i128,
        free_events: i128,
        min: Option<i128>,
        max: Option<i128>,
    },
}

/// The events a quantity is made of, in time order (what a store reads for a charge that
/// prices each event); always [`EVENTS`] of them.
fn amounts_of(q: i128) -> Vec<i128> {
    vec![q / 3, 0, q / 7, q - q / 3 - q / 7]
}

const EVENTS: i128 = 4;

#[derive(Debug, Clone)]
struct RefCharge {
    free: i128,
    model: RefModel,
}

#[derive(Debug, Clone)]
struct RefPlan {
    base_fee: i128,
    commitment: Option<i128>,
    charges: Vec<RefCharge>,
}

/// Amounts are in 1e-4 units; `minor` is the currency's minor-unit digits. Returns minor units.
fn to_minor(amount_e4: i128, minor: u32) -> i128 {
    round_ratio(amount_e4, 10i128.pow(4 - minor))
}

fn ref_charge(c: &RefCharge, q: i128, minor: u32) -> i128 {
    let billable = (q - c.free).max(0);
    match &c.model {
        RefModel::Flat(a) => {
            if billable > 0 {
                to_minor(*a, minor)
            } else {
                0
            }
        }
        RefModel::PerUnit(p) => to_minor(billable * p, minor),
        RefModel::Graduated(tiers) | RefModel::GraduatedPercentage(tiers) => {
            let mut lower = 0;
            let mut sum = 0;
            for (up_to, p, fee) in tiers {
                let upper = up_to.unwrap_or(i128::MAX);
                let units = (q.min(upper) - lower.max(c.free)).max(0);
                sum += to_minor(units * p, minor);
                // A tier's fee once billable units are in it.
                if units > 0 {
                    sum += to_minor(*fee, minor);
                }
                if q <= upper {
                    break;
                }
                lower = upper;
            }
            sum
        }
        RefModel::Volume(tiers) => {
            let (p, fee) = tiers
                .iter()
                .find(|(u, _, _)| u.is_none_or(|u| q <= u))
                .map(|(_, p, f)| (*p, *f))
                .unwrap();
            to_minor(billable * p, minor)
                + if billable > 0 {
                    to_minor(fee, minor)
                } else {
                    0
                }
        }
        RefModel::Package { size, price } => {
            let packages = (billable + size - 1) / size;
            to_minor(packages * price, minor)
        }
        RefModel::Dynamic => to_minor(billable * 10_000, minor),
        RefModel::Percentage {
            rate,
            fee,
            free_events,
            min,
            max,
        } => {
            if min.is_none() && max.is_none() {
                let fees = *fee * (EVENTS - free_events).max(0);
                return to_minor(billable * rate, minor) + to_minor(fees, minor);
            }
            // Each event: its amount beyond what is left of the free amount, and the fee unless
            // among the first free events; an event owing neither is free of the minimum too.
            let mut free_left = c.free;
            let mut held = 0;
            for (i, a) in amounts_of(q).into_iter().enumerate() {
                let waived = free_left.min(a.max(0));
                free_left -= waived;
                let b = a - waived;
                let f = if (i as i128) < *free_events { 0 } else { *fee };
                if b == 0 && f == 0 {
                    continue;
                }
                let mut each = b * rate + f;
                if let Some(m) = min {
                    each = each.max(*m);
                }
                if let Some(m) = max {
                    each = each.min(*m);
                }
                held += each;
            }
            to_minor(held, minor)
        }
    }
}

/// Totals of one period split in two parts at `split_day` of 30 (`split_day == 30`: no change),
/// with `qa` usage in the first part under `a`, `qb` in the second under `b`.
#[allow(clippy::too_many_arguments)] // the reference mirrors the engine's inputs one by one
fn reference(
    a: &RefPlan,
    b: &RefPlan,
    split_day: i128,
    qa: &[i128],
    qb: &[i128],
    tax_pct: i128,
    minor: u32,
    credits_minor: i128,
) -> (i128, i128, i128, i128) {
    let parts: Vec<(&RefPlan, i128, &[i128])> = if split_day == 30 {
        vec![(a, 30, qa)]
    } else {
        vec![(a, split_day, qa), (b, 30 - split_day, qb)]
    };
    let mut lines = 0;
    let mut usage = 0;
    // Commitment: the sum of each part's exact prorated commitment, rounded once.
    let mut commitment_e4_x30: Option<i128> = None;
    for (plan, days, qs) in &parts {
        if plan.base_fee != 0 {
            lines += round_ratio(plan.base_fee * days, 30 * 10i128.pow(4 - minor));
        }
        if let Some(c) = plan.commitment {
            *commitment_e4_x30.get_or_insert(0) += c * days;
        }
        for (i, ch) in plan.charges.iter().enumerate() {
            let u = ref_charge(ch, qs[i], minor);
            usage += u;
            lines += u;
        }
    }
    if let Some(c) = commitment_e4_x30 {
        let committed = round_ratio(c, 30 * 10i128.pow(4 - minor));
        if committed > usage {
            lines += committed - usage;
        }
    }
    let subtotal = lines;
    let tax = round_ratio(subtotal * tax_pct, 100);
    let total = subtotal + tax;
    let credits = if total < 0 {
        total
    } else {
        credits_minor.max(0).min(total)
    };
    (subtotal, tax, total, total - credits)
}

// ---- the same inputs for the engine ----------------------------------------------------------

fn dec_e4(v: i128) -> Decimal {
    Decimal::from_i128_with_scale(v, 4)
}

/// A fee of 0 is written as no fee, as a catalog without `flat_fee` has it.
fn fee(f: i128) -> Option<Decimal> {
    (f != 0).then(|| dec_e4(f))
}

fn engine_tiers(t: &[(Option<i128>, i128, i128)]) -> Vec<Tier> {
    t.iter()
        .map(|(u, p, f)| Tier {
            up_to: u.map(Decimal::from),
            unit_price: dec_e4(*p),
            flat_fee: fee(*f),
        })
        .collect()
}

fn engine_plan(id: &str, p: &RefPlan, currency: Currency, tax_pct: i128) -> Plan {
    Plan {
        id: id.into(),
        name: id.into(),
        version: "v".into(),
        currency,
        period: PeriodRule::Month { anchor_day: 1 },
        base_fee: dec_e4(p.base_fee),
        tax: Some(TaxRate {
            rate: Decimal::from_i128_with_scale(tax_pct, 2),
            label: "VAT".into(),
        }),
        minimum_commitment: p.commitment.map(dec_e4),
        charges: p
            .charges
            .iter()
            .enumerate()
            .map(|(i, c)| Charge {
                meter: format!("m{i}"),
                free: Decimal::from(c.free),
                model: match &c.model {
                    RefModel::Flat(a) => ChargeModel::Flat { amount: dec_e4(*a) },
                    RefModel::PerUnit(p) => ChargeModel::PerUnit {
                        unit_price: dec_e4(*p),
                    },
                    RefModel::Graduated(t) => ChargeModel::Graduated {
                        tiers: engine_tiers(t),
                    },
                    RefModel::Volume(t) => ChargeModel::Volume {
                        tiers: engine_tiers(t),
                    },
                    RefModel::GraduatedPercentage(t) => ChargeModel::GraduatedPercentage {
                        tiers: t
                            .iter()
                            .map(|(u, r, f)| PercentageTier {
                                up_to: u.map(Decimal::from),
                                rate: dec_e4(*r),
                                flat_fee: fee(*f),
                            })
                            .collect(),
                    },
                    RefModel::Dynamic => ChargeModel::Dynamic {},
                    RefModel::Percentage {
                        rate,
                        fee: f,
                        free_events,
                        min,
                        max,
                    } => {
                        let each_event = min.is_some() || max.is_some();
                        ChargeModel::Percentage {
                            rate: dec_e4(*rate),
                            fixed_fee: fee(*f),
                            // Counted by a count meter, or by the amounts read.
                            events_meter: (*f != 0 && !each_event).then(|| format!("m{i}_events")),
                            free_events: (*f != 0).then(|| Decimal::from(*free_events)),
                            min_per_event: min.map(dec_e4),
                            max_per_event: max.map(dec_e4),
                        }
                    }
                    RefModel::Package { size, price } => ChargeModel::Package {
                        size: Decimal::from(*size),
                        price: dec_e4(*price),
                    },
                },
            })
            .collect(),
        quotas: vec![],
        rate_limit: None,
        net_days: None,
        apis: None,
        features: Vec::new(),
        self_serve: false,
    }
}

/// Each charge's meter with the amounts of its events, and the count meter of those events.
fn usage(qs: &[i128]) -> Vec<MeterUsage> {
    qs.iter()
        .enumerate()
        .flat_map(|(i, q)| {
            [
                MeterUsage {
                    amounts: Some(amounts_of(*q).into_iter().map(Decimal::from).collect()),
                    meter: format!("m{i}"),
                    quantity: Decimal::from(*q),
                    groups: vec![],
                },
                MeterUsage {
                    amounts: None,
                    meter: format!("m{i}_events"),
                    quantity: Decimal::from(EVENTS),
                    groups: vec![],
                },
            ]
        })
        .collect()
}

// ---- strategies ------------------------------------------------------------------------------

fn price() -> impl Strategy<Value = i128> {
    0i128..200_000
}

/// A tier's flat fee: none half the time.
fn flat_fee() -> impl Strategy<Value = i128> {
    prop_oneof![Just(0i128), 0i128..5_000_000]
}

fn tiers_of(
    price: std::ops::Range<i128>,
) -> impl Strategy<Value = Vec<(Option<i128>, i128, i128)>> {
    (
        prop::collection::btree_map(1i128..2_000_000, (price.clone(), flat_fee()), 0..4),
        (price, flat_fee()),
    )
        .prop_map(|(bounded, (last, last_fee))| {
            let mut t: Vec<(Option<i128>, i128, i128)> = bounded
                .into_iter()
                .map(|(b, (p, f))| (Some(b), p, f))
                .collect();
            t.push((None, last, last_fee));
            t
        })
}

fn tiers() -> impl Strategy<Value = Vec<(Option<i128>, i128, i128)>> {
    tiers_of(0..200_000)
}

fn charge() -> impl Strategy<Value = RefCharge> {
    let model = prop_oneof![
        price().prop_map(RefModel::Flat),
        price().prop_map(RefModel::PerUnit),
        tiers().prop_map(RefModel::Graduated),
        tiers().prop_map(RefModel::Volume),
        // Rates from 0 to 100 %, in 1e-4.
        tiers_of(0..10_001).prop_map(RefModel::GraduatedPercentage),
        Just(RefModel::Dynamic),
        (
            0i128..=10_000,
            flat_fee(),
            0i128..6,
            prop::option::of(0i128..5_000_000),
            prop::option::of(0i128..50_000_000),
        )
            .prop_map(|(rate, fee, free_events, min, max)| RefModel::Percentage {
                rate,
                fee,
                free_events,
                // The minimum never above the maximum, as the catalog requires.
                min: min.map(|m| max.map_or(m, |x| m.min(x))),
                max,
            }),
        (1i128..10_000, price()).prop_map(|(size, price)| RefModel::Package { size, price }),
    ];
    (model, prop_oneof![Just(0i128), 0i128..50_000])
        .prop_map(|(model, free)| RefCharge { free, model })
}

fn plan() -> impl Strategy<Value = RefPlan> {
    (
        0i128..5_000_000,
        prop::option::of(0i128..50_000_000),
        prop::collection::vec(charge(), 3),
    )
        .prop_map(|(base_fee, commitment, charges)| RefPlan {
            base_fee,
            commitment,
            charges,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_engine_agrees_with_the_reference_to_the_minor_unit(
        a in plan(),
        b in plan(),
        split_day in prop_oneof![Just(30i128), 1i128..30],
        qa in prop::collection::vec(0i128..3_000_000, 3),
        qb in prop::collection::vec(0i128..3_000_000, 3),
        tax_pct in 0i128..30,
        currency in prop_oneof![Just(("EUR", 2u32)), Just(("JPY", 0)), Just(("KWD", 3))],
        credits in 0i128..100_000_000,
    ) {
        let cur = Currency::parse(currency.0).unwrap();
        let minor = currency.1;
        let (subtotal, tax, total, due) =
            reference(&a, &b, split_day, &qa, &qb, tax_pct, minor, credits);

        // A 30-day period (November 2026) split at midnight of `split_day`.
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let period = BillingPeriod { start, end };
        let pa = engine_plan("a", &a, cur, tax_pct);
        let pb = engine_plan("b", &b, cur, tax_pct);
        let (ua, ub) = (usage(&qa), usage(&qb));
        let segments = if split_day == 30 {
            vec![Segment { plan: &pa, span: period, usage: &ua }]
        } else {
            let mid = start + chrono::Duration::days(split_day as i64);
            vec![
                Segment { plan: &pa, span: BillingPeriod { start, end: mid }, usage: &ua },
                Segment { plan: &pb, span: BillingPeriod { start: mid, end }, usage: &ub },
            ]
        };
        let mut inv = Invoice::build(&InvoiceInput {
            partner_id: "prt",
            period,
            timezone: "UTC",
            segments,
            tax: None,
            adjustments: vec![],
            coupons: Vec::new(),
        }).unwrap();
        inv.apply_credits(Decimal::from_i128_with_scale(credits, minor));
        let minor_units = |d: Decimal| -> Result<i128, TestCaseError> {
            let scaled = d * Decimal::from(10i64.pow(minor));
            prop_assert_eq!(scaled.fract(), Decimal::ZERO, "{} is not rounded to {} digits", d, minor);
            Ok(scaled.mantissa() / 10i128.pow(scaled.scale()))
        };
        prop_assert_eq!(minor_units(inv.subtotal)?, subtotal, "subtotal {:?}", inv.lines);
        prop_assert_eq!(minor_units(inv.tax.as_ref().unwrap().amount)?, tax);
        prop_assert_eq!(minor_units(inv.total)?, total);
        prop_assert_eq!(minor_units(inv.amount_due)?, due);
    }
}

#[test]
fn the_reference_itself_rounds_half_to_even() {
    assert_eq!(round_ratio(125, 10), 12);
    assert_eq!(round_ratio(135, 10), 14);
    assert_eq!(round_ratio(-125, 10), -12);
    assert_eq!(round_ratio(126, 10), 13);
}
