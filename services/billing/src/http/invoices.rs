//! Finance's invoices: runs, the list and its exports (JSON, CSV, PDF), one invoice, the
//! upcoming invoice, finalize and void.

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::Json;
use peage_core::InvoiceRecord;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::audit::with_before;
use super::error::ApiError;
use super::extract::{Api, Caller, JsonBody, ScopedPartner};
use super::openapi;
use super::respond::attachment;
use super::state::ControlApi;
use crate::service::invoicing::RunSummary;
use crate::service::{InvoicePreview, InvoiceQuery, PreviewCatalog, ServiceError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Pdf,
}

impl Format {
    pub fn parse(raw: Option<&str>, pdf_allowed: bool) -> Result<Format, ApiError> {
        match raw {
            None | Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some("pdf") if pdf_allowed => Ok(Format::Pdf),
            Some(other) => Err(ApiError::Malformed(format!(
                "format must be json, csv{}, not {other:?}",
                if pdf_allowed { " or pdf" } else { "" }
            ))),
        }
    }
}

/// Answers invoices in `format`: one invoice as itself, a list as `{"invoices": […]}`; PDF
/// only for exactly one invoice.
async fn respond(
    api: &ControlApi,
    format: Format,
    records: &[InvoiceRecord],
    name: &str,
) -> Result<Response, ApiError> {
    Ok(match format {
        Format::Json if records.len() == 1 && name != "invoices" => {
            Json(&records[0]).into_response()
        }
        Format::Json => Json(InvoiceList { invoices: records }).into_response(),
        Format::Csv => attachment(
            InvoiceRecord::to_csv(records).into_response(),
            "text/csv; charset=utf-8",
            &format!("{name}.csv"),
        ),
        Format::Pdf => {
            let record = records
                .first()
                .ok_or_else(|| ServiceError::NotFound("no invoice".into()))?;
            let partner = api.billing.partner_name(&record.partner_id).await?;
            let pdf = crate::service::pdf::render(record, &partner, &api.billing.issuer);
            attachment(
                pdf.into_response(),
                "application/pdf",
                &format!("{name}.pdf"),
            )
        }
    })
}

/// Invoices, in the list's order.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct InvoiceList<'a> {
    #[schema(value_type = Vec<InvoiceRecord>)]
    invoices: &'a [InvoiceRecord],
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    period: Option<String>,
    status: Option<String>,
    partner_id: Option<String>,
    format: Option<String>,
}

#[utoipa::path(get, operation_id = "list_invoices",
    path = "/v1/invoices",
    tag = "invoices",
    params(ListParams),
    responses((status = 200, description = "Invoices (JSON, or CSV with format=csv; the CSV leaves void invoices out unless status=void is asked for, so that it sums right)", content((InvoiceList = "application/json"), (openapi::Csv = "text/csv"))), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn list(
    api: Api,
    Caller(who): Caller,
    Query(q): Query<ListParams>,
) -> Result<Response, ApiError> {
    let format = Format::parse(q.format.as_deref(), false)?;
    let query = InvoiceQuery {
        period: q.period.as_deref(),
        status: q.status.as_deref(),
        partner_id: q.partner_id.as_deref(),
    };
    let mut records = api.billing.invoices(&who, query).await?;
    // An export for summing: a void invoice (re-issued as another) counts only when asked for.
    if matches!(format, Format::Csv) && q.status.is_none() {
        records.retain(|r| r.status != peage_core::InvoiceStatus::Void);
    }
    respond(&api, format, &records, "invoices").await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunRequest {
    period: String,
}

#[utoipa::path(post, operation_id = "run_invoices",
    path = "/v1/invoices/run",
    tag = "invoices",
    request_body = RunRequest,
    responses((status = 200, description = "What the run did", body = RunSummary), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn run(
    api: Api,
    JsonBody(req): JsonBody<RunRequest>,
) -> Result<Json<RunSummary>, ApiError> {
    Ok(Json(api.billing.run_invoices(&req.period).await?))
}

#[utoipa::path(post, operation_id = "finalize_period",
    path = "/v1/invoices/finalize",
    tag = "invoices",
    request_body = RunRequest,
    responses((status = 200, description = "Every draft of the period whose period is over, finalized (each queues invoice.finalized); drafts of periods still running are counted and left", body = crate::service::auto_finalize::PeriodFinalized), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn finalize_period(
    api: Api,
    Caller(who): Caller,
    JsonBody(req): JsonBody<RunRequest>,
) -> Result<Json<crate::service::auto_finalize::PeriodFinalized>, ApiError> {
    Ok(Json(
        api.billing
            .finalize_period(&req.period, &who.label())
            .await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvoiceParams {
    /// `json` (default), `csv`, or `pdf` for one invoice.
    pub(crate) format: Option<String>,
}

#[utoipa::path(get, operation_id = "get_invoice",
    path = "/v1/invoices/{id}",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id"), InvoiceParams),
    responses((status = 200, description = "The invoice (JSON, CSV or PDF)", content((InvoiceRecord = "application/json"), (openapi::Csv = "text/csv"), (openapi::Pdf = "application/pdf"))), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn get(
    api: Api,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<InvoiceParams>,
) -> Result<Response, ApiError> {
    let format = Format::parse(q.format.as_deref(), true)?;
    let record = api.billing.invoice(&who, &id).await?;
    let name = record.number.clone().unwrap_or_else(|| record.id.clone());
    respond(&api, format, &[record], &name).await
}

#[utoipa::path(get, operation_id = "get_upcoming_invoice",
    path = "/v1/partners/{id}/invoices/upcoming",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id"), InvoiceParams),
    responses((status = 200, description = "The current period's invoice so far (JSON, or CSV with format=csv)", content((InvoiceRecord = "application/json"), (openapi::Csv = "text/csv"))), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn upcoming_invoice(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    Query(params): Query<InvoiceParams>,
) -> Result<Response, ApiError> {
    let format = Format::parse(params.format.as_deref(), false)?;
    let record = api.billing.upcoming_invoice(&partner).await?;
    respond(&api, format, &[record], &format!("{}-upcoming", partner.id)).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// The plan to price with (the partner's own plan when absent).
    plan: Option<String>,
    /// An accepted catalog version to price with (`GET /v1/catalog/versions`); the catalog in
    /// force when absent.
    catalog: Option<String>,
}

#[utoipa::path(get, operation_id = "preview_invoice",
    path = "/v1/partners/{id}/invoices/preview",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id"), PreviewParams),
    responses((status = 200, description = "What the partner would pay this period under the plan and catalog asked for, beside their upcoming invoice; nothing is stored", body = InvoicePreview), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn preview(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    Query(params): Query<PreviewParams>,
) -> Result<Json<InvoicePreview>, ApiError> {
    let catalog = match params.catalog {
        Some(version) => PreviewCatalog::Accepted(version),
        None => PreviewCatalog::InForce,
    };
    Ok(Json(
        api.billing
            .preview_invoice(&partner, params.plan.as_deref(), catalog)
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadPreviewParams {
    /// The plan of the uploaded catalog to price with (the partner's own plan id when absent).
    plan: Option<String>,
}

#[utoipa::path(post, operation_id = "preview_invoice_with_catalog",
    path = "/v1/partners/{id}/invoices/preview",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id"), UploadPreviewParams),
    request_body(description = "A catalog file (`catalog.toml`) as the body, whatever its content type, validated as a reload would validate it", content = openapi::CatalogFile, content_type = "application/octet-stream"),
    responses((status = 200, description = "What the partner would pay this period under the uploaded catalog, beside their upcoming invoice; nothing is stored", body = InvoicePreview), (status = 400, description = "The catalog is invalid (every problem, with line and field), or has no such plan", body = openapi::ProblemDoc, content_type = "application/problem+json"), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn preview_with_catalog(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    Query(params): Query<UploadPreviewParams>,
    body: axum::body::Bytes,
) -> Result<Json<InvoicePreview>, ApiError> {
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::Malformed("the catalog must be UTF-8 text".into()))?;
    Ok(Json(
        api.billing
            .preview_invoice(
                &partner,
                params.plan.as_deref(),
                PreviewCatalog::Uploaded(text),
            )
            .await?,
    ))
}

#[utoipa::path(post, operation_id = "finalize_invoice",
    path = "/v1/invoices/{id}/finalize",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id")),
    responses((status = 200, description = "The finalized, numbered invoice", body = InvoiceRecord), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn finalize(
    api: Api,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (before, after) = api
        .billing
        .invoicing()
        .finalize(&id, chrono::Utc::now(), &who.label())
        .await?;
    Ok(with_before(Json(after).into_response(), &before))
}

#[utoipa::path(post, operation_id = "void_invoice",
    path = "/v1/invoices/{id}/void",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id")),
    responses((status = 200, description = "The void invoice", body = InvoiceRecord), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn void(
    api: Api,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (before, after) = api
        .billing
        .invoicing()
        .void(&id, chrono::Utc::now(), &who.label())
        .await?;
    Ok(with_before(Json(after).into_response(), &before))
}
