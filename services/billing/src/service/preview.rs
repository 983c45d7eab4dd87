//! Invoice previews (docs/control-api.md, the preview routes): what a partner would pay this period under
//! another plan, another accepted catalog version or an uploaded catalog, priced from the same
//! usage beside their invoice as it stands. Nothing is stored.

use std::sync::Arc;

use chrono::Utc;
use peage_billing_store::{AcceptedCatalog, Partner};
use peage_core::catalog::{CatalogError, CatalogIssue};
use peage_core::{Catalog, InvoiceRecord};
use serde::Serialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;

/// The catalog a preview prices with.
#[derive(Debug, Clone)]
pub enum PreviewCatalog {
    /// The one in force.
    InForce,
    /// A version billing accepted once (`GET /v1/catalog/versions`).
    Accepted(String),
    /// A catalog file's text, validated as a reload would validate it.
    Uploaded(String),
}

/// What a partner would pay this period on another plan or catalog, beside what they owe now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InvoicePreview {
    /// The catalog the preview priced with.
    pub catalog_version: String,
    /// The plan it priced with, and that plan's version in that catalog.
    pub plan_id: String,
    pub plan_version: String,
    /// The invoice of the period running now under that plan, as if the partner had been on
    /// it the whole period (from when they joined, if later): usage so far, prepaid credit
    /// applied, no late-usage adjustments. Never stored (`id` is `preview`).
    pub preview: InvoiceRecord,
    /// The partner's upcoming invoice as it stands, for comparison (`id` is `upcoming`).
    pub current: InvoiceRecord,
}

/// The catalogs billing accepted, the latest first, and the one in force.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CatalogVersions {
    /// The version this billing instance runs.
    pub in_force: String,
    pub versions: Vec<AcceptedCatalog>,
}

impl Billing {
    /// Prices the partner's current period under `plan` (their own plan when `None`) of
    /// `catalog`.
    pub async fn preview_invoice(
        &self,
        partner: &Partner,
        plan: Option<&str>,
        catalog: PreviewCatalog,
    ) -> Result<InvoicePreview, ServiceError> {
        let catalog = match catalog {
            PreviewCatalog::InForce => self.catalog(),
            PreviewCatalog::Accepted(version) => {
                let text = self
                    .store
                    .accepted_catalog_text(&version)
                    .await?
                    .ok_or_else(|| ServiceError::not_found("catalog version", &version))?;
                Arc::new(
                    self.parse_catalog(&format!("catalog {version}"), &text)
                        .await?,
                )
            }
            PreviewCatalog::Uploaded(text) => {
                Arc::new(self.parse_catalog("uploaded catalog", &text).await?)
            }
        };
        let plan_id = plan.unwrap_or(&partner.subscription.plan_id);
        let plan = catalog.plan(plan_id).cloned().ok_or_else(|| {
            ServiceError::Invalid(format!(
                "catalog {} has no plan {plan_id:?} (its plans: {})",
                catalog.version,
                catalog
                    .plans
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let now = Utc::now();
        let mut invoicing = self.invoicing();
        let current = invoicing.upcoming(partner, now).await?;
        invoicing.catalog = Arc::clone(&catalog);
        let preview = invoicing.preview(partner, &plan, now).await?;
        Ok(InvoicePreview {
            catalog_version: catalog.version.clone(),
            plan_id: plan.id,
            plan_version: plan.version,
            preview,
            current,
        })
    }

    /// The catalogs billing accepted (at start and on reloads), the latest first.
    pub async fn catalog_versions(&self) -> Result<CatalogVersions, ServiceError> {
        Ok(CatalogVersions {
            in_force: self.catalog().version.clone(),
            versions: self.store.accepted_catalogs().await?,
        })
    }

    /// A catalog's text validated as a reload validates the file (this process's variables);
    /// its problems name `name` as their file.
    async fn parse_catalog(&self, name: &str, text: &str) -> Result<Catalog, ServiceError> {
        let parsed = match self.reloads.source.get() {
            Some(source) => source.parse(text).await.map(|s| s.catalog),
            None => {
                let vars = |v: &str| std::env::var(v).ok();
                Catalog::parse(name, text, &vars).map_err(|CatalogError { issues }| issues)
            }
        };
        parsed.map_err(|issues| {
            ServiceError::CatalogRefused(
                issues
                    .into_iter()
                    .map(|i| CatalogIssue {
                        file: name.to_string(),
                        ..i
                    })
                    .collect(),
            )
        })
    }
}
