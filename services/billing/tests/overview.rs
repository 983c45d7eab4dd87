//! Finance's overview, computed in bulk: every row equals the partner's own upcoming invoice
//! (partners in other time zones included), sorted and paged as asked.

use chrono::{Duration, Utc};
use peage_usage_store::UsageStore;
use serde_json::{json, Value};

mod support;
use support::{calls, month_start};

const CATALOG: &str = r#"
[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "payg"
name = "Pay as you go"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "1.00"
tax = { rate = "0.20", label = "VAT" }
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.10" }]

[[plan]]
id = "mid-month"
name = "Mid-month"
currency = "EUR"
period = { every = "month", anchor_day = 15 }
base_fee = "2.00"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.05" }]
"#;

#[tokio::test]
async fn the_overview_equals_each_partners_upcoming_invoice_sorted_and_paged() {
    let served = support::serve(CATALOG).await;
    let at = month_start(0).max(Utc::now() - Duration::hours(3));
    let mut ids = Vec::new();
    for (i, (name, plan, n, tz)) in [
        ("Delta", "payg", 30, None),
        ("alpha", "payg", 5, None),
        ("Charlie", "mid-month", 80, None),
        ("Bravo", "payg", 12, Some("Pacific/Auckland")),
        ("Echo", "payg", 0, Some("America/New_York")),
    ]
    .into_iter()
    .enumerate()
    {
        let (pid, partner) = served
            .create_partner(json!({"name": name, "plan": plan}))
            .await;
        served
            .on_plan_since(&partner, month_start(2) + Duration::days(i as i64))
            .await;
        if let Some(tz) = tz {
            let (s, e) = served
                .call(
                    "PUT",
                    format!("/v1/partners/{pid}/billing"),
                    json!({"timezone": tz}),
                )
                .await;
            assert_eq!(s, 200, "{e}");
        }
        served.usage.insert(&calls(&pid, at, n)).await.unwrap();
        ids.push((name, pid));
    }
    let served = &served;
    let page = |q: &str| {
        let path = format!("/v1/partners/overview?{q}");
        async move {
            let (s, page) = served.call("GET", path, Value::Null).await;
            assert_eq!(s, 200, "{page}");
            page
        }
    };
    let names = |p: &Value| -> Vec<String> {
        p["partners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };

    let all = page("limit=200").await;
    assert_eq!(all["total"], 5);
    assert_eq!(names(&all), ["alpha", "Bravo", "Charlie", "Delta", "Echo"]);
    for row in all["partners"].as_array().unwrap() {
        assert!(row["error"].is_null(), "{row}");
        let id = row["id"].as_str().unwrap();
        let (_, up) = served
            .call(
                "GET",
                format!("/v1/partners/{id}/invoices/upcoming"),
                Value::Null,
            )
            .await;
        assert_eq!(
            row["running_total"], up["invoice"]["total"],
            "{row} vs {up}"
        );
        assert_eq!(
            row["period_start"], up["invoice"]["period"]["start"],
            "{row}"
        );
        assert_eq!(row["timezone"], up["invoice"]["timezone"], "{row}");
        let calls = row["usage"][0]["quantity"].as_str().unwrap();
        assert_eq!(
            calls,
            up["invoice"]["lines"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["meter"] == "calls")
                .map_or("0", |l| l["quantity"].as_str().unwrap()),
            "{row}"
        );
    }

    // The largest running cost first, paged.
    let by_cost = page("sort=running_total&limit=200").await;
    let totals: Vec<f64> = by_cost["partners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["running_total"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
    let second = page("sort=running_total&limit=2&offset=2").await;
    assert_eq!(names(&second), names(&by_cost)[2..4]);
    assert_eq!(second["total"], 5);
    // Paged by name; searched; by plan.
    assert_eq!(names(&page("limit=2&offset=1").await), ["Bravo", "Charlie"]);
    assert_eq!(names(&page("q=ALP").await), ["alpha"]);
    assert_eq!(names(&page("sort=plan&limit=200").await)[0], "Charlie");
    let (s, e) = served
        .call("GET", "/v1/partners/overview?sort=cost".into(), Value::Null)
        .await;
    assert_eq!(s, 400, "{e}");
}
