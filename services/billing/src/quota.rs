//! Quota decisions (PRODUCT.md §3): `POST /v1/quota/leases` for gateways,
//! `GET /v1/partners/{id}/quotas` for people. Both read the same state: the plan's quota, the
//! period's metered usage and the grants recorded so far.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use peage_billing_store::{Partner, QuotaKey};
use peage_core::period::BillingPeriod;
use peage_core::pricing::{Plan, Quota, QuotaKind};
use peage_core::quota::{Lease, LeaseRequest, QuotaDecision};
use peage_core::{Env, Meter};
use peage_usage_store::UsageQuery;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::routes::{body, existing_partner};
use crate::{ApiError, ControlApi};

/// The largest lease one request may ask for, so a typo cannot take a whole quota at once.
const MAX_WANT: i64 = 1_000_000_000;

struct QuotaContext<'a> {
    plan: &'a Plan,
    quota: &'a Quota,
    meter: &'a Meter,
}

fn context<'a>(
    api: &'a ControlApi,
    partner: &Partner,
    meter: &str,
) -> Result<QuotaContext<'a>, ApiError> {
    let plan_id = &partner.subscription.plan_id;
    let plan = api.catalog.plan(plan_id).ok_or_else(|| {
        ApiError::Conflict(format!(
            "the partner's plan {plan_id:?} is no longer in the catalog"
        ))
    })?;
    let quota = plan
        .quotas
        .iter()
        .find(|q| q.meter == meter)
        .ok_or_else(|| {
            ApiError::NotFound(format!("plan {plan_id:?} has no quota on meter {meter:?}"))
        })?;
    let meter = api.catalog.meter(meter).ok_or_else(|| {
        ApiError::Conflict(format!("meter {meter:?} is no longer in the catalog"))
    })?;
    Ok(QuotaContext { plan, quota, meter })
}

/// Metered usage of one meter for the partner and env in the period. The whole period, not up
/// to now: a period starts and ends on the hour, so stores answer from rollups alone.
async fn used(
    api: &ControlApi,
    partner_id: &str,
    env: Env,
    meter: &Meter,
    period: &BillingPeriod,
) -> Result<Decimal, ApiError> {
    let query = UsageQuery {
        partner_id: partner_id.to_string(),
        env,
        from: period.start,
        to: period.end,
    };
    let usage = api
        .usage
        .meter_usage(&query, std::slice::from_ref(meter))
        .await?;
    Ok(usage.first().map_or(Decimal::ZERO, |u| u.quantity))
}

impl ControlApi {
    /// Grants a lease; what `POST /v1/quota/leases` answers, callable in process by an embedded
    /// gateway.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<Lease, ApiError> {
        if req.gateway_id.trim().is_empty() || req.gateway_id.len() > 200 {
            return Err(ApiError::BadRequest(
                "gateway_id must be 1 to 200 characters".into(),
            ));
        }
        if req.want.is_sign_negative() || req.want > Decimal::from(MAX_WANT) {
            return Err(ApiError::BadRequest(format!(
                "want must be between 0 and {MAX_WANT}, not {}",
                req.want
            )));
        }
        let partner = existing_partner(self, &req.partner_id).await?;
        let ctx = context(self, &partner, &req.meter)?;
        let now = Utc::now();
        let tz = crate::invoicing::partner_time_zone(self.store.as_ref(), &partner.id).await?;
        let period = ctx.plan.period.containing_in(tz, now);
        let used = used(self, &partner.id, req.env, ctx.meter, &period).await?;
        let key = QuotaKey {
            partner_id: partner.id.clone(),
            env: req.env,
            meter: req.meter.clone(),
            period_start: period.start,
        };
        let grant = self
            .store
            .grant_quota(&key, &req.gateway_id, ctx.quota, used, req.want)
            .await?;
        if grant.decision != QuotaDecision::Allow {
            tracing::info!(partner_id = %partner.id, meter = %req.meter, env = req.env.as_str(),
                decision = grant.decision.as_str(), "quota limit reached");
            // Once per partner, env, meter and period: the event key deduplicates.
            let event = format!("quota.{}", grant.decision.as_str());
            let key = format!(
                "{event}:{}:{}:{}:{}",
                partner.id,
                req.env.as_str(),
                req.meter,
                period.start.timestamp()
            );
            // A webhook that cannot be queued must not cost the gateway its lease decision.
            if let Err(e) = crate::webhooks::enqueue(
                self.store.as_ref(),
                &event,
                &key,
                serde_json::json!({
                    "partner_id": partner.id,
                    "env": req.env.as_str(),
                    "meter": req.meter,
                    "limit": ctx.quota.limit.to_string(),
                    "used": used.to_string(),
                    "period_start": period.start,
                    "resets_at": period.end,
                }),
                now,
            )
            .await
            {
                tracing::error!(error = %e, partner_id = %partner.id, "quota webhook not queued");
            }
        }
        Ok(Lease {
            partner_id: partner.id,
            meter: req.meter.clone(),
            env: req.env,
            kind: ctx.quota.kind,
            granted: grant.granted,
            remaining: grant.remaining,
            limit: ctx.quota.limit,
            period_start: period.start,
            resets_at: period.end,
            decision: grant.decision,
        })
    }
}

#[utoipa::path(post,
    path = "/v1/quota/leases",
    tag = "usage",
    request_body = crate::openapi::LeaseRequestDoc,
    responses((status = 200, description = "The lease granted", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn lease(State(api): State<Arc<ControlApi>>, raw: Bytes) -> Result<Response, ApiError> {
    let req: LeaseRequest = body(&raw)?;
    Ok(Json(api.lease(&req).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QuotaParams {
    /// `live` (default) or `sandbox`.
    env: Option<String>,
}

#[derive(Serialize)]
struct QuotaState {
    meter: String,
    kind: QuotaKind,
    #[serde(with = "rust_decimal::serde::str")]
    limit: Decimal,
    /// Metered so far this period.
    #[serde(with = "rust_decimal::serde::str")]
    used: Decimal,
    /// Handed to gateways so far this period (spent or about to be).
    #[serde(with = "rust_decimal::serde::str")]
    granted: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    remaining: Decimal,
    /// `used / limit`, 0 to 1 and beyond for a passed soft quota; 0.8 is the near-limit signal.
    #[serde(with = "rust_decimal::serde::str")]
    utilization: Decimal,
    near_limit: bool,
    decision: QuotaDecision,
    period_start: DateTime<Utc>,
    resets_at: DateTime<Utc>,
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/quotas",
    tag = "usage",
    params(("id" = String, Path, description = "Partner id"), QuotaParams),
    responses((status = 200, description = "Every quota of the partner's plan this period", body = Object), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn partner_quotas(
    State(api): State<Arc<ControlApi>>,
    axum::Extension(who): axum::Extension<crate::auth::Principal>,
    Path(id): Path<String>,
    Query(params): Query<QuotaParams>,
) -> Result<Response, ApiError> {
    let env = crate::routes::env_param(params.env.as_deref())?;
    let partner = crate::routes::scoped_partner(&api, &who, &id).await?;
    let now = Utc::now();
    let tz = crate::invoicing::partner_time_zone(api.store.as_ref(), &partner.id).await?;
    let plan_id = partner.subscription.plan_id.clone();
    let mut out = Vec::new();
    if let Some(plan) = api.catalog.plan(&plan_id) {
        let period = plan.period.containing_in(tz, now);
        let meters = plan
            .quotas
            .iter()
            .map(|q| context(&api, &partner, &q.meter).map(|c| c.meter.clone()))
            .collect::<Result<Vec<Meter>, ApiError>>()?;
        // Every quota's usage in one query.
        let query = UsageQuery {
            partner_id: partner.id.clone(),
            env,
            from: period.start,
            to: period.end,
        };
        let usage = api.usage.meter_usage(&query, &meters).await?;
        for (q, u) in plan.quotas.iter().zip(&usage) {
            let used = u.quantity;
            let key = QuotaKey {
                partner_id: partner.id.clone(),
                env,
                meter: q.meter.clone(),
                period_start: period.start,
            };
            let mut ledger = api.store.quota_ledger(&key).await?;
            ledger.used = used;
            let consumed = ledger.consumed();
            let remaining = (q.limit - consumed).max(Decimal::ZERO);
            let utilization = (used / q.limit).round_dp(4);
            let decision = match (q.kind, consumed >= q.limit) {
                (_, false) => QuotaDecision::Allow,
                (QuotaKind::Hard, true) => QuotaDecision::HardBlocked,
                (QuotaKind::Soft, true) => QuotaDecision::SoftExceeded,
            };
            out.push(QuotaState {
                meter: q.meter.clone(),
                kind: q.kind,
                limit: q.limit,
                used,
                granted: ledger.granted,
                remaining,
                utilization,
                near_limit: utilization >= Decimal::new(8, 1),
                decision,
                period_start: period.start,
                resets_at: period.end,
            });
        }
    }
    Ok(Json(serde_json::json!({
        "partner_id": partner.id,
        "env": env.as_str(),
        "plan": plan_id,
        "quotas": out,
    }))
    .into_response())
}
