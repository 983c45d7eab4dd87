//! Quota decisions (PRODUCT.md §3): `POST /v1/quota/leases` for gateways,
//! `GET /v1/partners/{id}/quotas` for people. Both read the same state: the plan's quota, the
//! period's metered usage and the grants recorded so far.

use chrono::{DateTime, Utc};
use peage_billing_store::{Partner, QuotaKey};
use peage_core::period::BillingPeriod;
use peage_core::pricing::{Plan, Quota, QuotaKind};
use peage_core::quota::{Lease, LeaseRequest, QuotaDecision};
use peage_core::{Catalog, Env, Meter, PartnerId};
use peage_telemetry::LeaseOutcome;
use peage_usage_store::UsageQuery;
use rust_decimal::Decimal;
use serde::Serialize;

use super::billing::Billing;
use super::error::ServiceError;
use super::invoicing::partner_time_zone;
use super::webhooks;

/// The largest lease one request may ask for, so a typo cannot take a whole quota at once.
const MAX_WANT: i64 = 1_000_000_000;

struct QuotaContext<'a> {
    plan: &'a Plan,
    quota: &'a Quota,
    meter: &'a Meter,
}

fn context<'a>(
    catalog: &'a Catalog,
    partner: &Partner,
    meter: &str,
) -> Result<QuotaContext<'a>, ServiceError> {
    let plan_id = &partner.subscription.plan_id;
    let plan = catalog.plan(plan_id).ok_or_else(|| {
        ServiceError::CatalogDrift(format!(
            "the partner's plan {plan_id:?} is no longer in the catalog"
        ))
    })?;
    let quota = plan
        .quotas
        .iter()
        .find(|q| q.meter == meter)
        .ok_or_else(|| {
            ServiceError::NotFound(format!("plan {plan_id:?} has no quota on meter {meter:?}"))
        })?;
    let meter = catalog.meter(meter).ok_or_else(|| {
        ServiceError::CatalogDrift(format!("meter {meter:?} is no longer in the catalog"))
    })?;
    Ok(QuotaContext { plan, quota, meter })
}

/// Metered usage of one meter for the partner and env in the period. The whole period, not up
/// to now: a period starts and ends on the hour, so stores answer from rollups alone.
async fn used(
    api: &Billing,
    partner_id: &str,
    env: Env,
    meter: &Meter,
    period: &BillingPeriod,
) -> Result<Decimal, ServiceError> {
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

impl Billing {
    /// Grants a lease: what `POST /v1/quota/leases` answers, and what an embedded gateway asks
    /// in process.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<Lease, ServiceError> {
        let result = self.decide_lease(req).await;
        let (outcome, detail) = match &result {
            Ok(lease) => (LeaseOutcome::Granted, lease.granted.to_string()),
            Err(e) if e.is_refusal() => (LeaseOutcome::Refused, e.to_string()),
            Err(e) => (LeaseOutcome::Failed, e.to_string()),
        };
        peage_telemetry::emit!(peage_telemetry::QuotaLeaseDecided {
            partner_id: &req.partner_id,
            meter: &req.meter,
            gateway_id: &req.gateway_id,
            outcome,
            detail: &detail,
        });
        result
    }

    async fn decide_lease(&self, req: &LeaseRequest) -> Result<Lease, ServiceError> {
        if req.gateway_id.trim().is_empty() || req.gateway_id.len() > 200 {
            return Err(ServiceError::Invalid(
                "gateway_id must be 1 to 200 characters".into(),
            ));
        }
        if req.want.is_sign_negative() || req.want > Decimal::from(MAX_WANT) {
            return Err(ServiceError::Invalid(format!(
                "want must be between 0 and {MAX_WANT}, not {}",
                req.want
            )));
        }
        let partner = self.partner(&req.partner_id).await?;
        let catalog = self.catalog();
        let ctx = context(&catalog, &partner, &req.meter)?;
        let now = Utc::now();
        let tz = partner_time_zone(self.store.as_ref(), &partner.id).await?;
        let period = ctx.plan.period.containing_in(tz, now);
        let used = used(self, partner.id.as_str(), req.env, ctx.meter, &period).await?;
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
        let signal = QuotaSignal {
            partner: &partner,
            req,
            quota: ctx.quota,
            used,
            period: &period,
            now,
        };
        if grant.decision != QuotaDecision::Allow {
            tracing::info!(partner_id = %partner.id, meter = %req.meter, env = req.env.as_str(),
                decision = grant.decision.as_str(), "quota limit reached");
            signal
                .send(self, &format!("quota.{}", grant.decision.as_str()))
                .await;
        }
        // Metered usage, not grants (which run ahead of it), tells when a partner is near.
        if used >= ctx.quota.near_threshold() {
            signal.send(self, "quota.near_limit").await;
        }
        Ok(Lease {
            partner_id: partner.id.to_string(),
            meter: req.meter.clone(),
            env: req.env,
            kind: ctx.quota.kind,
            shadow: ctx.quota.shadow,
            granted: grant.granted,
            remaining: grant.remaining,
            limit: ctx.quota.limit,
            period_start: period.start,
            resets_at: period.end,
            decision: grant.decision,
        })
    }
}

/// A quota webhook about to be queued: `quota.hard_blocked`, `quota.soft_exceeded`,
/// `quota.shadow_exceeded` or `quota.near_limit`.
struct QuotaSignal<'a> {
    partner: &'a Partner,
    req: &'a LeaseRequest,
    quota: &'a Quota,
    used: Decimal,
    period: &'a BillingPeriod,
    now: DateTime<Utc>,
}

impl QuotaSignal<'_> {
    /// Queues `event` once per partner, env, meter and period (the event key deduplicates).
    /// A webhook that cannot be queued must not cost the gateway its lease decision: logged.
    async fn send(&self, billing: &Billing, event: &str) {
        let (partner, req, quota) = (self.partner, self.req, self.quota);
        let key = format!(
            "{event}:{}:{}:{}:{}",
            partner.id,
            req.env.as_str(),
            req.meter,
            self.period.start.timestamp()
        );
        let payload = serde_json::json!({
            "partner_id": partner.id,
            "env": req.env.as_str(),
            "meter": req.meter,
            "kind": quota.kind,
            "shadow": quota.shadow,
            "limit": quota.limit.to_string(),
            "near_limit": quota.near_fraction().to_string(),
            "used": self.used.to_string(),
            "period_start": self.period.start,
            "resets_at": self.period.end,
        });
        if let Err(e) =
            webhooks::enqueue(billing.store.as_ref(), event, &key, payload, self.now).await
        {
            tracing::error!(error = %e, partner_id = %partner.id, event, "quota webhook not queued");
        }
    }
}

/// One quota of the partner's plan this period.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuotaState {
    pub meter: String,
    pub kind: QuotaKind,
    /// Shadow mode: counted and flagged, never enforced.
    pub shadow: bool,
    #[serde(with = "rust_decimal::serde::str")]
    pub limit: Decimal,
    /// Metered so far this period.
    #[serde(with = "rust_decimal::serde::str")]
    pub used: Decimal,
    /// Handed to gateways so far this period (spent or about to be).
    #[serde(with = "rust_decimal::serde::str")]
    pub granted: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub remaining: Decimal,
    /// `used / limit`, 0 to 1 and beyond for a passed soft or shadow quota.
    #[serde(with = "rust_decimal::serde::str")]
    pub utilization: Decimal,
    /// `utilization` has reached `near_limit_at`.
    pub near_limit: bool,
    /// The quota's near-limit fraction (the catalog's `near_limit`, default 0.8).
    #[serde(with = "rust_decimal::serde::str")]
    pub near_limit_at: Decimal,
    pub decision: QuotaDecision,
    pub period_start: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
}

/// Every quota of the partner's plan this period.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuotaReport {
    pub partner_id: PartnerId,
    pub env: Env,
    /// The partner's plan.
    pub plan: String,
    pub quotas: Vec<QuotaState>,
}

impl Billing {
    /// Every quota of the partner's plan in the current period: metered usage, what gateways
    /// were granted, and the decision a lease would get now.
    pub async fn quotas(&self, partner: &Partner, env: Env) -> Result<QuotaReport, ServiceError> {
        let now = Utc::now();
        let tz = partner_time_zone(self.store.as_ref(), &partner.id).await?;
        let plan_id = partner.subscription.plan_id.clone();
        let mut out = Vec::new();
        let catalog = self.catalog();
        if let Some(plan) = catalog.plan(&plan_id) {
            let period = plan.period.containing_in(tz, now);
            let meters = plan
                .quotas
                .iter()
                .map(|q| context(&catalog, partner, &q.meter).map(|c| c.meter.clone()))
                .collect::<Result<Vec<Meter>, ServiceError>>()?;
            // Every quota's usage in one query.
            let query = UsageQuery {
                partner_id: partner.id.to_string(),
                env,
                from: period.start,
                to: period.end,
            };
            let usage = self.usage.meter_usage(&query, &meters).await?;
            for (q, u) in plan.quotas.iter().zip(&usage) {
                let used = u.quantity;
                let key = QuotaKey {
                    partner_id: partner.id.clone(),
                    env,
                    meter: q.meter.clone(),
                    period_start: period.start,
                };
                let mut ledger = self.store.quota_ledger(&key).await?;
                ledger.used = used;
                let consumed = ledger.consumed();
                let remaining = (q.limit - consumed).max(Decimal::ZERO);
                let utilization = (used / q.limit).round_dp(4);
                let decision = match (q.kind, consumed >= q.limit) {
                    (_, false) => QuotaDecision::Allow,
                    _ if q.shadow => QuotaDecision::ShadowExceeded,
                    (QuotaKind::Hard, true) => QuotaDecision::HardBlocked,
                    (QuotaKind::Soft, true) => QuotaDecision::SoftExceeded,
                };
                out.push(QuotaState {
                    meter: q.meter.clone(),
                    kind: q.kind,
                    shadow: q.shadow,
                    limit: q.limit,
                    used,
                    granted: ledger.granted,
                    remaining,
                    utilization,
                    near_limit: used >= q.near_threshold(),
                    near_limit_at: q.near_fraction(),
                    decision,
                    period_start: period.start,
                    resets_at: period.end,
                });
            }
        }
        Ok(QuotaReport {
            partner_id: partner.id.clone(),
            env,
            plan: plan_id,
            quotas: out,
        })
    }
}
