//! The catalog as pricing code, end to end: `peage catalog validate` and `diff` on good and bad
//! files.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const DEMO: &str = include_str!("../services/peage/src/demo-catalog.toml");
const UPSTREAM: &str = "PEAGE_DEMO_UPSTREAM=http://127.0.0.1:8081";

fn peage(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peage"))
        .args(args)
        .current_dir(dir)
        .env_remove("PEAGE_DEMO_UPSTREAM")
        .output()
        .expect("peage runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The demo catalog and its OpenAPI document in a fresh directory.
fn demo_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.toml"), DEMO).unwrap();
    std::fs::write(
        dir.path().join("demo-openapi.yaml"),
        include_str!("../services/peage/src/demo-openapi.yaml"),
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn validate_and_diff_on_good_and_bad_files() {
    let dir = demo_dir();
    let d = dir.path();

    // Good: exit 0, with the version and what it holds.
    let ok = peage(
        &["catalog", "validate", "catalog.toml", "--var", UPSTREAM],
        d,
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("valid, version"),
        "{}",
        text(&ok.stdout)
    );
    let json = peage(
        &[
            "catalog",
            "validate",
            "catalog.toml",
            "--var",
            UPSTREAM,
            "--format",
            "json",
        ],
        d,
    );
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["plans"], 3);

    // Bad: a 40-decimal price, an unknown key and a dangling meter; exit 1, every problem
    // with its line and field, in text and in JSON.
    let forty = format!("0.{}1", "0".repeat(39));
    let bad = DEMO
        .replace(
            "unit_price = \"0.01\"",
            &format!("unit_price = \"{forty}\""),
        )
        .replace("base_fee = \"9.00\"", "base_fees = \"9.00\"");
    std::fs::write(d.join("bad.toml"), &bad).unwrap();
    let refused = peage(&["catalog", "validate", "bad.toml", "--var", UPSTREAM], d);
    assert_eq!(refused.status.code(), Some(1));
    let err = text(&refused.stderr);
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(err.contains("base_fees"), "{err}");
    let json = peage(
        &[
            "catalog", "validate", "bad.toml", "--var", UPSTREAM, "--format", "json",
        ],
        d,
    );
    assert_eq!(json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let issues = report["issues"].as_array().unwrap();
    assert!(
        issues
            .iter()
            .any(|i| i["field"] == "base_fees" && i["line"].as_u64() > Some(0)),
        "{report}"
    );
    // An unset variable is what start-up refuses too.
    let unset = peage(&["catalog", "validate", "catalog.toml"], d);
    assert_eq!(unset.status.code(), Some(1));
    assert!(text(&unset.stderr).contains("PEAGE_DEMO_UPSTREAM is not set"));

    // Diff: a price change, a new plan, a meter gone; down to the field.
    let new = DEMO.replace("base_fee = \"9.00\"", "base_fee = \"12.00\"")
        + "\n[[plan]]\nid = \"pro\"\nname = \"Pro\"\ncurrency = \"EUR\"\nperiod = { every = \"month\", anchor_day = 1 }\nbase_fee = \"99.00\"\n";
    std::fs::write(d.join("new.toml"), &new).unwrap();
    let out = peage(
        &[
            "catalog",
            "diff",
            "catalog.toml",
            "new.toml",
            "--var",
            UPSTREAM,
        ],
        d,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("~ plan[demo] changed"), "{shown}");
    assert!(shown.contains("base_fee: \"9.00\" → \"12.00\""), "{shown}");
    assert!(shown.contains("+ plan[pro] added"), "{shown}");
    let json = peage(
        &[
            "catalog",
            "diff",
            "catalog.toml",
            "new.toml",
            "--var",
            UPSTREAM,
            "--format",
            "json",
        ],
        d,
    );
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["changes"].as_array().unwrap().len(), 2, "{report}");
    assert_ne!(report["old_version"], report["new_version"]);
    // With a data directory, the partners each changed plan touches.
    let store = peage_billing_store::SqliteBillingStore::open(&d.join("billing.db"))
        .await
        .unwrap();
    let sub = peage_billing_store::Subscription {
        plan_id: "demo".into(),
        plan_version: "v".into(),
        started_at: chrono::Utc::now(),
        ended_at: None,
    };
    use peage_billing_store::BillingStore;
    store
        .create_partner(&"prt_0123456789abcdef0123".parse().unwrap(), "Acme", &sub)
        .await
        .unwrap();
    let out = peage(
        &[
            "catalog",
            "diff",
            "catalog.toml",
            "new.toml",
            "--var",
            UPSTREAM,
            "--data-dir",
            ".",
        ],
        d,
    );
    let shown = text(&out.stdout);
    assert!(
        shown.contains("partners on plan demo (1): Acme (prt_0123456789abcdef0123)"),
        "{shown}{}",
        text(&out.stderr)
    );

    // A diff against a bad file says why, and fails.
    let out = peage(
        &[
            "catalog",
            "diff",
            "catalog.toml",
            "bad.toml",
            "--var",
            UPSTREAM,
        ],
        d,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a valid catalog"),
        "{}",
        text(&out.stderr)
    );
}

#[path = "support/peage.rs"]
mod peage_process;
use peage_process::Peage;

async fn upcoming_total(client: &reqwest::Client, p: &Peage) -> String {
    let url = format!(
        "{}/v1/partners/{}/invoices/upcoming",
        p.s("control_url"),
        p.s("partner_id")
    );
    let r: Value = client
        .get(url)
        .bearer_auth(p.s("admin_token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["invoice"]["total"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string()
}

async fn catalog_status(client: &reqwest::Client, p: &Peage) -> Value {
    client
        .get(format!("{}/v1/catalog", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `check` every 100 ms for up to 5 s: how long it took, or `None`.
async fn within_5s<F, Fut>(mut check: F) -> Option<std::time::Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(5) {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_price_reaches_the_upcoming_invoice_without_a_restart_and_a_bad_edit_changes_nothing(
) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("peage.log");
    let data = dir.path().join("data");
    let p = Peage::start_logging(&data, &[("PEAGE_LOG", "info")], Some(&log));
    let client = reqwest::Client::new();
    let before = upcoming_total(&client, &p).await;
    let version = catalog_status(&client, &p).await["version"].clone();

    // A price edit, saved as an editor would: the upcoming invoice follows within 5 s.
    let path = data.join("catalog.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("base_fee = \"9.00\"", "base_fee = \"900.00\"");
    assert_ne!(edited, text);
    std::fs::write(&path, &edited).unwrap();
    let took = within_5s(|| {
        let (client, p, before) = (&client, &p, &before);
        async move { upcoming_total(client, p).await != *before }
    })
    .await
    .expect("the upcoming invoice did not change within 5 s of the edit");
    eprintln!("live catalog: the upcoming invoice changed {took:?} after the edit");
    let status = catalog_status(&client, &p).await;
    assert_ne!(status["version"], version);
    assert_eq!(status["last_reload"]["outcome"], "applied", "{status}");
    let after = upcoming_total(&client, &p).await;

    // An invalid edit: refused with its file, line and field, in the status and in the log;
    // the catalog in force and the invoice stay as they were.
    let broken = edited.replace("base_fee = \"900.00\"", "base_fees = \"1.00\"");
    std::fs::write(&path, &broken).unwrap();
    within_5s(|| {
        let (client, p) = (&client, &p);
        async move { catalog_status(client, p).await["last_reload"]["outcome"] == "refused" }
    })
    .await
    .expect("the invalid edit was not refused within 5 s");
    let refused = catalog_status(&client, &p).await;
    assert_eq!(refused["version"], status["version"], "{refused}");
    let issue = &refused["last_reload"]["issues"][0];
    assert_eq!(issue["field"], "base_fees", "{refused}");
    assert!(issue["line"].as_u64().unwrap() > 0, "{refused}");
    assert_eq!(upcoming_total(&client, &p).await, after);
    let logged = std::fs::read_to_string(&log).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("catalog reload refused"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{logged}"));
    assert!(
        line.contains("catalog.toml") && line.contains("base_fees"),
        "{line}"
    );
    assert!(
        line.contains(&format!("\"line\":{}", issue["line"])),
        "{line}"
    );

    // The reload route: a fixed file is put in force on demand.
    std::fs::write(&path, &text).unwrap();
    let r: Value = client
        .post(format!("{}/v1/catalog/reload", p.s("control_url")))
        .bearer_auth(p.s("admin_token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["to"].is_string(), "{r}");
    within_5s(|| {
        let (client, p, version) = (&client, &p, &version);
        async move { catalog_status(client, p).await["version"] == *version }
    })
    .await
    .expect("the original catalog is back in force");
    p.interrupt();
}

/// `peage plans migrate`: a dry run lists who moves, when and what each would pay, and
/// changes nothing; a refused move (another currency, now) says why and exits 1; the real run
/// schedules every partner of the plan, and only them.
#[tokio::test]
async fn plans_migrate_dry_runs_then_schedules_every_partner_of_a_plan() {
    use chrono::Datelike;
    use peage_billing_store::{BillingStore, PlanChangeStore, SqliteBillingStore, Subscription};
    let dir = demo_dir();
    let d = dir.path();
    let catalog = peage_core::Catalog::parse("catalog.toml", DEMO, &|_| {
        Some("http://127.0.0.1:8081".into())
    })
    .unwrap();
    let version = |plan: &str| catalog.plan(plan).unwrap().version.clone();
    let store = SqliteBillingStore::open(&d.join("billing.db"))
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let on = |plan: &str| Subscription {
        plan_id: plan.into(),
        plan_version: version(plan),
        started_at: now,
        ended_at: None,
    };
    let ids = [
        "prt_0000000000000000000a",
        "prt_0000000000000000000b",
        "prt_0000000000000000000c",
    ];
    for (id, name, plan) in [
        (ids[0], "Acme", "demo"),
        (ids[1], "Globex", "demo"),
        (ids[2], "Initech", "scale"),
    ] {
        store
            .create_partner(&id.parse().unwrap(), name, &on(plan))
            .await
            .unwrap();
    }
    let migrate = |args: &[&str]| {
        let mut all = vec!["plans", "migrate", "--data-dir", "."];
        all.extend_from_slice(args);
        peage(&all, d)
    };

    // Dry run: both demo partners would move at the end of this month, with what they pay.
    let out = migrate(&[
        "--from",
        "demo",
        "--to",
        "scale",
        "--dry-run",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let moves = report["partners"].as_array().unwrap();
    assert_eq!(moves.len(), 2, "{report}");
    let next_month = {
        let (y, m) = if now.month() == 12 {
            (now.year() + 1, 1)
        } else {
            (now.year(), now.month() + 1)
        };
        chrono::NaiveDate::from_ymd_opt(y, m, 1).unwrap()
    };
    for m in moves {
        assert_eq!(m["outcome"], "would move", "{m}");
        let at: chrono::DateTime<chrono::Utc> = m["at"].as_str().unwrap().parse().unwrap();
        assert_eq!(at.date_naive(), next_month, "{m}");
        assert_eq!(m["current"][1], "EUR", "{m}");
        assert_eq!(m["on_new_plan"][1], "EUR", "{m}");
        let amount: rust_decimal::Decimal = m["on_new_plan"][0].as_str().unwrap().parse().unwrap();
        assert!(amount > rust_decimal::Decimal::ZERO, "{m}");
    }
    let text_out = migrate(&["--from", "demo", "--to", "scale", "--dry-run"]);
    let shown = text(&text_out.stdout);
    assert!(
        shown.contains("2 partner(s) on demo would move to scale")
            && shown.contains("Acme")
            && shown.contains("Dry run: nothing was changed"),
        "{shown}"
    );
    for id in ids {
        assert_eq!(
            store
                .pending_plan_change(&id.parse().unwrap())
                .await
                .unwrap(),
            None,
            "a dry run changes nothing"
        );
    }

    // Another currency and period, now: refused for each, with the way to schedule it.
    let out = migrate(&["--from", "demo", "--to", "enterprise-yearly", "--at", "now"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let shown = text(&out.stdout);
    assert_eq!(shown.matches("REFUSED").count(), 2, "{shown}");
    assert!(shown.contains("EUR every month"), "{shown}");

    // One version of the plan, by its first characters; then the real run.
    let out = migrate(&["--from", "demo@zzzz", "--to", "scale", "--dry-run"]);
    assert!(
        text(&out.stdout).contains("0 partner(s)"),
        "{}",
        text(&out.stdout)
    );
    let from = format!("demo@{}", &version("demo")[..6]);
    let out = migrate(&["--from", &from, "--to", "scale"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for id in &ids[..2] {
        let pending = store
            .pending_plan_change(&id.parse().unwrap())
            .await
            .unwrap()
            .expect("scheduled");
        assert_eq!(pending.plan_id, "scale");
        assert_eq!(pending.at.date_naive(), next_month);
        assert_eq!(pending.scheduled_by, "cli: peage plans migrate");
    }
    assert_eq!(
        store
            .pending_plan_change(&ids[2].parse().unwrap())
            .await
            .unwrap(),
        None,
        "a partner on another plan is left alone"
    );
}

/// A running `peage up` applies a scheduled plan change by itself once its time comes, from
/// that time, and the change's record says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_applies_a_scheduled_plan_change_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let p = Peage::start(&dir.path().join("data"));
    let client = reqwest::Client::new();
    let partner = format!("{}/v1/partners/{}", p.s("control_url"), p.s("partner_id"));
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let r = client
        .put(format!("{partner}/subscription"))
        .bearer_auth(p.s("admin_token"))
        .json(&serde_json::json!({"plan": "scale", "at": at}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let scheduled: Value = r.json().await.unwrap();
    assert_eq!(scheduled["subscription"]["plan_id"], "demo", "{scheduled}");
    assert_eq!(scheduled["pending_change"]["status"], "pending");
    let get = |url: String| {
        let (client, token) = (client.clone(), p.s("admin_token"));
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let moved = async {
        for _ in 0..100 {
            let now = get(partner.clone()).await;
            if now["subscription"]["plan_id"] == "scale" {
                return Some(now);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        None
    }
    .await
    .expect("the partner moved to scale within 10 s");
    let started: chrono::DateTime<chrono::Utc> = moved["subscription"]["started_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        started.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        at,
        "the move counts from its own time"
    );
    assert_eq!(moved["pending_change"], Value::Null);
    let history = get(format!("{partner}/plan-changes")).await;
    assert_eq!(history["plan_changes"][0]["status"], "applied", "{history}");
    p.interrupt();
}
