use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use peage_billing_store::BillingStoreError;
use peage_core::problem::{Problem, CONTENT_TYPE};
use peage_usage_store::UsageStoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong admin token, or no dashboard session")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] BillingStoreError),
    #[error(transparent)]
    Usage(#[from] UsageStoreError),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::NotFound(_) | ApiError::Store(BillingStoreError::NotFound { .. }) => {
                (StatusCode::NOT_FOUND, "not-found", "Not found")
            }
            ApiError::Conflict(_) | ApiError::Store(BillingStoreError::Conflict(_)) => {
                (StatusCode::CONFLICT, "conflict", "Conflict")
            }
            ApiError::Store(_) | ApiError::Usage(_) | ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        };
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "control API: internal error");
            "the server failed; the error is in its log".to_string()
        } else {
            self.to_string()
        };
        let body =
            serde_json::to_vec(&Problem::new(status.as_u16(), slug, title).with_detail(detail))
                .unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"peage-admin\""),
            );
        }
        r
    }
}
