//! The dashboard in a real browser: seeds two months of usage for a partner, starts the real
//! `peage up --demo`, and runs `tests/browser/dashboard.test.mjs` (playwright-core driving
//! Debian's headless Chromium) against it. The browser signs in as a finance staff member, computes and
//! finalizes a draft and downloads its CSV; signs in as the partner, sees its chart, quota and
//! invoice, downloads the PDF, rotates a key, reads an API's docs, and fails to reach the other
//! partner's data. Screenshots of each page go to `docs/screenshots/`.
//!
//! Needs `node`, `tests/browser/node_modules` (`npm ci` in `tests/browser`) and `chromium`:
//! `.ci/run` installs them. The test runs only with `--features real-servers` (as
//! `deploy/dev/test-all.sh` runs it); without it it is listed as ignored, and with it missing
//! tools fail it.

#[path = "support/peage.rs"]
mod peage_process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use chrono::{Datelike, Duration, TimeZone, Utc};
use peage_billing_store::{BillingStore, SqliteBillingStore, Subscription};
use peage_core::{CallEvent, Catalog, Env};
use peage_process::Peage;
use peage_usage_store::{SqliteUsageStore, UsageStore};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What the browser test needs, or why it cannot run here.
fn browser_tools() -> Result<(), String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node is not installed".into());
    }
    if !repo()
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        return Err("tests/browser/node_modules is missing: run `npm ci` in tests/browser".into());
    }
    if !Path::new("/usr/bin/chromium").exists() && std::env::var_os("CHROMIUM").is_none() {
        return Err("chromium is not installed (apt-get install chromium)".into());
    }
    Ok(())
}

/// `n` calls of one operation at `at`, spread over a minute.
fn calls(
    partner: &str,
    at: chrono::DateTime<Utc>,
    n: usize,
    version: &str,
    op: &str,
) -> Vec<CallEvent> {
    (0..n)
        .map(|i| {
            let mut e: CallEvent =
                serde_json::from_str(include_str!("../schemas/events/examples/rest_call.json"))
                    .unwrap();
            e.id = uuid::Uuid::now_v7();
            e.time = at + Duration::milliseconds(i as i64 * 500);
            e.partner_id = partner.into();
            e.key_id = "key_seeded00000000000".into();
            e.env = Env::Live;
            e.api = "demo".into();
            e.version = version.into();
            e.operation = op.into();
            e.method = op.split(' ').next().unwrap().into();
            e.units = if op.contains("weather") {
                2.into()
            } else {
                1.into()
            };
            e
        })
        .collect()
}

/// A second partner, Globex, on the demo plan since two months ago, with usage every day of the
/// previous month and of this one so far (a weekly rhythm, three operations, two versions).
async fn seed(data: &Path) -> (String, String, String) {
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let prev_month = (this_month - Duration::days(1)).with_day(1).unwrap();
    let since = (prev_month - Duration::days(1)).with_day(1).unwrap();
    // A meter of usage events beside the demo's call meters, charted from raw events.
    let mut text = std::fs::read_to_string(data.join("catalog.toml")).unwrap();
    text.push_str(
        "\n[[meter]]\nname = \"llm_tokens\"\nevent_type = \"com.example.llm.completion\"\n\
         aggregation = \"sum\"\nvalue = \"tokens\"\n",
    );
    // A plan with a small hard quota, for a partner who has used it up.
    text.push_str(
        "\n[[plan]]\nid = \"capped\"\nname = \"Capped\"\ncurrency = \"EUR\"\n\
         period = { every = \"month\", anchor_day = 1 }\nbase_fee = \"0\"\n\
         charges = [{ meter = \"calls\", model = \"per_unit\", unit_price = \"0.01\" }]\n\
         quotas = [{ meter = \"calls\", limit = 50, kind = \"hard\" }]\n\
         apis = [{ api = \"demo\", versions = [\"v1\"], operations = [\"GET /hello\", \"POST /echo\"] }]\n\
         features = [\"sso\"]\nself_serve = true\n\
         \n[[plan]]\nid = \"capped-plus\"\nname = \"Capped Plus\"\ncurrency = \"EUR\"\n\
         period = { every = \"month\", anchor_day = 1 }\nbase_fee = \"5.00\"\nself_serve = true\n\
         charges = [{ meter = \"calls\", model = \"per_unit\", unit_price = \"0.01\" }]\n",
    );
    std::fs::write(data.join("catalog.toml"), &text).unwrap();
    let catalog = Catalog::parse("catalog.toml", &text, &|_| {
        Some("http://127.0.0.1:9".into())
    })
    .unwrap();
    let store = SqliteBillingStore::open(&data.join("billing.db"))
        .await
        .unwrap();
    let globex = "prt_610be8610be8610be861";
    store
        .create_partner(
            &globex.parse().unwrap(),
            "Globex Corporation",
            &Subscription {
                plan_id: "demo".into(),
                plan_version: catalog.plan("demo").unwrap().version.clone(),
                started_at: since,
                ended_at: None,
            },
        )
        .await
        .unwrap();
    let usage = Arc::new(
        SqliteUsageStore::open(&data.join("usage.db"))
            .await
            .unwrap(),
    );
    let mut day = prev_month;
    let mut batch = Vec::new();
    while day < now - Duration::hours(2) {
        let weekday = day.weekday().num_days_from_monday() as usize;
        // About 2,000 calls a month: past the demo plan's 1,000-call tier whatever the month.
        let busy = if weekday < 5 { 28 + 6 * weekday } else { 8 };
        for (h, (version, op, n)) in [
            ("v1", "GET /weather/{city}", busy),
            ("v1", "GET /hello", busy / 2 + 3),
            ("v0", "GET /hello", 3),
            ("v1", "POST /echo", busy / 3),
        ]
        .into_iter()
        .enumerate()
        {
            batch.extend(calls(
                globex,
                day + Duration::hours(9 + 2 * h as i64),
                n,
                version,
                op,
            ));
        }
        day += Duration::days(1);
    }
    usage.insert(&batch).await.unwrap();
    // 40 LLM completions from the company's own services (POST /v1/events), spread over this
    // period so far, 25 tokens each.
    let window = peage_core::usage_event::TimeWindow {
        backfill: Duration::days(3650),
        ahead: Duration::days(1),
    };
    let logged: Vec<peage_usage_store::LoggedUsageEvent> = (0..40)
        .map(|i| {
            let at = this_month + (now - this_month) * (i + 1) / 42;
            let raw = serde_json::value::RawValue::from_string(format!(
                r#"{{"specversion":"1.0","id":"seed-{i}","source":"/services/llm","type":"com.example.llm.completion","subject":"{globex}","time":"{}","data":{{"tokens":25,"model":"small"}}}}"#,
                at.to_rfc3339()
            ))
            .unwrap();
            let event = peage_core::usage_event::parse_cloud_event(&raw)
                .unwrap()
                .into_usage_event(globex, now, &window)
                .unwrap();
            peage_usage_store::LoggedUsageEvent {
                partition: 0,
                offset: i as u64,
                event,
            }
        })
        .collect();
    usage.insert_usage_events("", &logged).await.unwrap();
    // Initech, on the capped plan since last month, has made 60 of its 50 calls this period.
    let initech = "prt_1417ec4000000000001a";
    store
        .create_partner(
            &initech.parse().unwrap(),
            "Initech",
            &Subscription {
                plan_id: "capped".into(),
                plan_version: catalog.plan("capped").unwrap().version.clone(),
                started_at: since,
                ended_at: None,
            },
        )
        .await
        .unwrap();
    let midway = this_month + (now - this_month) / 2;
    usage
        .insert(&calls(initech, midway, 60, "v1", "GET /hello"))
        .await
        .unwrap();
    // And was refused 7 calls at its hard quota and 2 to a version its plan leaves out.
    let refused = |n, version, status: u16, why: &str| {
        calls(
            initech,
            midway + Duration::minutes(5),
            n,
            version,
            "GET /hello",
        )
        .into_iter()
        .map(|mut e| {
            e.status = status;
            e.units = 0.into();
            e.attributes
                .insert(peage_core::event::REFUSAL.into(), why.into());
            e
        })
        .collect::<Vec<_>>()
    };
    usage
        .insert(&refused(7, "v1", 429, "quota-exceeded"))
        .await
        .unwrap();
    usage
        .insert(&refused(2, "v0", 403, "not-entitled"))
        .await
        .unwrap();
    (
        globex.to_string(),
        initech.to_string(),
        prev_month.format("%Y-%m").to_string(),
    )
}

/// A CI run without the switch would list the browser test as ignored and pass: it fails.
#[cfg(not(feature = "real-servers"))]
#[test]
fn ci_runs_the_real_server_tests() {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: run with --features real-servers, so that the dashboard is tested in Chromium"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "real-servers"),
    ignore = "needs node, playwright-core and Chromium: cargo test --features real-servers (deploy/dev/services.sh install)"
)]
async fn the_dashboard_in_headless_chromium() {
    if let Err(why) = browser_tools() {
        panic!("the browser test cannot run: {why}");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // First start writes the demo catalog and creates the demo partner; then seed while stopped.
    Peage::start(&data).interrupt();
    let (globex, capped, prev_period) = seed(&data).await;
    // An operator mints links from the command line too; unknown partners are refused.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_peage"))
            .arg("sign-in-link")
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = cli(&["--partner", &globex]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/sign-in#token=psl_"));
    // Where to open it: the address this data directory's `peage up --demo` listened on, not
    // a guess.
    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("demo.json")).unwrap()).unwrap();
    let control = demo["control_url"].as_str().unwrap();
    let told = String::from_utf8_lossy(&out.stderr);
    assert!(
        told.contains(&format!("{control}/sign-in#token=psl_")),
        "{told}"
    );
    let out = cli(&["--partner", "prt_000000000000000000aa"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // Named staff from the command line: the first start made an admin; add, list, disable.
    let staff = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_peage"))
            .arg("staff")
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = staff(&[
        "add",
        "--email",
        "Ops@Example.com",
        "--name",
        "Olga Ops",
        "--role",
        "finance",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = staff(&[
        "add",
        "--email",
        "ops@example.com",
        "--name",
        "Twice",
        "--role",
        "viewer",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    let out = staff(&[
        "add",
        "--email",
        "x@example.com",
        "--name",
        "X",
        "--role",
        "owner",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("role must be one of"));
    let listed = String::from_utf8_lossy(&staff(&["list"]).stdout).to_string();
    assert!(
        listed.contains("admin@localhost\tadmin")
            && listed.contains("ops@example.com\tfinance\tOlga Ops\tactive"),
        "{listed}"
    );
    let out = cli(&["--staff", "ops@example.com"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/sign-in#token=psl_"));
    assert!(staff(&["set", "ops@example.com", "--disable"])
        .status
        .success());
    let out = cli(&["--staff", "ops@example.com"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is disabled"));
    let out = cli(&["--staff", "nobody@example.com"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let p = Peage::start(&data);
    let client = reqwest::Client::new();
    // Live calls through the gateway for the demo partner: the other partner of the test.
    for _ in 0..5 {
        let r = client
            .get(format!("{}/demo/v1/hello", p.s("gateway_url")))
            .bearer_auth(p.s("api_key"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Globex needs a key of its own to rotate.
    let r = client
        .post(format!("{}/v1/partners/{globex}/keys", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .json(&json!({"env": "live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key: Value = r.json().await.unwrap();
    // One call with it, so that its row can say when it was last used.
    let r = client
        .get(format!("{}/demo/v1/hello", p.s("gateway_url")))
        .bearer_auth(key["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut used = false;
    for _ in 0..100 {
        let keys: Value = client
            .get(format!("{}/v1/partners/{globex}/keys", p.s("control_url")))
            .bearer_auth(p.s("admin_token"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        used = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key_id"] == key["key_id"] && k["last_used_at"].is_string());
        if used {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(used, "the key's call was never metered");

    let shots = std::env::var("PEAGE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .args(["--test", "--test-reporter=spec", "dashboard.test.mjs"])
        .current_dir(repo().join("tests/browser"))
        .env("PEAGE_URL", p.s("control_url"))
        .env("PEAGE_ADMIN_TOKEN", p.s("admin_token"))
        .env("PEAGE_PARTNER", &globex)
        .env("PEAGE_CAPPED_PARTNER", &capped)
        .env("PEAGE_PARTNER_KEY", key["key_id"].as_str().unwrap())
        .env("PEAGE_OTHER_PARTNER", p.s("partner_id"))
        .env("PEAGE_PERIOD", &prev_period)
        .env("PEAGE_SCREENSHOTS", &shots)
        .env("PEAGE_GATEWAY_URL", p.s("gateway_url"))
        .env("PEAGE_API_KEY", p.s("api_key"))
        .output()
        .expect("node runs");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "browser tests failed:\n{report}");
    for page in [
        "sign-in",
        "partner-usage",
        "partner-usage-phone",
        "partner-alerts",
        "partner-keys",
        "partner-invoices",
        "partner-apis",
        "partner-api-docs",
        "partner-api-entitlements",
        "partner-plan-quote",
        "finance-partners",
        "finance-partners-sorted",
        "finance-console-partner",
        "finance-webhooks",
        "finance-invoices",
        "finance-invoice-review",
        "finance-partner-preview",
        "finance-partner-plan-change",
        "viewer-invoices",
    ] {
        let f = shots.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&f).is_ok_and(|m| m.len() > 10_000),
            "no screenshot {}",
            f.display()
        );
    }
    p.interrupt();
}
