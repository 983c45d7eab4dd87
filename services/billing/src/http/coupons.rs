//! `/v1/coupons` and a partner's coupons (docs/control-api.md, "Coupons").

use axum::extract::Path;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{Api, Caller, JsonBody, ScopedPartner};
use super::openapi;
use super::respond::created;
use crate::service::{CouponList, PartnerCouponList};
use peage_billing_store::{CouponRecord, PartnerCoupon};
use peage_core::coupon::Coupon;

#[utoipa::path(post,
    path = "/v1/coupons",
    tag = "coupons",
    request_body = Coupon,
    responses((status = 201, description = "The coupon", body = CouponRecord), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn create_coupon(
    api: Api,
    Caller(who): Caller,
    JsonBody(coupon): JsonBody<Coupon>,
) -> Result<Response, ApiError> {
    Ok(created(
        api.billing.create_coupon(coupon, &who.label()).await?,
    ))
}

#[utoipa::path(get,
    path = "/v1/coupons",
    tag = "coupons",
    responses((status = 200, description = "Every coupon, by code", body = CouponList), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn list_coupons(api: Api) -> Result<Json<CouponList>, ApiError> {
    Ok(Json(api.billing.coupons().await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttachCoupon {
    /// The coupon's code.
    #[schema(example = "LAUNCH20")]
    code: String,
}

#[utoipa::path(post,
    path = "/v1/partners/{id}/coupons",
    tag = "coupons",
    params(("id" = String, Path, description = "Partner id")),
    request_body = AttachCoupon,
    responses((status = 201, description = "The coupon, attached: it discounts this billing period and the ones its duration covers", body = PartnerCoupon), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn attach_coupon(
    api: Api,
    Caller(who): Caller,
    ScopedPartner(partner): ScopedPartner,
    JsonBody(req): JsonBody<AttachCoupon>,
) -> Result<Response, ApiError> {
    Ok(created(
        api.billing
            .attach_coupon(&partner, &req.code, &who.label())
            .await?,
    ))
}

#[utoipa::path(get, operation_id = "list_partner_coupons",
    path = "/v1/partners/{id}/coupons",
    tag = "coupons",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The partner's coupons, removed ones included, in the order they were attached", body = PartnerCouponList), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn partner_coupons(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<PartnerCouponList>, ApiError> {
    Ok(Json(api.billing.partner_coupons(&partner).await?))
}

#[utoipa::path(delete,
    path = "/v1/partners/{id}/coupons/{coupon_id}",
    tag = "coupons",
    params(("id" = String, Path, description = "Partner id"), ("coupon_id" = String, Path, description = "The attachment's id (pcp_…)")),
    responses((status = 200, description = "The coupon, removed: it discounts no period that ends after now", body = PartnerCoupon), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn remove_coupon(
    api: Api,
    Caller(who): Caller,
    Path((id, coupon_id)): Path<(String, String)>,
) -> Result<Json<PartnerCoupon>, ApiError> {
    let partner = api.billing.scoped_partner(&who, &id).await?;
    Ok(Json(
        api.billing
            .remove_coupon(&partner, &coupon_id, &who.label())
            .await?,
    ))
}
