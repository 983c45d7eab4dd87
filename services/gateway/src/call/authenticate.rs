//! Stage 2, authenticate: who is calling. `Authorization: Bearer` with an API key (`pk_live_…`,
//! `pk_test_…`, looked up by its SHA-256 only), a Péage access token, or a JWT from the
//! partner's own identity provider.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use peage_core::ids::api_key;

use super::refusal::{Refusal, RefusalKind};
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

/// The key (or token) the call is made with, or why it is refused.
pub(crate) async fn authenticate(
    gw: &Gateway,
    local: &LocalKeys,
    headers: &HeaderMap,
) -> Result<Arc<ResolvedKey>, Refusal> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized(
            "send an API key (`Authorization: Bearer pk_live_…`) or an access token",
        ));
    };
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
        Ok(Some(k)) if !k.revoked => Ok(k),
        Ok(Some(_)) => Err(unauthorized("this API key has been revoked")),
        Ok(None) => Err(unauthorized("unknown API key")),
        Err(e) => {
            tracing::error!(error = %e, "gateway: key lookup failed");
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
}
