//! `peage up`: every role in one process, on one data directory.
//!
//! Data directory layout: `log/` (event log), `usage.db`, `billing.db`, `dead-letter.jsonl`,
//! `admin-token`, and with `--demo` also `catalog.toml` and `demo.json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_trait::async_trait;
use peage_aggregator::{Aggregator, AggregatorConfig, DeadLetterFile, UsageAggregator};
use peage_billing::{
    service::{self as billing_service, ApiDocs},
    OAuthConfig,
};
use peage_billing_store::{BillingStore, DashboardRole, SqliteBillingStore};
use peage_core::ids::api_key;
use peage_core::quota::{Lease, LeaseRequest};
use peage_core::{Catalog, Env};
use peage_eventlog::{EmbeddedLog, EventEmitter, EventLog, LogOptions};
use peage_gateway::quota::LeaseError;
use peage_gateway::{
    Gateway, GatewayServer, JwtConfig, KeyCache, KeyLookupError, KeyResolver, QuotaAuthority,
    Quotas, ResolvedIssuer, ResolvedKey,
};
use peage_usage_store::SqliteUsageStore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::PeageConfig;
use crate::demo;

/// `peage up`'s command line: the same `peage.toml` as every role (embedded backends, all
/// roles in one process), then `--set` and the flags below, each of which overrides one key.
#[derive(Debug, clap::Args)]
pub struct UpOptions {
    /// A configuration file (docs/configuration.md). Without one, every key has its default,
    /// `PEAGE_<SECTION>__<KEY>` variables and the flags below set them.
    #[arg(long, env = "PEAGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides one key, `section.key=value` (`--set gateway.key_cache_ttl_ms=1000`);
    /// repeatable, after the file and the environment.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Where the event log, usage and billing state live (`embedded.data_dir`).
    #[arg(long, env = "PEAGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Partner-facing gateway address; port 0 picks a free port (`gateway.listen`).
    #[arg(long)]
    pub gateway_listen: Option<SocketAddr>,
    /// Control API address (`control.listen`).
    #[arg(long)]
    pub control_listen: Option<SocketAddr>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`metrics.listen`).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Catalog file (APIs, meters, plans), `catalog.path`. Default: `<data-dir>/catalog.toml`.
    #[arg(long, env = "PEAGE_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Admin token for the control API (`control.admin_token`). Default: generated once, kept
    /// in `<data-dir>/admin-token`.
    #[arg(long, env = "PEAGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Names this gateway in the events it emits (`gateway.id`).
    #[arg(long)]
    pub gateway_id: Option<String>,
    /// Time allowed for an upstream's response headers, in ms; 504 past it
    /// (`gateway.upstream_timeout_ms`).
    #[arg(long)]
    pub upstream_timeout_ms: Option<u64>,
    /// Largest request body the gateway accepts; 413 beyond it (`gateway.max_request_body_bytes`).
    #[arg(long)]
    pub max_request_body_bytes: Option<u64>,
    /// PEM file of CA certificates trusted for https upstreams besides the system's
    /// (`gateway.upstream_ca_file`).
    #[arg(long)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Seed a demo API (served by a built-in upstream), a partner and a live key, and write
    /// `<data-dir>/demo.json`.
    #[arg(long)]
    pub demo: bool,
}

impl UpOptions {
    /// The configuration `peage up` runs with: the file (if any), the environment, `--set`,
    /// then the flags, in that order of precedence from lowest to highest.
    pub fn config(&self) -> anyhow::Result<PeageConfig> {
        let mut c = crate::config::load_with(self.config.as_deref(), std::env::vars(), &self.sets)?;
        if let Some(d) = &self.data_dir {
            c.embedded.data_dir = d.clone();
        }
        if let Some(a) = self.gateway_listen {
            c.gateway.listen = a;
        }
        if let Some(a) = self.control_listen {
            c.control.listen = a;
        }
        if let Some(a) = self.metrics_listen {
            c.metrics.listen = Some(a);
        }
        if let Some(p) = &self.catalog {
            c.catalog.path = Some(p.clone());
        }
        if let Some(t) = &self.admin_token {
            c.control.admin_token = Some(t.clone());
        }
        if let Some(id) = &self.gateway_id {
            c.gateway.id = id.clone();
        }
        if let Some(ms) = self.upstream_timeout_ms {
            c.gateway.upstream_timeout_ms = ms;
        }
        if let Some(b) = self.max_request_body_bytes {
            c.gateway.max_request_body_bytes = b;
        }
        if let Some(f) = &self.upstream_ca_file {
            c.gateway.upstream_ca_file = Some(f.clone());
        }
        Ok(c)
    }
}

/// What `--demo` writes to `<data-dir>/demo.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DemoInfo {
    pub gateway_url: String,
    pub control_url: String,
    pub admin_token: String,
    pub partner_id: String,
    pub api_key: String,
    /// The process that wrote this file, so scripts can tell a fresh file from a stale one.
    pub pid: u32,
}

/// The CA certificates of `gateway.upstream_ca_file`, if one is configured.
pub(crate) fn upstream_roots(
    path: Option<&Path>,
) -> anyhow::Result<Vec<peage_gateway::Certificate>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the upstream CA file {}", path.display()))?;
    peage_gateway::parse_pem_certificates(&pem)
        .map_err(|e| anyhow::anyhow!("upstream CA file {}: {e}", path.display()))
}

/// The gateway asks billing state for keys directly when they share a process.
pub(crate) struct StoreKeys(pub(crate) Arc<dyn BillingStore>);

impl StoreKeys {
    async fn resolved(
        &self,
        k: peage_billing_store::ApiKey,
    ) -> Result<ResolvedKey, KeyLookupError> {
        let k = billing_service::gateway_key(self.0.as_ref(), k)
            .await
            .map_err(unavailable)?;
        Ok(ResolvedKey {
            key_id: k.key_id.to_string(),
            partner_id: k.partner_id.to_string(),
            env: k.env,
            revoked: k.revoked,
            expires_at: k.expires_at,
            plan_id: k.plan_id,
            scopes: None,
        })
    }
}

/// The billing store failed a key lookup.
fn unavailable(e: impl std::fmt::Display) -> KeyLookupError {
    KeyLookupError::Unavailable(e.to_string())
}

#[async_trait]
impl KeyResolver for StoreKeys {
    async fn resolve(&self, secret_hash: &str) -> Result<Option<ResolvedKey>, KeyLookupError> {
        match self.0.key_by_hash(secret_hash).await.map_err(unavailable)? {
            Some(k) => Ok(Some(self.resolved(k).await?)),
            None => Ok(None),
        }
    }

    async fn resolve_id(&self, key_id: &str) -> Result<Option<ResolvedKey>, KeyLookupError> {
        let Ok(key_id) = peage_core::ids::KeyId::parse(key_id) else {
            return Ok(None);
        };
        match self.0.key(&key_id).await.map_err(unavailable)? {
            Some(k) => Ok(Some(self.resolved(k).await?)),
            None => Ok(None),
        }
    }

    async fn issuer(&self, iss: &str) -> Result<Option<ResolvedIssuer>, KeyLookupError> {
        let Some(i) = self.0.issuer(iss).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let i = billing_service::gateway_issuer(self.0.as_ref(), i)
            .await
            .map_err(unavailable)?;
        Ok(Some(ResolvedIssuer {
            id: i.id.to_string(),
            partner_id: i.partner_id.to_string(),
            plan_id: i.plan_id,
            jwks_url: i.jwks_url,
            algorithm: i.algorithm,
            audience: i.audience,
            env: i.env,
        }))
    }
}

/// The gateway accepts Péage's tokens as the control API at `control_url` issues them.
pub(crate) fn jwt_config(oauth: &OAuthConfig, control_url: &str) -> JwtConfig {
    JwtConfig {
        issuer: oauth.issuer.clone(),
        audience: oauth.audience.clone(),
        jwks_url: format!(
            "{}/.well-known/jwks.json",
            control_url.trim_end_matches('/')
        ),
        leeway: Duration::from_secs(30),
    }
}

/// Quota leases straight from the control API in the same process (embedded mode).
pub(crate) struct InProcessQuotas(pub(crate) Arc<peage_billing::Billing>);

#[async_trait]
impl QuotaAuthority for InProcessQuotas {
    async fn lease(&self, req: &LeaseRequest) -> Result<Lease, LeaseError> {
        self.0.lease(req).await.map_err(|e| {
            if e.is_refusal() {
                LeaseError::Refused(e.to_string())
            } else {
                LeaseError::Unreachable(e.to_string())
            }
        })
    }
}

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Held for as long as `peage up` runs on `dir`: a second `peage up`, or a key rotation, on
/// the same directory is refused rather than racing it. The OS releases it if the process dies.
pub(crate) fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("peage.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by a running `peage up`; stop it first",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// `control.admin_token` (or its file), else the token generated once into the data directory.
fn admin_token(config: &PeageConfig) -> anyhow::Result<String> {
    if config.control.admin_token.is_some() || config.control.admin_token_file.is_some() {
        return config.control.token();
    }
    let path = config.embedded.data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => {
            let token = format!("adm_{}", hex::encode(rand::random::<[u8; 24]>()));
            write_private(&path, token.as_bytes())?;
            tracing::info!(path = %path.display(), "generated an admin token for the control API");
            Ok(token)
        }
    }
}

pub(crate) fn load_catalog(path: &Path, demo_upstream: Option<&str>) -> anyhow::Result<Catalog> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the catalog {}", path.display()))?;
    let vars = |name: &str| {
        if name == demo::UPSTREAM_VAR {
            if let Some(u) = demo_upstream {
                return Some(u.to_string());
            }
        }
        std::env::var(name).ok()
    };
    Catalog::parse(&path.display().to_string(), &text, &vars).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Reads the OpenAPI document (JSON or YAML) each API version of the catalog names, relative to
/// the catalog file; an unreadable or invalid document stops the start with its path.
pub(crate) fn api_docs(catalog: &Catalog, catalog_path: &Path) -> anyhow::Result<ApiDocs> {
    let dir = catalog_path.parent().unwrap_or(Path::new("."));
    let mut docs = ApiDocs::new();
    for api in &catalog.apis {
        for v in &api.versions {
            let Some(rel) = &v.openapi else { continue };
            let path = dir.join(rel);
            let what = || {
                format!(
                    "api[{}].versions[{}].openapi {}",
                    api.name,
                    v.id,
                    path.display()
                )
            };
            let text = std::fs::read_to_string(&path).with_context(what)?;
            let doc: serde_json::Value = if text.trim_start().starts_with('{') {
                serde_json::from_str(&text).with_context(what)?
            } else {
                serde_norway::from_str(&text).with_context(what)?
            };
            if doc.get("openapi").and_then(|o| o.as_str()).is_none() {
                bail!(
                    "{}: not an OpenAPI document (no `openapi` version field)",
                    what()
                );
            }
            docs.insert((api.name.clone(), v.id.clone()), doc);
        }
    }
    Ok(docs)
}

/// Reuses the demo partner and key from an earlier run on this data directory, or creates them.
/// The staff member `peage up` prints a sign-in link for: the first active admin, or, on a
/// store without staff yet, a new `admin@localhost` (rename or replace them with `peage staff`).
/// Whoever can start `peage up` on a data directory owns it already.
async fn first_admin(
    billing: &dyn BillingStore,
) -> anyhow::Result<Option<peage_billing_store::StaffMember>> {
    let staff = billing.staff().await?;
    if let Some(m) = staff
        .iter()
        .find(|m| m.role == peage_billing_store::StaffRole::Admin && m.disabled_at.is_none())
    {
        return Ok(Some(m.clone()));
    }
    if !staff.is_empty() {
        // Someone disabled or demoted every admin: start all the same, and say how to mend it.
        return Ok(None);
    }
    peage_billing::service::staff::create(billing, "admin@localhost", "Administrator", "admin")
        .await
        .map(Some)
        .map_err(|e| anyhow::anyhow!("creating the first admin: {e}"))
}

async fn demo_partner(
    store: &Arc<dyn BillingStore>,
    catalog: &Catalog,
    data_dir: &Path,
) -> anyhow::Result<(String, String)> {
    if let Ok(text) = std::fs::read_to_string(data_dir.join("demo.json")) {
        if let Ok(prev) = serde_json::from_str::<DemoInfo>(&text) {
            let key = store
                .key_by_hash(&api_key::secret_hash(&prev.api_key))
                .await?;
            if key.is_some_and(|k| k.revoked_at.is_none() && k.partner_id == prev.partner_id) {
                return Ok((prev.partner_id, prev.api_key));
            }
            // The key printed last time was rotated or revoked (its new secret went to whoever
            // rotated it): the same demo partner gets a new key, never a second partner.
            if let Ok(id) = prev.partner_id.parse::<peage_core::PartnerId>() {
                if store.partner(&id).await?.is_some() {
                    let (_, secret) =
                        billing_service::issue_key(store.as_ref(), &id, Env::Live, Some("demo"))
                            .await?;
                    return Ok((prev.partner_id, secret));
                }
            }
        }
    }
    let partner =
        billing_service::create_partner(store.as_ref(), catalog, "Demo Partner", "demo", None)
            .await?;
    let (_, secret) =
        billing_service::issue_key(store.as_ref(), &partner.id, Env::Live, Some("demo")).await?;
    Ok((partner.id.to_string(), secret))
}

pub async fn run(
    options: UpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = options.config()?;
    let demo = options.demo;
    let data_dir = &config.embedded.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let _lock = lock_data_dir(data_dir)?;

    // One shutdown signal fans out to every server.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let demo_upstream = if demo {
        Some(demo::spawn("127.0.0.1:0".parse()?, stopped(stop_rx.clone())).await?)
    } else {
        None
    };
    let catalog_path = config
        .catalog
        .path
        .clone()
        .unwrap_or_else(|| data_dir.join("catalog.toml"));
    if demo && config.catalog.path.is_none() && !catalog_path.exists() {
        std::fs::write(&catalog_path, demo::CATALOG)
            .with_context(|| format!("writing {}", catalog_path.display()))?;
    }
    // The demo API's document, which the demo catalog (and catalogs made from it) points at.
    let demo_doc = catalog_path
        .parent()
        .unwrap_or(data_dir)
        .join("demo-openapi.yaml");
    if demo && !demo_doc.exists() {
        std::fs::write(&demo_doc, demo::OPENAPI)
            .with_context(|| format!("writing {}", demo_doc.display()))?;
    }
    if !catalog_path.exists() {
        bail!("no catalog at {}: pass --catalog FILE, or run `peage up --demo` to start with the demo catalog", catalog_path.display());
    }
    let catalog = Arc::new(load_catalog(&catalog_path, demo_upstream.as_deref())?);
    tracing::info!(path = %catalog_path.display(), version = %catalog.version, apis = catalog.apis.len(), meters = catalog.meters.len(), plans = catalog.plans.len(), "catalog loaded");
    if demo && catalog.plan("demo").is_none() {
        bail!(
            "--demo needs a plan with id \"demo\" in {}",
            catalog_path.display()
        );
    }

    let token = admin_token(&config)?;
    let billing: Arc<dyn BillingStore> = Arc::new(
        SqliteBillingStore::open(&data_dir.join("billing.db"))
            .await
            .context("opening billing.db")?,
    );
    let secrets = crate::secrets_cli::embedded_secrets(data_dir, &config.secrets)?;
    crate::secrets_cli::reseal(billing.as_ref(), &secrets).await?;
    let usage = Arc::new(
        SqliteUsageStore::open(&data_dir.join("usage.db"))
            .await
            .context("opening usage.db")?,
    );
    // Synced every 100 ms rather than per batch, as the distributed gateway's spool: a killed
    // process loses nothing (the kernel has every write); a power cut, up to 100 ms of events.
    let log = EmbeddedLog::open_with(
        data_dir.join("log"),
        LogOptions {
            sync_interval: Duration::from_millis(LOG_SYNC_INTERVAL_MS),
            ..Default::default()
        },
    )
    .context("opening the event log")?;
    // Usage events from POST /v1/events: their own log, synced on every append, so an
    // accepted event is on disk before the answer.
    let usage_log =
        EmbeddedLog::open(data_dir.join("usage-log")).context("opening the usage event log")?;

    let (agg_stop_tx, agg_stop_rx) = watch::channel(false);
    let aggregator_running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let aggregator_stats: AggregatorStatsSlot = Arc::default();
    let (calls_log, events_log) = (log.clone(), usage_log.clone());
    let aggregator_task = background_aggregator(
        Arc::clone(&aggregator_running),
        Arc::clone(&aggregator_stats),
        log.consumer("aggregator").await?,
        usage_log.consumer("usage-aggregator").await?,
        data_dir.join("usage.db"),
        data_dir.join("dead-letter.jsonl"),
        agg_stop_rx,
    )?;

    let log: Arc<dyn EventLog> = Arc::new(log);
    let emitter = EventEmitter::start(log, 65_536);
    let keys = KeyCache::with_stale(
        Arc::new(StoreKeys(Arc::clone(&billing))),
        Duration::from_millis(config.gateway.key_cache_ttl_ms),
        Duration::from_millis(config.gateway.key_stale_ms),
    );
    let on_revoke: peage_billing::RevocationHook = {
        let keys = keys.clone();
        Arc::new(move || keys.invalidate())
    };
    let control_listener = tokio::net::TcpListener::bind(config.control.listen)
        .await
        .with_context(|| format!("control API cannot listen on {}", config.control.listen))?;
    let control_url = format!("http://{}", control_listener.local_addr()?);
    let oauth = config.oauth.config();
    let outbound = config.outbound.policy()?;
    let node = crate::node::start_billing(
        &config,
        crate::node::BillingParts {
            catalog: Arc::clone(&catalog),
            catalog_path: catalog_path.clone(),
            demo_upstream: demo_upstream.clone(),
            store: Arc::clone(&billing),
            usage: usage.clone(),
            admin_token: token.clone(),
            on_revoke: Some(on_revoke),
            secrets,
            events: Arc::new(crate::events_sink::EmbeddedEvents(usage_log.clone())),
            // The embedded store has a key filter of its own (usage-store key_filter.rs).
            known_keys: None,
            instance: "up".into(),
            adopt_catalog: false,
        },
        stop_rx.clone(),
    )
    .await?;
    let control = Arc::clone(&node.api);
    let quotas = Quotas::new(
        Arc::new(InProcessQuotas(Arc::clone(&control.billing))),
        config.gateway.quota_config(),
        config.gateway.id.clone(),
    );
    let quota_stats = quotas.stats();
    let section = &config.gateway;
    let mut gateway_config = section.gateway_config(jwt_config(&oauth, &control_url))?;
    gateway_config.outbound.partner_urls = outbound;
    let gateway = Gateway::new(
        Arc::clone(&catalog),
        keys,
        emitter.clone(),
        Some(quotas),
        gateway_config,
    );
    // A reloaded catalog reaches the gateway's routes, plans and limits at once.
    control.on_catalog({
        let gateway = Arc::clone(&gateway);
        Arc::new(move |c| gateway.set_catalog(c))
    });
    if let Some(listen) = config.metrics.listen {
        serve_operations(
            listen,
            Operations {
                gateway: Arc::clone(&gateway),
                control: Arc::clone(&control),
                emitter: emitter.clone(),
                quota_stats,
                aggregator_stats,
                billing: Arc::clone(&billing),
                logs: [
                    ("aggregator", "calls", calls_log),
                    ("usage-aggregator", "usage-events", events_log),
                ],
                aggregator_running,
            },
            stopped(stop_rx.clone()),
        )
        .await?;
    }
    let gateway_server = GatewayServer::bind(gateway, section.listen)
        .with_context(|| format!("gateway cannot listen on {}", section.listen))?;
    let scheme = if section.tls_cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    let gateway_url = format!("{scheme}://{}", gateway_server.local_addr());
    // Its own address, unless the configuration names a public one (a proxy in front).
    if config.billing.gateway_url.is_none() {
        control.billing.set_gateway_url(&gateway_url);
    }
    let control_server = tokio::spawn(peage_billing::serve_router(
        control_listener,
        control.router().merge(peage_dashboard::router()),
        stopped(stop_rx.clone()),
    ));
    tracing::info!(gateway = %gateway_url, control = %control_url, data_dir = %data_dir.display(), "peage is up");
    println!("Péage is up.\n  gateway:     {gateway_url}\n  control API: {control_url}\n  dashboard:   {control_url}/app\n  data:        {}", data_dir.display());
    match first_admin(billing.as_ref()).await? {
        Some(admin) => {
            let admin_link = peage_billing::service::sessions::sign_in_link(
                billing.as_ref(),
                DashboardRole::Staff {
                    staff_id: admin.id.clone(),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating a sign-in link: {e}"))?;
            println!(
                "  admin sign-in for {} (works once, for 15 minutes): {control_url}{}",
                admin.email, admin_link.path
            );
        }
        None => println!(
            "  no active admin among the staff: `peage staff set <email> --enable` or `peage staff add … --role admin` (the admin token still works)"
        ),
    }

    if demo {
        let (partner_id, api_key) = demo_partner(&billing, &catalog, data_dir).await?;
        let info = DemoInfo {
            gateway_url: gateway_url.clone(),
            control_url: control_url.clone(),
            admin_token: token.clone(),
            partner_id: partner_id.clone(),
            api_key: api_key.clone(),
            pid: std::process::id(),
        };
        let partner_link = peage_billing::service::sessions::sign_in_link(
            billing.as_ref(),
            DashboardRole::Partner {
                partner_id: partner_id
                    .parse()
                    .map_err(|e| anyhow::anyhow!("the demo partner: {e}"))?,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating a sign-in link: {e}"))?;
        println!(
            "  demo partner sign-in (works once, for 15 minutes): {control_url}{}",
            partner_link.path
        );
        write_private(
            &data_dir.join("demo.json"),
            &serde_json::to_vec_pretty(&info)?,
        )?;
        println!(
            "\nDemo ready (also in {}):\n\n  curl -H 'Authorization: Bearer {api_key}' {gateway_url}/demo/v1/hello\n\n  curl -H 'Authorization: Bearer {token}' {control_url}/v1/partners/{partner_id}/usage\n  curl -H 'Authorization: Bearer {token}' {control_url}/v1/partners/{partner_id}/invoices/upcoming\n",
            data_dir.join("demo.json").display()
        );
    }

    shutdown.await;
    println!("Shutting down: draining calls, flushing events…");
    let _ = stop_tx.send(true);
    gateway_server.stop().await;
    match control_server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "control API server failed"),
        Err(e) => tracing::error!(error = %e, "control API server panicked"),
    }
    node.stopped().await;
    // Every call has finished: put its event in the log, then let the aggregator drain the log.
    emitter.flush().await;
    let _ = agg_stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(30), aggregator_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "aggregator failed; the log keeps its events for the next start")
        }
        Ok(Err(_)) => {
            tracing::error!("aggregator panicked; the log keeps its events for the next start")
        }
        Err(_) => tracing::warn!(
            "aggregator did not drain within 30 s; the log keeps the rest for the next start"
        ),
    }
    println!("Stopped cleanly.");
    Ok(())
}

/// The embedded aggregator's counters (calls, usage events), once its thread has built it.
type AggregatorStatsSlot = Arc<
    std::sync::OnceLock<(
        Arc<peage_aggregator::AggregatorStats>,
        Arc<peage_aggregator::AggregatorStats>,
    )>,
>;

/// What `peage up`'s `/metrics` and `/readyz` look at.
struct Operations {
    gateway: Arc<Gateway>,
    control: Arc<peage_billing::ControlApi>,
    emitter: EventEmitter,
    quota_stats: Arc<peage_gateway::quota::QuotaStats>,
    aggregator_stats: AggregatorStatsSlot,
    billing: Arc<dyn BillingStore>,
    /// (consumer group, log name, log) of the embedded aggregator's two consumers.
    logs: [(&'static str, &'static str, EmbeddedLog); 2],
    aggregator_running: Arc<std::sync::atomic::AtomicBool>,
}

impl Operations {
    /// Records each embedded consumer has not processed yet (its log's single partition 0).
    fn lag(&self) -> Vec<(String, String, i32, i64)> {
        self.logs
            .iter()
            .map(|(group, name, log)| {
                let done = log.committed_offset(group).unwrap_or(0);
                let lag = log.written_offset().saturating_sub(done);
                (group.to_string(), name.to_string(), 0, lag as i64)
            })
            .collect()
    }
}

/// `/metrics`, `/healthz` and `/readyz` of `peage up`: the gateway's metrics, the internal
/// events of billing and the control API, and the embedded aggregator's lag.
async fn serve_operations(
    listen: SocketAddr,
    ops: Operations,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use crate::metrics;
    let ops = Arc::new(ops);
    let scraped = Arc::clone(&ops);
    let exposition = move || {
        let mut samples = metrics::gateway_samples(scraped.emitter.stats(), &scraped.quota_stats);
        samples.extend(metrics::control_samples(&scraped.control));
        if let Some((calls, usage)) = scraped.aggregator_stats.get() {
            samples.extend(metrics::aggregator_samples(calls, usage, 0));
        }
        metrics::render(&samples)
            + &scraped.gateway.render_metrics()
            + &metrics::catalog_info(&scraped.gateway.catalog().version)
            + &metrics::consumer_lag(&scraped.lag())
            + &metrics::build_info("up")
    };
    let readiness: metrics::Readiness = Arc::new(move || {
        let ops = Arc::clone(&ops);
        Box::pin(async move {
            let running = ops
                .aggregator_running
                .load(std::sync::atomic::Ordering::Relaxed);
            let lag: i64 = ops.lag().iter().map(|r| r.3).sum();
            vec![
                metrics::store_check("billing.db", ops.billing.catalog_in_force()).await,
                metrics::Check::new(
                    "aggregator",
                    running,
                    if running {
                        format!("running, {lag} events to aggregate")
                    } else {
                        "stopped (see the log); events wait in the log".to_string()
                    },
                ),
            ]
        })
    });
    metrics::serve(listen, Arc::new(exposition), readiness, stop).await?;
    Ok(())
}

/// How often `peage up` syncs its event log (`spool.sync_interval_ms`'s default too).
const LOG_SYNC_INTERVAL_MS: u64 = 100;

/// How much nicer than the gateway the embedded aggregator runs (`nice` steps).
const AGGREGATOR_NICENESS: i32 = 10;

/// Usage events the embedded aggregator stores in one SQLite transaction at most. Each insert
/// dirties a page of `usage_events_by_key` at a random place, and each commit writes every
/// dirty page to the WAL (and a checkpoint again to the database): the more events a commit
/// holds, the more of them share a page. Catching up on 510k–660k logged events (one run each
/// way, the log filled by `load-tests/events/run.sh`'s load), 20,000 took 33–39 µs of CPU per
/// event at 20–22k events/s, the 5,000 of calls' default 45–54 µs at 12–15k events/s. Under a
/// light load a batch holds what has arrived, as before.
const USAGE_EVENTS_PER_BATCH: usize = 20_000;

/// Runs the embedded aggregator on a thread of its own, with its own runtime and its own
/// connections to `usage.db`, at a lower CPU priority than the gateway's serving threads (the
/// threads SQLite and the runtime start from it inherit that priority). Under saturation,
/// ingest then falls behind, the log holding every event durably, instead of taking CPU from
/// calls; it catches up as soon as the load eases. Resolves when the aggregator stops.
fn background_aggregator(
    running: Arc<std::sync::atomic::AtomicBool>,
    stats: AggregatorStatsSlot,
    consumer: Box<dyn peage_eventlog::LogConsumer>,
    usage_consumer: Box<dyn peage_eventlog::LogConsumer>,
    usage_db: PathBuf,
    dead_letters: PathBuf,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<()>>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("peage-aggregator".into())
        .spawn(move || {
            peage_eventlog::lower_this_threads_priority(AGGREGATOR_NICENESS);
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("peage-aggregator-io")
                .build()
                .context("starting the aggregator's runtime")
                .and_then(|rt| {
                    rt.block_on(async move {
                        let usage = SqliteUsageStore::open(&usage_db)
                            .await
                            .context("opening usage.db for the aggregator")?;
                        let usage = Arc::new(usage);
                        let calls = Aggregator::new(
                            consumer,
                            usage.clone(),
                            Box::new(DeadLetterFile::new(dead_letters.clone())),
                            AggregatorConfig::default(),
                        );
                        let events = UsageAggregator::new(
                            usage_consumer,
                            usage,
                            Box::new(DeadLetterFile::new(dead_letters)),
                            AggregatorConfig {
                                max_batch: USAGE_EVENTS_PER_BATCH,
                                ..AggregatorConfig::default()
                            },
                        );
                        let _ = stats.set((calls.stats(), events.stats()));
                        let (calls, events) = (calls.run(stop.clone()), events.run(stop));
                        tokio::try_join!(calls, events)
                            .map(|_| ())
                            .map_err(anyhow::Error::from)
                    })
                });
            if let Err(e) = &result {
                tracing::error!(error = %e, "the embedded aggregator stopped");
            }
            running.store(false, std::sync::atomic::Ordering::Relaxed);
            let _ = done_tx.send(result);
        })
        .context("starting the aggregator's thread")?;
    Ok(done_rx)
}
