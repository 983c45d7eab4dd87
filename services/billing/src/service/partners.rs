//! Partners: creating them (one place for the id rules, used by the control API and by
//! `peage up --demo` alike), finding them as the caller may see them, their external id, their
//! plan, and finance's overview of every partner's running period.

use chrono::{DateTime, Utc};
use peage_billing_store::{BillingStore, Partner, Subscription};
use peage_core::{Catalog, PartnerId};
use rust_decimal::Decimal;
use serde::Serialize;

use super::billing::Billing;
use super::error::ServiceError;
use super::principal::Principal;

/// Creates a partner subscribed, from now, to `plan` as the catalog has it.
pub async fn create_partner(
    store: &dyn BillingStore,
    catalog: &Catalog,
    name: &str,
    plan: &str,
    external_id: Option<&str>,
) -> Result<Partner, ServiceError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ServiceError::Invalid(
            "name must be 1–200 characters".into(),
        ));
    }
    let plan_version = plan_version(catalog, plan)?;
    if let Some(ext) = external_id {
        check_external_id(ext)?;
        if store.partner_by_external_id(ext).await?.is_some() {
            return Err(ServiceError::Taken(format!(
                "external_id {ext:?} belongs to another partner"
            )));
        }
    }
    let id = PartnerId::from_random(rand::random());
    let sub = Subscription {
        plan_id: plan.to_string(),
        plan_version,
        started_at: Utc::now(),
        ended_at: None,
    };
    let mut partner = store.create_partner(&id, name, &sub).await?;
    if let Some(ext) = external_id {
        partner = store.set_external_id(&partner.id, Some(ext)).await?;
    }
    tracing::info!(partner_id = %partner.id, plan = %partner.subscription.plan_id, "partner created");
    Ok(partner)
}

/// An external id: 1–128 visible ASCII characters (what a company's customer ids are), and
/// not of the form of a Péage partner id, so a usage event's `subject` names one partner only.
pub fn check_external_id(ext: &str) -> Result<(), ServiceError> {
    if ext.is_empty() || ext.len() > 128 || !ext.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ServiceError::Invalid(
            "external_id must be 1–128 visible ASCII characters".into(),
        ));
    }
    if PartnerId::parse(ext).is_ok() {
        return Err(ServiceError::Invalid(format!(
            "external_id {ext:?} has the form of a partner id; usage events could not tell them apart"
        )));
    }
    Ok(())
}

/// The current version of a catalog plan, or an error naming the unknown plan.
pub fn plan_version(catalog: &Catalog, plan: &str) -> Result<String, ServiceError> {
    catalog
        .plan(plan)
        .map(|p| p.version.clone())
        .ok_or_else(|| {
            ServiceError::Invalid(format!(
                "no plan {plan:?} in the catalog (GET /v1/plans lists them)"
            ))
        })
}

/// One partner in finance's list, with the current period's usage and running cost.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartnerOverview {
    pub id: PartnerId,
    pub name: String,
    pub plan_id: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub timezone: String,
    pub currency: String,
    /// The current period's invoice so far, tax included.
    pub running_total: String,
    pub usage: Vec<peage_core::MeterUsage>,
    /// Set when this partner's numbers could not be computed (the others still are).
    pub error: Option<String>,
}

/// The order of finance's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverviewSort {
    /// By name, A to Z (the default).
    #[default]
    Name,
    /// By plan, then name.
    Plan,
    /// By id.
    Id,
    /// The largest running cost first (within each currency).
    RunningTotal,
}

/// A page of finance's list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OverviewPage {
    /// Partners matching the search, on every page.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub partners: Vec<PartnerOverview>,
}

impl Billing {
    /// The partner `raw` names; an id that is not one is "not found" too.
    pub async fn partner(&self, raw: &str) -> Result<Partner, ServiceError> {
        let id = PartnerId::parse(raw).map_err(|_| ServiceError::not_found("partner", raw))?;
        self.store
            .partner(&id)
            .await?
            .ok_or_else(|| ServiceError::not_found("partner", id))
    }

    /// The partner `raw` names, if the caller may see it: for a partner session another
    /// partner's id is "not found", as an id that does not exist.
    pub async fn scoped_partner(
        &self,
        who: &Principal,
        raw: &str,
    ) -> Result<Partner, ServiceError> {
        who.may_see(raw)?;
        self.partner(raw).await
    }

    pub async fn create_partner(
        &self,
        name: &str,
        plan: &str,
        external_id: Option<&str>,
    ) -> Result<Partner, ServiceError> {
        create_partner(
            self.store.as_ref(),
            &self.catalog(),
            name,
            plan,
            external_id,
        )
        .await
    }

    pub async fn partners(&self) -> Result<Vec<Partner>, ServiceError> {
        Ok(self.store.partners().await?)
    }

    /// Sets or clears (`None`) the partner's external id.
    pub async fn set_external_id(
        &self,
        partner: &Partner,
        external_id: Option<&str>,
    ) -> Result<Partner, ServiceError> {
        if let Some(e) = external_id {
            check_external_id(e)?;
        }
        let updated = self.store.set_external_id(&partner.id, external_id).await?;
        // Events naming the old external id stop reaching this partner now, here.
        self.subjects.clear();
        Ok(updated)
    }

    /// Finance's list: a page of the partners whose id, name or plan contains `needle`
    /// (case-insensitive), in `sort` order, each with the current period's usage and running
    /// cost. Computed in bulk ([`super::invoicing::Invoicing::upcoming_many`]): the page's
    /// partners only, or every match when sorting by running cost.
    pub async fn overview(
        &self,
        needle: &str,
        sort: OverviewSort,
        limit: usize,
        offset: usize,
    ) -> Result<OverviewPage, ServiceError> {
        let needle = needle.trim().to_lowercase();
        let mut matching: Vec<Partner> = self
            .store
            .partners()
            .await?
            .into_iter()
            .filter(|p| {
                needle.is_empty()
                    || p.id.as_str().contains(&needle)
                    || p.name.to_lowercase().contains(&needle)
                    || p.subscription.plan_id.to_lowercase().contains(&needle)
            })
            .collect();
        let total = matching.len();
        let by_name = |a: &Partner, b: &Partner| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then_with(|| a.id.cmp(&b.id))
        };
        match sort {
            OverviewSort::Name | OverviewSort::RunningTotal => matching.sort_by(by_name),
            OverviewSort::Plan => matching.sort_by(|a, b| {
                a.subscription
                    .plan_id
                    .cmp(&b.subscription.plan_id)
                    .then_with(|| by_name(a, b))
            }),
            OverviewSort::Id => matching.sort_by(|a, b| a.id.cmp(&b.id)),
        }
        let now = Utc::now();
        let priced = if sort == OverviewSort::RunningTotal {
            matching
        } else {
            matching.into_iter().skip(offset).take(limit).collect()
        };
        let mut rows: Vec<PartnerOverview> = self
            .invoicing()
            .upcoming_many(priced, now)
            .await?
            .into_iter()
            .map(|(p, row)| match row {
                Ok((record, usage)) => {
                    let inv = &record.invoice;
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
            })
            .collect();
        let partners = if sort == OverviewSort::RunningTotal {
            // The largest first, by currency then amount; those that could not be priced last.
            let amount = |r: &PartnerOverview| r.running_total.parse::<Decimal>().ok();
            rows.sort_by(|a, b| match (amount(a), amount(b)) {
                (Some(x), Some(y)) => a.currency.cmp(&b.currency).then(y.cmp(&x)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
            rows.into_iter().skip(offset).take(limit).collect()
        } else {
            rows
        };
        Ok(OverviewPage {
            total,
            offset,
            limit,
            partners,
        })
    }
}
