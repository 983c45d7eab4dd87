//! Credit notes: `/v1/invoices/{id}/credit-notes` and `/v1/credit-notes/{id}` (JSON, CSV, PDF).

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::extract::{Api, Caller, JsonBody};
use super::openapi;
use super::respond::{attachment, created, json_or_csv};
use crate::service::{credit_notes_csv, CreditNoteList};
use peage_billing_store::CreditNoteRecord;
use peage_core::credit_note::CreditNoteRequest;

#[utoipa::path(post,
    path = "/v1/invoices/{id}/credit-notes",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id")),
    request_body = CreditNoteRequest,
    responses((status = 201, description = "The credit note, numbered in its own series; `credit` adds its total to the partner's balance; `credit_note.created` is queued", body = CreditNoteRecord), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn create(
    api: Api,
    Caller(who): Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CreditNoteRequest>,
) -> Result<Response, ApiError> {
    Ok(created(
        api.billing
            .create_credit_note(&id, &req, &who.label())
            .await?,
    ))
}

#[utoipa::path(get, operation_id = "list_credit_notes",
    path = "/v1/invoices/{id}/credit-notes",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id"), ListFormat),
    responses((status = 200, description = "The invoice's credit notes, oldest first, and what is left due (JSON), or their lines (CSV with format=csv)", content((CreditNoteList = "application/json"), (openapi::Csv = "text/csv"))), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn list(
    api: Api,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<ListFormat>,
) -> Result<Response, ApiError> {
    let notes = api.billing.credit_notes(&who, &id).await?;
    json_or_csv(
        q.format.as_deref(),
        &notes,
        || credit_notes_csv(&notes.credit_notes),
        &format!("credit-notes-{id}.csv"),
    )
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFormat {
    /// `json` (the default) or `csv`.
    pub(super) format: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NoteParams {
    /// `json` (the default), `csv` or `pdf`.
    format: Option<String>,
}

#[utoipa::path(get, operation_id = "get_credit_note",
    path = "/v1/credit-notes/{id}",
    tag = "invoices",
    params(("id" = String, Path, description = "Credit note id (cn_…)"), NoteParams),
    responses((status = 200, description = "The credit note (JSON, CSV with format=csv, PDF with format=pdf)", content((CreditNoteRecord = "application/json"), (openapi::Csv = "text/csv"), (openapi::Pdf = "application/pdf"))), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn get(
    api: Api,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<NoteParams>,
) -> Result<Response, ApiError> {
    let note = api.billing.credit_note(&who, &id).await?;
    let name = note.number.clone();
    Ok(match q.format.as_deref() {
        None | Some("json") => Json(note).into_response(),
        Some("csv") => attachment(
            credit_notes_csv([&note]).into_response(),
            "text/csv; charset=utf-8",
            &format!("{name}.csv"),
        ),
        Some("pdf") => {
            let partner = api.billing.partner_name(&note.note.partner_id).await?;
            let pdf = crate::service::pdf::render_credit_note(&note, &partner, &api.billing.issuer);
            attachment(
                pdf.into_response(),
                "application/pdf",
                &format!("{name}.pdf"),
            )
        }
        Some(other) => {
            return Err(ApiError::Malformed(format!(
                "format must be json, csv or pdf, not {other:?}"
            )))
        }
    })
}
