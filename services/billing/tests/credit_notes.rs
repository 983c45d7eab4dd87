//! Credit notes through the control API on the embedded stores: a partial note by line, then
//! by amount, each numbered in its own series, never beyond the invoice, exported as JSON, CSV
//! and PDF, announced by a webhook, and credited to the balance when asked.

use chrono::{Datelike, TimeZone, Utc};
use serde_json::{json, Value};

mod support;

const CATALOG: &str = r#"
[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "monthly"
name = "Monthly"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "100.00"
tax = { rate = "0.20", label = "VAT" }
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.01" }]
"#;

#[tokio::test]
async fn partial_credit_notes_on_a_finalized_invoice() {
    let served = support::serve(CATALOG).await;
    let (_, partner) = served
        .call(
            "POST",
            "/v1/partners".into(),
            json!({"name": "Initech", "plan": "monthly"}),
        )
        .await;
    let pid = partner["id"].as_str().unwrap().to_string();
    // On the plan since the start of last month: last month's invoice is 100.00 + VAT 20.00.
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let last_month = (this_month - chrono::Duration::days(1))
        .with_day(1)
        .unwrap();
    served.on_plan_since(&partner, last_month).await;
    let (s, hook) = served
        .call(
            "POST",
            "/v1/webhooks".into(),
            json!({"url": "https://hooks.example.com/peage", "events": ["credit_note.created"]}),
        )
        .await;
    assert_eq!(s, 201, "{hook}");
    let label = last_month.format("%Y-%m").to_string();
    let id = served.invoice_of_period(&label, &pid).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let note = |body: Value| served.call("POST", format!("/v1/invoices/{id}/credit-notes"), body);
    // A draft takes no note.
    let (s, e) = note(json!({"reason": "x", "method": "refund", "amount": "1"})).await;
    assert_eq!(s, 409, "{e}");
    let (s, fin) = served
        .call("POST", format!("/v1/invoices/{id}/finalize"), Value::Null)
        .await;
    assert_eq!(s, 200, "{fin}");

    // 25.00 of the base fee, credited to the balance: 30.00 with VAT.
    let (s, first) = note(json!({"reason": "outage on the 12th", "method": "credit",
        "lines": [{"line": 0, "amount": "25.00"}]}))
    .await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(first["number"], format!("PEAGE-CN-{}-000001", now.year()));
    assert_eq!(first["note"]["total"], "30.00");
    let (_, credits) = served
        .call("GET", format!("/v1/partners/{pid}/credits"), Value::Null)
        .await;
    assert!(credits.to_string().contains("30.00"), "{credits}");
    // More than is left is refused, saying how much is left; then 75.00 refunded.
    let (s, e) = note(json!({"reason": "goodwill", "method": "refund", "amount": "80"})).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("75.00 of its subtotal left"),
        "{e}"
    );
    let (s, second) = note(json!({"reason": "goodwill", "method": "refund", "amount": "75"})).await;
    assert_eq!(s, 201, "{second}");
    assert_eq!(second["number"], format!("PEAGE-CN-{}-000002", now.year()));
    let (_, notes) = served
        .call(
            "GET",
            format!("/v1/invoices/{id}/credit-notes"),
            Value::Null,
        )
        .await;
    assert_eq!(notes["credit_notes"].as_array().unwrap().len(), 2);
    assert_eq!(
        (notes["credited"].as_str(), notes["left_due"].as_str()),
        (Some("120.00"), Some("0.00")),
        "{notes}"
    );

    // Exports of one note.
    let cn = first["id"].as_str().unwrap();
    let (s, ct, csv) = served
        .raw(format!("/v1/credit-notes/{cn}?format=csv"))
        .await;
    assert_eq!((s, ct.as_str()), (200, "text/csv; charset=utf-8"));
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.contains(",line,Monthly: base fee,25.00,EUR"), "{csv}");
    assert!(csv.contains(",total,total credited,30.00,EUR"), "{csv}");
    let (s, ct, pdf) = served
        .raw(format!("/v1/credit-notes/{cn}?format=pdf"))
        .await;
    assert_eq!((s, ct.as_str()), (200, "application/pdf"));
    assert!(pdf.starts_with(b"%PDF-"));
    // To look at it: PEAGE_PDF_OUT=/tmp/credit-note.pdf, then `pdftoppm -png` it.
    if let Ok(path) = std::env::var("PEAGE_PDF_OUT") {
        std::fs::write(path, &pdf).unwrap();
    }
    let (s, _, json) = served.raw(format!("/v1/credit-notes/{cn}")).await;
    assert_eq!(s, 200);
    let json: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["note"]["reason"], "outage on the 12th");
    assert_eq!(
        served
            .raw("/v1/credit-notes/cn_00000000000000000000".into())
            .await
            .0,
        404
    );
    let (s, _, all) = served
        .raw(format!("/v1/invoices/{id}/credit-notes?format=csv"))
        .await;
    assert_eq!(s, 200);
    let all = String::from_utf8(all).unwrap();
    assert_eq!(all.matches(",total,total credited,").count(), 2, "{all}");

    // Each note queued its webhook.
    let (_, deliveries) = served
        .call("GET", "/v1/webhooks/deliveries".into(), Value::Null)
        .await;
    let kinds: Vec<&str> = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["credit_note.created", "credit_note.created"],
        "{deliveries}"
    );
}
