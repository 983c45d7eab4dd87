//! `/v1/staff`: the company's named people who sign in to the dashboard, each with a role
//! (viewer, finance, admin), managed by admins. A member signs in with a link made for them
//! (`POST /v1/sign-in-links` with `staff`, or `peage sign-in-link --staff <email>`); disabling
//! them ends their sessions and unused links at once.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use http::StatusCode;
use peage_billing_store::{BillingStore, StaffChange, StaffMember, StaffRole};
use peage_core::ids::StaffId;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::audit;
use crate::routes::body;
use crate::{ApiError, ControlApi};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStaffMember {
    /// Their email: how they are named in the audit log and on invoices they finalize.
    pub email: String,
    pub name: String,
    /// `viewer`, `finance` or `admin`.
    pub role: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffUpdate {
    pub name: Option<String>,
    /// `viewer`, `finance` or `admin`.
    pub role: Option<String>,
    /// `true` disables the member (their sessions and unused links end); `false` enables.
    pub disabled: Option<bool>,
}

fn role(s: &str) -> Result<StaffRole, ApiError> {
    StaffRole::parse(s).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "role must be one of {}, not {s:?}",
            StaffRole::ALL.map(StaffRole::as_str).join(", ")
        ))
    })
}

fn name(s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > 100 || s.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "name must be 1 to 100 characters, without control characters".into(),
        ));
    }
    Ok(s.to_string())
}

/// A plain check, not RFC 5322: one `@`, something on each side, no spaces or control
/// characters (`admin@localhost` is fine). Péage does not send mail; the address names a person.
fn email(s: &str) -> Result<String, ApiError> {
    let s = s.trim().to_lowercase();
    let valid = s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(s)
    } else {
        Err(ApiError::BadRequest(format!(
            "email {s:?} is not an email address"
        )))
    }
}

/// Adds a staff member (what the route, `peage staff add` and `peage up` do).
pub async fn create(
    store: &dyn BillingStore,
    email_address: &str,
    full_name: &str,
    role_name: &str,
) -> Result<StaffMember, ApiError> {
    let member = StaffMember {
        id: StaffId::from_random(rand::random()).to_string(),
        email: email(email_address)?,
        name: name(full_name)?,
        role: role(role_name)?,
        created_at: Utc::now(),
        disabled_at: None,
    };
    store.create_staff(&member).await?;
    tracing::info!(id = %member.id, email = %member.email, role = member.role.as_str(), "staff member added");
    Ok(member)
}

/// Changes a staff member, found by id or email: their state before and after.
pub async fn update(
    store: &dyn BillingStore,
    id_or_email: &str,
    change: &StaffUpdate,
) -> Result<(StaffMember, StaffMember), ApiError> {
    let change = StaffChange {
        name: change.name.as_deref().map(name).transpose()?,
        role: change.role.as_deref().map(role).transpose()?,
        disabled: change.disabled,
    };
    let member = store
        .staff_member(id_or_email.trim())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("staff member {id_or_email} not found")))?;
    let (before, after) = store.update_staff(&member.id, &change, Utc::now()).await?;
    tracing::info!(id = %after.id, email = %after.email, role = after.role.as_str(), disabled = after.disabled_at.is_some(), "staff member changed");
    Ok((before, after))
}

#[utoipa::path(post, path = "/v1/staff", tag = "operations",
    request_body = NewStaffMember,
    responses((status = 201, description = "The new staff member", body = Object),
              (status = 400, response = crate::openapi::BadRequest),
              (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden),
              (status = 409, response = crate::openapi::Conflict)),
    security(("admin" = [])))]
pub(crate) async fn add(
    State(api): State<Arc<ControlApi>>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: NewStaffMember = body(&raw)?;
    let member = create(api.store.as_ref(), &req.email, &req.name, &req.role).await?;
    Ok((StatusCode::CREATED, Json(member)).into_response())
}

#[utoipa::path(get, path = "/v1/staff", tag = "operations",
    responses((status = 200, description = "Every staff member, disabled ones included", body = Object),
              (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = [])))]
pub(crate) async fn list(State(api): State<Arc<ControlApi>>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "staff": api.store.staff().await? })).into_response())
}

#[utoipa::path(patch, path = "/v1/staff/{id}", tag = "operations",
    params(("id" = String, Path, description = "Staff member id (stf_…) or email")),
    request_body = StaffUpdate,
    responses((status = 200, description = "The staff member as changed", body = Object),
              (status = 400, response = crate::openapi::BadRequest),
              (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden),
              (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn patch(
    State(api): State<Arc<ControlApi>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: StaffUpdate = body(&raw)?;
    let (before, after) = update(api.store.as_ref(), &id, &req).await?;
    Ok(audit::with_before(Json(after).into_response(), &before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "a b@example.com",
            "a@b@c.d",
            "ann@.com",
        ] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
    }
}
