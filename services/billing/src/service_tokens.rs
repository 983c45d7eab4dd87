//! `/v1/service-tokens`: scoped credentials for roles and scripts, created, listed and revoked
//! by admins (the admin token or an `admin` service token; not finance sessions). A token is
//! shown once; only its SHA-256 is stored.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderValue, StatusCode};
use peage_billing_store::{BillingStore, ServiceToken};
use peage_core::ids::ServiceTokenId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{new_token, token_hash, Principal, ServiceScope, SERVICE_TOKEN_PREFIX};
use crate::routes::body;
use crate::{ApiError, ControlApi};

/// Layered on the service-token routes: the admin token, or an `admin` service token.
pub(crate) async fn require_admin(
    Extension(who): Extension<Principal>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if who.is_admin() {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Forbidden(
            "this route is for admins: the admin token, an admin staff member or an admin service token".into(),
        ))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewServiceToken {
    /// What uses it, for people: `gateway-eu-1`.
    pub name: String,
    /// `gateway`, `events:write`, `finance`, `read-only` or `admin`.
    pub scope: String,
}

/// A created token: `token` is shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedServiceToken {
    pub id: String,
    pub name: String,
    pub scope: String,
    pub token: String,
    pub created_at: chrono::DateTime<Utc>,
}

/// Creates a token (what the route and `peage service-token create` do).
pub async fn create(
    store: &dyn BillingStore,
    name: &str,
    scope: &str,
) -> Result<CreatedServiceToken, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::BadRequest(
            "name must be 1 to 100 characters".into(),
        ));
    }
    let scope = ServiceScope::parse(scope).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "scope must be one of {}, not {scope:?}",
            ServiceScope::ALL.map(ServiceScope::as_str).join(", ")
        ))
    })?;
    let token = new_token(SERVICE_TOKEN_PREFIX);
    let stored = ServiceToken {
        id: ServiceTokenId::from_random(rand::random()).to_string(),
        name: name.to_string(),
        scope: scope.as_str().to_string(),
        token_hash: token_hash(&token),
        created_at: Utc::now(),
        revoked_at: None,
    };
    store.create_service_token(&stored).await?;
    tracing::info!(id = %stored.id, scope = %stored.scope, name = %stored.name, "service token created");
    Ok(CreatedServiceToken {
        id: stored.id,
        name: stored.name,
        scope: stored.scope,
        token,
        created_at: stored.created_at,
    })
}

#[utoipa::path(post, path = "/v1/service-tokens", tag = "operations",
    request_body = NewServiceToken,
    responses((status = 201, body = CreatedServiceToken, description = "The token, shown this once"),
              (status = 400, response = crate::openapi::BadRequest),
              (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = [])))]
pub(crate) async fn create_token(
    State(api): State<Arc<ControlApi>>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: NewServiceToken = body(&raw)?;
    let created = create(api.store.as_ref(), &req.name, &req.scope).await?;
    let mut r = (StatusCode::CREATED, Json(created)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[utoipa::path(get, path = "/v1/service-tokens", tag = "operations",
    responses((status = 200, description = "Every service token, without the tokens", body = Object),
              (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = [])))]
pub(crate) async fn list_tokens(State(api): State<Arc<ControlApi>>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "tokens": api.store.service_tokens().await? })).into_response())
}

#[utoipa::path(delete, path = "/v1/service-tokens/{id}", tag = "operations",
    params(("id" = String, Path, description = "Service token id (svc_…)")),
    responses((status = 200, description = "The revoked token; it stops working at once", body = Object),
              (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden),
              (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn revoke_token(
    State(api): State<Arc<ControlApi>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let before = api
        .store
        .service_tokens()
        .await?
        .into_iter()
        .find(|t| t.id == id);
    let revoked = api.store.revoke_service_token(&id, Utc::now()).await?;
    tracing::info!(id = %revoked.id, "service token revoked");
    Ok(crate::audit::with_before(
        Json(revoked).into_response(),
        &before,
    ))
}
