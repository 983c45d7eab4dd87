//! Webhook endpoints and their delivery log.

use axum::extract::Query;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::extract::{Api, JsonBody};
use super::openapi;
use super::respond::{created, no_store};
use crate::service::{CreatedEndpoint, EndpointRequest};
use peage_billing_store::{WebhookDelivery, WebhookEndpoint};

#[utoipa::path(post,
    path = "/v1/webhooks",
    tag = "webhooks",
    request_body = EndpointRequest,
    responses((status = 201, description = "The endpoint, with its secret shown this once", body = CreatedEndpoint), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn add_webhook(
    api: Api,
    JsonBody(req): JsonBody<EndpointRequest>,
) -> Result<Response, ApiError> {
    Ok(no_store(created(
        api.billing.add_webhook_endpoint(req).await?,
    )))
}

#[utoipa::path(get, operation_id = "list_webhooks",
    path = "/v1/webhooks",
    tag = "webhooks",
    responses((status = 200, description = "Webhook endpoints", body = EndpointList), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn webhooks(api: Api) -> Result<Json<EndpointList>, ApiError> {
    Ok(Json(EndpointList {
        endpoints: api.billing.webhook_endpoints().await?,
    }))
}

/// Webhook endpoints, without their secrets.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct EndpointList {
    endpoints: Vec<WebhookEndpoint>,
}

/// Deliveries, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DeliveryList {
    deliveries: Vec<WebhookDelivery>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    limit: Option<i64>,
}

#[utoipa::path(get, operation_id = "list_webhook_deliveries",
    path = "/v1/webhooks/deliveries",
    tag = "webhooks",
    params(DeliveryParams),
    responses((status = 200, description = "The latest deliveries", body = DeliveryList), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn deliveries(
    api: Api,
    Query(q): Query<DeliveryParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(DeliveryList {
        deliveries: api.billing.webhook_deliveries(limit).await?,
    }))
}
