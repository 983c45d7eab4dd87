//! Who is calling the control API, and what they may read.
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
//! Why links rather than a partner admin key: an API key is a long-lived gateway credential
//! that lives in partners' servers; making it a browser password too would let a key leaked from
//! a server rotate keys and read invoices. A link is single-use, expires in 15 minutes, is
//! stored only as a SHA-256, carries its token in the URL fragment (never sent to a server or a
//! log), and needs a click (mail scanners that open links do not use it up). The session it
//! opens lives server-side, so signing out ends it everywhere.
//!
//! Cookie-authenticated writes must carry `X-Peage-Csrf: 1`: a header another site cannot make a
//! browser send without a CORS preflight, which this server never grants (the cookie is also
//! `SameSite=Strict`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use chrono::{Duration, Utc};
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use peage_billing_store::{DashboardGrant, DashboardRole, StaffMember, StaffRole};
use peage_core::{InvoiceRecord, InvoiceStatus};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::routes::body;
use crate::{ApiError, ControlApi};

pub const SESSION_COOKIE: &str = "peage_session";
pub const CSRF_HEADER: &str = "x-peage-csrf";
/// Service tokens are `pst_` and 64 hex digits.
pub const SERVICE_TOKEN_PREFIX: &str = "pst_";
const LINK_TTL_MINUTES: i64 = 15;
const SESSION_TTL_HOURS: i64 = 12;

/// The caller of a `/v1` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin bearer token.
    AdminToken,
    /// A named staff member's dashboard session, with their role as of this request.
    Staff(StaffMember),
    /// A partner's dashboard session.
    Partner(String),
    /// A service token (`pst_…`): a role or a script, limited to its scope's routes.
    Service { id: String, scope: ServiceScope },
}

/// What a service token may do (docs/security.md, "Service tokens").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceScope {
    /// A gateway: quota leases (and, as they move off the database, key resolution).
    Gateway,
    /// Usage from the company's own services (the events API).
    EventsWrite,
    /// What a finance staff member may do.
    Finance,
    /// Every staff route that only reads.
    ReadOnly,
    /// Everything the admin token may do.
    Admin,
}

/// The routes a gateway token reaches: (method, route as the router names it).
pub const GATEWAY_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/quota/leases"),
    ("GET", "/v1/gateway/keys/{secret_hash}"),
    ("GET", "/v1/gateway/key-ids/{key_id}"),
    ("GET", "/v1/gateway/issuers"),
    ("GET", "/v1/gateway/revocations"),
];
/// The routes an `events:write` token reaches.
pub const EVENTS_ROUTES: &[(&str, &str)] =
    &[("POST", "/v1/events"), ("POST", "/v1/events/cancellations")];

impl ServiceScope {
    pub const ALL: [ServiceScope; 5] = [
        ServiceScope::Gateway,
        ServiceScope::EventsWrite,
        ServiceScope::Finance,
        ServiceScope::ReadOnly,
        ServiceScope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceScope::Gateway => "gateway",
            ServiceScope::EventsWrite => "events:write",
            ServiceScope::Finance => "finance",
            ServiceScope::ReadOnly => "read-only",
            ServiceScope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<ServiceScope> {
        ServiceScope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether the scope reaches `route` (the router's template, `/v1/keys/{key_id}`) with
    /// `method`. Service tokens are managed by admins alone.
    pub fn allows(self, method: &Method, route: &str) -> bool {
        let listed = |routes: &[(&str, &str)]| {
            routes
                .iter()
                .any(|(m, r)| *m == method.as_str() && *r == route)
        };
        let admin_only = route.starts_with("/v1/service-tokens")
            || route.starts_with("/v1/staff")
            || route == "/v1/audit";
        match self {
            ServiceScope::Admin => true,
            ServiceScope::Finance => !admin_only,
            ServiceScope::ReadOnly => matches!(*method, Method::GET | Method::HEAD) && !admin_only,
            ServiceScope::Gateway => listed(GATEWAY_ROUTES),
            ServiceScope::EventsWrite => listed(EVENTS_ROUTES),
        }
    }
}

impl From<StaffRole> for ServiceScope {
    /// A staff member reaches the routes of the service scope of their role's name.
    fn from(role: StaffRole) -> ServiceScope {
        match role {
            StaffRole::Viewer => ServiceScope::ReadOnly,
            StaffRole::Finance => ServiceScope::Finance,
            StaffRole::Admin => ServiceScope::Admin,
        }
    }
}

impl Principal {
    /// Who this is, as the audit log and invoices name them: `admin` (the admin token),
    /// `staff:<email>`, `partner:<id>`, `service:<id>:<scope>`.
    pub fn label(&self) -> String {
        match self {
            Principal::AdminToken => "admin".into(),
            Principal::Staff(m) => format!("staff:{}", m.email),
            Principal::Partner(p) => format!("partner:{p}"),
            Principal::Service { id, scope } => format!("service:{id}:{}", scope.as_str()),
        }
    }

    /// Whether the caller may do everything (manage staff, service tokens, read the audit log).
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::AdminToken => true,
            Principal::Staff(m) => m.role == StaffRole::Admin,
            Principal::Service { scope, .. } => *scope == ServiceScope::Admin,
            Principal::Partner(_) => false,
        }
    }

    /// Allows a partner session only on its own partner; another partner's id is "not found",
    /// as an id that does not exist.
    pub fn may_see(&self, partner_id: &str) -> Result<(), ApiError> {
        match self {
            Principal::AdminToken | Principal::Staff(_) | Principal::Service { .. } => Ok(()),
            Principal::Partner(own) if own == partner_id => Ok(()),
            Principal::Partner(_) => Err(ApiError::NotFound(format!(
                "partner {partner_id} not found"
            ))),
        }
    }

    /// Whether the caller may see this invoice: staff every one; a partner its own, once
    /// finance has finalized it (drafts are finance's work in progress).
    pub fn may_see_invoice(&self, invoice: &InvoiceRecord) -> bool {
        match self {
            Principal::AdminToken | Principal::Staff(_) | Principal::Service { .. } => true,
            Principal::Partner(own) => {
                *own == invoice.partner_id && invoice.status != InvoiceStatus::Draft
            }
        }
    }

    /// The partner a partner session is limited to; `None` for staff.
    pub fn own_partner(&self) -> Option<&str> {
        match self {
            Principal::AdminToken | Principal::Staff(_) | Principal::Service { .. } => None,
            Principal::Partner(p) => Some(p),
        }
    }

    /// The principal a session or link of `role` is now: `None` for a staff member who was
    /// removed or disabled since.
    pub(crate) async fn of_session(
        store: &dyn peage_billing_store::BillingStore,
        role: DashboardRole,
    ) -> Result<Option<Principal>, ApiError> {
        Ok(match role {
            DashboardRole::Partner { partner_id } => Some(Principal::Partner(partner_id)),
            DashboardRole::Staff { staff_id } => store
                .staff_member(&staff_id)
                .await?
                .filter(|m| m.disabled_at.is_none())
                .map(Principal::Staff),
        })
    }
}

/// The route template a request matched (`/v1/keys/{key_id}`), empty outside routing.
fn matched_route(req: &Request) -> String {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default()
}

fn refuse(scope: ServiceScope, what: &str, method: &Method, route: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "{what} {} may not call {method} {route}",
        scope.as_str()
    ))
}

pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub(crate) fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 32]>()))
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

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
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
    /// Refuses an attempt from an address that has sent too many wrong credentials.
    pub(crate) fn throttle(&self, peer: PeerIp) -> Result<(), ApiError> {
        let Some(ip) = peer.0 else { return Ok(()) };
        self.failures
            .check(ip, std::time::Instant::now())
            .map_err(|t| {
                tracing::warn!(%ip, "control API: too many wrong credentials; attempts refused");
                ApiError::TooManyFailures {
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
                let Some((id, scope)) = service_token(&api, presented).await? else {
                    api.failed(peer);
                    return Err(ApiError::Unauthorized);
                };
                let route = matched_route(&req);
                if !scope.allows(req.method(), &route) {
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
            let token = session_cookie(req.headers()).ok_or(ApiError::Unauthorized)?;
            api.throttle(peer)?;
            let Some(grant) = api
                .store
                .dashboard_session(&token_hash(token), Utc::now())
                .await?
            else {
                api.failed(peer);
                return Err(ApiError::Unauthorized);
            };
            let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                require_csrf(req.headers())?;
            }
            let Some(who) = Principal::of_session(api.store.as_ref(), grant.role).await? else {
                return Err(ApiError::Unauthorized);
            };
            if let Principal::Staff(m) = &who {
                let (scope, route) = (ServiceScope::from(m.role), matched_route(&req));
                if !scope.allows(req.method(), &route) {
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

/// The live service token `presented` is, with its scope; `None` for anything else.
async fn service_token(
    api: &ControlApi,
    presented: &str,
) -> Result<Option<(String, ServiceScope)>, ApiError> {
    if !presented.starts_with(SERVICE_TOKEN_PREFIX) {
        return Ok(None);
    }
    let Some(t) = api
        .store
        .service_token_by_hash(&token_hash(presented))
        .await?
    else {
        return Ok(None);
    };
    if t.revoked_at.is_some() {
        return Ok(None);
    }
    let scope = ServiceScope::parse(&t.scope).ok_or_else(|| {
        ApiError::Internal(format!(
            "service token {} has unknown scope {:?}",
            t.id, t.scope
        ))
    })?;
    Ok(Some((t.id, scope)))
}

/// Layered on the routes only staff may call.
pub(crate) async fn require_staff(
    Extension(who): Extension<Principal>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match who {
        Principal::Partner(_) => Err(ApiError::Forbidden(
            "this route is for staff and admins, not partner sessions".into(),
        )),
        _ => Ok(next.run(req).await),
    }
}

/// `POST /v1/sign-in-links`: either `partner_id` or `staff` (an id or an email).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSignInLink {
    /// The partner the link signs in as.
    pub partner_id: Option<String>,
    /// The staff member (`stf_…` or their email) the link signs in as; admins only.
    pub staff: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SignInLink {
    /// Shown once; only its SHA-256 is stored.
    pub token: String,
    /// The dashboard address that uses it, relative to the control API's base URL.
    pub path: String,
    /// `staff` or `partner`.
    pub role: String,
    pub partner_id: Option<String>,
    pub staff_id: Option<String>,
    pub expires_at: chrono::DateTime<Utc>,
}

#[utoipa::path(post, path = "/v1/sign-in-links", tag = "dashboard",
    request_body = NewSignInLink,
    responses((status = 201, body = SignInLink), (status = 400, response = crate::openapi::BadRequest), (status = 401, response = crate::openapi::Unauthorized), (status = 403, response = crate::openapi::Forbidden), (status = 404, response = crate::openapi::NotFound)),
    security(("admin" = [])))]
pub(crate) async fn create_sign_in_link(
    State(api): State<Arc<ControlApi>>,
    Extension(who): Extension<Principal>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let req: NewSignInLink = body(&raw)?;
    let role = match (req.partner_id, req.staff) {
        (Some(partner_id), None) => DashboardRole::Partner { partner_id },
        (None, Some(staff)) => {
            // A link is the person's password for 15 minutes: only admins hand them out, or
            // a finance member could sign in as an admin.
            if !who.is_admin() {
                return Err(ApiError::Forbidden(
                    "only admins create sign-in links for staff".into(),
                ));
            }
            DashboardRole::Staff {
                staff_id: live_staff(api.store.as_ref(), &staff).await?.id,
            }
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give either partner_id or staff (an id or an email), not both".into(),
            ))
        }
    };
    let link = sign_in_link(api.store.as_ref(), role).await?;
    tracing::info!(role = %link.role, partner_id = ?link.partner_id, staff_id = ?link.staff_id, by = %who.label(), "dashboard sign-in link created");
    let mut r = (StatusCode::CREATED, Json(link)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// The staff member with this id or email, refused when unknown (404) or disabled (400).
pub async fn live_staff(
    store: &dyn peage_billing_store::BillingStore,
    id_or_email: &str,
) -> Result<StaffMember, ApiError> {
    let m = store
        .staff_member(id_or_email.trim())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("staff member {id_or_email} not found")))?;
    if m.disabled_at.is_some() {
        return Err(ApiError::BadRequest(format!(
            "staff member {} is disabled",
            m.email
        )));
    }
    Ok(m)
}

/// Creates a one-time sign-in link for `role` (an existing partner or staff member): what
/// `POST /v1/sign-in-links`, `peage up` and `peage sign-in-link` hand out.
pub async fn sign_in_link(
    store: &dyn peage_billing_store::BillingStore,
    role: DashboardRole,
) -> Result<SignInLink, ApiError> {
    let (role_name, partner_id, staff_id) = role.columns();
    let (role_name, partner_id, staff_id) = (
        role_name.to_string(),
        partner_id.map(String::from),
        staff_id.map(String::from),
    );
    if let Some(id) = &partner_id {
        if store.partner(id).await?.is_none() {
            return Err(ApiError::NotFound(format!("partner {id} not found")));
        }
    }
    if let Some(id) = &staff_id {
        live_staff(store, id).await?;
    }
    let now = Utc::now();
    let token = new_token("psl_");
    let grant = DashboardGrant {
        token_hash: token_hash(&token),
        role,
        created_at: now,
        expires_at: now + Duration::minutes(LINK_TTL_MINUTES),
    };
    store.create_sign_in_link(&grant).await?;
    Ok(SignInLink {
        path: format!("/sign-in#token={token}"),
        token,
        role: role_name,
        partner_id,
        staff_id,
        expires_at: grant.expires_at,
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The token of a sign-in link.
    pub token: String,
}

/// Who a session is.
#[derive(Serialize, ToSchema, Default)]
pub struct SessionInfo {
    /// A staff member's role (`viewer`, `finance`, `admin`), `admin` for the admin token,
    /// `service:<scope>` for a service token, or `partner`.
    pub role: String,
    pub partner_id: Option<String>,
    pub partner_name: Option<String>,
    /// The signed-in staff member.
    pub staff_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

async fn session_info(api: &ControlApi, who: &Principal) -> Result<SessionInfo, ApiError> {
    Ok(match who {
        Principal::AdminToken => SessionInfo {
            role: "admin".into(),
            name: Some("Admin token".into()),
            ..Default::default()
        },
        Principal::Staff(m) => SessionInfo {
            role: m.role.as_str().into(),
            staff_id: Some(m.id.clone()),
            name: Some(m.name.clone()),
            email: Some(m.email.clone()),
            ..Default::default()
        },
        Principal::Service { scope, .. } => SessionInfo {
            role: format!("service:{}", scope.as_str()),
            ..Default::default()
        },
        Principal::Partner(id) => SessionInfo {
            role: "partner".into(),
            partner_id: Some(id.clone()),
            partner_name: api.store.partner(id).await?.map(|p| p.name),
            ..Default::default()
        },
    })
}

fn cookie(value: &str, max_age_s: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("peage_session=; Path=/; Max-Age=0"))
}

/// Behind a TLS-terminating proxy the cookie is marked `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

#[utoipa::path(post, path = "/auth/sign-in", tag = "dashboard",
    request_body = SignIn,
    responses((status = 200, body = SessionInfo, description = "Signed in; the session cookie is set"),
              (status = 400, response = crate::openapi::BadRequest),
              (status = 401, description = "Unknown, used or expired link", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn sign_in(
    State(api): State<Arc<ControlApi>>,
    peer: PeerIp,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    api.throttle(peer)?;
    let req: SignIn = body(&raw)?;
    let now = Utc::now();
    let session = new_token("pss_");
    let Some(grant) = api
        .store
        .redeem_sign_in_link(
            &token_hash(req.token.trim()),
            now,
            &token_hash(&session),
            now + Duration::hours(SESSION_TTL_HOURS),
        )
        .await?
    else {
        api.failed(peer);
        return Err(ApiError::Unauthorized);
    };
    let Some(who) = Principal::of_session(api.store.as_ref(), grant.role).await? else {
        return Err(ApiError::Unauthorized);
    };
    tracing::info!(principal = %who.label(), "dashboard session opened");
    let mut r = Json(session_info(&api, &who).await?).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&session, SESSION_TTL_HOURS * 3600, over_https(&headers)),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// A session's write without the CSRF header: another site's page may not sign a user out (or
/// write anything else) with their cookie.
fn require_csrf(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(CSRF_HEADER) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "a dashboard session's writes must carry the {CSRF_HEADER} header"
        )))
    }
}

#[utoipa::path(post, path = "/auth/sign-out", tag = "dashboard",
    responses((status = 204, description = "The session is ended and its cookie cleared"),
              (status = 403, response = crate::openapi::Forbidden)))]
pub(crate) async fn sign_out(
    State(api): State<Arc<ControlApi>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = session_cookie(&headers) {
        require_csrf(&headers)?;
        api.store
            .end_dashboard_session(&token_hash(token), Utc::now())
            .await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, over_https(&headers)));
    Ok(r)
}

#[utoipa::path(get, path = "/v1/session", tag = "dashboard",
    responses((status = 200, body = SessionInfo), (status = 401, response = crate::openapi::Unauthorized)),
    security(("admin" = []), ("session" = [])))]
pub(crate) async fn whoami(
    State(api): State<Arc<ControlApi>>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    Ok(Json(session_info(&api, &who).await?).into_response())
}
