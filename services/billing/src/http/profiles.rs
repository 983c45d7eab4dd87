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

#[utoipa::path(put,
    path = "/v1/partners/{id}/billing-details",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    request_body = peage_core::invoice::BillTo,
    responses((status = 200, description = "The billing details as stored (trimmed, empty fields dropped): printed under \"Bill to\" on the invoices drafted from now on", body = peage_core::invoice::BillTo), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn put_billing_details(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    JsonBody(details): JsonBody<peage_core::invoice::BillTo>,
) -> Result<Json<peage_core::invoice::BillTo>, ApiError> {
    Ok(Json(
        api.billing.put_billing_details(&partner, details).await?,
    ))
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/billing-details",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The partner's billing details (empty when none were set)", body = peage_core::invoice::BillTo), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn get_billing_details(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<peage_core::invoice::BillTo>, ApiError> {
    Ok(Json(api.billing.billing_details(&partner).await?))
}
