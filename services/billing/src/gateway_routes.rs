//! `/v1/gateway/*`: what a gateway needs from billing state, so it never connects to billing's
//! database: API keys by secret hash or id, partners' JWT issuers, and the feed of revocations
//! it follows to drop a revoked key within a second (docs/gateway.md, "Keys and revocation").
//! Reachable with a `gateway` service token (and by staff).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use peage_billing_store::{ApiKey, BillingStore, BillingStoreError, TrustedIssuer};
use peage_core::Env;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{ApiError, ControlApi};

type Api = State<Arc<ControlApi>>;

/// A key as a gateway caches it.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct GatewayKey {
    pub key_id: String,
    pub partner_id: String,
    #[schema(value_type = String)]
    pub env: Env,
    pub revoked: bool,
    /// The partner's current plan: its rate limit and quotas apply.
    pub plan_id: String,
}

/// A partner's JWT issuer, as a gateway checks its tokens.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct GatewayIssuer {
    pub id: String,
    pub partner_id: String,
    pub plan_id: String,
    pub jwks_url: String,
    pub algorithm: String,
    pub audience: String,
    #[schema(value_type = String)]
    pub env: Env,
}

async fn plan_of(store: &dyn BillingStore, partner_id: &str) -> Result<String, BillingStoreError> {
    Ok(store
        .partner(partner_id)
        .await?
        .map(|p| p.subscription.plan_id)
        .unwrap_or_default())
}

/// A stored key as a gateway needs it, with its partner's current plan: what these routes
/// answer, and what `peage up`'s in-process gateway reads without HTTP.
pub async fn gateway_key(
    store: &dyn BillingStore,
    k: ApiKey,
) -> Result<GatewayKey, BillingStoreError> {
    Ok(GatewayKey {
        plan_id: plan_of(store, &k.partner_id).await?,
        key_id: k.key_id,
        env: k.env,
        revoked: k.revoked_at.is_some(),
        partner_id: k.partner_id,
    })
}

/// A stored issuer as a gateway needs it, likewise.
pub async fn gateway_issuer(
    store: &dyn BillingStore,
    i: TrustedIssuer,
) -> Result<GatewayIssuer, BillingStoreError> {
    Ok(GatewayIssuer {
        plan_id: plan_of(store, &i.partner_id).await?,
        id: i.id,
        partner_id: i.partner_id,
        jwks_url: i.jwks_url,
        algorithm: i.algorithm,
        audience: i.audience,
        env: i.env,
    })
}

async fn key_answer(api: &ControlApi, k: Option<ApiKey>) -> Result<Response, ApiError> {
    let Some(k) = k else {
        return Err(ApiError::NotFound("no such key".into()));
    };
    Ok(Json(gateway_key(api.store.as_ref(), k).await?).into_response())
}

#[utoipa::path(get, path = "/v1/gateway/keys/{secret_hash}", tag = "gateway",
    params(("secret_hash" = String, Path, description = "SHA-256 (hex) of the key's secret")),
    responses((status = 200, body = GatewayKey), (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn key_by_hash(
    State(api): Api,
    Path(secret_hash): Path<String>,
) -> Result<Response, ApiError> {
    let k = api.store.key_by_hash(&secret_hash).await?;
    key_answer(&api, k).await
}

#[utoipa::path(get, path = "/v1/gateway/key-ids/{key_id}", tag = "gateway",
    params(("key_id" = String, Path, description = "The key a Péage token was obtained with")),
    responses((status = 200, body = GatewayKey), (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn key_by_id(
    State(api): Api,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    let k = api.store.key(&key_id).await?;
    key_answer(&api, k).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IssuerParams {
    /// The tokens' `iss`.
    iss: String,
}

#[utoipa::path(get, path = "/v1/gateway/issuers", tag = "gateway",
    params(IssuerParams),
    responses((status = 200, body = GatewayIssuer), (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn issuer(
    State(api): Api,
    Query(q): Query<IssuerParams>,
) -> Result<Response, ApiError> {
    let Some(i) = api.store.issuer(&q.iss).await? else {
        return Err(ApiError::NotFound("no such issuer".into()));
    };
    Ok(Json(gateway_issuer(api.store.as_ref(), i).await?).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevocationParams {
    /// The `cursor` of the previous answer; absent: from now.
    after: Option<DateTime<Utc>>,
    /// How long to wait for a revocation before answering none (long poll); more than
    /// 15000 is taken as 15000, so the answer comes well inside common client timeouts.
    #[param(maximum = 15000)]
    wait_ms: Option<u64>,
}

/// Revocations after the cursor, and the cursor to ask from next.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct RevocationPage {
    pub revocations: Vec<RevokedKey>,
    pub cursor: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct RevokedKey {
    pub key_id: String,
    pub revoked_at: DateTime<Utc>,
}

/// How often a waiting request looks for new revocations: a revocation reaches gateways within
/// about this, plus a round trip.
const POLL: Duration = Duration::from_millis(100);
/// The longest a request waits.
const MAX_WAIT_MS: u64 = 15_000;

#[utoipa::path(get, path = "/v1/gateway/revocations", tag = "gateway",
    params(RevocationParams),
    responses((status = 200, body = RevocationPage), (status = 401, response = crate::openapi::Unauthorized),
              (status = 403, response = crate::openapi::Forbidden)),
    security(("admin" = [])))]
pub(crate) async fn revocations(
    State(api): Api,
    Query(q): Query<RevocationParams>,
) -> Result<Response, ApiError> {
    let started = tokio::time::Instant::now();
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    let Some(after) = q.after else {
        return Ok(Json(RevocationPage {
            revocations: Vec::new(),
            cursor: Utc::now(),
        })
        .into_response());
    };
    loop {
        let found = api.store.keys_revoked_since(after, 1000).await?;
        if !found.is_empty() || started.elapsed() >= wait {
            let cursor = found.last().map_or(after, |r| r.revoked_at);
            return Ok(Json(RevocationPage {
                revocations: found
                    .into_iter()
                    .map(|r| RevokedKey {
                        key_id: r.key_id,
                        revoked_at: r.revoked_at,
                    })
                    .collect(),
                cursor,
            })
            .into_response());
        }
        tokio::time::sleep(POLL).await;
    }
}
