//! Finance overview benchmark: N partners on a plan of five charges, each with calls this
//! month and a finalized invoice last month, and finance's partner list timed through
//! `Billing::overview` (what `GET /v1/partners/overview` answers): a page of 200 by name, and
//! every partner priced to sort by running cost. Reference, in the same run: the page of 200
//! computed partner by partner (`upcoming`, as the overview did before it read in bulk).
//!
//! `finance_overview [PARTNERS] [CALLS_PER_PARTNER] [embedded|distributed|both]`
//! (defaults 10000, 20, both). Prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../common/billing.rs"]
mod billing;

use billing::{events, CATALOG};
use chrono::{Datelike, TimeZone, Utc};
use peage_billing::service::invoicing::{Invoicing, Issuer};
use peage_billing::service::OverviewSort;
use peage_billing::{ControlApi, ControlSettings, OAuthConfig};
use peage_billing_store::{BillingStore, Subscription};
use peage_core::{Catalog, PeriodLabel};
use peage_usage_store::UsageStore;

struct Measured {
    mode: &'static str,
    partners: usize,
    page: Duration,
    sorted: Duration,
    reference: Duration,
}

/// The fastest of `runs` runs of `f`.
async fn best<F: std::future::Future<Output = anyhow::Result<()>>>(
    runs: usize,
    f: impl Fn() -> F,
) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f().await?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

async fn measure(
    mode: &'static str,
    store: Arc<dyn BillingStore>,
    usage: Arc<dyn UsageStore>,
    partners: usize,
    per_partner: usize,
) -> anyhow::Result<Measured> {
    let catalog =
        Catalog::parse("bench.toml", CATALOG, &|_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = catalog.plan("scale").unwrap().clone();
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let last_month = (this_month - chrono::Duration::days(1))
        .with_day(1)
        .unwrap();
    let t = Instant::now();
    let mut batch = Vec::new();
    for i in 0..partners {
        let id = format!("prt_{:020x}", i + 1);
        store
            .create_partner(
                &id.parse().unwrap(),
                &format!("Partner {:05}", (i * 7919) % partners),
                &Subscription {
                    plan_id: plan.id.clone(),
                    plan_version: plan.version.clone(),
                    started_at: last_month - chrono::Duration::days(10),
                    ended_at: None,
                },
            )
            .await?;
        let seed = i as u64 + 1;
        batch.extend(events(
            &id,
            per_partner,
            seed,
            last_month,
            this_month - last_month,
        ));
        batch.extend(events(
            &id,
            per_partner,
            seed * 31,
            this_month,
            now - this_month,
        ));
        if batch.len() >= 50_000 {
            usage.insert(&batch).await?;
            batch.clear();
        }
    }
    usage.insert(&batch).await?;
    // Last month invoiced and finalized: the overview reads finalized invoices for late usage.
    let engine = Invoicing {
        catalog: Arc::new(catalog.clone()),
        store: Arc::clone(&store),
        usage: Arc::clone(&usage),
        issuer: Issuer::default(),
    };
    let label: PeriodLabel = last_month.format("%Y-%m").to_string().parse()?;
    engine
        .run(label, now, &|_, _| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let drafts = store
        .invoices(&peage_billing_store::InvoiceFilter {
            period_label: Some(label.to_string()),
            ..Default::default()
        })
        .await?;
    for d in &drafts {
        engine
            .finalize(&d.id, now, "bench")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    eprintln!(
        "{mode}: seeded {partners} partners, {} calls and {} finalized invoices in {:.1?}",
        partners * per_partner * 2,
        drafts.len(),
        t.elapsed()
    );

    let api = ControlApi::new(
        Arc::new(peage_core::catalog::LiveCatalog::new(catalog)),
        store,
        usage,
        "bench-token".into(),
        None,
        ControlSettings {
            oauth: OAuthConfig::default(),
            issuer: Issuer::default(),
            outbound: Arc::new(peage_net::OutboundPolicy::new(false, vec![])),
            secrets: Arc::new(peage_billing::service::secrets::SecretBox::new(
                &[7; 32],
                &[],
            )?),
            credential_failures_per_minute: 20,
        },
    );
    let billing = Arc::clone(&api.billing);
    let page = best(3, || async {
        let p = billing
            .overview("", OverviewSort::Name, 200, 0)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            p.partners.len() == 200 && p.total == partners,
            "page: {}",
            p.partners.len()
        );
        anyhow::ensure!(
            p.partners.iter().all(|r| r.error.is_none()),
            "errors in the page"
        );
        Ok(())
    })
    .await?;
    let sorted = best(3, || async {
        let p = billing
            .overview("", OverviewSort::RunningTotal, 200, 0)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(p.partners.len() == 200, "sorted page");
        Ok(())
    })
    .await?;
    // Reference: the same page of 200, partner by partner, and the two must agree.
    let first = billing
        .overview("", OverviewSort::Name, 200, 0)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let reference = best(3, || async {
        let invoicing = billing.invoicing();
        for row in &first.partners {
            let p = billing
                .partner(row.id.as_str())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let up = invoicing
                .upcoming(&p, Utc::now())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(
                up.invoice.total.to_string() == row.running_total,
                "{}: {} one by one, {} in bulk",
                row.id,
                up.invoice.total,
                row.running_total
            );
        }
        Ok(())
    })
    .await?;
    Ok(Measured {
        mode,
        partners,
        page,
        sorted,
        reference,
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
    let per_partner: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
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
    println!("\n| mode | partners | page of 200 by name | all priced, sorted by running cost | page of 200 one by one (reference) | page / reference |");
    println!("|---|---:|---:|---:|---:|---:|");
    for m in &results {
        println!(
            "| {} | {} | **{:.3} s** | **{:.3} s** | {:.3} s | {:.2}× |",
            m.mode,
            m.partners,
            m.page.as_secs_f64(),
            m.sorted.as_secs_f64(),
            m.reference.as_secs_f64(),
            m.page.as_secs_f64() / m.reference.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}
