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
    ApiDocs, CatalogListener, CatalogSource, CatalogStatus, IssueView, ReloadRecord, Sourced,
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
        let Sourced {
            catalog: next,
            docs,
            text,
        } = match source.read().await {
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
            // A start, or an instance that had not accepted it: the store holds it all the same.
            self.accept(&next.version, &text, trigger).await?;
            self.record(trigger, "unchanged", &before.version, &[]);
            return Ok(Reloaded {
                from: before.version.clone(),
                to: before.version.clone(),
                changes: Vec::new(),
            });
        }
        let next = Arc::new(next);
        self.put_in_force(Arc::clone(&next), docs, trigger).await?;
        self.accept(&next.version, &text, trigger).await?;
        let changes = views(&before, &next);
        Ok(Reloaded {
            from: before.version.clone(),
            to: next.version.clone(),
            changes,
        })
    }

    /// Puts `next` in force: its plan versions recorded first (so invoices can always find the
    /// version that priced them), then the reload (asked by `trigger`), then billing's catalog
    /// and documents, then the listeners.
    pub(crate) async fn put_in_force(
        &self,
        next: Arc<Catalog>,
        docs: ApiDocs,
        trigger: &str,
    ) -> Result<(), ServiceError> {
        let mut invoicing = self.invoicing();
        invoicing.catalog = Arc::clone(&next);
        invoicing.register_plan_versions(Utc::now()).await?;
        // Recorded before the catalog serves: whoever is served by it (an invoice, a status)
        // also finds this reload as the last one, not the one before.
        self.record(trigger, "applied", &next.version, &[]);
        if let Ok(mut r) = self.reloads.record.lock() {
            r.0 = Some(Utc::now());
        }
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
        Ok(())
    }

    /// Makes `version` the catalog of record in the billing store, which every other role and
    /// billing instance follows.
    async fn accept(&self, version: &str, text: &str, trigger: &str) -> Result<(), ServiceError> {
        let by = format!("billing {}: {trigger}", self.instance());
        if self
            .store
            .put_catalog_in_force(version, text, &by, Utc::now())
            .await?
        {
            tracing::info!(version, by, "catalog of record replaced");
        }
        self.report_running().await
    }

    /// The catalog of record (distributed mode: what every role follows).
    pub async fn catalog_of_record(
        &self,
    ) -> Result<peage_billing_store::StoredCatalog, ServiceError> {
        self.store
            .catalog_in_force()
            .await?
            .ok_or_else(|| ServiceError::NotFound("no catalog of record yet".into()))
    }

    /// Records what a role instance says it runs.
    pub async fn report_role(
        &self,
        role: &str,
        instance: &str,
        version: &str,
    ) -> Result<(), ServiceError> {
        let ok =
            |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
        if !(ok(role) && ok(instance) && ok(version)) {
            return Err(ServiceError::Invalid(
                "role, instance and running must be 1 to 128 visible ASCII characters".into(),
            ));
        }
        Ok(self
            .store
            .report_catalog(role, instance, version, Utc::now())
            .await?)
    }

    /// This instance's name, as it reports itself.
    pub fn instance(&self) -> String {
        self.reloads
            .instance
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default()
    }

    /// Names this instance (`billing` by default).
    pub fn set_instance(&self, name: &str) {
        if let Ok(mut i) = self.reloads.instance.lock() {
            *i = name.to_string();
        }
    }

    /// Records in the store the version this billing instance runs.
    async fn report_running(&self) -> Result<(), ServiceError> {
        let instance = self.instance();
        let instance = if instance.is_empty() {
            "billing".to_string()
        } else {
            instance
        };
        Ok(self
            .store
            .report_catalog("billing", &instance, &self.catalog().version, Utc::now())
            .await?)
    }

    /// Puts the store's catalog of record in force here when another billing instance accepted
    /// a new one (what each instance does every second in distributed mode). A text this
    /// instance cannot validate (a variable it lacks) is refused as a reload is, and reported.
    pub async fn adopt_catalog_of_record(&self) -> Result<bool, ServiceError> {
        let Some(source) = self.reloads.source.get().cloned() else {
            return Ok(false);
        };
        let Some(record) = self.store.catalog_in_force().await? else {
            return Ok(false);
        };
        if record.version == self.catalog().version {
            self.report_running().await?;
            return Ok(false);
        }
        let _turn = self.reloads.turn.lock().await;
        let before = self.catalog();
        if record.version == before.version {
            return Ok(false);
        }
        let trigger = format!("catalog of record {}", record.version);
        match source.parse(&record.text).await {
            Err(issues) => {
                if self.last_refused_version().as_deref() != Some(record.version.as_str()) {
                    for i in &issues {
                        tracing::error!(version = %record.version, field = %i.field, line = i.line, problem = %i.message, "the catalog of record does not validate here: this instance keeps its catalog");
                    }
                }
                self.record(&trigger, "refused", &before.version, &issues);
                if let Ok(mut r) = self.reloads.record.lock() {
                    if let Some(last) = r.1.as_mut() {
                        last.version = record.version.clone();
                    }
                }
                Ok(false)
            }
            Ok(Sourced { catalog, docs, .. }) => {
                let next = Arc::new(catalog);
                self.put_in_force(Arc::clone(&next), docs, &trigger).await?;
                tracing::info!(from = %before.version, to = %next.version, "catalog of record adopted");
                self.report_running().await?;
                Ok(true)
            }
        }
    }

    /// The version the last refused reload was about, to log a refusal once.
    fn last_refused_version(&self) -> Option<String> {
        let r = self.reloads.record.lock().ok()?;
        let last = r.1.as_ref()?;
        (last.outcome == "refused").then(|| last.version.clone())
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
        let problems: Vec<String> = issues
            .iter()
            .map(|i| format!("{}: {}", i.field, i.message))
            .collect();
        peage_telemetry::emit!(peage_telemetry::CatalogReloaded {
            outcome,
            version,
            trigger,
            detail: &problems.join("; "),
        });
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

    /// The catalog in force, the last reload, and what every role instance runs.
    pub async fn catalog_status(&self) -> Result<CatalogStatus, ServiceError> {
        let of_record = self.store.catalog_in_force().await?.map(|c| c.version);
        let roles = self.store.catalog_roles().await?;
        Ok(self.local_catalog_status(of_record, roles))
    }

    fn local_catalog_status(
        &self,
        of_record: Option<String>,
        roles: Vec<peage_billing_store::RoleCatalog>,
    ) -> CatalogStatus {
        let catalog = self.catalog();
        let (since, last_reload) = self
            .reloads
            .record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        CatalogStatus {
            of_record,
            roles,
            version: catalog.version.clone(),
            since: since.unwrap_or(self.started),
            apis: catalog.apis.len(),
            meters: catalog.meters.len(),
            plans: catalog.plans.len(),
            last_reload,
        }
    }
}
