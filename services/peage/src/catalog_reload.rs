//! Reloading the catalog file while the process serves (docs/catalog.md, "Changing a live
//! catalog"): the file is read and validated whole on a change of the file, on SIGHUP, and on
//! `POST /v1/catalog/reload`; billing puts a valid one in force and tells the in-process
//! gateway, and refuses an invalid one with its problems while the running catalog serves on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use peage_billing::service::catalog_state::{CatalogSource, Sourced};
use peage_billing::Billing;
use peage_core::catalog::{CatalogError, CatalogIssue};
use peage_core::Catalog;

/// The catalog file, read as start-up reads it.
pub struct CatalogFile {
    pub path: PathBuf,
    /// `${PEAGE_DEMO_UPSTREAM}` in `peage up --demo`.
    pub demo_upstream: Option<String>,
}

impl CatalogFile {
    fn problem(&self, field: &str, message: String) -> Vec<CatalogIssue> {
        vec![CatalogIssue {
            file: self.path.display().to_string(),
            line: 0,
            column: 0,
            field: field.to_string(),
            message,
        }]
    }

    fn read_now(&self) -> Result<Sourced, Vec<CatalogIssue>> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| self.problem("(file)", format!("cannot read it: {e}")))?;
        self.parse_now(text)
    }

    /// `text` validated as this file would be: this process's variables, the documents beside
    /// the file.
    fn parse_now(&self, text: String) -> Result<Sourced, Vec<CatalogIssue>> {
        let file = self.path.display().to_string();
        let vars = |name: &str| {
            if name == crate::demo::UPSTREAM_VAR {
                if let Some(u) = &self.demo_upstream {
                    return Some(u.clone());
                }
            }
            std::env::var(name).ok()
        };
        let catalog =
            Catalog::parse(&file, &text, &vars).map_err(|CatalogError { issues }| issues)?;
        let docs = crate::up::api_docs(&catalog, &self.path)
            .map_err(|e| self.problem("openapi", format!("{e:#}")))?;
        Ok(Sourced {
            catalog,
            docs,
            text,
        })
    }
}

#[async_trait]
impl CatalogSource for CatalogFile {
    async fn read(&self) -> Result<Sourced, Vec<CatalogIssue>> {
        self.read_now()
    }

    async fn parse(&self, text: &str) -> Result<Sourced, Vec<CatalogIssue>> {
        self.parse_now(text.to_string())
    }
}

/// Billing's upkeep, every `every` until `stop`: applies the scheduled plan changes that are
/// due, reports invoices that fell overdue (`invoice.overdue`, once each), finalizes drafts
/// past their grace period (every `auto_finalize` interval, when on), checks spend and usage
/// alerts (every `alerts_every`) and, with `adopt_catalog` (distributed mode), puts the store's
/// catalog of record in force whenever another billing instance accepted a new one.
/// How often retention looks for months to drop (a month ends at most once between passes
/// that matter; each pass reads the store's months).
const RETENTION_EVERY: Duration = Duration::from_secs(6 * 3600);

#[allow(clippy::too_many_arguments)]
pub fn upkeep(
    billing: Arc<Billing>,
    every: Duration,
    adopt_catalog: bool,
    auto_finalize: Option<(
        peage_billing::service::auto_finalize::AutoFinalize,
        Duration,
    )>,
    alerts_every: Duration,
    retention_months: Option<u32>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut next_finalize = tokio::time::Instant::now();
        let mut next_alerts = tokio::time::Instant::now();
        let mut next_retention = tokio::time::Instant::now();
        loop {
            if adopt_catalog {
                if let Err(e) = billing.adopt_catalog_of_record().await {
                    tracing::warn!(error = %e, "cannot read the catalog of record; the running catalog serves on");
                }
            }
            // After the catalog: a change applies the plan version in force.
            if let Err(e) = billing.apply_due_plan_changes().await {
                tracing::warn!(error = %e, "cannot apply the scheduled plan changes now; retrying");
            }
            if let Err(e) = billing.mark_overdue(chrono::Utc::now()).await {
                tracing::warn!(error = %e, "cannot look for overdue invoices now; retrying");
            }
            if let Some((settings, every)) = auto_finalize {
                if tokio::time::Instant::now() >= next_finalize {
                    next_finalize = tokio::time::Instant::now() + every;
                    if let Err(e) = billing.auto_finalize(chrono::Utc::now(), settings).await {
                        tracing::warn!(error = %e, "automatic finalization failed; trying again next pass");
                    }
                }
            }
            if tokio::time::Instant::now() >= next_alerts {
                next_alerts = tokio::time::Instant::now() + alerts_every;
                if let Err(e) = billing.check_alerts(chrono::Utc::now()).await {
                    tracing::warn!(error = %e, "cannot check spend and usage alerts now; trying again next pass");
                }
            }
            if let Some(months) = retention_months {
                if tokio::time::Instant::now() >= next_retention {
                    next_retention = tokio::time::Instant::now() + RETENTION_EVERY;
                    if let Err(e) = billing.apply_retention(chrono::Utc::now(), months).await {
                        tracing::warn!(error = %e, "retention failed; trying again later");
                    }
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

/// Reloads on a change of the file (its directory is watched, so an editor's save by rename
/// counts) and on SIGHUP, until `stop`. A burst of changes makes one reload, 200 ms after the
/// last.
pub fn watch(
    billing: Arc<Billing>,
    path: &Path,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watched = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = watched
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let file_name = watched.file_name().map(|n| n.to_os_string());
    let live = Arc::clone(&billing);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // The catalog itself, or an OpenAPI document it names (named relative to it).
        let catalog = live.catalog();
        let docs: Vec<&str> = catalog
            .apis
            .iter()
            .flat_map(|a| &a.versions)
            .filter_map(|v| v.openapi.as_deref())
            .collect();
        let ours = event.paths.iter().any(|p| {
            let name = p.file_name().map(|n| n.to_os_string());
            name == file_name || docs.iter().any(|d| p.ends_with(d))
        });
        if ours {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        // Owned by the task: watching stops when it ends.
        let _watcher = watcher;
        loop {
            #[cfg(unix)]
            let sighup = hangup.recv();
            #[cfg(not(unix))]
            let sighup = std::future::pending::<Option<()>>();
            let trigger = tokio::select! {
                _ = stop.changed() => return,
                Some(()) = rx.recv() => {
                    // Let the save finish: wait until the file is quiet for 200 ms.
                    while let Ok(Some(())) =
                        tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
                    {}
                    "file changed"
                }
                Some(()) = sighup => "SIGHUP",
            };
            // Refusals are logged with their problems by billing; the old catalog serves on.
            let _ = billing.reload_catalog(trigger).await;
        }
    }))
}
