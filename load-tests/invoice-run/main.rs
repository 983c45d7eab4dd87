//! Invoice-run benchmark: N partners × 5 meters over a month of usage, the whole `peage invoice
//! run` timed, in embedded mode (SQLite + embedded usage store) and against PostgreSQL +
//! ClickHouse. The reference measured in the same run is the pricing engine alone on the same
//! usage, read beforehand (what the run would cost if reading and storing were free).
//!
//! `invoice_run [PARTNERS] [EVENTS_PER_PARTNER] [embedded|distributed|both]`
//! (defaults 10000, 60, both). Prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../common/billing.rs"]
mod billing;

use billing::{events, CATALOG};
use chrono::{TimeZone, Utc};
use peage_billing::service::invoicing::{Invoicing, Issuer};
use peage_billing_store::{BillingStore, Subscription};
use peage_core::{Catalog, Env, Invoice, PeriodLabel};
use peage_usage_store::{UsageQuery, UsageStore};
use rust_decimal::Decimal;

struct Measured {
    mode: &'static str,
    seed: Duration,
    run: Duration,
    rerun: Duration,
    reference: Duration,
    invoices: usize,
    total: String,
}

async fn measure(
    mode: &'static str,
    store: Arc<dyn BillingStore>,
    usage: Arc<dyn UsageStore>,
    partners: usize,
    per_partner: usize,
) -> anyhow::Result<Measured> {
    let catalog = Arc::new(
        Catalog::parse("bench.toml", CATALOG, &|_| None).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let plan = catalog.plan("scale").unwrap().clone();
    let started = Utc.with_ymd_and_hms(2026, 9, 15, 0, 0, 0).unwrap();
    let t = Instant::now();
    let mut ids = Vec::with_capacity(partners);
    let mut batch = Vec::new();
    for i in 0..partners {
        let id = format!("prt_{:020x}", i + 1);
        store
            .create_partner(
                &id.parse().unwrap(),
                &format!("Partner {i}"),
                &Subscription {
                    plan_id: plan.id.clone(),
                    plan_version: plan.version.clone(),
                    started_at: started,
                    ended_at: None,
                },
            )
            .await?;
        batch.extend(events(
            &id,
            per_partner,
            i as u64 + 1,
            Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
            chrono::Duration::days(31),
        ));
        if batch.len() >= 50_000 {
            usage.insert(&batch).await?;
            batch.clear();
        }
        ids.push(id);
    }
    usage.insert(&batch).await?;
    let seed = t.elapsed();
    eprintln!(
        "{mode}: seeded {partners} partners and {} events in {seed:.1?}",
        partners * per_partner
    );

    let engine = Invoicing {
        catalog: Arc::clone(&catalog),
        store,
        usage: Arc::clone(&usage),
        issuer: Issuer::default(),
    };
    let label: PeriodLabel = "2026-10".parse()?;
    let t = Instant::now();
    let summary = engine
        .run(label, Utc::now(), &|_, _| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let run = t.elapsed();
    anyhow::ensure!(
        summary.errors.is_empty(),
        "errors: {:?}",
        &summary.errors[..summary.errors.len().min(3)]
    );
    anyhow::ensure!(summary.created == partners, "{summary:?}");
    let t = Instant::now();
    let again = engine
        .run(label, Utc::now(), &|_, _| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rerun = t.elapsed();
    anyhow::ensure!(
        again.unchanged == partners,
        "the re-run changed something: {again:?}"
    );

    // Reference: the engine alone, on usage read beforehand.
    let period = peage_core::BillingPeriod {
        start: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
        end: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
    };
    let mut usages = Vec::with_capacity(partners);
    for id in &ids {
        let q = UsageQuery {
            partner_id: id.clone(),
            env: Env::Live,
            from: period.start,
            to: period.end,
        };
        usages.push(usage.meter_usage(&q, &catalog.meters).await?);
    }
    let t = Instant::now();
    let mut sum = Decimal::ZERO;
    for (id, u) in ids.iter().zip(&usages) {
        sum += Invoice::compute(id, &plan, period, u)
            .expect("bench plans price")
            .total;
    }
    let reference = t.elapsed();
    let run_total: Decimal = summary
        .totals
        .get("EUR")
        .map(|t| t.parse().unwrap())
        .unwrap_or_default();
    anyhow::ensure!(
        run_total == sum,
        "run total {run_total} differs from the engine's {sum}"
    );
    Ok(Measured {
        mode,
        seed,
        run,
        rerun,
        reference,
        invoices: summary.created,
        total: run_total.to_string(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let partners: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let per_partner: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(60);
    let which = args.get(3).cloned().unwrap_or("both".into());
    let mut results = Vec::new();
    if which == "embedded" || which == "both" {
        let dir = tempfile::tempdir()?;
        let (store, usage) = billing::embedded(dir.path()).await?;
        results.push(measure("embedded (SQLite)", store, usage, partners, per_partner).await?);
    }
    if which == "distributed" || which == "both" {
        let (store, usage) = billing::distributed().await?;
        results.push(
            measure(
                "PostgreSQL + ClickHouse",
                store,
                usage,
                partners,
                per_partner,
            )
            .await?,
        );
    }
    println!("\n| mode | partners × meters | events | invoice run | re-run (unchanged) | engine alone (reference) | run / reference | amount due (all) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in &results {
        println!(
            "| {} | {} × 5 | {} | {:.2} s | {:.2} s | {:.3} s | {:.0}× | {} EUR |",
            m.mode,
            m.invoices,
            m.invoices * per_partner,
            m.run.as_secs_f64(),
            m.rerun.as_secs_f64(),
            m.reference.as_secs_f64(),
            m.run.as_secs_f64() / m.reference.as_secs_f64().max(1e-9),
            m.total
        );
        eprintln!("{}: seeding took {:.1?}", m.mode, m.seed);
    }
    Ok(())
}
