//! Coupons through the control API on the embedded stores: created once by code, attached to
//! partners with the checks finance needs, and taken off the invoices of the periods they
//! cover, before tax.

use serde_json::{json, Value};

mod support;
use support::month_start;

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

[[plan]]
id = "dollars"
name = "Dollars"
currency = "USD"
period = { every = "month", anchor_day = 1 }
base_fee = "10.00"
"#;

#[tokio::test]
async fn a_coupon_for_three_periods_discounts_three_invoices_before_tax() {
    let served = support::serve(CATALOG).await;
    let launch = json!({"code": "LAUNCH20", "name": "Launch offer",
        "discount": {"type": "percent", "rate": "0.2"},
        "duration": {"every": "periods", "count": 3}});
    let (s, made) = served
        .call("POST", "/v1/coupons".into(), launch.clone())
        .await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["created_by"], "admin");
    let (s, again) = served.call("POST", "/v1/coupons".into(), launch).await;
    assert_eq!(s, 409, "{again}");
    for (bad, says) in [
        (
            json!({"code": "X", "name": "x", "discount": {"type": "percent", "rate": "1.5"}, "duration": {"every": "once"}}),
            "a percentage is a fraction",
        ),
        (
            json!({"code": "has space", "name": "x", "discount": {"type": "percent", "rate": "0.1"}, "duration": {"every": "once"}}),
            "coupon code",
        ),
        (
            json!({"code": "Y", "name": "x", "discount": {"type": "percent", "rate": "0.1"}, "duration": {"every": "once"}, "plans": ["nope"]}),
            "no plan \"nope\"",
        ),
    ] {
        let (s, e) = served.call("POST", "/v1/coupons".into(), bad).await;
        assert_eq!(s, 400, "{e}");
        assert!(e["detail"].as_str().unwrap().contains(says), "{e}");
    }

    // A partner on the plan for five months, the coupon attached four months ago (both set
    // through the store: the API attaches now).
    let (_, partner) = served
        .call(
            "POST",
            "/v1/partners".into(),
            json!({"name": "Initech", "plan": "monthly"}),
        )
        .await;
    let pid = partner["id"].as_str().unwrap().to_string();
    served.on_plan_since(&partner, month_start(5)).await;
    served
        .store
        .attach_coupon(
            &"pcp_00000000000000000001".parse().unwrap(),
            &pid.parse().unwrap(),
            "LAUNCH20",
            month_start(4) + chrono::Duration::days(10),
            "test",
        )
        .await
        .unwrap();

    // Periods 4, 3 and 2 months back carry -20.00 (20 % of 100.00) and VAT on 80.00; the one
    // before and the one after do not.
    for (back, discounted) in [(5, false), (4, true), (3, true), (2, true), (1, false)] {
        let label = month_start(back).format("%Y-%m").to_string();
        let entry = served.invoice_of_period(&label, &pid).await;
        let inv = &entry["invoice"];
        let discount: Vec<&Value> = inv["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["kind"] == "discount")
            .collect();
        if back == 4 {
            // Finalized, its PDF shows the discount line like any other.
            let id = entry["id"].as_str().unwrap();
            let (s, fin) = served
                .call("POST", format!("/v1/invoices/{id}/finalize"), Value::Null)
                .await;
            assert_eq!(s, 200, "{fin}");
            let (_, _, pdf) = served.raw(format!("/v1/invoices/{id}?format=pdf")).await;
            assert!(pdf.starts_with(b"%PDF-"), "not a PDF");
            // To look at it: PEAGE_PDF_OUT=/tmp/coupon.pdf, then `pdftoppm -png` it.
            if let Ok(path) = std::env::var("PEAGE_PDF_OUT") {
                std::fs::write(path, &pdf).unwrap();
            }
        }
        if discounted {
            assert_eq!(discount.len(), 1, "{label}: {inv}");
            assert_eq!(discount[0]["amount"], "-20.00");
            assert_eq!(discount[0]["description"], "coupon LAUNCH20 (20 %)");
            assert_eq!(
                (inv["subtotal"].as_str(), inv["total"].as_str()),
                (Some("80.00"), Some("96.00")),
                "{label}"
            );
        } else {
            assert!(discount.is_empty(), "{label}: {inv}");
            assert_eq!(inv["total"], "120.00", "{label}");
        }
    }

    // Attached through the API: now, so this period's upcoming invoice takes it.
    let (_, other) = served
        .call(
            "POST",
            "/v1/partners".into(),
            json!({"name": "Hooli", "plan": "monthly"}),
        )
        .await;
    let oid = other["id"].as_str().unwrap().to_string();
    let five_eur = json!({"code": "FIVE", "name": "5 off", "discount": {"type": "amount", "amount": "5", "currency": "EUR"}, "duration": {"every": "once"}});
    assert_eq!(
        served.call("POST", "/v1/coupons".into(), five_eur).await.0,
        201
    );
    let five_usd = json!({"code": "FIVEUSD", "name": "5 off", "discount": {"type": "amount", "amount": "5", "currency": "USD"}, "duration": {"every": "forever"}});
    assert_eq!(
        served.call("POST", "/v1/coupons".into(), five_usd).await.0,
        201
    );
    let expired = json!({"code": "OLD", "name": "old", "discount": {"type": "percent", "rate": "0.5"}, "duration": {"every": "once"}, "expires_at": "2020-01-01T00:00:00Z"});
    assert_eq!(
        served.call("POST", "/v1/coupons".into(), expired).await.0,
        201
    );
    let attach = |code: &str| {
        served.call(
            "POST",
            format!("/v1/partners/{oid}/coupons"),
            json!({"code": code}),
        )
    };
    let (s, a) = attach("FIVE").await;
    assert_eq!(s, 201, "{a}");
    let (s, e) = attach("FIVE").await;
    assert_eq!(s, 409, "attached once at a time: {e}");
    for (code, says) in [("FIVEUSD", "is in USD"), ("OLD", "expired")] {
        let (s, e) = attach(code).await;
        assert_eq!(s, 409, "{e}");
        assert!(e["detail"].as_str().unwrap().contains(says), "{e}");
    }
    assert_eq!(attach("NOPE").await.0, 404);
    let (_, up) = served
        .call(
            "GET",
            format!("/v1/partners/{oid}/invoices/upcoming"),
            Value::Null,
        )
        .await;
    let lines = up["invoice"]["lines"].as_array().unwrap();
    let d = lines.iter().find(|l| l["kind"] == "discount").unwrap();
    assert_eq!(d["amount"], "-5.00", "{up}");
    // Removed, it discounts nothing more; the list keeps it, removed.
    let id = a["id"].as_str().unwrap();
    let (s, removed) = served
        .call(
            "DELETE",
            format!("/v1/partners/{oid}/coupons/{id}"),
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{removed}");
    assert!(removed["removed_at"].is_string());
    assert_eq!(
        served
            .call(
                "DELETE",
                format!("/v1/partners/{oid}/coupons/{id}"),
                Value::Null
            )
            .await
            .0,
        409
    );
    let (_, up) = served
        .call(
            "GET",
            format!("/v1/partners/{oid}/invoices/upcoming"),
            Value::Null,
        )
        .await;
    assert!(
        up["invoice"]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["kind"] != "discount"),
        "{up}"
    );
    let (_, listed) = served
        .call("GET", format!("/v1/partners/{oid}/coupons"), Value::Null)
        .await;
    assert_eq!(listed["coupons"].as_array().unwrap().len(), 1, "{listed}");
    let (_, all) = served.call("GET", "/v1/coupons".into(), Value::Null).await;
    assert_eq!(all["coupons"].as_array().unwrap().len(), 4, "{all}");
}
