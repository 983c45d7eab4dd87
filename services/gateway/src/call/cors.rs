//! CORS at the edge (docs/catalog.md, "CORS"): browsers call an API version through the
//! gateway when its catalog entry has a `cors` policy.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//! right after routing: no key is asked for (browsers send none), nothing is forwarded or
//! metered. Allowed: `204` with the `Access-Control-Allow-*` headers. Not allowed, or a version
//! without a policy: `403 cors-refused` saying why, with no `Access-Control-Allow-Origin`, so
//! the browser stops there. Real calls from an allowed origin, answered by the upstream or
//! refused by the gateway, get `Access-Control-Allow-Origin` and the headers scripts may read.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use peage_core::catalog::cors::CorsPolicy;

use super::refusal::{Refusal, RefusalKind};
use super::route::VersionRoute;
use crate::body::ResponseBody;

/// A version's policy with its header values made once, at load.
pub(crate) struct Cors {
    policy: CorsPolicy,
    methods: HeaderValue,
    max_age: HeaderValue,
    expose: Option<HeaderValue>,
}

impl Cors {
    pub fn new(policy: &CorsPolicy) -> Option<Cors> {
        let join = |v: &[String]| HeaderValue::from_str(&v.join(", ")).ok();
        Some(Cors {
            methods: join(&policy.methods)?,
            max_age: HeaderValue::from(policy.max_age),
            expose: if policy.expose_headers.is_empty() {
                None
            } else {
                Some(join(&policy.expose_headers)?)
            },
            policy: policy.clone(),
        })
    }

    /// The `Access-Control-Allow-Origin` for `origin`, if the policy allows it.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.policy.any_origin() {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin.to_str().ok()?;
        self.policy.allows_origin(o).then(|| origin.clone())
    }

    fn common(&self, allow: HeaderValue, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.policy.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if !self.policy.any_origin() {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// Whether a request is a CORS preflight.
pub(crate) fn is_preflight(head: &Parts) -> bool {
    head.method == Method::OPTIONS
        && head.headers.contains_key(header::ORIGIN)
        && head
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn refused(detail: String) -> Refusal {
    Refusal::new(RefusalKind::CorsRefused, detail)
}

/// The answer to a preflight for `version`.
pub(crate) fn preflight(
    version: &VersionRoute,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Refusal> {
    let name = || format!("{} {}", version.api, version.spec.id);
    let Some(cors) = &version.cors else {
        return Err(refused(format!(
            "{} has no CORS policy, so browsers may not call it from another origin; its catalog entry needs a [cors] table",
            name()
        )));
    };
    let origin = headers
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or(HeaderValue::from_static("null"));
    let Some(allow) = cors.allow_origin(&origin) else {
        return Err(refused(format!(
            "origin {} may not call {}",
            String::from_utf8_lossy(origin.as_bytes()),
            name()
        )));
    };
    let method = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default();
    if !cors.policy.allows_method(method) {
        return Err(refused(format!(
            "method {method} is not allowed from browsers on {} (allowed: {})",
            name(),
            cors.policy.methods.join(", ")
        )));
    }
    let requested = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
    if let Some(list) = requested.and_then(|h| h.to_str().ok()) {
        if let Some(h) = cors.policy.refused_header(list) {
            return Err(refused(format!(
                "request header {h} is not allowed from browsers on {} (allowed: {})",
                name(),
                cors.policy.headers.join(", ")
            )));
        }
    }
    let mut r = Response::new(ResponseBody::full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    cors.common(allow, h);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, cors.methods.clone());
    if let Some(list) = requested {
        // Every requested header was checked against the policy above.
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, list.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
    for v in [
        "Access-Control-Request-Method",
        "Access-Control-Request-Headers",
    ] {
        h.append(header::VARY, HeaderValue::from_static(v));
    }
    Ok(r)
}

/// Adds the CORS headers of a real call from `origin` to its answer, if the version's policy
/// allows the origin.
pub(crate) fn decorate(version: &VersionRoute, origin: &HeaderValue, headers: &mut HeaderMap) {
    let Some(cors) = &version.cors else {
        return;
    };
    let Some(allow) = cors.allow_origin(origin) else {
        return;
    };
    cors.common(allow, headers);
    if let Some(expose) = &cors.expose {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
    }
}
