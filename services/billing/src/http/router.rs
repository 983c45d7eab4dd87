//! The control API's routes, their middleware and their OpenAPI description, built together so
//! the two cannot drift: a route exists only if it is registered with its `#[utoipa::path]`.

use std::sync::Arc;

use axum::middleware;
use axum::routing::any;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{self, require_admin, require_staff};
use super::error::{self, ApiError};
use super::state::ControlApi;
use super::{
    alerts, audit, catalog, coupons, credit_notes, events, gateway, idempotency, invoices as inv,
    keys, oauth, openapi, partners, payments, profiles, quotas, service_tokens, sessions, staff,
    usage, webhooks,
};
use crate::service::events::MAX_BODY_BYTES;

fn routes(api: &Arc<ControlApi>) -> OpenApiRouter<Arc<ControlApi>> {
    let staff_routes = OpenApiRouter::new()
        .routes(routes!(catalog::plans))
        .routes(routes!(catalog::catalog_status))
        .routes(routes!(catalog::catalog_of_record))
        .routes(routes!(catalog::catalog_versions))
        .routes(routes!(inv::preview, inv::preview_with_catalog))
        .routes(routes!(partners::create_partner, partners::list_partners))
        .routes(routes!(partners::partners_overview))
        .routes(routes!(partners::patch_partner))
        .routes(routes!(partners::change_subscription))
        .routes(routes!(partners::cancel_plan_change))
        .routes(routes!(coupons::create_coupon, coupons::list_coupons))
        .routes(routes!(coupons::attach_coupon))
        .routes(routes!(coupons::remove_coupon))
        .routes(routes!(credit_notes::create))
        .routes(routes!(quotas::lease))
        .routes(routes!(gateway::key_by_hash))
        .routes(routes!(gateway::key_by_id))
        .routes(routes!(gateway::issuer))
        .routes(routes!(gateway::revocations))
        .routes(routes!(oauth::put_issuer))
        .routes(routes!(oauth::rotate))
        .routes(routes!(inv::run))
        .routes(routes!(inv::finalize_period))
        .routes(routes!(inv::finalize))
        .routes(routes!(inv::void))
        .routes(routes!(payments::record))
        .routes(routes!(payments::mark_uncollectible))
        .routes(routes!(profiles::put_profile, profiles::get_profile))
        .routes(routes!(profiles::add_credit, profiles::credits))
        .routes(routes!(webhooks::add_webhook, webhooks::webhooks))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(sessions::create_sign_in_link))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(events::post_events))
                .routes(routes!(events::cancel_events))
                // Bodies are bounded by `events.max_batch_bytes`, checked by the service.
                .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route_layer(middleware::from_fn(require_staff));
    // Reachable by partner sessions too; each handler limits them to their own partner.
    let shared = OpenApiRouter::new()
        .routes(routes!(sessions::whoami))
        .routes(routes!(catalog::apis))
        .routes(routes!(catalog::api_openapi))
        .routes(routes!(partners::get_partner))
        .routes(routes!(partners::entitlements))
        .routes(routes!(partners::partner_plan))
        .routes(routes!(
            profiles::put_billing_details,
            profiles::get_billing_details
        ))
        .routes(routes!(partners::plan_options))
        .routes(routes!(partners::quote_plan))
        .routes(routes!(partners::choose_plan))
        .routes(routes!(partners::plan_changes))
        .routes(routes!(coupons::partner_coupons))
        .routes(routes!(credit_notes::list))
        .routes(routes!(credit_notes::get))
        .routes(routes!(payments::list))
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(usage::usage))
        .routes(routes!(usage::usage_series))
        .routes(routes!(quotas::partner_quotas))
        .routes(routes!(inv::upcoming_invoice))
        .routes(routes!(alerts::forecast))
        .routes(routes!(alerts::create_alert, alerts::list_alerts))
        .routes(routes!(alerts::delete_alert))
        .routes(routes!(inv::list))
        .routes(routes!(inv::get));
    let admin = OpenApiRouter::new()
        .routes(routes!(
            service_tokens::create_token,
            service_tokens::list_tokens
        ))
        .routes(routes!(service_tokens::revoke_token))
        .routes(routes!(audit::list))
        .routes(routes!(catalog::reload_catalog))
        .routes(routes!(staff::add, staff::list))
        .routes(routes!(staff::patch))
        .route_layer(middleware::from_fn(require_admin));
    // Layers run outside in: authentication, then Idempotency-Key (which needs the caller).
    let v1 = staff_routes
        .merge(shared)
        .merge(admin)
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(api),
            idempotency::idempotent,
        ))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(api),
            auth::authenticate,
        ));
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(oauth::token))
        .routes(routes!(oauth::jwks))
        .routes(routes!(sessions::sign_in))
        .routes(routes!(sessions::sign_out))
        .merge(v1)
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The control API is up", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

impl ControlApi {
    pub fn router(self: &Arc<ControlApi>) -> Router {
        let (router, _) = routes(self).split_for_parts();
        router
            .route_layer(middleware::from_fn(audit::tag_route))
            .route("/v1/{*rest}", any(|| async { ApiError::NoRoute }))
            .layer(middleware::from_fn_with_state(
                Arc::clone(self),
                audit::record,
            ))
            .with_state(Arc::clone(self))
    }

    /// The OpenAPI 3.1 document of [`ControlApi::router`] (committed as
    /// `schemas/openapi/control-api.yaml`).
    pub fn openapi(self: &Arc<ControlApi>) -> utoipa::openapi::OpenApi {
        let mut doc = routes(self).split_for_parts().1;
        openapi::document_idempotency(&mut doc);
        openapi::open_flattened_bodies(&mut doc);
        doc
    }
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
