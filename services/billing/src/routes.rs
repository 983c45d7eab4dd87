use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{header, HeaderValue, StatusCode};
use peage_billing_store::{Partner, Subscription};
use peage_core::{Env, KeyId, PartnerId};

use crate::provisioning;
use peage_usage_store::UsageQuery;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

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

pub(crate) async fn existing_partner(api: &ControlApi, raw: &str) -> Result<Partner, ApiError> {
    let id = partner_id(raw)?;
    api.store
        .partner(id.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("partner {id} not found")))
}

pub async fn plans(State(api): Api) -> Response {
    Json(json!({ "catalog_version": api.catalog.version, "plans": api.catalog.plans }))
        .into_response()
}

pub async fn apis(State(api): Api) -> Response {
    Json(json!({ "catalog_version": api.catalog.version, "apis": api.catalog.apis }))
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPartner {
    name: String,
    plan: String,
}

pub async fn create_partner(State(api): Api, raw: Bytes) -> Result<Response, ApiError> {
    let req: NewPartner = body(&raw)?;
    let partner =
        provisioning::create_partner(api.store.as_ref(), &api.catalog, &req.name, &req.plan)
            .await?;
    Ok((StatusCode::CREATED, Json(partner)).into_response())
}

pub async fn list_partners(State(api): Api) -> Result<Response, ApiError> {
    Ok(Json(json!({ "partners": api.store.partners().await? })).into_response())
}

pub async fn get_partner(State(api): Api, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(existing_partner(&api, &id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanChange {
    plan: String,
}

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
    let partner = api.store.change_subscription(&partner.id, &next).await?;
    tracing::info!(partner_id = %partner.id, plan = %partner.subscription.plan_id, "subscription changed");
    Ok(Json(partner).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    env: String,
}

#[derive(Serialize)]
struct CreatedKey {
    key_id: String,
    partner_id: String,
    env: &'static str,
    /// Shown once, never stored: only its SHA-256 is kept.
    secret: String,
    prefix: String,
    created_at: DateTime<Utc>,
}

pub async fn create_key(
    State(api): Api,
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
    let partner = existing_partner(&api, &id).await?;
    let (stored, secret) = provisioning::issue_key(api.store.as_ref(), &partner.id, env).await?;
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

pub async fn list_keys(State(api): Api, Path(id): Path<String>) -> Result<Response, ApiError> {
    let partner = existing_partner(&api, &id).await?;
    Ok(Json(json!({ "keys": api.store.keys(&partner.id).await? })).into_response())
}

pub async fn revoke_key(State(api): Api, Path(key_id): Path<String>) -> Result<Response, ApiError> {
    let key_id = KeyId::parse(&key_id)
        .map_err(|_| ApiError::NotFound(format!("api key {key_id} not found")))?;
    let key = api.store.revoke_key(key_id.as_str(), Utc::now()).await?;
    if let Some(hook) = &api.on_revoke {
        hook();
    }
    tracing::info!(key_id = %key.key_id, "api key revoked");
    Ok(Json(key).into_response())
}

#[derive(Deserialize)]
pub struct UsageParams {
    from: Option<String>,
    to: Option<String>,
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

pub async fn usage(
    State(api): Api,
    Path(id): Path<String>,
    Query(params): Query<UsageParams>,
) -> Result<Response, ApiError> {
    let partner = existing_partner(&api, &id).await?;
    let now = Utc::now();
    // The same period as quotas and invoices: boundaries in the partner's time zone.
    let tz = crate::invoicing::partner_time_zone(api.store.as_ref(), &partner.id).await?;
    let period = api
        .catalog
        .plan(&partner.subscription.plan_id)
        .map(|p| p.period.containing_in(tz, now));
    let from = match &params.from {
        Some(f) => parse_time("from", f)?,
        None => period.map_or(now - chrono::Duration::days(30), |p| p.start),
    };
    let to = match &params.to {
        Some(t) => parse_time("to", t)?,
        None => period.map_or(now, |p| p.end),
    };
    if from >= to {
        return Err(ApiError::BadRequest("from must be before to".into()));
    }
    let env = env_param(params.env.as_deref())?;
    let query = UsageQuery {
        partner_id: partner.id.clone(),
        env,
        from,
        to,
    };
    let meters = api.usage.meter_usage(&query, &api.catalog.meters).await?;
    Ok(Json(json!({ "partner_id": partner.id, "env": env.as_str(), "from": from, "to": to, "meters": meters })).into_response())
}

#[derive(Deserialize)]
pub struct InvoiceParams {
    pub(crate) format: Option<String>,
}

pub async fn upcoming_invoice(
    State(api): Api,
    Path(id): Path<String>,
    Query(params): Query<InvoiceParams>,
) -> Result<Response, ApiError> {
    let format = crate::invoice_routes::Format::parse(params.format.as_deref(), false)?;
    let partner = existing_partner(&api, &id).await?;
    let record = api.invoicing.upcoming(&partner, Utc::now()).await?;
    crate::invoice_routes::respond(&api, format, &[record], &format!("{}-upcoming", partner.id))
        .await
}
