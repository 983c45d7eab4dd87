//! What the billing benchmarks share (`load-tests/invoice-run`, `load-tests/finance-overview`):
//! a plan with five charges over five meters, calls to seed, and the stores of both modes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use peage_billing_store::{BillingStore, PostgresBillingStore, SqliteBillingStore};
use peage_core::{CallEvent, Env};
use peage_usage_store::{ClickHouseConfig, ClickHouseUsageStore, SqliteUsageStore, UsageStore};
use rust_decimal::Decimal;

pub const CATALOG: &str = r#"
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

/// `n` calls of `partner` spread over `[start, start + span)`, the same for the same `seed`.
pub fn events(
    partner: &str,
    n: usize,
    seed: u64,
    start: DateTime<Utc>,
    span: chrono::Duration,
) -> Vec<CallEvent> {
    let month_us: i64 = span.num_microseconds().unwrap_or(1).max(1);
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

/// Fresh embedded stores in `dir`.
pub async fn embedded(
    dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn BillingStore>, Arc<dyn UsageStore>)> {
    let store: Arc<dyn BillingStore> =
        Arc::new(SqliteBillingStore::open(&dir.join("billing.db")).await?);
    let usage: Arc<dyn UsageStore> = Arc::new(SqliteUsageStore::open(&dir.join("usage.db")).await?);
    Ok((store, usage))
}

/// A fresh PostgreSQL schema and ClickHouse database on the dev services
/// (`PEAGE_BENCH_POSTGRES`, `PEAGE_BENCH_CLICKHOUSE` override where).
pub async fn distributed() -> anyhow::Result<(Arc<dyn BillingStore>, Arc<dyn UsageStore>)> {
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
        database: db,
        validation: false,
        ..Default::default()
    })
    .await?;
    ch.migrate().await?;
    Ok((store, Arc::new(ch)))
}
