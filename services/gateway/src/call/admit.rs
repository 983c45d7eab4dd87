//! Stage 3, admit: may this partner make this call now?
//!
//! [`access`] runs before the operation is named, so a call refused here never has its body
//! read: the key's scope must cover the version, the version must not be retired, a test key
//! needs a sandbox, and the key's rate limit must allow the call. [`quotas`] runs once the
//! operation is named, so a quota's estimate is the operation's real weight (GraphQL and gRPC
//! weights are only known then); what it takes is settled when the call ends.
//!
//! A plan's rate limit and quotas are looked up once per plan when the gateway starts
//! ([`Plans`]), not searched per call.

use chrono::Utc;
use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use peage_core::catalog::VersionStatus;
use peage_core::meter::Meter;
use peage_core::pricing::{granted, ApiGrant, Granted, QuotaKind, RateLimit};
use peage_core::{CallEvent, Catalog, Env};
use rust_decimal::Decimal;

use super::refusal::{Refusal, RefusalKind};
use super::route::{UpstreamBase, VersionRoute};
use crate::jwt::scope_allows;
use crate::keys::ResolvedKey;
use crate::limits::Limited;
use crate::quota::{Demand, QuotaRefusal, Taken};
use crate::{Gateway, Loaded};

/// A quota of a plan, with its meter.
pub(crate) struct PlanQuota {
    pub meter: Meter,
    pub kind: QuotaKind,
    pub shadow: bool,
    pub near_fraction: Decimal,
}

/// What admitting a call needs of a plan.
pub(crate) struct PlanPolicy {
    pub rate_limit: Option<RateLimit>,
    pub quotas: Vec<PlanQuota>,
    /// The APIs the plan grants; every API when `None`.
    pub apis: Option<Vec<ApiGrant>>,
}

/// Every plan's policy, by plan id.
pub(crate) struct Plans(foldhash::HashMap<String, PlanPolicy>);

impl Plans {
    pub fn new(catalog: &Catalog) -> Plans {
        Plans(
            catalog
                .plans
                .iter()
                .map(|p| {
                    let quotas = p
                        .quotas
                        .iter()
                        .filter_map(|q| {
                            Some(PlanQuota {
                                meter: catalog.meter(&q.meter)?.clone(),
                                kind: q.kind,
                                shadow: q.shadow,
                                near_fraction: q.near_fraction(),
                            })
                        })
                        .collect();
                    (
                        p.id.clone(),
                        PlanPolicy {
                            rate_limit: p.rate_limit.clone(),
                            quotas,
                            apis: p.apis.clone(),
                        },
                    )
                })
                .collect(),
        )
    }

    pub fn get(&self, plan_id: &str) -> Option<&PlanPolicy> {
        self.0.get(plan_id)
    }
}

/// What [`access`] lets through.
pub(crate) struct Access<'v> {
    /// The upstream base to call.
    pub base: &'v UpstreamBase,
    /// The only operations the plan grants of the version (checked by [`entitled_operation`]
    /// once the operation is named); every one when `None`.
    pub operations: Option<&'v [String]>,
    /// The key is over its plan's rate limit, which is in shadow mode: served, flagged.
    pub rate_limit_shadow_exceeded: bool,
}

/// The key's access to `version`, then its rate limit.
pub(crate) fn access<'v>(
    loaded: &'v Loaded,
    key: &ResolvedKey,
    version: &'v VersionRoute,
) -> Result<Access<'v>, Refusal> {
    let (api, id) = (version.api.as_str(), version.spec.id.as_str());
    if let Some(scopes) = &key.scopes {
        if !scope_allows(scopes, api, id) {
            return Err(Refusal::new(
                RefusalKind::InsufficientScope,
                format!(
                    "the token's scope ({}) does not include {api}:{id}",
                    scopes.join(" ")
                ),
            )
            .with_header(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"peage\", error=\"insufficient_scope\""),
            ));
        }
    }
    if version.spec.status == VersionStatus::Retired {
        return Err(Refusal::new(
            RefusalKind::VersionRetired,
            format!("{api} {id} is retired"),
        ));
    }
    let Some(base) = version.base(key.env) else {
        return Err(Refusal::new(
            RefusalKind::NoSandbox,
            format!("{api} {id} has no sandbox upstream; use a live key"),
        ));
    };
    let plan = loaded.plans.get(&key.plan_id);
    let operations = match granted(plan.and_then(|p| p.apis.as_deref()), api, id) {
        Granted::All => None,
        Granted::Operations(ops) => Some(ops),
        Granted::No => {
            return Err(Refusal::new(
                RefusalKind::NotEntitled,
                format!("the plan {} does not include {api} {id}", key.plan_id),
            ))
        }
    };
    let mut rate_limit_shadow_exceeded = false;
    if let Some(limit) = plan.and_then(|p| p.rate_limit.as_ref()) {
        if let Err(limited) = loaded.limits.check(&key.key_id, limit) {
            if !limit.shadow {
                return Err(rate_limited(limited));
            }
            rate_limit_shadow_exceeded = true;
        }
    }
    Ok(Access {
        base,
        operations,
        rate_limit_shadow_exceeded,
    })
}

/// Refuses an operation the plan does not grant, when it grants only some of the version's.
pub(crate) fn entitled_operation(
    access: &Access<'_>,
    plan_id: &str,
    api: &str,
    version: &str,
    operation: &str,
) -> Result<(), Refusal> {
    match access.operations {
        Some(ops) if !ops.iter().any(|o| o == operation) => Err(Refusal::new(
            RefusalKind::NotEntitled,
            format!("the plan {plan_id} does not include {operation} of {api} {version}"),
        )),
        _ => Ok(()),
    }
}

/// Takes the call's estimate from each quota of the plan whose meter it may count towards.
pub(crate) async fn quotas(
    gw: &Gateway,
    loaded: &Loaded,
    local: &crate::quota::LocalEntries,
    partner_id: &str,
    env: Env,
    plan_id: &str,
    event: &CallEvent,
) -> Result<Taken, Refusal> {
    let (Some(quotas), Some(plan)) = (&gw.quotas, loaded.plans.get(plan_id)) else {
        return Ok(Taken::none());
    };
    let demands: Vec<Demand> = plan
        .quotas
        .iter()
        .filter(|q| q.meter.may_match(event))
        .map(|q| Demand {
            meter: &q.meter.name,
            kind: q.kind,
            shadow: q.shadow,
            near_fraction: q.near_fraction,
            estimate: q.meter.estimate(event),
        })
        .collect();
    if demands.is_empty() {
        return Ok(Taken::none());
    }
    quotas
        .admit_in(Some(local), partner_id, env, &demands)
        .await
        .map_err(quota_refused)
}

/// `RateLimit-Policy`, `RateLimit` (draft-ietf-httpapi-ratelimit-headers) and `Retry-After` of a
/// refused call: policy `name` allows `quota` per `window` seconds; none left for `secs`.
fn ratelimit_headers(r: Refusal, name: &str, quota: &str, window: i64, secs: u64) -> Refusal {
    let mut r = r;
    for (header, value) in [
        (
            "ratelimit-policy",
            format!("\"{name}\";q={quota};w={window}"),
        ),
        ("ratelimit", format!("\"{name}\";r=0;t={secs}")),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r = r.with_header(HeaderName::from_static(header), v);
        }
    }
    r.retry_after(secs)
}

/// 429 for a per-key rate limit.
fn rate_limited(l: Limited) -> Refusal {
    let secs = l.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let r = Refusal::new(
        RefusalKind::RateLimited,
        format!(
            "this key may make {} calls per second; retry in {secs} s",
            l.per_second
        ),
    );
    ratelimit_headers(r, "rate", &l.per_second.to_string(), 1, secs)
}

/// 429 for a hard quota, 503 when billing cannot be reached and the policy refuses.
fn quota_refused(refusal: QuotaRefusal) -> Refusal {
    match refusal {
        QuotaRefusal::HardBlocked {
            meter,
            limit,
            period_seconds,
            resets_at,
        } => {
            let secs = (resets_at - Utc::now()).num_seconds().max(1);
            let r = Refusal::new(
                RefusalKind::QuotaExceeded,
                format!(
                    "the {meter:?} quota of {limit} for this billing period is used up; it resets at {}",
                    resets_at.to_rfc3339()
                ),
            );
            let quota = limit.normalize().to_string();
            ratelimit_headers(r, &meter, &quota, period_seconds, secs as u64)
        }
        QuotaRefusal::Unavailable { meter } => Refusal::new(
            RefusalKind::QuotaUnavailable,
            format!("the gateway cannot check the {meter:?} quota right now; retry shortly"),
        )
        .retry_after(5),
    }
}
