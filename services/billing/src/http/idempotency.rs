//! `Idempotency-Key` on control-API POSTs, with Stripe's semantics: a client that retries a
//! POST with the same key gets the first answer again (`Idempotent-Replayed: true`) instead of
//! a second credit, partner or invoice run; the key with other parameters is a `409`; while the
//! first request is still running, a retry is a `409` to try again shortly. Answers are kept 24
//! hours per caller (admin, finance, a partner's session). Server errors (5xx) are not kept: the
//! retry runs afresh. A key is 1 to 255 visible ASCII characters.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::{header, HeaderName, HeaderValue, Method};
use http_body_util::BodyExt;
use peage_billing_store::{ClaimOutcome, IdempotencyClaim, KeptAnswer};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::extract::Caller;
use super::state::ControlApi;
use crate::service::Principal;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Bodies larger than the control API accepts are refused before this runs; answers of POSTs
/// are small JSON documents.
const MAX_BYTES: usize = 2 * 1024 * 1024;

fn scope(who: &Principal) -> String {
    match who {
        Principal::AdminToken => "admin".into(),
        Principal::Staff(m) => format!("staff:{}", m.id),
        Principal::Partner(p) => format!("partner:{p}"),
        Principal::Service { id, .. } => format!("service:{id}"),
    }
}

fn valid_key(key: &HeaderValue) -> Option<&str> {
    let k = key.to_str().ok()?;
    (!k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic())).then_some(k)
}

fn request_hash(req: &http::request::Parts, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(req.method.as_str().as_bytes());
    h.update([0]);
    h.update(
        req.uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .as_bytes(),
    );
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

fn replay(answer: KeptAnswer) -> Response {
    let mut r = Response::new(Body::from(answer.body));
    *r.status_mut() = http::StatusCode::from_u16(answer.status)
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(ct) = answer
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The `/v1` middleware (after authentication): POSTs with an `Idempotency-Key`.
pub(crate) async fn idempotent(
    State(api): State<Arc<ControlApi>>,
    Caller(who): Caller,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(raw_key) = req.headers().get(&IDEMPOTENCY_KEY).cloned() else {
        return Ok(next.run(req).await);
    };
    if req.method() != Method::POST {
        return Ok(next.run(req).await);
    }
    let key = valid_key(&raw_key)
        .ok_or_else(|| {
            ApiError::Malformed("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?
        .to_string();
    let (parts, body) = req.into_parts();
    let bytes = http_body_util::Limited::new(body, MAX_BYTES)
        .collect()
        .await
        .map_err(|e| ApiError::Malformed(format!("reading the request body: {e}")))?
        .to_bytes();
    let claim = IdempotencyClaim {
        scope: scope(&who),
        key,
        request_hash: request_hash(&parts, &bytes),
        at: Utc::now(),
    };
    let other_request = || {
        ApiError::IdempotencyConflict(
            "this Idempotency-Key was already used with another request; use a new key for a new request"
                .into(),
        )
    };
    match api.billing.store.claim_idempotency_key(&claim).await? {
        ClaimOutcome::Answered {
            request_hash,
            answer,
        } if request_hash == claim.request_hash => return Ok(replay(answer)),
        ClaimOutcome::Answered { .. } => return Err(other_request()),
        ClaimOutcome::InFlight { request_hash } if request_hash == claim.request_hash => {
            return Err(ApiError::IdempotencyConflict(
                "a request with this Idempotency-Key is still being processed; retry shortly"
                    .into(),
            ))
        }
        ClaimOutcome::InFlight { .. } => return Err(other_request()),
        ClaimOutcome::Claimed => {}
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status();
    if status.is_server_error() {
        api.store
            .release_idempotency_key(&claim.scope, &claim.key)
            .await?;
        return Ok(response);
    }
    let (mut head, body) = response.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            api.store
                .release_idempotency_key(&claim.scope, &claim.key)
                .await?;
            return Err(ApiError::Internal(format!(
                "reading an answer to keep: {e}"
            )));
        }
    };
    match String::from_utf8(bytes.to_vec()) {
        Ok(text) => {
            let answer = KeptAnswer {
                status: status.as_u16(),
                content_type: head
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from),
                body: text,
            };
            api.store
                .complete_idempotency_key(&claim.scope, &claim.key, &answer)
                .await?;
        }
        // Not text: nothing a POST of this API answers; not kept, so a retry runs again.
        Err(_) => {
            api.store
                .release_idempotency_key(&claim.scope, &claim.key)
                .await?
        }
    }
    head.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(head, Body::from(bytes)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert_eq!(
            valid_key(&HeaderValue::from_static("a-1_Z.")),
            Some("a-1_Z.")
        );
        assert!(valid_key(&HeaderValue::from_static("")).is_none());
        assert!(valid_key(&HeaderValue::from_static("has space")).is_none());
        let long = "k".repeat(256);
        assert!(valid_key(&HeaderValue::from_str(&long).unwrap()).is_none());
    }

    #[test]
    fn the_hash_covers_method_path_query_and_body() {
        let parts = |uri: &str| http::Request::post(uri).body(()).unwrap().into_parts().0;
        let a = request_hash(&parts("/v1/partners"), b"{}");
        assert_eq!(a, request_hash(&parts("/v1/partners"), b"{}"));
        assert_ne!(a, request_hash(&parts("/v1/partners?x=1"), b"{}"));
        assert_ne!(a, request_hash(&parts("/v1/partners"), b"{ }"));
    }
}
