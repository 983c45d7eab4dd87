//! Answer helpers the handlers share.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, StatusCode};

/// Marks an answer that carries a secret shown once: no cache may keep it.
pub(crate) fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `201 Created` with `body` as JSON.
pub(crate) fn created(body: impl serde::Serialize) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `r` as a download named `name`, of `content_type`.
pub(crate) fn attachment(mut r: Response, content_type: &'static str, name: &str) -> Response {
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// A list answered as JSON (`format` absent or `json`) or as a CSV download named `name`
/// (`csv`, made by `csv` only when asked for).
pub(crate) fn json_or_csv(
    format: Option<&str>,
    json: &impl serde::Serialize,
    csv: impl FnOnce() -> String,
    name: &str,
) -> Result<Response, super::error::ApiError> {
    match format {
        None | Some("json") => Ok(Json(json).into_response()),
        Some("csv") => Ok(attachment(
            csv().into_response(),
            "text/csv; charset=utf-8",
            name,
        )),
        Some(other) => Err(super::error::ApiError::Malformed(format!(
            "format must be json or csv, not {other:?}"
        ))),
    }
}
