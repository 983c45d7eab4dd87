//! The control API (`:8090`): the catalog as loaded, partners and their plans, API keys, usage
//! per meter and the upcoming invoice. Every `/v1` route needs the admin bearer token; every
//! error is `application/problem+json`, mapped once from [`ApiError`].

pub mod audit;
pub mod auth;
mod error;
pub mod events;
pub mod gateway_routes;
mod idempotency;
pub mod invoice_routes;
pub mod invoicing;
pub mod oauth;
mod openapi;
pub mod pdf;
pub mod provisioning;
mod quota;
mod routes;
pub mod secrets;
pub mod service_tokens;
pub mod staff;
pub mod webhooks;

use std::sync::Arc;

use axum::middleware;
use axum::routing::any;
use axum::Router;
use peage_billing_store::BillingStore;
use peage_core::Catalog;
use peage_usage_store::UsageStore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use oauth::OAuthConfig;

/// Called after a key is revoked, so an in-process gateway forgets it at once.
pub type RevocationHook = Arc<dyn Fn() + Send + Sync>;

pub struct ControlApi {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) store: Arc<dyn BillingStore>,
    pub(crate) usage: Arc<dyn UsageStore>,
    pub(crate) admin_token: String,
    pub(crate) on_revoke: Option<RevocationHook>,
    pub(crate) oauth: OAuthConfig,
    /// What partner issuers' JWKS URLs and webhook endpoints may point at.
    pub(crate) outbound: Arc<peage_net::OutboundPolicy>,
    pub(crate) secrets: Arc<secrets::SecretBox>,
    pub invoicing: invoicing::Invoicing,
    /// Each API version's OpenAPI document, by (api, version), as the catalog names them.
    pub(crate) api_docs: std::sync::RwLock<ApiDocs>,
    /// Wrong admin tokens, sessions, sign-in links and OAuth client secrets, per source address.
    pub failures: peage_core::throttle::FailureLimiter,
    /// Where `POST /v1/events` puts usage events; unset, the route answers 503.
    pub(crate) events: std::sync::OnceLock<events::EventsIntake>,
}

/// How the control API is set up, from the operator's configuration.
pub struct ControlSettings {
    /// Péage's own access tokens.
    pub oauth: OAuthConfig,
    /// Who invoices are from.
    pub issuer: invoicing::Issuer,
    /// What registered JWKS URLs and webhook endpoints may point at.
    pub outbound: Arc<peage_net::OutboundPolicy>,
    /// Seals signing seeds and webhook secrets in the store.
    pub secrets: Arc<secrets::SecretBox>,
    /// Wrong credentials one address may send in a minute before it is refused (429).
    pub credential_failures_per_minute: u32,
}

/// OpenAPI documents of API versions, keyed by (api, version).
pub type ApiDocs = std::collections::HashMap<(String, String), serde_json::Value>;

impl ControlApi {
    /// Checks a URL a caller registers for Péage to call (a JWKS, a webhook endpoint) against
    /// the outbound policy, its DNS answer included: a `400` naming the reason.
    pub(crate) async fn check_outbound_url(&self, field: &str, url: &str) -> Result<(), ApiError> {
        let refused = |e: peage_net::Refused| ApiError::BadRequest(format!("{field}: {e}"));
        let uri = self.outbound.check_url(url).map_err(refused)?;
        self.outbound.check_resolved(&uri).await.map_err(refused)
    }

    pub fn new(
        catalog: Arc<Catalog>,
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
        let invoicing = invoicing::Invoicing {
            catalog: Arc::clone(&catalog),
            store: Arc::clone(&store),
            usage: Arc::clone(&usage),
            issuer,
        };
        Arc::new(ControlApi {
            invoicing,
            catalog,
            store,
            usage,
            admin_token,
            on_revoke,
            oauth,
            outbound,
            secrets,
            api_docs: Default::default(),
            events: std::sync::OnceLock::new(),
            failures: peage_core::throttle::FailureLimiter::new(
                credential_failures_per_minute,
                std::time::Duration::from_secs(60),
                65_536,
            ),
        })
    }

    /// Turns on `POST /v1/events`, writing to `intake.sink`. Once: false if it was already on.
    pub fn take_events(&self, intake: events::EventsIntake) -> bool {
        self.events.set(intake).is_ok()
    }

    /// Replaces the API versions' OpenAPI documents the dashboard shows.
    pub fn set_api_docs(&self, docs: ApiDocs) {
        if let Ok(mut d) = self.api_docs.write() {
            *d = docs;
        }
    }

    /// The control API's routes and their OpenAPI description, built together so the two
    /// cannot drift: a route exists only if it is registered with its `#[utoipa::path]`.
    fn routes(self: &Arc<ControlApi>) -> OpenApiRouter<Arc<ControlApi>> {
        use auth::require_staff;
        use invoice_routes as inv;
        let staff = OpenApiRouter::new()
            .routes(routes!(routes::plans))
            .routes(routes!(routes::create_partner, routes::list_partners))
            .routes(routes!(routes::partners_overview))
            .routes(routes!(routes::patch_partner))
            .routes(routes!(routes::change_subscription))
            .routes(routes!(quota::lease))
            .routes(routes!(gateway_routes::key_by_hash))
            .routes(routes!(gateway_routes::key_by_id))
            .routes(routes!(gateway_routes::issuer))
            .routes(routes!(gateway_routes::revocations))
            .routes(routes!(oauth::put_issuer))
            .routes(routes!(oauth::rotate))
            .routes(routes!(inv::run))
            .routes(routes!(inv::finalize))
            .routes(routes!(inv::void))
            .routes(routes!(inv::put_profile, inv::get_profile))
            .routes(routes!(inv::add_credit, inv::credits))
            .routes(routes!(inv::add_webhook, inv::webhooks))
            .routes(routes!(inv::deliveries))
            .routes(routes!(auth::create_sign_in_link))
            .merge(
                OpenApiRouter::new()
                    .routes(routes!(events::post_events))
                    .routes(routes!(events::cancel_events))
                    // Bodies are bounded by `events.max_batch_bytes`, checked in the handler.
                    .layer(axum::extract::DefaultBodyLimit::max(events::MAX_BODY_BYTES)),
            )
            .route_layer(middleware::from_fn(require_staff));
        // Reachable by partner sessions too; each handler limits them to their own partner.
        let shared = OpenApiRouter::new()
            .routes(routes!(auth::whoami))
            .routes(routes!(routes::apis))
            .routes(routes!(routes::api_openapi))
            .routes(routes!(routes::get_partner))
            .routes(routes!(routes::create_key, routes::list_keys))
            .routes(routes!(routes::revoke_key))
            .routes(routes!(routes::rotate_key))
            .routes(routes!(routes::usage))
            .routes(routes!(routes::usage_series))
            .routes(routes!(quota::partner_quotas))
            .routes(routes!(routes::upcoming_invoice))
            .routes(routes!(inv::list))
            .routes(routes!(inv::get));
        let admin = OpenApiRouter::new()
            .routes(routes!(
                service_tokens::create_token,
                service_tokens::list_tokens
            ))
            .routes(routes!(service_tokens::revoke_token))
            .routes(routes!(audit::list))
            .routes(routes!(staff::add, staff::list))
            .routes(routes!(staff::patch))
            .route_layer(middleware::from_fn(service_tokens::require_admin));
        // Layers run outside in: authentication, then Idempotency-Key (which needs the caller).
        let v1 = staff
            .merge(shared)
            .merge(admin)
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(self),
                idempotency::idempotent,
            ))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(self),
                auth::authenticate,
            ));
        OpenApiRouter::with_openapi(openapi::base())
            .routes(routes!(healthz))
            .routes(routes!(oauth::token))
            .routes(routes!(oauth::jwks))
            .routes(routes!(auth::sign_in))
            .routes(routes!(auth::sign_out))
            .merge(v1)
    }

    pub fn router(self: &Arc<ControlApi>) -> Router {
        let (router, _) = self.routes().split_for_parts();
        router
            .route_layer(middleware::from_fn(audit::tag_route))
            .route(
                "/v1/{*rest}",
                any(|| async { ApiError::NotFound("no such route".into()) }),
            )
            .layer(middleware::from_fn_with_state(
                Arc::clone(self),
                audit::record,
            ))
            .with_state(Arc::clone(self))
    }

    /// The OpenAPI 3.1 document of [`ControlApi::router`] (committed as
    /// `schemas/openapi/control-api.yaml`).
    pub fn openapi(self: &Arc<ControlApi>) -> utoipa::openapi::OpenApi {
        let mut doc = self.routes().split_for_parts().1;
        openapi::document_idempotency(&mut doc);
        doc
    }
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The control API is up", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Serves the control API until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<ControlApi>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, api.router(), shutdown).await
}

/// What every route on the control API's port is wrapped in: a panicking handler answers 500
/// problem+json for its own request only, and every error, the framework's own included, is
/// problem+json.
pub fn hardened(router: Router) -> Router {
    router
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .layer(middleware::from_fn(error::problem_for_every_error))
}

/// Serves `router` (the control API merged with the dashboard's pages) until `shutdown`, with
/// each connection's peer address known to the handlers (sign-in and token limits are per
/// address).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = hardened(router).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
