//! API keys: names kept through rotations, and a rotation's overlap window: the old key works
//! beside the new one until the window ends, then stops; revoking it ends the window.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

mod support;

const CATALOG: &str = r#"
[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "payg"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.01" }]
"#;

#[tokio::test]
async fn a_rotation_with_an_overlap_keeps_the_old_key_until_the_window_ends() {
    let served = support::serve(CATALOG).await;
    let (pid, _) = served
        .create_partner(json!({"name": "Initech", "plan": "payg"}))
        .await;
    let (s, e) = served
        .call(
            "POST",
            format!("/v1/partners/{pid}/keys"),
            json!({"env": "live", "name": "x".repeat(61)}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, key) = served
        .call(
            "POST",
            format!("/v1/partners/{pid}/keys"),
            json!({"env": "live", "name": " CI "}),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    assert_eq!(key["name"], "CI");
    let id = key["key_id"].as_str().unwrap().to_string();
    let (s, e) = served
        .call(
            "POST",
            format!("/v1/keys/{id}/rotate?overlap_hours=169"),
            Value::Null,
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, new) = served
        .call(
            "POST",
            format!("/v1/keys/{id}/rotate?overlap_hours=24"),
            Value::Null,
        )
        .await;
    assert_eq!(s, 201, "{new}");
    assert_eq!(new["name"], "CI");
    let (_, keys) = served
        .call("GET", format!("/v1/partners/{pid}/keys"), Value::Null)
        .await;
    let old = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == id.as_str())
        .unwrap()
        .clone();
    let stops: DateTime<Utc> = old["revoked_at"].as_str().unwrap().parse().unwrap();
    let hours = (stops - Utc::now()).num_minutes() as f64 / 60.0;
    assert!((23.9..=24.0).contains(&hours), "{old}");
    assert!(old["last_used_at"].is_null(), "{old}");
    // What gateways are told: not revoked, expiring then.
    let hash = peage_core::ids::api_key::secret_hash(key["secret"].as_str().unwrap());
    let (s, gk) = served
        .call("GET", format!("/v1/gateway/keys/{hash}"), Value::Null)
        .await;
    assert_eq!(s, 200, "{gk}");
    assert_eq!(gk["revoked"], false, "{gk}");
    assert_eq!(gk["expires_at"], old["revoked_at"], "{gk}");
    // Rotating it again is refused; revoking it ends the window at once.
    let (s, e) = served
        .call("POST", format!("/v1/keys/{id}/rotate"), Value::Null)
        .await;
    assert_eq!(s, 409, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("rotated already"),
        "{e}"
    );
    let (s, _) = served
        .call("DELETE", format!("/v1/keys/{id}"), Value::Null)
        .await;
    assert_eq!(s, 200);
    let (_, gk) = served
        .call("GET", format!("/v1/gateway/keys/{hash}"), Value::Null)
        .await;
    assert_eq!(gk["revoked"], true, "{gk}");
    assert!(gk["expires_at"].is_null(), "{gk}");
}
