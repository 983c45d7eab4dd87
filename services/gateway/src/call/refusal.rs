//! Every answer the gateway gives itself instead of the upstream's: one type, rendered once.
//!
//! A [`Refusal`] carries its kind (status, problem type, title, and whether the call is
//! recorded as an event), a detail for people, and the headers that tell clients what to do
//! (`Retry-After`, the rate-limit headers, `WWW-Authenticate`). [`Refusal::render`] makes it
//! `application/problem+json` for HTTP callers and a trailers-only gRPC status for gRPC
//! callers, from the same fields: nothing is serialized to be parsed again.
//!
//! Which refusals are recorded (docs/gateway.md, "Refusals"): those of a partner the gateway
//! has identified, for a version it knows. Before that there is no partner to attribute the
//! call to (or, for an unknown API, nothing a partner could meter), so those refusals are
//! counted in `/metrics` only.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use peage_core::problem::{Problem, CONTENT_TYPE};

use crate::body::ResponseBody;
use crate::grpc;

/// What the gateway refused, and so how it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    // Route: before the partner is known.
    BadPath,
    BadApiVersion,
    ApiVersionConflict,
    UnknownApi,
    // Authenticate.
    Unauthorized,
    /// Too many wrong credentials from the caller's address.
    TooManyFailures,
    KeyLookupUnavailable,
    TokenCheckUnavailable,
    // Metering cannot take the call (a full spool under `fail_closed`): nothing can record it.
    MeteringUnavailable,
    // Admit: the partner is known.
    InsufficientScope,
    /// The partner's plan does not grant the API, version or operation.
    NotEntitled,
    VersionRetired,
    NoSandbox,
    RateLimited,
    QuotaExceeded,
    QuotaUnavailable,
    // Name the operation and forward.
    RequestTooLarge,
    BadRequestBody,
    BadGraphql,
    UpstreamUnavailable,
    UpstreamTimeout,
    // A CORS preflight the version's policy does not allow (or a version without one).
    CorsRefused,
}

impl RefusalKind {
    pub const ALL: [RefusalKind; 22] = [
        RefusalKind::BadPath,
        RefusalKind::BadApiVersion,
        RefusalKind::ApiVersionConflict,
        RefusalKind::UnknownApi,
        RefusalKind::Unauthorized,
        RefusalKind::KeyLookupUnavailable,
        RefusalKind::TokenCheckUnavailable,
        RefusalKind::MeteringUnavailable,
        RefusalKind::InsufficientScope,
        RefusalKind::NotEntitled,
        RefusalKind::VersionRetired,
        RefusalKind::NoSandbox,
        RefusalKind::RateLimited,
        RefusalKind::QuotaExceeded,
        RefusalKind::QuotaUnavailable,
        RefusalKind::RequestTooLarge,
        RefusalKind::BadRequestBody,
        RefusalKind::BadGraphql,
        RefusalKind::UpstreamUnavailable,
        RefusalKind::UpstreamTimeout,
        RefusalKind::TooManyFailures,
        RefusalKind::CorsRefused,
    ];

    pub fn status(self) -> StatusCode {
        use RefusalKind::*;
        match self {
            BadPath | BadApiVersion | ApiVersionConflict | BadRequestBody | BadGraphql => {
                StatusCode::BAD_REQUEST
            }
            UnknownApi => StatusCode::NOT_FOUND,
            Unauthorized => StatusCode::UNAUTHORIZED,
            InsufficientScope | NotEntitled | NoSandbox | CorsRefused => StatusCode::FORBIDDEN,
            VersionRetired => StatusCode::GONE,
            RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited | QuotaExceeded | TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
            KeyLookupUnavailable
            | TokenCheckUnavailable
            | MeteringUnavailable
            | QuotaUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The problem type's last path segment (`https://peage.dev/problems/<slug>`), also the
    /// `refusal` attribute of a recorded call and the `reason` label in `/metrics`.
    pub fn slug(self) -> &'static str {
        use RefusalKind::*;
        match self {
            BadPath => "bad-path",
            BadApiVersion => "bad-api-version",
            ApiVersionConflict => "api-version-conflict",
            UnknownApi => "unknown-api",
            Unauthorized => "unauthorized",
            TooManyFailures => "too-many-failures",
            KeyLookupUnavailable => "key-lookup-unavailable",
            TokenCheckUnavailable => "token-check-unavailable",
            MeteringUnavailable => "metering-unavailable",
            InsufficientScope => "insufficient-scope",
            NotEntitled => "not-entitled",
            VersionRetired => "version-retired",
            NoSandbox => "no-sandbox",
            RateLimited => "rate-limited",
            QuotaExceeded => "quota-exceeded",
            QuotaUnavailable => "quota-unavailable",
            RequestTooLarge => "request-too-large",
            BadRequestBody => "bad-request-body",
            BadGraphql => "bad-graphql-request",
            UpstreamUnavailable => "upstream-unavailable",
            UpstreamTimeout => "upstream-timeout",
            CorsRefused => "cors-refused",
        }
    }

    pub fn title(self) -> &'static str {
        use RefusalKind::*;
        match self {
            BadPath => "Bad request path",
            BadApiVersion => "Bad Api-Version header",
            ApiVersionConflict => "Conflicting API versions",
            UnknownApi => "Unknown API or version",
            Unauthorized => "Unauthorized",
            TooManyFailures => "Too many wrong credentials",
            KeyLookupUnavailable => "Key lookup unavailable",
            TokenCheckUnavailable => "Token check unavailable",
            MeteringUnavailable => "Metering backlog full",
            InsufficientScope => "Insufficient scope",
            NotEntitled => "Not included in the plan",
            VersionRetired => "API version retired",
            NoSandbox => "No sandbox for this API",
            RateLimited => "Rate limit exceeded",
            QuotaExceeded => "Quota exceeded",
            QuotaUnavailable => "Quota check unavailable",
            RequestTooLarge => "Request body too large",
            BadRequestBody => "Request body could not be read",
            BadGraphql => "GraphQL request not understood",
            UpstreamUnavailable => "Upstream unavailable",
            UpstreamTimeout => "Upstream timeout",
            CorsRefused => "CORS preflight refused",
        }
    }

    /// Whether the refused call becomes a call event: once the partner is identified and the
    /// version known. Upstream failures (502, 504) were forwarded calls and are recorded too.
    pub fn recorded(self) -> bool {
        use RefusalKind::*;
        match self {
            BadPath
            | BadApiVersion
            | ApiVersionConflict
            | UnknownApi
            | Unauthorized
            | TooManyFailures
            | KeyLookupUnavailable
            | TokenCheckUnavailable
            | MeteringUnavailable
            | CorsRefused => false,
            InsufficientScope | NotEntitled | VersionRetired | NoSandbox | RateLimited
            | QuotaExceeded | QuotaUnavailable | RequestTooLarge | BadRequestBody | BadGraphql
            | UpstreamUnavailable | UpstreamTimeout => true,
        }
    }

    /// Whether the call reached the upstream (or was on its way there): its event counts in
    /// meters like any answered call. The other recorded refusals are marked
    /// `attributes.refusal` and meters leave them out unless they ask for them.
    pub fn forwarded(self) -> bool {
        matches!(
            self,
            RefusalKind::UpstreamUnavailable | RefusalKind::UpstreamTimeout
        )
    }
}

/// An answer of the gateway's own.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub detail: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    pub fn new(kind: RefusalKind, detail: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Refusal {
        self.headers.push((name, value));
        self
    }

    /// `Retry-After: <secs>`.
    pub fn retry_after(self, secs: u64) -> Refusal {
        self.with_header(header::RETRY_AFTER, HeaderValue::from(secs))
    }

    /// The answer: problem+json, or for a gRPC caller a trailers-only gRPC status (HTTP 200,
    /// `grpc-status`, `grpc-message`) with the same headers.
    pub fn render(&self, grpc_caller: bool) -> Response<ResponseBody> {
        let (status, body, content_type) = if grpc_caller {
            (
                StatusCode::OK,
                Bytes::new(),
                HeaderValue::from_static("application/grpc"),
            )
        } else {
            let p = Problem::new(
                self.kind.status().as_u16(),
                self.kind.slug(),
                self.kind.title(),
            )
            .with_detail(self.detail.as_str());
            (
                self.kind.status(),
                Bytes::from(serde_json::to_vec(&p).unwrap_or_default()),
                HeaderValue::from_static(CONTENT_TYPE),
            )
        };
        let mut r = Response::new(ResponseBody::full(body));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type);
        for (name, value) in &self.headers {
            h.append(name.clone(), value.clone());
        }
        if grpc_caller {
            grpc::set_status(h, self.kind.status(), &self.detail);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn every_kind_has_its_own_problem_type() {
        let mut slugs: Vec<&str> = RefusalKind::ALL.iter().map(|k| k.slug()).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), RefusalKind::ALL.len());
        for k in RefusalKind::ALL {
            assert!(k.status().is_client_error() || k.status().is_server_error());
            assert!(!k.forwarded() || k.recorded(), "{k:?}");
        }
    }

    #[tokio::test]
    async fn http_callers_get_problem_json_with_the_headers() {
        let r = Refusal::new(RefusalKind::RateLimited, "slow down")
            .retry_after(2)
            .render(false);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let p: Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(p.kind, "https://peage.dev/problems/rate-limited");
        assert_eq!(p.status, 429);
        assert_eq!(p.detail.as_deref(), Some("slow down"));
    }

    #[tokio::test]
    async fn grpc_callers_get_a_trailers_only_status() {
        let r = Refusal::new(RefusalKind::QuotaExceeded, "quota 100% used")
            .retry_after(3)
            .render(true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(r.headers()["grpc-message"], "quota 100%25 used");
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());
    }
}
