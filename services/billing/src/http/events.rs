//! `POST /v1/events` and `POST /v1/events/cancellations`: usage from the company's own
//! services, as CloudEvents 1.0 JSON (docs/events.md).

use axum::Json;
use bytes::Bytes;
use http::{header, HeaderMap};

use super::error::ApiError;
use super::extract::Api;
use super::openapi;
use crate::service::events::{BodyForm, Cancellation, EventsOutcome};

/// How the body holds its events, from its content type.
fn form(headers: &HeaderMap) -> Result<BodyForm, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/cloudevents+json" => Ok(BodyForm::Single),
        "application/cloudevents-batch+json" => Ok(BodyForm::Batch),
        "application/json" => Ok(BodyForm::Either),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "content-type {ct:?} is not one of application/cloudevents+json (one event), \
             application/cloudevents-batch+json (an array) or application/json (either)"
        ))),
    }
}

#[utoipa::path(post,
    path = "/v1/events",
    tag = "events",
    request_body(description = "One CloudEvent 1.0 in JSON (`application/cloudevents+json`), an array of them (`application/cloudevents-batch+json`), or either as `application/json`. `subject` names the partner by id or external_id; `data` holds what meters read.",
        content((openapi::CloudEventDoc = "application/cloudevents+json"), (Vec<openapi::CloudEventDoc> = "application/cloudevents-batch+json"), (openapi::CloudEventsDoc = "application/json"))),
    responses(
        (status = 200, description = "What became of each event: accepted ones are durable", body = EventsOutcome),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 503, response = openapi::Unavailable)),
    security(("admin" = [])))]
pub async fn post_events(
    api: Api,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<EventsOutcome>, ApiError> {
    // A server without an event log says so whatever the request.
    api.billing.intake()?;
    let form = form(&headers)?;
    Ok(Json(api.billing.post_events(form, &body).await?))
}

#[utoipa::path(post,
    path = "/v1/events/cancellations",
    tag = "events",
    request_body(description = "One cancellation `{subject, source, id}` or an array of them: the events meters and invoices must leave out. Raw events stay; a cancellation record is added.",
        content((Vec<Cancellation> = "application/json"))),
    responses(
        (status = 200, description = "What became of each cancellation: `accepted` are recorded, `duplicates` were already", body = EventsOutcome),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 503, response = openapi::Unavailable)),
    security(("admin" = [])))]
pub async fn cancel_events(api: Api, body: Bytes) -> Result<Json<EventsOutcome>, ApiError> {
    Ok(Json(api.billing.cancel_events(&body).await?))
}
