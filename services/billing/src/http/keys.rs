//! Partners' API keys: `/v1/partners/{id}/keys` and `/v1/keys/{key_id}`.

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use peage_billing_store::ApiKey;
use peage_core::{Env, KeyId, PartnerId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::with_before;
use super::error::ApiError;
use super::extract::{Api, Caller, JsonBody, ScopedPartner};
use super::openapi;
use super::respond::{created, no_store};
use crate::service::{values, IssuedKey};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRequest {
    env: String,
    /// A name to tell keys apart ("production", "CI"), 1 to 60 characters; kept by rotations.
    #[serde(default)]
    name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedKey {
    key_id: KeyId,
    partner_id: PartnerId,
    #[schema(value_type = String)]
    env: &'static str,
    /// Shown once, never stored: only its SHA-256 is kept.
    secret: String,
    prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    created_at: DateTime<Utc>,
}

/// `201` with the new key and its secret, which no cache may keep.
fn created_key(issued: IssuedKey) -> Response {
    let IssuedKey { key, secret } = issued;
    no_store(created(CreatedKey {
        env: if key.env == Env::Live { "live" } else { "test" },
        key_id: key.key_id,
        partner_id: key.partner_id,
        secret,
        prefix: key.prefix,
        name: key.name,
        created_at: key.created_at,
    }))
}

#[utoipa::path(post,
    path = "/v1/partners/{id}/keys",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    request_body = KeyRequest,
    responses((status = 201, description = "The key, with its secret shown this once", body = CreatedKey), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn create_key(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    JsonBody(req): JsonBody<KeyRequest>,
) -> Result<Response, ApiError> {
    let env = values::key_env(&req.env)?;
    Ok(created_key(
        api.billing
            .issue_key(&partner, env, req.name.as_deref())
            .await?,
    ))
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/keys",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The partner's keys (no secrets)", body = KeyList), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn list_keys(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList {
        keys: api.billing.keys(&partner).await?,
    }))
}

/// A partner's keys, without secrets.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyList {
    keys: Vec<crate::service::KeyView>,
}

#[utoipa::path(delete,
    path = "/v1/keys/{key_id}",
    tag = "partners",
    params(("key_id" = String, Path, description = "API key id")),
    responses((status = 200, description = "The revoked key", body = ApiKey), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn revoke_key(
    api: Api,
    Caller(who): Caller,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    let (before, key) = api.billing.revoke_key(&who, &key_id).await?;
    Ok(with_before(Json(key).into_response(), &before))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RotateParams {
    /// Hours the old key keeps working beside the new one (0 to 168; 0, the default, revokes
    /// it at once).
    overlap_hours: Option<u32>,
}

/// Issues a new key for the same partner, environment and name, then revokes the old one at
/// once or after `overlap_hours`: the new secret is shown once. A revoked key, or one rotated
/// already, cannot be rotated (409).
#[utoipa::path(post,
    path = "/v1/keys/{key_id}/rotate",
    tag = "partners",
    params(("key_id" = String, Path, description = "API key id"), RotateParams),
    responses((status = 201, description = "The new key, with its secret shown this once; the old one is revoked, or stops at the end of the overlap (its `revoked_at`)", body = CreatedKey), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, description = "The key is already revoked or rotated", body = openapi::ProblemDoc, content_type = "application/problem+json")),
    security(("admin" = []), ("session" = [])))]
pub async fn rotate_key(
    api: Api,
    Caller(who): Caller,
    Path(key_id): Path<String>,
    Query(params): Query<RotateParams>,
) -> Result<Response, ApiError> {
    let (old, issued) = api
        .billing
        .rotate_key(&who, &key_id, params.overlap_hours.unwrap_or(0))
        .await?;
    Ok(with_before(created_key(issued), &old))
}
