//! Plan changes through the control API: a change of currency and billing period refused
//! mid-period with the way to schedule it, scheduled for the boundary, shown while pending,
//! cancelled, scheduled again and applied at the boundary, with the last monthly invoice and
//! the first yearly one each right; and invoice previews that price another plan or catalog
//! and store nothing.

use chrono::{Datelike, Duration, TimeZone, Utc};
use peage_core::PeriodLabel;
use peage_usage_store::UsageStore;
use rust_decimal::Decimal;
use serde_json::{json, Value};

mod support;
use support::{calls, TOKEN};

/// A monthly EUR plan, a yearly USD plan whose year starts on the 1st of next month (so the
/// current month's end is a boundary of both), and a second monthly EUR plan.
fn catalog(year_anchor_month: u32) -> String {
    format!(
        r#"
[[api]]
name = "maps"
[[api.versions]]
id = "v1"
live = "http://127.0.0.1:9"
sandbox = "http://127.0.0.1:9"

[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "monthly-eur"
name = "Monthly (EUR)"
currency = "EUR"
period = {{ every = "month", anchor_day = 1 }}
base_fee = "10.00"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.01" }}]

[[plan]]
id = "monthly-eur-pro"
name = "Pro (EUR)"
currency = "EUR"
period = {{ every = "month", anchor_day = 1 }}
base_fee = "50.00"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.002" }}]

[[plan]]
id = "yearly-usd"
name = "Yearly (USD)"
currency = "USD"
period = {{ every = "year", anchor_month = {year_anchor_month}, anchor_day = 1 }}
base_fee = "1200.00"
charges = [{{ meter = "calls", model = "per_unit", unit_price = "0.02" }}]

[[plan]]
id = "yearly-usd-mid"
name = "Yearly (USD), from the 15th"
currency = "USD"
period = {{ every = "year", anchor_month = 1, anchor_day = 15 }}
base_fee = "1200.00"
"#
    )
}

struct Env_ {
    served: support::Served,
    client: reqwest::Client,
}

impl Env_ {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(
                method.parse().unwrap(),
                format!("{}{path}", self.served.base),
            )
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A partner on `plan` since the start of this month (UTC), with `n` calls early this month.
    async fn partner(&self, plan: &str, n: usize) -> String {
        let (s, p) = self
            .call(
                "POST",
                "/v1/partners",
                Some(json!({"name": "Globex", "plan": plan})),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        let pid = p["id"].as_str().unwrap().to_string();
        self.served
            .store
            .change_subscription(
                &pid.parse().unwrap(),
                &peage_billing_store::Subscription {
                    plan_id: plan.into(),
                    plan_version: p["subscription"]["plan_version"].as_str().unwrap().into(),
                    started_at: month_start(),
                    ended_at: None,
                },
            )
            .await
            .unwrap();
        if n > 0 {
            self.served
                .usage
                .insert(&calls(&pid, month_start() + Duration::hours(1), n))
                .await
                .unwrap();
        }
        pid
    }
}

fn month_start() -> chrono::DateTime<Utc> {
    let now = Utc::now();
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap()
}

fn next_month_start() -> chrono::DateTime<Utc> {
    let now = Utc::now();
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap()
}

async fn start() -> Env_ {
    Env_ {
        served: support::serve(&catalog(next_month_start().month())).await,
        client: reqwest::Client::new(),
    }
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_monthly_eur_partner_scheduled_onto_a_yearly_usd_plan_moves_at_the_boundary() {
    let env = start().await;
    let pid = env.partner("monthly-eur", 100).await;
    let boundary = next_month_start();
    let path = format!("/v1/partners/{pid}/subscription");

    // Mid-period, a change of currency and period is refused, saying how to schedule it.
    let (s, e) = env
        .call("PUT", &path, Some(json!({"plan": "yearly-usd"})))
        .await;
    assert_eq!(s, 409, "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("EUR every month") && detail.contains("USD every year"),
        "{detail}"
    );
    assert!(detail.contains("at next_period"), "{detail}");
    // A year anchored on the 15th never meets a month anchored on the 1st.
    let (s, e) = env
        .call(
            "PUT",
            &path,
            Some(json!({"plan": "yearly-usd-mid", "at": "next_period"})),
        )
        .await;
    assert_eq!(s, 409, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("do not meet"), "{e}");
    // Bad and past times are the caller's mistake.
    for at in ["tomorrow", "2020-01-01", "2020-01-01T00:00:00Z"] {
        let (s, e) = env
            .call("PUT", &path, Some(json!({"plan": "yearly-usd", "at": at})))
            .await;
        assert_eq!(s, 400, "{at}: {e}");
    }

    // Scheduled for the end of the period: pending, shown with the partner, cancellable.
    let (s, p) = env
        .call(
            "PUT",
            &path,
            Some(json!({"plan": "yearly-usd", "at": "next_period"})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["subscription"]["plan_id"], "monthly-eur", "{p}");
    let pending = &p["pending_change"];
    assert_eq!(pending["status"], "pending", "{p}");
    assert_eq!(pending["plan_id"], "yearly-usd");
    let at: chrono::DateTime<Utc> = pending["at"].as_str().unwrap().parse().unwrap();
    assert_eq!(at, boundary);
    let change_id = pending["id"].as_str().unwrap().to_string();
    let (_, shown) = env.call("GET", &format!("/v1/partners/{pid}"), None).await;
    assert_eq!(shown["pending_change"]["id"], change_id.as_str(), "{shown}");
    assert_eq!(shown["pending_change"]["scheduled_by"], "admin", "{shown}");
    // The partner sees the change coming, not which staff member scheduled it.
    let partner = env
        .served
        .store
        .partner(&pid.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let own = peage_billing::service::Principal::Partner(pid.parse().unwrap());
    let seen = env
        .served
        .api
        .billing
        .partner_view(&own, partner)
        .await
        .unwrap();
    let seen = seen.pending_change.unwrap();
    assert_eq!(
        (seen.plan_id.as_str(), seen.scheduled_by.as_str()),
        ("yearly-usd", "staff")
    );
    let cancel = format!("/v1/partners/{pid}/plan-changes/{change_id}");
    let (s, c) = env.call("DELETE", &cancel, None).await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["status"], "cancelled");
    let (s, _) = env.call("DELETE", &cancel, None).await;
    assert_eq!(s, 409);
    let (_, shown) = env.call("GET", &format!("/v1/partners/{pid}"), None).await;
    assert_eq!(shown["pending_change"], Value::Null, "{shown}");
    // Nothing is applied from a cancelled change, even after its time.
    let invoicing = env.served.api.billing.invoicing();
    let none = invoicing
        .apply_due_plan_changes(boundary + Duration::seconds(1))
        .await
        .unwrap();
    assert!(none.is_empty());

    // Scheduled again, by date this time, then applied once the boundary has passed (here:
    // the engine is asked as of one second after it).
    let date = boundary.format("%Y-%m-%d").to_string();
    let (s, p) = env
        .call(
            "PUT",
            &path,
            Some(json!({"plan": "yearly-usd", "at": date})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert!(invoicing
        .apply_due_plan_changes(boundary - Duration::seconds(1))
        .await
        .unwrap()
        .is_empty());
    let applied = invoicing
        .apply_due_plan_changes(boundary + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(applied.len(), 1);
    // Applying again does nothing: it is applied once.
    assert!(invoicing
        .apply_due_plan_changes(boundary + Duration::seconds(2))
        .await
        .unwrap()
        .is_empty());
    let (_, history) = env
        .call("GET", &format!("/v1/partners/{pid}/plan-changes"), None)
        .await;
    let statuses: Vec<&str> = history["plan_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["applied", "cancelled"], "{history}");
    let subs = env
        .served
        .store
        .subscriptions(&pid.parse().unwrap())
        .await
        .unwrap();
    let last = subs.last().unwrap();
    assert_eq!(
        (last.plan_id.as_str(), last.started_at),
        ("yearly-usd", boundary)
    );

    // 50 calls after the boundary, on the yearly plan.
    env.served
        .usage
        .insert(&calls(&pid, boundary + Duration::hours(2), 50))
        .await
        .unwrap();
    let partner = env
        .served
        .store
        .partner(&pid.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let later = boundary + Duration::days(2);
    // The last monthly invoice: this month in EUR, its 100 calls only.
    let monthly = invoicing
        .draft(
            &partner,
            PeriodLabel::of(month_start(), chrono_tz::UTC),
            later,
        )
        .await
        .unwrap()
        .unwrap();
    let inv = serde_json::to_value(&monthly.invoice).unwrap();
    assert_eq!(inv["currency"], "EUR", "{inv}");
    assert_eq!(dec(&inv["total"]), Decimal::new(1100, 2), "{inv}"); // 10.00 + 100 × 0.01
    assert_eq!(
        inv["period"]["end"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<Utc>>()
            .unwrap(),
        boundary
    );
    // The first yearly invoice: a whole year in USD from the boundary, its 50 calls only.
    let yearly = invoicing
        .draft(&partner, PeriodLabel::of(boundary, chrono_tz::UTC), later)
        .await
        .unwrap()
        .unwrap();
    let inv = serde_json::to_value(&yearly.invoice).unwrap();
    assert_eq!(inv["currency"], "USD", "{inv}");
    assert_eq!(dec(&inv["total"]), Decimal::new(120100, 2), "{inv}"); // 1200.00 + 50 × 0.02
    let start: chrono::DateTime<Utc> = inv["period"]["start"].as_str().unwrap().parse().unwrap();
    assert_eq!(start, boundary);
}

#[tokio::test]
async fn a_change_that_keeps_currency_and_period_happens_now_and_cancels_a_pending_one() {
    let env = start().await;
    let pid = env.partner("monthly-eur", 0).await;
    let path = format!("/v1/partners/{pid}/subscription");
    let (s, p) = env
        .call(
            "PUT",
            &path,
            Some(json!({"plan": "yearly-usd", "at": "next_period"})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    let (s, p) = env
        .call("PUT", &path, Some(json!({"plan": "monthly-eur-pro"})))
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["subscription"]["plan_id"], "monthly-eur-pro");
    assert_eq!(p["pending_change"], Value::Null, "{p}");
    let (_, history) = env
        .call("GET", &format!("/v1/partners/{pid}/plan-changes"), None)
        .await;
    assert_eq!(
        history["plan_changes"][0]["status"], "cancelled",
        "{history}"
    );
    // Scheduling a move to the plan the partner is on is refused.
    let (s, e) = env
        .call(
            "PUT",
            &path,
            Some(json!({"plan": "monthly-eur-pro", "at": "next_period"})),
        )
        .await;
    assert_eq!(s, 409, "{e}");
}

/// Every row of every table of the billing database, as JSON arrays, to show a request
/// changed nothing.
async fn everything_stored(env: &Env_) -> Vec<String> {
    use sqlx::Row;
    let url = format!(
        "sqlite://{}?mode=ro",
        env.served.dir.path().join("billing.db").display()
    );
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let tables: Vec<String> =
        sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&db)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("name"))
            .collect();
    let mut rows = Vec::new();
    for t in tables {
        let columns: Vec<String> =
            sqlx::query(&format!("SELECT name FROM pragma_table_info('{t}')"))
                .fetch_all(&db)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get("name"))
                .collect();
        let select = format!(
            "SELECT json_array({}) AS row FROM \"{t}\" ORDER BY 1",
            columns
                .iter()
                .map(|c| format!("quote(\"{c}\")"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for r in sqlx::query(&select).fetch_all(&db).await.unwrap() {
            rows.push(format!("{t}: {}", r.get::<String, _>("row")));
        }
    }
    db.close().await;
    assert!(rows.len() > 3, "the dump reads the tables: {rows:?}");
    rows
}

#[tokio::test]
async fn a_preview_prices_another_plan_or_catalog_and_stores_nothing() {
    let env = start().await;
    let pid = env.partner("monthly-eur", 1000).await;
    // The catalog in force is on record, as billing keeps it at start and on reloads.
    let in_force = env.served.api.billing.catalog();
    let text = catalog(next_month_start().month());
    env.served
        .store
        .put_catalog_in_force(&in_force.version, &text, "test", Utc::now())
        .await
        .unwrap();
    let before = everything_stored(&env).await;

    // Another plan of the catalog in force, beside the current draft.
    let (s, p) = env
        .call(
            "GET",
            &format!("/v1/partners/{pid}/invoices/preview?plan=monthly-eur-pro"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["plan_id"], "monthly-eur-pro");
    assert_eq!(
        dec(&p["current"]["invoice"]["total"]),
        Decimal::new(2000, 2)
    ); // 10 + 1000 × 0.01
    assert_eq!(
        dec(&p["preview"]["invoice"]["total"]),
        Decimal::new(5200, 2)
    ); // 50 + 1000 × 0.002
    assert_eq!(p["preview"]["id"], "preview");
    // An accepted catalog version by name.
    let (s, p) = env
        .call(
            "GET",
            &format!(
                "/v1/partners/{pid}/invoices/preview?catalog={}",
                in_force.version
            ),
            None,
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        dec(&p["preview"]["invoice"]["total"]),
        Decimal::new(2000, 2)
    );
    let (s, _) = env
        .call(
            "GET",
            &format!("/v1/partners/{pid}/invoices/preview?catalog=nope"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, e) = env
        .call(
            "GET",
            &format!("/v1/partners/{pid}/invoices/preview?plan=gold"),
            None,
        )
        .await;
    assert_eq!(s, 400, "{e}");

    // An uploaded catalog: the same plan at a new price.
    let upload = |body: String| {
        env.client
            .post(format!(
                "{}/v1/partners/{pid}/invoices/preview",
                env.served.base
            ))
            .bearer_auth(TOKEN)
            .header("content-type", "application/toml")
            .body(body)
            .send()
    };
    let cheaper = text.replacen(r#"base_fee = "10.00""#, r#"base_fee = "5.00""#, 1);
    let r = upload(cheaper).await.unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        dec(&p["preview"]["invoice"]["total"]),
        Decimal::new(1500, 2),
        "{p}"
    );
    assert_ne!(p["catalog_version"], in_force.version.as_str());
    // An invalid one names the line and field.
    let broken = text.replacen(
        r#"unit_price = "0.01""#,
        r#"unit_price = "0.0000000000000000000000000000000000000001""#,
        1,
    );
    let r = upload(broken).await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("uploaded catalog:") && detail.contains("unit_price"),
        "{detail}"
    );

    // Nothing the previews did is stored: not an invoice, not a plan version, not an audit
    // record.
    assert_eq!(everything_stored(&env).await, before);
}
