//! The charge models through the real control API on the embedded stores: a catalog, usage
//! events posted to `POST /v1/events`, and the upcoming invoice, for each published worked
//! example (docs/pricing.md).

use chrono::Utc;
use serde_json::{json, Value};

mod support;

const CATALOG: &str = r#"
[[meter]]
name = "payments"
event_type = "com.example.payment"
aggregation = "sum"
value = "amount"

[[meter]]
name = "llm_cost"
event_type = "com.example.llm"
aggregation = "sum"
value = "price"

[[meter]]
name = "card_volume"
event_type = "com.example.card"
aggregation = "sum"
value = "amount"

[[meter]]
name = "card_payments"
event_type = "com.example.card"
aggregation = "count"

[[meter]]
name = "api_calls"
event_type = "com.example.batch"
aggregation = "sum"
value = "calls"

[[plan]]
id = "fintech"
name = "Fintech"
currency = "USD"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [
  # Lago, "Graduated percentage".
  { meter = "payments", model = "graduated_percentage", tiers = [
      { up_to = 1000, rate = "0.01", flat_fee = "200" },
      { up_to = 10000, rate = "0.02", flat_fee = "300" },
      { up_to = "inf", rate = "0.03", flat_fee = "400" } ] },
  # Lago, "Volume", with the third tier's $10 flat fee.
  { meter = "api_calls", model = "volume", tiers = [
      { up_to = 10000, unit_price = "0.0010" },
      { up_to = 50000, unit_price = "0.0008" },
      { up_to = 100000, unit_price = "0.0006", flat_fee = "10" },
      { up_to = "inf", unit_price = "0.0004" } ] },
  # Lago, "Dynamic": each completion is priced by the model that served it.
  { meter = "llm_cost", model = "dynamic" },
  # Stripe's card pricing as Lago's template has it: 2.9 % + $0.30 per payment.
  { meter = "card_volume", model = "percentage", rate = "0.029", fixed_fee = "0.30", events_meter = "card_payments" },
]
"#;

#[tokio::test]
async fn lagos_worked_examples_price_through_the_control_api() {
    let served = support::serve(CATALOG).await;
    served.store_events_directly();
    let (s, partner) = served
        .call(
            "POST",
            "/v1/partners".into(),
            json!({"name": "Payco", "plan": "fintech", "external_id": "payco"}),
        )
        .await;
    assert_eq!(s, 201, "{partner}");
    let pid = partner["id"].as_str().unwrap().to_string();
    let now = Utc::now().to_rfc3339();
    let event = |id: &str, kind: &str, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "/payco", "type": kind,
               "subject": "payco", "time": now, "data": data})
    };
    // Lago's three transactions, $500 + $550 + $4,000 = $5,050; and 65,000 API calls in two
    // reports.
    let batch = json!([
        event("p1", "com.example.payment", json!({"amount": 500})),
        event("p2", "com.example.payment", json!({"amount": 550})),
        event("p3", "com.example.payment", json!({"amount": 4000})),
        event("c1", "com.example.batch", json!({"calls": 40000})),
        event("c2", "com.example.batch", json!({"calls": 25000})),
        event("k1", "com.example.card", json!({"amount": 100})),
        event("k2", "com.example.card", json!({"amount": 250})),
        event("k3", "com.example.card", json!({"amount": 50})),
        event(
            "l1",
            "com.example.llm",
            json!({"price": 0.0042, "model": "small"})
        ),
        event(
            "l2",
            "com.example.llm",
            json!({"price": 0.0131, "model": "medium"})
        ),
        event(
            "l3",
            "com.example.llm",
            json!({"price": 1.2, "model": "large"})
        ),
    ]);
    let (s, out) = served.call("POST", "/v1/events".into(), batch).await;
    assert_eq!((s, out["accepted"].as_u64()), (200, Some(11)), "{out}");

    let (s, up) = served
        .call(
            "GET",
            format!("/v1/partners/{pid}/invoices/upcoming"),
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{up}");
    let lines: Vec<(String, String)> = up["invoice"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["description"].as_str().unwrap().to_string(),
                l["amount"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // A partner who joined mid-period has the period's dates after each description.
    let amount = |d: &str| {
        lines
            .iter()
            .find(|(desc, _)| desc.starts_with(&format!("{d} (")))
            .unwrap_or_else(|| panic!("no line {d:?} in {lines:?}"))
            .1
            .clone()
    };
    // Graduated percentage: 1,000 × 1 % + $200, 4,050 × 2 % + $300 = $591; tier 3 not reached.
    assert_eq!(amount("payments: tier 1 at 1 % (0 – 1000)"), "10.00");
    assert_eq!(amount("payments: tier 1 flat fee"), "200.00");
    assert_eq!(amount("payments: tier 2 at 2 % (1000 – 10000)"), "81.00");
    assert_eq!(amount("payments: tier 2 flat fee"), "300.00");
    assert!(!lines.iter().any(|(d, _)| d.starts_with("payments: tier 3")));
    // Volume: 65,000 × $0.0006 + $10 = $49.
    assert_eq!(amount("api_calls: volume tier 3 (up to 100000)"), "39.00");
    assert_eq!(amount("api_calls: tier 3 flat fee"), "10.00");
    // Dynamic: 0.0042 + 0.0131 + 1.2 = 1.2173, summed exactly, rounded once.
    assert_eq!(amount("llm_cost: priced by each event"), "1.22");
    // Percentage: 2.9 % of $400 + 3 × $0.30 = 11.60 + 0.90.
    assert_eq!(amount("card_volume: 2.9 % of the amount"), "11.60");
    assert_eq!(amount("card_volume: fixed fee per event"), "0.90");
    assert_eq!(up["invoice"]["total"], "653.72", "{up}");
}
