//! A partner's spend and usage alerts, and the period's forecast (docs/control-api.md,
//! "Alerts"). Partners manage their own; staff any partner's.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use peage_billing_store::AlertRecord;
use peage_core::alert::AlertRule;
use peage_core::InvoiceRecord;

use super::error::ApiError;
use super::extract::{Api, Caller, JsonBody, ScopedPartner};
use super::openapi;
use super::respond::created;
use crate::service::AlertList;

#[utoipa::path(post,
    path = "/v1/partners/{id}/alerts",
    tag = "alerts",
    params(("id" = String, Path, description = "Partner id")),
    request_body = AlertRule,
    responses((status = 201, description = "The alert: each threshold is notified once per billing period (`alert.triggered` and the dashboard)", body = AlertRecord), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn create_alert(
    api: Api,
    Caller(who): Caller,
    ScopedPartner(partner): ScopedPartner,
    JsonBody(rule): JsonBody<AlertRule>,
) -> Result<Response, ApiError> {
    Ok(created(
        api.billing
            .create_alert(&partner, rule, &who.label())
            .await?,
    ))
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/alerts",
    tag = "alerts",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The partner's alerts, each with its value now and the thresholds it reached this period", body = AlertList), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn list_alerts(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<AlertList>, ApiError> {
    Ok(Json(api.billing.alerts(&partner).await?))
}

#[utoipa::path(delete,
    path = "/v1/partners/{id}/alerts/{alert_id}",
    tag = "alerts",
    params(("id" = String, Path, description = "Partner id"), ("alert_id" = String, Path, description = "The alert's id (alr_…)")),
    responses((status = 204, description = "Deleted: it notifies no more; its past notices stay"), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn delete_alert(
    api: Api,
    Caller(who): Caller,
    Path((id, alert_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let partner = api.billing.scoped_partner(&who, &id).await?;
    api.billing
        .delete_alert(&partner, &alert_id, &who.label())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/invoices/forecast",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The current period's invoice as it would end at the pace so far: meters that add up over time projected to the period's end, none past a hard quota; never stored (`id` is `forecast`)", body = InvoiceRecord), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn forecast(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<InvoiceRecord>, ApiError> {
    Ok(Json(api.billing.forecast_invoice(&partner).await?))
}
