//! Spend and usage alerts through the control API on the embedded stores: rules checked, each
//! threshold notified once per period (by two checks at once too), by webhook and in the
//! alert list; and the period's forecast, which stops at a hard quota.

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
base_fee = "0"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.10" }]

[[plan]]
id = "capped"
name = "Capped"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.10" }]
quotas = [{ meter = "calls", limit = 150, kind = "hard" }]
"#;

/// When this test's calls happen: this period, before now.
fn this_period() -> chrono::DateTime<Utc> {
    month_start(0).max(Utc::now() - Duration::hours(2))
}

#[tokio::test]
async fn each_threshold_is_notified_once_per_period() {
    let served = support::serve(CATALOG).await;
    let (s, hook) = served
        .call(
            "POST",
            "/v1/webhooks".into(),
            json!({"url": "https://hooks.example.com/peage", "events": ["alert.triggered"]}),
        )
        .await;
    assert_eq!(s, 201, "{hook}");
    let (pid, partner) = served
        .create_partner(json!({"name": "Initech", "plan": "payg"}))
        .await;
    served.on_plan_since(&partner, month_start(0)).await;
    let alerts = format!("/v1/partners/{pid}/alerts");

    for (body, says) in [
        (json!({"metric": "spend", "budget": "0"}), "budget"),
        (
            json!({"metric": "usage", "budget": "10"}),
            "names its meter",
        ),
        (
            json!({"metric": "usage", "meter": "tokens", "budget": "10"}),
            "no meter \"tokens\"",
        ),
        (
            json!({"metric": "spend", "budget": "10", "thresholds": [50, 50]}),
            "twice",
        ),
        (
            json!({"metric": "spend", "budget": "10", "thresholds": [1001]}),
            "between 1 and 1000",
        ),
    ] {
        let (s, e) = served.call("POST", alerts.clone(), body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert!(e["detail"].as_str().unwrap().contains(says), "{body}: {e}");
    }
    // A spend budget of 10 € at 50, 80 and 100 % (the default), and 100 calls at 100 %.
    let (s, spend) = served
        .call(
            "POST",
            alerts.clone(),
            json!({"metric": "spend", "budget": "10.00"}),
        )
        .await;
    assert_eq!(s, 201, "{spend}");
    assert_eq!(spend["thresholds"], json!([50, 80, 100]));
    let (s, usage) = served
        .call(
            "POST",
            alerts.clone(),
            json!({"metric": "usage", "meter": "calls", "budget": "100", "thresholds": [100]}),
        )
        .await;
    assert_eq!(s, 201, "{usage}");
    let (spend_id, usage_id) = (spend["id"].as_str().unwrap(), usage["id"].as_str().unwrap());

    let billing = &served.api.billing;
    let mut made = 0;
    let mut add = |n: usize| {
        let at = this_period() + Duration::seconds(made as i64);
        made += n;
        let usage = served.usage.clone();
        let pid = pid.clone();
        async move { usage.insert(&calls(&pid, at, n)).await.unwrap() }
    };
    // 60 calls: 6.00 €, past 50 % of the budget only; once however often it is checked.
    add(60).await;
    let checked = billing.check_alerts(Utc::now()).await.unwrap();
    assert_eq!((checked.partners, checked.notified), (1, 1), "{checked:?}");
    let checked = billing.check_alerts(Utc::now()).await.unwrap();
    assert_eq!(checked.notified, 0, "{checked:?}");
    // 90 calls: 80 %.
    add(30).await;
    assert_eq!(billing.check_alerts(Utc::now()).await.unwrap().notified, 1);
    // 110 calls: 100 % of both; two billing passes at once notify each once.
    add(20).await;
    let (a, b) = tokio::join!(
        billing.check_alerts(Utc::now()),
        billing.check_alerts(Utc::now())
    );
    assert_eq!(a.unwrap().notified + b.unwrap().notified, 2);
    // Nothing left to reach this period: the partner is not even evaluated.
    let checked = billing.check_alerts(Utc::now()).await.unwrap();
    assert_eq!((checked.partners, checked.notified), (0, 0), "{checked:?}");

    let (s, list) = served.call("GET", alerts.clone(), Value::Null).await;
    assert_eq!(s, 200, "{list}");
    let state = |id: &str| {
        list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap()
            .clone()
    };
    let s_state = state(spend_id);
    assert_eq!(
        (&s_state["value"], &s_state["unit"]),
        (&json!("11.00"), &json!("EUR"))
    );
    let reached: Vec<u64> = s_state["reached"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["threshold"].as_u64().unwrap())
        .collect();
    assert_eq!(reached, [100, 80, 50], "{s_state}");
    assert_eq!(s_state["reached"][2]["level"], "5.00");
    assert_eq!(s_state["reached"][2]["value"], "6.00");
    let u_state = state(usage_id);
    assert_eq!(
        (&u_state["value"], &u_state["unit"]),
        (&json!("110"), &json!("calls"))
    );
    assert_eq!(u_state["reached"].as_array().unwrap().len(), 1, "{u_state}");

    // One webhook a threshold reached.
    let (_, deliveries) = served
        .call("GET", "/v1/webhooks/deliveries".into(), Value::Null)
        .await;
    let mut sent: Vec<(String, u64)> = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["event_type"], "alert.triggered");
            let p: Value = serde_json::from_str(d["payload"].as_str().unwrap()).unwrap();
            (
                p["data"]["alert_id"].as_str().unwrap().to_string(),
                p["data"]["threshold"].as_u64().unwrap(),
            )
        })
        .collect();
    sent.sort();
    let mut want = vec![
        (spend_id.to_string(), 50),
        (spend_id.to_string(), 80),
        (spend_id.to_string(), 100),
        (usage_id.to_string(), 100),
    ];
    want.sort();
    assert_eq!(sent, want, "{deliveries}");

    // Deleted: listed no more, notifies no more.
    let (s, _) = served
        .call("DELETE", format!("{alerts}/{spend_id}"), Value::Null)
        .await;
    assert_eq!(s, 204);
    let (s, _) = served
        .call("DELETE", format!("{alerts}/{spend_id}"), Value::Null)
        .await;
    assert_eq!(s, 404);
    let (_, list) = served.call("GET", alerts.clone(), Value::Null).await;
    assert_eq!(list["alerts"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn the_forecast_grows_with_the_time_left_and_stops_at_a_hard_quota() {
    let served = support::serve(CATALOG).await;
    let now = Utc::now();
    let period = (month_start(0), month_start(-1));
    let elapsed = (now - period.0).num_milliseconds() as f64
        / (period.1 - period.0).num_milliseconds() as f64;
    let mut quantities = Vec::new();
    for plan in ["payg", "capped"] {
        let (pid, partner) = served
            .create_partner(json!({"name": plan, "plan": plan}))
            .await;
        served.on_plan_since(&partner, month_start(0)).await;
        served
            .usage
            .insert(&calls(&pid, this_period(), 120))
            .await
            .unwrap();
        let (s, f) = served
            .call(
                "GET",
                format!("/v1/partners/{pid}/invoices/forecast"),
                Value::Null,
            )
            .await;
        assert_eq!(s, 200, "{f}");
        assert_eq!(f["id"], "forecast");
        let line = &f["invoice"]["lines"].as_array().unwrap()[0];
        let q: f64 = line["quantity"].as_str().unwrap().parse().unwrap();
        quantities.push(q);
        let (_, up) = served
            .call(
                "GET",
                format!("/v1/partners/{pid}/invoices/upcoming"),
                Value::Null,
            )
            .await;
        assert_eq!(up["invoice"]["lines"][0]["quantity"], "120", "{up}");
    }
    // At the pace so far, 120 calls become 120 / elapsed (to the nearest call)…
    let pace = (120.0 / elapsed).round();
    assert!(
        (quantities[0] - pace).abs() <= 1.0,
        "{quantities:?} vs {pace}"
    );
    // …but never more than the hard quota lets through.
    assert_eq!(quantities[1], pace.min(150.0), "{quantities:?}");
}
