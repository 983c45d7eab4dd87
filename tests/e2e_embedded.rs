//! End to end, embedded mode: starts the real `peage` binary as a user would, calls the demo API
//! through the gateway, and checks usage, the upcoming invoice, errors, and a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::Value;

#[path = "support/grafana.rs"]
mod grafana;
#[path = "support/net.rs"]
mod net;
use net::free_port;
#[path = "support/peage.rs"]
mod peage_process;
use peage_process::Peage;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn admin_get(p: &Peage, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .send()
        .await
        .unwrap()
}

async fn admin_json(p: &Peage, path: &str) -> Value {
    let r = admin_get(p, path).await;
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("{v} is not a decimal string")),
    )
    .unwrap()
}

async fn calls_metered(p: &Peage) -> Decimal {
    let usage: Value = admin_get(p, &format!("/v1/partners/{}/usage", p.s("partner_id")))
        .await
        .json()
        .await
        .unwrap();
    let calls = usage["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == "calls")
        .expect("calls meter");
    dec(&calls["quantity"])
}

/// Waits until usage reaches `n` (it must never exceed it).
async fn wait_for_calls(p: &Peage, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = calls_metered(p).await;
        assert!(
            seen <= Decimal::from(n),
            "usage shows {seen} calls, more than the {n} made"
        );
        if seen == Decimal::from(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "usage shows {seen} of {n} calls after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The demo plan, priced independently of the engine: base 9.00, 100 calls free, then 0.01 each
/// up to 1,000, VAT 20 %.
/// The demo plan's usage amount and total for `n` calls. The partner was created during the
/// period, so the 9.00 base fee is prorated: the invoice's own base-fee line is checked to be
/// in (0, 9.00] and used as is.
fn demo_invoice_total(n: u64, invoice: &Value) -> (Decimal, Decimal) {
    assert!(n <= 1000);
    let usage = Decimal::from(n.saturating_sub(100)) * Decimal::new(1, 2);
    let base: Decimal = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "base_fee")
        .map(|l| dec(&l["amount"]))
        .sum();
    assert!(
        base > Decimal::ZERO && base <= Decimal::new(900, 2),
        "{invoice}"
    );
    let subtotal = base + usage;
    let tax = (subtotal * Decimal::new(20, 2)).round_dp(2);
    (usage, subtotal + tax)
}

fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    (dir, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_metered_priced_and_survive_a_restart() {
    const N: u64 = 250;
    let (_dir, data) = temp_dir();
    let p = Peage::start(&data);
    let gw = p.s("gateway_url");
    let key = p.s("api_key");

    // N calls, some concurrent, with request bodies.
    let mut tasks = Vec::new();
    for i in 0..N {
        let (gw, key) = (gw.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let r = if i % 5 == 0 {
                c.post(format!("{gw}/demo/v1/echo"))
                    .bearer_auth(&key)
                    .body(format!("payload {i}"))
                    .send()
                    .await
                    .unwrap()
            } else {
                c.get(format!("{gw}/demo/v1/hello"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
            };
            assert_eq!(r.status(), 200);
            let body = r.text().await.unwrap();
            if i % 5 == 0 {
                assert_eq!(
                    body,
                    format!("payload {i}"),
                    "the echo body streams through unchanged"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for_calls(&p, N).await;

    // The upcoming invoice prices exactly those N calls.
    let inv: Value = admin_get(
        &p,
        &format!("/v1/partners/{}/invoices/upcoming", p.s("partner_id")),
    )
    .await
    .json()
    .await
    .unwrap();
    let inv = &inv["invoice"];
    let calls_lines: Vec<&Value> = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["meter"] == "calls")
        .collect();
    let quantity: Decimal = calls_lines.iter().map(|l| dec(&l["quantity"])).sum();
    assert_eq!(quantity, Decimal::from(N), "{inv}");
    let (usage_amount, total) = demo_invoice_total(N, inv);
    let amount: Decimal = calls_lines.iter().map(|l| dec(&l["amount"])).sum();
    assert_eq!(amount, usage_amount, "{inv}");
    assert_eq!(dec(&inv["total"]), total, "{inv}");
    assert_eq!(inv["currency"], "EUR");

    // The same invoice as CSV for finance.
    let csv = admin_get(
        &p,
        &format!(
            "/v1/partners/{}/invoices/upcoming?format=csv",
            p.s("partner_id")
        ),
    )
    .await;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert!(
        csv.lines()
            .any(|l| l.contains(",usage,")
                && l.ends_with(&format!(",{},0.01,{usage_amount},", N - 100))),
        "{csv}"
    );

    // Restart on the same data directory: partner, key and every metered call are still there.
    p.interrupt();
    let p = Peage::start(&data);
    assert_eq!(p.s("api_key"), key, "the demo key is kept across restarts");
    assert_eq!(calls_metered(&p).await, Decimal::from(N));
    let r = client()
        .get(format!("{}/demo/v1/hello", p.s("gateway_url")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for_calls(&p, N + 1).await;

    // The demo key rotated from the dashboard: the next start keeps the same demo partner
    // (never a second one) and prints a new key of its own that works.
    let partner_id = p.s("partner_id");
    let keys: Value = admin_get(&p, &format!("/v1/partners/{partner_id}/keys"))
        .await
        .json()
        .await
        .unwrap();
    let key_id = keys["keys"][0]["key_id"].as_str().unwrap().to_string();
    let rotated = admin_post(&p, &format!("/v1/keys/{key_id}/rotate"), Value::Null).await;
    assert!(rotated["secret"].is_string(), "{rotated}");
    p.interrupt();
    let p = Peage::start(&data);
    assert_eq!(p.s("partner_id"), partner_id);
    let key = p.s("api_key");
    assert_ne!(key, rotated["secret"].as_str().unwrap());
    let partners: Value = admin_get(&p, "/v1/partners").await.json().await.unwrap();
    assert_eq!(
        partners["partners"].as_array().unwrap().len(),
        1,
        "{partners}"
    );
    let r = client()
        .get(format!("{}/demo/v1/hello", p.s("gateway_url")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for_calls(&p, N + 2).await;
    p.interrupt();

    // Finance's batch work on the same data directory: `peage invoice run` twice (the second
    // changes nothing), then exports.
    let label = chrono::Utc::now().format("%Y-%m").to_string();
    let peage = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_peage"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = peage(&["invoice", "run", "--period", &label]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("partners 1 · not due 0 · created 1 ·"),
        "{out}"
    );
    let (ok, out, err) = peage(&["invoice", "run", "--period", &label]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("created 0 · updated 0 · unchanged 1"), "{out}");
    let (ok, csv, err) = peage(&["invoice", "export", "--period", &label, "--format", "csv"]);
    assert!(ok, "{err}");
    assert!(
        csv.starts_with("invoice_id,number,status,partner_id,"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.contains(",draft,") && l.contains(&format!(",{},0.01,", N + 2 - 100))),
        "{csv}"
    );
    let (ok, json, err) = peage(&["invoice", "export", "--period", &label, "--format", "json"]);
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["invoices"].as_array().unwrap().len(), 1, "{json}");
    let out_dir = data.join("pdf");
    let (ok, _, err) = peage(&[
        "invoice",
        "export",
        "--period",
        &label,
        "--format",
        "pdf",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let pdfs: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert_eq!(pdfs.len(), 1);
    let pdf = std::fs::read(pdfs[0].as_ref().unwrap().path()).unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    // Mistakes are clear errors.
    let (ok, _, err) = peage(&["invoice", "export", "--period", &label, "--format", "pdf"]);
    assert!(!ok && err.contains("--out DIR"), "{err}");
    let (ok, _, err) = peage(&["invoice", "run", "--period", "2026-13"]);
    assert!(!ok && err.contains("YYYY-MM"), "{err}");
}

async fn assert_problem(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("https://peage.dev/problems/"),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_control_api_errors_are_problem_json() {
    let (_dir, data) = temp_dir();
    let p = Peage::start(&data);
    let gw = p.s("gateway_url");
    let c = client();

    assert_problem(
        c.get(format!("{gw}/demo/v1/hello")).send().await.unwrap(),
        401,
    )
    .await;
    let unknown = format!("pk_live_{}", "Z".repeat(32));
    let body = assert_problem(
        c.get(format!("{gw}/demo/v1/hello"))
            .bearer_auth(&unknown)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(body["detail"], "unknown API key");
    assert_problem(
        c.get(format!("{gw}/nope/v1/hello"))
            .bearer_auth(p.s("api_key"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(
        c.get(format!("{gw}/demo/v9/hello"))
            .bearer_auth(p.s("api_key"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;

    // A deprecated version still answers, with its lifecycle headers; the current one has none.
    let old = c
        .get(format!("{gw}/demo/v0/hello"))
        .bearer_auth(p.s("api_key"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 200);
    let h = old.headers();
    assert_eq!(
        h["deprecation"], "@1788220800",
        "2026-09-01T00:00:00Z (RFC 9745)"
    );
    assert_eq!(h["sunset"], "Wed, 30 Jun 2027 00:00:00 GMT", "RFC 8594");
    assert_eq!(h["link"], "</demo/v1>; rel=\"successor-version\"");
    let current = c
        .get(format!("{gw}/demo/v1/hello"))
        .bearer_auth(p.s("api_key"))
        .send()
        .await
        .unwrap();
    assert!(
        !current.headers().contains_key("deprecation") && !current.headers().contains_key("sunset")
    );

    // The version may come in an Api-Version header instead of the path.
    let get = |path: &str, version: &str| {
        c.get(format!("{gw}{path}"))
            .bearer_auth(p.s("api_key"))
            .header("api-version", version)
            .send()
    };
    let by_header = get("/demo/hello", "v0").await.unwrap();
    assert_eq!(by_header.status(), 200);
    assert_eq!(by_header.headers()["deprecation"], "@1788220800");
    assert_eq!(
        by_header.text().await.unwrap(),
        current.text().await.unwrap()
    );
    let same = get("/demo/v1/hello", "v1").await.unwrap();
    assert_eq!(same.status(), 200, "path and header may both say v1");
    let body = assert_problem(get("/demo/v1/hello", "v0").await.unwrap(), 400).await;
    assert_eq!(
        body["type"],
        "https://peage.dev/problems/api-version-conflict"
    );
    assert_problem(get("/demo/hello", "v9").await.unwrap(), 404).await;

    // The control API refuses a wrong admin token and the partner's own key.
    let ctl = p.s("control_url");
    assert_problem(
        c.get(format!("{ctl}/v1/plans"))
            .bearer_auth(p.s("api_key"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_problem(
        c.post(format!("{ctl}/v1/partners"))
            .bearer_auth(p.s("admin_token"))
            .body("{\"name\": 1}")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        c.post(format!("{ctl}/v1/partners"))
            .bearer_auth(p.s("admin_token"))
            .body("{\"name\":\"Acme\",\"plan\":\"gold\"}")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        admin_get(&p, "/v1/partners/prt_00000000000000000000/usage").await,
        404,
    )
    .await;

    // A new partner gets a key, calls once, and a revoked key stops working at once.
    let partner: Value = c
        .post(format!("{ctl}/v1/partners"))
        .bearer_auth(p.s("admin_token"))
        .json(&serde_json::json!({"name": "Acme", "plan": "demo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = partner["id"].as_str().unwrap();
    let created = c
        .post(format!("{ctl}/v1/partners/{pid}/keys"))
        .bearer_auth(p.s("admin_token"))
        .json(&serde_json::json!({"env": "live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("pk_live_"));
    let keys: Value = admin_get(&p, &format!("/v1/partners/{pid}/keys"))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        !keys.to_string().contains(secret),
        "a listed key never shows its secret"
    );
    assert_eq!(
        c.get(format!("{gw}/demo/v1/hello"))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let revoked = c
        .delete(format!(
            "{ctl}/v1/keys/{}",
            created["key_id"].as_str().unwrap()
        ))
        .bearer_auth(p.s("admin_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let body = assert_problem(
        c.get(format!("{gw}/demo/v1/hello"))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(body["detail"], "this API key has been revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failure_is_502_and_metered() {
    let (dir, data) = temp_dir();
    // A catalog whose upstream refuses connections (a port nothing listens on).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    std::fs::create_dir_all(&data).unwrap();
    let catalog = format!("[[api]]\nname = \"down\"\n[[api.versions]]\nid = \"v1\"\nlive = \"http://127.0.0.1:{port}\"\n\n");
    let demo_catalog = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/demo-catalog.toml"),
    )
    .unwrap();
    std::fs::write(
        data.join("catalog.toml"),
        format!("{catalog}{demo_catalog}"),
    )
    .unwrap();
    let p = Peage::start(&data);
    let r = client()
        .get(format!("{}/down/v1/anything", p.s("gateway_url")))
        .bearer_auth(p.s("api_key"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 502).await;
    wait_for_calls(&p, 1).await;
    drop(dir);
}

#[test]
fn a_malformed_catalog_stops_start_up_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(
        &path,
        "[[meter]]\nname = \"calls\"\naggregation = \"count\"\n\n[[plan]]\nid = \"p\"\ncurrency = \"EUR\"\ncharges = [{ meter = \"callz\", model = \"per_unit\", unit_price = \"0.01\" }]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_peage"))
        .args([
            "up",
            "--gateway-listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--catalog")
        .arg(&path)
        .env("PEAGE_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:8:", path.display());
    assert!(stderr.contains(&expected), "no file:line in: {stderr}");
    assert!(
        stderr.contains("plan[p].charges[0].meter") && stderr.contains("callz"),
        "no field in: {stderr}"
    );
}

/// The demo catalog with the demo plan's quota made hard (30 calls), and a `throttled` plan of
/// 1 call/s with a burst of 3.
fn limits_catalog(data: &Path) {
    std::fs::create_dir_all(data).unwrap();
    let demo_catalog = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/demo-catalog.toml"),
    )
    .unwrap();
    let hard = "{ meter = \"calls\", limit = 30, kind = \"hard\" }";
    let catalog = demo_catalog.replace(
        "{ meter = \"calls\", limit = 100000, kind = \"soft\" }",
        hard,
    );
    assert!(catalog.contains(hard));
    let throttled = "\n[[plan]]\nid = \"throttled\"\ncurrency = \"EUR\"\nperiod = { every = \"month\", anchor_day = 1 }\nbase_fee = \"0\"\nrate_limit = { per_second = 1, burst = 3 }\n";
    std::fs::write(data.join("catalog.toml"), format!("{catalog}{throttled}")).unwrap();
}

async fn admin_post(p: &Peage, path: &str, body: Value) -> Value {
    let r = client()
        .post(format!("{}{path}", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "POST {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn call(p: &Peage, key: &str) -> reqwest::Response {
    client()
        .get(format!("{}/demo/v1/hello", p.s("gateway_url")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_quotas_rate_limits_and_the_sandbox() {
    let (_dir, data) = temp_dir();
    limits_catalog(&data);
    let p = Peage::start(&data);
    let live = p.s("api_key");
    let ready: Value = client()
        .get(format!("{}/readyz", p.s("gateway_url")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");

    // A hard quota of 30 calls: exactly 30 pass, the rest are 429 with the IETF headers.
    let mut statuses = vec![];
    for _ in 0..40 {
        let r = call(&p, &live).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(header(&r, "ratelimit-policy").starts_with("\"calls\";q=30;w="));
            assert!(header(&r, "ratelimit").starts_with("\"calls\";r=0;t="));
            let retry: u64 = header(&r, "retry-after").parse().unwrap();
            assert!(retry > 0 && retry <= 31 * 86_400, "{retry}");
            let body = assert_problem(r, 429).await;
            assert_eq!(body["type"], "https://peage.dev/problems/quota-exceeded");
        } else {
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        30,
        "{statuses:?}"
    );
    assert!(statuses[..30].iter().all(|s| *s == 200), "{statuses:?}");
    wait_for_calls(&p, 30).await;
    let quotas = admin_get(&p, &format!("/v1/partners/{}/quotas", p.s("partner_id")))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let q = &quotas["quotas"][0];
    assert_eq!(
        (q["meter"].as_str(), q["kind"].as_str()),
        (Some("calls"), Some("hard"))
    );
    assert_eq!(dec(&q["used"]), Decimal::from(30));
    assert_eq!(dec(&q["remaining"]), Decimal::ZERO);
    assert_eq!(q["decision"], "hard_blocked");

    // Sandbox keys have their own quota ledger, and their calls never reach an invoice.
    let partner = p.s("partner_id");
    let test_key = admin_post(
        &p,
        &format!("/v1/partners/{partner}/keys"),
        serde_json::json!({"env": "test"}),
    )
    .await;
    let test_key = test_key["secret"].as_str().unwrap().to_string();
    for _ in 0..5 {
        let r = call(&p, &test_key).await;
        assert_eq!(r.status(), 200, "the live quota does not block the sandbox");
        r.bytes().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let usage: Value = admin_get(&p, &format!("/v1/partners/{partner}/usage?env=sandbox"))
            .await
            .json()
            .await
            .unwrap();
        let calls = usage["meters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["meter"] == "calls")
            .map(|m| dec(&m["quantity"]));
        if calls == Some(Decimal::from(5)) {
            break;
        }
        assert!(Instant::now() < deadline, "sandbox usage: {usage}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sandbox_quotas: Value =
        admin_get(&p, &format!("/v1/partners/{partner}/quotas?env=sandbox"))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(dec(&sandbox_quotas["quotas"][0]["used"]), Decimal::from(5));
    let invoice: Value = admin_get(&p, &format!("/v1/partners/{partner}/invoices/upcoming"))
        .await
        .json()
        .await
        .unwrap();
    let (_, total) = demo_invoice_total(30, &invoice["invoice"]);
    assert_eq!(dec(&invoice["invoice"]["total"]), total, "{invoice}");
    let call_lines: Decimal = invoice["invoice"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["meter"] == "calls")
        .map(|l| dec(&l["quantity"]))
        .sum();
    assert_eq!(
        call_lines,
        Decimal::from(30),
        "only live calls are invoiced"
    );

    // Rate limit: 1 call/s with a burst of 3, per key.
    let throttled = admin_post(
        &p,
        "/v1/partners",
        serde_json::json!({"name": "Slow Co", "plan": "throttled"}),
    )
    .await;
    let key = admin_post(
        &p,
        &format!("/v1/partners/{}/keys", throttled["id"].as_str().unwrap()),
        serde_json::json!({"env": "live"}),
    )
    .await;
    let key = key["secret"].as_str().unwrap();
    let mut codes = vec![];
    for _ in 0..5 {
        let r = call(&p, key).await;
        codes.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(header(&r, "ratelimit-policy"), "\"rate\";q=1;w=1");
            assert_eq!(header(&r, "ratelimit"), "\"rate\";r=0;t=1");
            assert_eq!(header(&r, "retry-after"), "1");
            let body = assert_problem(r, 429).await;
            assert_eq!(body["type"], "https://peage.dev/problems/rate-limited");
        }
    }
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&p, key).await.status(), 200, "one more after a second");
}

async fn token(
    p: &Peage,
    client_id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    client()
        .post(format!("{}/oauth/token", p.s("control_url")))
        .basic_auth(client_id, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap()
}

async fn call_with(p: &Peage, path: &str, bearer: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", p.s("gateway_url")))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

/// Asserts a 401 problem whose detail says `why`.
async fn refused(r: reqwest::Response, why: &str) {
    let body = assert_problem(r, 401).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(why), "{detail:?} should say {why:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_from_peage_and_from_a_partner_identity_provider() {
    let (_dir, data) = temp_dir();
    // The test's identity provider is on http://127.0.0.1, which the outbound policy refuses
    // unless told otherwise; 127.0.0.1 alone is allowed, not the rest of loopback.
    let p = Peage::start_with(
        &data,
        &[
            ("PEAGE_OUTBOUND__ALLOW_HTTP", "true"),
            ("PEAGE_OUTBOUND__ALLOW_PRIVATE", "[\"127.0.0.1\"]"),
        ],
    );
    let partner = p.s("partner_id");
    let key = admin_post(
        &p,
        &format!("/v1/partners/{partner}/keys"),
        serde_json::json!({"env": "live"}),
    )
    .await;
    let (key_id, secret) = (
        key["key_id"].as_str().unwrap(),
        key["secret"].as_str().unwrap(),
    );

    // OAuth2 client credentials: the key id and secret buy an EdDSA JWT.
    let grant = [("grant_type", "client_credentials")];
    let r = token(&p, key_id, secret, &grant).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: Value = r.json().await.unwrap();
    assert_eq!(
        (t["token_type"].as_str(), t["expires_in"].as_i64()),
        (Some("Bearer"), Some(3600))
    );
    let jwt = t["access_token"].as_str().unwrap().to_string();
    let r = call_with(&p, "/demo/v1/hello", &jwt).await;
    assert_eq!(r.status(), 200);
    let bad = token(&p, key_id, "pk_live_wrong", &grant).await;
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let bad = token(&p, key_id, secret, &[("grant_type", "password")]).await;
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    let bad = token(
        &p,
        key_id,
        secret,
        &[("grant_type", "client_credentials"), ("scope", "nope")],
    )
    .await;
    assert_eq!(bad.json::<Value>().await.unwrap()["error"], "invalid_scope");

    // A scoped token may call only what its scope names.
    let scoped: Value = token(
        &p,
        key_id,
        secret,
        &[("grant_type", "client_credentials"), ("scope", "demo:v0")],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(scoped["scope"], "demo:v0");
    let scoped = scoped["access_token"].as_str().unwrap();
    let r = call_with(&p, "/demo/v1/hello", scoped).await;
    let body = assert_problem(r, 403).await;
    assert_eq!(
        body["type"],
        "https://peage.dev/problems/insufficient-scope"
    );
    assert_eq!(call_with(&p, "/demo/v0/hello", scoped).await.status(), 200);

    // Rotation: old tokens keep working, new ones are signed by the new key, the JWKS has both.
    let rotated = client()
        .post(format!(
            "{}/v1/oauth/signing-keys/rotate",
            p.s("control_url")
        ))
        .bearer_auth(p.s("admin_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 201);
    let jwks: Value = client()
        .get(format!("{}/.well-known/jwks.json", p.s("control_url")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["kty"] == "OKP" && k["alg"] == "EdDSA"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh: Value = token(&p, key_id, secret, &grant)
        .await
        .json()
        .await
        .unwrap();
    let fresh = fresh["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        call_with(&p, "/demo/v1/hello", &fresh).await.status(),
        200,
        "new key"
    );
    assert_eq!(
        call_with(&p, "/demo/v1/hello", &jwt).await.status(),
        200,
        "old key"
    );

    // Tampering and revocation.
    // One token's header and claims with another token's signature.
    let (signed_part, _) = jwt.rsplit_once('.').unwrap();
    let (_, other_signature) = fresh.rsplit_once('.').unwrap();
    let tampered = format!("{signed_part}.{other_signature}");
    refused(
        call_with(&p, "/demo/v1/hello", &tampered).await,
        "signature",
    )
    .await;
    let revoked = client()
        .delete(format!("{}/v1/keys/{key_id}", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    refused(call_with(&p, "/demo/v1/hello", &fresh).await, "revoked").await;

    // A partner's own identity provider, RS256 pinned.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let jwks_doc = std::fs::read_to_string(fixtures.join("partner-idp-jwks.json")).unwrap();
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_url = format!("http://{}/jwks.json", idp.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = jwks_doc.clone();
            async move { ([("content-type", "application/json")], doc) }
        }),
    );
    tokio::spawn(async move { axum::serve(idp, app).await });
    let r = client()
        .put(format!("{}/v1/partners/{partner}/issuer", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .json(&serde_json::json!({"issuer": "https://idp.acme.test", "jwks_url": idp_url, "algorithm": "RS256", "audience": "acme-api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let issuer: Value = r.json().await.unwrap();
    assert!(issuer["id"].as_str().unwrap().starts_with("iss_"));
    // JWKS URLs that would make the gateway call what it must not: refused when registered.
    for (jwks_url, why) in [
        ("http://127.0.0.2/jwks.json", "not a public address"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "not a public address",
        ),
        ("http://0x7f000001/jwks.json", "written as a number"),
        (
            "http://user:pw@idp.acme.test/jwks.json",
            "user name or password",
        ),
    ] {
        let r = client()
            .put(format!("{}/v1/partners/{partner}/issuer", p.s("control_url")))
            .bearer_auth(p.s("admin_token"))
            .json(&serde_json::json!({"issuer": "https://evil.test", "jwks_url": jwks_url, "algorithm": "RS256", "audience": "a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{jwks_url}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains(why),
            "{jwks_url}: {body}"
        );
    }
    let hs = client()
        .put(format!("{}/v1/partners/{partner}/issuer", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .json(&serde_json::json!({"issuer": "https://x", "jwks_url": "http://x/j", "algorithm": "HS256", "audience": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        hs.status(),
        400,
        "no shared-secret algorithms for partner issuers"
    );

    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let pem = std::fs::read(fixtures.join("partner-idp-rsa.pem")).unwrap();
    let rsa = EncodingKey::from_rsa_pem(&pem).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = |iss: &str, aud: &str, exp: i64, nbf: i64| serde_json::json!({"iss": iss, "aud": aud, "sub": "svc-billing", "exp": exp, "nbf": nbf, "iat": now});
    let good = claims("https://idp.acme.test", "acme-api", now + 600, now - 10);
    let mut rs256 = Header::new(Algorithm::RS256);
    rs256.kid = Some("acme-1".into());
    let sign = |c: &Value| encode(&rs256, c, &rsa).unwrap();
    assert_eq!(
        call_with(&p, "/demo/v1/hello", &sign(&good)).await.status(),
        200
    );

    // Each refusal, with its reason.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    refused(
        call_with(&p, "/demo/v1/hello", &none).await,
        "not an acceptable JWT",
    )
    .await;
    // HS/RS confusion: an HMAC signed with the provider's public key as the secret.
    let public_pem = std::fs::read(fixtures.join("partner-idp-rsa.pub.pem")).unwrap();
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.kid = Some("acme-1".into());
    let confused = encode(&hs256, &good, &EncodingKey::from_secret(&public_pem)).unwrap();
    refused(
        call_with(&p, "/demo/v1/hello", &confused).await,
        "not accepted from this issuer",
    )
    .await;
    let idp = "https://idp.acme.test";
    for (iss, aud, exp, nbf, why) in [
        (idp, "acme-api", now - 3600, now - 7200, "expired"),
        (idp, "acme-api", now + 7200, now + 3600, "not valid yet"),
        (idp, "someone-else", now + 600, now - 10, "audience"),
        (
            "https://idp.evil.test",
            "acme-api",
            now + 600,
            now - 10,
            "not accepted",
        ),
        // Péage's own issuer name with the partner's key: wrong algorithm for that issuer.
        (
            "urn:peage:control",
            "urn:peage:gateway",
            now + 600,
            now - 10,
            "not accepted from this issuer",
        ),
    ] {
        let token = sign(&claims(iss, aud, exp, nbf));
        refused(call_with(&p, "/demo/v1/hello", &token).await, why).await;
    }
}

/// The demo catalog plus a GraphQL API (on the demo upstream's echo route) and a gRPC API on a
/// real tonic server, with meters that split calls and units by operation.
fn protocols_catalog(data: &Path, grpc_upstream: &str) {
    std::fs::create_dir_all(data).unwrap();
    let demo_catalog = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/demo-catalog.toml"),
    )
    .unwrap();
    let extra = format!(
        r#"
[[api]]
name = "graph"
[[api.versions]]
id = "v1"
protocol = "graphql"
live = "${{PEAGE_DEMO_UPSTREAM}}"
operations = {{ GetForecast = {{ units = 3 }} }}

[[api]]
name = "greet"
[[api.versions]]
id = "v1"
protocol = "grpc"
grpc_services = ["greet.v1.Greeter"]
live = "{grpc_upstream}"
operations = {{ "/greet.v1.Greeter/Collect" = {{ units = 2 }} }}

[[meter]]
name = "units_by_operation"
aggregation = "sum"
field = "units"
group_by = ["operation"]
"#
    );
    std::fs::write(data.join("catalog.toml"), format!("{demo_catalog}{extra}")).unwrap();
}

/// The events the gateway wrote for `api`, read from the embedded usage store.
async fn events_of(data: &Path, api: &str, n: usize) -> Vec<Value> {
    let url = format!("sqlite://{}?mode=ro", data.join("usage.db").display());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        let rows: Vec<(String, String, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT operation, units, status, request_bytes, response_bytes, attributes \
             FROM call_events WHERE api = ? ORDER BY time_us",
        )
        .bind(api)
        .fetch_all(&mut db)
        .await
        .unwrap();
        assert!(
            rows.len() <= n,
            "{} events for {api}, more than {n}",
            rows.len()
        );
        if rows.len() == n {
            return rows
                .into_iter()
                .map(|(op, units, status, req, resp, attrs)| {
                    serde_json::json!({ "operation": op, "units": units, "status": status,
                        "request_bytes": req, "response_bytes": resp,
                        "attributes": serde_json::from_str::<Value>(&attrs).unwrap() })
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} events for {api}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_and_grpc_calls_are_metered_per_operation_over_http2() {
    use peage_grpc_upstream::pb::{CountdownRequest, HelloRequest};
    use peage_grpc_upstream::GreeterClient;

    let (_dir, data) = temp_dir();
    let upstream = peage_grpc_upstream::spawn().await.unwrap();
    protocols_catalog(&data, &format!("http://{upstream}"));
    let p = Peage::start_with(&data, &[("PEAGE_GATEWAY__MAX_REQUEST_BODY_BYTES", "65536")]);
    let key = p.s("api_key");
    let gw = p.s("gateway_url");

    // GraphQL over HTTP/2 (prior knowledge), as a partner's HTTP/2 client would send it.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let doc = "query GetForecast { a: forecast(city: \"Paris\") { temp } ...Extra } \
               fragment Extra on Query { alerts } query Other { x }";
    for _ in 0..3 {
        let r = h2
            .post(format!("{gw}/graph/v1/echo"))
            .bearer_auth(&key)
            .json(&serde_json::json!({ "query": doc, "operationName": "GetForecast" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        // The upstream got the document untouched.
        let echoed: Value = r.json().await.unwrap();
        assert_eq!(echoed["query"], doc, "{echoed}");
    }
    let r = client()
        .get(format!(
            "{gw}/graph/v1/echo?query=query%20Ping%20%7B%20ping%20%7D"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        405,
        "the echo route is POST only; the call is still metered"
    );
    let r = client()
        .post(format!("{gw}/graph/v1/echo"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "query": "mutation { book(id: 1) { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (body, why) in [
        (
            serde_json::json!({ "query": "query A { x" }),
            "does not parse",
        ),
        (
            serde_json::json!({ "query": "query A { x } query B { y }" }),
            "operationName",
        ),
    ] {
        let r = client()
            .post(format!("{gw}/graph/v1/echo"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(r, 400).await;
        assert!(
            problem["detail"].as_str().unwrap().contains(why),
            "{problem}"
        );
    }
    let big = "x".repeat(70_000);
    let r = client()
        .post(format!("{gw}/graph/v1/echo"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "query": format!("query Big {{ a(s: \"{big}\") }}") }))
        .send()
        .await
        .unwrap();
    assert_problem(r, 413).await;
    // A chunked body (no Content-Length) that outgrows the limit is cut off at the limit. The
    // gateway answers 413 and closes while the client may still be writing, so a client can see
    // the closed connection (EPIPE) before the answer: that is retried, and a 413 must come.
    let mut answered = false;
    for _ in 0..10 {
        let chunks = (0..20).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 8192]));
        match client()
            .post(format!("{gw}/demo/v1/echo"))
            .bearer_auth(&key)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
        {
            Ok(r) => {
                assert_problem(r, 413).await;
                answered = true;
                break;
            }
            Err(e) => assert!(e.is_request(), "{e}"),
        }
    }
    assert!(answered, "no 413 in 10 tries");

    // Two 400s and a 413 of an identified partner are recorded refusals (docs/gateway.md).
    let graph = events_of(&data, "graph", 8).await;
    for e in &graph[..3] {
        assert_eq!(e["operation"], "GetForecast");
        assert_eq!(e["units"], "3");
        assert_eq!(e["attributes"]["graphql_operation_type"], "query");
        assert_eq!(e["attributes"]["graphql_root_fields"], "alerts,forecast");
    }
    assert_eq!(
        (graph[3]["operation"].as_str(), graph[3]["status"].as_i64()),
        (Some("Ping"), Some(405))
    );
    assert_eq!(graph[4]["operation"], "anonymous");
    assert_eq!(graph[4]["attributes"]["graphql_operation_type"], "mutation");
    assert_eq!(graph[4]["attributes"]["graphql_root_fields"], "book");
    let refused: Vec<_> = graph[5..]
        .iter()
        .map(|e| {
            (
                e["status"].as_i64().unwrap(),
                e["units"].as_str().unwrap(),
                e["attributes"]["refusal"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            (400, "0", "bad-graphql-request"),
            (400, "0", "bad-graphql-request"),
            (413, "0", "request-too-large"),
        ]
    );

    // gRPC over h2c: the partner's tonic client names the service; the catalog routes it.
    let channel = tonic::transport::Channel::from_shared(gw.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
    let mut greeter =
        GreeterClient::with_interceptor(channel.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
    let hello = |name: &str| HelloRequest { name: name.into() };
    for name in ["ada", "bob"] {
        let reply = greeter.say_hello(hello(name)).await.unwrap().into_inner();
        assert_eq!(reply.message, format!("hello {name}"));
    }
    let mut countdown = greeter
        .countdown(CountdownRequest { count: 5 })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = countdown.message().await.unwrap() {
        got.push(m.message);
    }
    assert_eq!(got, ["4", "3", "2", "1", "0"]);
    let collected = greeter
        .collect(futures::stream::iter(["a", "b", "c"].map(hello)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(collected.message, "a,b,c");
    let mut chat = greeter
        .chat(futures::stream::iter(["w", "x", "y", "z"].map(hello)))
        .await
        .unwrap()
        .into_inner();
    let mut replies = 0;
    while let Some(m) = chat.message().await.unwrap() {
        assert!(m.message.starts_with("hi "));
        replies += 1;
    }
    assert_eq!(replies, 4);
    let missing = greeter.missing(hello("x")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // The gateway's own refusals reach a gRPC client as gRPC statuses, and are not metered.
    let mut anonymous = GreeterClient::new(channel);
    let refused = anonymous.say_hello(hello("eve")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let grpc = events_of(&data, "greet", 6).await;
    let summary: Vec<(String, String, String, String, String)> = grpc
        .iter()
        .map(|e| {
            let a = &e["attributes"];
            let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
            (
                s(&e["operation"]),
                s(&e["units"]),
                s(&a["grpc_status"]),
                s(&a["grpc_request_messages"]),
                s(&a["grpc_response_messages"]),
            )
        })
        .collect();
    let row = |op: &str, units: &str, status: &str, sent: &str, received: &str| {
        (
            format!("/greet.v1.Greeter/{op}"),
            units.into(),
            status.into(),
            sent.into(),
            received.into(),
        )
    };
    assert_eq!(
        summary,
        [
            row("SayHello", "1", "0", "1", "1"),
            row("SayHello", "1", "0", "1", "1"),
            row("Countdown", "5", "0", "1", "5"),
            row("Collect", "6", "0", "3", "1"),
            row("Chat", "4", "0", "4", "4"),
            row("Missing", "1", "5", "1", "0"),
        ]
    );
    for e in &grpc {
        assert_eq!(
            e["status"], 200,
            "gRPC answers are HTTP 200; the status is in grpc_status"
        );
        assert!(e["request_bytes"].as_i64().unwrap() > 0 && e["response_bytes"].as_i64().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_calls_in_flight_and_meters_them() {
    let (_dir, data) = temp_dir();
    let p = Peage::start(&data);
    let key = p.s("api_key");
    let url = format!("{}/demo/v1/slow?ms=1500", p.s("gateway_url"));
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (url, key) = (url.clone(), key.clone());
            tokio::spawn(async move {
                client()
                    .get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = p.child.id();
    // SIGTERM while the 20 calls wait on the upstream: each must still get its answer.
    let stopping = tokio::task::spawn_blocking(move || p.stop_with("-TERM"));
    for c in calls {
        assert_eq!(c.await.unwrap().expect("an answer, not a reset"), 200);
    }
    stopping.await.unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let p = Peage::start(&data);
    wait_for_calls(&p, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_a_tls_upstream_signed_by_a_private_ca() {
    use peage_grpc_upstream::pb::{CountdownRequest, HelloRequest};
    use peage_grpc_upstream::GreeterClient;

    let (_dir, data) = temp_dir();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let upstream =
        peage_grpc_upstream::spawn_tls(cert_pem.clone(), cert.signing_key.serialize_pem())
            .await
            .unwrap();
    protocols_catalog(&data, &format!("https://{upstream}"));
    let ca_file = data.join("upstream-ca.pem");
    std::fs::write(&ca_file, &cert_pem).unwrap();

    let greeter = |p: &Peage| {
        let (gw, key) = (p.s("gateway_url"), p.s("api_key"));
        async move {
            let channel = tonic::transport::Channel::from_shared(gw)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let bearer: tonic::metadata::MetadataValue<_> =
                format!("Bearer {key}").parse().unwrap();
            GreeterClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", bearer.clone());
                Ok(r)
            })
        }
    };
    let hello = || HelloRequest { name: "tls".into() };

    // Without the CA the upstream's certificate is not trusted: UNAVAILABLE, metered as a 502.
    let p = Peage::start(&data);
    let refused = greeter(&p).await.say_hello(hello()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    events_of(&data, "greet", 1).await;
    p.interrupt();

    let ca = ca_file.to_str().unwrap();
    let p = Peage::start_with(&data, &[("PEAGE_GATEWAY__UPSTREAM_CA_FILE", ca)]);
    let mut g = greeter(&p).await;
    assert_eq!(
        g.say_hello(hello()).await.unwrap().into_inner().message,
        "hello tls"
    );
    let mut stream = g
        .countdown(CountdownRequest { count: 3 })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    let events = events_of(&data, "greet", 3).await;
    let seen: Vec<(i64, &str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["status"].as_i64().unwrap(),
                e["operation"].as_str().unwrap(),
                e["units"].as_str().unwrap(),
                e["attributes"]["grpc_status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (502, "/greet.v1.Greeter/SayHello", "1", "14"),
            (200, "/greet.v1.Greeter/SayHello", "1", "0"),
            (200, "/greet.v1.Greeter/Countdown", "3", "0"),
        ]
    );
}

/// Signing seeds are sealed in billing.db with `<data-dir>/secrets.key`; `peage secrets rotate`
/// is refused while `peage up` runs, and afterwards replaces the key, reseals every secret and
/// deletes the old key: the next start serves the same signing keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_secrets_are_sealed_and_the_key_rotates_from_the_cli() {
    use peage_billing_store::BillingStore;
    let (_dir, data) = temp_dir();
    let jwks = |p: &Peage| {
        let url = format!("{}/.well-known/jwks.json", p.s("control_url"));
        async move {
            let v: Value = client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["keys"].clone()
        }
    };
    let p = Peage::start(&data);
    let before = jwks(&p).await;
    assert_eq!(before.as_array().unwrap().len(), 1, "{before}");
    let store = peage_billing_store::SqliteBillingStore::open(&data.join("billing.db"))
        .await
        .unwrap();
    let seeds: Vec<String> = store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.seed)
        .collect();
    assert!(seeds.iter().all(|s| s.starts_with("enc:v1:")), "{seeds:?}");
    let rotate = || {
        Command::new(env!("CARGO_BIN_EXE_peage"))
            .args(["secrets", "rotate", "--data-dir"])
            .arg(&data)
            .env("PEAGE_LOG", "warn")
            .output()
            .unwrap()
    };
    let busy = rotate();
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use by a running `peage up`"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    p.interrupt();
    let old_key = std::fs::read_to_string(data.join("secrets.key")).unwrap();
    let done = rotate();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("1 secrets sealed with the new key"));
    assert_ne!(
        std::fs::read_to_string(data.join("secrets.key")).unwrap(),
        old_key
    );
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("secrets.") && n != "secrets.key")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let resealed: Vec<String> = store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.seed)
        .collect();
    assert_ne!(resealed, seeds);
    let p = Peage::start(&data);
    assert_eq!(
        jwks(&p).await,
        before,
        "the same signing key, opened with the new KEK"
    );
    p.interrupt();
}

/// The demo catalog plus a meter of LLM tokens (sum of `data.tokens` by `data.model`) priced
/// at 0.002 € a token on the demo plan; `extra` is appended (a meter added later).
fn tokens_catalog(data: &Path, extra: &str) {
    std::fs::create_dir_all(data).unwrap();
    let demo = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/demo-catalog.toml"),
    )
    .unwrap();
    let charges =
        "charges = [\n  { meter = \"llm_tokens\", model = \"per_unit\", unit_price = \"0.002\" },";
    let catalog = demo.replacen("charges = [", charges, 1);
    assert!(catalog.contains("llm_tokens"));
    let meter = "\n[[meter]]\nname = \"llm_tokens\"\nevent_type = \"com.example.llm.completion\"\naggregation = \"sum\"\nvalue = \"tokens\"\ngroup_by = [\"model\"]\n";
    std::fs::write(
        data.join("catalog.toml"),
        format!("{catalog}{meter}{extra}"),
    )
    .unwrap();
}

async fn post_events(
    p: &Peage,
    bearer: &str,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    client()
        .post(format!("{}/v1/events", p.s("control_url")))
        .bearer_auth(bearer)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

fn completion(id: &str, subject: &str, tokens: &str, model: &str) -> Value {
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/services/llm", "subject": subject,
        "type": "com.example.llm.completion",
        "data": { "tokens": serde_json::Value::from_str(tokens).unwrap(), "model": model }
    })
}

/// A meter of the partner's usage (`GET /v1/partners/{id}/usage`), waiting up to 10 s for
/// the aggregator until it equals `want`.
async fn wait_for_meter(p: &Peage, meter: &str, want: Decimal) -> Value {
    wait_for_meter_within(p, meter, want, Duration::from_secs(10)).await
}

/// How long a backfill of 100,000 events may take to show: the aggregator stores them in
/// seconds, but each usage read evaluates the meter over every stored event (docs/events.md),
/// slow on a loaded 2-core machine.
const BACKFILL_WAIT: Duration = Duration::from_secs(180);

/// [`wait_for_meter`] with a wait of its own (a backfill takes the aggregator longer on a
/// loaded machine; CI runs these tests side by side).
async fn wait_for_meter_within(p: &Peage, meter: &str, want: Decimal, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let usage: Value = admin_get(p, &format!("/v1/partners/{}/usage", p.s("partner_id")))
            .await
            .json()
            .await
            .unwrap();
        let m = usage["meters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["meter"] == meter)
            .unwrap_or_else(|| panic!("no meter {meter} in {usage}"))
            .clone();
        let seen = dec(&m["quantity"]);
        assert!(seen <= want, "{meter} shows {seen}, more than {want}");
        if seen == want {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{meter} shows {seen} of {want} after {} s",
            wait.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_are_checked_one_by_one_counted_once_and_priced() {
    let (_dir, data) = temp_dir();
    tokens_catalog(&data, "");
    let p = Peage::start(&data);
    let partner = p.s("partner_id");
    let admin = p.s("admin_token");
    let now = chrono::Utc::now();

    // The JSON examples of the CloudEvents specification (JSON format, §3.1 and appendix) are
    // accepted as they are, once given what Péage adds to them: a subject naming a partner and
    // a time inside the backfill window (theirs is 2018). Extensions, XML data and data_base64
    // are kept as sent; only object data gives meters properties.
    let examples = [
        r#"{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext","id":"A234-1234-1234","time":"2018-04-05T17:31:00Z","comexampleextension1":"value","comexampleothervalue":5,"datacontenttype":"application/xml","data":"<much wow=\"xml\"/>"}"#,
        r#"{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext","subject":null,"id":"C234-1234-1234","time":"2018-04-05T17:31:00Z","comexampleextension1":"value","comexampleothervalue":5,"unsetextension":null,"datacontenttype":"application/vnd.apache.thrift.binary","data_base64":"YWJj"}"#,
        r#"{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext","id":"B234-1234-1234","time":"2018-04-05T17:31:00Z","comexampleextension1":"value","comexampleothervalue":5,"datacontenttype":"application/json","data":{"appinfoA":"abc","appinfoB":123,"appinfoC":true}}"#,
        r#"{"specversion":"1.0","type":"com.github.pull_request.opened","source":"https://github.com/cloudevents/spec/pull","subject":"123","id":"A234-1234-1234","time":"2018-04-05T17:31:00Z","comexampleextension1":"value","comexampleothervalue":5,"datacontenttype":"text/xml","data":"<much wow=\"xml\"/>"}"#,
    ];
    for (i, ex) in examples.iter().enumerate() {
        let mut e: Value = serde_json::from_str(ex).unwrap();
        e["subject"] = partner.clone().into();
        e["time"] = now.to_rfc3339().into();
        let r = post_events(&p, &admin, "application/cloudevents+json", e.to_string()).await;
        assert_eq!(r.status(), 200, "example {i}");
        let out: Value = r.json().await.unwrap();
        assert_eq!(out["accepted"], 1, "example {i}: {out}");
    }
    // As they stand, the examples are refused with the reason, not dropped.
    let r = post_events(
        &p,
        &admin,
        "application/cloudevents+json",
        examples[2].into(),
    )
    .await;
    let out: Value = r.json().await.unwrap();
    assert!(
        out["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("subject is required"),
        "{out}"
    );

    // A batch of 100 with 3 bad events stores 97 and names the 3. Tokens are decimals that
    // only add up exactly as decimals.
    let mut batch: Vec<Value> = (0..100)
        .map(|i| {
            completion(
                &format!("c-{i}"),
                &partner,
                "0.1",
                ["small", "large"][i % 2],
            )
        })
        .collect();
    batch[7]["specversion"] = "0.3".into();
    batch[42]["subject"] = "no-such-customer".into();
    batch[99]["time"] = (now - chrono::TimeDelta::days(40)).to_rfc3339().into();
    let body = Value::from(batch.clone()).to_string();
    let r = post_events(
        &p,
        &admin,
        "application/cloudevents-batch+json",
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["accepted"], 97, "{out}");
    let rejected: Vec<(u64, String)> = out["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (7, "c-7".to_string()),
            (42, "c-42".into()),
            (99, "c-99".into())
        ],
        "{out}"
    );
    let reasons = out["rejected"].to_string();
    assert!(
        reasons.contains("specversion")
            && reasons.contains("no-such-customer")
            && reasons.contains("backfill window"),
        "{reasons}"
    );

    // 0.1 × 97 tokens, exactly, once the aggregator has them.
    let tokens = wait_for_meter(&p, "llm_tokens", Decimal::from_str("9.7").unwrap()).await;
    assert_eq!(tokens["groups"].as_array().unwrap().len(), 2, "{tokens}");

    // The same batch retried, and 20 concurrent posts of one new batch: each stored once.
    let r = post_events(&p, &admin, "application/json", body).await;
    let out: Value = r.json().await.unwrap();
    assert_eq!(
        (out["accepted"].as_u64(), out["duplicates"].as_u64()),
        (Some(0), Some(97)),
        "{out}"
    );
    let fresh: Vec<Value> = (0..50)
        .map(|i| completion(&format!("d-{i}"), &partner, "2.5", "small"))
        .collect();
    let fresh = Value::from(fresh).to_string();
    let posts = (0..20).map(|_| {
        post_events(
            &p,
            &admin,
            "application/cloudevents-batch+json",
            fresh.clone(),
        )
    });
    for r in futures::future::join_all(posts).await {
        assert_eq!(r.status(), 200);
        let out: Value = r.json().await.unwrap();
        assert!(out["rejected"].as_array().unwrap().is_empty(), "{out}");
    }
    // 9.7 + 50 × 2.5
    wait_for_meter(&p, "llm_tokens", Decimal::from_str("134.7").unwrap()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_meter(&p, "llm_tokens", Decimal::from_str("134.7").unwrap()).await;

    // The dashboard's chart has the event meter, per hour, from the raw events; the finance
    // view lists the event types received: the tokens and the specification's examples.
    let series: Value = admin_get(
        &p,
        &format!("/v1/partners/{partner}/usage/series?granularity=hour"),
    )
    .await
    .json()
    .await
    .unwrap();
    let tokens = series["usage"]["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["meter"] == "llm_tokens")
        .unwrap_or_else(|| panic!("no llm_tokens series: {series}"));
    let per_hour: Decimal = tokens["values"].as_array().unwrap().iter().map(dec).sum();
    assert_eq!(
        (dec(&tokens["total"]), per_hour),
        (
            Decimal::from_str("134.7").unwrap(),
            Decimal::from_str("134.7").unwrap()
        ),
        "{tokens}"
    );
    assert!(
        !series["usage"]["not_charted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "llm_tokens"),
        "{series}"
    );
    let usage: Value = admin_get(&p, &format!("/v1/partners/{partner}/usage"))
        .await
        .json()
        .await
        .unwrap();
    let types: Vec<(&str, u64)> = usage["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["type"].as_str().unwrap(), t["events"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        types,
        [
            ("com.example.llm.completion", 147),
            ("com.example.someevent", 3),
            ("com.github.pull_request.opened", 1)
        ],
        "{usage}"
    );

    // A reused id with other content is refused, naming why; the first one counts.
    let r = post_events(
        &p,
        &admin,
        "application/cloudevents+json",
        completion("d-0", &partner, "1000", "small").to_string(),
    )
    .await;
    let out: Value = r.json().await.unwrap();
    assert!(
        out["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("other content"),
        "{out}"
    );

    // The upcoming invoice prices the tokens, a line per model: 129.9 small and 4.8 large
    // tokens at 0.002 €, each line rounded to the cent.
    let inv: Value = admin_get(&p, &format!("/v1/partners/{partner}/invoices/upcoming"))
        .await
        .json()
        .await
        .unwrap();
    let mut lines: Vec<(String, Decimal, Decimal)> = inv["invoice"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["meter"] == "llm_tokens")
        .map(|l| {
            (
                l["group"]["model"].as_str().unwrap().to_string(),
                dec(&l["quantity"]),
                dec(&l["amount"]),
            )
        })
        .collect();
    lines.sort();
    let d = |s: &str| Decimal::from_str(s).unwrap();
    assert_eq!(
        lines,
        [
            ("large".to_string(), d("4.8"), d("0.01")),
            ("small".to_string(), d("129.9"), d("0.26"))
        ],
        "{inv}"
    );

    // A partner can be named by its external id; an events:write token may post events and
    // nothing else; a partner's API key is no credential here.
    let r = client()
        .patch(format!("{}/v1/partners/{partner}", p.s("control_url")))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "external_id": "cust-0042" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = admin_post(
        &p,
        "/v1/service-tokens",
        serde_json::json!({ "name": "llm service", "scope": "events:write" }),
    )
    .await;
    let token = token["token"].as_str().unwrap().to_string();
    let r = post_events(
        &p,
        &token,
        "application/cloudevents+json",
        completion("e-1", "cust-0042", "0.3", "large").to_string(),
    )
    .await;
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["accepted"], 1, "{out}");
    assert_eq!(
        admin_get_with(&p, &token, "/v1/partners").await.status(),
        403
    );
    let r = post_events(
        &p,
        &p.s("api_key"),
        "application/cloudevents+json",
        completion("e-2", &partner, "1", "x").to_string(),
    )
    .await;
    assert_eq!(r.status(), 401);
    wait_for_meter(&p, "llm_tokens", Decimal::from_str("135.0").unwrap()).await;

    // Bad bodies are one problem each.
    for (ct, body, status) in [
        ("text/plain", "{}".to_string(), 415),
        ("application/json", "{".to_string(), 400),
        ("application/cloudevents-batch+json", "{}".to_string(), 400),
        ("application/cloudevents-batch+json", "[]".to_string(), 400),
        (
            "application/json",
            Value::from(vec![Value::Null; 1001]).to_string(),
            413,
        ),
    ] {
        let r = post_events(&p, &admin, ct, body).await;
        assert_problem(r, status).await;
    }

    // A meter added after the events applies to them: restart with a count of completions.
    p.interrupt();
    tokens_catalog(&data, "\n[[meter]]\nname = \"completions\"\nevent_type = \"com.example.llm.completion\"\naggregation = \"count\"\ngroup_by = [\"model\"]\n");
    let p = Peage::start(&data);
    let m = wait_for_meter(&p, "completions", Decimal::from(148)).await;
    let small = m["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["dimensions"]["model"] == "small")
        .unwrap()
        .clone();
    assert_eq!(dec(&small["quantity"]), Decimal::from(49 + 50), "{m}");
    p.interrupt();
}

async fn admin_get_with(p: &Peage, bearer: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", p.s("control_url")))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_100000_events_imported_twice_stores_each_once() {
    let (dir, data) = temp_dir();
    tokens_catalog(
        &data,
        "\n[[meter]]\nname = \"backfilled\"\nevent_type = \"com.example.backfill\"\naggregation = \"count\"\n",
    );
    let p = Peage::start(&data);
    let partner = p.s("partner_id");
    let file = dir.path().join("backfill.ndjson");
    let hour_ago = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let mut text = String::with_capacity(20_000_000);
    for i in 0..100_000u32 {
        let time = hour_ago + chrono::TimeDelta::milliseconds(i64::from(i) * 30);
        text.push_str(&format!(
            "{{\"specversion\":\"1.0\",\"id\":\"b-{i}\",\"source\":\"/batch\",\"type\":\"com.example.backfill\",\"subject\":\"{partner}\",\"time\":\"{}\",\"data\":{{\"n\":{i}}}}}\n",
            time.to_rfc3339()
        ));
    }
    std::fs::write(&file, text).unwrap();
    let import = |path: &Path| {
        Command::new(env!("CARGO_BIN_EXE_peage"))
            .args(["events", "import"])
            .arg(path)
            .arg("--data-dir")
            .arg(&data)
            .env("PEAGE_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = import(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("accepted 100000, duplicates 0, rejected 0"),
        "{stdout}"
    );
    wait_for_meter_within(&p, "backfilled", Decimal::from(100_000), BACKFILL_WAIT).await;
    // Again: nothing changes.
    let out = import(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("accepted 0, duplicates 100000, rejected 0"),
        "{stdout}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_meter_within(&p, "backfilled", Decimal::from(100_000), BACKFILL_WAIT).await;

    // CSV, with the lines at fault named and the exit status saying so.
    let csv = dir.path().join("fix.csv");
    std::fs::write(
        &csv,
        format!("id,source,type,subject,data.n\nx-1,/fix,com.example.backfill,{partner},1\nx-2,/fix,com.example.backfill,nobody,2\nx-3,/fix,com.example.backfill,{partner},3\n"),
    )
    .unwrap();
    let out = import(&csv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a rejected line fails the command: {stdout}"
    );
    assert!(
        stdout.contains("accepted 2, duplicates 0, rejected 1"),
        "{stdout}"
    );
    assert!(stdout.contains("line 3: subject \"nobody\""), "{stdout}");
    wait_for_meter_within(&p, "backfilled", Decimal::from(100_002), BACKFILL_WAIT).await;
    p.interrupt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peage_up_reads_the_configuration_file_then_the_environment_then_set_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    // A port held by the test: the file's control.listen, which only the flag can replace.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_port = free_port();
    let config = dir.path().join("peage.toml");
    std::fs::write(
        &config,
        format!(
            "[embedded]\ndata_dir = \"data\"\n\n[gateway]\nlisten = \"127.0.0.1:0\"\nmax_request_body_bytes = 1000\naccess_log = \"access.jsonl\"\n\n[control]\nlisten = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            held.local_addr().unwrap()
        ),
    )
    .unwrap();
    // Nonsense is refused, naming what is wrong, before anything starts.
    let refused = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_peage"))
            .arg("up")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("PEAGE_LOG", "error")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = refused(&["--set", "gateway.max_request_body_bytes"]);
    assert!(e.contains("expected section.key=value"), "{e}");
    let e = refused(&["--set", "gateway.max_request_body_byte=5"]);
    assert!(e.contains("max_request_body_byte"), "{e}");
    let e = refused(&["--demo"]);
    assert!(e.contains("control API cannot listen"), "{e}");

    let data = dir.path().join("data");
    let args: Vec<std::ffi::OsString> = [
        "--config".into(),
        config.clone().into_os_string(),
        "--set".into(),
        "gateway.max_request_body_bytes=3000".into(),
        "--control-listen".into(),
        "127.0.0.1:0".into(),
    ]
    .to_vec();
    // The environment (2000) overrides the file (1000); --set (3000) overrides both.
    let p = Peage::start_up(
        &data,
        &args,
        &[("PEAGE_GATEWAY__MAX_REQUEST_BODY_BYTES", "2000")],
        None,
    );
    let post = |n: usize| {
        client()
            .post(format!("{}/demo/v1/hello", p.s("gateway_url")))
            .bearer_auth(p.s("api_key"))
            .body(vec![b'x'; n])
            .send()
    };
    assert_ne!(post(2500).await.unwrap().status(), 413);
    assert_eq!(post(3500).await.unwrap().status(), 413);

    // W3C trace context: a caller's trace is continued to the upstream with the gateway's own
    // span as parent, and a call without one starts a trace; both are in the access log.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let seen_upstream = |traceparent: Option<String>| {
        let mut r = client()
            .get(format!(
                "{}/demo/v1/headers?secret=hidden",
                p.s("gateway_url")
            ))
            .bearer_auth(p.s("api_key"));
        if let Some(t) = traceparent {
            r = r.header("traceparent", t);
        }
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            v["headers"]["traceparent"].as_str().unwrap().to_string()
        }
    };
    let continued = seen_upstream(Some(format!("00-{caller_trace}-00f067aa0ba902b7-01"))).await;
    assert!(
        continued.starts_with(&format!("00-{caller_trace}-")),
        "{continued}"
    );
    assert!(
        continued.ends_with("-01") && !continued.contains("00f067aa0ba902b7"),
        "{continued}"
    );
    let started = seen_upstream(None).await;
    assert_eq!(started.len(), 55, "{started}");
    assert!(!started.contains(caller_trace), "{started}");
    let access = dir.path().join("access.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let lines: Vec<Value> = std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 4 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 4, "one line a call: {lines:?}");
    assert_eq!(lines[1]["status"], 413);
    let traced = &lines[2];
    assert_eq!(traced["trace_id"], caller_trace, "{traced}");
    assert_eq!(traced["span_id"].as_str().unwrap(), &continued[36..52]);
    assert_eq!(
        traced["path"], "/demo/v1/headers",
        "no query in the log: {traced}"
    );
    assert_eq!(traced["partner_id"], p.s("partner_id").as_str());
    assert_eq!(traced["api"], "demo");
    assert_eq!(traced["status"], 200);
    assert_eq!(lines[3]["trace_id"].as_str().unwrap(), &started[3..35]);
    // The data directory is the file's, relative to it.
    assert!(data.join("billing.db").exists());

    let ops = format!("http://127.0.0.1:{metrics_port}");
    let r = client().get(format!("{ops}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(format!("{ops}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(admin_get(&p, "/v1/plans").await.status().is_success());
    let scrape = || async {
        client()
            .get(format!("{ops}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let metrics = scrape().await;
    for line in [
        "peage_build_info{version=\"0.1.0\",role=\"up\"} 1",
        "peage_consumer_lag_events{group=\"aggregator\",topic=\"calls\",partition=\"0\"}",
        "peage_control_requests_total{method=\"GET\",route=\"/v1/plans\",status=\"200\"} 1",
        "peage_gateway_refusals_total{reason=\"request-too-large\"} 1",
        "peage_webhook_deliveries_total{outcome=\"failed\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    // The Grafana dashboard works on peage up too, but for the distributed roles' Kafka
    // spools, which it does not have.
    let r = client()
        .post(format!("{}/v1/invoices/run", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .json(&serde_json::json!({"period": chrono::Utc::now().format("%Y-%m").to_string()}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let metrics = scrape().await;
    let missing = grafana::missing(&[&metrics], |name| {
        name.starts_with("peage_spool_") || name.starts_with("peage_events_spool_")
    });
    assert!(
        missing.is_empty(),
        "dashboard panels without their metric: {missing:?}"
    );
    p.interrupt();
    drop(held);
}

/// `peage backup`, as an operator runs it beside a running `peage up`.
fn backup(data: &Path, out: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_peage"))
        .args(["backup", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "peage backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn restore(from: &Path, data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peage"))
        .args(["restore", "--from"])
        .arg(from)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

/// What finance and the partner see: usage, keys, invoices (without times of the answer).
async fn books(p: &Peage) -> Value {
    let pid = p.s("partner_id");
    let mut all = serde_json::Map::new();
    for (name, path) in [
        ("usage", format!("/v1/partners/{pid}/usage")),
        ("keys", format!("/v1/partners/{pid}/keys")),
        ("invoices", "/v1/invoices".to_string()),
    ] {
        let r = admin_get(p, &path).await;
        assert_eq!(r.status(), 200, "{path}");
        all.insert(name.into(), r.json().await.unwrap());
    }
    Value::Object(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_peage_runs_restores_usage_keys_and_invoices() {
    let (dir, data) = temp_dir();
    let p = Peage::start(&data);
    for _ in 0..40 {
        assert_eq!(call(&p, &p.s("api_key")).await.status(), 200);
    }
    let pid = p.s("partner_id");
    admin_post(
        &p,
        &format!("/v1/partners/{pid}/keys"),
        serde_json::json!({"env": "live", "name": "ci"}),
    )
    .await;
    admin_post(
        &p,
        "/v1/invoices/run",
        serde_json::json!({"period": chrono::Utc::now().format("%Y-%m").to_string()}),
    )
    .await;
    wait_for_calls(&p, 40).await;

    // Idle: the restored directory answers exactly as the original did.
    let before = books(&p).await;
    assert_eq!(
        before["invoices"]["invoices"].as_array().map(Vec::len),
        Some(1),
        "{before}"
    );
    let idle = dir.path().join("backup-idle");
    backup(&data, &idle);
    // Under traffic: calls go on while the backup is taken.
    let busy = dir.path().join("backup-busy");
    let traffic = {
        let (gw, key) = (p.s("gateway_url"), p.s("api_key"));
        tokio::spawn(async move {
            for _ in 0..60 {
                let r = client()
                    .get(format!("{gw}/demo/v1/hello"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    backup(&data, &busy);
    traffic.await.unwrap();
    p.interrupt();

    // A backup whose file was damaged is refused before anything is written.
    let damaged = dir.path().join("backup-damaged");
    std::fs::create_dir(&damaged).unwrap();
    for entry in std::fs::read_dir(&idle).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), damaged.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(damaged.join("admin-token"), "adm_tampered_tampered").unwrap();
    let out = restore(&damaged, &dir.path().join("never"));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("admin-token") && e.contains("damaged"), "{e}");
    assert!(!dir.path().join("never").exists());

    let restored = dir.path().join("restored");
    let out = restore(&idle, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Never over a directory in use or with data in it.
    let again = restore(&idle, &restored);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    let r = Peage::start(&restored);
    assert_eq!(r.s("partner_id"), pid);
    wait_for_calls(&r, 40).await;
    let after = books(&r).await;
    for part in ["usage", "keys", "invoices"] {
        assert_eq!(after[part], before[part], "{part}");
    }
    r.interrupt();

    // The busy backup holds the 40 calls and some of the 60, each once.
    let restored_busy = dir.path().join("restored-busy");
    assert!(restore(&busy, &restored_busy).status.success());
    let r = Peage::start(&restored_busy);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = calls_metered(&r).await;
    assert!(
        seen >= Decimal::from(40) && seen <= Decimal::from(100),
        "{seen} calls after restoring a backup taken during traffic"
    );
    let ids = |books: &Value| -> Vec<(String, String)> {
        books["keys"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k["key_id"].to_string(), k["name"].to_string()))
            .collect()
    };
    assert_eq!(ids(&books(&r).await), ids(&before));
    r.interrupt();
}

fn erase(data: &Path, id: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peage"))
        .args([
            "partners",
            "erase",
            id,
            "--by",
            "dpo@example.com",
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_partner_removes_its_personal_data_and_keeps_its_invoices() {
    let (_dir, data) = temp_dir();
    let p = Peage::start(&data);
    let doe = admin_post(
        &p,
        "/v1/partners",
        serde_json::json!({"name": "Doe Consulting", "plan": "demo", "external_id": "crm-7"}),
    )
    .await;
    let id = doe["id"].as_str().unwrap().to_string();
    let r = client()
        .put(format!("{}/v1/partners/{id}/billing-details", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .json(&serde_json::json!({"legal_name": "Jane Doe", "address": ["1 Main St"], "email": "jane@doe.example"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let key = admin_post(
        &p,
        &format!("/v1/partners/{id}/keys"),
        serde_json::json!({"env": "live"}),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..5 {
        assert_eq!(call(&p, &key).await.status(), 200);
    }
    let run = admin_post(
        &p,
        "/v1/invoices/run",
        serde_json::json!({"period": chrono::Utc::now().format("%Y-%m").to_string()}),
    )
    .await;
    assert!(run["created"].as_u64().unwrap() >= 1, "{run}");
    let invoices = admin_json(&p, &format!("/v1/invoices?partner_id={id}")).await;
    let draft = invoices["invoices"][0]["id"].as_str().unwrap().to_string();

    // Without --yes and without a terminal: nothing happens.
    let out = erase(&data, &id, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    // With a draft open: refused, naming it.
    let out = erase(&data, &id, &["--yes"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(&draft) && e.contains("finalize or void"), "{e}");
    admin_post(
        &p,
        &format!("/v1/invoices/{draft}/void"),
        serde_json::json!({}),
    )
    .await;

    let out = erase(&data, &id, &["--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("1 key(s) revoked") && said.contains("1 invoice(s) kept"),
        "{said}"
    );

    let partner = admin_json(&p, &format!("/v1/partners/{id}")).await;
    assert_eq!(partner["name"], "Erased partner", "{partner}");
    assert!(partner["external_id"].is_null(), "{partner}");
    let details = admin_json(&p, &format!("/v1/partners/{id}/billing-details")).await;
    assert!(
        details.get("email").is_none() && details.get("legal_name").is_none(),
        "{details}"
    );
    let keys = admin_json(&p, &format!("/v1/partners/{id}/keys")).await;
    assert!(
        keys["keys"][0]["last_used_at"].is_null(),
        "raw events are gone: {keys}"
    );
    assert!(keys["keys"][0]["name"].is_null(), "{keys}");
    // The key stops working (the gateway's key cache holds it at most 5 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = call(&p, &key).await.status();
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the erased partner's key still answers {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its invoice is kept; raw events are gone (no last use), the rollups still count the calls.
    let invoices = admin_json(&p, &format!("/v1/invoices?partner_id={id}")).await;
    assert_eq!(invoices["invoices"][0]["id"], draft.as_str());
    // The audit log says who erased whom.
    let audit = admin_json(&p, "/v1/audit?limit=1000").await;
    let record = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "peage partners erase")
        .expect("an audit record of the erasure");
    assert_eq!(record["actor"], "cli:dpo@example.com");
    assert_eq!(record["target"], format!("id={id}"));
    // Once only; running it again deletes what was still on its way (calls served from the
    // key cache, events in the log) when it ran.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = erase(&data, &id, &["--yes"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("erased already") && e.contains("deleted again"),
        "{e}"
    );
    let keys = admin_json(&p, &format!("/v1/partners/{id}/keys")).await;
    assert!(keys["keys"][0]["last_used_at"].is_null(), "{keys}");
    p.interrupt();
}
