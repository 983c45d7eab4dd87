//! What `peage up` and the `peage billing` role assemble alike: the control API, billing and
//! their background work (catalog watch, upkeep, webhooks), from one `peage.toml` and the
//! stores each mode provides. The modes differ only in what they hand in: the stores, where
//! accepted usage events go, the secrets, and whether the catalog of record is followed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peage_billing::service::events::{EventsIntake, KnownKeys, UsageEventSink};
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
    /// What the events route knows of the stored keys without asking the usage store
    /// (distributed: the key filter fed by the usage topic, usage_keys.rs).
    pub known_keys: Option<Arc<dyn KnownKeys>>,
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
    api.take_events(EventsIntake {
        known_keys: parts.known_keys,
        ..config.events.intake(parts.events)?
    });
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

/// The roles one process runs: `peage gateway` is a node of one role, `peage run --roles
/// gateway,billing,aggregator` a node of several, each on the backends `peage.toml` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    pub gateway: bool,
    pub aggregator: bool,
    pub billing: bool,
}

impl Roles {
    pub const GATEWAY: Roles = Roles {
        gateway: true,
        aggregator: false,
        billing: false,
    };
    pub const AGGREGATOR: Roles = Roles {
        gateway: false,
        aggregator: true,
        billing: false,
    };
    pub const BILLING: Roles = Roles {
        gateway: false,
        aggregator: false,
        billing: true,
    };

    fn count(&self) -> usize {
        [self.gateway, self.aggregator, self.billing]
            .iter()
            .filter(|r| **r)
            .count()
    }
}

impl std::str::FromStr for Roles {
    type Err = String;

    fn from_str(s: &str) -> Result<Roles, String> {
        let mut roles = Roles::default();
        for r in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match r {
                "gateway" => roles.gateway = true,
                "aggregator" => roles.aggregator = true,
                "billing" => roles.billing = true,
                other => {
                    return Err(format!(
                        "{other:?} is not a role: gateway, aggregator or billing"
                    ))
                }
            }
        }
        if roles.count() == 0 {
            return Err("name at least one role: gateway, aggregator, billing".into());
        }
        Ok(roles)
    }
}

/// One role's metrics and readiness.
type RolePart = (
    Arc<dyn Fn() -> String + Send + Sync>,
    crate::metrics::Readiness,
);

/// What each role of a node hands to the node's one operations listener: its metrics and its
/// readiness checks. Until every role has, `/readyz` says the node is starting.
pub struct Ops {
    parts: std::sync::Mutex<Vec<RolePart>>,
    expected: usize,
}

impl Ops {
    fn new(expected: usize) -> Ops {
        Ops {
            parts: Default::default(),
            expected,
        }
    }

    pub fn add(
        &self,
        exposition: Arc<dyn Fn() -> String + Send + Sync>,
        readiness: crate::metrics::Readiness,
    ) {
        if let Ok(mut p) = self.parts.lock() {
            p.push((exposition, readiness));
        }
    }

    fn parts(&self) -> Vec<RolePart> {
        self.parts.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Every role's metrics in one exposition, families merged.
    fn exposition(&self) -> String {
        let texts: Vec<String> = self.parts().iter().map(|(e, _)| e()).collect();
        crate::metrics::merge_expositions(&texts)
    }

    async fn readiness(&self) -> Vec<crate::metrics::Check> {
        let parts = self.parts();
        let mut checks = Vec::new();
        if parts.len() < self.expected {
            checks.push(crate::metrics::Check::new(
                "start",
                false,
                format!("{} of {} roles started", parts.len(), self.expected),
            ));
        }
        for (_, ready) in parts {
            checks.extend(ready().await);
        }
        checks
    }
}

/// Runs `roles` in this process until `shutdown`, with one operations listener
/// (`metrics.listen`) for all of them. A role that fails stops the node with its error.
pub async fn run(
    config: &PeageConfig,
    roles: Roles,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ops = Arc::new(Ops::new(roles.count()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(listen) = config.metrics.listen {
        let (scraped, probed) = (Arc::clone(&ops), Arc::clone(&ops));
        let names: Vec<&str> = [
            (roles.gateway, "gateway"),
            (roles.aggregator, "aggregator"),
            (roles.billing, "billing"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        let role = names.join(",");
        crate::metrics::serve(
            listen,
            Arc::new(move || scraped.exposition() + &crate::metrics::build_info(&role)),
            Arc::new(move || {
                let ops = Arc::clone(&probed);
                Box::pin(async move { ops.readiness().await })
            }),
            stopped(stop_rx.clone()),
        )
        .await?;
    }
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let billing = async {
        if roles.billing {
            crate::roles::billing(config, &ops, stopped(stop_rx.clone())).await
        } else {
            Ok(())
        }
    };
    let gateway = async {
        if roles.gateway {
            crate::roles::gateway(config, &ops, stopped(stop_rx.clone())).await
        } else {
            Ok(())
        }
    };
    let aggregator = async {
        if roles.aggregator {
            crate::roles::aggregator(config, &ops, stopped(stop_rx.clone())).await
        } else {
            Ok(())
        }
    };
    tokio::try_join!(billing, gateway, aggregator)?;
    Ok(())
}
