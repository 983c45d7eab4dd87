//! `schemas/events/usage_event.v1.json` fixes what the usage-event topic carries: events the
//! code writes validate against it, and records that break the contract are refused by it.

use chrono::Utc;
use peage_core::usage_event::{parse_cloud_event, TimeWindow};
use serde_json::Value;

fn validator() -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/events/usage_event.v1.json"
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the schema itself is valid")
}

fn encoded(extra: &str) -> Value {
    let raw = serde_json::value::RawValue::from_string(format!(
        r#"{{"specversion":"1.0","id":"c-1","source":"/llm","type":"com.example.llm","subject":"cust-42"{extra}}}"#
    ))
    .unwrap();
    let e = parse_cloud_event(&raw)
        .unwrap()
        .into_usage_event(
            "prt_0123456789abcdef0123",
            Utc::now(),
            &TimeWindow::default(),
        )
        .unwrap();
    serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap()
}

#[test]
fn usage_events_the_code_writes_validate() {
    let v = validator();
    for extra in [
        "",
        r#","data":{"tokens":12.5,"model":"m","usage":{"input":3}}"#,
        r#","time":"2026-12-01T10:00:00+01:00","data_base64":"YWJj","ext":5"#,
    ] {
        let e = encoded(extra);
        let errors: Vec<String> = v.iter_errors(&e).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{e}: {errors:?}");
    }
}

#[test]
fn records_that_break_the_contract_are_refused() {
    let v = validator();
    let good = encoded("");
    for (field, value) in [
        ("key", Value::from("0193a8a4-0000-7000-8000-000000000001")),
        ("type", Value::from("peage.call.v1")),
        ("time", Value::from("2026-12-01T10:00:00Z")),
        ("digest", Value::from("abc")),
        ("partner_id", Value::from("acme")),
        ("cloudevent", serde_json::json!({ "specversion": "0.3" })),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        assert!(!v.is_valid(&bad), "{field} should be refused: {bad}");
    }
    let mut extra = good.clone();
    extra["units"] = "1".into();
    assert!(!v.is_valid(&extra));
}
