//! Reloading the catalog while billing serves (docs/catalog.md, "Changing a live catalog"): a
//! new catalog is read and validated whole; an invalid one is refused with its problems and the
//! running one keeps serving; a valid one replaces it at once, for billing and for whatever
//! listens in the same process (the embedded gateway). Every reload, refused or not, is
//! recorded for `GET /v1/catalog`.

use std::sync::Arc;

use chrono::Utc;
use peage_core::catalog::{diff, CatalogIssue, ItemChange};
use peage_core::Catalog;
use serde::Serialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::catalog_state::{
    ApiDocs, CatalogListener, CatalogSource, CatalogStatus, IssueView, ReloadRecord,
};
use super::error::ServiceError;

/// One field that changed: its path in the item, and its values before and after (JSON; null
/// when absent).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldChangeView {
    pub path: String,
    #[schema(value_type = Object)]
    pub old: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    pub new: Option<serde_json::Value>,
}

/// What became of one API, meter or plan.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChangeView {
    /// `api`, `meter` or `plan`.
    pub section: String,
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    /// For `changed`: every field that differs.
    pub fields: Vec<FieldChangeView>,
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reloaded {
    /// The version in force before.
    pub from: String,
    /// The version in force now (the same when the catalog did not change).
    pub to: String,
    pub changes: Vec<ChangeView>,
}

fn views(before: &Catalog, after: &Catalog) -> Vec<ChangeView> {
    diff(before, after)
        .into_iter()
        .map(|d| {
            let (change, fields) = match d.change {
                ItemChange::Added => ("added", Vec::new()),
                ItemChange::Removed => ("removed", Vec::new()),
                ItemChange::Changed { fields } => (
                    "changed",
                    fields
                        .into_iter()
                        .map(|f| FieldChangeView {
                            path: f.path,
                            old: f.old,
                            new: f.new,
                        })
                        .collect(),
                ),
            };
            ChangeView {
                section: d.section.as_str().to_string(),
                name: d.name,
                change: change.to_string(),
                fields,
            }
        })
        .collect()
}

impl Billing {
    /// Where reloads read the catalog from; once.
    pub fn take_catalog_source(&self, source: Arc<dyn CatalogSource>) -> bool {
        self.reloads.source.set(source).is_ok()
    }

    /// Tells `listener` of every catalog put in force from now on.
    pub fn on_catalog(&self, listener: CatalogListener) {
        if let Ok(mut l) = self.reloads.listeners.lock() {
            l.push(listener);
        }
    }

    /// Reads the catalog of record again and, if it is valid and new, puts it in force.
    /// `trigger` names what asked (for the log and `GET /v1/catalog`).
    pub async fn reload_catalog(&self, trigger: &str) -> Result<Reloaded, ServiceError> {
        let source = self.reloads.source.get().cloned().ok_or_else(|| {
            ServiceError::WrongState("this server has no catalog file to reload".into())
        })?;
        let _turn = self.reloads.turn.lock().await;
        let before = self.catalog();
        let (next, docs) = match source.read().await {
            Ok(read) => read,
            Err(issues) => {
                for i in &issues {
                    tracing::error!(file = %i.file, line = i.line, column = i.column, field = %i.field, problem = %i.message, trigger, "catalog reload refused: the running catalog keeps serving");
                }
                self.record(trigger, "refused", &before.version, &issues);
                return Err(ServiceError::CatalogRefused(issues));
            }
        };
        if next.version == before.version {
            self.set_api_docs(docs);
            self.record(trigger, "unchanged", &before.version, &[]);
            return Ok(Reloaded {
                from: before.version.clone(),
                to: before.version.clone(),
                changes: Vec::new(),
            });
        }
        let next = Arc::new(next);
        self.put_in_force(Arc::clone(&next), docs).await?;
        let changes = views(&before, &next);
        tracing::info!(from = %before.version, to = %next.version, changes = changes.len(), trigger, "catalog reloaded");
        self.record(trigger, "applied", &next.version, &[]);
        Ok(Reloaded {
            from: before.version.clone(),
            to: next.version.clone(),
            changes,
        })
    }

    /// Puts `next` in force: its plan versions recorded first (so invoices can always find the
    /// version that priced them), then billing's catalog and documents, then the listeners.
    pub(crate) async fn put_in_force(
        &self,
        next: Arc<Catalog>,
        docs: ApiDocs,
    ) -> Result<(), ServiceError> {
        let mut invoicing = self.invoicing();
        invoicing.catalog = Arc::clone(&next);
        invoicing.register_plan_versions(Utc::now()).await?;
        self.live.replace(Arc::clone(&next));
        self.follow_catalog().await?;
        self.set_api_docs(docs);
        let listeners = self
            .reloads
            .listeners
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        for listen in listeners {
            listen(Arc::clone(&next));
        }
        if let Ok(mut r) = self.reloads.record.lock() {
            r.0 = Some(Utc::now());
        }
        Ok(())
    }

    /// Moves the partners of every plan whose version changed to its version in force, from
    /// now: the period is cut there, each part priced by its own version (docs/pricing.md,
    /// "Plan changes mid-period"). What a reload does, and what a start does after the catalog
    /// file changed while billing was down.
    pub async fn follow_catalog(&self) -> Result<usize, ServiceError> {
        let catalog = self.catalog();
        let now = Utc::now();
        let mut moved = 0;
        for plan in &catalog.plans {
            let partners = self
                .store
                .follow_plan_version(&plan.id, &plan.version, now)
                .await?;
            if !partners.is_empty() {
                tracing::info!(plan = %plan.id, version = %plan.version, partners = partners.len(), "partners moved to the plan's new version");
            }
            moved += partners.len();
        }
        Ok(moved)
    }

    fn record(&self, trigger: &str, outcome: &str, version: &str, issues: &[CatalogIssue]) {
        if let Ok(mut r) = self.reloads.record.lock() {
            r.1 = Some(ReloadRecord {
                at: Utc::now(),
                trigger: trigger.to_string(),
                outcome: outcome.to_string(),
                version: version.to_string(),
                issues: issues.iter().map(IssueView::from).collect(),
            });
        }
    }

    /// The catalog in force and the last reload.
    pub fn catalog_status(&self) -> CatalogStatus {
        let catalog = self.catalog();
        let (since, last_reload) = self
            .reloads
            .record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        CatalogStatus {
            version: catalog.version.clone(),
            since: since.unwrap_or(self.started),
            apis: catalog.apis.len(),
            meters: catalog.meters.len(),
            plans: catalog.plans.len(),
            last_reload,
        }
    }
}
