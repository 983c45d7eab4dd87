//! The dashboard's sign-in: one-time links (`POST /v1/sign-in-links`), signing in with one
//! (a session cookie), signing out, and who the session is.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::auth::{require_csrf, session_cookie, SESSION_COOKIE};
use super::error::ApiError;
use super::extract::{Api, Caller, JsonBody};
use super::openapi;
use super::respond::no_store;
use super::state::PeerIp;
use crate::service::sessions::{
    NewSignInLink, SessionInfo, SignInLink, SignedIn, SESSION_TTL_HOURS,
};

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The token of a sign-in link.
    pub token: String,
}

fn cookie(value: &str, max_age_s: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("peage_session=; Path=/; Max-Age=0"))
}

/// Behind a TLS-terminating proxy the cookie is marked `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

#[utoipa::path(post, path = "/v1/sign-in-links", tag = "dashboard",
    request_body = NewSignInLink,
    responses((status = 201, body = SignInLink), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn create_sign_in_link(
    api: Api,
    Caller(who): Caller,
    JsonBody(req): JsonBody<NewSignInLink>,
) -> Result<Response, ApiError> {
    let link = api.billing.create_sign_in_link(&who, req).await?;
    Ok(no_store(super::respond::created(link)))
}

#[utoipa::path(post, path = "/auth/sign-in", tag = "dashboard",
    request_body = SignIn,
    responses((status = 200, body = SessionInfo, description = "Signed in; the session cookie is set"),
              (status = 400, response = openapi::BadRequest),
              (status = 401, description = "Unknown, used or expired link", body = openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn sign_in(
    api: Api,
    peer: PeerIp,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    api.throttle(peer)?;
    let req: SignIn = super::extract::json_body(&body)?;
    let (token, info) = match api.billing.sign_in(&req.token).await? {
        SignedIn::Opened { token, info } => (token, info),
        SignedIn::UnknownLink => {
            api.failed(peer);
            return Err(ApiError::Unauthenticated);
        }
        SignedIn::NoLongerAllowed => return Err(ApiError::Unauthenticated),
    };
    let mut r = Json(info).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&token, SESSION_TTL_HOURS * 3600, over_https(&headers)),
    );
    Ok(no_store(r))
}

#[utoipa::path(post, path = "/auth/sign-out", tag = "dashboard",
    responses((status = 204, description = "The session is ended and its cookie cleared"),
              (status = 403, response = openapi::Forbidden)))]
pub(crate) async fn sign_out(api: Api, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(token) = session_cookie(&headers) {
        require_csrf(&headers)?;
        api.billing.sign_out(token).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, over_https(&headers)));
    Ok(r)
}

#[utoipa::path(get, operation_id = "get_session", path = "/v1/session", tag = "dashboard",
    responses((status = 200, body = SessionInfo), (status = 401, response = openapi::Unauthorized)),
    security(("admin" = []), ("session" = [])))]
pub(crate) async fn whoami(api: Api, Caller(who): Caller) -> Result<Json<SessionInfo>, ApiError> {
    Ok(Json(api.billing.session_info(&who).await?))
}
