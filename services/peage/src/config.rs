//! `peage.toml`: one file configures every command, `peage up` and each role of the distributed
//! mode alike. Every key can be overridden from the environment, `PEAGE_<SECTION>__<KEY>` (e.g.
//! `PEAGE_GATEWAY__LISTEN`, `PEAGE_KAFKA__BROKERS`), and then by `--set section.key=value` and
//! the commands' own flags. Relative paths are relative to the file. Every default is the
//! `Default` of its section here, and nowhere else. `docs/configuration.md` lists every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use peage_eventlog::kafka::{KafkaConfig, SpoolConfig};
use peage_usage_store::ClickHouseConfig;
use serde::Deserialize;

/// The sections the environment may override.
const SECTIONS: &[&str] = &[
    "billing",
    "outbound",
    "secrets",
    "catalog",
    "gateway",
    "control",
    "kafka",
    "spool",
    "clickhouse",
    "postgres",
    "aggregator",
    "metrics",
    "oauth",
    "events",
    "embedded",
    "retention",
];

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PeageConfig {
    pub catalog: CatalogSection,
    pub gateway: GatewaySection,
    pub control: ControlSection,
    pub kafka: KafkaConfig,
    pub spool: SpoolConfig,
    pub clickhouse: ClickHouseConfig,
    pub postgres: PostgresSection,
    pub aggregator: AggregatorSection,
    pub metrics: MetricsSection,
    pub oauth: OAuthSection,
    pub billing: BillingSection,
    pub outbound: OutboundSection,
    pub secrets: SecretsSection,
    pub events: EventsSection,
    pub embedded: EmbeddedSection,
    pub retention: RetentionSection,
    /// The directory relative paths are resolved against: the file's, or the working
    /// directory's without a file.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[retention]`: how long raw call events are kept (docs/operations.md, "Retention").
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Months of raw call events kept before the current one; older months are dropped whole.
    /// 0 keeps them forever. At least 2, and keep more than the longest billing period.
    pub raw_call_months: u32,
}

impl RetentionSection {
    /// The months to keep, if retention is on; an error for a value that would drop months
    /// open periods still read.
    pub fn months(&self) -> anyhow::Result<Option<u32>> {
        match self.raw_call_months {
            0 => Ok(None),
            1 => bail!("retention.raw_call_months must be 0 (keep forever) or at least 2, not 1"),
            m => Ok(Some(m)),
        }
    }
}

/// `[embedded]`: where `peage up` keeps its event log, usage and billing state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedSection {
    pub data_dir: PathBuf,
}

impl Default for EmbeddedSection {
    fn default() -> Self {
        EmbeddedSection {
            data_dir: "./peage-data".into(),
        }
    }
}

impl PeageConfig {
    /// `catalog.path`, else `catalog.toml` beside the configuration file.
    pub fn catalog_path(&self) -> PathBuf {
        self.catalog
            .path
            .clone()
            .unwrap_or_else(|| self.base_dir.join("catalog.toml"))
    }

    /// The Kafka settings of the usage-event topic: `kafka` with `events.topic`, which must be
    /// a topic of its own (its records are usage events, and positions are kept per topic).
    pub fn events_kafka(&self) -> anyhow::Result<KafkaConfig> {
        if self.events.topic == self.kafka.topic
            || self.events.topic == self.kafka.dead_letter_topic
        {
            bail!(
                "events.topic ({}) must differ from kafka.topic and kafka.dead_letter_topic",
                self.events.topic
            );
        }
        Ok(KafkaConfig {
            topic: self.events.topic.clone(),
            // The usage aggregator checks every record for an earlier copy, so producer
            // idempotence adds nothing but its broker thread's spin (KafkaConfig::idempotent).
            idempotent: false,
            ..self.kafka.clone()
        })
    }
}

/// `POST /v1/events` (docs/events.md): how far back events may go, how big a request may be,
/// and where distributed mode spools them before Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    /// Events older than this many days are refused (1–400).
    pub backfill_days: u32,
    /// The most events one request may carry (1–10,000).
    pub max_batch_events: usize,
    /// The most bytes one request body may have (1 KiB–16 MiB).
    pub max_batch_bytes: usize,
    /// The Kafka topic of usage events (distributed mode).
    pub topic: String,
    /// Where the control API spools accepted events before Kafka has them (distributed mode).
    pub spool_dir: PathBuf,
}

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection {
            backfill_days: 35,
            max_batch_events: 1_000,
            max_batch_bytes: 1 << 20,
            topic: "peage.usage-events.v1".into(),
            spool_dir: "./peage-data/events-spool".into(),
        }
    }
}

impl EventsSection {
    /// The intake's limits, checked: an error names the setting out of range.
    pub fn intake(
        &self,
        sink: std::sync::Arc<dyn peage_billing::service::events::UsageEventSink>,
    ) -> anyhow::Result<peage_billing::service::events::EventsIntake> {
        self.validate()?;
        Ok(peage_billing::service::events::EventsIntake {
            sink,
            window: peage_core::usage_event::TimeWindow {
                backfill: chrono::TimeDelta::days(i64::from(self.backfill_days)),
                ..Default::default()
            },
            max_events: self.max_batch_events,
            max_bytes: self.max_batch_bytes,
            known_keys: None,
        })
    }

    /// The limits in range; an error names the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=400).contains(&self.backfill_days) {
            bail!(
                "events.backfill_days must be 1–400, not {}",
                self.backfill_days
            );
        }
        if !(1..=10_000).contains(&self.max_batch_events) {
            bail!(
                "events.max_batch_events must be 1–10000, not {}",
                self.max_batch_events
            );
        }
        if !(1024..=peage_billing::service::events::MAX_BODY_BYTES).contains(&self.max_batch_bytes)
        {
            bail!(
                "events.max_batch_bytes must be 1024–{}, not {}",
                peage_billing::service::events::MAX_BODY_BYTES,
                self.max_batch_bytes
            );
        }
        Ok(())
    }
}

/// The key-encryption key that seals signing seeds and webhook secrets in billing's database
/// (docs/security.md, "Secrets at rest"): base64 of 32 bytes, in `key_file` (mode 0600) or
/// `key` (`PEAGE_SECRETS__KEY`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSection {
    pub key: Option<String>,
    pub key_file: Option<PathBuf>,
    /// Keys values may still be sealed with, after a rotation, until `peage secrets rotate`.
    pub previous_key_files: Vec<PathBuf>,
}

impl SecretsSection {
    pub fn secret_box(
        &self,
    ) -> anyhow::Result<std::sync::Arc<peage_billing::service::secrets::SecretBox>> {
        let read = |f: &PathBuf| {
            std::fs::read_to_string(f).with_context(|| format!("secrets key file {}", f.display()))
        };
        let Some(text) = inline_or_file(&self.key, &self.key_file, "secrets.key_file")? else {
            bail!(
                "set secrets.key_file (or PEAGE_SECRETS__KEY): the key that encrypts signing keys and webhook secrets in billing's database; `peage secrets new-key` prints one"
            )
        };
        let parse = |t: &str, what: &str| {
            peage_billing::service::secrets::parse_key(t)
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))
        };
        let current = parse(&text, "secrets.key")?;
        let previous = self
            .previous_key_files
            .iter()
            .map(|f| parse(&read(f)?, &f.display().to_string()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(std::sync::Arc::new(
            peage_billing::service::secrets::SecretBox::new(&current, &previous)
                .map_err(|e| anyhow::anyhow!("secrets: {e}"))?,
        ))
    }
}

/// What URLs registered through the control API (partner issuers' JWKS, webhook endpoints)
/// may reach: docs/security.md, "Outbound calls".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSection {
    /// Also allow `http://` URLs (https only by default).
    pub allow_http: bool,
    /// Addresses or CIDR blocks allowed although not public: a private identity provider
    /// (`["10.20.0.0/16"]`).
    pub allow_private: Vec<String>,
}

impl OutboundSection {
    pub fn policy(&self) -> anyhow::Result<std::sync::Arc<peage_net::OutboundPolicy>> {
        Ok(std::sync::Arc::new(peage_net::OutboundPolicy::new(
            self.allow_http,
            ip_blocks("outbound.allow_private", &self.allow_private)?,
        )))
    }
}

/// Addresses and CIDR blocks of a list setting (`10.0.0.0/8`, `2001:db8::1`), or an error
/// naming the setting and the entry.
fn ip_blocks(key: &str, list: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    list.iter()
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{key}: {p:?} is neither an IP address nor a CIDR block (10.0.0.0/8)"
                    )
                })
        })
        .collect()
}

/// Péage's own access tokens: the same on billing (which issues them) and gateways (which
/// check them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthSection {
    pub issuer: String,
    pub audience: String,
    pub token_ttl_s: u64,
}

impl Default for OAuthSection {
    fn default() -> Self {
        let d = peage_billing::OAuthConfig::default();
        OAuthSection {
            issuer: d.issuer,
            audience: d.audience,
            token_ttl_s: d.token_ttl.as_secs(),
        }
    }
}

impl OAuthSection {
    pub fn config(&self) -> peage_billing::OAuthConfig {
        peage_billing::OAuthConfig {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            token_ttl: std::time::Duration::from_secs(self.token_ttl_s.clamp(60, 86_400)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Where this role serves `GET /metrics` (Prometheus text); off when unset. Give each
    /// process its own, e.g. `PEAGE_METRICS__LISTEN=127.0.0.1:9464`.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogSection {
    /// The catalog file. Unset: `catalog.toml` beside the configuration file for the roles,
    /// `<embedded.data_dir>/catalog.toml` for `peage up`.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    pub listen: SocketAddr,
    /// Names this gateway in the events it emits; unique per gateway process.
    pub id: String,
    /// How long a resolved API key is trusted before billing state is asked again (a revoked
    /// key stops working within this time on other processes).
    pub key_cache_ttl_ms: u64,
    /// While billing does not answer key lookups, a key (or issuer) looked up within this
    /// long is still served as it was last known; keys never seen get a quick 503.
    pub key_stale_ms: u64,
    /// Time allowed for an upstream's response headers (504 past it).
    pub upstream_timeout_ms: u64,
    /// Time allowed to connect to an upstream (502 past it).
    pub connect_timeout_ms: u64,
    /// Largest request body accepted (413 beyond it).
    pub max_request_body_bytes: u64,
    /// A PEM file of CA certificates trusted for `https://` upstreams besides the system's
    /// (also for JWKS and billing).
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// Serving threads, each with its own runtime, listener and upstream pools; 0: one per core.
    pub threads: usize,
    /// Time allowed for a request head from its first byte (from the connection's start for
    /// the first request); the connection is closed past it.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout_ms: u64,
    /// Client connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// `%2F` and `%5C` in paths: `reject` (400) or `forward` unchanged.
    pub encoded_slashes: peage_gateway::EncodedSlashes,
    /// Addresses or CIDR blocks (`10.0.0.0/8`, `2001:db8::1`) of proxies in front of the
    /// gateway whose forwarding headers are believed; from anyone else they are replaced.
    pub trusted_proxies: Vec<String>,
    /// Wrong API keys or tokens one client address may send in a minute; past it every attempt
    /// from the address is answered 429 until the minute ends.
    pub credential_failures_per_minute: u32,
    /// Terminate TLS: a PEM certificate chain (leaf first) and its private key, both or
    /// neither. Reloaded when either file changes, without a restart.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The billing role's control API, where quota leases come from.
    pub billing_url: String,
    /// The `gateway` service token the gateway calls billing with (`peage service-token
    /// create --scope gateway`), or `billing_token_file`.
    pub billing_token: Option<String>,
    pub billing_token_file: Option<PathBuf>,
    /// The smallest quota lease asked for, in meter units; busy quotas ask for about 2 s of use.
    pub quota_lease_size: u64,
    /// What to do when billing cannot be reached for a quota lease: `serve` (up to
    /// `quota_unreachable_bound` units per quota beyond the last lease) or `refuse` (503).
    pub quota_when_billing_unreachable: UnreachableChoice,
    pub quota_unreachable_bound: u64,
    /// One JSON line per call (time, trace id, method, path, status, partner…) appended to
    /// this file, or written to standard output for `-`; off when unset.
    pub access_log: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreachableChoice {
    Serve,
    Refuse,
}

impl GatewaySection {
    /// The gateway's configuration from this section, with `jwt` for access tokens.
    pub fn gateway_config(
        &self,
        jwt: peage_gateway::JwtConfig,
    ) -> anyhow::Result<peage_gateway::GatewayConfig> {
        use std::time::Duration;
        for (key, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("upstream_timeout_ms", self.upstream_timeout_ms),
        ] {
            if ms == 0 {
                bail!("gateway.{key} must be more than 0");
            }
        }
        if self.max_connections == 0 {
            bail!("gateway.max_connections must be more than 0");
        }
        if self.credential_failures_per_minute == 0 {
            bail!("gateway.credential_failures_per_minute must be more than 0");
        }
        let trusted_proxies = ip_blocks("gateway.trusted_proxies", &self.trusted_proxies)?;
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(peage_gateway::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => bail!(
                "gateway.tls_cert_file and gateway.tls_key_file go together: set both or neither"
            ),
        };
        Ok(peage_gateway::GatewayConfig {
            gateway_id: self.id.clone(),
            upstream_timeout: Duration::from_millis(self.upstream_timeout_ms),
            max_request_body_bytes: self.max_request_body_bytes,
            outbound: peage_gateway::OutboundConfig {
                connect_timeout: Duration::from_millis(self.connect_timeout_ms),
                extra_roots: crate::up::upstream_roots(self.upstream_ca_file.as_deref())?,
                ..Default::default()
            },
            jwt: Some(jwt),
            threads: self.threads,
            edge: peage_gateway::EdgeLimits {
                header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                idle_timeout: Duration::from_millis(self.idle_timeout_ms),
                max_connections: self.max_connections,
            },
            encoded_slashes: self.encoded_slashes,
            trusted_proxies,
            credential_failures_per_minute: self.credential_failures_per_minute,
            tls,
            access_log: match &self.access_log {
                Some(path) => Some(
                    peage_gateway::access_log::AccessLog::open(path).with_context(|| {
                        format!("gateway.access_log: cannot open {}", path.display())
                    })?,
                ),
                None => None,
            },
        })
    }

    pub fn quota_config(&self) -> peage_gateway::QuotaConfig {
        use rust_decimal::Decimal;
        peage_gateway::QuotaConfig {
            lease_size: Decimal::from(self.quota_lease_size.max(1)),
            unreachable: match self.quota_when_billing_unreachable {
                UnreachableChoice::Serve => peage_gateway::quota::UnreachablePolicy::Serve {
                    bound: Decimal::from(self.quota_unreachable_bound),
                },
                UnreachableChoice::Refuse => peage_gateway::quota::UnreachablePolicy::Refuse,
            },
            ..peage_gateway::QuotaConfig::default()
        }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        use rust_decimal::prelude::ToPrimitive;
        let quota = peage_gateway::QuotaConfig::default();
        let unreachable_bound = match quota.unreachable {
            peage_gateway::quota::UnreachablePolicy::Serve { bound } => bound,
            peage_gateway::quota::UnreachablePolicy::Refuse => Default::default(),
        };
        GatewaySection {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            id: "gw-1".into(),
            key_cache_ttl_ms: 5_000,
            key_stale_ms: 900_000,
            upstream_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            max_request_body_bytes: 10 * 1024 * 1024,
            upstream_ca_file: None,
            threads: 0,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 16_384,
            encoded_slashes: peage_gateway::EncodedSlashes::Reject,
            trusted_proxies: Vec::new(),
            credential_failures_per_minute: 20,
            tls_cert_file: None,
            tls_key_file: None,
            billing_url: "http://127.0.0.1:8090".into(),
            billing_token: None,
            billing_token_file: None,
            quota_lease_size: quota.lease_size.to_u64().unwrap_or(100),
            access_log: None,
            quota_when_billing_unreachable: UnreachableChoice::Serve,
            quota_unreachable_bound: unreachable_bound.to_u64().unwrap_or(1_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    pub listen: SocketAddr,
    /// The admin bearer token (at least 16 characters), or `admin_token_file`.
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    /// Wrong admin tokens, service tokens, sessions, sign-in links or OAuth client secrets one
    /// address may send in a minute; past it every attempt from it is answered 429.
    pub credential_failures_per_minute: u32,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            listen: "127.0.0.1:8090".parse().expect("literal address"),
            admin_token: None,
            admin_token_file: None,
            credential_failures_per_minute: 20,
        }
    }
}

/// `[billing]`: who issues invoices, and how webhooks are retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSection {
    pub issuer_name: String,
    pub issuer_address: Vec<String>,
    pub issuer_tax_id: Option<String>,
    /// Invoice numbers are `<prefix>-<year>-<6 digits>`, gapless per prefix and year.
    pub invoice_prefix: String,
    /// Waits between webhook attempts, in seconds; after the last, the delivery fails.
    pub webhook_retry_s: Vec<u64>,
    pub webhook_poll_ms: u64,
    /// Finalizes drafts by itself once their period has been over for `finalize_grace_hours`
    /// (docs/pricing.md, "Automatic finalization").
    pub auto_finalize: bool,
    /// How long a draft stays open to late usage after its period ends.
    pub finalize_grace_hours: u64,
    /// How often billing looks for drafts to finalize.
    pub auto_finalize_every_s: u64,
    /// How often billing checks spend and usage alerts (docs/pricing.md, "Alerts").
    pub alerts_every_s: u64,
    /// The gateway's public address (`https://api.example.com`), shown to partners with the
    /// API docs.
    pub gateway_url: Option<String>,
}

impl Default for BillingSection {
    fn default() -> Self {
        BillingSection {
            issuer_name: "Péage".into(),
            issuer_address: Vec::new(),
            issuer_tax_id: None,
            invoice_prefix: "PEAGE".into(),
            webhook_retry_s: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
            webhook_poll_ms: 1000,
            auto_finalize: true,
            finalize_grace_hours: 72,
            auto_finalize_every_s: 300,
            alerts_every_s: 60,
            gateway_url: None,
        }
    }
}

impl BillingSection {
    /// How often alerts are checked (at least every second).
    pub fn alerts_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.alerts_every_s.max(1))
    }

    /// Automatic finalization and how often it runs, unless turned off.
    pub fn auto_finalize(
        &self,
    ) -> Option<(
        peage_billing::service::auto_finalize::AutoFinalize,
        std::time::Duration,
    )> {
        let every = std::time::Duration::from_secs(self.auto_finalize_every_s.max(1));
        self.auto_finalize.then(|| {
            (
                peage_billing::service::auto_finalize::AutoFinalize {
                    grace: chrono::Duration::hours(self.finalize_grace_hours.min(24 * 3650) as i64),
                    // Long enough for a pass, short enough that another instance takes over
                    // soon after its holder dies.
                    lease: chrono::Duration::from_std(every * 3)
                        .unwrap_or(chrono::Duration::minutes(15))
                        .max(chrono::Duration::minutes(2)),
                },
                every,
            )
        })
    }

    pub fn issuer(&self) -> anyhow::Result<peage_billing::service::invoicing::Issuer> {
        let p = &self.invoice_prefix;
        if p.is_empty()
            || p.len() > 20
            || !p
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        {
            anyhow::bail!("billing.invoice_prefix must be 1 to 20 of A-Z, 0-9 and '-', not {p:?}");
        }
        Ok(peage_billing::service::invoicing::Issuer {
            name: self.issuer_name.clone(),
            address: self.issuer_address.clone(),
            tax_id: self.issuer_tax_id.clone(),
            prefix: p.clone(),
        })
    }

    pub fn retry_schedule(&self) -> peage_billing::service::webhooks::RetrySchedule {
        peage_billing::service::webhooks::RetrySchedule(
            self.webhook_retry_s
                .iter()
                .map(|s| std::time::Duration::from_secs(*s))
                .collect(),
        )
    }

    /// The `[billing]` section from `PEAGE_BILLING__*` alone (for `peage invoice --data-dir`).
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        section_from_env("billing", env)
    }
}

/// One section from `PEAGE_<SECTION>__*` alone, the rest at its defaults (for commands on a
/// data directory without a configuration file).
pub fn section_from_env<T: serde::de::DeserializeOwned>(
    section: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<T> {
    let prefix = format!("PEAGE_{}__", section.to_ascii_uppercase());
    let mut doc = toml::Table::new();
    apply_env(
        &mut doc,
        env.into_iter().filter(|(k, _)| k.starts_with(&prefix)),
    )?;
    let table = doc
        .remove(section)
        .unwrap_or(toml::Value::Table(Default::default()));
    table
        .try_into()
        .map_err(|e| anyhow::anyhow!("{prefix}*: {e}"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSection {
    pub url: String,
}

impl Default for PostgresSection {
    fn default() -> Self {
        PostgresSection {
            url: "postgres://peage:peage@127.0.0.1:5432/peage".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorSection {
    /// Kafka consumer group; aggregators in one group share the partitions.
    pub group: String,
    /// Kafka static membership (`group.instance.id`): give each aggregator process its own
    /// stable id so a restarted one resumes its partitions at once.
    pub instance_id: Option<String>,
    pub max_batch: usize,
    pub max_wait_ms: u64,
    /// The deadline of one ClickHouse insert attempt (docs/exactly-once.md, "Rebalances").
    pub insert_timeout_ms: u64,
    /// Inserts a batch is split into by partition, sent at once (ClickHouse applies one insert
    /// and its views on one thread).
    pub parallel_inserts: usize,
}

impl Default for AggregatorSection {
    fn default() -> Self {
        AggregatorSection {
            group: "peage-aggregator".into(),
            instance_id: None,
            max_batch: 100_000,
            max_wait_ms: 500,
            insert_timeout_ms: 60_000,
            parallel_inserts: 2,
        }
    }
}

impl GatewaySection {
    /// The token the gateway calls billing with: its own `gateway` service token. Without
    /// one it falls back to the admin token, loudly: that works, but a compromised gateway
    /// then holds every right of the control API.
    pub fn billing_token(&self, control: &ControlSection) -> anyhow::Result<String> {
        match inline_or_file(
            &self.billing_token,
            &self.billing_token_file,
            "gateway.billing_token_file",
        )? {
            Some(t) => Ok(t.trim().to_string()),
            None => {
                tracing::warn!("gateway.billing_token is not set: calling billing with the admin token; create a gateway token with `peage service-token create --scope gateway`");
                control.token()
            }
        }
    }
}

/// A credential given in the configuration itself (`value`, as written) or in a file (its
/// text, trimmed; `file_key` names the setting in errors). `None` when neither is set.
fn inline_or_file(
    value: &Option<String>,
    file: &Option<PathBuf>,
    file_key: &str,
) -> anyhow::Result<Option<String>> {
    Ok(match (value, file) {
        (Some(v), _) => Some(v.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("{file_key} {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    })
}

impl ControlSection {
    pub fn token(&self) -> anyhow::Result<String> {
        let Some(token) = inline_or_file(
            &self.admin_token,
            &self.admin_token_file,
            "control.admin_token_file",
        )?
        else {
            bail!(
                "set control.admin_token_file (or PEAGE_CONTROL__ADMIN_TOKEN) for the control API"
            )
        };
        if token.len() < 16 {
            bail!("the admin token must be at least 16 characters");
        }
        Ok(token)
    }
}

/// Overrides keys of `doc` from `PEAGE_<SECTION>__<KEY>` variables.
fn apply_env(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("PEAGE_") else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.len() < 2 || !SECTIONS.contains(&parts[0].as_str()) {
            continue;
        }
        set_key(doc, &parts, &value, &name)?;
    }
    Ok(())
}

/// Sets the key at `parts` (section, …, key) of `doc` to `value`: a value that reads as TOML
/// (a number, a boolean, an array) keeps its type, anything else is a string. `origin` names
/// the override in errors.
fn set_key(
    doc: &mut toml::Table,
    parts: &[String],
    value: &str,
    origin: &str,
) -> anyhow::Result<()> {
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut table = &mut *doc;
    for p in &parts[..parts.len() - 1] {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry
            .as_table_mut()
            .with_context(|| format!("{origin}: {p} is not a section"))?;
    }
    table.insert(parts[parts.len() - 1].clone(), parsed);
    Ok(())
}

/// What `peage config check` verifies beyond parsing: the settings each role checks at start
/// that need no server (limits, TLS pairs, proxy blocks, outbound policy, invoice prefix,
/// events limits, the catalog).
pub fn check(config: &PeageConfig) -> anyhow::Result<()> {
    let jwt = crate::up::jwt_config(&config.oauth.config(), &config.gateway.billing_url);
    let mut gateway = config.gateway.clone();
    // Checking must not create or append to the access log.
    gateway.access_log = None;
    gateway.gateway_config(jwt)?;
    config.outbound.policy()?;
    config.billing.issuer()?;
    config.events_kafka()?;
    config.events.validate()?;
    config.retention.months()?;
    crate::up::load_catalog(&config.catalog_path(), Some("http://127.0.0.1:9"))?;
    Ok(())
}

pub fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<PeageConfig> {
    load_with(Some(path), env, &[])
}

/// Reads `path` (or nothing: every default), applies `PEAGE_<SECTION>__<KEY>` overrides from
/// `env`, then `section.key=value` overrides (`--set`), and resolves relative paths against
/// the file's directory.
pub fn load_with(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    sets: &[String],
) -> anyhow::Result<PeageConfig> {
    let (mut doc, name, base) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the configuration {}", path.display()))?;
            let doc: toml::Table = text
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (doc, path.display().to_string(), base)
        }
        None => (
            toml::Table::new(),
            "the configuration".to_string(),
            ".".into(),
        ),
    };
    apply_env(&mut doc, env)?;
    for set in sets {
        let Some((key, value)) = set.split_once('=') else {
            bail!("--set {set}: expected section.key=value");
        };
        let parts: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        if parts.len() < 2 || !SECTIONS.contains(&parts[0].as_str()) {
            bail!(
                "--set {set}: expected section.key=value with a section among {}",
                SECTIONS.join(", ")
            );
        }
        set_key(&mut doc, &parts, value, &format!("--set {key}"))?;
    }
    let mut config: PeageConfig = toml::Value::Table(doc)
        .try_into()
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    if let Some(p) = &mut config.catalog.path {
        resolve(p);
    }
    resolve(&mut config.spool.dir);
    resolve(&mut config.events.spool_dir);
    resolve(&mut config.embedded.data_dir);
    if let Some(f) = &mut config.control.admin_token_file {
        resolve(f);
    }
    if let Some(f) = &mut config.gateway.billing_token_file {
        resolve(f);
    }
    if let Some(f) = &mut config.gateway.upstream_ca_file {
        resolve(f);
    }
    if let Some(f) = config
        .gateway
        .access_log
        .as_mut()
        .filter(|f| f.as_path() != Path::new("-"))
    {
        resolve(f);
    }
    if let Some(f) = &mut config.secrets.key_file {
        resolve(f);
    }
    config
        .secrets
        .previous_key_files
        .iter_mut()
        .for_each(resolve);
    config.base_dir = base;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_overrides_the_file_with_typed_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peage.toml");
        std::fs::write(
            &path,
            "[gateway]\nlisten = \"127.0.0.1:9999\"\nid = \"gw-a\"\n[kafka]\npartitions = 2\n[spool]\ndir = \"spool-a\"\n",
        )
        .unwrap();
        let env = [
            ("PEAGE_GATEWAY__ID", "gw-b"),
            ("PEAGE_KAFKA__PARTITIONS", "8"),
            ("PEAGE_CLICKHOUSE__VALIDATION", "false"),
            (
                "PEAGE_DEMO_UPSTREAM__LISTEN",
                "ignored: not a config section",
            ),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = load(&path, env).unwrap();
        assert_eq!(c.gateway.listen.port(), 9999);
        assert_eq!(c.gateway.id, "gw-b");
        assert_eq!(c.kafka.partitions, 8);
        assert!(!c.clickhouse.validation);
        assert_eq!(c.spool.dir, dir.path().join("spool-a"));
        assert_eq!(c.catalog_path(), dir.path().join("catalog.toml"));
        assert_eq!(c.kafka.topic, "peage.calls.v1");
    }

    #[test]
    fn every_section_can_be_set_from_the_environment() {
        // serde names every section of PeageConfig when it refuses an unknown one.
        let e = toml::Value::Table(toml::toml! { no_such_section = 1 })
            .try_into::<PeageConfig>()
            .unwrap_err()
            .to_string();
        let listed = e
            .split_once("expected one of")
            .map(|(_, l)| l)
            .unwrap_or_default();
        let sections: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
        assert!(sections.len() > 10, "{e}");
        for s in sections {
            assert!(
                SECTIONS.contains(&s),
                "PEAGE_{}__* would be ignored",
                s.to_uppercase()
            );
        }
        // The usage-event topic of distributed mode, and its spool beside the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peage.toml");
        std::fs::write(&path, "[events]\nspool_dir = \"ev-spool\"\n").unwrap();
        let env = [("PEAGE_EVENTS__TOPIC", "t.usage")].map(|(k, v)| (k.to_string(), v.to_string()));
        let c = load(&path, env).unwrap();
        assert_eq!(c.events.topic, "t.usage");
        assert_eq!(c.events.spool_dir, dir.path().join("ev-spool"));
        // Call events keep an idempotent producer; usage events, checked record by record,
        // do without (KafkaConfig::idempotent).
        let usage = c.events_kafka().unwrap();
        assert_eq!((usage.topic.as_str(), usage.idempotent), ("t.usage", false));
        assert!(c.kafka.idempotent);
        std::fs::write(
            &path,
            "[kafka]
idempotent = false
",
        )
        .unwrap();
        assert!(load(&path, []).is_err(), "not a setting");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_that_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peage.toml");
        std::fs::write(&path, "[gateway]\nlisen = \"127.0.0.1:1\"\n").unwrap();
        let e = load(&path, []).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        std::fs::write(&path, "[kafka]\npartitions = \"many\"\n").unwrap();
        let e = load(&path, []).unwrap_err().to_string();
        assert!(
            e.contains("partitions") || e.contains("invalid type"),
            "{e}"
        );
        let e = load(&dir.path().join("missing.toml"), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn the_outbound_policy_is_strict_unless_the_environment_opens_it() {
        let strict: OutboundSection = section_from_env("outbound", Vec::new()).unwrap();
        let p = strict.policy().unwrap();
        assert!(p.check_url("http://127.0.0.1/jwks").is_err());
        let env = [
            ("PEAGE_OUTBOUND__ALLOW_HTTP", "true"),
            (
                "PEAGE_OUTBOUND__ALLOW_PRIVATE",
                "[\"127.0.0.1\", \"10.20.0.0/16\"]",
            ),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let open: OutboundSection = section_from_env("outbound", env).unwrap();
        let p = open.policy().unwrap();
        assert!(p.check_url("http://127.0.0.1/jwks").is_ok());
        assert!(p.check_url("http://10.20.1.1/jwks").is_ok());
        assert!(p.check_url("http://127.0.0.2/jwks").is_err());
        let bad = OutboundSection {
            allow_private: vec!["idp.internal".into()],
            ..Default::default()
        };
        let e = bad.policy().unwrap_err().to_string();
        assert!(
            e.contains("outbound.allow_private") && e.contains("idp.internal"),
            "{e}"
        );
    }

    #[test]
    fn trusted_proxies_take_addresses_and_blocks_and_name_a_bad_one() {
        let jwt = || peage_gateway::JwtConfig {
            issuer: "http://127.0.0.1:8090".into(),
            audience: "peage".into(),
            jwks_url: "http://127.0.0.1:8090/.well-known/jwks.json".into(),
            leeway: std::time::Duration::from_secs(30),
        };
        let mut g = GatewaySection {
            trusted_proxies: vec!["10.0.0.0/8".into(), "2001:db8::1".into()],
            ..Default::default()
        };
        let nets = g.gateway_config(jwt()).unwrap().trusted_proxies;
        assert!(nets[0].contains(&"10.20.30.40".parse::<std::net::IpAddr>().unwrap()));
        assert!(nets[1].contains(&"2001:db8::1".parse::<std::net::IpAddr>().unwrap()));
        assert!(!nets[1].contains(&"2001:db8::2".parse::<std::net::IpAddr>().unwrap()));
        // TLS: both files or neither.
        g.tls_cert_file = Some("gw.crt".into());
        let e = g.gateway_config(jwt()).unwrap_err().to_string();
        assert!(e.contains("set both or neither"), "{e}");
        g.tls_key_file = Some("gw.key".into());
        let tls = g.gateway_config(jwt()).unwrap().tls.unwrap();
        assert_eq!(tls.key, std::path::Path::new("gw.key"));
        g.trusted_proxies = vec!["lb.internal".into()];
        let e = g.gateway_config(jwt()).unwrap_err().to_string();
        assert!(
            e.contains("trusted_proxies") && e.contains("lb.internal"),
            "{e}"
        );
    }

    #[test]
    fn the_dev_configuration_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dev/peage.toml");
        let c = load(&path, []).unwrap();
        assert!(c.catalog_path().ends_with("catalog.toml"));
        assert!(
            !c.clickhouse.validation,
            "Debian's ClickHouse 18.16 needs validation off"
        );
    }
}
