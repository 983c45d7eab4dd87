//! Stage 5, forward: the request as the upstream gets it, sent on the serving thread's pooled
//! client, and the upstream's answer as the partner gets it.
//!
//! Upstream requests lose the hop-by-hop headers (RFC 9110 §7.6.1, and those `Connection`
//! names), `Authorization`, `Host`, caller-sent `Peage-*` headers and (unless the peer is a
//! trusted proxy) caller-sent forwarding headers, and gain `X-Forwarded-For`/`-Proto`/`-Host`,
//! `Peage-Partner-Id` and `Peage-Env`. gRPC upstreams are spoken to over HTTP/2 and keep
//! `TE: trailers`. The upstream's `Peage-Units` header is read (and removed) for metering.

use std::str::FromStr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http_body_util::LengthLimitError;
use hyper::body::Incoming;
use rust_decimal::Decimal;

use super::refusal::{Refusal, RefusalKind};
use super::route::{UpstreamBase, VersionRoute};
use crate::body::UpstreamBody;
use crate::keys::ResolvedKey;
use crate::pool::{Checkin, PoolError};
use crate::worker::Worker;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(listed) = headers.get(header::CONNECTION) {
        // Names listed in `Connection` are hop-by-hop too (rare: a copy is cheap then).
        let listed: Vec<HeaderName> = listed
            .to_str()
            .ok()
            .into_iter()
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_str(n.trim()).ok())
            .collect();
        for name in &listed {
            headers.remove(name);
        }
    }
    // One pass over what is there (a handful of headers) rather than a lookup per name.
    let mut found: [Option<&HeaderName>; HOP_BY_HOP.len()] = [None; HOP_BY_HOP.len()];
    let mut n = 0;
    for name in headers.keys() {
        let hop = match name.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "proxy-authenticate" => 2,
            "proxy-authorization" => 3,
            "te" => 4,
            "trailer" => 5,
            "transfer-encoding" => 6,
            "upgrade" => 7,
            _ => continue,
        };
        if n < found.len() {
            found[n] = Some(&HOP_BY_HOP[hop]);
            n += 1;
        }
    }
    for hop in found.into_iter().flatten() {
        headers.remove(hop);
    }
}

const UNITS_HEADER: HeaderName = HeaderName::from_static("peage-units");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const PEAGE_PARTNER_ID: HeaderName = HeaderName::from_static("peage-partner-id");
const PEAGE_ENV: HeaderName = HeaderName::from_static("peage-env");

/// A `Peage-Units` value that is not a decimal between 0 and [`peage_core::event::MAX_UNITS`]:
/// the raw value, as the upstream sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Peage-Units {0:?} is not a decimal between 0 and 10^15")]
pub(crate) struct BadUnits(pub String);

/// The upstream's `Peage-Units`, removed from the answer: `Ok(None)` when absent, `Err` with the
/// raw value when it is not a decimal between 0 and [`peage_core::event::MAX_UNITS`].
pub(crate) fn take_units(headers: &mut HeaderMap) -> Result<Option<Decimal>, BadUnits> {
    let Some(units) = headers.remove(&UNITS_HEADER) else {
        return Ok(None);
    };
    units
        .to_str()
        .ok()
        .and_then(|s| Decimal::from_str(s.trim()).ok())
        .filter(|d| !d.is_sign_negative() && *d <= peage_core::event::MAX_UNITS)
        .map(Some)
        .ok_or_else(|| BadUnits(String::from_utf8_lossy(units.as_bytes()).into_owned()))
}

/// Removes what a caller must not be able to tell the upstream: every `Peage-*` header (the
/// gateway's own to set: partner, environment, units), and, unless the peer is a trusted proxy,
/// the forwarding headers (`Forwarded`, `X-Real-IP`, `X-Forwarded-*`), which the gateway then
/// writes itself. One pass over the names that are there.
fn strip_untrusted(h: &mut HeaderMap, trusted_peer: bool) {
    let mut drop: Vec<HeaderName> = Vec::new();
    for name in h.keys() {
        let n = name.as_str();
        let forwarding = n == "forwarded" || n == "x-real-ip" || n.starts_with("x-forwarded-");
        if n.starts_with("peage-") || (forwarding && !trusted_peer) {
            drop.push(name.clone());
        }
    }
    for name in &drop {
        h.remove(name);
    }
}

/// The upstream request's headers, from the partner's.
fn upstream_headers(h: &mut HeaderMap, peer: &super::Peer, key: &ResolvedKey) {
    // Room for what is added below, in one go rather than a regrowth per insert.
    h.reserve(6);
    let original_host = h.remove(header::HOST);
    let trailers_wanted = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(h);
    if trailers_wanted {
        // `TE: trailers` is end to end in HTTP/2, and gRPC servers require it.
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    h.remove(header::AUTHORIZATION);
    strip_untrusted(h, peer.trusted);
    let forwarded_for = match h.get(&X_FORWARDED_FOR).map(|v| v.to_str()) {
        None => Some(peer.ip.clone()),
        Some(Ok(prior)) => {
            let ip = peer.ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prior}, {ip}")).ok()
        }
        Some(Err(_)) => Some(peer.ip.clone()),
    };
    if let Some(v) = forwarded_for {
        h.insert(X_FORWARDED_FOR, v);
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        let proto = if peer.https { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = original_host {
        if !h.contains_key(&X_FORWARDED_HOST) {
            h.insert(X_FORWARDED_HOST, host);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&key.partner_id) {
        h.insert(PEAGE_PARTNER_ID, v);
    }
    h.insert(PEAGE_ENV, HeaderValue::from_static(key.env.as_str()));
}

/// Sends the call to `base` + `rest` (+ the query) and returns the upstream's answer (with the
/// pooled connection it came on, to give back once it is read), or the refusal the partner gets
/// instead (502, 504, or 413 when the body outgrew the limit while streaming).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward(
    worker: &Worker,
    loaded: &crate::Loaded,
    mut head: Parts,
    body: UpstreamBody,
    version: &VersionRoute,
    base: &UpstreamBase,
    rest: &str,
    peer: &super::Peer,
    key: &ResolvedKey,
    grpc: bool,
) -> Result<(http::Response<Incoming>, Option<Checkin>), Refusal> {
    let pooled = !grpc && base.plain_http();
    let query = head.uri.query();
    let target = if pooled {
        base.origin_target(rest, query)
    } else {
        base.target(rest, query)
    };
    head.uri = target.map_err(|e| {
        Refusal::new(
            RefusalKind::BadPath,
            format!("the request path cannot be forwarded: {e}"),
        )
    })?;
    upstream_headers(&mut head.headers, peer, key);
    if grpc {
        head.version = http::Version::HTTP_2;
    } else {
        head.version = http::Version::HTTP_11;
        // Made once per upstream, so the client need not format it per call.
        head.headers.insert(header::HOST, base.host.clone());
    }
    let request = http::Request::from_parts(head, body);
    let gw = &worker.gateway;
    let timeout = gw.config.upstream_timeout;
    // Each branch awaits its client directly: a future nested in another is copied into it
    // whole, and these are the largest of a call.
    let sent: Result<Result<_, Box<dyn std::error::Error + Send + Sync>>, _> = if pooled {
        tokio::time::timeout(timeout, worker.pool(loaded).send(base, request))
            .await
            .map(|r| {
                r.map(|(r, c)| (r, Some(c))).map_err(|e| match e {
                    PoolError::Http(e) => Box::new(e) as Box<dyn std::error::Error + Send + Sync>,
                    other => Box::new(other),
                })
            })
    } else {
        let client = if grpc { &worker.grpc } else { &worker.http };
        tokio::time::timeout(timeout, client.request(request))
            .await
            .map(|r| r.map(|r| (r, None)).map_err(|e| Box::new(e) as _))
    };
    match sent {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) if caused_by_body_limit(&*e) => Err(super::operation::too_large(
            gw.config.max_request_body_bytes,
        )),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, upstream = %base.url, "gateway: upstream request failed");
            Err(Refusal::new(
                RefusalKind::UpstreamUnavailable,
                format!(
                    "the upstream of {} {} could not be reached",
                    version.api, version.spec.id
                ),
            ))
        }
        Err(_) => Err(Refusal::new(
            RefusalKind::UpstreamTimeout,
            format!(
                "the upstream of {} {} did not answer within {} ms",
                version.api,
                version.spec.id,
                timeout.as_millis()
            ),
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn units_must_be_a_decimal_between_zero_and_the_maximum() {
        let mut h = HeaderMap::new();
        assert_eq!(take_units(&mut h), Ok(None));
        h.insert(UNITS_HEADER, HeaderValue::from_static(" 2.5 "));
        assert_eq!(take_units(&mut h), Ok(Some(Decimal::new(25, 1))));
        assert!(!h.contains_key(UNITS_HEADER));
        h.insert(UNITS_HEADER, HeaderValue::from_static("-1"));
        assert_eq!(take_units(&mut h), Err(BadUnits("-1".to_string())));
        h.insert(UNITS_HEADER, HeaderValue::from_static("lots"));
        assert_eq!(take_units(&mut h), Err(BadUnits("lots".to_string())));
        h.insert(UNITS_HEADER, HeaderValue::from_static("1000000000000001"));
        assert_eq!(
            take_units(&mut h),
            Err(BadUnits("1000000000000001".to_string()))
        );
    }

    #[test]
    fn upstreams_learn_who_called_but_not_the_credential() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw.example"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer pk_live_x"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        let key = ResolvedKey {
            key_id: "key_1".into(),
            partner_id: "prt_1".into(),
            env: peage_core::Env::Sandbox,
            revoked: false,
            expires_at: None,
            plan_id: "p".into(),
            scopes: None,
        };
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        h.insert("peage-partner-id", HeaderValue::from_static("prt_forged"));
        h.insert("peage-quota-exceeded", HeaderValue::from_static("calls"));
        let mut trusted = h.clone();
        upstream_headers(&mut h, &peer("192.0.2.7", false), &key);
        assert!(!h.contains_key(header::AUTHORIZATION));
        assert!(!h.contains_key(header::HOST));
        // From an untrusted peer the forwarding headers are replaced, not extended.
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
        // No caller-sent Peage-* header survives; the gateway's own are set.
        assert_eq!(h["peage-partner-id"], "prt_1");
        assert_eq!(h.get_all("peage-partner-id").iter().count(), 1);
        assert!(!h.contains_key("peage-quota-exceeded"));
        assert_eq!(h["peage-env"], "sandbox");
        assert_eq!(h[header::TE], "trailers");

        // A trusted proxy's headers are believed and extended.
        upstream_headers(&mut trusted, &peer("10.1.0.5", true), &key);
        assert_eq!(trusted["x-forwarded-for"], "10.0.0.1, 10.1.0.5");
        assert_eq!(trusted["x-forwarded-proto"], "https");
        assert_eq!(trusted["forwarded"], "for=10.0.0.1");
        assert_eq!(trusted["x-real-ip"], "10.0.0.1");
        assert_eq!(trusted["peage-partner-id"], "prt_1");
        assert!(!trusted.contains_key("peage-quota-exceeded"));
    }

    fn peer(ip: &'static str, trusted: bool) -> super::super::Peer {
        super::super::Peer {
            ip: HeaderValue::from_static(ip),
            addr: ip.parse().unwrap(),
            trusted,
            https: false,
        }
    }
}
