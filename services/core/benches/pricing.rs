//! Pricing engine throughput (`cargo bench -p peage-core`): one invoice of a plan with five
//! charges (graduated, per unit, volume, package, flat), a commitment and tax, against the bare
//! `Decimal` arithmetic of the same lines measured in the same run (the floor any engine pays).

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peage_core::meter::MeterUsage;
use peage_core::period::{BillingPeriod, PeriodRule};
use peage_core::pricing::{Charge, ChargeModel, Plan, TaxRate, Tier};
use peage_core::{Currency, Invoice};
use rust_decimal::Decimal;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn tiers(spec: &[(Option<&str>, &str)]) -> Vec<Tier> {
    spec.iter()
        .map(|(u, p)| Tier {
            up_to: u.map(d),
            unit_price: d(p),
            flat_fee: None,
        })
        .collect()
}

fn plan() -> Plan {
    let charge = |meter: &str, free: &str, model| Charge {
        meter: meter.into(),
        free: d(free),
        model,
    };
    Plan {
        id: "scale".into(),
        name: "Scale".into(),
        version: "v1".into(),
        currency: Currency::parse("EUR").unwrap(),
        period: PeriodRule::Month { anchor_day: 1 },
        base_fee: d("99"),
        tax: Some(TaxRate {
            rate: d("0.20"),
            label: "VAT".into(),
        }),
        minimum_commitment: Some(d("150")),
        charges: vec![
            charge(
                "calls",
                "10000",
                ChargeModel::Graduated {
                    tiers: tiers(&[
                        (Some("100000"), "0.001"),
                        (Some("1000000"), "0.0006"),
                        (None, "0.0004"),
                    ]),
                },
            ),
            charge(
                "units",
                "0",
                ChargeModel::PerUnit {
                    unit_price: d("0.011"),
                },
            ),
            charge(
                "egress_gb",
                "0",
                ChargeModel::Volume {
                    tiers: tiers(&[(Some("100"), "0.09"), (None, "0.05")]),
                },
            ),
            charge(
                "ingress_gb",
                "0",
                ChargeModel::Package {
                    size: d("10"),
                    price: d("0.75"),
                },
            ),
            charge("errors", "0", ChargeModel::Flat { amount: d("1") }),
        ],
        quotas: vec![],
        rate_limit: None,
        net_days: None,
        apis: None,
        features: Vec::new(),
        self_serve: false,
    }
}

fn usage(i: u64) -> Vec<MeterUsage> {
    ["calls", "units", "egress_gb", "ingress_gb", "errors"]
        .iter()
        .enumerate()
        .map(|(k, m)| MeterUsage {
            amounts: None,
            meter: m.to_string(),
            quantity: Decimal::from(1_000 + (i * 7919 + k as u64 * 104729) % 2_000_000),
            groups: vec![],
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let plan = plan();
    let period = BillingPeriod {
        start: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
        end: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
    };
    let usages: Vec<Vec<MeterUsage>> = (0..1000).map(usage).collect();
    let mut group = c.benchmark_group("pricing");
    group.throughput(Throughput::Elements(usages.len() as u64));
    group.bench_function("invoice_5_charges_x1000", |b| {
        b.iter(|| {
            for u in &usages {
                black_box(Invoice::compute("prt_bench", &plan, period, black_box(u)).unwrap());
            }
        })
    });
    // The reference: the same number of line amounts as bare Decimal multiply, round and add.
    let cur = plan.currency;
    let (p1, p2, rate) = (d("0.001"), d("0.0006"), d("0.20"));
    group.bench_function("reference_bare_decimal_lines_x1000", |b| {
        b.iter(|| {
            for u in &usages {
                let mut total = Decimal::ZERO;
                for m in u {
                    for price in [p1, p2] {
                        total += cur.round(black_box(m.quantity) * price);
                    }
                }
                black_box(total + cur.round(total * rate));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
