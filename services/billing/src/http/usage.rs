//! A partner's usage: `/v1/partners/{id}/usage` and `/v1/partners/{id}/usage/series`.

use axum::extract::Query;
use axum::Json;
use chrono::{DateTime, Utc};
use peage_core::series::{Granularity, SplitBy};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::extract::{Api, ScopedPartner};
use super::openapi;
use crate::service::{values, SeriesCut, SeriesReport, UsageReport};

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

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::Malformed(format!("{name}={v:?} is not an RFC 3339 time: {e}"))
                })
        })
        .transpose()
}

#[utoipa::path(get, operation_id = "get_usage",
    path = "/v1/partners/{id}/usage",
    tag = "usage",
    params(("id" = String, Path, description = "Partner id"), UsageParams),
    responses((status = 200, description = "Every meter over the range, and the usage event types received in it", body = UsageReport), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn usage(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    Query(params): Query<UsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let from = parse_time("from", params.from.as_deref())?;
    let to = parse_time("to", params.to.as_deref())?;
    let env = values::env(params.env.as_deref())?;
    Ok(Json(
        api.billing.usage_report(&partner, env, from, to).await?,
    ))
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

#[utoipa::path(get, operation_id = "get_usage_series",
    path = "/v1/partners/{id}/usage/series",
    tag = "usage",
    params(("id" = String, Path, description = "Partner id"), SeriesParams),
    responses((status = 200, description = "Usage per hour or day, split by meter, API, version or operation, read from the hourly rollups (meters of usage events: from the raw events, split by meter)", body = SeriesReport), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn usage_series(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
    Query(params): Query<SeriesParams>,
) -> Result<Json<SeriesReport>, ApiError> {
    let from = parse_time("from", params.from.as_deref())?;
    let to = parse_time("to", params.to.as_deref())?;
    let granularity = match params.granularity.as_deref() {
        None => Granularity::Day,
        Some(raw) => Granularity::parse(raw).ok_or_else(|| {
            ApiError::Malformed(format!("granularity must be hour or day, not {raw:?}"))
        })?,
    };
    let by = match params.by.as_deref() {
        None => SplitBy::Meter,
        Some(raw) => SplitBy::parse(raw).ok_or_else(|| {
            ApiError::Malformed(format!(
                "by must be meter, api, version or operation, not {raw:?}"
            ))
        })?,
    };
    let tz = params
        .tz
        .as_deref()
        .map(peage_core::period::parse_time_zone)
        .transpose()
        .map_err(|e| ApiError::Malformed(e.to_string()))?;
    let env = values::env(params.env.as_deref())?;
    let cut = SeriesCut {
        granularity,
        by,
        tz,
    };
    Ok(Json(
        api.billing
            .usage_series(&partner, env, from, to, cut)
            .await?,
    ))
}
