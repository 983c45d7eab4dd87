//! The control API under an attacker's input: every error is problem+json (the framework's
//! own too), a panicking handler answers 500 for its own request only, extreme amounts never
//! reach a panic, sign-out needs the CSRF header, and guessing credentials is limited per
//! address. Each test here failed before the change it names.

use axum::routing::get;
use chrono::{Datelike, TimeZone, Utc};
use peage_billing_store::Subscription;
use proptest::prelude::*;
use serde_json::{json, Value};

mod support;
use support::TOKEN;

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

[[meter]]
name = "units"
aggregation = "sum"
field = "units"

[[plan]]
id = "growth"
name = "Growth"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "1000000000000000"
minimum_commitment = "1000000000000000"
tax = { label = "VAT", rate = "0.2" }
charges = [
  { meter = "calls", model = "per_unit", unit_price = "1000000000000000" },
  { meter = "units", model = "package", size = "0.000000001", price = "1000000000000000" },
]
"#;

const PARTNER: &str = "prt_a1a1a1a1a1a1a1a1a1a1";

struct Fixture {
    base: String,
    client: reqwest::Client,
    served: support::Served,
}

/// A partner on Growth (every price at the maximum) since October, with usage that prices
/// beyond `Decimal`: 10^15 units at 10^15 € per 10^-9 units.
async fn start() -> Fixture {
    let served = support::serve(CATALOG).await;
    let october = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
    let plan_version = served
        .api
        .invoicing()
        .catalog
        .plan("growth")
        .unwrap()
        .version
        .clone();
    let sub = Subscription {
        plan_id: "growth".into(),
        plan_version,
        started_at: october,
        ended_at: None,
    };
    served
        .store
        .create_partner(&PARTNER.parse().unwrap(), "Alpha", &sub)
        .await
        .unwrap();
    // In October (for the run) and in the current period (for the upcoming invoice).
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let mut calls = support::calls(PARTNER, october + chrono::Duration::hours(30), 3);
    calls.extend(support::calls(
        PARTNER,
        (now - chrono::Duration::seconds(10)).max(this_month),
        3,
    ));
    for c in &mut calls {
        c.units = peage_core::event::MAX_UNITS;
    }
    use peage_usage_store::UsageStore;
    served.usage.insert(&calls).await.unwrap();
    served
        .api
        .invoicing()
        .register_plan_versions(october)
        .await
        .unwrap();
    Fixture {
        base: served.base.clone(),
        client: reqwest::Client::new(),
        served,
    }
}

impl Fixture {
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let resp = req
            .send()
            .await
            .expect("the server answers, never drops the connection");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (s, _, text) = self.send(req).await;
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// A route of the OpenAPI document with its parameters filled in.
fn concrete(route: &str) -> String {
    route
        .replace("{id}", PARTNER)
        .replace("{key_id}", "key_00000000000000000000")
        .replace("{api}", "maps")
        .replace("{version}", "v1")
}

fn assert_problem(status: u16, headers: &reqwest::header::HeaderMap, body: &str, want: u16) {
    assert_eq!(status, want, "{body}");
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{status}: {body}"
    );
    let p: Value = serde_json::from_str(body).unwrap();
    assert_eq!(p["status"], want);
    assert!(p["type"]
        .as_str()
        .unwrap()
        .starts_with("https://peage.dev/problems/"));
}

/// The usage prices beyond what `Decimal` holds: the upcoming invoice and the run say so as a
/// 409 naming the partner (they used to panic and drop the connection), and everything else
/// of the partner still answers.
#[tokio::test]
async fn usage_that_prices_beyond_decimal_is_an_error_not_a_dropped_connection() {
    let f = start().await;
    let (s, body) = f
        .admin(
            "GET",
            &format!("/v1/partners/{PARTNER}/invoices/upcoming"),
            None,
        )
        .await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("too large"),
        "{body}"
    );
    let (s, run) = f
        .admin(
            "POST",
            "/v1/invoices/run",
            Some(json!({"period": "2026-10"})),
        )
        .await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(run["errors"][0]["partner_id"], PARTNER, "{run}");
    for path in [
        format!("/v1/partners/{PARTNER}"),
        format!("/v1/partners/{PARTNER}/credits"),
        format!("/v1/partners/{PARTNER}/usage?from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z"),
        "/v1/partners/overview".to_string(),
    ] {
        let (s, body) = f.admin("GET", &path, None).await;
        assert!(s < 500, "{path}: {s} {body}");
    }
}

/// Amounts as an attacker writes them: every answer is a 2xx or a 4xx problem, and the
/// partner's credits, upcoming invoice and the run keep answering after each.
#[test]
fn extreme_amounts_never_reach_a_panic() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = rt.block_on(start());
    let amount = prop_oneof![
        Just("79228162514264337593543950335".to_string()),
        Just("-79228162514264337593543950335".to_string()),
        Just("1000000000000000".to_string()),
        Just("1000000000000000.01".to_string()),
        Just("1e28".to_string()),
        Just("0.0000000000000000000000000001".to_string()),
        Just("NaN".to_string()),
        Just("".to_string()),
        "-?[0-9]{1,40}(\\.[0-9]{0,30})?",
        (0i64..=i64::MAX).prop_map(|i| i.to_string()),
    ];
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(amount in amount, as_number in any::<bool>())| {
        rt.block_on(async {
            let value = if as_number {
                serde_json::from_str::<Value>(&amount).unwrap_or(Value::String(amount.clone()))
            } else {
                Value::String(amount.clone())
            };
            let credit = json!({"amount": value, "currency": "EUR", "description": "p"});
            let (s, body) = f
                .admin("POST", &format!("/v1/partners/{PARTNER}/credits"), Some(credit))
                .await;
            prop_assert!(s == 201 || s == 400, "{amount}: {s} {body}");
            for (method, path, body) in [
                ("GET", format!("/v1/partners/{PARTNER}/credits"), None),
                ("GET", format!("/v1/partners/{PARTNER}/invoices/upcoming"), None),
                ("GET", "/v1/partners/overview".to_string(), None),
                ("POST", "/v1/invoices/run".to_string(), Some(json!({"period": "2026-10"}))),
            ] {
                let (s, answer) = f.admin(method, &path, body).await;
                prop_assert!(s < 500, "after {amount}: {method} {path}: {s} {answer}");
            }
            Ok(())
        })?;
    });
    drop(f.served);
}

/// Errors the framework answers itself (a query string it cannot parse, a body over the
/// limit, a wrong method, an unknown page) used to be text/plain or empty.
#[tokio::test]
async fn every_error_is_problem_json_the_frameworks_own_too() {
    let f = start().await;
    let url = |p: &str| format!("{}{p}", f.base);
    let cases = [
        (
            f.client
                .get(url("/v1/webhooks/deliveries?limit=lots"))
                .bearer_auth(TOKEN),
            400,
        ),
        (
            f.client
                .post(url("/v1/partners"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(vec![b' '; 3 * 1024 * 1024]),
            413,
        ),
        (f.client.delete(url("/v1/plans")).bearer_auth(TOKEN), 405),
        (f.client.get(url("/no/such/page")), 404),
        (f.client.get(url("/v1/nothing")).bearer_auth(TOKEN), 404),
    ];
    for (req, want) in cases {
        let (s, h, body) = f.send(req).await;
        assert_problem(s, &h, &body, want);
    }
    // OAuth's token endpoint keeps RFC 6749's JSON errors, which its clients parse.
    let (s, h, body) = f
        .send(
            f.client
                .post(url("/oauth/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=password"),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(h["content-type"], "application/json");
    assert!(body.contains("unsupported_grant_type"));
}

#[tokio::test]
async fn a_panicking_handler_answers_500_problem_json_for_its_own_request_only() {
    let app = peage_billing::hardened(
        axum::Router::new()
            .route("/boom", get(|| async { panic!("boom") as &'static str }))
            .route("/fine", get(|| async { "fine" })),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/boom")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://peage.dev/problems/internal");
    assert!(
        !p["detail"].as_str().unwrap().contains("boom"),
        "no internals leak: {p}"
    );
    let r = client.get(format!("{base}/fine")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "fine");
}

/// Signs in as the partner; returns the session cookie's value.
async fn session(f: &Fixture) -> String {
    let (s, link) = f
        .admin(
            "POST",
            "/v1/sign-in-links",
            Some(json!({"partner_id": PARTNER})),
        )
        .await;
    assert_eq!(s, 201, "{link}");
    let resp = f
        .client
        .post(format!("{}/auth/sign-in", f.base))
        .json(&json!({"token": link["token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    cookie
        .strip_prefix("peage_session=")
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn sign_out_needs_the_csrf_header() {
    let f = start().await;
    let cookie = session(&f).await;
    let whoami = || {
        f.client
            .get(format!("{}/v1/session", f.base))
            .header("cookie", format!("peage_session={cookie}"))
    };
    let sign_out = || {
        f.client
            .post(format!("{}/auth/sign-out", f.base))
            .header("cookie", format!("peage_session={cookie}"))
    };
    // Another site's form posting to sign-out carries the cookie but cannot add the header.
    let (s, h, body) = f.send(sign_out()).await;
    assert_problem(s, &h, &body, 403);
    assert_eq!(f.send(whoami()).await.0, 200, "the session survives");
    let (s, _, _) = f.send(sign_out().header("x-peage-csrf", "1")).await;
    assert_eq!(s, 204);
    assert_eq!(f.send(whoami()).await.0, 401, "the session is over");
}

/// 20 wrong credentials a minute per address; then every attempt is refused, the right admin
/// token's too, so a right guess cannot be told from a wrong one. Used to be unlimited (500
/// wrong admin tokens in 0.12 s).
#[tokio::test]
async fn guessing_credentials_is_limited_per_address() {
    let f = start().await;
    let url = format!("{}/v1/plans", f.base);
    for i in 0..20 {
        let (s, h, body) = f
            .send(f.client.get(&url).bearer_auth(format!("guess-{i}")))
            .await;
        assert_problem(s, &h, &body, 401);
    }
    let (s, h, body) = f.send(f.client.get(&url).bearer_auth(TOKEN)).await;
    assert_problem(s, &h, &body, 429);
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Sign-in links and sessions from the same address are refused as well.
    let (s, _, _) = f
        .send(
            f.client
                .post(format!("{}/auth/sign-in", f.base))
                .json(&json!({"token": "psl_guess"})),
        )
        .await;
    assert_eq!(s, 429);
    let stats = &f.served.api.failures.stats;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.failures.load(Relaxed), 20);
    assert_eq!(stats.throttled.load(Relaxed), 2);
}

/// Guessing sign-in links alone trips the same limit.
#[tokio::test]
async fn guessing_sign_in_links_is_limited_too() {
    let f = start().await;
    let mut statuses = Vec::new();
    for i in 0..21 {
        let (s, _, _) = f
            .send(
                f.client
                    .post(format!("{}/auth/sign-in", f.base))
                    .json(&json!({"token": format!("psl_{i:0>64}")})),
            )
            .await;
        statuses.push(s);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses[20], 429);
}

/// Under the default policy, webhook endpoints and JWKS URLs may only be https to public
/// addresses; they used to accept loopback, `0x7f000001`, the metadata service, private ranges
/// and `user:pw@`. `localhost` is refused after DNS.
#[tokio::test]
async fn urls_for_peage_to_call_must_be_public_https() {
    let served = support::serve_with(
        CATALOG,
        std::sync::Arc::new(peage_net::OutboundPolicy::strict()),
    )
    .await;
    let client = reqwest::Client::new();
    let sub = Subscription {
        plan_id: "growth".into(),
        plan_version: served
            .api
            .invoicing()
            .catalog
            .plan("growth")
            .unwrap()
            .version
            .clone(),
        started_at: Utc::now(),
        ended_at: None,
    };
    served
        .store
        .create_partner(&PARTNER.parse().unwrap(), "Alpha", &sub)
        .await
        .unwrap();
    let refused = [
        ("http://hooks.example.com/in", "only https://"),
        ("https://127.0.0.1/in", "not a public address"),
        ("https://[::1]/in", "not a public address"),
        ("https://0x7f000001/in", "written as a number"),
        ("https://2130706433/in", "written as a number"),
        (
            "https://169.254.169.254/latest/meta-data/",
            "not a public address",
        ),
        ("https://10.0.0.8/in", "not a public address"),
        ("https://192.168.1.20/in", "not a public address"),
        (
            "https://user:pw@hooks.example.com/in",
            "user name or password",
        ),
        (
            "https://localhost/in",
            "resolves only to addresses that are not public",
        ),
        ("not a url", "not an absolute URL"),
    ];
    for (url, why) in refused {
        for (path, body) in [
            (
                "/v1/webhooks".to_string(),
                json!({"url": url, "events": ["*"]}),
            ),
            (
                format!("/v1/partners/{PARTNER}/issuer"),
                json!({"issuer": "https://idp.test", "jwks_url": url, "algorithm": "RS256", "audience": "a"}),
            ),
        ] {
            let r = client
                .request(
                    if path.ends_with("issuer") {
                        reqwest::Method::PUT
                    } else {
                        reqwest::Method::POST
                    },
                    format!("{}{path}", served.base),
                )
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{path} {url}");
            let p: Value = r.json().await.unwrap();
            assert!(
                p["detail"].as_str().unwrap().contains(why),
                "{path} {url}: {p}"
            );
        }
    }
    // A public https endpoint is accepted (it need not resolve yet).
    let r = client
        .post(format!("{}/v1/webhooks", served.base))
        .bearer_auth(TOKEN)
        .json(&json!({"url": "https://hooks.example.com/in", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// An endpoint accepted when registered is checked again at every delivery, after DNS: a
/// worker whose policy refuses it never connects (what a name that later resolves to a private
/// address meets). Transport failures are logged in generic words, so the log is no port
/// scanner.
#[tokio::test]
async fn deliveries_are_checked_at_each_connection_and_logged_generically() {
    let f = start().await;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook.local_addr().unwrap());
    let counted = std::sync::Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { http::StatusCode::NO_CONTENT }
        }),
    );
    tokio::spawn(async move { axum::serve(hook, app).await });
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    for url in [&hook_url, &closed_url] {
        let (s, body) = f
            .admin(
                "POST",
                "/v1/webhooks",
                Some(json!({"url": url, "events": ["*"]})),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }
    peage_billing::service::webhooks::enqueue(
        f.served.store.as_ref(),
        "invoice.finalized",
        "inv_test",
        json!({"id": "inv_test"}),
        Utc::now(),
    )
    .await
    .unwrap();
    let deliveries = |f: &Fixture| {
        let f = f.base.clone();
        async move {
            let v: Value = reqwest::Client::new()
                .get(format!("{f}/v1/webhooks/deliveries"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["deliveries"].as_array().unwrap().clone()
        }
    };
    let worker = |policy| {
        tokio::spawn(peage_billing::service::webhooks::run_worker(
            std::sync::Arc::clone(&f.served.store),
            peage_billing::service::webhooks::WorkerSettings {
                schedule: peage_billing::service::webhooks::RetrySchedule(vec![
                    std::time::Duration::from_secs(3600),
                ]),
                poll: std::time::Duration::from_millis(20),
                policy,
                secrets: support::secrets(),
            },
            std::future::pending(),
        ))
    };
    let strict = worker(std::sync::Arc::new(peage_net::OutboundPolicy::strict()));
    let attempted = |d: &Vec<Value>| d.len() == 2 && d.iter().all(|x| x["attempts"] == 1);
    let mut log = deliveries(&f).await;
    for _ in 0..200 {
        if attempted(&log) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        log = deliveries(&f).await;
    }
    strict.abort();
    assert!(attempted(&log), "{log:#?}");
    for d in &log {
        assert!(
            d["last_error"]
                .as_str()
                .unwrap()
                .starts_with("refused by the outbound policy: "),
            "{d}"
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "never connected"
    );
    // Under a policy that allows loopback, the closed port is a generic failure.
    peage_billing::service::webhooks::enqueue(
        f.served.store.as_ref(),
        "invoice.finalized",
        "inv_test_2",
        json!({"id": "inv_test_2"}),
        Utc::now(),
    )
    .await
    .unwrap();
    let open = worker(support::loopback_policy());
    let mut errors = Vec::new();
    for _ in 0..200 {
        errors = deliveries(&f)
            .await
            .iter()
            .filter(|d| d["status"] != "delivered" && d["last_error"] != Value::Null)
            .map(|d| d["last_error"].as_str().unwrap().to_string())
            .filter(|e| !e.starts_with("refused"))
            .collect();
        if !errors.is_empty() && hits.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    open.abort();
    assert_eq!(errors, ["could not connect to the endpoint"]);
}

/// Signing-key seeds and webhook secrets used to be stored as they are. Now the store holds
/// them sealed with the key-encryption key; values from before are sealed by the first start
/// (`reseal_all`), and a rotation seals everything again under the new key.
#[tokio::test]
async fn secrets_are_sealed_at_rest_migrated_and_rotated() {
    use peage_billing::service::secrets::{reseal_all, webhook_row, SecretBox};
    let f = start().await;
    let (s, created) = f
        .admin(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": "https://hooks.example.com/in", "events": ["*"]})),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let plain = created["secret"].as_str().unwrap().to_string();
    assert!(plain.starts_with("whsec_"));
    let (s, _) = f.admin("POST", "/v1/oauth/signing-keys/rotate", None).await;
    assert_eq!(s, 201);
    let store = f.served.store.as_ref();
    let sealed = |v: &str| v.starts_with("enc:v1:");
    let eps = store.webhook_endpoints().await.unwrap();
    assert!(
        sealed(&eps[0].secret) && !eps[0].secret.contains(&plain),
        "{}",
        eps[0].secret
    );
    let keys = store.signing_keys().await.unwrap();
    assert!(keys.iter().all(|k| sealed(&k.seed)), "{keys:?}");

    // A row from before encryption: plain, until the next start seals it.
    let old = peage_billing_store::WebhookEndpoint {
        id: "ep_1e9ac1e9ac1e9ac1e9ac".parse().unwrap(),
        url: "https://hooks.example.com/legacy".into(),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        events: vec!["*".into()],
        created_at: Utc::now(),
        disabled_at: None,
    };
    store.add_webhook_endpoint(&old).await.unwrap();
    let first = support::secrets();
    let done = reseal_all(store, &first).await.unwrap();
    assert_eq!((done.resealed, done.current), (1, 2));
    let stored = |id: &str| {
        let id = id.to_string();
        async move {
            store
                .webhook_endpoints()
                .await
                .unwrap()
                .into_iter()
                .find(|e| e.id == id)
                .unwrap()
                .secret
        }
    };
    let legacy = stored("ep_1e9ac1e9ac1e9ac1e9ac").await;
    assert!(sealed(&legacy));
    assert_eq!(
        first
            .open(&webhook_row("ep_1e9ac1e9ac1e9ac1e9ac"), &legacy)
            .unwrap(),
        old.secret
    );

    // Rotation: the new key current, the old one previous; afterwards the old key alone
    // opens nothing and the new one opens everything.
    let rotated = SecretBox::new(&[9; 32], &[vec![7; 32]]).unwrap();
    let done = reseal_all(store, &rotated).await.unwrap();
    assert_eq!((done.resealed, done.current), (3, 0));
    assert_eq!(
        reseal_all(store, &rotated).await.unwrap().resealed,
        0,
        "idempotent"
    );
    let new_only = SecretBox::new(&[9; 32], &[]).unwrap();
    let ep_id = created["id"].as_str().unwrap();
    assert_eq!(
        new_only
            .open(&webhook_row(ep_id), &stored(ep_id).await)
            .unwrap(),
        plain
    );
    assert!(first
        .open(&webhook_row(ep_id), &stored(ep_id).await)
        .is_err());
}

/// A POST retried with its Idempotency-Key is answered from the first time (one credit, not
/// two); the key with another body is a 409; keys are per caller; a bad key is a 400.
#[tokio::test]
async fn idempotency_keys_make_retries_safe() {
    let f = start().await;
    let url = format!("{}/v1/partners/{PARTNER}/credits", f.base);
    let credit = |key: &str, amount: &str| {
        f.client
            .post(&url)
            .bearer_auth(TOKEN)
            .header("idempotency-key", key)
            .json(&json!({"amount": amount, "currency": "EUR", "description": "retried"}))
    };
    let (s1, h1, first) = f.send(credit("credit-0001", "10.00")).await;
    assert_eq!(s1, 201, "{first}");
    assert!(!h1.contains_key("idempotent-replayed"));
    let (s2, h2, again) = f.send(credit("credit-0001", "10.00")).await;
    assert_eq!(
        (s2, again.as_str()),
        (201, first.as_str()),
        "the same answer"
    );
    assert_eq!(h2["idempotent-replayed"], "true");
    let (_, balances) = f
        .admin("GET", &format!("/v1/partners/{PARTNER}/credits"), None)
        .await;
    assert_eq!(
        balances["balances"]["EUR"], "10.00",
        "credited once: {balances}"
    );
    // The same key with another request.
    let (s, h, body) = f.send(credit("credit-0001", "20.00")).await;
    assert_problem(s, &h, &body, 409);
    assert!(body.contains("another request"), "{body}");
    // A refusal (400) is an answer too, replayed as such.
    let (s, _, _) = f.send(credit("credit-0002", "-1")).await;
    assert_eq!(s, 400);
    let (s, h, _) = f.send(credit("credit-0002", "-1")).await;
    assert_eq!(
        (s, &h["idempotent-replayed"]),
        (
            400,
            &"true".parse::<reqwest::header::HeaderValue>().unwrap()
        )
    );
    // Keys are per caller: a partner session's "credit-0001" is not the admin's.
    let cookie = session(&f).await;
    let (s, _, body) = f
        .send(
            f.client
                .post(format!("{}/v1/partners/{PARTNER}/keys", f.base))
                .header("cookie", format!("peage_session={cookie}"))
                .header("x-peage-csrf", "1")
                .header("idempotency-key", "credit-0001")
                .json(&json!({"env": "test"})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, h, body) = f.send(credit("has space", "1.00")).await;
    assert_problem(s, &h, &body, 400);
    let (_, balances) = f
        .admin("GET", &format!("/v1/partners/{PARTNER}/credits"), None)
        .await;
    assert_eq!(balances["balances"]["EUR"], "10.00", "{balances}");
}

/// Service tokens: a gateway token reaches quota leases and is refused (403) on every other
/// route of the OpenAPI document; a read-only token reads and writes nothing; a revoked token
/// is a 401; only admins manage tokens.
#[tokio::test]
async fn service_tokens_reach_only_their_scope() {
    let f = start().await;
    let token = |scope: &str| {
        let f = &f;
        let scope = scope.to_string();
        async move {
            let (s, t) = f
                .admin(
                    "POST",
                    "/v1/service-tokens",
                    Some(json!({"name": format!("{scope}-1"), "scope": scope})),
                )
                .await;
            assert_eq!(s, 201, "{t}");
            assert!(t["token"].as_str().unwrap().starts_with("pst_"));
            t
        }
    };
    let gateway = token("gateway").await;
    let read_only = token("read-only").await;
    let (s, body) = f
        .admin(
            "POST",
            "/v1/service-tokens",
            Some(json!({"name": "x", "scope": "root"})),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let call = |bearer: String, method: reqwest::Method, path: String, body: Option<Value>| {
        let f = &f;
        async move {
            let mut req = f
                .client
                .request(method, format!("{}{path}", f.base))
                .bearer_auth(bearer);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let (s, _, text) = f.send(req).await;
            (s, text)
        }
    };
    let gw = gateway["token"].as_str().unwrap().to_string();
    let lease = json!({"partner_id": PARTNER, "meter": "calls", "gateway_id": "gw-1", "want": 1});
    let (s, body) = call(
        gw.clone(),
        reqwest::Method::POST,
        "/v1/quota/leases".into(),
        Some(lease),
    )
    .await;
    assert_ne!(s, 403, "the gateway token leases: {body}");
    assert!(s < 500, "{body}");

    // Every other /v1 route of the document, with ids filled in.
    let doc = serde_json::to_value(f.served.api.openapi()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete = concrete(path);
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let allowed = peage_billing::service::GATEWAY_ROUTES
                .iter()
                .any(|(am, ap)| am.eq_ignore_ascii_case(method) && ap == path);
            let (s, body) = call(gw.clone(), m.clone(), concrete.clone(), Some(json!({}))).await;
            if allowed {
                assert_ne!(s, 403, "{method} {path}: {body}");
            } else {
                assert_eq!(s, 403, "a gateway token may not {method} {path}: {body}");
                checked += 1;
            }
            // A read-only token: every GET passes the scope check, nothing else does.
            let ro = read_only["token"].as_str().unwrap().to_string();
            let (s, body) = call(ro, m, concrete, Some(json!({}))).await;
            let admin_only = path.starts_with("/v1/service-tokens")
                || path.starts_with("/v1/staff")
                || path == "/v1/audit";
            if method == "get" && !admin_only {
                assert_ne!(s, 403, "read-only may GET {path}: {body}");
            } else {
                assert_eq!(s, 403, "read-only may not {method} {path}: {body}");
            }
        }
    }
    assert!(checked > 30, "{checked} routes checked");

    // Partner sessions do not manage tokens (staff roles: tests/dashboard_api.rs); revocation is
    // immediate.
    let cookie = session(&f).await;
    let (s, h, body) = f
        .send(
            f.client
                .get(format!("{}/v1/service-tokens", f.base))
                .header("cookie", format!("peage_session={cookie}")),
        )
        .await;
    assert_problem(s, &h, &body, 403);
    let (s, listed) = f.admin("GET", "/v1/service-tokens", None).await;
    assert_eq!(s, 200);
    assert!(
        !listed.to_string().contains(&gw),
        "tokens are never listed: {listed}"
    );
    let id = gateway["id"].as_str().unwrap();
    let (s, revoked) = f
        .admin("DELETE", &format!("/v1/service-tokens/{id}"), None)
        .await;
    assert_eq!(s, 200, "{revoked}");
    let lease = json!({"partner_id": PARTNER, "meter": "calls", "gateway_id": "gw-1", "want": 1});
    let (s, _) = call(
        gw,
        reqwest::Method::POST,
        "/v1/quota/leases".into(),
        Some(lease),
    )
    .await;
    assert_eq!(s, 401, "a revoked token is refused at once");
}

/// POST routes that only read: an invoice preview takes a catalog file as its body.
const READ_ONLY_POSTS: &[(&str, &str)] = &[("post", "/v1/partners/{id}/invoices/preview")];
/// Usage coming in: the event log is its record, not the audit log (cancellations are
/// actions, recorded).
const DATA_POSTS: &[(&str, &str)] = &[("post", "/v1/events")];

/// Every mutating route of the OpenAPI document leaves an audit record naming who, what, the
/// target, the status and the request id; secrets in answers are redacted; replays are not
/// recorded twice; the log is admin-only and exports as CSV.
#[tokio::test]
async fn every_mutating_route_leaves_an_audit_record() {
    let f = start().await;
    let doc = serde_json::to_value(f.served.api.openapi()).unwrap();
    let mut actions = Vec::new();
    let mut read_only = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete = concrete(path);
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let (s, h, body) = f
                .send(
                    f.client
                        .request(m, format!("{}{concrete}", f.base))
                        .bearer_auth(TOKEN)
                        .header("x-request-id", format!("req-{method}-{path}"))
                        .json(&json!({})),
                )
                .await;
            assert!(s != 401 && s != 429, "{method} {path}: {s} {body}");
            assert_eq!(h["x-request-id"], format!("req-{method}-{path}").as_str());
            if READ_ONLY_POSTS.contains(&(method, path.as_str()))
                || DATA_POSTS.contains(&(method, path.as_str()))
            {
                read_only.push(format!("req-{method}-{path}"));
                continue;
            }
            actions.push((
                format!("{} {path}", method.to_uppercase()),
                format!("req-{method}-{path}"),
            ));
        }
    }
    assert!(actions.len() >= 20, "{actions:?}");
    // A key: its secret must not reach the log.
    let (s, key) = f
        .admin(
            "POST",
            &format!("/v1/partners/{PARTNER}/keys"),
            Some(json!({"env": "live"})),
        )
        .await;
    assert_eq!(s, 201);
    let secret = key["secret"].as_str().unwrap().to_string();
    // A change keeps what it changed: the key before its revocation, and after.
    let key_id = key["key_id"].as_str().unwrap();
    let (s, _) = f.admin("DELETE", &format!("/v1/keys/{key_id}"), None).await;
    assert_eq!(s, 200);
    let (s, log) = f.admin("GET", "/v1/audit?limit=1000", None).await;
    assert_eq!(s, 200);
    let records = log["records"].as_array().unwrap();
    for (action, request_id) in &actions {
        let r = records
            .iter()
            .find(|r| r["request_id"] == request_id.as_str())
            .unwrap_or_else(|| panic!("no audit record for {action}"));
        assert_eq!(r["action"], action.as_str());
        assert!(r["actor"] == "admin" || r["actor"] == "anonymous", "{r}");
    }
    // A POST that changes nothing (its body is a file) is not an action, nor is usage coming in.
    assert_eq!(read_only.len(), READ_ONLY_POSTS.len() + DATA_POSTS.len());
    for request_id in &read_only {
        assert!(
            records
                .iter()
                .all(|r| r["request_id"] != request_id.as_str()),
            "{request_id} changes nothing, yet it was recorded"
        );
    }
    let credit = records
        .iter()
        .find(|r| r["action"] == "POST /v1/partners/{id}/credits")
        .unwrap();
    assert_eq!(credit["target"], format!("id={PARTNER}"));
    let revoked = records
        .iter()
        .find(|r| {
            r["action"] == "DELETE /v1/keys/{key_id}" && r["target"] == format!("key_id={key_id}")
        })
        .unwrap();
    let before: Value = serde_json::from_str(revoked["before"].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(revoked["after"].as_str().unwrap()).unwrap();
    assert!(
        before["revoked_at"].is_null() && after["revoked_at"].is_string(),
        "{revoked}"
    );
    assert!(!log.to_string().contains(&secret), "secrets are redacted");
    assert!(log.to_string().contains("[redacted]"));
    // Reading is not an action; the log is the admin's.
    let cookie = session(&f).await;
    let (s, h, body) = f
        .send(
            f.client
                .get(format!("{}/v1/audit", f.base))
                .header("cookie", format!("peage_session={cookie}")),
        )
        .await;
    assert_problem(s, &h, &body, 403);
    let (s, h, csv) = f
        .send(
            f.client
                .get(format!("{}/v1/audit?format=csv", f.base))
                .bearer_auth(TOKEN),
        )
        .await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert!(
        csv.starts_with("id,at,actor,action,target,status,request_id,before,after\n"),
        "{csv}"
    );
}
