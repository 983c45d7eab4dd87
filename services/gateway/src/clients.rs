//! Every outbound HTTP client of the gateway, built in one place from its configuration:
//! upstreams (HTTP/1.1, and HTTP/2 by ALPN on `https://`), gRPC upstreams (HTTP/2 only), JWKS
//! and billing. All of them use the same connect timeout and trust the same certificates (the
//! system's plus `gateway.upstream_ca_file`); the TLS configuration is built once.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A pooled HTTP client with bodies of type `B`.
pub type HttpClient<B> = Client<hyper_rustls::HttpsConnector<HttpConnector>, B>;

/// A client for URLs partners registered (their JWKS): every connection obeys
/// [`OutboundConfig::partner_urls`], checked after DNS (peage-net).
pub type GuardedClient<B> = Client<
    peage_net::Guarded<hyper_rustls::HttpsConnector<HttpConnector<peage_net::GuardedResolver>>>,
    B,
>;

/// How the gateway's outbound connections are made.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Time allowed to open a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// CA certificates trusted for `https://` besides the system's (a private CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Idle connections kept per upstream host, per serving thread.
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// What URLs that partners registered (their identity provider's JWKS) may reach:
    /// `outbound.*`, https to public addresses by default. Upstreams, billing and Péage's own
    /// JWKS are the operator's and are not limited.
    pub partner_urls: Arc<peage_net::OutboundPolicy>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            connect_timeout: Duration::from_secs(5),
            extra_roots: Vec::new(),
            pool_max_idle_per_host: 256,
            pool_idle_timeout: Duration::from_secs(90),
            partner_urls: Arc::new(peage_net::OutboundPolicy::strict()),
        }
    }
}

/// Builds the gateway's clients. Cheap to clone; the TLS configuration is shared.
#[derive(Clone)]
pub struct Clients {
    config: OutboundConfig,
    tls: Arc<rustls::ClientConfig>,
}

impl Clients {
    pub fn new(config: OutboundConfig) -> Clients {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "gateway: a system CA certificate could not be read");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        for cert in &config.extra_roots {
            if let Err(e) = roots.add(cert.clone()) {
                tracing::warn!(error = %e, "gateway: an upstream CA certificate was refused");
            }
        }
        if added == 0 && config.extra_roots.is_empty() {
            // Plain-http upstreams still work; https ones fail verification, loudly.
            tracing::warn!("no system CA certificates found; https upstreams will be refused");
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Clients {
            config,
            tls: Arc::new(tls),
        }
    }

    /// A client for HTTP upstreams, JWKS and billing: HTTP/1.1 on `http://`, HTTP/1.1 or
    /// HTTP/2 by ALPN on `https://`. Make one per serving thread: its pool and its connections
    /// live on the runtime that uses it.
    pub fn http<B>(&self) -> HttpClient<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        self.build(false)
    }

    /// A client for gRPC upstreams: HTTP/2 only, h2c with prior knowledge on `http://`, ALPN
    /// `h2` on `https://`.
    pub fn grpc<B>(&self) -> HttpClient<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        self.build(true)
    }

    /// A client for partner-registered URLs, under [`OutboundConfig::partner_urls`].
    pub fn guarded_http<B>(&self) -> GuardedClient<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        let policy = Arc::clone(&self.config.partner_urls);
        let mut http =
            peage_net::http_connector(peage_net::GuardedResolver::new(Arc::clone(&policy)));
        http.set_connect_timeout(Some(self.config.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(peage_net::Guarded::new(https, policy))
    }

    fn build<B>(&self, http2_only: bool) -> HttpClient<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.config.connect_timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http();
        let https = if http2_only {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().enable_http2().wrap_connector(http)
        };
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(self.config.pool_max_idle_per_host)
            .pool_idle_timeout(self.config.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .http2_only(http2_only)
            .build(https)
    }
}

/// Why a file is not a CA bundle.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("not PEM certificates: {0}")]
    NotPem(#[from] rustls::pki_types::pem::Error),
    #[error("no CERTIFICATE block in the file")]
    NoCertificate,
}

/// The certificates of a PEM file's text (a private CA for upstreams).
pub fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_pem_certificates() {
        assert!(parse_pem_certificates(b"")
            .unwrap_err()
            .to_string()
            .contains("no CERTIFICATE"));
        assert!(parse_pem_certificates(
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }
}
