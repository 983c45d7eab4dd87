//! The gateway: `/{api}/{version}/{rest}` → the catalog's upstream for that API version.
//!
//! A call goes through a pipeline of stages ([`call`]): route, authenticate, admit, name the
//! operation, forward (bodies streamed both ways), meter (one `CallEvent` when the response body
//! ends, or the client goes away, emitted without waiting on the event log). Its own answers
//! are `application/problem+json` (gRPC statuses for gRPC callers), from one `Refusal` type.
//!
//! [`GatewayServer`] serves it on one single-threaded runtime per core ([`server`]).

pub mod access_log;
pub mod billing;
mod body;
pub mod call;
pub mod clients;
mod graphql;
mod grpc;
pub mod jwt;
mod keys;
mod limits;
pub mod metrics;
mod pool;
pub mod quota;
pub mod server;
pub mod tls;
pub mod trace;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use peage_core::Catalog;
use peage_eventlog::EventEmitter;

pub use call::path::EncodedSlashes;
pub use clients::{parse_pem_certificates, Clients, OutboundConfig};
pub use jwt::JwtConfig;
pub use keys::{KeyCache, KeyLookupError, KeyResolver, ResolvedIssuer, ResolvedKey};
pub use limits::RateLimits;
pub use quota::{QuotaAuthority, QuotaConfig, Quotas};
pub use server::{ConnectionStats, EdgeLimits, GatewayServer};

/// A DER certificate, as trusted for upstreams.
pub type Certificate = rustls::pki_types::CertificateDer<'static>;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Names this gateway in every event it emits.
    pub gateway_id: String,
    /// Time allowed for the upstream's response headers; past it the call is answered 504.
    pub upstream_timeout: Duration,
    /// Largest request body accepted; larger ones are answered 413.
    pub max_request_body_bytes: u64,
    /// How upstream, JWKS and billing connections are made (connect timeout, CAs, pools).
    pub outbound: OutboundConfig,
    /// Accept JWTs (Péage's own and partners' issuers); `None`: API keys only.
    pub jwt: Option<JwtConfig>,
    /// Serving threads, each with its own runtime and listener; 0: one per core.
    pub threads: usize,
    /// Header-read and idle timeouts, connection limit.
    pub edge: EdgeLimits,
    /// `%2F` and `%5C` in paths: refused (the default) or forwarded.
    pub encoded_slashes: EncodedSlashes,
    /// Peers whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` headers are believed (load
    /// balancers in front of the gateway). From anyone else they are replaced. Empty: no one.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Wrong credentials (API keys, tokens) a source address may present in a minute before
    /// every attempt from it is answered 429 until the minute is over.
    pub credential_failures_per_minute: u32,
    /// Terminate TLS with this certificate and key (reloaded when they change); `None`: plain
    /// HTTP (h2c by prior knowledge for gRPC).
    pub tls: Option<tls::TlsFiles>,
    /// One JSON line per call, when set (`gateway.access_log`).
    pub access_log: Option<Arc<access_log::AccessLog>>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            gateway_id: "gw-1".into(),
            upstream_timeout: Duration::from_secs(30),
            max_request_body_bytes: 10 * 1024 * 1024,
            outbound: OutboundConfig::default(),
            jwt: None,
            threads: 0,
            edge: EdgeLimits::default(),
            encoded_slashes: EncodedSlashes::Reject,
            trusted_proxies: Vec::new(),
            credential_failures_per_minute: 20,
            tls: None,
            access_log: None,
        }
    }
}

/// The catalog in force and what the gateway derives from it (routes, plan policies, rate
/// limiters), replaced whole by a reload: a call takes it once and finishes on it.
pub(crate) struct Loaded {
    pub catalog: Arc<Catalog>,
    pub routes: call::route::Routes,
    pub plans: call::admit::Plans,
    pub limits: RateLimits,
    /// Counts reloads: a serving thread's connection pool belongs to one generation's
    /// upstream slots.
    pub generation: u64,
}

pub struct Gateway {
    pub(crate) loaded: arc_swap::ArcSwap<Loaded>,
    pub(crate) keys: KeyCache,
    pub(crate) emitter: EventEmitter,
    pub(crate) clients: Clients,
    pub(crate) config: GatewayConfig,
    /// `None`: quotas are not enforced (no billing to lease from).
    pub(crate) quotas: Option<Arc<Quotas>>,
    pub(crate) jwt: Option<jwt::JwtVerifier>,
    pub(crate) metrics: metrics::GatewayMetrics,
    pub(crate) connection_stats: ConnectionStats,
    /// Wrong credentials per source address (docs/security.md, "Guessing credentials").
    pub(crate) failures: peage_core::throttle::FailureLimiter,
    /// The certificate in force, once a server terminating TLS is bound.
    pub(crate) tls: std::sync::OnceLock<Arc<tls::Certificates>>,
}

impl Loaded {
    fn of(
        catalog: Arc<Catalog>,
        metrics: &metrics::GatewayMetrics,
        limits_before: Option<&RateLimits>,
        generation: u64,
    ) -> Loaded {
        metrics.set_catalog_version(&catalog.version);
        Loaded {
            routes: call::route::Routes::with_indices(&catalog, &mut |api, v| {
                metrics.index_of(api, v)
            }),
            plans: call::admit::Plans::new(&catalog),
            limits: RateLimits::for_catalog_after(&catalog, limits_before),
            catalog,
            generation,
        }
    }
}

impl Gateway {
    /// Call within the runtime that should run the gateway's background work (key lookups,
    /// quota leases, JWKS fetches); calls are served on threads of their own.
    pub fn new(
        catalog: Arc<Catalog>,
        keys: KeyCache,
        emitter: EventEmitter,
        quotas: Option<Arc<Quotas>>,
        config: GatewayConfig,
    ) -> Arc<Gateway> {
        let clients = Clients::new(config.outbound.clone());
        let metrics = metrics::GatewayMetrics::new([]);
        let loaded = Loaded::of(catalog, &metrics, None, 0);
        let gateway = Arc::new(Gateway {
            loaded: arc_swap::ArcSwap::from_pointee(loaded),
            keys,
            emitter,
            jwt: config
                .jwt
                .clone()
                .map(|c| jwt::JwtVerifier::new(c, clients.http(), clients.guarded_http())),
            clients,
            quotas,
            metrics,
            connection_stats: ConnectionStats::default(),
            failures: peage_core::throttle::FailureLimiter::new(
                config.credential_failures_per_minute,
                Duration::from_secs(60),
                65_536,
            ),
            tls: std::sync::OnceLock::new(),
            config,
        });
        let idle = Arc::downgrade(&gateway);
        tokio::spawn(async move {
            // Rate-limit state of keys idle for a while is dropped, so memory follows live keys.
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                match idle.upgrade() {
                    Some(gw) => gw.loaded().limits.retain_recent(),
                    None => break,
                }
            }
        });
        gateway
    }

    /// The catalog in force and what is derived from it.
    pub(crate) fn loaded(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.loaded.load().catalog)
    }

    /// Serves `catalog` from now on: routes, plans and rate limits are rebuilt from it and
    /// swapped in whole. Calls already routed finish on the catalog they started with; the
    /// rate-limit state of limits both catalogs have carries over.
    pub fn set_catalog(&self, catalog: Arc<Catalog>) {
        let before = self.loaded();
        if before.catalog.version == catalog.version {
            return;
        }
        let next = Loaded::of(
            catalog,
            &self.metrics,
            Some(&before.limits),
            before.generation + 1,
        );
        tracing::info!(from = %before.catalog.version, to = %next.catalog.version, "gateway: catalog replaced");
        self.loaded.store(Arc::new(next));
    }

    /// Serving threads the gateway runs (its configuration, with 0 meaning one per core).
    pub fn serving_threads(&self) -> usize {
        match self.config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Latency histograms, refusals, connections and quota counters, in the Prometheus text
    /// format.
    pub fn render_metrics(&self) -> String {
        let mut out = self.metrics.render(&self.connection_stats);
        let k = self.keys.stats();
        let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        for (name, kind, help, v) in [
            ("peage_gateway_key_lookup_failures_total", "counter", "Key and issuer lookups billing did not answer (or that waited out the second after a failure).", load(&k.lookup_failures)),
            ("peage_gateway_key_stale_answers_total", "counter", "Keys and issuers served past the cache's TTL because billing did not answer (gateway.key_stale_ms bounds their age).", load(&k.stale_answers)),
            ("peage_gateway_key_lookups_reachable", "gauge", "1 when billing answered the last key lookup, 0 while lookups fail.", u64::from(k.reachable())),
            ("peage_gateway_tls_reloads_total", "counter", "Times a changed TLS certificate and key were loaded and served to new connections.", self.tls.get().map_or(0, |t| load(&t.stats.reloads))),
            ("peage_gateway_tls_reload_failures_total", "counter", "Times changed TLS files did not load (the running certificate served on).", self.tls.get().map_or(0, |t| load(&t.stats.reload_failures))),
            ("peage_gateway_access_log_dropped_total", "counter", "Access-log lines dropped because the writer could not keep up.", self.config.access_log.as_ref().map_or(0, |l| load(&l.dropped))),
        ] {
            use std::fmt::Write as _;
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        out
    }

    /// Whether this gateway should get traffic: metering accepts calls, and quota leases can
    /// be had (or the unreachable policy serves without them). `keys` says whether billing
    /// answers key lookups; it does not make the gateway unready, since every gateway shares
    /// that outage and known keys are still served from the cache.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let metering = self.emitter.accepting();
        let quotas = self.quotas.as_ref().is_none_or(|q| q.can_serve());
        let keys = self.keys.stats().reachable();
        (
            metering && quotas,
            serde_json::json!({ "metering": metering, "quotas": quotas, "keys": keys }),
        )
    }
}
