use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{header, HeaderValue, StatusCode};
use peage_billing_store::{Partner, Subscription};
use peage_core::{Env, KeyId, PartnerId};
use utoipa::{IntoParams, ToSchema};

use crate::provisioning;
use peage_usage_store::UsageQuery;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Principal;
use crate::{ApiError, ControlApi};

type Api = State<Arc<ControlApi>>;

/// Parses a JSON body into `T`, answering a problem (not axum's plain text) when it does not fit.
pub(crate) fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn partner_id(raw: &str) -> Result<PartnerId, ApiError> {
    PartnerId::parse(raw).map_err(|_| ApiError::NotFound(format!("partner {raw} not found")))
}

/// The partner `raw` names, if the caller may see it: for a partner session another
/// partner's id is "not found", as an id that does not exist.
pub(crate) async fn scoped_partner(
    api: &ControlApi,
    who: &Principal,
    raw: &str,
) -> Result<Partner, ApiError> {
    who.may_see(raw)?;
    existing_partner(api, raw).await
}

pub(crate) async fn existing_partner(api: &ControlApi, raw: &str) -> Result<Partner, ApiError> {
    let id = partner_id(raw)?;
    api.store
        .partner(id.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("partner {id} not found")))
}

#[utoipa::path(get,
    path = "/v1/plans",
    tag = "catalog",
    responses((status = 200, description = "Plans of the loaded catalog", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn plans(State(api): Api) -> Response {
    Json(json!({ "catalog_version": api.catalog.version, "plans": api.catalog.plans }))
        .into_response()
}

#[utoipa::path(get,
    path = "/v1/apis",
    tag = "catalog",
    responses((status = 200, description = "APIs and versions of the loaded catalog", body = Object), (status = 401, response = crate::openapi::Unauthorized)),
    security(("admin" = []), ("session" = [])))]
pub async fn apis(
    State(api): Api,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    // Partners see what they may call, never the upstream addresses behind it.
    let staff = who.own_partner().is_none();
    let docs = api
        .api_docs
        .read()
        .map_err(|_| ApiError::Internal("api docs lock".into()))?;
    let apis: Vec<serde_json::Value> = api
        .catalog
        .apis
        .iter()
        .map(|a| {
            let versions: Vec<serde_json::Value> = a
                .versions
                .iter()
                .map(|v| {
                    let mut version = json!({
                        "id": v.id,
                        "status": v.status,
                        "deprecated": v.deprecated,
                        "sunset": v.sunset,
                        "successor": v.successor,
                        "protocol": v.protocol,
                        "operations": v.operations.iter().map(|o| &o.name).collect::<Vec<_>>(),
                        "has_openapi": docs.contains_key(&(a.name.clone(), v.id.clone())),
                    });
                    if staff {
                        version["live"] = json!(v.live);
                        version["sandbox"] = json!(v.sandbox);
                    }
                    version
                })
                .collect();
            json!({ "name": a.name, "description": a.description, "versions": versions })
        })
        .collect();
    Ok(Json(json!({ "catalog_version": api.catalog.version, "apis": apis })).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPartner {
    name: String,
    plan: String,
    /// The partner's id in the company's own systems; usage events may name it in `subject`.
    external_id: Option<String>,
}

#[utoipa::path(post,
    path = "/v1/partners",
    tag = "partners",
    request_body = NewPartner,
    responses((status = 201, description = "The partner", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn create_partner(State(api): Api, raw: Bytes) -> Result<Response, ApiError> {
    let req: NewPartner = body(&raw)?;
    let partner = provisioning::create_partner(
        api.store.as_ref(),
        &api.catalog,
        &req.name,
        &req.plan,
        req.external_id.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(partner)).into_response())
}

#[utoipa::path(get,
    path = "/v1/partners",
    tag = "partners",
    responses((status = 200, description = "Every partner", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn list_partners(State(api): Api) -> Result<Response, ApiError> {
    Ok(Json(json!({ "partners": api.store.partners().await? })).into_response())
}

#[utoipa::path(get,
    path = "/v1/partners/{id}",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The partner and its subscription", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn get_partner(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(scoped_partner(&api, &who, &id).await?).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PartnerChange {
    /// The partner's id in the company's own systems, or null to clear it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    external_id: Option<Option<String>>,
}

/// A field that may be present with null (`Some(None)`) or absent (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[utoipa::path(patch,
    path = "/v1/partners/{id}",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    request_body = PartnerChange,
    responses((status = 200, description = "The partner", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound), (status = 409, response = crate::openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn patch_partner(
    State(api): Api,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: PartnerChange = body(&raw)?;
    let mut partner = existing_partner(&api, &id).await?;
    if let Some(ext) = req.external_id {
        if let Some(e) = &ext {
            provisioning::check_external_id(e)?;
        }
        partner = api
            .store
            .set_external_id(&partner.id, ext.as_deref())
            .await?;
    }
    Ok(Json(partner).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanChange {
    plan: String,
}

#[utoipa::path(put,
    path = "/v1/partners/{id}/subscription",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    request_body = PlanChange,
    responses((status = 200, description = "The partner on its new plan", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound), (status = 409, response = crate::openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn change_subscription(
    State(api): Api,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: PlanChange = body(&raw)?;
    let partner = existing_partner(&api, &id).await?;
    let plan_version = provisioning::plan_version(&api.catalog, &req.plan)?;
    if let (Some(from), Some(to)) = (
        api.catalog.plan(&partner.subscription.plan_id),
        api.catalog.plan(&req.plan),
    ) {
        // One invoice per period in one currency: a change mid-period must keep both.
        if from.currency != to.currency || from.period != to.period {
            return Err(ApiError::Conflict(format!(
                "plan {:?} bills in {} every {:?}, plan {:?} in {} every {:?}: a change mid-period must keep the currency and the billing period",
                from.id,
                from.currency.code(),
                from.period,
                to.id,
                to.currency.code(),
                to.period
            )));
        }
    }
    if partner.subscription.plan_id == req.plan && partner.subscription.plan_version == plan_version
    {
        return Ok(Json(partner).into_response());
    }
    let next = Subscription {
        plan_id: req.plan,
        plan_version,
        started_at: Utc::now(),
        ended_at: None,
    };
    let after = api.store.change_subscription(&partner.id, &next).await?;
    tracing::info!(partner_id = %after.id, plan = %after.subscription.plan_id, "subscription changed");
    Ok(crate::audit::with_before(
        Json(after).into_response(),
        &partner,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRequest {
    env: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedKey {
    key_id: String,
    partner_id: String,
    #[schema(value_type = String)]
    env: &'static str,
    /// Shown once, never stored: only its SHA-256 is kept.
    secret: String,
    prefix: String,
    created_at: DateTime<Utc>,
}

#[utoipa::path(post,
    path = "/v1/partners/{id}/keys",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    request_body = KeyRequest,
    responses((status = 201, description = "The key, with its secret shown this once", body = CreatedKey), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn create_key(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: KeyRequest = body(&raw)?;
    let env = match req.env.as_str() {
        "live" => Env::Live,
        "test" | "sandbox" => Env::Sandbox,
        other => {
            return Err(ApiError::BadRequest(format!(
                "env must be \"live\" or \"test\", not {other:?}"
            )))
        }
    };
    let partner = scoped_partner(&api, &who, &id).await?;
    let (stored, secret) = provisioning::issue_key(api.store.as_ref(), &partner.id, env).await?;
    created_key_response(stored, secret, env)
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/keys",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The partner's keys (no secrets)", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn list_keys(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let partner = scoped_partner(&api, &who, &id).await?;
    Ok(Json(json!({ "keys": api.store.keys(&partner.id).await? })).into_response())
}

#[utoipa::path(delete,
    path = "/v1/keys/{key_id}",
    tag = "partners",
    params(("key_id" = String, Path, description = "API key id")),
    responses((status = 200, description = "The revoked key", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn revoke_key(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    let before = owned_key(&api, &who, &key_id).await?;
    let key = api.store.revoke_key(&before.key_id, Utc::now()).await?;
    if let Some(hook) = &api.on_revoke {
        hook();
    }
    tracing::info!(key_id = %key.key_id, "api key revoked");
    Ok(crate::audit::with_before(
        Json(key).into_response(),
        &before,
    ))
}

/// The key `raw` names, if the caller may see its partner (else "not found").
async fn owned_key(
    api: &ControlApi,
    who: &Principal,
    raw: &str,
) -> Result<peage_billing_store::ApiKey, ApiError> {
    let missing = || ApiError::NotFound(format!("api key {raw} not found"));
    let key_id = KeyId::parse(raw).map_err(|_| missing())?;
    let key = api.store.key(key_id.as_str()).await?.ok_or_else(missing)?;
    who.may_see(&key.partner_id).map_err(|_| missing())?;
    Ok(key)
}

/// Issues a new key for the same partner and environment, then revokes the old one: the new
/// secret is shown once. A revoked key cannot be rotated (409).
#[utoipa::path(post,
    path = "/v1/keys/{key_id}/rotate",
    tag = "partners",
    params(("key_id" = String, Path, description = "API key id")),
    responses((status = 201, description = "The new key, with its secret shown this once; the old one is revoked", body = CreatedKey), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound), (status = 409, description = "The key is already revoked", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")),
    security(("admin" = []), ("session" = [])))]
pub async fn rotate_key(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    let old = owned_key(&api, &who, &key_id).await?;
    if old.revoked_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "api key {} is revoked; issue a new one instead",
            old.key_id
        )));
    }
    let env = old.env;
    let (stored, secret) =
        provisioning::issue_key(api.store.as_ref(), &old.partner_id, env).await?;
    api.store.revoke_key(&old.key_id, Utc::now()).await?;
    if let Some(hook) = &api.on_revoke {
        hook();
    }
    tracing::info!(old = %old.key_id, new = %stored.key_id, "api key rotated");
    Ok(crate::audit::with_before(
        created_key_response(stored, secret, env)?,
        &old,
    ))
}

fn created_key_response(
    stored: peage_billing_store::ApiKey,
    secret: String,
    env: Env,
) -> Result<Response, ApiError> {
    let created = CreatedKey {
        key_id: stored.key_id,
        partner_id: stored.partner_id,
        env: if env == Env::Live { "live" } else { "test" },
        secret,
        prefix: stored.prefix,
        created_at: stored.created_at,
    };
    let mut r = (StatusCode::CREATED, Json(created)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// RFC 3339; the start of the current billing period when absent.
    from: Option<String>,
    /// RFC 3339; the end of the current billing period when absent.
    to: Option<String>,
    /// `live` (default) or `sandbox`.
    env: Option<String>,
}

fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| ApiError::BadRequest(format!("{name}={value:?} is not an RFC 3339 time: {e}")))
}

/// `?env=`: live (the default) or sandbox (`test` accepted, as keys name it).
pub(crate) fn env_param(raw: Option<&str>) -> Result<Env, ApiError> {
    match raw {
        None | Some("live") => Ok(Env::Live),
        Some("sandbox") | Some("test") => Ok(Env::Sandbox),
        Some(other) => Err(ApiError::BadRequest(format!(
            "env must be live or sandbox, not {other:?}"
        ))),
    }
}

/// `[from, to)` from the query, defaulting to the partner's current billing period in their
/// time zone (as quotas and invoices count it).
async fn usage_range(
    api: &ControlApi,
    partner: &Partner,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(DateTime<Utc>, DateTime<Utc>, chrono_tz::Tz), ApiError> {
    let now = Utc::now();
    let tz = crate::invoicing::partner_time_zone(api.store.as_ref(), &partner.id).await?;
    let period = api
        .catalog
        .plan(&partner.subscription.plan_id)
        .map(|p| p.period.containing_in(tz, now));
    let from = match from {
        Some(f) => parse_time("from", f)?,
        None => period.map_or(now - chrono::Duration::days(30), |p| p.start),
    };
    let to = match to {
        Some(t) => parse_time("to", t)?,
        None => period.map_or(now, |p| p.end),
    };
    if from >= to {
        return Err(ApiError::BadRequest("from must be before to".into()));
    }
    Ok((from, to, tz))
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/usage",
    tag = "usage",
    params(("id" = String, Path, description = "Partner id"), UsageParams),
    responses((status = 200, description = "Every meter over the range, and the usage event types received in it", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn usage(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(params): Query<UsageParams>,
) -> Result<Response, ApiError> {
    let partner = scoped_partner(&api, &who, &id).await?;
    let (from, to, _) =
        usage_range(&api, &partner, params.from.as_deref(), params.to.as_deref()).await?;
    let env = env_param(params.env.as_deref())?;
    let query = UsageQuery {
        partner_id: partner.id.clone(),
        env,
        from,
        to,
    };
    let meters = api.usage.meter_usage(&query, &api.catalog.meters).await?;
    // The usage event types received (POST /v1/events), whether a meter reads them or not:
    // what finance checks when a meter shows nothing.
    let event_types = api.usage.usage_event_types(&query).await?;
    Ok(Json(json!({ "partner_id": partner.id, "env": env.as_str(), "from": from, "to": to, "meters": meters, "event_types": event_types })).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvoiceParams {
    /// `json` (default), `csv`, or `pdf` for one invoice.
    pub(crate) format: Option<String>,
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/invoices/upcoming",
    tag = "invoices",
    params(("id" = String, Path, description = "Partner id"), InvoiceParams),
    responses((status = 200, description = "The current period's invoice so far", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn upcoming_invoice(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(params): Query<InvoiceParams>,
) -> Result<Response, ApiError> {
    let format = crate::invoice_routes::Format::parse(params.format.as_deref(), false)?;
    let partner = scoped_partner(&api, &who, &id).await?;
    let record = api.invoicing.upcoming(&partner, Utc::now()).await?;
    crate::invoice_routes::respond(&api, format, &[record], &format!("{}-upcoming", partner.id))
        .await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// RFC 3339; the start of the current billing period when absent.
    from: Option<String>,
    /// RFC 3339; the end of the current billing period when absent.
    to: Option<String>,
    /// `live` (default) or `sandbox`.
    env: Option<String>,
    /// `hour` or `day` (default).
    granularity: Option<String>,
    /// `meter` (default), `api`, `version` or `operation`.
    by: Option<String>,
    /// An IANA time zone for the buckets; the partner's own by default.
    tz: Option<String>,
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/usage/series",
    tag = "usage",
    params(("id" = String, Path, description = "Partner id"), SeriesParams),
    responses((status = 200, description = "Usage per hour or day, split by meter, API, version or operation, read from the hourly rollups (meters of usage events: from the raw events, split by meter)", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn usage_series(
    State(api): Api,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(params): Query<SeriesParams>,
) -> Result<Response, ApiError> {
    use peage_core::series::{bucket_end, buckets, usage_series as series, Granularity, SplitBy};

    let partner = scoped_partner(&api, &who, &id).await?;
    let (from, to, partner_tz) =
        usage_range(&api, &partner, params.from.as_deref(), params.to.as_deref()).await?;
    let g = match params.granularity.as_deref() {
        None => Granularity::Day,
        Some(raw) => Granularity::parse(raw).ok_or_else(|| {
            ApiError::BadRequest(format!("granularity must be hour or day, not {raw:?}"))
        })?,
    };
    let by = match params.by.as_deref() {
        None => SplitBy::Meter,
        Some(raw) => SplitBy::parse(raw).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "by must be meter, api, version or operation, not {raw:?}"
            ))
        })?,
    };
    let tz = match params.tz.as_deref() {
        None => partner_tz,
        Some(raw) => peage_core::period::parse_time_zone(raw)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
    };
    let env = env_param(params.env.as_deref())?;
    let cells = buckets(from, to, g, tz).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (Some(first), Some(last)) = (cells.first(), cells.last()) else {
        return Err(ApiError::BadRequest("the range holds no bucket".into()));
    };
    let query = UsageQuery {
        partner_id: partner.id.clone(),
        env,
        from: *first,
        to: bucket_end(*last, g, tz),
    };
    let rows = api.usage.hourly_rollups(&query).await?;
    let meters = &api.catalog.meters;
    let mut out = series(meters, &rows, &cells, g, by, tz);
    // Meters of usage events, from the raw events: per bucket, and their total over the
    // range. Split by meter only: usage events have no API, version or operation.
    if by == SplitBy::Meter && meters.iter().any(|m| m.events.is_some()) {
        let mut edges = cells.clone();
        edges.push(query.to);
        for m in meters.iter().filter(|m| m.events.is_some()) {
            let s = if env == peage_core::Env::Live {
                api.usage.event_meter_series(&partner.id, m, &edges).await?
            } else {
                peage_usage_store::MeterSeries {
                    values: vec![rust_decimal::Decimal::ZERO; cells.len()],
                    total: rust_decimal::Decimal::ZERO,
                }
            };
            out.series.push(peage_core::series::Series {
                meter: m.name.clone(),
                key: String::new(),
                values: s.values,
                total: s.total,
            });
        }
        // In the catalog's order, as the other meters.
        let rank = |name: &str| meters.iter().position(|m| m.name == name);
        out.series.sort_by_key(|s| rank(&s.meter));
    }
    Ok(Json(json!({
        "partner_id": partner.id,
        "env": env.as_str(),
        "from": from,
        "to": to,
        "usage": out,
    }))
    .into_response())
}

#[utoipa::path(get,
    path = "/v1/apis/{api}/versions/{version}/openapi",
    tag = "catalog",
    params(("api" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "The version's OpenAPI document, as JSON", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 404, description = "No such API version, or it has no document", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")),
    security(("admin" = []), ("session" = [])))]
pub async fn api_openapi(
    State(api): Api,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let docs = api
        .api_docs
        .read()
        .map_err(|_| ApiError::Internal("api docs lock".into()))?;
    let doc = docs
        .get(&(name.clone(), version.clone()))
        .ok_or_else(|| ApiError::NotFound(format!("no OpenAPI document for {name} {version}")))?;
    Ok(Json(doc).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OverviewParams {
    /// Keeps partners whose id, name or plan contains this (case-insensitive).
    q: Option<String>,
    /// At most this many partners (1–200, default 50).
    limit: Option<usize>,
    /// Skips this many partners first.
    offset: Option<usize>,
}

#[derive(Serialize)]
struct PartnerOverview {
    id: String,
    name: String,
    plan_id: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    timezone: String,
    currency: String,
    /// The current period's invoice so far, tax included.
    running_total: String,
    usage: Vec<peage_core::MeterUsage>,
    /// Set when this partner's numbers could not be computed (the others still are).
    error: Option<String>,
}

/// Finance's list: every partner (a page of them, searchable) with the current period's usage
/// and running cost.
#[utoipa::path(get,
    path = "/v1/partners/overview",
    tag = "partners",
    params(OverviewParams),
    responses((status = 200, description = "A page of partners with this period's usage and running cost", body = Object), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn partners_overview(
    State(api): Api,
    Query(params): Query<OverviewParams>,
) -> Result<Response, ApiError> {
    let needle = params.q.as_deref().unwrap_or("").trim().to_lowercase();
    let limit = params.limit.unwrap_or(50).clamp(1, 200);
    let offset = params.offset.unwrap_or(0);
    let matching: Vec<Partner> = api
        .store
        .partners()
        .await?
        .into_iter()
        .filter(|p| {
            needle.is_empty()
                || p.id.to_lowercase().contains(&needle)
                || p.name.to_lowercase().contains(&needle)
                || p.subscription.plan_id.to_lowercase().contains(&needle)
        })
        .collect();
    let total = matching.len();
    let now = Utc::now();
    let mut out = Vec::new();
    for p in matching.into_iter().skip(offset).take(limit) {
        let row = match api.invoicing.upcoming(&p, now).await {
            Ok(record) => {
                let inv = &record.invoice;
                let usage = api
                    .usage
                    .meter_usage(
                        &UsageQuery {
                            partner_id: p.id.clone(),
                            env: Env::Live,
                            from: inv.period.start,
                            to: inv.period.end,
                        },
                        &api.catalog.meters,
                    )
                    .await?;
                PartnerOverview {
                    id: p.id,
                    name: p.name,
                    plan_id: p.subscription.plan_id,
                    period_start: inv.period.start,
                    period_end: inv.period.end,
                    timezone: inv.timezone.clone(),
                    currency: inv.currency.code().to_string(),
                    running_total: inv.total.to_string(),
                    usage,
                    error: None,
                }
            }
            Err(e) => PartnerOverview {
                id: p.id,
                name: p.name,
                plan_id: p.subscription.plan_id,
                period_start: now,
                period_end: now,
                timezone: "UTC".into(),
                currency: String::new(),
                running_total: String::new(),
                usage: vec![],
                error: Some(e.to_string()),
            },
        };
        out.push(row);
    }
    Ok(
        Json(json!({ "total": total, "offset": offset, "limit": limit, "partners": out }))
            .into_response(),
    )
}
