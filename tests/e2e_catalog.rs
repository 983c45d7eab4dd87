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
    assert_eq!(report["plans"], 1);

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
