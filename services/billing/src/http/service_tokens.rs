//! `/v1/service-tokens`: scoped credentials for roles and scripts, managed by admins.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::audit::with_before;
use super::error::ApiError;
use super::extract::{Api, JsonBody};
use super::openapi;
use super::respond::{created, no_store};
use crate::service::service_tokens::{self, CreatedServiceToken, NewServiceToken};
use peage_billing_store::ServiceToken;

#[utoipa::path(post, operation_id = "create_service_token", path = "/v1/service-tokens", tag = "operations",
    request_body = NewServiceToken,
    responses((status = 201, body = CreatedServiceToken, description = "The token, shown this once"),
              (status = 400, response = openapi::BadRequest),
              (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden)),
    security(("admin" = [])))]
pub(crate) async fn create_token(
    api: Api,
    JsonBody(req): JsonBody<NewServiceToken>,
) -> Result<Response, ApiError> {
    let token = service_tokens::create(api.billing.store.as_ref(), &req.name, &req.scope).await?;
    Ok(no_store(created(token)))
}

#[utoipa::path(get, operation_id = "list_service_tokens", path = "/v1/service-tokens", tag = "operations",
    responses((status = 200, description = "Every service token, without the tokens", body = TokenList),
              (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden)),
    security(("admin" = [])))]
pub(crate) async fn list_tokens(api: Api) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        tokens: api.billing.service_tokens().await?,
    }))
}

/// Every service token, revoked ones included, without the tokens.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct TokenList {
    tokens: Vec<ServiceToken>,
}

#[utoipa::path(delete, operation_id = "revoke_service_token", path = "/v1/service-tokens/{id}", tag = "operations",
    params(("id" = String, Path, description = "Service token id (svc_…)")),
    responses((status = 200, description = "The revoked token; it stops working at once", body = ServiceToken),
              (status = 401, response = openapi::Unauthorized),
              (status = 403, response = openapi::Forbidden),
              (status = 404, response = openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn revoke_token(api: Api, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (before, revoked) = api.billing.revoke_service_token(&id).await?;
    Ok(with_before(Json(revoked).into_response(), &before))
}
