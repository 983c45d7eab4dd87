//! Who is calling the control API (its `/v1` middleware), and which routes they reach.
//!
//! Three ways in:
//! - the admin bearer token (operators bootstrapping a setup): everything;
//! - a service token (`pst_…`, a role or a script): the routes of its scope;
//! - a dashboard session cookie, opened with a one-time sign-in link made for one person or one
//!   partner (`POST /v1/sign-in-links`, `peage sign-in-link`). A staff member's session may do
//!   what their role may (viewer, finance, admin: the same route sets as the service scopes of
//!   those names), read afresh on every request, so a demotion or a disabling counts at once; a
//!   partner session reaches only the routes a partner needs, and on each of them only its own
//!   partner: another partner's ids answer 404, exactly as ids that do not exist, so nothing
//!   leaks.
//!
//! Why links rather than a partner admin key: see `service::sessions`.
//!
//! Cookie-authenticated writes must carry `X-Peage-Csrf: 1`: a header another site cannot make a
//! browser send without a CORS preflight, which this server never grants (the cookie is also
//! `SameSite=Strict`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{header, HeaderMap, Method};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::extract::Caller;
use super::state::{ControlApi, PeerIp};
use crate::service::{Principal, ServiceScope};

pub const SESSION_COOKIE: &str = "peage_session";
pub const CSRF_HEADER: &str = "x-peage-csrf";

/// The route template a request matched (`/v1/keys/{key_id}`), empty outside routing.
fn matched_route(req: &Request) -> String {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default()
}

fn refuse(scope: ServiceScope, what: &str, method: &Method, route: &str) -> ApiError {
    ApiError::OutOfScope(format!(
        "{what} {} may not call {method} {route}",
        scope.as_str()
    ))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or("")
                .trim()
        })
}

/// The session token of the request's cookie.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

/// A session's write without the CSRF header: another site's page may not sign a user out (or
/// write anything else) with their cookie.
pub(crate) fn require_csrf(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(CSRF_HEADER) {
        Ok(())
    } else {
        Err(ApiError::OutOfScope(format!(
            "a dashboard session's writes must carry the {CSRF_HEADER} header"
        )))
    }
}

/// The `/v1` middleware: finds the principal and puts it in the request's extensions.
pub(crate) async fn authenticate(
    State(api): State<Arc<ControlApi>>,
    peer: PeerIp,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = match bearer(req.headers()) {
        Some(presented) => {
            api.throttle(peer)?;
            let admin = !api.admin_token.is_empty()
                && bool::from(presented.as_bytes().ct_eq(api.admin_token.as_bytes()));
            if admin {
                Principal::AdminToken
            } else {
                let Some((id, scope)) = api.billing.service_token(presented).await? else {
                    api.failed(peer);
                    return Err(ApiError::Unauthenticated);
                };
                let route = matched_route(&req);
                if !scope.allows(req.method().as_str(), &route) {
                    return Err(refuse(
                        scope,
                        "a service token of scope",
                        req.method(),
                        &route,
                    ));
                }
                Principal::Service { id, scope }
            }
        }
        None => {
            let token = session_cookie(req.headers()).ok_or(ApiError::Unauthenticated)?;
            api.throttle(peer)?;
            let Some(role) = api.billing.session_role(token).await? else {
                api.failed(peer);
                return Err(ApiError::Unauthenticated);
            };
            let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                require_csrf(req.headers())?;
            }
            let Some(who) = api.billing.session_principal(role).await? else {
                return Err(ApiError::Unauthenticated);
            };
            if let Principal::Staff(m) = &who {
                let (scope, route) = (ServiceScope::from(m.role), matched_route(&req));
                if !scope.allows(req.method().as_str(), &route) {
                    return Err(refuse(
                        scope,
                        "a staff member with role",
                        req.method(),
                        &route,
                    ));
                }
            }
            who
        }
    };
    req.extensions_mut().insert(principal.clone());
    let mut response = next.run(req).await;
    // For the audit log, which records the answer outside routing.
    response.extensions_mut().insert(principal);
    Ok(response)
}

/// Layered on the routes only staff may call.
pub(crate) async fn require_staff(
    Caller(who): Caller,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match who {
        Principal::Partner(_) => Err(ApiError::OutOfScope(
            "this route is for staff and admins, not partner sessions".into(),
        )),
        _ => Ok(next.run(req).await),
    }
}

/// Layered on the admin routes: the admin token, an admin staff member, or an `admin` service
/// token.
pub(crate) async fn require_admin(
    Caller(who): Caller,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if who.is_admin() {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::OutOfScope(
            "this route is for admins: the admin token, an admin staff member or an admin service token".into(),
        ))
    }
}
