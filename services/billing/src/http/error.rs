//! Every error the control API answers, mapped to its status and problem+json body here and
//! nowhere else: the service's causes ([`ServiceError`]) and the HTTP layer's own
//! (authentication, request shape).

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use peage_billing_store::BillingStoreError;
use peage_core::problem::{Problem, CONTENT_TYPE};
use peage_usage_store::UsageStoreError;

use crate::service::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// What the billing services refused or failed at.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// No admin token, valid service token or live session.
    #[error("missing or wrong admin token, or no dashboard session")]
    Unauthenticated,
    /// Too many wrong credentials from this address.
    #[error("too many wrong credentials from this address; retry in {retry_after} s")]
    Throttled { retry_after: u64 },
    /// The caller's scope or role does not reach this route, or a session's write lacks the
    /// CSRF header.
    #[error("{0}")]
    OutOfScope(String),
    /// The request's body, query or headers cannot be read as this route's input.
    #[error("{0}")]
    Malformed(String),
    /// A content type this route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// An `Idempotency-Key` used with another request, or whose first request still runs.
    #[error("{0}")]
    IdempotencyConflict(String),
    /// No route has this path.
    #[error("no such route")]
    NoRoute,
    /// The server failed in the HTTP layer itself (a panicking handler, an unreadable answer).
    #[error("{0}")]
    Internal(String),
}

impl From<BillingStoreError> for ApiError {
    fn from(e: BillingStoreError) -> ApiError {
        ApiError::Service(e.into())
    }
}

impl From<UsageStoreError> for ApiError {
    fn from(e: UsageStoreError) -> ApiError {
        ApiError::Service(e.into())
    }
}

/// A status, its problem slug and title.
type Kind = (StatusCode, &'static str, &'static str);

const BAD_REQUEST: Kind = (StatusCode::BAD_REQUEST, "bad-request", "Bad request");
const NOT_FOUND: Kind = (StatusCode::NOT_FOUND, "not-found", "Not found");
const CONFLICT: Kind = (StatusCode::CONFLICT, "conflict", "Conflict");
const FORBIDDEN: Kind = (StatusCode::FORBIDDEN, "forbidden", "Forbidden");
const INTERNAL: Kind = (
    StatusCode::INTERNAL_SERVER_ERROR,
    "internal",
    "Internal error",
);

/// How each cause is answered.
fn kind(e: &ApiError) -> Kind {
    match e {
        ApiError::Service(s) => match s {
            ServiceError::Invalid(_) | ServiceError::CatalogRefused(_) => BAD_REQUEST,
            ServiceError::NotFound(_) => NOT_FOUND,
            ServiceError::WrongState(_)
            | ServiceError::Taken(_)
            | ServiceError::CatalogDrift(_) => CONFLICT,
            ServiceError::NotPermitted(_) => FORBIDDEN,
            ServiceError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ServiceError::EventsOff | ServiceError::EventLog { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ServiceError::Store(BillingStoreError::NotFound { .. }) => NOT_FOUND,
            ServiceError::Store(BillingStoreError::Conflict(_)) => CONFLICT,
            e if e.is_unavailable() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Store unavailable",
            ),
            ServiceError::Store(_) | ServiceError::Usage(_) | ServiceError::Corrupt(_) => INTERNAL,
        },
        ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
        ApiError::Throttled { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-failures",
            "Too many wrong credentials",
        ),
        ApiError::OutOfScope(_) => FORBIDDEN,
        ApiError::Malformed(_) => BAD_REQUEST,
        ApiError::UnsupportedMediaType(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        ),
        ApiError::IdempotencyConflict(_) => CONFLICT,
        ApiError::NoRoute => NOT_FOUND,
        ApiError::Internal(_) => INTERNAL,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = kind(&self);
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "control API: internal error");
            "the server failed; the error is in its log".to_string()
        } else if let ApiError::Service(
            e @ (ServiceError::EventsOff | ServiceError::EventLog { .. }),
        ) = &self
        {
            tracing::warn!(error = %e, "control API: unavailable");
            e.to_string()
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "control API: a store is unavailable");
            "a store this answer needs is unreachable; retry shortly".to_string()
        } else {
            self.to_string()
        };
        let body =
            serde_json::to_vec(&Problem::new(status.as_u16(), slug, title).with_detail(detail))
                .unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let ApiError::Throttled { retry_after } = &self {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"peage-admin\""),
            );
        }
        r
    }
}

/// Whether a response already carries a body of its own kind: problem+json, or JSON (the OAuth
/// token endpoint answers RFC 6749's `{"error": …}` as clients expect).
fn has_typed_body(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(CONTENT_TYPE) || v.starts_with("application/json"))
}

/// Layered over everything served on the control API's port: an error answered by the
/// framework rather than a handler (a malformed query string, a body over the limit, an unknown
/// route, a wrong method) is plain text or empty; it becomes problem+json with the same status,
/// the framework's words as its detail, and its other headers (`Allow`, `Retry-After`) kept.
pub(crate) async fn problem_for_every_error(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let r = next.run(req).await;
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) || has_typed_body(r.headers()) {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let text =
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, 4096)).await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
            Err(_) => String::new(),
        };
    let title = status.canonical_reason().unwrap_or("Error");
    let slug = title.to_ascii_lowercase().replace(' ', "-");
    let mut problem = Problem::new(status.as_u16(), &slug, title);
    if !text.is_empty() {
        problem = problem.with_detail(text);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// What a handler that panicked answers: 500 problem+json for its own request; the panic is in
/// the log, the server and every other request carry on.
pub(crate) fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = what, "control API: a handler panicked");
    ApiError::Internal(format!("handler panicked: {what}")).into_response()
}
