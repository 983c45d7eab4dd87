//! The gateway: `/{api}/{version}/{rest}` → the catalog's upstream for that API version.
//!
//! Per call: authenticate the API key (only its hash is looked up), route, proxy with streamed
//! bodies both ways, and emit one `CallEvent` when the response body ends (or the client goes
//! away), without waiting on the event log. Its own errors are `application/problem+json`.

mod body;
mod graphql;
mod grpc;
pub mod jwt;
mod keys;
mod limits;
pub mod metrics;
mod proxy;
pub mod quota;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use peage_core::problem::{Problem, CONTENT_TYPE};
use peage_core::Catalog;
use peage_eventlog::EventEmitter;

pub use jwt::JwtConfig;
pub use keys::{KeyCache, KeyResolver, ResolvedIssuer, ResolvedKey};
pub use limits::RateLimits;
pub use proxy::parse_pem_certificates;
/// A DER certificate, as trusted for upstreams.
pub type Certificate = rustls::pki_types::CertificateDer<'static>;
pub use quota::{QuotaAuthority, QuotaConfig, Quotas};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Names this gateway in every event it emits.
    pub gateway_id: String,
    /// Time allowed for the upstream's response headers; past it the call is answered 504.
    pub upstream_timeout: Duration,
    /// Time allowed to open a connection to an upstream.
    pub connect_timeout: Duration,
    /// Largest request body accepted; larger ones are answered 413.
    pub max_request_body_bytes: u64,
    /// CA certificates trusted for `https://` upstreams besides the system's (a private CA).
    pub upstream_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Accept JWTs (Péage's own and partners' issuers); `None`: API keys only.
    pub jwt: Option<JwtConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            gateway_id: "gw-1".into(),
            upstream_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_request_body_bytes: 10 * 1024 * 1024,
            upstream_roots: Vec::new(),
            jwt: None,
        }
    }
}

pub struct Gateway {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) keys: KeyCache,
    pub(crate) emitter: EventEmitter,
    pub(crate) client: proxy::UpstreamClient,
    /// For gRPC upstreams: HTTP/2 only.
    pub(crate) h2_client: proxy::UpstreamClient,
    pub(crate) config: GatewayConfig,
    pub(crate) limits: RateLimits,
    /// `None`: quotas are not enforced (no billing to lease from).
    pub(crate) quotas: Option<Arc<Quotas>>,
    pub(crate) jwt: Option<jwt::JwtVerifier>,
    pub(crate) latency: metrics::LatencyHistograms,
}

impl Gateway {
    pub fn new(
        catalog: Arc<Catalog>,
        keys: KeyCache,
        emitter: EventEmitter,
        quotas: Option<Arc<Quotas>>,
        config: GatewayConfig,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            catalog,
            keys,
            emitter,
            client: proxy::upstream_client(config.connect_timeout, false, &config.upstream_roots),
            h2_client: proxy::upstream_client(config.connect_timeout, true, &config.upstream_roots),
            limits: RateLimits::default(),
            quotas,
            jwt: config.jwt.clone().map(jwt::JwtVerifier::new),
            latency: Default::default(),
            config,
        })
    }

    /// Latency histograms and quota counters, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.latency.render()
    }

    /// Whether this gateway should get traffic: metering accepts calls, and quota leases can
    /// be had (or the unreachable policy serves without them).
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let metering = self.emitter.accepting();
        let quotas = self.quotas.as_ref().is_none_or(|q| q.can_serve());
        (
            metering && quotas,
            serde_json::json!({ "metering": metering, "quotas": quotas }),
        )
    }

    /// The gateway's router; serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
    pub fn router(self: &Arc<Gateway>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(|State(gw): State<Arc<Gateway>>| async move {
                    let (ready, checks) = gw.readiness();
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        status,
                        axum::Json(serde_json::json!({ "ready": ready, "checks": checks })),
                    )
                }),
            )
            .fallback(proxy::handle)
            .with_state(Arc::clone(self))
    }
}

/// Serves the gateway until `shutdown` resolves, then drains in-flight calls.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let idle = Arc::downgrade(&gateway);
    tokio::spawn(async move {
        // Rate-limit state of keys idle for a while is dropped, so memory follows live keys.
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match idle.upgrade() {
                Some(gw) => gw.limits.retain_recent(),
                None => break,
            }
        }
    });
    axum::serve(
        listener,
        gateway
            .router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

pub(crate) fn problem(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: impl Into<String>,
) -> Response {
    let p = Problem::new(status.as_u16(), slug, title).with_detail(detail);
    let body = serde_json::to_vec(&p).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}
