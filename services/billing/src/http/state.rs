//! [`ControlApi`]: what every handler of the control API is given, the billing services and
//! what only the HTTP layer needs (the admin token, the limit on guessing credentials).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;
use peage_billing_store::BillingStore;
use peage_core::catalog::LiveCatalog;
use peage_usage_store::UsageStore;

use super::error::ApiError;
use crate::service::invoicing::Issuer;
use crate::service::oauth::OAuthConfig;
use crate::service::secrets::SecretBox;
use crate::service::{Billing, BillingSettings, RevocationHook};

pub struct ControlApi {
    pub billing: Arc<Billing>,
    pub(crate) admin_token: String,
    /// Wrong admin tokens, sessions, sign-in links and OAuth client secrets, per source address.
    pub failures: peage_core::throttle::FailureLimiter,
}

/// How the control API is set up, from the operator's configuration.
pub struct ControlSettings {
    /// Péage's own access tokens.
    pub oauth: OAuthConfig,
    /// Who invoices are from.
    pub issuer: Issuer,
    /// What registered JWKS URLs and webhook endpoints may point at.
    pub outbound: Arc<peage_net::OutboundPolicy>,
    /// Seals signing seeds and webhook secrets in the store.
    pub secrets: Arc<SecretBox>,
    /// Wrong credentials one address may send in a minute before it is refused (429).
    pub credential_failures_per_minute: u32,
}

/// The address a request came from (the TCP peer), when the server knows it: served through
/// [`crate::serve_router`] it always does; a router driven in process does not.
#[derive(Debug, Clone, Copy)]
pub struct PeerIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<PeerIp, Self::Rejection> {
        Ok(PeerIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

impl ControlApi {
    pub fn new(
        catalog: Arc<LiveCatalog>,
        store: Arc<dyn BillingStore>,
        usage: Arc<dyn UsageStore>,
        admin_token: String,
        on_revoke: Option<RevocationHook>,
        settings: ControlSettings,
    ) -> Arc<ControlApi> {
        let ControlSettings {
            oauth,
            issuer,
            outbound,
            secrets,
            credential_failures_per_minute,
        } = settings;
        let billing = Billing::new(
            catalog,
            store,
            usage,
            BillingSettings {
                oauth,
                issuer,
                outbound,
                secrets,
                on_revoke,
            },
        );
        Arc::new(ControlApi {
            billing: Arc::new(billing),
            admin_token,
            failures: peage_core::throttle::FailureLimiter::new(
                credential_failures_per_minute,
                std::time::Duration::from_secs(60),
                65_536,
            ),
        })
    }

    /// Refuses an attempt from an address that has sent too many wrong credentials.
    pub(crate) fn throttle(&self, peer: PeerIp) -> Result<(), ApiError> {
        let Some(ip) = peer.0 else { return Ok(()) };
        self.failures
            .check(ip, std::time::Instant::now())
            .map_err(|t| {
                tracing::warn!(%ip, "control API: too many wrong credentials; attempts refused");
                ApiError::Throttled {
                    retry_after: t.retry_after_secs(),
                }
            })
    }

    /// Counts a wrong credential against its address.
    pub(crate) fn failed(&self, peer: PeerIp) {
        if let Some(ip) = peer.0 {
            self.failures.failed(ip, std::time::Instant::now());
        }
    }
}

impl std::ops::Deref for ControlApi {
    type Target = Billing;

    /// Handlers and in-process callers reach the billing services directly.
    fn deref(&self) -> &Billing {
        &self.billing
    }
}
