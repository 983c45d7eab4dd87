//! Quota decisions (PRODUCT.md §3): `POST /v1/quota/leases` for gateways,
//! `GET /v1/partners/{id}/quotas` for people.

use axum::extract::Query;
use axum::Json;
use peage_core::quota::{Lease, LeaseRequest};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Api, JsonBody, ScopedPartner};
use super::openapi;
use crate::service::{values, QuotaReport};

#[utoipa::path(post, operation_id = "lease_quota",
    path = "/v1/quota/leases",
    tag = "usage",
    request_body = LeaseRequest,
    responses((status = 200, description = "The lease granted", body = Lease), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn lease(
    api: Api,
    JsonBody(req): JsonBody<LeaseRequest>,
) -> Result<Json<Lease>, ApiError> {
    Ok(Json(api.billing.lease(&req).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QuotaParams {
    /// `live` (default) or `sandbox`.
    env: Option<String>,
}

#[utoipa::path(get, operation_id = "get_quotas",
    path = "/v1/partners/{id}/quotas",
    tag = "usage",
    params(("id" = String, Path, description = "Partner id"), QuotaParams),
    responses((status = 200, description = "Every quota of the partner's plan this period", body = QuotaReport), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn partner_quotas(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    Query(params): Query<QuotaParams>,
) -> Result<Json<QuotaReport>, ApiError> {
    let env = values::env(params.env.as_deref())?;
    Ok(Json(api.billing.quotas(&partner, env).await?))
}
