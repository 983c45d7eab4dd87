//! The catalog as loaded: `/v1/plans`, `/v1/apis` and each API version's OpenAPI document.

use axum::extract::Path;
use axum::Json;

use super::error::ApiError;
use super::extract::{Api, Caller};
use super::openapi;
use crate::service::catalog_state::CatalogStatus;
use crate::service::reload::Reloaded;
use crate::service::{ApisView, CatalogVersions, PlansView};

#[utoipa::path(get, operation_id = "list_plans",
    path = "/v1/plans",
    tag = "catalog",
    responses((status = 200, description = "Plans of the loaded catalog", body = PlansView), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn plans(api: Api) -> Json<PlansView> {
    Json(api.billing.plans())
}

#[utoipa::path(get, operation_id = "list_apis",
    path = "/v1/apis",
    tag = "catalog",
    responses((status = 200, description = "APIs and versions of the loaded catalog", body = ApisView), (status = 401, response = openapi::Unauthorized)),
    security(("admin" = []), ("session" = [])))]
pub async fn apis(api: Api, Caller(who): Caller) -> Result<Json<ApisView>, ApiError> {
    // Partners see what they may call and what their plan includes, never the upstream
    // addresses behind it.
    let plan = match who.own_partner() {
        Some(p) => Some(api.billing.partner(p.as_str()).await?.subscription.plan_id),
        None => None,
    };
    Ok(Json(
        api.billing
            .apis(who.own_partner().is_none(), plan.as_deref())?,
    ))
}

#[utoipa::path(get, operation_id = "get_api_document",
    path = "/v1/apis/{api}/versions/{version}/openapi",
    tag = "catalog",
    params(("api" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "The version's OpenAPI document, as JSON", body = openapi::ApiDocumentDoc), (status = 401, response = openapi::Unauthorized), (status = 404, description = "No such API version, or it has no document", body = openapi::ProblemDoc, content_type = "application/problem+json")),
    security(("admin" = []), ("session" = [])))]
pub async fn api_openapi(
    api: Api,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(api.billing.api_document(&name, &version)?))
}

#[utoipa::path(get,
    path = "/v1/catalog",
    operation_id = "get_catalog_status",
    tag = "catalog",
    responses((status = 200, description = "The catalog version in force, since when, and the last reload (what triggered it, what it did, and why a refused one was refused)", body = CatalogStatus), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn catalog_status(api: Api) -> Result<Json<CatalogStatus>, ApiError> {
    Ok(Json(api.billing.catalog_status().await?))
}

#[utoipa::path(get,
    path = "/v1/catalog/versions",
    operation_id = "list_catalog_versions",
    tag = "catalog",
    responses((status = 200, description = "Every catalog billing accepted (at start and on reloads), the latest first, and the version in force; any of them can price an invoice preview", body = CatalogVersions), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn catalog_versions(api: Api) -> Result<Json<CatalogVersions>, ApiError> {
    Ok(Json(api.billing.catalog_versions().await?))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActiveParams {
    /// The asking role (`gateway`), reported in `GET /v1/catalog` with `instance` and
    /// `running`.
    role: Option<String>,
    /// Its instance id (`gateway.id`).
    instance: Option<String>,
    /// The catalog version it runs now.
    running: Option<String>,
}

/// The catalog of record, as roles fetch it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ActiveCatalog {
    pub version: String,
    /// The catalog's TOML text; each role validates it with its own variables.
    pub text: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

#[utoipa::path(get,
    path = "/v1/catalog/active",
    operation_id = "get_catalog_of_record",
    tag = "catalog",
    params(ActiveParams, ("If-None-Match" = Option<String>, Header, description = "The ETag of the version the role has: 304 while it is still the one in force")),
    responses((status = 200, description = "The catalog of record (ETag: its version)", body = ActiveCatalog), (status = 304, description = "The version the role has is still the one in force"), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = [])))]
pub async fn catalog_of_record(
    api: Api,
    axum::extract::Query(q): axum::extract::Query<ActiveParams>,
    headers: http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    if let (Some(role), Some(instance), Some(running)) = (&q.role, &q.instance, &q.running) {
        api.billing.report_role(role, instance, running).await?;
    }
    let record = api.billing.catalog_of_record().await?;
    let etag = format!("\"{}\"", record.version);
    let fresh = headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = if fresh {
        http::StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(ActiveCatalog {
            version: record.version,
            text: record.text,
            since: record.since,
        })
        .into_response()
    };
    if let Ok(v) = http::HeaderValue::from_str(&etag) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    Ok(r)
}

#[utoipa::path(post,
    path = "/v1/catalog/reload",
    operation_id = "reload_catalog",
    tag = "catalog",
    responses((status = 200, description = "The catalog file was read again: the version now in force and what changed (nothing when the file did not change)", body = Reloaded), (status = 400, description = "The new catalog is invalid (every problem in `detail`, with file, line and field); the catalog in force keeps serving", body = openapi::ProblemDoc, content_type = "application/problem+json"), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 409, response = openapi::Conflict)),
    security(("admin" = [])))]
pub async fn reload_catalog(api: Api) -> Result<Json<Reloaded>, ApiError> {
    Ok(Json(
        api.billing
            .reload_catalog("POST /v1/catalog/reload")
            .await?,
    ))
}
