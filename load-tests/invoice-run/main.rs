//! Invoice-run benchmark: N partners × 5 meters over a month of usage, the whole `peage invoice
//! run` timed, in embedded mode (SQLite + embedded usage store) and against PostgreSQL +
//! ClickHouse. The reference measured in the same run is the pricing engine alone on the same
//! usage, read beforehand (what the run would cost if reading and storing were free).
//!
//! `invoice_run [PARTNERS] [EVENTS_PER_PARTNER] [embedded|distributed|both]`
//! (defaults 10000, 60, both). Prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use peage_billing::service::invoicing::{Invoicing, Issuer};
use peage_billing_store::{BillingStore, PostgresBillingStore, SqliteBillingStore, Subscription};
use peage_core::{CallEvent, Catalog, Env, Invoice, PeriodLabel};
use peage_usage_store::{
    ClickHouseConfig, ClickHouseUsageStore, SqliteUsageStore, UsageQuery, UsageStore,
};
use rust_decimal::Decimal;

const CATALOG: &str = r#"
[[api]]
name = "maps"
[[api.versions]]
id = "v1"
live = "http://127.0.0.1:9"
sandbox = "http://127.0.0.1:9"

[[meter]]
name = "calls"
aggregation = "count"

[[meter]]
name = "units"
aggregation = "sum"
field = "units"

[[meter]]
name = "egress_kb"
aggregation = "sum"
field = "response_bytes"
scale = "0.001"

[[meter]]
name = "ingress_kb"
aggregation = "sum"
field = "request_bytes"
scale = "0.001"

[[meter]]
name = "errors"
aggregation = "count"
filter = { status_class = ["5xx"] }

[[plan]]
id = "scale"
name = "Scale"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "99.00"
tax = { rate = "0.20", label = "VAT" }
minimum_commitment = "150.00"
charges = [
  { meter = "calls", model = "graduated", free = 10, tiers = [
      { up_to = 30, unit_price = "0.05" }, { up_to = "inf", unit_price = "0.02" } ] },
  { meter = "units", model = "per_unit", unit_price = "0.011" },
  { meter = "egress_kb", model = "volume", tiers = [
      { up_to = 10, unit_price = "0.3" }, { up_to = "inf", unit_price = "0.2" } ] },
  { meter = "ingress_kb", model = "package", size = "5", price = "0.75" },
  { meter = "errors", model = "flat", amount = "1.00" },
]
"#;

fn events(partner: &str, n: usize, seed: u64) -> Vec<CallEvent> {
    let start = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
    let month_us: i64 = 31 * 24 * 3600 * 1_000_000;
    (0..n)
        .map(|i| {
            let x = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i as u64 * 1442695040888963407);
            CallEvent {
                id: uuid::Uuid::now_v7(),
                time: start + chrono::Duration::microseconds((x >> 8) as i64 % month_us),
                partner_id: partner.into(),
                key_id: "key_00000000000000000000".into(),
                env: Env::Live,
                api: "maps".into(),
                version: "v1".into(),
                operation: ["GET /tiles/{z}", "GET /route", "POST /geocode"][i % 3].into(),
                method: "GET".into(),
                status: if x.is_multiple_of(50) { 503 } else { 200 },
                latency_us: 1000 + x % 5000,
                request_bytes: 200 + x % 800,
                response_bytes: 500 + x % 5000,
                units: Decimal::from(1 + (x % 3)),
                gateway_id: "gw-bench".into(),
                attributes: Default::default(),
            }
        })
        .collect()
}

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
        batch.extend(events(&id, per_partner, i as u64 + 1));
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
        let store: Arc<dyn BillingStore> =
            Arc::new(SqliteBillingStore::open(&dir.path().join("billing.db")).await?);
        let usage: Arc<dyn UsageStore> =
            Arc::new(SqliteUsageStore::open(&dir.path().join("usage.db")).await?);
        results.push(measure("embedded (SQLite)", store, usage, partners, per_partner).await?);
    }
    if which == "distributed" || which == "both" {
        let url = std::env::var("PEAGE_BENCH_POSTGRES")
            .unwrap_or("postgres://peage:peage@127.0.0.1:5432/peage".into());
        let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
        {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url).await?;
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&mut c)
                .await?;
        }
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        let store: Arc<dyn BillingStore> = Arc::new(
            PostgresBillingStore::connect_with(options.options([("search_path", schema.as_str())]))
                .await?,
        );
        let db = format!("peage_bench_{}", uuid::Uuid::now_v7().simple());
        let ch = ClickHouseUsageStore::connect(&ClickHouseConfig {
            url: std::env::var("PEAGE_BENCH_CLICKHOUSE").unwrap_or("http://127.0.0.1:8123".into()),
            database: db.clone(),
            validation: false,
            ..Default::default()
        })
        .await?;
        ch.migrate().await?;
        let usage: Arc<dyn UsageStore> = Arc::new(ch);
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
