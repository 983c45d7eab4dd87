//! Billing and the control API (`:8090`): the catalog as loaded, partners and their plans, API
//! keys, usage, quotas, invoices, webhooks, the events API and the dashboard's sessions.
//!
//! Two layers: [`service`] holds every operation, without HTTP, with errors typed by cause;
//! [`http`] serves them, maps each cause to a status once, and describes the routes in
//! OpenAPI. Every `/v1` route needs a credential; every error is `application/problem+json`.

pub mod http;
pub mod service;

pub use http::{hardened, serve, serve_router, ApiError, ControlApi, ControlSettings};
pub use service::oauth::OAuthConfig;
pub use service::{Billing, RevocationHook, ServiceError};
