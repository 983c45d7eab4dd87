//! What a partner's plan entitles it to (docs/catalog.md, "Entitlements"): the APIs it grants,
//! its boolean features, and its quotas as metered features with what is left, so the
//! company's own services can check them with one call.

use chrono::{DateTime, Utc};
use peage_billing_store::Partner;
use peage_core::pricing::{ApiGrant, QuotaKind};
use peage_core::{Env, PartnerId};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;

/// A feature: boolean (a plan lists it or not) or metered (a quota of the plan).
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Feature {
    Boolean {
        key: String,
        /// The partner's plan includes it.
        enabled: bool,
    },
    Metered {
        /// The quota's meter.
        key: String,
        /// Calls are allowed now: used is below the limit, or the quota is soft or in shadow
        /// mode.
        enabled: bool,
        hard: bool,
        shadow: bool,
        #[serde(with = "rust_decimal::serde::str")]
        #[schema(value_type = String)]
        limit: Decimal,
        /// Metered this period (live traffic).
        #[serde(with = "rust_decimal::serde::str")]
        #[schema(value_type = String)]
        used: Decimal,
        /// `limit − used`, never below 0.
        #[serde(with = "rust_decimal::serde::str")]
        #[schema(value_type = String)]
        left: Decimal,
        resets_at: DateTime<Utc>,
    },
}

/// A partner's entitlements now.
#[derive(Debug, Serialize, ToSchema)]
pub struct Entitlements {
    pub partner_id: PartnerId,
    pub plan_id: String,
    pub plan_name: String,
    /// The APIs the plan grants; every API of the catalog when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apis: Option<Vec<ApiGrant>>,
    /// Every boolean feature any plan of the catalog names (enabled or not), then each quota.
    pub features: Vec<Feature>,
}

impl Billing {
    /// `GET /v1/partners/{id}/entitlements`.
    pub async fn entitlements(&self, partner: &Partner) -> Result<Entitlements, ServiceError> {
        let catalog = self.catalog();
        let plan_id = &partner.subscription.plan_id;
        let plan = catalog.plan(plan_id).ok_or_else(|| {
            ServiceError::CatalogDrift(format!(
                "partner {} is on plan {plan_id}, which the catalog no longer has",
                partner.id
            ))
        })?;
        let mut keys: Vec<&str> = catalog
            .plans
            .iter()
            .flat_map(|p| p.features.iter().map(String::as_str))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut features: Vec<Feature> = keys
            .into_iter()
            .map(|k| Feature::Boolean {
                key: k.to_string(),
                enabled: plan.features.iter().any(|f| f == k),
            })
            .collect();
        for q in self.quotas(partner, Env::Live).await?.quotas {
            features.push(Feature::Metered {
                enabled: q.used < q.limit || q.kind == QuotaKind::Soft || q.shadow,
                hard: q.kind == QuotaKind::Hard,
                shadow: q.shadow,
                left: (q.limit - q.used).max(Decimal::ZERO),
                key: q.meter,
                limit: q.limit,
                used: q.used,
                resets_at: q.resets_at,
            });
        }
        Ok(Entitlements {
            partner_id: partner.id.clone(),
            plan_id: plan.id.clone(),
            plan_name: plan.name.clone(),
            apis: plan.apis.clone(),
            features,
        })
    }
}

impl Billing {
    /// `GET /v1/partners/{id}/plan`: the plan the partner is billed on, as the version in force
    /// for it prices (name, period, base fee, charges and tiers, quotas, rate limit, APIs,
    /// features).
    pub async fn partner_plan(
        &self,
        partner: &Partner,
    ) -> Result<peage_core::pricing::Plan, ServiceError> {
        let sub = &partner.subscription;
        self.invoicing()
            .plan_version(&sub.plan_id, &sub.plan_version)
            .await
    }
}
