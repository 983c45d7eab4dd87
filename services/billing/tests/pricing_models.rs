//! The charge models through the real control API on the embedded stores: a catalog, usage
//! events posted to `POST /v1/events`, and the upcoming invoice, for each published worked
//! example (docs/pricing.md).

use chrono::Utc;
use serde_json::{json, Value};

mod support;
use support::month_start;

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

[[meter]]
name = "transfers"
event_type = "com.example.transfer"
aggregation = "sum"
value = "amount"

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
  # Lago's per-transaction minimum and maximum: 1 % + $0.50, held between $1 and $5.
  { meter = "transfers", model = "percentage", rate = "0.01", fixed_fee = "0.50", min_per_event = "1", max_per_event = "5" },
]
"#;

#[tokio::test]
async fn lagos_worked_examples_price_through_the_control_api() {
    let served = support::serve(CATALOG).await;
    served.store_events_directly();
    let (pid, _) = served
        .create_partner(json!({"name": "Payco", "plan": "fintech", "external_id": "payco"}))
        .await;
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
    let mut batch = batch;
    for (id, amount) in [("t1", 20), ("t2", 600)] {
        batch.as_array_mut().unwrap().push(event(
            id,
            "com.example.transfer",
            json!({"amount": amount}),
        ));
    }
    let (s, out) = served.call("POST", "/v1/events".into(), batch).await;
    assert_eq!((s, out["accepted"].as_u64()), (200, Some(13)), "{out}");

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
    // Per-transaction minimum and maximum: $20 → 0.70 raised to $1, $600 → 6.50 lowered to $5;
    // 6.20 + 1.00 − 1.20 = $6.
    assert_eq!(amount("transfers: 1 % of the amount"), "6.20");
    assert_eq!(amount("transfers: fixed fee per event"), "1.00");
    assert_eq!(
        amount("transfers: each event held to its minimum 1, maximum 5"),
        "-1.20"
    );
    assert_eq!(up["invoice"]["total"], "659.72", "{up}");
}

const CARRIED: &str = r#"
[[meter]]
name = "storage"
event_type = "com.example.storage"
aggregation = "weighted_sum"
value = "gb"

[[meter]]
name = "seats"
event_type = "com.example.seats"
aggregation = "latest"
value = "seats"
recurring = true

[[meter]]
name = "members"
event_type = "com.example.members"
aggregation = "unique_count"
value = "user"
recurring = true

[[plan]]
id = "team"
name = "Team"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [
  # GB·seconds: 0.000001 € each (2.592 € a GB for a 30-day month).
  { meter = "storage", model = "per_unit", unit_price = "0.000001" },
  { meter = "seats", model = "per_unit", unit_price = "10" },
  { meter = "members", model = "per_unit", unit_price = "4" },
]
"#;

#[tokio::test]
async fn storage_gauges_seats_and_members_carry_from_one_period_to_the_next() {
    use peage_usage_store::UsageStore;
    let served = support::serve(CARRIED).await;
    served.store_events_directly();
    let (pid, partner) = served
        .create_partner(json!({"name": "Hooli", "plan": "team", "external_id": "hooli"}))
        .await;
    served.on_plan_since(&partner, month_start(3)).await;
    let day = chrono::Duration::days(1);
    let event = |id: &str, kind: &str, at: chrono::DateTime<Utc>, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "/hooli", "type": kind,
               "subject": "hooli", "time": at.to_rfc3339(), "data": data})
    };
    // Months back, beyond the events API's backfill window: stored as the aggregator would.
    let past = [
        event(
            "s1",
            "com.example.storage",
            month_start(3) + day * 10,
            json!({"gb": 100}),
        ),
        event(
            "s2",
            "com.example.storage",
            month_start(2) + day * 15,
            json!({"gb": 40}),
        ),
        event(
            "t1",
            "com.example.seats",
            month_start(3) + day,
            json!({"seats": 5}),
        ),
        event(
            "t2",
            "com.example.seats",
            month_start(3) + day * 19,
            json!({"seats": 8}),
        ),
        event(
            "t3",
            "com.example.seats",
            month_start(1) + day * 4,
            json!({"seats": 3}),
        ),
        event(
            "m1",
            "com.example.members",
            month_start(3) + day * 2,
            json!({"user": "ann"}),
        ),
        event(
            "m2",
            "com.example.members",
            month_start(3) + day * 3,
            json!({"user": "bob"}),
        ),
        event(
            "m3",
            "com.example.members",
            month_start(2) + day * 9,
            json!({"user": "bob", "operation_type": "remove"}),
        ),
    ];
    let window = peage_core::usage_event::TimeWindow {
        backfill: chrono::TimeDelta::days(3650),
        ahead: chrono::TimeDelta::days(1),
    };
    let logged: Vec<peage_usage_store::LoggedUsageEvent> = past
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let raw = serde_json::value::RawValue::from_string(e.to_string()).unwrap();
            peage_usage_store::LoggedUsageEvent {
                partition: 1,
                offset: i as u64,
                event: peage_core::usage_event::parse_cloud_event(&raw)
                    .unwrap()
                    .into_usage_event(&pid, Utc::now(), &window)
                    .unwrap(),
            }
        })
        .collect();
    served
        .usage
        .insert_usage_events("past", &logged)
        .await
        .unwrap();

    let days = |back: i32| (month_start(back - 1) - month_start(back)).num_days();
    let lines_of = |inv: &Value| -> Vec<(String, String, String)> {
        inv["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["description"].as_str().unwrap().to_string(),
                    l["quantity"].as_str().unwrap_or_default().to_string(),
                    l["amount"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let quantity = |inv: &Value, meter: &str| {
        lines_of(inv)
            .into_iter()
            .find(|(d, _, _)| d.starts_with(meter))
            .map(|(_, q, _)| q)
            .unwrap_or_else(|| panic!("no {meter} line in {inv}"))
    };
    // Storage: 100 GB from day 11 of month -3, 40 GB from day 16 of month -2, carried through
    // month -1. Seats: 8 (the last report of -3), carried, then 3. Members: ann and bob; bob
    // still in -2 (removed on day 10); ann alone in -1.
    for (back, storage_gb_days, seats, members) in [
        (3, 100 * (days(3) - 10), "8", "2"),
        (2, 100 * 15 + 40 * (days(2) - 15), "8", "2"),
        (1, 40 * days(1), "3", "1"),
    ] {
        let label = month_start(back).format("%Y-%m").to_string();
        let entry = served.invoice_of_period(&label, &pid).await;
        let inv = &entry["invoice"];
        let gb_s = storage_gb_days * 86_400;
        assert_eq!(quantity(inv, "storage"), gb_s.to_string(), "{label}: {inv}");
        assert_eq!(quantity(inv, "seats"), seats, "{label}: {inv}");
        assert_eq!(quantity(inv, "members"), members, "{label}: {inv}");
        let want = rust_decimal::Decimal::new(gb_s, 6).round_dp(2)
            + rust_decimal::Decimal::from(seats.parse::<i64>().unwrap() * 10)
            + rust_decimal::Decimal::from(members.parse::<i64>().unwrap() * 4);
        assert_eq!(inv["total"], want.to_string(), "{label}: {inv}");
    }

    // This period, through POST /v1/events: ann leaves now. The upcoming invoice still counts
    // her (present at the start), carries the 3 seats, and weighs the 40 GB until now only.
    let (s, out) = served
        .call(
            "POST",
            "/v1/events".into(),
            json!([event(
                "m4",
                "com.example.members",
                Utc::now(),
                json!({"user": "ann", "operation_type": "remove"})
            )]),
        )
        .await;
    assert_eq!((s, out["accepted"].as_u64()), (200, Some(1)), "{out}");
    let before = Utc::now();
    let (s, up) = served
        .call(
            "GET",
            format!("/v1/partners/{pid}/invoices/upcoming"),
            Value::Null,
        )
        .await;
    assert_eq!(s, 200, "{up}");
    let inv = &up["invoice"];
    assert_eq!(quantity(inv, "seats"), "3", "{inv}");
    assert_eq!(quantity(inv, "members"), "1", "{inv}");
    let gb_s: rust_decimal::Decimal = quantity(inv, "storage").parse().unwrap();
    let elapsed = |t: chrono::DateTime<Utc>| {
        rust_decimal::Decimal::from((t - month_start(0)).num_microseconds().unwrap())
            * rust_decimal::Decimal::new(40, 6)
    };
    assert!(
        gb_s >= elapsed(before - chrono::Duration::seconds(5)) && gb_s <= elapsed(Utc::now()),
        "40 GB until now, not the period's end: {gb_s}"
    );
}
