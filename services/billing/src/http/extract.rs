//! What handlers take from a request, checked once here: a JSON body as a problem (never
//! axum's plain text) when it does not fit, the caller, and the partner a path names as the
//! caller may see it.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use peage_billing_store::Partner;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::ControlApi;
use crate::service::Principal;

/// The handlers' state.
pub(crate) type Api = axum::extract::State<Arc<ControlApi>>;

/// A JSON body read as `T`; an unreadable one is a 400 problem naming why.
pub(crate) struct JsonBody<T>(pub T);

/// Parses a JSON body into `T`, with the words every route answers.
pub(crate) fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Malformed(format!("invalid JSON body: {e}")))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        // A body over the limit keeps axum's 413 (made problem+json around every route).
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        json_body(&bytes)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

/// Who is calling, as authentication found them (every `/v1` route has one).
pub(crate) struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or(ApiError::Unauthenticated)
    }
}

/// The partner of the route's `{id}`, if the caller may see it: to a partner session another
/// partner's id is "not found", as an id that does not exist.
pub(crate) struct ScopedPartner(pub Partner);

impl FromRequestParts<Arc<ControlApi>> for ScopedPartner {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        api: &Arc<ControlApi>,
    ) -> Result<ScopedPartner, ApiError> {
        let Caller(who) = Caller::from_request_parts(parts, api).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, api)
            .await
            .map_err(|e| ApiError::Malformed(e.body_text()))?;
        Ok(ScopedPartner(api.billing.scoped_partner(&who, &id).await?))
    }
}
