//! Getting paid through the control API on the embedded stores: due dates from payment terms,
//! partial payments, `paid`, `overdue` and `uncollectible`, each webhook once, and the refusals
//! finance needs (a draft, too much, a void after a payment).

use chrono::{Duration, Utc};
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
net_days = 15
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.01" }]
"#;

#[tokio::test]
async fn payments_settle_invoices_and_overdue_ones_are_reported_once() {
    let served = support::serve(CATALOG).await;
    let (s, hook) = served
        .call(
            "POST",
            "/v1/webhooks".into(),
            json!({"url": "https://hooks.example.com/peage", "events": ["invoice.paid", "invoice.overdue"]}),
        )
        .await;
    assert_eq!(s, 201, "{hook}");
    let label = month_start(1).format("%Y-%m").to_string();
    let mut invoices = Vec::new();
    for name in ["Initech", "Globex", "Umbrella"] {
        let (pid, partner) = served
            .create_partner(json!({"name": name, "plan": "monthly"}))
            .await;
        served.on_plan_since(&partner, month_start(1)).await;
        invoices.push((pid, String::new()));
    }
    // Globex pays on receipt (net 0): due as soon as it is finalized.
    let (s, profile) = served
        .call(
            "PUT",
            format!("/v1/partners/{}/billing", invoices[1].0),
            json!({"timezone": "UTC", "net_days": 0}),
        )
        .await;
    assert_eq!(s, 200, "{profile}");
    for (pid, id) in &mut invoices {
        let entry = served.invoice_of_period(&label, pid).await;
        assert_eq!(entry["state"], "draft", "{entry}");
        *id = entry["id"].as_str().unwrap().to_string();
    }
    let pay =
        |id: &str, body: Value| served.call("POST", format!("/v1/invoices/{id}/payments"), body);
    let (initech, globex, umbrella) = (&invoices[0].1, &invoices[1].1, &invoices[2].1);

    // A draft takes no payment.
    let (s, e) = pay(initech, json!({"amount": "10", "reference": "x"})).await;
    assert_eq!(s, 409, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("is draft"), "{e}");

    // Finalized: open, due 15 days later (the plan's terms).
    let (s, fin) = served
        .call(
            "POST",
            format!("/v1/invoices/{initech}/finalize"),
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{fin}");
    assert_eq!(fin["state"], "open", "{fin}");
    let finalized: chrono::DateTime<Utc> = fin["finalized_at"].as_str().unwrap().parse().unwrap();
    let due: chrono::DateTime<Utc> = fin["payment"]["due_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(due - finalized, Duration::days(15));
    assert_eq!(fin["invoice"]["amount_due"], "120.00");

    for (body, says) in [
        (json!({"amount": "0", "reference": "x"}), "above zero"),
        (json!({"amount": "10.001", "reference": "x"}), "decimals"),
        (
            json!({"amount": "150", "reference": "x"}),
            "more than the 120.00 left due",
        ),
        (json!({"amount": "10", "reference": "  "}), "reference"),
    ] {
        let (s, e) = pay(initech, body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert!(e["detail"].as_str().unwrap().contains(says), "{body}: {e}");
    }

    // A partial payment: still open, 70 left; void is refused from now on.
    let (s, made) = pay(
        initech,
        json!({"amount": "50", "paid_on": "2026-11-20", "reference": "SEPA 0042"}),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["payment"]["paid_on"], "2026-11-20");
    assert_eq!(made["invoice"]["state"], "open");
    assert_eq!(made["invoice"]["payment"]["amount_paid"], "50.00");
    assert_eq!(made["payment"]["amount"], "50.00");
    let (s, e) = served
        .call("POST", format!("/v1/invoices/{initech}/void"), Value::Null)
        .await;
    assert_eq!(s, 409, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("credit note"), "{e}");
    // The rest: paid.
    let (s, made) = pay(
        initech,
        json!({"amount": "70.00", "reference": "SEPA 0043"}),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["invoice"]["state"], "paid", "{made}");
    assert!(made["invoice"]["payment"]["paid_at"].is_string());
    let (s, e) = pay(initech, json!({"amount": "1", "reference": "x"})).await;
    assert_eq!(s, 409, "{e}");
    let (s, list) = served
        .call(
            "GET",
            format!("/v1/invoices/{initech}/payments"),
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(
        (
            list["amount_paid"].as_str(),
            list["left_due"].as_str(),
            list["state"].as_str()
        ),
        (Some("120.00"), Some("0.00"), Some("paid")),
        "{list}"
    );
    assert_eq!(list["payments"].as_array().unwrap().len(), 2);
    let (s, ct, csv) = served
        .raw(format!("/v1/invoices/{initech}/payments?format=csv"))
        .await;
    assert_eq!((s, ct.as_str()), (200, "text/csv; charset=utf-8"));
    let csv = String::from_utf8(csv).unwrap();
    assert!(
        csv.starts_with("payment_id,invoice_id,partner_id,amount,"),
        "{csv}"
    );
    assert!(csv.contains(",50.00,EUR,2026-11-20,SEPA 0042,"), "{csv}");
    let (s, e) = served
        .call(
            "POST",
            format!("/v1/invoices/{initech}/mark-uncollectible"),
            Value::Null,
        )
        .await;
    assert_eq!(s, 409, "{e}");

    // Globex: due on finalization, so overdue at once; the scan reports it once.
    let (_, fin) = served
        .call(
            "POST",
            format!("/v1/invoices/{globex}/finalize"),
            Value::Null,
        )
        .await;
    assert_eq!(fin["state"], "overdue", "{fin}");
    let marked = served.api.billing.mark_overdue(Utc::now()).await.unwrap();
    assert_eq!(marked.len(), 1);
    assert_eq!(&marked[0].id, globex);
    assert!(served
        .api
        .billing
        .mark_overdue(Utc::now())
        .await
        .unwrap()
        .is_empty());
    // Written off: no more payments.
    let (s, off) = served
        .call(
            "POST",
            format!("/v1/invoices/{globex}/mark-uncollectible"),
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{off}");
    assert_eq!(off["state"], "uncollectible");
    let (s, _) = pay(globex, json!({"amount": "1", "reference": "x"})).await;
    assert_eq!(s, 409);

    // Umbrella: a credit note for the whole amount settles it.
    served
        .call(
            "POST",
            format!("/v1/invoices/{umbrella}/finalize"),
            Value::Null,
        )
        .await;
    let (s, note) = served
        .call(
            "POST",
            format!("/v1/invoices/{umbrella}/credit-notes"),
            json!({"reason": "goodwill", "method": "credit", "amount": "100.00"}),
        )
        .await;
    assert_eq!(s, 201, "{note}");
    let (_, inv) = served
        .call("GET", format!("/v1/invoices/{umbrella}"), Value::Null)
        .await;
    assert_eq!(inv["state"], "paid", "{inv}");
    assert_eq!(inv["payment"]["amount_credited"], "120.00");

    // Each webhook once: Initech's and Umbrella's invoice.paid, Globex's invoice.overdue.
    let (_, deliveries) = served
        .call("GET", "/v1/webhooks/deliveries".into(), Value::Null)
        .await;
    let mut kinds: Vec<(String, String)> = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let payload: Value = serde_json::from_str(d["payload"].as_str().unwrap()).unwrap();
            (
                d["event_type"].as_str().unwrap().to_string(),
                payload["data"]["invoice_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    kinds.sort();
    let mut want = vec![
        ("invoice.overdue".to_string(), globex.clone()),
        ("invoice.paid".to_string(), initech.clone()),
        ("invoice.paid".to_string(), umbrella.clone()),
    ];
    want.sort();
    assert_eq!(kinds, want, "{deliveries}");
}

#[tokio::test]
async fn concurrent_payments_never_pay_more_than_is_due() {
    let served = support::serve(CATALOG).await;
    let (pid, partner) = served
        .create_partner(json!({"name": "Initech", "plan": "monthly"}))
        .await;
    served.on_plan_since(&partner, month_start(1)).await;
    let label = month_start(1).format("%Y-%m").to_string();
    let id = served.invoice_of_period(&label, &pid).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    served
        .call("POST", format!("/v1/invoices/{id}/finalize"), Value::Null)
        .await;
    // Ten payments of 20 against 120 due: six pass, four are refused.
    let answers = futures::future::join_all((0..10).map(|i| {
        served.call(
            "POST",
            format!("/v1/invoices/{id}/payments"),
            json!({"amount": "20", "reference": format!("card {i}")}),
        )
    }))
    .await;
    let passed = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(passed, 6, "{answers:?}");
    assert!(answers
        .iter()
        .all(|(s, _)| *s == 201 || *s == 400 || *s == 409));
    let (_, list) = served
        .call("GET", format!("/v1/invoices/{id}/payments"), Value::Null)
        .await;
    assert_eq!(list["amount_paid"], "120.00", "{list}");
    assert_eq!(list["state"], "paid");
}

#[tokio::test]
async fn drafts_finalize_by_themselves_once_their_grace_period_is_over() {
    use peage_billing::service::auto_finalize::AutoFinalize;
    let served = support::serve(CATALOG).await;
    served.api.billing.set_instance("b1");
    let (pid, partner) = served
        .create_partner(json!({"name": "Initech", "plan": "monthly"}))
        .await;
    served.on_plan_since(&partner, month_start(1)).await;
    let lease = Duration::minutes(5);
    let now = Utc::now();
    // Finance ran last month's invoices; it ended less than a grace period ago: the draft
    // stays a draft.
    let label = month_start(1).format("%Y-%m").to_string();
    let draft = served.invoice_of_period(&label, &pid).await;
    assert_eq!(draft["state"], "draft", "{draft}");
    let grace = now - month_start(0) + Duration::hours(1);
    let pass = served
        .api
        .billing
        .auto_finalize(now, AutoFinalize { grace, lease })
        .await
        .unwrap();
    assert!(pass.leader && pass.finalized.is_empty(), "{pass:?}");
    let (_, list) = served
        .call(
            "GET",
            format!("/v1/invoices?period={label}&partner_id={pid}"),
            Value::Null,
        )
        .await;
    assert_eq!(list["invoices"][0]["state"], "draft", "{list}");
    // Another instance is not the leader while b1's lease runs.
    served.api.billing.set_instance("b2");
    let other = served
        .api
        .billing
        .auto_finalize(
            now,
            AutoFinalize {
                grace: Duration::zero(),
                lease,
            },
        )
        .await
        .unwrap();
    assert!(!other.leader && other.finalized.is_empty(), "{other:?}");
    // Past the grace period: finalized by the scheduler, once.
    served.api.billing.set_instance("b1");
    let grace = now - month_start(0) - Duration::minutes(1);
    let pass = served
        .api
        .billing
        .auto_finalize(now, AutoFinalize { grace, lease })
        .await
        .unwrap();
    assert_eq!(pass.finalized.len(), 1, "{pass:?}");
    assert_eq!(
        pass.refreshed, 1,
        "last month's draft refreshed first: {pass:?}"
    );
    let again = served
        .api
        .billing
        .auto_finalize(now, AutoFinalize { grace, lease })
        .await
        .unwrap();
    assert!(again.finalized.is_empty(), "{again:?}");
    let (_, inv) = served
        .call(
            "GET",
            format!("/v1/invoices/{}", pass.finalized[0]),
            Value::Null,
        )
        .await;
    assert_eq!(inv["status"], "finalized", "{inv}");
    assert_eq!(inv["finalized_by"], "scheduler:b1");
    assert!(inv["payment"]["due_at"].is_string());
}

#[tokio::test]
async fn finance_finalizes_a_whole_period_at_once() {
    let served = support::serve(CATALOG).await;
    for name in ["Initech", "Globex"] {
        let (_, partner) = served
            .create_partner(json!({"name": name, "plan": "monthly"}))
            .await;
        served.on_plan_since(&partner, month_start(1)).await;
    }
    let last = month_start(1).format("%Y-%m").to_string();
    let this = month_start(0).format("%Y-%m").to_string();
    for label in [&last, &this] {
        let (s, run) = served
            .call(
                "POST",
                "/v1/invoices/run".into(),
                json!({ "period": label }),
            )
            .await;
        assert_eq!(s, 200, "{run}");
    }
    let (s, done) = served
        .call(
            "POST",
            "/v1/invoices/finalize".into(),
            json!({ "period": last }),
        )
        .await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["finalized"].as_array().unwrap().len(), 2, "{done}");
    // The running month's drafts are counted and left.
    let (_, done) = served
        .call(
            "POST",
            "/v1/invoices/finalize".into(),
            json!({ "period": this }),
        )
        .await;
    assert_eq!(
        (
            done["finalized"].as_array().unwrap().len(),
            done["not_over"].as_u64()
        ),
        (0, Some(2)),
        "{done}"
    );
    let (s, e) = served
        .call(
            "POST",
            "/v1/invoices/finalize".into(),
            json!({ "period": "2026-13" }),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    // A void invoice takes no payment and is not written off: 409 with the reason, never a 500.
    let (_, list) = served
        .call("GET", format!("/v1/invoices?period={this}"), Value::Null)
        .await;
    let id = list["invoices"][0]["id"].as_str().unwrap().to_string();
    let (s, _) = served
        .call("POST", format!("/v1/invoices/{id}/void"), Value::Null)
        .await;
    assert_eq!(s, 200);
    for (path, body) in [
        ("payments", json!({"amount": "1", "reference": "x"})),
        ("mark-uncollectible", Value::Null),
    ] {
        let (s, e) = served
            .call("POST", format!("/v1/invoices/{id}/{path}"), body)
            .await;
        assert_eq!(s, 409, "{path}: {e}");
        assert!(
            e["detail"].as_str().unwrap().contains("void"),
            "{path}: {e}"
        );
    }
}
