//! Finance routes: invoice runs, the invoice list and its exports (JSON, CSV, PDF), finalize and
//! void; partner billing profiles and prepaid credits; webhook endpoints and their delivery log.

use std::sync::Arc;

use crate::auth::Principal;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderValue, StatusCode};
use peage_billing_store::{BillingProfile, CreditEntry, InvoiceFilter, WebhookEndpoint};
use peage_core::period::{parse_time_zone, PeriodLabel};
use peage_core::pricing::TaxRate;
use peage_core::{CreditId, Currency, InvoiceRecord, InvoiceStatus, WebhookEndpointId};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::audit;
use crate::routes::{body, existing_partner};
use crate::{ApiError, ControlApi};

type Api = State<Arc<ControlApi>>;

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
            Some(other) => Err(ApiError::BadRequest(format!(
                "format must be json, csv{}, not {other:?}",
                if pdf_allowed { " or pdf" } else { "" }
            ))),
        }
    }
}

fn attachment(mut r: Response, content_type: &'static str, name: &str) -> Response {
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// Answers invoices in `format`; PDF only for exactly one invoice.
pub async fn respond(
    api: &ControlApi,
    format: Format,
    records: &[InvoiceRecord],
    name: &str,
) -> Result<Response, ApiError> {
    Ok(match format {
        Format::Json if records.len() == 1 && name != "invoices" => {
            Json(&records[0]).into_response()
        }
        Format::Json => Json(json!({ "invoices": records })).into_response(),
        Format::Csv => attachment(
            InvoiceRecord::to_csv(records).into_response(),
            "text/csv; charset=utf-8",
            &format!("{name}.csv"),
        ),
        Format::Pdf => {
            let record = records
                .first()
                .ok_or_else(|| ApiError::NotFound("no invoice".into()))?;
            let partner = api
                .store
                .partner(&record.partner_id)
                .await?
                .map(|p| p.name)
                .unwrap_or_default();
            let pdf = crate::pdf::render(record, &partner, &api.invoicing.issuer);
            attachment(
                pdf.into_response(),
                "application/pdf",
                &format!("{name}.pdf"),
            )
        }
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    period: Option<String>,
    status: Option<String>,
    partner_id: Option<String>,
    format: Option<String>,
}

#[utoipa::path(get,
    path = "/v1/invoices",
    tag = "invoices",
    params(ListParams),
    responses((status = 200, description = "Invoices (JSON, or CSV with format=csv)", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn list(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Query(q): Query<ListParams>,
) -> Result<Response, ApiError> {
    // A partner session lists its own invoices only; asking for another's is "not found".
    if let Some(p) = &q.partner_id {
        who.may_see(p)?;
    }
    let partner_id = q
        .partner_id
        .clone()
        .or_else(|| who.own_partner().map(String::from));
    let format = Format::parse(q.format.as_deref(), false)?;
    let period_label = q
        .period
        .as_deref()
        .map(|p| p.parse::<PeriodLabel>().map(|l| l.to_string()))
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            InvoiceStatus::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "status must be draft, finalized or void, not {s:?}"
                ))
            })
        })
        .transpose()?;
    let mut records = api
        .store
        .invoices(&InvoiceFilter {
            period_label,
            status,
            partner_id,
        })
        .await?;
    records.retain(|r| who.may_see_invoice(r));
    hide_staff(&who, &mut records);
    respond(&api, format, &records, "invoices").await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunRequest {
    period: String,
}

#[utoipa::path(post,
    path = "/v1/invoices/run",
    tag = "invoices",
    request_body = RunRequest,
    responses((status = 200, description = "What the run did", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn run(State(api): Api, raw: Bytes) -> Result<Response, ApiError> {
    let req: RunRequest = body(&raw)?;
    let label: PeriodLabel = req
        .period
        .parse()
        .map_err(|e: peage_core::period::BadPeriodLabel| ApiError::BadRequest(e.to_string()))?;
    let summary = api.invoicing.run(label, Utc::now(), &|_, _| {}).await?;
    Ok(Json(summary).into_response())
}

async fn existing_invoice(api: &ControlApi, id: &str) -> Result<InvoiceRecord, ApiError> {
    api.store
        .invoice(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("invoice {id} not found")))
}

#[utoipa::path(get,
    path = "/v1/invoices/{id}",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id"), crate::routes::InvoiceParams),
    responses((status = 200, description = "The invoice (JSON, CSV or PDF)", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn get(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<crate::routes::InvoiceParams>,
) -> Result<Response, ApiError> {
    let format = Format::parse(q.format.as_deref(), true)?;
    let record = existing_invoice(&api, &id).await?;
    if !who.may_see_invoice(&record) {
        return Err(ApiError::NotFound(format!("invoice {id} not found")));
    }
    let name = record.number.clone().unwrap_or_else(|| record.id.clone());
    let mut records = [record];
    hide_staff(&who, &mut records);
    respond(&api, format, &records, &name).await
}

/// Who finalized or voided an invoice is the company's business, not its partner's.
fn hide_staff(who: &Principal, records: &mut [InvoiceRecord]) {
    if who.own_partner().is_some() {
        for r in records {
            r.finalized_by = None;
            r.voided_by = None;
        }
    }
}

#[utoipa::path(post,
    path = "/v1/invoices/{id}/finalize",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id")),
    responses((status = 200, description = "The finalized, numbered invoice", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound), (status = 409, response = crate::openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn finalize(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (before, after) = api
        .invoicing
        .finalize(&id, Utc::now(), &who.label())
        .await?;
    Ok(audit::with_before(Json(after).into_response(), &before))
}

#[utoipa::path(post,
    path = "/v1/invoices/{id}/void",
    tag = "invoices",
    params(("id" = String, Path, description = "Invoice id")),
    responses((status = 200, description = "The void invoice", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound), (status = 409, response = crate::openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn void(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (before, after) = api.invoicing.void(&id, Utc::now(), &who.label()).await?;
    Ok(audit::with_before(Json(after).into_response(), &before))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileRequest {
    timezone: String,
    #[serde(default)]
    tax: Option<TaxRequest>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaxRequest {
    /// A fraction: "0.20" for 20 %.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    rate: Decimal,
    label: String,
}

#[utoipa::path(put,
    path = "/v1/partners/{id}/billing",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    request_body = ProfileRequest,
    responses((status = 200, description = "The billing profile", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn put_profile(
    State(api): Api,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: ProfileRequest = body(&raw)?;
    let partner = existing_partner(&api, &id).await?;
    parse_time_zone(&req.timezone).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(t) = &req.tax {
        if t.rate < Decimal::ZERO || t.rate >= Decimal::ONE {
            return Err(ApiError::BadRequest(format!(
                "tax.rate must be a fraction from 0 to below 1 (0.20 for 20 %), not {}",
                t.rate
            )));
        }
        if t.label.trim().is_empty() {
            return Err(ApiError::BadRequest("tax.label must not be empty".into()));
        }
    }
    let profile = BillingProfile {
        partner_id: partner.id,
        timezone: req.timezone,
        tax: req.tax.map(|t| TaxRate {
            rate: t.rate,
            label: t.label,
        }),
        updated_at: Utc::now(),
    };
    let before = api.store.billing_profile(&profile.partner_id).await?;
    api.store.put_billing_profile(&profile).await?;
    Ok(audit::with_before(Json(profile).into_response(), &before))
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/billing",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The billing profile", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn get_profile(State(api): Api, Path(id): Path<String>) -> Result<Response, ApiError> {
    let partner = existing_partner(&api, &id).await?;
    let profile = api.store.billing_profile(&partner.id).await?;
    Ok(Json(profile.unwrap_or(BillingProfile {
        partner_id: partner.id,
        timezone: "UTC".into(),
        tax: None,
        updated_at: partner.created_at,
    }))
    .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreditRequest {
    /// A positive decimal string, at most 1000000000000000 and the currency's decimals.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    amount: Decimal,
    currency: String,
    description: String,
}

#[utoipa::path(post,
    path = "/v1/partners/{id}/credits",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    request_body = CreditRequest,
    responses((status = 201, description = "The credit entry", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn add_credit(
    State(api): Api,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: CreditRequest = body(&raw)?;
    let partner = existing_partner(&api, &id).await?;
    let currency = Currency::parse(&req.currency)
        .ok_or_else(|| ApiError::BadRequest(format!("unknown currency {:?}", req.currency)))?;
    if req.amount <= Decimal::ZERO
        || req.amount > peage_core::money::MAX_AMOUNT
        || req.amount.normalize().scale() > currency.minor_units()
    {
        return Err(ApiError::BadRequest(format!(
            "amount must be positive, at most {} and with at most {} decimals for {}",
            peage_core::money::MAX_AMOUNT,
            currency.minor_units(),
            currency.code()
        )));
    }
    let entry = CreditEntry {
        id: CreditId::from_random(rand::random()).to_string(),
        partner_id: partner.id.clone(),
        currency: currency.code().to_string(),
        amount: currency.round(req.amount),
        description: req.description,
        invoice_id: None,
        created_at: Utc::now(),
    };
    api.store.add_credit(&entry).await?;
    Ok((StatusCode::CREATED, Json(entry)).into_response())
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/credits",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "Balances and entries", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn credits(State(api): Api, Path(id): Path<String>) -> Result<Response, ApiError> {
    let partner = existing_partner(&api, &id).await?;
    let entries = api.store.credit_entries(&partner.id).await?;
    let balances = crate::invoicing::credit_balances(entries.iter())?;
    let balances: std::collections::BTreeMap<String, String> = balances
        .into_iter()
        .map(|(c, b)| (c, b.to_string()))
        .collect();
    Ok(
        Json(json!({ "partner_id": partner.id, "balances": balances, "entries": entries }))
            .into_response(),
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointRequest {
    url: String,
    events: Vec<String>,
}

#[utoipa::path(post,
    path = "/v1/webhooks",
    tag = "webhooks",
    request_body = EndpointRequest,
    responses((status = 201, description = "The endpoint, with its secret shown this once", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn add_webhook(State(api): Api, raw: Bytes) -> Result<Response, ApiError> {
    let req: EndpointRequest = body(&raw)?;
    api.check_outbound_url("url", &req.url).await?;
    if req.events.is_empty() {
        return Err(ApiError::BadRequest(
            "events must name at least one event type".into(),
        ));
    }
    for e in &req.events {
        if e != "*" && !crate::webhooks::EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown event type {e:?}; known: {}",
                crate::webhooks::EVENT_TYPES.join(", ")
            )));
        }
    }
    let id = WebhookEndpointId::from_random(rand::random()).to_string();
    let secret = crate::webhooks::new_secret();
    let ep = WebhookEndpoint {
        secret: api.secrets.seal(&crate::secrets::webhook_row(&id), &secret),
        id,
        url: req.url,
        events: req.events,
        created_at: Utc::now(),
        disabled_at: None,
    };
    api.store.add_webhook_endpoint(&ep).await?;
    let mut r = (
        StatusCode::CREATED,
        Json(json!({ "id": ep.id, "url": ep.url, "events": ep.events, "secret": secret, "created_at": ep.created_at })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[utoipa::path(get,
    path = "/v1/webhooks",
    tag = "webhooks",
    responses((status = 200, description = "Webhook endpoints", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn webhooks(State(api): Api) -> Result<Response, ApiError> {
    Ok(Json(json!({ "endpoints": api.store.webhook_endpoints().await? })).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    limit: Option<i64>,
}

#[utoipa::path(get,
    path = "/v1/webhooks/deliveries",
    tag = "webhooks",
    params(DeliveryParams),
    responses((status = 200, description = "The latest deliveries", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn deliveries(
    State(api): Api,
    Query(q): Query<DeliveryParams>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(json!({ "deliveries": api.store.webhook_deliveries(limit).await? })).into_response())
}
