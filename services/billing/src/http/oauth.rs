//! OAuth2 client credentials (RFC 6749 §4.4): `POST /oauth/token`, the JWKS that verifies
//! Péage's tokens, signing-key rotation, and partners' own issuers. Token errors are RFC 6749's
//! `{"error", "error_description"}`, as OAuth clients expect.

use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::audit::with_before;
use super::error::ApiError;
use super::extract::{Api, JsonBody, ScopedPartner};
use super::openapi;
use super::respond::{created, no_store};
use super::state::PeerIp;
use crate::service::oauth::{IssuerRequest, Jwks, NewSigningKey, TokenGrant, TokenRefusal};
use peage_billing_store::TrustedIssuer;

/// RFC 6749 §5.2 error: `{"error", "error_description"}`.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = no_store(
        (
            status,
            Json(json!({ "error": error, "error_description": description })),
        )
            .into_response(),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"peage\""),
        );
    }
    r
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct TokenForm {
    grant_type: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// `Authorization: Basic base64(client_id:client_secret)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

/// `POST /oauth/token`.
#[utoipa::path(post, operation_id = "oauth_token",
    path = "/oauth/token",
    tag = "oauth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "An access token", body = TokenGrant), (status = 400, description = "RFC 6749 §5.2: invalid_request, unsupported_grant_type or invalid_scope", body = openapi::OAuthErrorDoc), (status = 401, description = "RFC 6749 §5.2: invalid_client", body = openapi::OAuthErrorDoc), (status = 429, response = openapi::TooManyFailures)))]
pub async fn token(api: Api, peer: PeerIp, headers: HeaderMap, raw: Bytes) -> Response {
    if let Err(e) = api.throttle(peer) {
        return e.into_response();
    }
    let form: TokenForm = match serde_urlencoded::from_bytes(&raw) {
        Ok(f) => f,
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("the body must be application/x-www-form-urlencoded: {e}"),
            )
        }
    };
    if form.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        );
    }
    let credentials = basic_credentials(&headers)
        .or_else(|| form.client_id.clone().zip(form.client_secret.clone()));
    let Some((client_id, secret)) = credentials else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "send the key id and secret with HTTP Basic or as client_id and client_secret",
        );
    };
    match api
        .billing
        .issue_token(&client_id, &secret, form.scope.as_deref())
        .await
    {
        Ok(grant) => no_store(Json(grant).into_response()),
        Err(TokenRefusal::InvalidClient(why)) => {
            api.failed(peer);
            oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why)
        }
        Err(TokenRefusal::InvalidScope(why)) => {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", &why)
        }
        Err(TokenRefusal::Failed(e)) => ApiError::from(e).into_response(),
    }
}

/// `GET /.well-known/jwks.json`: the signing key and those retired less than a token lifetime
/// ago (their tokens may still be in use).
#[utoipa::path(get,
    path = "/.well-known/jwks.json",
    tag = "oauth",
    responses((status = 200, description = "The token-signing public keys", body = Jwks)))]
pub async fn jwks(api: Api) -> Result<Response, ApiError> {
    let mut r = Json(api.billing.jwks().await?).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(r)
}

/// `POST /v1/oauth/signing-keys/rotate` (admin): new tokens are signed with a new key; the old
/// one stays in the JWKS until its tokens have expired.
#[utoipa::path(post, operation_id = "rotate_signing_key",
    path = "/v1/oauth/signing-keys/rotate",
    tag = "oauth",
    responses((status = 201, description = "The new signing key", body = NewSigningKey), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn rotate(api: Api) -> Result<Response, ApiError> {
    Ok(created(api.billing.rotate_signing_key().await?))
}

/// `PUT /v1/partners/{id}/issuer` (admin): trust JWTs from the partner's own identity provider.
#[utoipa::path(put,
    path = "/v1/partners/{id}/issuer",
    tag = "oauth",
    params(("id" = String, Path, description = "Partner id")),
    request_body = IssuerRequest,
    responses((status = 200, description = "The trusted issuer", body = TrustedIssuer), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn put_issuer(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    JsonBody(req): JsonBody<IssuerRequest>,
) -> Result<Response, ApiError> {
    let (before, stored) = api.billing.put_issuer(partner, req).await?;
    Ok(with_before(Json(stored).into_response(), &before))
}
