//! `/v1/staff`: the company's named people who sign in to the dashboard, managed by admins.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::audit::with_before;
use super::error::ApiError;
use super::extract::{Api, JsonBody};
use super::openapi;
use super::respond::created;
use crate::service::staff::{self, NewStaffMember, StaffUpdate};
use peage_billing_store::StaffMember;

#[utoipa::path(post, operation_id = "add_staff_member", path = "/v1/staff", tag = "operations",
    request_body = NewStaffMember,
    responses((status = 201, description = "The new staff member", body = StaffMember),
              (status = 400, response = openapi::BadRequest),
              (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden),
              (status = 409, response = openapi::Conflict)),
    security(("admin" = [])))]
pub(crate) async fn add(
    api: Api,
    JsonBody(req): JsonBody<NewStaffMember>,
) -> Result<Response, ApiError> {
    let member =
        staff::create(api.billing.store.as_ref(), &req.email, &req.name, &req.role).await?;
    Ok(created(member))
}

#[utoipa::path(get, operation_id = "list_staff", path = "/v1/staff", tag = "operations",
    responses((status = 200, description = "Every staff member, disabled ones included", body = StaffList),
              (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden)),
    security(("admin" = [])))]
pub(crate) async fn list(api: Api) -> Result<Json<StaffList>, ApiError> {
    Ok(Json(StaffList {
        staff: api.billing.staff().await?,
    }))
}

/// Every staff member, disabled ones included.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct StaffList {
    staff: Vec<StaffMember>,
}

#[utoipa::path(patch, operation_id = "patch_staff_member", path = "/v1/staff/{id}", tag = "operations",
    params(("id" = String, Path, description = "Staff member id (stf_…) or email")),
    request_body = StaffUpdate,
    responses((status = 200, description = "The staff member as changed", body = StaffMember),
              (status = 400, response = openapi::BadRequest),
              (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden),
              (status = 404, response = openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn patch(
    api: Api,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<StaffUpdate>,
) -> Result<Response, ApiError> {
    let (before, after) = staff::update(api.billing.store.as_ref(), &id, &req).await?;
    Ok(with_before(Json(after).into_response(), &before))
}
