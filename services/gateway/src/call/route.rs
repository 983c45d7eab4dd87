//! Stage 1, route: which API version a call is for, and the path to forward below its base.
//!
//! `/{api}/{version}/{rest}`, or `/{api}/{rest}` with an `Api-Version` header (if the path
//! names a version of the API too, both must agree), or for gRPC `/{package.Service}/{Method}`
//! (gRPC clients cannot prefix paths; the catalog says which version serves each service).
//! `rest` is normalized ([`super::path`]) so it can never leave the version's base.
//!
//! The catalog is turned into lookup tables once, when the gateway starts ([`Routes`]): a call
//! finds its version with two hash lookups by borrowed strings.

use std::sync::Arc;

use foldhash::HashMap;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use peage_core::catalog::{ApiVersion, VersionStatus};
use peage_core::Catalog;

use super::path::{self, EncodedSlashes, PathError};
use super::refusal::{Refusal, RefusalKind};

/// An upstream base URL taken apart once, so a call's target is built, not parsed.
pub(crate) struct UpstreamBase {
    /// As the catalog has it, without a trailing `/` (for logs).
    pub url: String,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// The base's path without a trailing `/` (`""` for none); a call's path goes after it.
    pub path: String,
    /// `Host` for HTTP/1.1 requests to it.
    pub host: HeaderValue,
    /// Its place among the catalog's upstreams: each serving thread's connection pool keeps
    /// this upstream's idle connections there.
    pub slot: usize,
    plain: bool,
}

impl UpstreamBase {
    fn parse(url: &str, slot: usize) -> Option<UpstreamBase> {
        let trimmed = url.trim_end_matches('/');
        let uri: http::Uri = trimmed.parse().ok()?;
        let parts = uri.into_parts();
        let authority = parts.authority?;
        let scheme = parts.scheme?;
        let plain = scheme == http::uri::Scheme::HTTP;
        Some(UpstreamBase {
            url: trimmed.to_string(),
            scheme,
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            slot,
            plain,
            authority,
            path: parts
                .path_and_query
                .map(|p| p.path().trim_end_matches('/').to_string())
                .unwrap_or_default(),
        })
    }

    /// Plain `http://`: served by the serving thread's HTTP/1.1 pool.
    pub fn plain_http(&self) -> bool {
        self.plain
    }

    fn path_and_query(&self, rest: &str, query: Option<&str>) -> String {
        let mut pq =
            String::with_capacity(self.path.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(&self.path);
        pq.push_str(rest);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        pq
    }

    /// `base` + `rest` + `?query`, the absolute URI an upstream request goes to.
    pub fn target(&self, rest: &str, query: Option<&str>) -> Result<http::Uri, http::Error> {
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(self.path_and_query(rest, query))
            .build()
    }

    /// The same target in origin form (path and query only), as HTTP/1.1 sends it.
    pub fn origin_target(&self, rest: &str, query: Option<&str>) -> Result<http::Uri, http::Error> {
        http::Uri::builder()
            .path_and_query(self.path_and_query(rest, query))
            .build()
    }
}

/// One API version as the gateway serves it.
pub(crate) struct VersionRoute {
    /// Position in [`Routes::versions`]; labels its metrics.
    pub index: usize,
    pub api: String,
    pub spec: ApiVersion,
    /// `Deprecation`, `Sunset` and `Link` of a deprecated version, made at load.
    pub lifecycle: Vec<(HeaderName, HeaderValue)>,
    /// The version's CORS policy, its header values made at load.
    pub cors: Option<super::cors::Cors>,
    live: Option<UpstreamBase>,
    sandbox: Option<UpstreamBase>,
}

impl VersionRoute {
    /// The upstream base for a key of this environment; `None`: no sandbox (or a base URL
    /// the catalog let through that is no absolute URL: refused as if missing).
    pub fn base(&self, env: peage_core::Env) -> Option<&UpstreamBase> {
        match env {
            peage_core::Env::Live => self.live.as_ref(),
            peage_core::Env::Sandbox => self.sandbox.as_ref(),
        }
    }

    pub fn add_lifecycle_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.lifecycle {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// The catalog's versions, by API and version id and by gRPC service.
pub(crate) struct Routes {
    by_api: HashMap<String, HashMap<String, Arc<VersionRoute>>>,
    grpc: HashMap<String, Arc<VersionRoute>>,
    pub versions: Vec<Arc<VersionRoute>>,
    /// How many upstream bases the versions have (their slots are `0..upstreams`).
    pub upstreams: usize,
}

impl Routes {
    #[cfg(test)]
    pub fn new(catalog: &Catalog) -> Routes {
        let mut next = 0;
        Routes::with_indices(catalog, &mut |_, _| {
            next += 1;
            next - 1
        })
    }

    /// The routes of `catalog`, each version's metrics slot given by `index_of(api, version)`
    /// (stable across reloads, so a version keeps its series).
    pub fn with_indices(
        catalog: &Catalog,
        index_of: &mut dyn FnMut(&str, &str) -> usize,
    ) -> Routes {
        let mut routes = Routes {
            by_api: HashMap::default(),
            grpc: HashMap::default(),
            versions: Vec::new(),
            upstreams: 0,
        };
        let base = |url: &str, routes: &mut Routes| {
            let b = UpstreamBase::parse(url, routes.upstreams);
            routes.upstreams += 1;
            b
        };
        for api in &catalog.apis {
            for v in &api.versions {
                let live = base(&v.live, &mut routes);
                let sandbox = v.sandbox.as_deref().and_then(|s| base(s, &mut routes));
                let route = Arc::new(VersionRoute {
                    index: index_of(&api.name, &v.id),
                    api: api.name.clone(),
                    spec: v.clone(),
                    lifecycle: lifecycle_headers(&api.name, v),
                    cors: v.cors.as_ref().and_then(super::cors::Cors::new),
                    live,
                    sandbox,
                });
                routes.versions.push(Arc::clone(&route));
                for service in &v.grpc_services {
                    routes
                        .grpc
                        .entry(service.clone())
                        .or_insert_with(|| Arc::clone(&route));
                }
                routes
                    .by_api
                    .entry(api.name.clone())
                    .or_default()
                    .insert(v.id.clone(), route);
            }
        }
        routes
    }

    fn get(&self, api: &str, version: &str) -> Option<&Arc<VersionRoute>> {
        self.by_api.get(api)?.get(version)
    }
}

/// The lifecycle headers of a deprecated version (RFC 9745 `Deprecation`, RFC 8594 `Sunset`,
/// a `Link` to the successor); none for an active or retired one.
fn lifecycle_headers(api: &str, v: &ApiVersion) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if v.status != VersionStatus::Deprecated {
        return out;
    }
    let midnight = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    if let Some(at) = v.deprecated.and_then(midnight) {
        if let Ok(h) = HeaderValue::from_str(&format!("@{}", at.timestamp())) {
            out.push((HeaderName::from_static("deprecation"), h));
        }
    }
    if let Some(at) = v.sunset.and_then(midnight) {
        let date = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        if let Ok(h) = HeaderValue::from_str(&date) {
            out.push((HeaderName::from_static("sunset"), h));
        }
    }
    if let Some(next) = &v.successor {
        let link = format!("</{api}/{next}>; rel=\"successor-version\"");
        if let Ok(h) = HeaderValue::from_str(&link) {
            out.push((header::LINK, h));
        }
    }
    out
}

/// Where a call goes.
pub(crate) struct Routed {
    pub version: Arc<VersionRoute>,
    /// The path below the version's base, normalized; starts with `/`.
    pub rest: String,
}

const API_VERSION: &str = "api-version";

fn bad_path(e: PathError) -> Refusal {
    Refusal::new(RefusalKind::BadPath, e.detail())
}

/// Routes a request by its path (and `Api-Version` header), or refuses it.
pub(crate) fn route(
    routes: &Routes,
    head: &Parts,
    grpc: bool,
    slashes: EncodedSlashes,
) -> Result<Routed, Refusal> {
    let path = head.uri.path();
    let mut parts = path.splitn(3, '/').skip(1);
    let api = parts.next().unwrap_or("");
    if grpc {
        if let Some(v) = routes.grpc.get(api) {
            let rest = path::normalize(path, slashes).map_err(bad_path)?;
            if rest != path {
                // A gRPC method path has no dot segments to resolve.
                return Err(bad_path(PathError::Escapes));
            }
            return Ok(Routed {
                version: Arc::clone(v),
                rest: path.to_string(),
            });
        }
    }
    let tail = parts
        .next()
        .map_or("", |t| &path[path.len() - t.len() - 1..]);
    let (second, after_second) = {
        let t = tail.strip_prefix('/').unwrap_or(tail);
        match t.split_once('/') {
            Some((first, _)) => (first, &t[first.len()..]),
            None => (t, ""),
        }
    };
    let header = match head.headers.get(API_VERSION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.trim()),
        Some(Err(_)) => {
            return Err(Refusal::new(
                RefusalKind::BadApiVersion,
                "the Api-Version header must be a version id such as v1",
            ))
        }
    };
    let (version, rest) = match header {
        None => (second, after_second),
        // The path names a version of this API too: they must agree.
        Some(h) if routes.get(api, second).is_some() => {
            if h != second {
                return Err(Refusal::new(
                    RefusalKind::ApiVersionConflict,
                    format!(
                        "the path asks for {second} and the Api-Version header for {h}; send one"
                    ),
                ));
            }
            (second, after_second)
        }
        Some(h) => (h, tail),
    };
    if path::is_dot_segment(api) || path::is_dot_segment(version) {
        return Err(bad_path(PathError::Escapes));
    }
    let Some(v) = routes.get(api, version) else {
        return Err(Refusal::new(
            RefusalKind::UnknownApi,
            format!("no API {api:?} with version {version:?}; call /{{api}}/{{version}}/…"),
        ));
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    let rest = path::normalize(rest, slashes).map_err(bad_path)?;
    Ok(Routed {
        version: Arc::clone(v),
        rest: rest.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        let text = r#"
[[api]]
name = "demo"
[[api.versions]]
id = "v1"
status = "deprecated"
deprecated = 2026-10-01
sunset = 2027-03-31
successor = "v2"
live = "http://127.0.0.1:1/base/"
[[api.versions]]
id = "v2"
live = "http://127.0.0.1:1"
sandbox = "http://127.0.0.1:2/sb"

[[api]]
name = "greet"
[[api.versions]]
id = "v1"
protocol = "grpc"
grpc_services = ["greet.v1.Greeter"]
live = "http://127.0.0.1:3"

[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "p"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.001" }]
"#;
        Routes::new(&Catalog::parse("catalog.toml", text, &|_| None).unwrap())
    }

    fn head(path: &str, api_version: Option<&str>) -> Parts {
        let mut b = http::Request::get(path);
        if let Some(v) = api_version {
            b = b.header(API_VERSION, v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn go(path: &str, api_version: Option<&str>) -> Result<(String, String, String), RefusalKind> {
        let r = route(
            &routes(),
            &head(path, api_version),
            false,
            EncodedSlashes::Reject,
        )
        .map_err(|r| r.kind)?;
        Ok((r.version.api.clone(), r.version.spec.id.clone(), r.rest))
    }

    fn ok(api: &str, version: &str, rest: &str) -> Result<(String, String, String), RefusalKind> {
        Ok((api.into(), version.into(), rest.into()))
    }

    #[test]
    fn versions_come_from_the_path_or_the_header() {
        assert_eq!(go("/demo/v2/hello", None), ok("demo", "v2", "/hello"));
        assert_eq!(go("/demo/v2", None), ok("demo", "v2", "/"));
        assert_eq!(go("/demo/v2/", None), ok("demo", "v2", "/"));
        assert_eq!(go("/demo/hello", Some("v2")), ok("demo", "v2", "/hello"));
        assert_eq!(go("/demo/v2/hello", Some("v2")), ok("demo", "v2", "/hello"));
        assert_eq!(
            go("/demo/v2/hello", Some("v1")),
            Err(RefusalKind::ApiVersionConflict)
        );
        assert_eq!(go("/demo/v9/hello", None), Err(RefusalKind::UnknownApi));
        assert_eq!(go("/nope/v1/hello", None), Err(RefusalKind::UnknownApi));
        assert_eq!(go("/", None), Err(RefusalKind::UnknownApi));
    }

    #[test]
    fn rest_is_normalized_and_cannot_leave_the_version() {
        assert_eq!(go("/demo/v2/a/../b", None), ok("demo", "v2", "/b"));
        assert_eq!(go("/demo/v2/../v1/x", None), Err(RefusalKind::BadPath));
        assert_eq!(go("/demo/v2/%2e%2e/v1/x", None), Err(RefusalKind::BadPath));
        assert_eq!(go("/demo/../demo/v2/x", None), Err(RefusalKind::BadPath));
        assert_eq!(go("/demo/%2E%2E/x", None), Err(RefusalKind::BadPath));
        assert_eq!(go("/demo/../x", Some("v2")), Err(RefusalKind::BadPath));
        assert_eq!(go("/demo/v2/a%2Fb", None), Err(RefusalKind::BadPath));
    }

    #[test]
    fn grpc_services_route_without_a_prefix() {
        let h = head("/greet.v1.Greeter/SayHello", None);
        let r = route(&routes(), &h, true, EncodedSlashes::Reject).unwrap();
        assert_eq!(r.version.api, "greet");
        assert_eq!(r.rest, "/greet.v1.Greeter/SayHello");
        let h = head("/greet.v1.Greeter/../x", None);
        let r = route(&routes(), &h, true, EncodedSlashes::Reject);
        assert_eq!(r.err().map(|r| r.kind), Some(RefusalKind::BadPath));
    }

    #[test]
    fn bases_are_taken_apart_once_and_deprecations_have_headers() {
        let r = routes();
        let v1 = r.get("demo", "v1").unwrap();
        let live = v1.base(peage_core::Env::Live).unwrap();
        assert_eq!(live.url, "http://127.0.0.1:1/base");
        assert_eq!(live.host, "127.0.0.1:1");
        assert_eq!(
            live.target("/a/b", Some("x=1")).unwrap(),
            "http://127.0.0.1:1/base/a/b?x=1"
        );
        assert_eq!(live.origin_target("/a", None).unwrap(), "/base/a");
        assert!(live.plain_http());
        assert!(v1.base(peage_core::Env::Sandbox).is_none());
        let v2 = r.get("demo", "v2").unwrap();
        let live = v2.base(peage_core::Env::Live).unwrap();
        assert_eq!(live.target("/", None).unwrap(), "http://127.0.0.1:1/");
        let sandbox = v2.base(peage_core::Env::Sandbox).unwrap();
        assert_eq!(
            sandbox.target("/x", None).unwrap(),
            "http://127.0.0.1:2/sb/x"
        );
        let names: Vec<&str> = v1.lifecycle.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["deprecation", "sunset", "link"]);
        assert!(r.get("demo", "v2").unwrap().lifecycle.is_empty());
    }
}
