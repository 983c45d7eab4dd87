//! Stage 2, authenticate: who is calling. `Authorization: Bearer` with an API key (`pk_live_…`,
//! `pk_test_…`, looked up by its SHA-256 only), a Péage access token, or a JWT from the
//! partner's own identity provider.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use peage_core::ids::api_key;

use super::refusal::{Refusal, RefusalKind};
use super::Peer;
use crate::jwt::JwtError;
use crate::keys::{LocalKeys, ResolvedKey};
use crate::Gateway;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(crate) fn unauthorized(detail: &str) -> Refusal {
    Refusal::new(RefusalKind::Unauthorized, detail).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"peage\""),
    )
}

/// The address wrong credentials count against: the TCP peer or, when the peer is a trusted
/// proxy, the client it names last in `X-Forwarded-For`.
fn source(peer: &Peer, headers: &HeaderMap) -> IpAddr {
    if !peer.trusted {
        return peer.addr;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer.addr)
}

/// The key (or token) the call is made with, or why it is refused. A source address that has
/// presented too many wrong credentials is refused before its credential is even looked at,
/// so a right guess cannot be told from a wrong one.
pub(crate) async fn authenticate(
    gw: &Gateway,
    local: &LocalKeys,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<Arc<ResolvedKey>, Refusal> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized(
            "send an API key (`Authorization: Bearer pk_live_…`) or an access token",
        ));
    };
    // Nobody failing (the usual case): no source to work out, no clock to read.
    if !gw.failures.is_quiet() {
        if let Err(t) = gw.failures.check(source(peer, headers), Instant::now()) {
            return Err(Refusal::new(
                RefusalKind::TooManyFailures,
                "too many wrong credentials from this address; retry later",
            )
            .retry_after(t.retry_after_secs()));
        }
    }
    let checked = check(gw, local, token).await;
    if let Err(r) = &checked {
        if r.kind == RefusalKind::Unauthorized {
            gw.failures.failed(source(peer, headers), Instant::now());
        }
    }
    checked
}

async fn check(gw: &Gateway, local: &LocalKeys, token: &str) -> Result<Arc<ResolvedKey>, Refusal> {
    if api_key::env_of(token).is_none() {
        return match (&gw.jwt, token.bytes().filter(|b| *b == b'.').count()) {
            // Boxed: verifying a token is rare next to API keys, and its future is large.
            (Some(verifier), 2) => match Box::pin(verifier.verify(token, &gw.keys)).await {
                Ok(k) => Ok(Arc::new(k)),
                Err(JwtError::Invalid(why)) => Err(unauthorized(&why)),
                Err(JwtError::Unavailable(why)) => {
                    tracing::error!(error = %why, "gateway: cannot check a token");
                    Err(Refusal::new(
                        RefusalKind::TokenCheckUnavailable,
                        "the gateway cannot check access tokens right now; retry shortly",
                    )
                    .retry_after(1))
                }
            },
            _ => Err(unauthorized(
                "the credential is neither a Péage API key nor an accepted access token",
            )),
        };
    }
    match gw.keys.resolve_secret_in(local, token).await {
        Ok(Some(k)) if k.revoked => Err(unauthorized("this API key has been revoked")),
        // A rotated key answers until its overlap window ends (one clock read, rotated keys
        // only).
        Ok(Some(k)) if k.expires_at.is_some_and(|t| t <= chrono::Utc::now()) => Err(unauthorized(
            "this API key was rotated and its overlap window has ended; use the new key",
        )),
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(unauthorized("unknown API key")),
        Err(e) => {
            if e != crate::keys::KeyLookupError::BackingOff {
                tracing::warn!(error = %e, "gateway: key lookup failed");
            }
            Err(Refusal::new(
                RefusalKind::KeyLookupUnavailable,
                "the gateway cannot check API keys right now; retry shortly",
            )
            .retry_after(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        h.remove(header::AUTHORIZATION);
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn failures_count_against_the_peer_or_the_client_a_trusted_proxy_names() {
        let peer = |trusted| Peer {
            ip: HeaderValue::from_static("10.0.0.2"),
            addr: "10.0.0.2".parse().unwrap(),
            trusted,
            https: false,
        };
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 192.0.2.4"),
        );
        assert_eq!(
            source(&peer(false), &h),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            source(&peer(true), &h),
            "192.0.2.4".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(
            source(&peer(true), &h),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }
}
