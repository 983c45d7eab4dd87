//! The proxy handler: authenticate, route, forward, meter.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited as BodyLimit};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use peage_core::catalog::{Protocol, VersionStatus};
use peage_core::ids::api_key;
use peage_core::{CallEvent, Env};
use rust_decimal::Decimal;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::body::{CountingBody, Finished, MeteredBody, OnFinish, RequestTally};
use crate::jwt::{scope_allows, JwtError};
use crate::keys::ResolvedKey;
use crate::limits::Limited;
use crate::quota::{Demand, Refusal, Taken};
use crate::{graphql, grpc, problem, Gateway};

pub(crate) type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// A pooled client for upstreams. `http2_only`: gRPC upstreams, spoken to over HTTP/2 with prior
/// knowledge (h2c) on `http://` and through ALPN on `https://`. `https://` upstreams are
/// verified against the system's CA certificates plus `extra_roots` (a private CA).
pub(crate) fn upstream_client(
    connect_timeout: Duration,
    http2_only: bool,
    extra_roots: &[CertificateDer<'static>],
) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "gateway: a system CA certificate could not be read");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    for cert in extra_roots {
        if let Err(e) = roots.add(cert.clone()) {
            tracing::warn!(error = %e, "gateway: an upstream CA certificate was refused");
        }
    }
    if added == 0 && extra_roots.is_empty() {
        // Plain-http upstreams still work; https ones fail verification, loudly.
        tracing::warn!("no system CA certificates found; https upstreams will be refused");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let https = if http2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().enable_http2().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(http2_only)
        .build(https)
}

/// The certificates of a PEM file's text (a private CA for upstreams).
pub fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in the file".into());
    }
    Ok(certs)
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_str(n.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(listed.iter()) {
        headers.remove(name);
    }
}

const UNITS_HEADER: &str = "peage-units";

/// Everything the call's event needs, completed when the response body ends.
struct PendingCall {
    gateway: Arc<Gateway>,
    started: Instant,
    event: CallEvent,
    request: Arc<RequestTally>,
    taken: Taken,
    /// gRPC calls: their status and message counts go on the event.
    grpc: Option<GrpcCall>,
}

struct GrpcCall {
    /// The catalog weight of the method; a call is charged it once per message of its
    /// busier direction (a unary call once), unless the upstream sends `Peage-Units`.
    weight: Decimal,
    units_from_upstream: bool,
    /// A trailers-only answer carries its status in the headers.
    header_status: Option<String>,
}

impl OnFinish for PendingCall {
    fn finish(self: Box<Self>, finished: Finished) {
        let mut event = self.event;
        event.latency_us = self.started.elapsed().as_micros() as u64;
        event.request_bytes = self.request.bytes.load(Ordering::Relaxed);
        event.response_bytes = finished.bytes;
        if finished.outcome != "complete" {
            event
                .attributes
                .insert("outcome".into(), finished.outcome.into());
        }
        if let Some(g) = self.grpc {
            let sent = self.request.messages.load(Ordering::Relaxed);
            let a = &mut event.attributes;
            a.insert("grpc_request_messages".into(), sent.to_string());
            a.insert(
                "grpc_response_messages".into(),
                finished.messages.to_string(),
            );
            if let Some(status) = finished.grpc_status.or(g.header_status) {
                a.insert("grpc_status".into(), status);
            }
            if !g.units_from_upstream {
                event.units = g.weight * Decimal::from(sent.max(finished.messages).max(1));
            }
        }
        if !self.taken.is_empty() {
            let catalog = &self.gateway.catalog;
            self.taken.settle(|meter| {
                catalog
                    .meter(meter)
                    .map_or(Decimal::ZERO, |m| m.contribution(&event))
            });
        }
        self.gateway
            .latency
            .observe(&event.api, &event.version, event.status, event.latency_us);
        self.gateway.emitter.emit(event);
    }
}

/// 429 for a per-key rate limit (draft-ietf-httpapi-ratelimit-headers).
fn rate_limited(l: Limited) -> Response {
    let secs = l.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Rate limit exceeded",
        format!(
            "this key may make {} calls per second; retry in {secs} s",
            l.per_second
        ),
    );
    ratelimit_headers(&mut r, "rate", &l.per_second.to_string(), 1, secs);
    r
}

/// `RateLimit-Policy`, `RateLimit` (draft-ietf-httpapi-ratelimit-headers) and `Retry-After` of a
/// refused call: policy `name` allows `quota` per `window` seconds; none left for `secs`.
fn ratelimit_headers(r: &mut Response, name: &str, quota: &str, window: i64, secs: u64) {
    let h = r.headers_mut();
    for (header, value) in [
        (
            "ratelimit-policy",
            format!("\"{name}\";q={quota};w={window}"),
        ),
        ("ratelimit", format!("\"{name}\";r=0;t={secs}")),
        ("retry-after", secs.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(header, v);
        }
    }
}

/// 429 for a hard quota, 503 when billing cannot be reached and the policy refuses.
fn quota_refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::HardBlocked {
            meter,
            limit,
            period_seconds,
            resets_at,
        } => {
            let secs = (resets_at - Utc::now()).num_seconds().max(1);
            let mut r = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "quota-exceeded",
                "Quota exceeded",
                format!(
                    "the {meter:?} quota of {limit} for this billing period is used up; it resets at {}",
                    resets_at.to_rfc3339()
                ),
            );
            let quota = limit.normalize().to_string();
            ratelimit_headers(&mut r, &meter, &quota, period_seconds, secs as u64);
            r
        }
        Refusal::Unavailable { meter } => {
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "quota-unavailable",
                "Quota check unavailable",
                format!("the gateway cannot check the {meter:?} quota right now; retry shortly"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

/// Rate limit, then quotas, of the partner's plan; what was taken is settled when the call ends.
async fn admit(gw: &Gateway, key: &ResolvedKey, event: &CallEvent) -> Result<Taken, Response> {
    let Some(plan) = gw.catalog.plan(&key.plan_id) else {
        return Ok(Taken::none());
    };
    if let Some(limit) = &plan.rate_limit {
        gw.limits.check(&key.key_id, limit).map_err(rate_limited)?;
    }
    let Some(quotas) = &gw.quotas else {
        return Ok(Taken::none());
    };
    let demands: Vec<Demand> = plan
        .quotas
        .iter()
        .filter_map(|q| {
            let meter = gw.catalog.meter(&q.meter)?;
            meter.may_match(event).then(|| Demand {
                meter: &q.meter,
                kind: q.kind,
                estimate: meter.estimate(event),
            })
        })
        .collect();
    if demands.is_empty() {
        return Ok(Taken::none());
    }
    quotas
        .admit(&key.partner_id, key.env, &demands)
        .await
        .map_err(quota_refused)
}

/// `GET /users/42/orders` → `GET /users/{id}/orders`: ids would make every call its own operation.
fn default_operation(method: &str, rest: &str) -> String {
    let looks_like_id = |s: &str| {
        s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() >= 16 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    };
    let path: Vec<&str> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| if looks_like_id(s) { "{id}" } else { s })
        .collect();
    format!("{method} /{}", path.join("/"))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(detail: &str) -> Response {
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"peage\""),
    );
    r
}

async fn authenticate(gw: &Gateway, headers: &HeaderMap) -> Result<ResolvedKey, Response> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized(
            "send an API key (`Authorization: Bearer pk_live_…`) or an access token",
        ));
    };
    if api_key::env_of(token).is_none() {
        return match (&gw.jwt, token.bytes().filter(|b| *b == b'.').count()) {
            (Some(verifier), 2) => match verifier.verify(token, &gw.keys).await {
                Ok(k) => Ok(k),
                Err(JwtError::Invalid(why)) => Err(unauthorized(&why)),
                Err(JwtError::Unavailable(why)) => {
                    tracing::error!(error = %why, "gateway: cannot check a token");
                    Err(problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "token-check-unavailable",
                        "Token check unavailable",
                        "the gateway cannot check access tokens right now; retry shortly",
                    ))
                }
            },
            _ => Err(unauthorized(
                "the credential is neither a Péage API key nor an accepted access token",
            )),
        };
    }
    match gw.keys.resolve(&api_key::secret_hash(token)).await {
        Ok(Some(k)) if !k.revoked => Ok(k),
        Ok(Some(_)) => Err(unauthorized("this API key has been revoked")),
        Ok(None) => Err(unauthorized("unknown API key")),
        Err(e) => {
            tracing::error!(error = %e, "gateway: key lookup failed");
            Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "key-lookup-unavailable",
                "Key lookup unavailable",
                "the gateway cannot check API keys right now; retry shortly",
            ))
        }
    }
}

/// Where a call goes: `/{api}/{version}/{rest}`, or `/{api}/{rest}` with an `Api-Version`
/// header. `rest` keeps the path byte for byte (percent-encoding included).
pub(crate) struct Route {
    api: String,
    version: String,
    rest: String,
}

const API_VERSION: &str = "api-version";

fn route(gw: &Gateway, req: &Request, grpc: bool) -> Result<Route, Box<Response>> {
    let path = req.uri().path();
    let mut parts = path.splitn(3, '/').skip(1);
    let api = parts.next().unwrap_or("").to_string();
    if grpc {
        // gRPC clients call `/{package.Service}/{Method}` and cannot add a prefix: the
        // catalog says which API version serves each service.
        if let Some((a, v)) = gw.catalog.grpc_service(&api) {
            return Ok(Route {
                api: a.name.clone(),
                version: v.id.clone(),
                rest: path.to_string(),
            });
        }
    }
    let tail = parts.next().map(|t| format!("/{t}")).unwrap_or_default();
    let split = |tail: &str| -> (String, String) {
        let mut p = tail.splitn(3, '/').skip(1);
        let first = p.next().unwrap_or("").to_string();
        let rest = p
            .next()
            .map(|r| format!("/{r}"))
            .unwrap_or_else(|| "/".into());
        (first, rest)
    };
    let (second, after_second) = split(&tail);
    let header = match req.headers().get(API_VERSION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.trim().to_string()),
        Some(Err(_)) => {
            return Err(Box::new(problem(
                StatusCode::BAD_REQUEST,
                "bad-api-version",
                "Bad Api-Version header",
                "the Api-Version header must be a version id such as v1",
            )))
        }
    };
    let route = match header {
        None => Route {
            api,
            version: second,
            rest: after_second,
        },
        // The path names a version of this API too: they must agree.
        Some(h) if gw.catalog.api_version(&api, &second).is_some() => {
            if h != second {
                return Err(Box::new(problem(
                    StatusCode::BAD_REQUEST,
                    "api-version-conflict",
                    "Conflicting API versions",
                    format!(
                        "the path asks for {second} and the Api-Version header for {h}; send one"
                    ),
                )));
            }
            Route {
                api,
                version: second,
                rest: after_second,
            }
        }
        Some(h) => Route {
            api,
            version: h,
            rest: if tail.is_empty() { "/".into() } else { tail },
        },
    };
    Ok(route)
}

/// Every answer for a deprecated version carries `Deprecation` (RFC 9745), `Sunset`
/// (RFC 8594) and, when the catalog names one, a `Link` to the successor version.
pub(crate) async fn handle(
    State(gw): State<Arc<Gateway>>,
    connect: ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let grpc = grpc::is_grpc(req.headers());
    let route = match route(&gw, &req, grpc) {
        Ok(r) => r,
        Err(r) => return as_grpc_if(grpc, *r).await,
    };
    let version = gw.catalog.api_version(&route.api, &route.version);
    let response = handle_call(&gw, connect, &route, version, req).await;
    let mut response = as_grpc_if(grpc, response).await;
    if let Some(v) = version {
        deprecation_headers(&route.api, v, response.headers_mut());
    }
    response
}

/// A gRPC client cannot read problem+json: the gateway's own refusals are sent to it as gRPC
/// statuses. Upstream answers pass as they are.
async fn as_grpc_if(grpc: bool, response: Response) -> Response {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c == peage_core::problem::CONTENT_TYPE);
    if !grpc || !is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let detail = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|p| p.get("detail").and_then(|d| d.as_str()).map(str::to_string))
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    grpc::from_problem(parts.status, &detail, &parts.headers)
}

/// The lifecycle headers of a deprecated version; nothing for an active or retired one.
pub(crate) fn deprecation_headers(
    api: &str,
    v: &peage_core::catalog::ApiVersion,
    headers: &mut HeaderMap,
) {
    if v.status != VersionStatus::Deprecated {
        return;
    }
    let midnight = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    if let Some(at) = v.deprecated.and_then(midnight) {
        if let Ok(h) = HeaderValue::from_str(&format!("@{}", at.timestamp())) {
            headers.insert("deprecation", h);
        }
    }
    if let Some(at) = v.sunset.and_then(midnight) {
        let date = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        if let Ok(h) = HeaderValue::from_str(&date) {
            headers.insert("sunset", h);
        }
    }
    if let Some(next) = &v.successor {
        let link = format!("</{api}/{next}>; rel=\"successor-version\"");
        if let Ok(h) = HeaderValue::from_str(&link) {
            headers.append(header::LINK, h);
        }
    }
}

async fn handle_call(
    gw: &Arc<Gateway>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    route: &Route,
    api_version: Option<&peage_core::catalog::ApiVersion>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let time = peage_core::event::truncate_to_micros(Utc::now());
    let key = match authenticate(gw, req.headers()).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    if !gw.emitter.accepting() {
        // The metering spool is full and the operator chose fail_closed: a call that could
        // not be metered is not served.
        let mut r = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "metering-unavailable",
            "Metering backlog full",
            "the gateway cannot record calls right now; retry shortly",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    }

    let (api, version, rest) = (
        route.api.as_str(),
        route.version.as_str(),
        route.rest.as_str(),
    );
    let Some(api_version) = api_version else {
        return problem(
            StatusCode::NOT_FOUND,
            "unknown-api",
            "Unknown API or version",
            format!("no API {api:?} with version {version:?}; call /{{api}}/{{version}}/…"),
        );
    };
    if let Some(scopes) = &key.scopes {
        if !scope_allows(scopes, api, version) {
            let mut r = problem(
                StatusCode::FORBIDDEN,
                "insufficient-scope",
                "Insufficient scope",
                format!(
                    "the token's scope ({}) does not include {api}:{version}",
                    scopes.join(" ")
                ),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"peage\", error=\"insufficient_scope\""),
            );
            return r;
        }
    }
    if api_version.status == VersionStatus::Retired {
        return problem(
            StatusCode::GONE,
            "version-retired",
            "API version retired",
            format!("{api} {version} is retired"),
        );
    }
    let base = match key.env {
        Env::Live => Some(api_version.live.as_str()),
        Env::Sandbox => api_version.sandbox.as_deref(),
    };
    let Some(base) = base else {
        return problem(
            StatusCode::FORBIDDEN,
            "no-sandbox",
            "No sandbox for this API",
            format!("{api} {version} has no sandbox upstream; use a live key"),
        );
    };

    let limit = gw.config.max_request_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large(limit);
    }
    let method = req.method().as_str().to_string();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let target = format!("{base}{rest}{query}");
    let (mut head, body) = req.into_parts();
    let mut attributes = std::collections::BTreeMap::new();
    let (operation, weight, body) = match api_version.protocol {
        Protocol::Http => {
            let op = api_version.operation_for(&method, rest);
            let name = op.map_or_else(|| default_operation(&method, rest), |o| o.name.clone());
            (name, op.map_or(Decimal::ONE, |o| o.units), body)
        }
        Protocol::Grpc => {
            let op = api_version.operation_named(rest);
            (rest.to_string(), op.map_or(Decimal::ONE, |o| o.units), body)
        }
        Protocol::Graphql => {
            // The document is read whole (within the body limit) to name the operation.
            let bytes = match BodyLimit::new(body, limit as usize).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<LengthLimitError>() => return too_large(limit),
                Err(e) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "bad-request-body",
                        "Request body could not be read",
                        e.to_string(),
                    )
                }
            };
            let content_type = head
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let call = match graphql::read(&head.method, content_type, head.uri.query(), &bytes) {
                Ok(c) => c,
                Err(why) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "bad-graphql-request",
                        "GraphQL request not understood",
                        why,
                    )
                }
            };
            attributes.insert("graphql_operation_type".to_string(), call.kind.to_string());
            attributes.insert(
                "graphql_root_fields".to_string(),
                call.root_fields.join(","),
            );
            let weight = api_version
                .operation_named(&call.operation)
                .map_or(Decimal::ONE, |o| o.units);
            (call.operation, weight, Body::from(bytes))
        }
    };
    let is_grpc = api_version.protocol == Protocol::Grpc;

    let mut event = CallEvent {
        id: uuid::Uuid::now_v7(),
        time,
        partner_id: key.partner_id.clone(),
        key_id: key.key_id.clone(),
        env: key.env,
        api: api.to_string(),
        version: version.to_string(),
        operation,
        method,
        status: 0,
        latency_us: 0,
        request_bytes: 0,
        response_bytes: 0,
        units: weight,
        gateway_id: gw.config.gateway_id.clone(),
        attributes,
    };

    let taken = match admit(gw, &key, &event).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let soft_exceeded = taken.soft_exceeded.join(",");
    if !soft_exceeded.is_empty() {
        event
            .attributes
            .insert("quota_soft_exceeded".into(), soft_exceeded.clone());
    }

    let mut pending = PendingCall {
        gateway: Arc::clone(gw),
        started,
        event,
        request: Arc::default(),
        taken,
        grpc: is_grpc.then_some(GrpcCall {
            weight,
            units_from_upstream: false,
            header_status: None,
        }),
    };

    let original_host = head.headers.get(header::HOST).cloned();
    let trailers_wanted = head
        .headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut head.headers);
    if trailers_wanted {
        // `TE: trailers` is end to end in HTTP/2, and gRPC servers require it.
        head.headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    head.headers.remove(header::AUTHORIZATION);
    head.headers.remove(header::HOST);
    let forwarded_for = match head
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prior) => format!("{prior}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    let h = &mut head.headers;
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        h.insert("x-forwarded-host", host);
    }
    if let Ok(v) = HeaderValue::from_str(&key.partner_id) {
        h.insert("peage-partner-id", v);
    }
    h.insert("peage-env", HeaderValue::from_static(key.env.as_str()));
    head.uri = match Uri::from_str(&target) {
        Ok(u) => u,
        Err(e) => {
            return finish_error(
                pending,
                problem(
                    StatusCode::BAD_REQUEST,
                    "bad-path",
                    "Bad request path",
                    e.to_string(),
                ),
            )
            .await;
        }
    };
    let client = if is_grpc {
        head.version = http::Version::HTTP_2;
        &gw.h2_client
    } else {
        head.version = http::Version::HTTP_11;
        &gw.client
    };
    let upstream_req = http::Request::from_parts(
        head,
        Body::new(CountingBody::new(
            BodyLimit::new(body, limit as usize),
            Arc::clone(&pending.request),
            is_grpc,
        )),
    );

    let response = match tokio::time::timeout(
        gw.config.upstream_timeout,
        client.request(upstream_req),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if caused_by_body_limit(&e) => {
            return finish_error(pending, too_large(limit)).await;
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, upstream = %base, "gateway: upstream request failed");
            let r = problem(
                StatusCode::BAD_GATEWAY,
                "upstream-unavailable",
                "Upstream unavailable",
                format!("the upstream of {api} {version} could not be reached"),
            );
            return finish_error(pending, r).await;
        }
        Err(_) => {
            let r = problem(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Upstream timeout",
                format!(
                    "the upstream of {api} {version} did not answer within {} ms",
                    gw.config.upstream_timeout.as_millis()
                ),
            );
            return finish_error(pending, r).await;
        }
    };

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(units) = parts.headers.remove(UNITS_HEADER) {
        match units
            .to_str()
            .ok()
            .and_then(|s| Decimal::from_str(s.trim()).ok())
            .filter(|d| !d.is_sign_negative())
        {
            Some(u) => {
                pending.event.units = u;
                if let Some(g) = &mut pending.grpc {
                    g.units_from_upstream = true;
                }
            }
            None => {
                tracing::warn!(api, version, value = ?units, "gateway: ignored an invalid Peage-Units header from the upstream");
                pending.event.attributes.insert(
                    "invalid_units_header".into(),
                    String::from_utf8_lossy(units.as_bytes()).into_owned(),
                );
            }
        }
    }
    pending.event.status = parts.status.as_u16();
    if let Some(g) = &mut pending.grpc {
        g.header_status = grpc::status_of(&parts.headers);
    }
    if !soft_exceeded.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&soft_exceeded) {
            parts.headers.insert("peage-quota-exceeded", v);
        }
    }
    let grpc = pending.grpc.is_some();
    Response::from_parts(
        parts,
        Body::new(MeteredBody::new(body, Box::new(pending), grpc)),
    )
}

fn too_large(limit: u64) -> Response {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request-too-large",
        "Request body too large",
        format!("request bodies are limited to {limit} bytes"),
    )
}

/// Whether an upstream request failed because the partner's body outgrew the limit.
fn caused_by_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Meters a call the gateway answered itself after routing it (502, 504, 400, 413); a gRPC
/// caller gets it as a gRPC status, which the event records too.
async fn finish_error(mut pending: PendingCall, response: Response) -> Response {
    pending.event.status = response.status().as_u16();
    let grpc = pending.grpc.is_some();
    let response = as_grpc_if(grpc, response).await;
    if let Some(g) = &mut pending.grpc {
        g.header_status = grpc::status_of(response.headers());
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(MeteredBody::new(body, Box::new(pending), grpc)),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_operations_fold_ids() {
        assert_eq!(
            default_operation("GET", "/users/42/orders"),
            "GET /users/{id}/orders"
        );
        assert_eq!(default_operation("GET", "/"), "GET /");
        assert_eq!(
            default_operation("DELETE", "/k/0190f3c2-7a41-7d3e-9b8c-4f1a6e01aaaa"),
            "DELETE /k/{id}"
        );
        assert_eq!(default_operation("GET", "/hello"), "GET /hello");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn a_ca_file_must_hold_pem_certificates() {
        assert!(parse_pem_certificates(b"")
            .unwrap_err()
            .contains("no CERTIFICATE"));
        assert!(parse_pem_certificates(
            b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }

    #[test]
    fn bearer_is_case_insensitive_and_trimmed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  pk_live_x "),
        );
        assert_eq!(bearer(&h), Some("pk_live_x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
