//! The control API as the dashboard uses it: the committed OpenAPI document matches the router;
//! sign-in links are used once; and a partner session reads nothing of another partner's through
//! any route the document lists, downloads included.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use peage_billing::ControlApi;
use peage_billing_store::Subscription;
use peage_usage_store::UsageStore;
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
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.01" }]
quotas = [{ meter = "calls", limit = 1000, kind = "soft" }]
"#;

mod support;
use support::TOKEN;

const ALPHA: &str = "prt_a1a1a1a1a1a1a1a1a1a1";
const BRAVO: &str = "prt_b2b2b2b2b2b2b2b2b2b2";

struct Fixture {
    base: String,
    api: Arc<ControlApi>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Two partners on Growth since October, each with five calls on October 2nd.
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
    for (id, name) in [(ALPHA, "Alpha"), (BRAVO, "Bravo")] {
        let sub = Subscription {
            plan_id: "growth".into(),
            plan_version: plan_version.clone(),
            started_at: october,
            ended_at: None,
        };
        served
            .store
            .create_partner(&id.parse().unwrap(), name, &sub)
            .await
            .unwrap();
        served
            .usage
            .insert(&support::calls(
                id,
                october + chrono::Duration::hours(30),
                5,
            ))
            .await
            .unwrap();
    }
    served
        .api
        .invoicing()
        .register_plan_versions(october)
        .await
        .unwrap();
    Fixture {
        base: served.base,
        api: served.api,
        client: reqwest::Client::new(),
        _dir: served.dir,
    }
}

/// A request as the admin (`cookie: None`) or as a dashboard session.
async fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    body: Option<Value>,
    cookie: Option<&str>,
) -> (u16, String) {
    let mut req = f.client.request(
        method.to_uppercase().parse().unwrap(),
        format!("{}{path}", f.base),
    );
    req = match cookie {
        None => req.bearer_auth(TOKEN),
        Some(c) => req
            .header("cookie", format!("peage_session={c}"))
            .header("x-peage-csrf", "1"),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Signs in with a fresh link for `body` (`{"partner_id": …}` or `{"staff": <email>}`);
/// returns the session cookie's value.
async fn sign_in(f: &Fixture, body: Value) -> String {
    let (s, link) = call(f, "POST", "/v1/sign-in-links", Some(body), None).await;
    assert_eq!(s, 201, "{link}");
    let link: Value = serde_json::from_str(&link).unwrap();
    let token = link["token"].as_str().unwrap();
    assert_eq!(
        link["path"].as_str().unwrap(),
        format!("/sign-in#token={token}")
    );
    let resp = f
        .client
        .post(format!("{}/auth/sign-in", f.base))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    // The link is used up.
    let again = f
        .client
        .post(format!("{}/auth/sign-in", f.base))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401);
    set_cookie
        .strip_prefix("peage_session=")
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string()
}

/// What generated clients need of the document: a unique id for every operation, and every JSON
/// answer described field by field (a named schema or a typed one, never a bare object).
#[tokio::test]
async fn every_operation_has_its_own_id_and_every_json_answer_a_schema() {
    let f = start().await;
    let doc: Value = serde_json::to_value(f.api.openapi()).unwrap();
    let mut ids = BTreeSet::new();
    let mut answers = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(
                ids.insert(id.clone()),
                "operationId {id:?} of {method} {path} is taken"
            );
            for (status, answer) in op["responses"].as_object().unwrap() {
                let Some(content) = answer["content"].as_object() else {
                    continue;
                };
                for (media, body) in content {
                    if !status.starts_with('2') || !media.contains("json") {
                        continue;
                    }
                    let schema = &body["schema"];
                    let described = schema.get("$ref").is_some()
                        || schema["properties"].is_object()
                        || schema["items"].is_object()
                        || schema["oneOf"].is_array();
                    assert!(described, "{method} {path} {status} {media}: {schema}");
                    answers += 1;
                }
            }
            if path.starts_with("/v1/invoices") && method == "get" {
                let ok = &op["responses"]["200"]["content"];
                assert!(ok["text/csv"].is_object(), "{path}: no CSV variant");
            }
        }
    }
    assert!(answers >= 45, "only {answers} JSON answers found");
    let one = &doc["paths"]["/v1/invoices/{id}"]["get"]["responses"]["200"]["content"];
    assert!(one["application/pdf"].is_object(), "{one}");
    // Every reference resolves (a query parameter's enum once pointed at a schema the
    // document did not hold, and client generators gave up on its operation).
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    let schemas = &doc["components"]["schemas"];
    let dangling: BTreeSet<&String> = found
        .iter()
        .filter(|r| {
            r.strip_prefix("#/components/schemas/")
                .is_some_and(|name| schemas.get(name).is_none())
        })
        .collect();
    assert!(dangling.is_empty(), "references to no schema: {dangling:?}");
}

#[tokio::test]
async fn the_committed_openapi_document_matches_the_router() {
    let f = start().await;
    let generated = f.api.openapi().to_yaml().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/openapi/control-api.yaml");
    if std::env::var_os("PEAGE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/openapi/control-api.yaml differs from the router's document; \
         regenerate it with PEAGE_UPDATE_OPENAPI=1 cargo test -p peage-billing --test dashboard_api"
    );
    let doc: Value = serde_json::to_value(f.api.openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every documented operation answers (not axum's bare 404 or 405 for an unknown route).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "nothing")
                .replace("{key_id}", "nothing")
                .replace("{api}", "maps")
                .replace("{version}", "v1");
            let (s, body) = call(&f, method, &concrete, None, None).await;
            assert!(
                s != 405 && !(s == 404 && body.is_empty()),
                "{method} {path}: {s} {body}"
            );
        }
    }
}

#[tokio::test]
async fn a_partner_session_reads_nothing_of_another_partner() {
    let f = start().await;
    // Both partners get a key and an October invoice.
    let mut keys = Vec::new();
    for p in [ALPHA, BRAVO] {
        let (s, k) = call(
            &f,
            "POST",
            &format!("/v1/partners/{p}/keys"),
            Some(json!({"env": "live"})),
            None,
        )
        .await;
        assert_eq!(s, 201, "{k}");
        let k: Value = serde_json::from_str(&k).unwrap();
        keys.push(k["key_id"].as_str().unwrap().to_string());
    }
    let (s, run) = call(
        &f,
        "POST",
        "/v1/invoices/run",
        Some(json!({"period": "2026-10"})),
        None,
    )
    .await;
    assert_eq!(s, 200, "{run}");
    let (_, list) = call(&f, "GET", "/v1/invoices?period=2026-10", None, None).await;
    let list: Value = serde_json::from_str(&list).unwrap();
    let invoice_of = |p: &str| {
        list["invoices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["partner_id"] == p)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (alpha_inv, bravo_inv) = (invoice_of(ALPHA), invoice_of(BRAVO));
    let (alpha_key, bravo_key) = (keys[0].clone(), keys[1].clone());

    let alpha = sign_in(&f, json!({"partner_id": ALPHA})).await;
    // Drafts are not shown to partners until finance finalizes them.
    let (_, mine) = call(&f, "GET", "/v1/invoices", None, Some(&alpha)).await;
    assert!(!mine.contains(&alpha_inv), "{mine}");
    let (s, _) = call(
        &f,
        "GET",
        &format!("/v1/invoices/{alpha_inv}"),
        None,
        Some(&alpha),
    )
    .await;
    assert_eq!(s, 404);
    let (s, fin) = call(
        &f,
        "POST",
        &format!("/v1/invoices/{alpha_inv}/finalize"),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{fin}");
    let (s, me) = call(&f, "GET", "/v1/session", None, Some(&alpha)).await;
    assert_eq!(s, 200);
    let me: Value = serde_json::from_str(&me).unwrap();
    assert_eq!(
        (me["role"].as_str(), me["partner_name"].as_str()),
        (Some("partner"), Some("Alpha"))
    );

    // Their own data, through the routes the dashboard uses.
    for path in [
        format!("/v1/partners/{ALPHA}"),
        format!("/v1/partners/{ALPHA}/keys"),
        format!("/v1/partners/{ALPHA}/quotas"),
        format!("/v1/partners/{ALPHA}/invoices/upcoming"),
        format!("/v1/partners/{ALPHA}/usage?from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z"),
        format!("/v1/invoices/{alpha_inv}?format=pdf"),
        format!("/v1/invoices/{alpha_inv}?format=csv"),
    ] {
        let (s, body) = call(&f, "GET", &path, None, Some(&alpha)).await;
        assert_eq!(s, 200, "{path}: {body}");
    }
    let (s, series) = call(
        &f,
        "GET",
        &format!("/v1/partners/{ALPHA}/usage/series?from=2026-10-01T00:00:00Z&to=2026-10-04T00:00:00Z&by=api"),
        None,
        Some(&alpha),
    )
    .await;
    assert_eq!(s, 200, "{series}");
    let series: Value = serde_json::from_str(&series).unwrap();
    assert_eq!(series["usage"]["buckets"].as_array().unwrap().len(), 3);
    assert_eq!(series["usage"]["series"][0]["key"], "maps");
    assert_eq!(
        series["usage"]["series"][0]["values"],
        json!(["0", "5", "0"])
    );
    let (_, mine) = call(&f, "GET", "/v1/invoices", None, Some(&alpha)).await;
    assert!(
        mine.contains(&alpha_inv) && !mine.contains(&bravo_inv),
        "{mine}"
    );

    // Every documented route, with Bravo's ids wherever an id goes, in every format.
    let doc: Value = serde_json::to_value(f.api.openapi()).unwrap();
    let secrets_of_bravo = [BRAVO, "Bravo", bravo_key.as_str(), bravo_inv.as_str()];
    let mut tried = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let id = if path.starts_with("/v1/invoices/") {
                bravo_inv.as_str()
            } else {
                BRAVO
            };
            let concrete = path
                .replace("{id}", id)
                .replace("{key_id}", &bravo_key)
                .replace("{api}", "maps")
                .replace("{version}", "v1");
            let body = match path.as_str() {
                "/v1/partners/{id}/keys" => Some(json!({"env": "live"})),
                "/v1/sign-in-links" => Some(json!({"partner_id": BRAVO})),
                "/v1/quota/leases" => Some(
                    json!({"partner_id": BRAVO, "meter": "calls", "gateway_id": "g", "want": "1"}),
                ),
                "/v1/invoices/run" => Some(json!({"period": "2026-10"})),
                _ if method != "get" => Some(json!({})),
                _ => None,
            };
            let queries: Vec<String> = if method == "get" {
                vec![
                    String::new(),
                    "?format=csv".into(),
                    "?format=pdf".into(),
                    format!("?partner_id={BRAVO}"),
                ]
            } else {
                vec![String::new()]
            };
            for q in &queries {
                let url = format!("{concrete}{q}");
                if path == "/auth/sign-out" {
                    continue; // would end Alpha's own session; tested below
                }
                let (s, text) = call(&f, method, &url, body.clone(), Some(&alpha)).await;
                tried.insert(format!("{method} {path}"));
                if (200..300).contains(&s) {
                    for secret in secrets_of_bravo {
                        assert!(
                            !text.contains(secret),
                            "{method} {url} answered {s} with Bravo's {secret}: {text}"
                        );
                    }
                } else {
                    assert!(
                        [400, 401, 403, 404, 409].contains(&s),
                        "{method} {url}: {s} {text}"
                    );
                }
            }
        }
    }
    assert!(tried.len() >= 30, "only {} operations tried", tried.len());

    // Bravo's key still works and Bravo's invoice is still a draft: nothing was changed either.
    let (_, bravo_keys) = call(&f, "GET", &format!("/v1/partners/{BRAVO}/keys"), None, None).await;
    let bravo_keys: Value = serde_json::from_str(&bravo_keys).unwrap();
    assert!(
        bravo_keys["keys"][0]["revoked_at"].is_null(),
        "{bravo_keys}"
    );
    let (_, inv) = call(&f, "GET", &format!("/v1/invoices/{bravo_inv}"), None, None).await;
    assert!(inv.contains("\"status\":\"draft\""), "{inv}");

    // A write without the CSRF header is refused; with it, Alpha rotates its own key.
    let resp = f
        .client
        .post(format!("{}/v1/keys/{alpha_key}/rotate", f.base))
        .header("cookie", format!("peage_session={alpha}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let (s, rotated) = call(
        &f,
        "POST",
        &format!("/v1/keys/{alpha_key}/rotate"),
        None,
        Some(&alpha),
    )
    .await;
    assert_eq!(s, 201, "{rotated}");
    let rotated: Value = serde_json::from_str(&rotated).unwrap();
    assert!(rotated["secret"].as_str().unwrap().starts_with("pk_live_"));
    let (s, _) = call(
        &f,
        "POST",
        &format!("/v1/keys/{alpha_key}/rotate"),
        None,
        Some(&alpha),
    )
    .await;
    assert_eq!(s, 409, "a revoked key cannot be rotated again");

    // Named staff: each person signs in with a link of their own and acts within their role.
    for (email, name, role) in [
        ("fiona@example.com", "Fiona Finance", "finance"),
        ("victor@example.com", "Victor Viewer", "viewer"),
        ("ada@example.com", "Ada Admin", "admin"),
    ] {
        let (s, m) = call(
            &f,
            "POST",
            "/v1/staff",
            Some(json!({"email": email, "name": name, "role": role})),
            None,
        )
        .await;
        assert_eq!(s, 201, "{m}");
    }
    let (s, dup) = call(
        &f,
        "POST",
        "/v1/staff",
        Some(json!({"email": "Fiona@Example.com", "name": "Again", "role": "viewer"})),
        None,
    )
    .await;
    assert_eq!(s, 409, "emails are unique whatever their case: {dup}");
    let finance = sign_in(&f, json!({"staff": "fiona@example.com"})).await;
    let viewer = sign_in(&f, json!({"staff": "victor@example.com"})).await;
    let admin = sign_in(&f, json!({"staff": "ada@example.com"})).await;
    let (s, me) = call(&f, "GET", "/v1/session", None, Some(&finance)).await;
    let me: Value = serde_json::from_str(&me).unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        (&me["role"], &me["name"], &me["email"]),
        (
            &json!("finance"),
            &json!("Fiona Finance"),
            &json!("fiona@example.com")
        ),
        "the session is the person: {me}"
    );
    let (s, all) = call(&f, "GET", "/v1/partners", None, Some(&finance)).await;
    assert!(s == 200 && all.contains(BRAVO), "{all}");
    let (s, all) = call(&f, "GET", "/v1/partners", None, Some(&viewer)).await;
    assert!(s == 200 && all.contains(BRAVO), "a viewer reads: {all}");
    // A partner session and a viewer cannot finalize; finance can, and the invoice says who.
    for who in [&alpha, &viewer] {
        let (s, body) = call(
            &f,
            "POST",
            &format!("/v1/invoices/{bravo_inv}/finalize"),
            None,
            Some(who),
        )
        .await;
        assert_eq!(s, 403, "{body}");
    }
    let (s, fin) = call(
        &f,
        "POST",
        &format!("/v1/invoices/{bravo_inv}/finalize"),
        None,
        Some(&finance),
    )
    .await;
    assert_eq!(s, 200, "{fin}");
    let fin: Value = serde_json::from_str(&fin).unwrap();
    assert_eq!(fin["finalized_by"], "staff:fiona@example.com");
    // Only admins manage staff, hand out staff links and read the audit log.
    for (method, path, body) in [
        ("GET", "/v1/staff", None),
        ("GET", "/v1/audit", None),
        (
            "POST",
            "/v1/sign-in-links",
            Some(json!({"staff": "ada@example.com"})),
        ),
        (
            "PATCH",
            "/v1/staff/ada@example.com",
            Some(json!({"role": "viewer"})),
        ),
    ] {
        let (s, answer) = call(&f, method, path, body, Some(&finance)).await;
        assert_eq!(s, 403, "finance may not {method} {path}: {answer}");
    }
    let (s, audit) = call(&f, "GET", "/v1/audit?limit=1000", None, Some(&admin)).await;
    assert_eq!(s, 200, "{audit}");
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let finalized = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["action"] == "POST /v1/invoices/{id}/finalize"
                && r["target"] == format!("id={bravo_inv}")
                && r["status"] == 200
        })
        .expect("the finalization is in the audit log");
    assert_eq!(finalized["actor"], "staff:fiona@example.com");
    let before: Value = serde_json::from_str(finalized["before"].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(finalized["after"].as_str().unwrap()).unwrap();
    assert_eq!(
        (&before["status"], &after["status"]),
        (&json!("draft"), &json!("finalized"))
    );
    // Disabling a member ends their session at once; a demotion counts on the next request.
    let (s, changed) = call(
        &f,
        "PATCH",
        "/v1/staff/victor@example.com",
        Some(json!({"disabled": true})),
        Some(&admin),
    )
    .await;
    assert_eq!(s, 200, "{changed}");
    let (s, _) = call(&f, "GET", "/v1/session", None, Some(&viewer)).await;
    assert_eq!(s, 401, "a disabled member's session has ended");
    let (s, _) = call(
        &f,
        "POST",
        "/v1/sign-in-links",
        Some(json!({"staff": "victor@example.com"})),
        Some(&admin),
    )
    .await;
    assert_eq!(s, 400, "no links for a disabled member");
    let (s, _) = call(
        &f,
        "PATCH",
        "/v1/staff/fiona@example.com",
        Some(json!({"role": "viewer"})),
        Some(&admin),
    )
    .await;
    assert_eq!(s, 200);
    let (s, body) = call(
        &f,
        "POST",
        &format!("/v1/partners/{BRAVO}/credits"),
        Some(json!({"amount": "5.00", "currency": "EUR", "description": "goodwill"})),
        Some(&finance),
    )
    .await;
    assert_eq!(s, 403, "demoted to viewer: {body}");

    // Signing out ends the session on the server.
    let resp = f
        .client
        .post(format!("{}/auth/sign-out", f.base))
        .header("cookie", format!("peage_session={alpha}"))
        .header("x-peage-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (s, _) = call(&f, "GET", "/v1/session", None, Some(&alpha)).await;
    assert_eq!(s, 401);
    // Garbage cookies and bad tokens are plain 401s.
    let (s, _) = call(&f, "GET", "/v1/session", None, Some("pss_forged")).await;
    assert_eq!(s, 401);
}
