//! What `peage up` and the `peage billing` role assemble alike: the control API, billing and
//! their background work (catalog watch, upkeep, webhooks), from one `peage.toml` and the
//! stores each mode provides. The modes differ only in what they hand in: the stores, where
//! accepted usage events go, the secrets, and whether the catalog of record is followed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peage_billing::service::events::UsageEventSink;
use peage_billing::{ControlApi, ControlSettings, RevocationHook};
use peage_billing_store::BillingStore;
use peage_core::catalog::LiveCatalog;
use peage_core::Catalog;
use peage_usage_store::UsageStore;
use tokio::sync::watch;

use crate::config::PeageConfig;

/// What a mode hands to [`start_billing`].
pub(crate) struct BillingParts {
    pub catalog: Arc<Catalog>,
    pub catalog_path: PathBuf,
    /// `peage up --demo`'s upstream, substituted into the demo catalog.
    pub demo_upstream: Option<String>,
    pub store: Arc<dyn BillingStore>,
    pub usage: Arc<dyn UsageStore>,
    pub admin_token: String,
    /// Called when a key is revoked (an embedded gateway drops it from its cache at once).
    pub on_revoke: Option<RevocationHook>,
    pub secrets: Arc<peage_billing::service::secrets::SecretBox>,
    /// Where `POST /v1/events` puts accepted usage events.
    pub events: Arc<dyn UsageEventSink>,
    /// Names this instance in the catalog's status.
    pub instance: String,
    /// Distributed: follow the catalog of record other instances may change.
    pub adopt_catalog: bool,
}

/// The control API in force, and its background work until the stop signal.
pub(crate) struct BillingNode {
    pub api: Arc<ControlApi>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BillingNode {
    /// Waits for the background work to finish after the stop signal.
    pub async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Builds the control API and starts the catalog watch, the upkeep (plan changes, overdue
/// invoices, automatic finalization, alerts, retention) and the webhook worker, all stopping
/// with `stop`.
pub(crate) async fn start_billing(
    config: &PeageConfig,
    parts: BillingParts,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<BillingNode> {
    let outbound = config.outbound.policy()?;
    let api = ControlApi::new(
        Arc::new(LiveCatalog::shared(Arc::clone(&parts.catalog))),
        Arc::clone(&parts.store),
        parts.usage,
        parts.admin_token,
        parts.on_revoke,
        ControlSettings {
            oauth: config.oauth.config(),
            issuer: config.billing.issuer()?,
            outbound: Arc::clone(&outbound),
            secrets: Arc::clone(&parts.secrets),
            credential_failures_per_minute: config.control.credential_failures_per_minute,
        },
    );
    api.set_api_docs(crate::up::api_docs(&parts.catalog, &parts.catalog_path)?);
    api.take_events(config.events.intake(parts.events)?);
    api.invoicing()
        .register_plan_versions(chrono::Utc::now())
        .await
        .map_err(|e| anyhow::anyhow!("recording plan versions: {e}"))?;
    // A plan edited while Péage was down: its partners move to the new version from now.
    api.follow_catalog()
        .await
        .map_err(|e| anyhow::anyhow!("moving partners to their plans' new versions: {e}"))?;
    api.take_catalog_source(Arc::new(crate::catalog_reload::CatalogFile {
        path: parts.catalog_path.clone(),
        demo_upstream: parts.demo_upstream,
    }));
    api.set_instance(&parts.instance);
    // The file this instance was started with becomes the catalog of record.
    api.reload_catalog("start")
        .await
        .map_err(|e| anyhow::anyhow!("recording the catalog in force: {e}"))?;
    if let Some(url) = &config.billing.gateway_url {
        api.billing.set_gateway_url(url);
    }
    // Reloads on a change of the catalog file and on SIGHUP (and POST /v1/catalog/reload).
    let watch =
        crate::catalog_reload::watch(Arc::clone(&api.billing), &parts.catalog_path, stop.clone())?;
    let upkeep = crate::catalog_reload::upkeep(
        Arc::clone(&api.billing),
        Duration::from_secs(1),
        parts.adopt_catalog,
        config.billing.auto_finalize(),
        config.billing.alerts_every(),
        config.retention.months()?,
        stop.clone(),
    );
    let mut webhook_stop = stop;
    let webhooks = tokio::spawn(peage_billing::service::webhooks::run_worker(
        parts.store,
        peage_billing::service::webhooks::WorkerSettings {
            schedule: config.billing.retry_schedule(),
            poll: Duration::from_millis(config.billing.webhook_poll_ms),
            policy: outbound,
            secrets: parts.secrets,
        },
        async move {
            let _ = webhook_stop.wait_for(|s| *s).await;
        },
    ));
    Ok(BillingNode {
        api,
        tasks: vec![watch, upkeep, webhooks],
    })
}
