//! A partner's billing profile (time zone, tax) and prepaid credits.

use axum::response::{IntoResponse, Response};
use axum::Json;
use peage_billing_store::{BillingProfile, CreditEntry};

use super::audit::with_before;
use super::error::ApiError;
use super::extract::{Api, JsonBody, ScopedPartner};
use super::openapi;
use super::respond::created;
use crate::service::{CreditRequest, Credits, ProfileRequest};

#[utoipa::path(put, operation_id = "put_billing_profile",
    path = "/v1/partners/{id}/billing",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    request_body = ProfileRequest,
    responses((status = 200, description = "The billing profile", body = BillingProfile), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn put_profile(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    JsonBody(req): JsonBody<ProfileRequest>,
) -> Result<Response, ApiError> {
    let (before, after) = api.billing.put_billing_profile(partner, req).await?;
    Ok(with_before(Json(after).into_response(), &before))
}

#[utoipa::path(get, operation_id = "get_billing_profile",
    path = "/v1/partners/{id}/billing",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The billing profile", body = BillingProfile), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn get_profile(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<BillingProfile>, ApiError> {
    Ok(Json(api.billing.billing_profile(&partner).await?))
}

#[utoipa::path(post,
    path = "/v1/partners/{id}/credits",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    request_body = CreditRequest,
    responses((status = 201, description = "The credit entry", body = CreditEntry), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn add_credit(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    JsonBody(req): JsonBody<CreditRequest>,
) -> Result<Response, ApiError> {
    Ok(created(api.billing.add_credit(&partner, req).await?))
}

#[utoipa::path(get, operation_id = "list_credits",
    path = "/v1/partners/{id}/credits",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "Balances and entries", body = Credits), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn credits(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<Credits>, ApiError> {
    Ok(Json(api.billing.credits(&partner).await?))
}
