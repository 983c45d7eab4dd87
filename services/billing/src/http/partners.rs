//! `/v1/partners`: creating, listing and reading partners, their external id and plan, and
//! finance's overview.

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::audit::with_before;
use super::error::ApiError;
use super::extract::{Api, Caller, JsonBody, ScopedPartner};
use super::openapi;
use super::respond::created;
use crate::service::{ChangeAt, OverviewPage, PartnerView, PlanChangeList, SubscriptionOutcome};
use peage_billing_store::{Partner, PlanChange};

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
    responses((status = 201, description = "The partner", body = Partner), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn create_partner(
    api: Api,
    JsonBody(req): JsonBody<NewPartner>,
) -> Result<Response, ApiError> {
    let partner = api
        .billing
        .create_partner(&req.name, &req.plan, req.external_id.as_deref())
        .await?;
    Ok(created(partner))
}

#[utoipa::path(get,
    path = "/v1/partners",
    tag = "partners",
    responses((status = 200, description = "Every partner", body = PartnerList), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn list_partners(api: Api) -> Result<Json<PartnerList>, ApiError> {
    Ok(Json(PartnerList {
        partners: api.billing.partners().await?,
    }))
}

/// Every partner.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct PartnerList {
    partners: Vec<Partner>,
}

#[utoipa::path(get,
    path = "/v1/partners/{id}",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The partner, its subscription and the plan change pending, if any", body = PartnerView), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn get_partner(
    api: Api,
    Caller(who): Caller,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<PartnerView>, ApiError> {
    Ok(Json(api.billing.partner_view(&who, partner).await?))
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
    responses((status = 200, description = "The partner", body = Partner), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn patch_partner(
    api: Api,
    ScopedPartner(mut partner): ScopedPartner,
    JsonBody(req): JsonBody<PartnerChange>,
) -> Result<Json<Partner>, ApiError> {
    if let Some(ext) = req.external_id {
        partner = api
            .billing
            .set_external_id(&partner, ext.as_deref())
            .await?;
    }
    Ok(Json(partner))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriptionRequest {
    /// The plan to move to (its version in force when the change takes effect).
    plan: String,
    /// When: `now` (the default), `next_period` (when the current billing period ends), a
    /// date (`2027-01-01`, midnight in the partner's billing time zone) or an RFC 3339 time.
    /// A change of currency or billing period is accepted only where a period of both plans
    /// starts; otherwise the 409 says when to schedule it.
    #[schema(example = "next_period")]
    at: Option<String>,
}

#[utoipa::path(put,
    path = "/v1/partners/{id}/subscription",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    request_body = SubscriptionRequest,
    responses((status = 200, description = "The partner: on its new plan (`at` now), or with the change pending (`pending_change`)", body = PartnerView), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn change_subscription(
    api: Api,
    Caller(who): Caller,
    ScopedPartner(partner): ScopedPartner,
    JsonBody(req): JsonBody<SubscriptionRequest>,
) -> Result<Response, ApiError> {
    let at = ChangeAt::parse(req.at.as_deref().unwrap_or("now"))?;
    let outcome = api
        .billing
        .change_subscription(partner, &req.plan, at, &who.label())
        .await?;
    subscription_answer(&api, &who, outcome).await
}

/// The partner after a plan change: on its new plan, or with the change pending.
async fn subscription_answer(
    api: &Api,
    who: &crate::service::Principal,
    outcome: SubscriptionOutcome,
) -> Result<Response, ApiError> {
    Ok(match outcome {
        SubscriptionOutcome::Unchanged(p) => {
            Json(api.billing.partner_view(who, p).await?).into_response()
        }
        SubscriptionOutcome::Changed { before, after, .. } => with_before(
            Json(api.billing.partner_view(who, after).await?).into_response(),
            &before,
        ),
        SubscriptionOutcome::Scheduled {
            partner, change, ..
        } => Json(PartnerView {
            partner,
            pending_change: Some(change),
        })
        .into_response(),
    })
}

#[utoipa::path(get, operation_id = "list_plan_changes",
    path = "/v1/partners/{id}/plan-changes",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The partner's plan changes, pending, applied, cancelled or failed, the latest scheduled first", body = PlanChangeList), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn plan_changes(
    api: Api,
    Caller(who): Caller,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<PlanChangeList>, ApiError> {
    Ok(Json(api.billing.plan_changes(&who, &partner).await?))
}

#[utoipa::path(delete,
    path = "/v1/partners/{id}/plan-changes/{change_id}",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id"), ("change_id" = String, Path, description = "Plan change id")),
    responses((status = 200, description = "The change, cancelled", body = PlanChange), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden), (status = 404, response = openapi::NotFound), (status = 409, description = "The change took effect, failed or was cancelled already", body = openapi::ProblemDoc, content_type = "application/problem+json")),
    security(("admin" = []), ("session" = [])))]
pub async fn cancel_plan_change(
    api: Api,
    Caller(who): Caller,
    Path((id, change_id)): Path<(String, String)>,
) -> Result<Json<PlanChange>, ApiError> {
    let partner = api.billing.scoped_partner(&who, &id).await?;
    Ok(Json(
        api.billing
            .cancel_plan_change(&partner, &change_id, &who.label())
            .await?,
    ))
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
    /// `name` (default), `plan`, `id`, or `running_total` (the largest first).
    #[param(inline)]
    sort: Option<crate::service::OverviewSort>,
}

/// Finance's list: every partner (a page of them, searchable) with the current period's usage
/// and running cost.
#[utoipa::path(get,
    path = "/v1/partners/overview",
    tag = "partners",
    params(OverviewParams),
    responses((status = 200, description = "A page of partners with this period's usage and running cost", body = OverviewPage), (status = 401, response = openapi::Unauthorized), (status = 403, response = openapi::Forbidden)),
    security(("admin" = []), ("session" = [])))]
pub async fn partners_overview(
    api: Api,
    Query(params): Query<OverviewParams>,
) -> Result<Json<OverviewPage>, ApiError> {
    let limit = params.limit.unwrap_or(50).clamp(1, 200);
    let offset = params.offset.unwrap_or(0);
    let page = api
        .billing
        .overview(
            params.q.as_deref().unwrap_or(""),
            params.sort.unwrap_or_default(),
            limit,
            offset,
        )
        .await?;
    Ok(Json(page))
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/entitlements",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "What the partner's plan entitles it to now: the APIs it grants (all when `apis` is absent), boolean features, and each quota as a metered feature with what is left this period", body = crate::service::Entitlements), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn entitlements(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<crate::service::Entitlements>, ApiError> {
    Ok(Json(api.billing.entitlements(&partner).await?))
}

#[utoipa::path(get, operation_id = "get_partner_plan",
    path = "/v1/partners/{id}/plan",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The plan the partner is billed on, in the version that prices its current period: name, period, base fee, charges and their tiers, quotas, rate limit, APIs and features", body = peage_core::pricing::Plan), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn partner_plan(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<peage_core::pricing::Plan>, ApiError> {
    Ok(Json(api.billing.partner_plan(&partner).await?))
}

#[utoipa::path(get,
    path = "/v1/partners/{id}/plan-options",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id")),
    responses((status = 200, description = "The partner's plan and the self-serve plans it may move to itself: upgrades (a higher base fee) at once and prorated, downgrades at the end of the period", body = crate::service::PlanOptions), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound)),
    security(("admin" = []), ("session" = [])))]
pub async fn plan_options(
    api: Api,
    ScopedPartner(partner): ScopedPartner,
) -> Result<Json<crate::service::PlanOptions>, ApiError> {
    Ok(Json(api.billing.plan_options(&partner).await?))
}

#[utoipa::path(post,
    path = "/v1/partners/{id}/plan-options/{plan}/quote",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id"), ("plan" = String, Path, description = "A self-serve plan's id")),
    responses((status = 200, description = "What the current period comes to with the move, beside what it comes to now; nothing changes", body = crate::service::PlanQuote), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn quote_plan(
    api: Api,
    Caller(who): Caller,
    Path((id, plan)): Path<(String, String)>,
) -> Result<Json<crate::service::PlanQuote>, ApiError> {
    let partner = api.billing.scoped_partner(&who, &id).await?;
    Ok(Json(api.billing.quote_plan(&partner, &plan).await?))
}

#[utoipa::path(post,
    path = "/v1/partners/{id}/plan-options/{plan}",
    tag = "partners",
    params(("id" = String, Path, description = "Partner id"), ("plan" = String, Path, description = "A self-serve plan's id")),
    responses((status = 200, description = "The partner: on the new plan (an upgrade, at once), or with the change pending at the end of the period (a downgrade)", body = PartnerView), (status = 400, response = openapi::BadRequest), (status = 401, response = openapi::Unauthorized), (status = 404, response = openapi::NotFound), (status = 409, response = openapi::Conflict)),
    security(("admin" = []), ("session" = [])))]
pub async fn choose_plan(
    api: Api,
    Caller(who): Caller,
    Path((id, plan)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let partner = api.billing.scoped_partner(&who, &id).await?;
    let outcome = api
        .billing
        .choose_plan(partner, &plan, &who.label())
        .await?;
    subscription_answer(&api, &who, outcome).await
}
