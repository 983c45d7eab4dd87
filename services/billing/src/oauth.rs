//! OAuth2 client credentials (RFC 6749 §4.4) issuing JWTs signed by Péage (Ed25519, `EdDSA`),
//! the JWKS that verifies them, signing-key rotation, and partners' own issuers.
//!
//! The client is an API key: `client_id` is its key id, `client_secret` its secret. A token
//! names the partner (`sub`), the key (`key_id`), the env and, when asked for, scopes
//! (`{api}` or `{api}:{version}`) that limit which APIs the gateway lets it call.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use peage_billing_store::{SigningKey, TrustedIssuer};

use crate::secrets::{signing_row, SecretBox};
use peage_core::ids::{api_key, IssuerId};
use peage_core::Env;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::routes::{body, existing_partner};
use crate::{ApiError, ControlApi};

/// Who Péage's tokens say issued them and whom they are for; the gateway checks both.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub issuer: String,
    pub audience: String,
    pub token_ttl: Duration,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            issuer: "urn:peage:control".into(),
            audience: "urn:peage:gateway".into(),
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// The claims of a token Péage issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeageClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub key_id: String,
    pub env: Env,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): a fixed prefix, then the 32 bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The seed of a stored key, opened with the key-encryption key.
fn seed_of(secrets: &SecretBox, key: &SigningKey) -> Result<[u8; 32], ApiError> {
    let stored = secrets
        .open(&signing_row(&key.kid), &key.seed)
        .map_err(|e| ApiError::Internal(format!("signing key {}: {e}", key.kid)))?;
    URL_SAFE_NO_PAD
        .decode(stored)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| ApiError::Internal(format!("signing key {} is unreadable", key.kid)))
}

fn public_x(seed: &[u8; 32]) -> String {
    let public = ed25519_dalek::SigningKey::from_bytes(seed).verifying_key();
    URL_SAFE_NO_PAD.encode(public.to_bytes())
}

/// A new signing key, its seed sealed for the store.
fn new_signing_key(secrets: &SecretBox, now: DateTime<Utc>) -> SigningKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let x = public_x(&seed);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(x.as_bytes());
    let kid = format!("pk-{}-{}", now.format("%Y%m%d"), &hex::encode(digest)[..12]);
    SigningKey {
        seed: secrets.seal(&signing_row(&kid), &URL_SAFE_NO_PAD.encode(seed)),
        kid,
        created_at: now,
        retired_at: None,
    }
}

impl ControlApi {
    /// The key that signs new tokens, created on first use.
    async fn active_signing_key(&self) -> Result<SigningKey, ApiError> {
        let keys = self.store.signing_keys().await?;
        if let Some(k) = keys.into_iter().find(|k| k.retired_at.is_none()) {
            return Ok(k);
        }
        let key = new_signing_key(&self.secrets, Utc::now());
        self.store.rotate_signing_key(&key).await?;
        tracing::info!(kid = %key.kid, "first token-signing key created");
        Ok(key)
    }
}

/// RFC 6749 §5.2 error: `{"error", "error_description"}`.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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
#[utoipa::path(post,
    path = "/oauth/token",
    tag = "oauth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "An access token", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized)))]
pub async fn token(
    State(api): State<Arc<ControlApi>>,
    peer: crate::auth::PeerIp,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
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
    match issue(&api, &client_id, &secret, form.scope.as_deref()).await {
        Ok(r) => r,
        Err(r) => {
            if r.status() == StatusCode::UNAUTHORIZED {
                api.failed(peer);
            }
            r
        }
    }
}

async fn issue(
    api: &ControlApi,
    client_id: &str,
    secret: &str,
    scope: Option<&str>,
) -> Result<Response, Response> {
    let internal = |e: ApiError| e.into_response();
    let bad_client = || {
        oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        )
    };
    if api_key::env_of(secret).is_none() {
        return Err(bad_client());
    }
    let key = api
        .store
        .key_by_hash(&api_key::secret_hash(secret))
        .await
        .map_err(|e| internal(e.into()))?
        .ok_or_else(bad_client)?;
    if key.key_id != client_id {
        return Err(bad_client());
    }
    if key.revoked_at.is_some() {
        return Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "this API key has been revoked",
        ));
    }
    let scope = match scope.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            for item in s.split_whitespace() {
                let (name, version) = match item.split_once(':') {
                    Some((a, v)) => (a, Some(v)),
                    None => (item, None),
                };
                let known = api.catalog.apis.iter().any(|a| {
                    a.name == name && version.is_none_or(|v| a.versions.iter().any(|x| x.id == v))
                });
                if !known {
                    return Err(oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        &format!("{item:?} is not an API (or API:version) of the catalog"),
                    ));
                }
            }
            Some(s.split_whitespace().collect::<Vec<_>>().join(" "))
        }
    };
    let signing = api.active_signing_key().await.map_err(internal)?;
    let seed = seed_of(&api.secrets, &signing).map_err(internal)?;
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    let now = Utc::now().timestamp();
    let ttl = api.oauth.token_ttl.as_secs() as i64;
    let claims = PeageClaims {
        iss: api.oauth.issuer.clone(),
        sub: key.partner_id.clone(),
        aud: api.oauth.audience.clone(),
        exp: now + ttl,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::now_v7().to_string(),
        key_id: key.key_id.clone(),
        env: key.env,
        scope: scope.clone(),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(signing.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der))
        .map_err(|e| internal(ApiError::Internal(format!("signing a token: {e}"))))?;
    let mut body = json!({ "access_token": token, "token_type": "Bearer", "expires_in": ttl });
    if let Some(s) = scope {
        body["scope"] = json!(s);
    }
    let mut r = Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `GET /.well-known/jwks.json`: the signing key and those retired less than a token lifetime
/// ago (their tokens may still be in use).
#[utoipa::path(get,
    path = "/.well-known/jwks.json",
    tag = "oauth",
    responses((status = 200, description = "The token-signing public keys", body = Object)))]
pub async fn jwks(State(api): State<Arc<ControlApi>>) -> Result<Response, ApiError> {
    api.active_signing_key().await?;
    let horizon = Utc::now()
        - chrono::Duration::from_std(api.oauth.token_ttl).unwrap_or_default()
        - chrono::Duration::minutes(5);
    let mut keys = Vec::new();
    for k in api.store.signing_keys().await? {
        if k.retired_at.is_some_and(|r| r < horizon) {
            continue;
        }
        let x = public_x(&seed_of(&api.secrets, &k)?);
        keys.push(json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": k.kid, "alg": "EdDSA", "use": "sig" }));
    }
    let mut r = Json(json!({ "keys": keys })).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(r)
}

/// `POST /v1/oauth/signing-keys/rotate` (admin): new tokens are signed with a new key; the old
/// one stays in the JWKS until its tokens have expired.
#[utoipa::path(post,
    path = "/v1/oauth/signing-keys/rotate",
    tag = "oauth",
    responses((status = 201, description = "The new signing key", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn rotate(State(api): State<Arc<ControlApi>>) -> Result<Response, ApiError> {
    let key = new_signing_key(&api.secrets, Utc::now());
    api.store.rotate_signing_key(&key).await?;
    tracing::info!(kid = %key.kid, "token-signing key rotated");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "kid": key.kid, "created_at": key.created_at })),
    )
        .into_response())
}

/// Algorithms a partner's issuer may be pinned to: public-key signatures only (an HMAC secret
/// cannot be published in a JWKS).
pub const PARTNER_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuerRequest {
    issuer: String,
    jwks_url: String,
    algorithm: String,
    audience: String,
    env: Option<String>,
}

/// `PUT /v1/partners/{id}/issuer` (admin): trust JWTs from the partner's own identity provider.
#[utoipa::path(put,
    path = "/v1/partners/{id}/issuer",
    tag = "oauth",
    params(("id" = String, Path, description = "Partner id")),
    request_body = IssuerRequest,
    responses((status = 200, description = "The trusted issuer", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound), (status = 409, response = crate::openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn put_issuer(
    State(api): State<Arc<ControlApi>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: IssuerRequest = body(&raw)?;
    let partner = existing_partner(&api, &id).await?;
    if req.issuer.trim().is_empty() || req.issuer == api.oauth.issuer {
        return Err(ApiError::BadRequest(
            "issuer must be the partner's own, non-empty `iss`".into(),
        ));
    }
    api.check_outbound_url("jwks_url", &req.jwks_url).await?;
    if !PARTNER_ALGORITHMS.contains(&req.algorithm.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "algorithm must be one of {}, not {:?}",
            PARTNER_ALGORITHMS.join(", "),
            req.algorithm
        )));
    }
    if req.audience.trim().is_empty() {
        return Err(ApiError::BadRequest("audience must not be empty".into()));
    }
    let env = crate::routes::env_param(req.env.as_deref())?;
    let before = api.store.issuer(&req.issuer).await?;
    let stored = api
        .store
        .put_issuer(&TrustedIssuer {
            id: IssuerId::from_random(rand::random()).to_string(),
            partner_id: partner.id,
            issuer: req.issuer,
            jwks_url: req.jwks_url,
            algorithm: req.algorithm,
            audience: req.audience,
            env,
            created_at: Utc::now(),
        })
        .await?;
    Ok(crate::audit::with_before(
        Json(stored).into_response(),
        &before,
    ))
}
