//! `schemas/events/call_event.v1.json` is the source of truth for the wire format: events the
//! code serializes must validate against it, the committed examples must validate and
//! deserialize, and events that break the contract must be refused by the schema.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use chrono::Utc;
use peage_core::event::truncate_to_micros;
use peage_core::{CallEvent, Env};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

fn schemas_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/events"))
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(schemas_dir().join("call_event.v1.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).expect("the schema itself is valid")
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

fn event(units: &str, env: Env) -> CallEvent {
    CallEvent {
        id: Uuid::now_v7(),
        time: truncate_to_micros(Utc::now()),
        partner_id: "prt_0123456789abcdef0123".into(),
        key_id: "key_0123456789abcdef0123".into(),
        env,
        api: "demo".into(),
        version: "v1".into(),
        operation: "GET /hello".into(),
        method: "GET".into(),
        status: 502,
        latency_us: 17,
        request_bytes: 3,
        response_bytes: 4,
        units: Decimal::from_str(units).unwrap(),
        gateway_id: "gw-test".into(),
        attributes: BTreeMap::from([("k".into(), "v".into())]),
    }
}

#[test]
fn serialized_events_validate_against_the_schema() {
    let v = validator();
    for (units, env) in [
        ("1", Env::Live),
        ("0.25", Env::Sandbox),
        ("1000000", Env::Live),
    ] {
        let json = serde_json::to_value(event(units, env)).unwrap();
        assert!(
            errors(&v, &json).is_empty(),
            "{json}: {:?}",
            errors(&v, &json)
        );
    }
}

#[test]
fn committed_examples_validate_and_deserialize() {
    let v = validator();
    let mut seen = 0;
    for entry in std::fs::read_dir(schemas_dir().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            errors(&v, &json).is_empty(),
            "{}: {:?}",
            path.display(),
            errors(&v, &json)
        );
        let e: CallEvent = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json,
            "{} does not round-trip",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 2, "examples missing");
}

type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn the_schema_refuses_what_the_contract_forbids() {
    let v = validator();
    let good = serde_json::to_value(event("1", Env::Live)).unwrap();
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "float units",
            Box::new(|j| j["units"] = serde_json::json!(1.5)),
        ),
        (
            "uuid v4 id",
            Box::new(|j| j["id"] = "9b2f1c3e-5d4a-4e8b-9c7d-1a2b3c4d5e6f".into()),
        ),
        (
            "time without micros",
            Box::new(|j| j["time"] = "2026-11-25T09:00:00Z".into()),
        ),
        ("unknown env", Box::new(|j| j["env"] = "staging".into())),
        ("extra field", Box::new(|j| j["extra"] = 1.into())),
        (
            "missing partner",
            Box::new(|j| {
                j.as_object_mut().unwrap().remove("partner_id");
            }),
        ),
        (
            "negative bytes",
            Box::new(|j| j["response_bytes"] = (-1).into()),
        ),
    ];
    for (what, mutate) in mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(
            !errors(&v, &bad).is_empty(),
            "schema accepted {what}: {bad}"
        );
    }
}
