//! The control API over HTTP: the error mapping (written once, in `error`), the extractors
//! handlers share (`extract`), authentication, the Idempotency-Key and audit middleware, thin
//! handlers per resource, and the OpenAPI document. Every operation is the billing services'
//! (`crate::service`); nothing here decides a business rule.

mod alerts;
mod audit;
mod auth;
mod catalog;
mod coupons;
mod credit_notes;
mod error;
mod events;
mod extract;
mod gateway;
mod idempotency;
mod invoices;
mod keys;
mod oauth;
mod openapi;
mod partners;
mod payments;
mod profiles;
mod quotas;
mod respond;
mod router;
mod service_tokens;
mod sessions;
mod staff;
mod state;
mod usage;
mod webhooks;

pub use audit::REQUEST_ID;
pub use auth::{CSRF_HEADER, SESSION_COOKIE};
pub use error::ApiError;
pub use router::{hardened, serve, serve_router};
pub use sessions::SignIn;
pub use state::{ControlApi, ControlSettings, PeerIp};
