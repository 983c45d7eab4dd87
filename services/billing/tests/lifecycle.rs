//! The invoice lifecycle through the control API, on the embedded stores: an idempotent run,
//! finalization with gapless numbers and credits, a finalized invoice no API can change, late
//! usage landing as an adjustment on the next invoice, exports, and a signed webhook received by
//! a real HTTP endpoint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use chrono::{TimeZone, Utc};
use peage_usage_store::UsageStore;
use rust_decimal::Decimal;
use serde_json::{json, Value};

const CATALOG: &str = r#"
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
id = "growth"
name = "Growth"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "49.00"
tax = { rate = "0.20", label = "VAT" }
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.01" }]

[[plan]]
id = "scale"
name = "Scale"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "99.00"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.005" }]

[[plan]]
id = "capped"
name = "Capped"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.01" }]
quotas = [{ meter = "calls", limit = 5, kind = "hard" }]

[[plan]]
id = "watched"
name = "Watched"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.01" }]
quotas = [{ meter = "calls", limit = 10, kind = "hard", shadow = true, near_limit = "0.5" }]

[[plan]]
id = "growth-usd"
name = "Growth (USD)"
currency = "USD"
period = { every = "month", anchor_day = 1 }
base_fee = "49.00"
"#;

mod support;
use support::{calls, TOKEN};

struct Env_ {
    served: support::Served,
    client: reqwest::Client,
}

impl Env_ {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.served.base);
        let mut req = self
            .client
            .request(method.parse().unwrap(), &url)
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

    async fn raw(&self, path: &str) -> (u16, String, Vec<u8>) {
        let resp = self
            .client
            .get(format!("{}{path}", self.served.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, ct, resp.bytes().await.unwrap().to_vec())
    }
}

/// What a webhook endpoint received: each request's headers and body.
type Received = Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>;

impl Env_ {
    /// A real HTTP endpoint answering its n-th request (from 1) with `answer(n)`, subscribed
    /// to `events`, with the delivery worker running (retries after 200 ms). Returns what it
    /// receives and the endpoint's signing secret.
    async fn webhook_endpoint(
        &self,
        events: &[&str],
        answer: fn(usize) -> axum::http::StatusCode,
    ) -> (Received, String) {
        let received: Received = Default::default();
        let hook = {
            let received = Arc::clone(&received);
            Router::new().route(
                "/hook",
                post(move |headers: axum::http::HeaderMap, body: String| {
                    let received = Arc::clone(&received);
                    async move {
                        let mut r = received.lock().unwrap();
                        r.push((headers, body));
                        answer(r.len())
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, hook).await });
        let (s, ep) = self
            .call(
                "POST",
                "/v1/webhooks",
                Some(json!({"url": url, "events": events})),
            )
            .await;
        assert_eq!(s, 201, "{ep}");
        tokio::spawn(peage_billing::service::webhooks::run_worker(
            Arc::clone(&self.served.store),
            peage_billing::service::webhooks::WorkerSettings {
                schedule: peage_billing::service::webhooks::RetrySchedule(vec![
                    Duration::from_millis(200),
                ]),
                poll: Duration::from_millis(50),
                policy: support::loopback_policy(),
                secrets: support::secrets(),
            },
            std::future::pending(),
        ));
        (received, ep["secret"].as_str().unwrap().to_string())
    }
}

async fn start() -> Env_ {
    Env_ {
        served: support::serve(CATALOG).await,
        client: reqwest::Client::new(),
    }
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn dec(v: &Value) -> Decimal {
    d(v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}")))
}

#[tokio::test]
async fn an_invoice_goes_from_draft_to_finalized_and_late_usage_lands_on_the_next_one() {
    let env = start().await;

    // A webhook endpoint that records what it receives.
    let received: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>> = Default::default();
    let hook = {
        let received = Arc::clone(&received);
        Router::new().route(
            "/hook",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let received = Arc::clone(&received);
                async move {
                    received.lock().unwrap().push((headers, body));
                    "ok"
                }
            }),
        )
    };
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hook_listener, hook).await });
    let (s, ep) = env
        .call(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": hook_url, "events": ["invoice.finalized"]})),
        )
        .await;
    assert_eq!(s, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_string();
    let (s, bad) = env
        .call(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": hook_url, "events": ["invoice.exploded"]})),
        )
        .await;
    assert_eq!(s, 400, "{bad}");
    tokio::spawn(peage_billing::service::webhooks::run_worker(
        Arc::clone(&env.served.store),
        peage_billing::service::webhooks::WorkerSettings {
            schedule: peage_billing::service::webhooks::RetrySchedule(vec![Duration::from_millis(
                100,
            )]),
            poll: Duration::from_millis(50),
            policy: support::loopback_policy(),
            secrets: support::secrets(),
        },
        std::future::pending(),
    ));

    // A partner on Growth since October 1st, with 10 € of prepaid credits.
    let october = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
    let (s, partner) = env
        .call(
            "POST",
            "/v1/partners",
            Some(json!({"name": "Globex", "plan": "growth"})),
        )
        .await;
    assert_eq!(s, 201, "{partner}");
    let pid = partner["id"].as_str().unwrap().to_string();
    // The partner was created now; move its subscription start back to October for the test.
    env.served
        .store
        .change_subscription(
            &pid.parse().unwrap(),
            &peage_billing_store::Subscription {
                plan_id: "growth".into(),
                plan_version: partner["subscription"]["plan_version"]
                    .as_str()
                    .unwrap()
                    .into(),
                started_at: october,
                ended_at: None,
            },
        )
        .await
        .ok();
    let (s, c) = env
        .call(
            "POST",
            &format!("/v1/partners/{pid}/credits"),
            Some(json!({"amount": "10.00", "currency": "EUR", "description": "welcome credit"})),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, c) = env
        .call(
            "POST",
            &format!("/v1/partners/{pid}/credits"),
            Some(json!({"amount": "0.001", "currency": "EUR", "description": "too precise"})),
        )
        .await;
    assert_eq!(s, 400, "{c}");
    // Amounts are bounded (money::MAX_AMOUNT = 10^15): Decimal::MAX used to be accepted, and
    // the next credit overflowed inside the handler, breaking every invoice run after it.
    for amount in ["79228162514264337593543950335", "1000000000000000.01"] {
        let (s, c) = env
            .call(
                "POST",
                &format!("/v1/partners/{pid}/credits"),
                Some(json!({"amount": amount, "currency": "EUR", "description": "huge"})),
            )
            .await;
        assert_eq!(s, 400, "{amount}: {c}");
        assert!(c.to_string().contains("at most 1000000000000000"), "{c}");
    }

    // 1,500 calls in October: 49.00 + 15.00 = 64.00, VAT 12.80, total 76.80.
    env.served
        .usage
        .insert(&calls(&pid, october + chrono::Duration::days(3), 1500))
        .await
        .unwrap();
    let (s, run) = env
        .call(
            "POST",
            "/v1/invoices/run",
            Some(json!({"period": "2026-10"})),
        )
        .await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(run["created"], 1, "{run}");
    // Idempotent: the same run again changes nothing.
    let (_, again) = env
        .call(
            "POST",
            "/v1/invoices/run",
            Some(json!({"period": "2026-10"})),
        )
        .await;
    assert_eq!(
        (again["created"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(1)),
        "{again}"
    );

    let (_, list) = env
        .call("GET", "/v1/invoices?period=2026-10&status=draft", None)
        .await;
    let drafts = list["invoices"].as_array().unwrap();
    assert_eq!(drafts.len(), 1, "{list}");
    let id = drafts[0]["id"].as_str().unwrap().to_string();
    let inv = &drafts[0]["invoice"];
    assert_eq!(dec(&inv["subtotal"]), d("64.00"));
    assert_eq!(dec(&inv["total"]), d("76.80"));
    assert_eq!(
        dec(&inv["amount_due"]),
        d("66.80"),
        "credits shown on the draft"
    );

    // Finalize: numbered, credits taken, webhook sent and signed.
    let (s, fin) = env
        .call("POST", &format!("/v1/invoices/{id}/finalize"), None)
        .await;
    assert_eq!(s, 200, "{fin}");
    assert_eq!(fin["number"], "PEAGE-2026-000001");
    assert_eq!(dec(&fin["invoice"]["credits_applied"]), d("10.00"));
    let (_, credits) = env
        .call("GET", &format!("/v1/partners/{pid}/credits"), None)
        .await;
    assert_eq!(credits["balances"]["EUR"], "0.00", "{credits}");

    // No API changes a finalized invoice.
    let (s, _) = env
        .call("POST", &format!("/v1/invoices/{id}/finalize"), None)
        .await;
    assert_eq!(s, 409);
    for (method, path) in [
        ("PUT", format!("/v1/invoices/{id}")),
        ("PATCH", format!("/v1/invoices/{id}")),
        ("DELETE", format!("/v1/invoices/{id}")),
    ] {
        let (s, _) = env.call(method, &path, Some(json!({"total": "0"}))).await;
        assert!(s == 404 || s == 405, "{method} {path}: {s}");
    }
    let (_, rerun) = env
        .call(
            "POST",
            "/v1/invoices/run",
            Some(json!({"period": "2026-10"})),
        )
        .await;
    assert_eq!(rerun["already_finalized"], 1, "{rerun}");
    let (_, same) = env.call("GET", &format!("/v1/invoices/{id}"), None).await;
    assert_eq!(same, fin, "the finalized invoice is exactly as finalized");

    // The signed webhook.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no webhook within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (headers, body) = received.lock().unwrap()[0].clone();
    let msg_id = headers["webhook-id"].to_str().unwrap();
    let ts: i64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = peage_billing::service::webhooks::sign(&secret, msg_id, ts, &body).unwrap();
    assert_eq!(headers["webhook-signature"].to_str().unwrap(), expected);
    let payload: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(payload["type"], "invoice.finalized");
    assert_eq!(payload["data"]["number"], "PEAGE-2026-000001");
    // The worker records the attempt once the endpoint has answered: shortly after it got it.
    let mut log = Value::Null;
    for _ in 0..100 {
        log = env.call("GET", "/v1/webhooks/deliveries", None).await.1;
        if log["deliveries"][0]["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log["deliveries"][0]["status"], "delivered", "{log}");

    // 250 late calls for October arrive; November's draft carries them as an adjustment:
    // 49.00 base + 2.50 late = 51.50, VAT 10.30, total 61.80.
    env.served
        .usage
        .insert(&calls(&pid, october + chrono::Duration::days(20), 250))
        .await
        .unwrap();
    let (_, nov) = env
        .call(
            "POST",
            "/v1/invoices/run",
            Some(json!({"period": "2026-11"})),
        )
        .await;
    assert_eq!(nov["created"], 1, "{nov}");
    let (_, list) = env.call("GET", "/v1/invoices?period=2026-11", None).await;
    let nov_inv = &list["invoices"][0];
    let adj: Vec<&Value> = nov_inv["invoice"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "adjustment")
        .collect();
    assert_eq!(adj.len(), 1, "{nov_inv}");
    assert_eq!(dec(&adj[0]["amount"]), d("2.50"));
    assert_eq!(adj[0]["adjusts"]["invoice_id"], id.as_str());
    assert!(adj[0]["description"]
        .as_str()
        .unwrap()
        .contains("late usage for 2026-10-01 – 2026-11-01 (invoice PEAGE-2026-000001)"));
    assert_eq!(dec(&nov_inv["invoice"]["total"]), d("61.80"));

    // Exports: CSV rows per line, a PDF that is a PDF.
    let (s, ct, csv) = env.raw("/v1/invoices?period=2026-10&format=csv").await;
    assert_eq!((s, ct.as_str()), (200, "text/csv; charset=utf-8"));
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.starts_with(peage_core::invoice::CSV_HEADER), "{csv}");
    assert!(csv.contains(",PEAGE-2026-000001,finalized,"), "{csv}");
    assert!(
        csv.contains(",usage,calls: per unit,calls,,,1500,0.01,15.00,"),
        "{csv}"
    );
    let (s, ct, pdf) = env.raw(&format!("/v1/invoices/{id}?format=pdf")).await;
    assert_eq!((s, ct.as_str()), (200, "application/pdf"));
    assert!(pdf.starts_with(b"%PDF-"), "not a PDF");
    // To look at it: PEAGE_PDF_OUT=/tmp/invoice.pdf, then `pdftoppm -png` it.
    if let Ok(path) = std::env::var("PEAGE_PDF_OUT") {
        std::fs::write(path, &pdf).unwrap();
    }
    let (s, _, _) = env.raw("/v1/invoices?period=2026-13").await;
    assert_eq!(s, 400);

    // Void gives the credits back; the number stays taken.
    let (s, v) = env
        .call("POST", &format!("/v1/invoices/{id}/void"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["number"].as_str()),
        (Some("void"), Some("PEAGE-2026-000001"))
    );
    let (_, credits) = env
        .call("GET", &format!("/v1/partners/{pid}/credits"), None)
        .await;
    assert_eq!(credits["balances"]["EUR"], "10.00", "{credits}");
    let (s, _) = env
        .call("POST", &format!("/v1/invoices/{id}/void"), None)
        .await;
    assert_eq!(s, 409);
}

#[tokio::test]
async fn a_period_not_over_cannot_be_finalized_and_time_zones_move_period_bounds() {
    let env = start().await;
    let (_, partner) = env
        .call(
            "POST",
            "/v1/partners",
            Some(json!({"name": "Initech", "plan": "growth"})),
        )
        .await;
    let pid = partner["id"].as_str().unwrap().to_string();
    let (s, p) = env
        .call(
            "PUT",
            &format!("/v1/partners/{pid}/billing"),
            Some(json!({"timezone": "Asia/Tokyo", "tax": {"rate": "0.10", "label": "JCT"}})),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    let (s, bad) = env
        .call(
            "PUT",
            &format!("/v1/partners/{pid}/billing"),
            Some(json!({"timezone": "Mars/Olympus"})),
        )
        .await;
    assert_eq!(s, 400, "{bad}");
    let (s, up) = env
        .call(
            "GET",
            &format!("/v1/partners/{pid}/invoices/upcoming"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["invoice"]["timezone"], "Asia/Tokyo");
    assert_eq!(up["invoice"]["tax"]["label"], "JCT");
    // Tokyo midnight is 15:00 UTC the day before.
    let start = up["invoice"]["period"]["start"].as_str().unwrap();
    assert!(start.ends_with("T15:00:00Z"), "{start}");

    // A plan change mid-period: both plans appear, each base fee prorated.
    let (s, e) = env
        .call(
            "PUT",
            &format!("/v1/partners/{pid}/subscription"),
            Some(json!({"plan": "growth-usd"})),
        )
        .await;
    assert_eq!(s, 409, "a change of currency mid-period is refused: {e}");
    let (s, e) = env
        .call(
            "PUT",
            &format!("/v1/partners/{pid}/subscription"),
            Some(json!({"plan": "scale"})),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let (_, up) = env
        .call(
            "GET",
            &format!("/v1/partners/{pid}/invoices/upcoming"),
            None,
        )
        .await;
    let plans: Vec<&str> = up["invoice"]["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["plan_id"].as_str().unwrap())
        .collect();
    assert_eq!(plans, ["growth", "scale"], "{up}");
    let base: Vec<Decimal> = up["invoice"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "base_fee")
        .map(|l| dec(&l["amount"]))
        .collect();
    assert_eq!(base.len(), 2, "{up}");
    assert!(base[0] < d("49.00") && base[1] < d("99.00"), "{up}");

    let label = peage_core::PeriodLabel::of(Utc::now(), "Asia/Tokyo".parse().unwrap());
    let (_, run) = env
        .call(
            "POST",
            "/v1/invoices/run",
            Some(json!({"period": label.to_string()})),
        )
        .await;
    assert_eq!(run["created"], 1, "{run}");
    let (_, list) = env.call("GET", "/v1/invoices?status=draft", None).await;
    let id = list["invoices"][0]["id"].as_str().unwrap().to_string();
    let (s, e) = env
        .call("POST", &format!("/v1/invoices/{id}/finalize"), None)
        .await;
    assert_eq!(s, 409, "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("once the period is over"),
        "{e}"
    );
}

#[tokio::test]
async fn a_hard_quota_reached_sends_one_signed_webhook_retried_until_delivered() {
    let env = start().await;
    // An endpoint that fails its first request (503) and accepts the next.
    let (received, secret) = env
        .webhook_endpoint(&["quota.hard_blocked", "quota.soft_exceeded"], |n| {
            if n == 1 {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                axum::http::StatusCode::NO_CONTENT
            }
        })
        .await;

    let (_, partner) = env
        .call(
            "POST",
            "/v1/partners",
            Some(json!({"name": "Hooli", "plan": "capped"})),
        )
        .await;
    let pid = partner["id"].as_str().unwrap().to_string();
    let lease = |want: &str| json!({"partner_id": pid, "meter": "calls", "gateway_id": "gw-1", "want": want});
    // Leases are handed out in shares until the 5 calls are granted; then the quota blocks.
    let mut granted = Decimal::ZERO;
    for _ in 0..20 {
        let (_, l) = env
            .call("POST", "/v1/quota/leases", Some(lease("10")))
            .await;
        if l["decision"] == "hard_blocked" {
            break;
        }
        granted += dec(&l["granted"]);
    }
    assert_eq!(granted, d("5"), "a hard quota grants exactly its limit");
    for _ in 0..3 {
        let (_, l) = env.call("POST", "/v1/quota/leases", Some(lease("1"))).await;
        assert_eq!(l["decision"], "hard_blocked", "{l}");
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, log) = env.call("GET", "/v1/webhooks/deliveries", None).await;
        let d = &log["deliveries"];
        assert_eq!(
            d.as_array().unwrap().len(),
            1,
            "one event per quota and period: {log}"
        );
        if d[0]["status"] == "delivered" {
            assert_eq!(d[0]["attempts"], 2, "{log}");
            assert_eq!(d[0]["last_status"], 204, "{log}");
            assert_eq!(d[0]["event_type"], "quota.hard_blocked");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered within 10 s: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "the failed attempt and the retry");
    assert_eq!(
        got[0].0["webhook-id"], got[1].0["webhook-id"],
        "a retry keeps the message id"
    );
    let (headers, body) = &got[1];
    let ts: i64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let sig = peage_billing::service::webhooks::sign(
        &secret,
        headers["webhook-id"].to_str().unwrap(),
        ts,
        body,
    )
    .unwrap();
    assert_eq!(headers["webhook-signature"].to_str().unwrap(), sig);
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["data"]["partner_id"], pid.as_str());
    assert_eq!(payload["data"]["limit"], "5");
}

#[tokio::test]
async fn a_partner_that_cannot_be_billed_fails_alone_and_is_named() {
    let env = start().await;
    let mut ids = Vec::new();
    for name in ["Good", "Broken"] {
        let (_, p) = env
            .call(
                "POST",
                "/v1/partners",
                Some(json!({"name": name, "plan": "growth"})),
            )
            .await;
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    // A profile the API would refuse, written straight to the store (an old or hand-edited row).
    env.served
        .store
        .put_billing_profile(&peage_billing_store::BillingProfile {
            partner_id: ids[1].parse().unwrap(),
            timezone: "Mars/Olympus".into(),
            tax: None,
            net_days: None,
            details: None,
            updated_at: Utc::now(),
        })
        .await
        .unwrap();
    let label = Utc::now().format("%Y-%m").to_string();
    let (s, run) = env
        .call("POST", "/v1/invoices/run", Some(json!({"period": label})))
        .await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(run["created"], 1, "{run}");
    assert_eq!(run["errors"][0]["partner_id"], ids[1].as_str(), "{run}");
    assert!(
        run["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("unknown time zone"),
        "{run}"
    );
}

#[tokio::test]
async fn a_shadow_quota_never_blocks_and_near_limit_and_shadow_webhooks_go_once() {
    let env = start().await;
    let (received, _) = env
        .webhook_endpoint(&["quota.near_limit", "quota.shadow_exceeded"], |_| {
            axum::http::StatusCode::NO_CONTENT
        })
        .await;
    let (_, partner) = env
        .call(
            "POST",
            "/v1/partners",
            Some(json!({"name": "Initech", "plan": "watched"})),
        )
        .await;
    let pid = partner["id"].as_str().unwrap().to_string();
    let lease = |want: &str| json!({"partner_id": pid, "meter": "calls", "gateway_id": "gw-1", "want": want});
    let record = |n: usize| {
        let usage = env.served.usage.clone();
        let pid = pid.clone();
        async move {
            let at = Utc::now() - chrono::Duration::seconds(30);
            usage.insert(&calls(&pid, at, n)).await.unwrap();
        }
    };
    let types = || {
        let got = received.lock().unwrap().clone();
        got.iter()
            .map(|(_, b)| {
                serde_json::from_str::<Value>(b).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };

    // 4 of 10 metered: not near yet (0.5).
    record(4).await;
    let (_, l) = env.call("POST", "/v1/quota/leases", Some(lease("3"))).await;
    assert_eq!(
        (l["decision"].as_str(), l["shadow"].as_bool()),
        (Some("allow"), Some(true)),
        "{l}"
    );
    // 6 metered: near. Asked again and again, the signal goes once.
    record(2).await;
    for _ in 0..3 {
        env.call("POST", "/v1/quota/leases", Some(lease("1"))).await;
    }
    // A hard quota in shadow mode grants past its limit and says so, never hard_blocked.
    let (_, l) = env
        .call("POST", "/v1/quota/leases", Some(lease("50")))
        .await;
    assert_eq!(l["granted"], "50", "{l}");
    assert_eq!(l["decision"], "shadow_exceeded", "{l}");
    let (_, l) = env.call("POST", "/v1/quota/leases", Some(lease("5"))).await;
    assert_eq!(l["decision"], "shadow_exceeded", "{l}");

    let (_, q) = env
        .call("GET", &format!("/v1/partners/{pid}/quotas"), None)
        .await;
    let q = &q["quotas"][0];
    assert_eq!(q["shadow"], true, "{q}");
    assert_eq!(
        (q["near_limit"].as_bool(), q["near_limit_at"].as_str()),
        (Some(true), Some("0.5")),
        "{q}"
    );
    assert_eq!(q["decision"], "shadow_exceeded", "{q}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while types().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", types());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = types();
    got.sort();
    assert_eq!(
        got,
        ["quota.near_limit", "quota.shadow_exceeded"],
        "each once"
    );
    let near: Value = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| serde_json::from_str::<Value>(b).unwrap())
        .find(|v| v["type"] == "quota.near_limit")
        .unwrap();
    assert_eq!(near["data"]["used"], "6");
    assert_eq!(near["data"]["near_limit"], "0.5");
    assert_eq!(near["data"]["partner_id"], pid.as_str());
}
