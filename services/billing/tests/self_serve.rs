//! Self-service plan changes through the control API: the plans a partner may choose, a
//! quote that shows the proration before anything changes, an upgrade at once and prorated,
//! a downgrade scheduled for the period's end, and the plans partners may not choose.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

mod support;
use support::month_start;

const CATALOG: &str = r#"
[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "basic"
name = "Basic"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "10.00"
self_serve = true
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.01" }]

[[plan]]
id = "pro"
name = "Pro"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "50.00"
self_serve = true
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.005" }]

[[plan]]
id = "enterprise"
name = "Enterprise"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "500.00"
"#;

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

fn base_fees(inv: &Value) -> Vec<(String, Decimal)> {
    inv["invoice"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "base_fee")
        .map(|l| {
            (
                l["description"].as_str().unwrap().to_string(),
                dec(&l["amount"]),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_partner_upgrades_at_once_prorated_and_downgrades_at_the_period_end() {
    let served = support::serve(CATALOG).await;
    let (pid, partner) = served
        .create_partner(json!({"name": "Initech", "plan": "basic"}))
        .await;
    served.on_plan_since(&partner, month_start(0)).await;
    let options = format!("/v1/partners/{pid}/plan-options");

    // Pro is an upgrade, at once; Enterprise is not for partners to choose.
    let (s, listed) = served.call("GET", options.clone(), Value::Null).await;
    assert_eq!(s, 200, "{listed}");
    assert_eq!(listed["current"]["id"], "basic");
    let ids: Vec<&str> = listed["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["plan"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["pro"]);
    assert_eq!(listed["options"][0]["direction"], "upgrade");
    let (s, e) = served
        .call("POST", format!("{options}/enterprise/quote"), Value::Null)
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["detail"]
        .as_str()
        .unwrap()
        .contains("not one partners may choose"));

    // The quote: this period cut now, Basic's fee for the time gone, Pro's for the rest.
    let (s, quote) = served
        .call("POST", format!("{options}/pro/quote"), Value::Null)
        .await;
    assert_eq!(s, 200, "{quote}");
    assert_eq!(quote["direction"], "upgrade");
    let at: DateTime<Utc> = quote["effective_at"].as_str().unwrap().parse().unwrap();
    assert!((Utc::now() - at).num_seconds().abs() < 5, "{quote}");
    assert_eq!(base_fees(&quote["current"]).len(), 1);
    let fees = base_fees(&quote["with_change"]);
    assert_eq!(fees.len(), 2, "{quote}");
    assert!(
        fees[0].0.starts_with("Basic: base fee, prorated"),
        "{fees:?}"
    );
    assert!(fees[1].0.starts_with("Pro: base fee, prorated"), "{fees:?}");
    let (start, end) = (month_start(0), month_start(-1));
    let gone =
        Decimal::from((at - start).num_seconds()) / Decimal::from((end - start).num_seconds());
    let want_basic = (Decimal::from(10) * gone).round_dp(2);
    let want_pro = (Decimal::from(50) * (Decimal::ONE - gone)).round_dp(2);
    assert!(
        (fees[0].1 - want_basic).abs() <= Decimal::new(1, 2),
        "{fees:?} vs {want_basic}"
    );
    assert!(
        (fees[1].1 - want_pro).abs() <= Decimal::new(1, 2),
        "{fees:?} vs {want_pro}"
    );
    // Nothing changed yet.
    let (_, p) = served
        .call("GET", format!("/v1/partners/{pid}"), Value::Null)
        .await;
    assert_eq!(p["subscription"]["plan_id"], "basic");

    // Confirmed: on Pro now, and the period's draft is what the quote said.
    let (s, moved) = served
        .call("POST", format!("{options}/pro"), Value::Null)
        .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["subscription"]["plan_id"], "pro");
    let (_, upcoming) = served
        .call(
            "GET",
            format!("/v1/partners/{pid}/invoices/upcoming"),
            Value::Null,
        )
        .await;
    let now_fees = base_fees(&upcoming);
    assert_eq!(now_fees.len(), 2, "{upcoming}");
    for (q, u) in fees.iter().zip(&now_fees) {
        assert!(
            (q.1 - u.1).abs() <= Decimal::new(1, 2),
            "{fees:?} vs {now_fees:?}"
        );
    }

    // Back to Basic is a downgrade: it waits for the period's end.
    let (_, listed) = served.call("GET", options.clone(), Value::Null).await;
    assert_eq!(listed["options"][0]["direction"], "downgrade");
    let (s, quote) = served
        .call("POST", format!("{options}/basic/quote"), Value::Null)
        .await;
    assert_eq!(s, 200, "{quote}");
    let at: DateTime<Utc> = quote["effective_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(at, end);
    assert_eq!(
        quote["with_change"]["invoice"]["total"],
        quote["current"]["invoice"]["total"]
    );
    let (s, moved) = served
        .call("POST", format!("{options}/basic"), Value::Null)
        .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["subscription"]["plan_id"], "pro");
    assert_eq!(moved["pending_change"]["plan_id"], "basic");
    let pending: DateTime<Utc> = moved["pending_change"]["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pending, end);
    // Its own plan again is refused.
    let (s, e) = served
        .call("POST", format!("{options}/pro"), Value::Null)
        .await;
    assert_eq!(s, 409, "{e}");
}

#[tokio::test]
async fn billing_details_are_printed_on_invoices_and_kept_once_finalized() {
    let served = support::serve(CATALOG).await;
    let (pid, partner) = served
        .create_partner(json!({"name": "Initech", "plan": "basic"}))
        .await;
    served.on_plan_since(&partner, month_start(1)).await;
    let details = format!("/v1/partners/{pid}/billing-details");
    for (body, says) in [
        (json!({"email": "nobody"}), "not an email address"),
        (json!({"tax_id": "FR<1>"}), "tax_id"),
        (
            json!({"address": ["1", "2", "3", "4", "5", "6", "7"]}),
            "at most 6 lines",
        ),
        (json!({"phone": "+33"}), "unknown field"),
    ] {
        let (s, e) = served.call("PUT", details.clone(), body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert!(e["detail"].as_str().unwrap().contains(says), "{body}: {e}");
    }
    let (s, set) = served
        .call(
            "PUT",
            details.clone(),
            json!({"legal_name": " Initech SAS ", "address": ["12 rue de Rivoli", "", "75001 Paris"],
                   "tax_id": "FR12345678901", "email": "billing@initech.example"}),
        )
        .await;
    assert_eq!(s, 200, "{set}");
    assert_eq!(set["legal_name"], "Initech SAS");
    assert_eq!(set["address"], json!(["12 rue de Rivoli", "75001 Paris"]));
    // Finance's profile change keeps them.
    let (s, p) = served
        .call(
            "PUT",
            format!("/v1/partners/{pid}/billing"),
            json!({"timezone": "UTC", "net_days": 10}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    let (_, got) = served.call("GET", details.clone(), Value::Null).await;
    assert_eq!(got, set);

    let label = month_start(1).format("%Y-%m").to_string();
    let draft = served.invoice_of_period(&label, &pid).await;
    assert_eq!(draft["invoice"]["bill_to"], set, "{draft}");
    let id = draft["id"].as_str().unwrap().to_string();
    let pdf_text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).to_string();
    let (s, _, pdf) = served.raw(format!("/v1/invoices/{id}?format=pdf")).await;
    assert_eq!(s, 200);
    let text = pdf_text(pdf);
    for shown in [
        "Initech SAS",
        "12 rue de Rivoli",
        "75001 Paris",
        "Tax ID: FR12345678901",
        "billing@initech.example",
    ] {
        assert!(text.contains(shown), "the PDF lacks {shown:?}");
    }
    // Finalized, the invoice keeps the details it was drafted with.
    let (s, _) = served
        .call("POST", format!("/v1/invoices/{id}/finalize"), Value::Null)
        .await;
    assert_eq!(s, 200);
    served
        .call(
            "PUT",
            details.clone(),
            json!({"legal_name": "Initrode Ltd"}),
        )
        .await;
    let (_, _, pdf) = served.raw(format!("/v1/invoices/{id}?format=pdf")).await;
    let text = pdf_text(pdf);
    assert!(
        text.contains("Initech SAS") && !text.contains("Initrode"),
        "a finalized invoice changed"
    );
}
