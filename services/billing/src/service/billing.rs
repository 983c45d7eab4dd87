//! [`Billing`]: the billing services as one value, what the control API's handlers, the
//! embedded gateway and the CLI call. No HTTP here: each operation takes typed input and
//! answers a typed value or a [`ServiceError`] naming its cause.

use std::sync::{Arc, OnceLock, RwLock};

use peage_billing_store::BillingStore;
use peage_core::catalog::LiveCatalog;
use peage_core::Catalog;
use peage_usage_store::UsageStore;

use super::catalog_state::Reloads;
use super::digests::DigestLookups;
use super::error::ServiceError;
use super::intake::EventsIntake;
use super::invoicing::{Invoicing, Issuer};
use super::secrets::SecretBox;
use super::settings::OAuthConfig;
use super::subjects::SubjectCache;

/// Called after a key is revoked, so an in-process gateway forgets it at once.
pub type RevocationHook = Arc<dyn Fn() + Send + Sync>;

pub use super::catalog_state::ApiDocs;

/// What the billing services are built from, besides the stores and the catalog.
pub struct BillingSettings {
    /// Péage's own access tokens.
    pub oauth: OAuthConfig,
    /// Who invoices are from.
    pub issuer: Issuer,
    /// What registered JWKS URLs and webhook endpoints may point at.
    pub outbound: Arc<peage_net::OutboundPolicy>,
    /// Seals signing seeds and webhook secrets in the store.
    pub secrets: Arc<SecretBox>,
    /// Called after a key is revoked.
    pub on_revoke: Option<RevocationHook>,
}

pub struct Billing {
    /// The catalog in force; reloads replace it while billing serves.
    pub live: Arc<LiveCatalog>,
    pub store: Arc<dyn BillingStore>,
    pub usage: Arc<dyn UsageStore>,
    /// Who invoices are from.
    pub issuer: Issuer,
    pub(crate) oauth: OAuthConfig,
    /// What partner issuers' JWKS URLs and webhook endpoints may point at.
    pub(crate) outbound: Arc<peage_net::OutboundPolicy>,
    pub(crate) secrets: Arc<SecretBox>,
    pub(crate) on_revoke: Option<RevocationHook>,
    /// Each API version's OpenAPI document, by (api, version), as the catalog names them.
    pub(crate) api_docs: RwLock<ApiDocs>,
    /// Where `POST /v1/events` puts usage events; unset, events are refused as unavailable.
    pub(crate) events: OnceLock<EventsIntake>,
    /// The partners usage events' subjects named lately (`POST /v1/events`).
    pub(crate) subjects: SubjectCache,
    /// The duplicate look-ups of concurrent `POST /v1/events` requests, made together.
    pub(crate) digests: DigestLookups,
    /// Catalog reloads: where from, who else is told, what happened last.
    pub(crate) reloads: Reloads,
    /// When these services started (the first catalog's time in force).
    pub(crate) started: chrono::DateTime<chrono::Utc>,
    /// The gateway's address as partners call it, shown with the API docs (set once known).
    pub(crate) gateway_url: OnceLock<String>,
}

impl Billing {
    pub fn new(
        live: Arc<LiveCatalog>,
        store: Arc<dyn BillingStore>,
        usage: Arc<dyn UsageStore>,
        settings: BillingSettings,
    ) -> Billing {
        let BillingSettings {
            oauth,
            issuer,
            outbound,
            secrets,
            on_revoke,
        } = settings;
        Billing {
            issuer,
            live,
            store,
            usage,
            oauth,
            outbound,
            secrets,
            on_revoke,
            api_docs: Default::default(),
            events: OnceLock::new(),
            subjects: SubjectCache::default(),
            digests: DigestLookups::default(),
            reloads: Reloads::default(),
            started: chrono::Utc::now(),
            gateway_url: OnceLock::new(),
        }
    }

    /// Records the gateway's address as partners call it (`peage up` once it listens; the
    /// `billing.gateway_url` setting in a distributed setup). The first one set stays.
    pub fn set_gateway_url(&self, url: &str) {
        let _ = self.gateway_url.set(url.trim_end_matches('/').to_string());
    }

    /// The catalog in force now. An operation takes it once, so it runs on one catalog
    /// whatever reload happens meanwhile.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.live.get()
    }

    /// The invoicing engine on the catalog in force now (an invoice run keeps it to the end).
    pub fn invoicing(&self) -> Invoicing {
        Invoicing {
            catalog: self.catalog(),
            store: Arc::clone(&self.store),
            usage: Arc::clone(&self.usage),
            issuer: self.issuer.clone(),
        }
    }

    /// Turns on the events API, writing to `intake.sink`. Once: false if it was already on.
    pub fn take_events(&self, intake: EventsIntake) -> bool {
        self.events.set(intake).is_ok()
    }

    /// The events API's intake, or [`ServiceError::EventsOff`].
    pub(crate) fn intake(&self) -> Result<&EventsIntake, ServiceError> {
        self.events.get().ok_or(ServiceError::EventsOff)
    }

    /// Replaces the API versions' OpenAPI documents the dashboard shows.
    pub fn set_api_docs(&self, docs: ApiDocs) {
        if let Ok(mut d) = self.api_docs.write() {
            *d = docs;
        }
    }

    /// Checks a URL a caller registers for Péage to call (a JWKS, a webhook endpoint) against
    /// the outbound policy, its DNS answer included; the refusal names `field` and the reason.
    pub(crate) async fn check_outbound_url(
        &self,
        field: &str,
        url: &str,
    ) -> Result<(), ServiceError> {
        let refused = |e: peage_net::Refused| ServiceError::Invalid(format!("{field}: {e}"));
        let uri = self.outbound.check_url(url).map_err(refused)?;
        self.outbound.check_resolved(&uri).await.map_err(refused)
    }

    /// Tells an in-process gateway that a key was revoked.
    pub(crate) fn revoked(&self) {
        if let Some(hook) = &self.on_revoke {
            hook();
        }
    }
}
