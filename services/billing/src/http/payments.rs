//! Payments: `/v1/invoices/{id}/payments` and `/v1/invoices/{id}/mark-uncollectible`.

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::audit::with_before;
use super::credit_notes::ListFormat;
use super::error::ApiError;
use super::extract::{Api, Caller, JsonBody};
use super::openapi;
use super::respond::{created, json_or_csv};
use crate::service::{payments_csv, PaymentList, PaymentMade};
use peage_core::invoice::InvoiceRecord;
use peage_core::payment::PaymentRequest;

#[utoipa::path(post, operation_id = "record_payment",
    path = "/v1/invoices/{id}/payments",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id")),
    request_body = PaymentRequest,
    responses((status = 201, description = "The payment and the invoice as it now stands; `invoice.paid` is queued when it settles the invoice", body = PaymentMade), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn record(
    api: Api,
    Caller(who): Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PaymentRequest>,
) -> Result<Response, ApiError> {
    Ok(created(
        api.billing.record_payment(&id, &req, &who.label()).await?,
    ))
}

#[utoipa::path(get, operation_id = "list_payments",
    path = "/v1/invoices/{id}/payments",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id"), ListFormat),
    responses((status = 200, description = "The invoice's payments, oldest first, what they paid, what is left due and the invoice's state (JSON), or the payments (CSV with format=csv)", content((PaymentList = "application/json"), (openapi::Csv = "text/csv"))), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn list(
    api: Api,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<ListFormat>,
) -> Result<Response, ApiError> {
    let list = api.billing.payments(&who, &id).await?;
    json_or_csv(
        q.format.as_deref(),
        &list,
        || payments_csv(&list.payments),
        &format!("payments-{id}.csv"),
    )
}

#[utoipa::path(post, operation_id = "mark_uncollectible",
    path = "/v1/invoices/{id}/mark-uncollectible",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id")),
    responses((status = 200, description = "The invoice, written off", body = InvoiceRecord), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn mark_uncollectible(
    api: Api,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (before, after) = api.billing.mark_uncollectible(&id, &who.label()).await?;
    Ok(with_before(Json(after).into_response(), &before))
}
