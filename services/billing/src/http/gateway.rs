//! `/v1/gateway/*`: what a gateway needs from billing state, so it never connects to billing's
//! database (docs/gateway.md, "Keys and revocation"). Reachable with a `gateway` service token
//! (and by staff).

use std::time::Duration;

use axum::extract::{Path, Query};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::extract::Api;
use super::openapi;
use crate::service::{GatewayIssuer, GatewayKey, RevocationPage};

#[utoipa::path(get, operation_id = "gateway_key_by_hash", path = "/v1/gateway/keys/{secret_hash}", tag = "gateway",
    params(("secret_hash" = String, Path, description = "SHA-256 (hex) of the key's secret")),
    responses((status = 200, body = GatewayKey), (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn key_by_hash(
    api: Api,
    Path(secret_hash): Path<String>,
) -> Result<Json<GatewayKey>, ApiError> {
    Ok(Json(api.billing.gateway_key_by_hash(&secret_hash).await?))
}

#[utoipa::path(get, operation_id = "gateway_key_by_id", path = "/v1/gateway/key-ids/{key_id}", tag = "gateway",
    params(("key_id" = String, Path, description = "The key a Péage token was obtained with")),
    responses((status = 200, body = GatewayKey), (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn key_by_id(
    api: Api,
    Path(key_id): Path<String>,
) -> Result<Json<GatewayKey>, ApiError> {
    Ok(Json(api.billing.gateway_key_by_id(&key_id).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IssuerParams {
    /// The tokens' `iss`.
    iss: String,
}

#[utoipa::path(get, operation_id = "gateway_issuer", path = "/v1/gateway/issuers", tag = "gateway",
    params(IssuerParams),
    responses((status = 200, body = GatewayIssuer), (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn issuer(
    api: Api,
    Query(q): Query<IssuerParams>,
) -> Result<Json<GatewayIssuer>, ApiError> {
    Ok(Json(api.billing.gateway_issuer(&q.iss).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevocationParams {
    /// The `cursor` of the previous answer; absent: from now.
    after: Option<DateTime<Utc>>,
    /// How long to wait for a revocation before answering none (long poll); more than
    /// 15000 is taken as 15000, so the answer comes well inside common client timeouts.
    #[param(maximum = 15000)]
    wait_ms: Option<u64>,
}

#[utoipa::path(get, operation_id = "gateway_revocations", path = "/v1/gateway/revocations", tag = "gateway",
    params(RevocationParams),
    responses((status = 200, body = RevocationPage), (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden)),
    security(("admin" = [])))]
pub(crate) async fn revocations(
    api: Api,
    Query(q): Query<RevocationParams>,
) -> Result<Json<RevocationPage>, ApiError> {
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0));
    Ok(Json(api.billing.revocations(q.after, wait).await?))
}
