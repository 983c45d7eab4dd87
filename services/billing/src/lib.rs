//! The control API (`:8090`): the catalog as loaded, partners and their plans, API keys, usage
//! per meter and the upcoming invoice. Every `/v1` route needs the admin bearer token; every
//! error is `application/problem+json`, mapped once from [`ApiError`].

mod error;
pub mod invoice_routes;
pub mod invoicing;
pub mod oauth;
pub mod pdf;
pub mod provisioning;
mod quota;
mod routes;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use http::header;
use peage_billing_store::BillingStore;
use peage_core::Catalog;
use peage_usage_store::UsageStore;
use subtle::ConstantTimeEq;

pub use error::ApiError;
pub use oauth::OAuthConfig;

/// Called after a key is revoked, so an in-process gateway forgets it at once.
pub type RevocationHook = Arc<dyn Fn() + Send + Sync>;

pub struct ControlApi {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) store: Arc<dyn BillingStore>,
    pub(crate) usage: Arc<dyn UsageStore>,
    admin_token: String,
    pub(crate) on_revoke: Option<RevocationHook>,
    pub(crate) oauth: OAuthConfig,
    pub invoicing: invoicing::Invoicing,
}

impl ControlApi {
    pub fn new(
        catalog: Arc<Catalog>,
        store: Arc<dyn BillingStore>,
        usage: Arc<dyn UsageStore>,
        admin_token: String,
        on_revoke: Option<RevocationHook>,
        oauth: OAuthConfig,
        issuer: invoicing::Issuer,
    ) -> Arc<ControlApi> {
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
        })
    }

    pub fn router(self: &Arc<ControlApi>) -> Router {
        let v1 = Router::new()
            .route("/plans", get(routes::plans))
            .route("/apis", get(routes::apis))
            .route(
                "/partners",
                post(routes::create_partner).get(routes::list_partners),
            )
            .route("/partners/{id}", get(routes::get_partner))
            .route(
                "/partners/{id}/subscription",
                put(routes::change_subscription),
            )
            .route(
                "/partners/{id}/keys",
                post(routes::create_key).get(routes::list_keys),
            )
            .route("/keys/{key_id}", delete(routes::revoke_key))
            .route("/partners/{id}/usage", get(routes::usage))
            .route("/partners/{id}/quotas", get(quota::partner_quotas))
            .route("/quota/leases", post(quota::lease))
            .route("/partners/{id}/issuer", put(oauth::put_issuer))
            .route("/oauth/signing-keys/rotate", post(oauth::rotate))
            .route(
                "/partners/{id}/invoices/upcoming",
                get(routes::upcoming_invoice),
            )
            .route("/invoices", get(invoice_routes::list))
            .route("/invoices/run", post(invoice_routes::run))
            .route("/invoices/{id}", get(invoice_routes::get))
            .route("/invoices/{id}/finalize", post(invoice_routes::finalize))
            .route("/invoices/{id}/void", post(invoice_routes::void))
            .route(
                "/partners/{id}/billing",
                put(invoice_routes::put_profile).get(invoice_routes::get_profile),
            )
            .route(
                "/partners/{id}/credits",
                post(invoice_routes::add_credit).get(invoice_routes::credits),
            )
            .route(
                "/webhooks",
                post(invoice_routes::add_webhook).get(invoice_routes::webhooks),
            )
            .route("/webhooks/deliveries", get(invoice_routes::deliveries))
            .fallback(|| async { ApiError::NotFound("no such route".into()) })
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(self),
                require_admin,
            ));
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/oauth/token", post(oauth::token))
            .route("/.well-known/jwks.json", get(oauth::jwks))
            .nest("/v1", v1)
            .with_state(Arc::clone(self))
    }
}

async fn require_admin(
    State(api): State<Arc<ControlApi>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    let ok = !api.admin_token.is_empty()
        && bool::from(presented.as_bytes().ct_eq(api.admin_token.as_bytes()));
    if !ok {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(req).await)
}

/// Serves the control API until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<ControlApi>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api.router())
        .with_graceful_shutdown(shutdown)
        .await
}
