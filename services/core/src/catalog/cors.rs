//! `[api.versions.cors]`: which browser origins may call an API version, and how.
//!
//! The gateway answers a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) from this policy without a key, and never forwards or
//! meters it; real calls from an allowed origin get `Access-Control-Allow-Origin` and the
//! headers scripts may read. A version without a policy refuses preflights.

use serde::Serialize;
use toml::Spanned;

use super::raw::RawCors;
use super::source::Source;

/// Methods allowed when a policy does not list them.
const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
/// Request headers allowed when a policy does not list them: the credential, the body's type
/// and the version header.
const DEFAULT_HEADERS: [&str; 3] = ["authorization", "content-type", "api-version"];
/// Response headers scripts may read when a policy does not list them: Péage's own.
const DEFAULT_EXPOSE: [&str; 9] = [
    "deprecation",
    "sunset",
    "link",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "peage-quota-exceeded",
    "peage-quota-near-limit",
    "peage-units",
];
const DEFAULT_MAX_AGE: u32 = 600;
/// Chromium caps a preflight's cache at 2 hours and Firefox at 24: more would only mislead.
const MAX_MAX_AGE: u32 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorsPolicy {
    /// Exact origins (`https://app.example.com`), subdomain patterns
    /// (`https://*.example.com`), or `*` for any; lower case.
    pub origins: Vec<String>,
    /// Upper case.
    pub methods: Vec<String>,
    /// Request headers a script may send; lower case.
    pub headers: Vec<String>,
    /// Response headers a script may read; lower case.
    pub expose_headers: Vec<String>,
    /// Seconds a browser may cache a preflight's answer.
    pub max_age: u32,
    /// Whether cookies and HTTP authentication may come along (never with origin `*`).
    pub credentials: bool,
}

impl CorsPolicy {
    /// Whether `origin` (as the `Origin` header has it) may call.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| origin_matches(o, origin))
    }

    /// Whether any origin may call, so `Access-Control-Allow-Origin: *` does.
    pub fn any_origin(&self) -> bool {
        !self.credentials && self.origins.iter().any(|o| o == "*")
    }

    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// The first header of an `Access-Control-Request-Headers` list the policy does not allow.
    pub fn refused_header<'a>(&self, requested: &'a str) -> Option<&'a str> {
        requested
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .find(|h| !self.headers.iter().any(|a| a.eq_ignore_ascii_case(h)))
    }
}

fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once("://*.") {
        // `https://*.example.com`: a subdomain of example.com over https, any depth.
        Some((scheme, domain)) => origin.split_once("://").is_some_and(|(s, host)| {
            s.eq_ignore_ascii_case(scheme)
                && host.len() > domain.len() + 1
                && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
                && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        }),
        None => pattern.eq_ignore_ascii_case(origin),
    }
}

/// Why `origin` is not a serialized origin (`scheme://host[:port]`).
fn bad_origin(origin: &str) -> Option<String> {
    if origin == "*" {
        return None;
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return Some(format!(
            "{origin:?} is not an origin: write scheme://host[:port], e.g. https://app.example.com"
        ));
    };
    if !matches!(scheme, "http" | "https") {
        return Some(format!("{origin:?}: the scheme must be http or https"));
    }
    let host = host.strip_prefix("*.").unwrap_or(host);
    if host.is_empty()
        || host.contains(['/', '?', '#', '*', '@'])
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "{origin:?} is not an origin: only scheme://host[:port], no path or trailing slash (a browser sends no path)"
        ));
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn validate_cors(
    src: &mut Source,
    raw: &Spanned<RawCors>,
    vpath: &str,
) -> Option<CorsPolicy> {
    let path = format!("{vpath}.cors");
    let r = raw.get_ref();
    let before = src.issue_count();
    if r.origins.is_empty() {
        src.issue(
            raw.span(),
            format!("{path}.origins"),
            "a CORS policy names the origins it allows (or \"*\")",
        );
    }
    for o in &r.origins {
        if let Some(why) = bad_origin(o.get_ref()) {
            src.issue(o.span(), format!("{path}.origins"), why);
        }
    }
    let any = r.origins.iter().any(|o| o.get_ref() == "*");
    if any && r.credentials.unwrap_or(false) {
        src.issue(
            raw.span(),
            format!("{path}.credentials"),
            "credentials = true cannot go with origin \"*\": browsers refuse it; list the origins",
        );
    }
    let list = |src: &mut Source, field: &str, given: &Option<Vec<Spanned<String>>>| {
        for v in given.iter().flatten() {
            if !is_token(v.get_ref()) {
                src.issue(
                    v.span(),
                    format!("{path}.{field}"),
                    format!("{:?} is not a valid {field} name", v.get_ref()),
                );
            }
        }
    };
    list(src, "methods", &r.methods);
    list(src, "headers", &r.headers);
    list(src, "expose_headers", &r.expose_headers);
    if let Some(m) = &r.max_age {
        if *m.get_ref() > MAX_MAX_AGE {
            src.issue(
                m.span(),
                format!("{path}.max_age"),
                format!("max_age is at most {MAX_MAX_AGE} seconds (browsers cap it lower still)"),
            );
        }
    }
    if src.issue_count() > before {
        return None;
    }
    let given = |v: &Option<Vec<Spanned<String>>>, default: &[&str], upper: bool| -> Vec<String> {
        match v {
            Some(v) => v
                .iter()
                .map(|s| {
                    if upper {
                        s.get_ref().to_ascii_uppercase()
                    } else {
                        s.get_ref().to_ascii_lowercase()
                    }
                })
                .collect(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    };
    Some(CorsPolicy {
        origins: r
            .origins
            .iter()
            .map(|o| o.get_ref().to_ascii_lowercase())
            .collect(),
        methods: given(&r.methods, &DEFAULT_METHODS, true),
        headers: given(&r.headers, &DEFAULT_HEADERS, false),
        expose_headers: given(&r.expose_headers, &DEFAULT_EXPOSE, false),
        max_age: r.max_age.as_ref().map_or(DEFAULT_MAX_AGE, |m| *m.get_ref()),
        credentials: r.credentials.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str]) -> CorsPolicy {
        CorsPolicy {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            methods: vec!["GET".into()],
            headers: vec!["authorization".into()],
            expose_headers: vec![],
            max_age: 600,
            credentials: false,
        }
    }

    #[test]
    fn origins_match_exactly_by_subdomain_pattern_or_any() {
        let p = policy(&["https://app.example.com", "https://*.partner.example"]);
        assert!(p.allows_origin("https://app.example.com"));
        assert!(p.allows_origin("HTTPS://App.Example.com"));
        assert!(!p.allows_origin("http://app.example.com"));
        assert!(!p.allows_origin("https://app.example.com.evil.test"));
        assert!(p.allows_origin("https://a.b.partner.example"));
        assert!(!p.allows_origin("https://partner.example"));
        assert!(!p.allows_origin("https://evilpartner.example"));
        assert!(!p.allows_origin("null"));
        assert!(policy(&["*"]).allows_origin("null"));
        assert!(policy(&["*"]).any_origin());
    }

    #[test]
    fn requested_headers_are_checked_one_by_one() {
        let p = policy(&["*"]);
        assert_eq!(p.refused_header("Authorization"), None);
        assert_eq!(
            p.refused_header("authorization, x-secret"),
            Some("x-secret")
        );
        assert!(p.allows_method("get"));
        assert!(!p.allows_method("DELETE"));
    }

    #[test]
    fn an_origin_is_scheme_host_and_port_only() {
        assert!(bad_origin("https://app.example.com:8443").is_none());
        assert!(bad_origin("https://*.example.com").is_none());
        assert!(bad_origin("https://app.example.com/").is_some());
        assert!(bad_origin("app.example.com").is_some());
        assert!(bad_origin("ftp://app.example.com").is_some());
        assert!(bad_origin("https://*").is_some());
    }
}
