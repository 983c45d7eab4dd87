//! Cancelling usage events through the control API, on the embedded stores: a cancelled event
//! leaves the upcoming invoice, and once its period is finalized it becomes an adjustment on
//! the next invoice; raw events stay.

use chrono::{Datelike, TimeDelta, TimeZone, Utc};
use peage_usage_store::UsageStore;
use rust_decimal::Decimal;
use serde_json::{json, Value};

mod support;

const CATALOG: &str = r#"
[[meter]]
name = "tokens"
event_type = "com.example.llm"
aggregation = "sum"
value = "tokens"

[[plan]]
id = "llm"
name = "LLM"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [{ meter = "tokens", model = "per_unit", unit_price = "0.01" }]
"#;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_cancelled_event_leaves_the_invoice_and_after_finalization_becomes_an_adjustment() {
    let served = support::serve(CATALOG).await;
    served.store_events_directly();
    // A partner on the plan since the start of last month.
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let last_month = (this_month - TimeDelta::days(1)).with_day(1).unwrap();
    let (s, partner) = served
        .call(
            "POST",
            "/v1/partners".into(),
            json!({"name": "Initech", "plan": "llm", "external_id": "cust-7"}),
        )
        .await;
    assert_eq!(s, 201, "{partner}");
    let pid = partner["id"].as_str().unwrap().to_string();
    served.on_plan_since(&partner, last_month).await;
    // Last month (its last hour: inside the 35-day window whatever today is), and this month.
    let late_last_month = this_month - TimeDelta::hours(1);
    let event = |id: &str, tokens: u32, at: chrono::DateTime<Utc>| {
        json!({"specversion": "1.0", "id": id, "source": "/llm", "type": "com.example.llm",
               "subject": "cust-7", "time": at.to_rfc3339(), "data": {"tokens": tokens}})
    };
    let batch = json!([
        event("a", 100, late_last_month),
        event("b", 200, late_last_month),
        event("c", 300, late_last_month),
        event("d", 50, now),
        event("e", 70, now),
    ]);
    let (s, out) = served.call("POST", "/v1/events".into(), batch).await;
    assert_eq!((s, out["accepted"].as_u64()), (200, Some(5)), "{out}");

    // Last month's invoice: 600 tokens at 0.01 = 6.00, finalized.
    let period = last_month.format("%Y-%m").to_string();
    let (s, run) = served
        .call("POST", "/v1/invoices/run".into(), json!({"period": period}))
        .await;
    assert_eq!(s, 200, "{run}");
    let (_, list) = served
        .call(
            "GET",
            format!("/v1/invoices?period={period}&partner_id={pid}"),
            Value::Null,
        )
        .await;
    let invoice = list["invoices"][0].clone();
    assert_eq!(invoice["invoice"]["total"], "6.00", "{invoice}");
    let id = invoice["id"].as_str().unwrap().to_string();
    let (s, fin) = served
        .call("POST", format!("/v1/invoices/{id}/finalize"), Value::Null)
        .await;
    assert_eq!(s, 200, "{fin}");

    // Cancel b (last month, finalized) and e (this month); an unknown id and a partner that
    // does not exist are refused, naming why; cancelling again is a duplicate.
    let cancel = |c: Value| served.call("POST", "/v1/events/cancellations".into(), c);
    let (s, out) = cancel(json!([
        {"subject": "cust-7", "source": "/llm", "id": "b"},
        {"subject": pid, "source": "/llm", "id": "e"},
        {"subject": "cust-7", "source": "/llm", "id": "zzz"},
        {"subject": "nobody", "source": "/llm", "id": "a"},
    ]))
    .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["accepted"], 2, "{out}");
    let reasons: Vec<(u64, String)> = out["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{out}");
    assert!(
        reasons[0].0 == 2 && reasons[0].1.contains("no stored event"),
        "{out}"
    );
    assert!(
        reasons[1].0 == 3 && reasons[1].1.contains("nobody"),
        "{out}"
    );
    let (_, again) = cancel(json!({"subject": "cust-7", "source": "/llm", "id": "b"})).await;
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(1)),
        "{again}"
    );

    // Meters leave them out; raw events stay (five events and two cancellation records).
    let q = peage_usage_store::UsageQuery {
        partner_id: pid.clone(),
        env: peage_core::Env::Live,
        from: last_month,
        to: now + TimeDelta::minutes(1),
    };
    let catalog = peage_core::Catalog::parse("catalog.toml", CATALOG, &|_| None).unwrap();
    let meters = [catalog.meter("tokens").unwrap().clone()];
    let usage = served.usage.meter_usage(&q, &meters).await.unwrap();
    assert_eq!(usage[0].quantity, d("450"), "{usage:?}");

    // This month's upcoming invoice: 50 tokens (e is cancelled) = 0.50, and an adjustment of
    // -2.00 for b on last month's finalized invoice.
    let (_, up) = served
        .call(
            "GET",
            format!("/v1/partners/{pid}/invoices/upcoming"),
            Value::Null,
        )
        .await;
    let lines = up["invoice"]["lines"].as_array().unwrap();
    let usage_line = lines.iter().find(|l| l["meter"] == "tokens").unwrap();
    assert_eq!(usage_line["quantity"], "50", "{up}");
    let adj: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "adjustment").collect();
    assert_eq!(adj.len(), 1, "{up}");
    assert_eq!(adj[0]["amount"], "-2.00", "{up}");
    assert_eq!(adj[0]["adjusts"]["invoice_id"], id.as_str(), "{up}");
    // The finalized invoice itself is unchanged.
    let (_, fin) = served
        .call("GET", format!("/v1/invoices/{id}"), Value::Null)
        .await;
    assert_eq!(fin["invoice"]["total"], "6.00", "{fin}");

    // The audit log holds the cancellations, not the usage coming in.
    let (s, log) = served
        .call("GET", "/v1/audit?limit=1000".into(), Value::Null)
        .await;
    assert_eq!(s, 200, "{log}");
    let actions: Vec<&str> = log["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "POST /v1/events/cancellations")
            .count(),
        2,
        "{actions:?}"
    );
    assert!(!actions.contains(&"POST /v1/events"), "{actions:?}");
}
