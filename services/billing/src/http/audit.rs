//! The audit log: every mutating request of the control API (POST, PUT, PATCH, DELETE) that
//! got past authentication is recorded with who made it, the route and its parameters, the
//! answer's status and body (secrets redacted), the request id and the time; admins read it
//! at `GET /v1/audit` (JSON, or CSV with `format=csv`). Replays of an Idempotency-Key are not
//! new actions and are not recorded again; 401 and 429 answers (no one was authenticated) are
//! counted in metrics, not here.
//!
//! Every answer carries `X-Request-Id` (the caller's, when it sent a usable one), so an audit
//! record, a log line and a client's report can be matched.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use http::{header, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use peage_billing_store::AuditRecord;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use super::error::ApiError;
use super::extract::Api;
use super::idempotency::REPLAYED;
use super::openapi;
use super::state::ControlApi;
use crate::service::Principal;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Answers larger than this are recorded without their body.
const MAX_KEPT: usize = 64 * 1024;
/// Routes outside `/v1` whose requests are recorded although no one is signed in yet.
const ANONYMOUS_ACTIONS: &[&str] = &["/auth/sign-in", "/auth/sign-out", "/oauth/token"];
/// POST routes that change nothing (a body too large for a query string): not actions.
const READ_ONLY_POSTS: &[&str] = &["/v1/partners/{id}/invoices/preview"];
/// Usage coming in, not an action on the service: each accepted event is durable in the event
/// log already (which is its record), and an audit record per batch would add a database
/// commit to every ingest request. Cancellations of events stay actions, recorded.
const DATA_ROUTES: &[&str] = &["/v1/events"];
/// Fields whose values are credentials, replaced by `"[redacted]"` wherever they appear.
const REDACTED: &[&str] = &["secret", "token", "access_token", "client_secret"];

/// What a changed thing was before an action: a handler puts it on its answer
/// ([`with_before`]) and [`record`] keeps it next to the answer.
#[derive(Clone)]
pub(crate) struct Before(Value);

/// `response`, carrying `before` for the audit log.
pub(crate) fn with_before(mut response: Response, before: &impl serde::Serialize) -> Response {
    match serde_json::to_value(before) {
        Ok(v) => {
            response.extensions_mut().insert(Before(v));
        }
        Err(e) => tracing::error!(error = %e, "audit log: a previous state is not JSON"),
    }
    response
}

/// `v` redacted and as text, unless larger than is kept.
fn kept(mut v: Value) -> Option<String> {
    redact(&mut v);
    let text = v.to_string();
    (text.len() <= MAX_KEPT).then_some(text)
}

/// Who made a request, as the audit log names them.
pub(crate) fn actor(who: Option<&Principal>) -> String {
    who.map_or_else(|| "anonymous".into(), Principal::label)
}

/// The route's parameters, from its template and the path: `id=prt_…,key_id=key_…`.
fn target(template: &str, path: &str) -> String {
    template
        .split('/')
        .zip(path.split('/'))
        .filter_map(|(t, p)| {
            t.strip_prefix('{')
                .and_then(|t| t.strip_suffix('}'))
                .map(|name| format!("{name}={p}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if REDACTED.contains(&k.as_str()) && !v.is_null() {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Marks an answer with the route it came from, for [`record`] (which runs outside routing).
pub(crate) async fn tag_route(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let mut r = next.run(req).await;
    if let Some(route) = route {
        r.extensions_mut().insert(route);
    }
    r
}

/// Layered over every route: records mutating requests.
pub(crate) async fn record(
    State(api): State<Arc<ControlApi>>,
    req: Request,
    next: Next,
) -> Response {
    let id = request_id(req.headers());
    let mutating = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let mut response = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let status = response.status();
    let replayed = response.headers().contains_key(REPLAYED);
    let who = response.extensions().get::<Principal>().cloned();
    let before = response
        .extensions_mut()
        .remove::<Before>()
        .and_then(|b| kept(b.0));
    let matched = response.extensions().get::<MatchedPath>();
    // Metrics are labelled by the route's template; a path no route matched is "unmatched",
    // so a scan of random paths cannot grow the series without bound.
    peage_telemetry::emit!(peage_telemetry::ControlRequestAnswered {
        method: method.as_str(),
        route: matched.map_or("unmatched", |m| m.as_str()),
        status: status.as_u16(),
        elapsed: started.elapsed(),
        request_id: &id,
    });
    let route = matched.map_or(path.clone(), |m| m.as_str().to_string());
    // Unauthenticated requests are recorded only where they open a session or a token.
    let known = who.is_some() || ANONYMOUS_ACTIONS.contains(&route.as_str());
    if !mutating
        || READ_ONLY_POSTS.contains(&route.as_str())
        || DATA_ROUTES.contains(&route.as_str())
        || replayed
        || !known
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return response;
    }
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    let (parts, body) = response.into_parts();
    // The control API's JSON answers are whole in memory already; reading them costs a copy.
    let (bytes, after) = if json {
        match body.collect().await {
            Ok(b) => {
                let bytes = b.to_bytes();
                let after = (bytes.len() <= MAX_KEPT)
                    .then(|| serde_json::from_slice::<Value>(&bytes).ok())
                    .flatten()
                    .and_then(kept);
                (Body::from(bytes), after)
            }
            Err(e) => {
                tracing::error!(error = %e, "audit log: an answer's body failed");
                (Body::empty(), None)
            }
        }
    } else {
        (body, None)
    };
    let entry = AuditRecord {
        id: format!("aud_{}", uuid::Uuid::now_v7().simple()),
        at: Utc::now(),
        actor: actor(who.as_ref()),
        action: format!("{method} {route}"),
        target: target(&route, &path),
        status: status.as_u16(),
        request_id: id,
        before,
        after,
    };
    if let Err(e) = api.billing.append_audit(&entry).await {
        // The action has happened; failing its answer would only hide that. Loud instead.
        tracing::error!(error = %e, action = %entry.action, actor = %entry.actor, request_id = %entry.request_id, "audit log: a record could not be written");
    }
    Response::from_parts(parts, bytes)
}

/// Audit records, oldest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AuditList {
    records: Vec<AuditRecord>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// The id of the last record already read; absent: from the start.
    after: Option<String>,
    /// At most this many records (default 100, at most 1000).
    limit: Option<i64>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[utoipa::path(get, operation_id = "list_audit_records", path = "/v1/audit", tag = "operations",
    params(AuditParams),
    responses((status = 200, description = "Audit records, oldest first (JSON, or CSV with format=csv)", content((AuditList = "application/json"), (openapi::Csv = "text/csv"))),
              (status = 400, response = openapi::BadRequest),
              (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden)),
    security(("admin" = [])))]
pub(crate) async fn list(api: Api, Query(q): Query<AuditParams>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let records = api.billing.audit_records(q.after.as_deref(), limit).await?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(AuditList { records }).into_response()),
        Some("csv") => {
            let mut out =
                String::from("id,at,actor,action,target,status,request_id,before,after\n");
            for r in &records {
                let row = [
                    r.id.clone(),
                    r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    r.actor.clone(),
                    r.action.clone(),
                    r.target.clone(),
                    r.status.to_string(),
                    r.request_id.clone(),
                    r.before.clone().unwrap_or_default(),
                    r.after.clone().unwrap_or_default(),
                ];
                out.push_str(
                    &row.iter()
                        .map(|c| csv_cell(c))
                        .collect::<Vec<_>>()
                        .join(","),
                );
                out.push('\n');
            }
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response())
        }
        Some(other) => Err(ApiError::Malformed(format!(
            "format must be json or csv, not {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_the_route_template() {
        assert_eq!(
            target("/v1/partners/{id}/credits", "/v1/partners/prt_1/credits"),
            "id=prt_1"
        );
        assert_eq!(target("/v1/invoices/run", "/v1/invoices/run"), "");
    }

    #[test]
    fn secrets_are_redacted_wherever_they_are() {
        let mut v = serde_json::json!({"id": "k", "secret": "pk_live_x", "nested": [{"token": "pst_y", "name": "n"}]});
        redact(&mut v);
        assert_eq!(v["secret"], "[redacted]");
        assert_eq!(v["nested"][0]["token"], "[redacted]");
        assert_eq!(v["nested"][0]["name"], "n");
    }
}
