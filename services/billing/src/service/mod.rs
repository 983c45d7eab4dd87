//! The billing services, without HTTP: partners, keys, quotas, usage, invoicing, webhooks,
//! sessions and the events API, each an operation on [`Billing`] (or a function of the billing
//! store, for the CLI) that takes typed input and answers a typed value or a [`ServiceError`]
//! naming its cause.

pub mod alerts;
mod audit;
pub mod auto_finalize;
mod billing;
mod catalog;
pub mod catalog_state;
pub mod coupons;
mod credit_notes;
mod digests;
mod endpoints;
mod entitlements;
pub mod erasure;
mod error;
pub mod events;
mod gateway;
mod intake;
mod invoices;
pub mod invoicing;
mod keys;
pub mod oauth;
mod partners;
mod payments;
pub mod pdf;
mod plan_changes;
mod preview;
mod principal;
mod quotas;
pub mod reload;
pub mod retention;
pub mod secrets;
mod self_serve;
pub mod service_tokens;
pub mod sessions;
mod settings;
pub mod staff;
mod subjects;
pub mod tokens;
mod usage;
pub mod values;
pub mod webhooks;

pub use alerts::{AlertList, AlertState, AlertsChecked};
pub use billing::{ApiDocs, Billing, BillingSettings, RevocationHook};
pub use catalog::{ApiVersionView, ApiView, ApisView, PlansView};
pub use coupons::{CouponList, PartnerCouponList};
pub use credit_notes::{credit_notes_csv, CreditNoteList};
pub use endpoints::{CreatedEndpoint, EndpointRequest};
pub use entitlements::{Entitlements, Feature};
pub use error::ServiceError;
pub use gateway::{
    gateway_issuer, gateway_key, GatewayIssuer, GatewayKey, RevocationPage, RevokedKey, MAX_WAIT,
};
pub use invoices::{CreditRequest, Credits, InvoiceQuery, ProfileRequest, TaxRequest};
pub use keys::{issue_key, IssuedKey, KeyView};
pub use partners::{
    check_external_id, create_partner, plan_version, OverviewPage, OverviewSort, PartnerOverview,
};
pub use payments::{payments_csv, PaymentList, PaymentMade};
pub use plan_changes::{ChangeAt, PartnerView, PlanChangeList, SubscriptionOutcome};
pub use preview::{CatalogVersions, InvoicePreview, PreviewCatalog};
pub use principal::{Principal, ServiceScope, EVENTS_ROUTES, GATEWAY_ROUTES};
pub use quotas::{QuotaReport, QuotaState};
pub use self_serve::{Direction, PlanOption, PlanOptions, PlanQuote};
pub use usage::{SeriesCut, SeriesReport, UsageReport};
