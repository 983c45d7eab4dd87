//! Péage domain model, as the product brief describes it: call events, the catalog (APIs, meters,
//! plans), meter aggregation, billing periods, the pricing engine and invoices.
//!
//! Everything here is pure: no I/O, no async, no clocks read behind the caller's back. Adapters
//! and services feed it data and persist what it returns.

pub mod alert;
pub mod carry;
pub mod catalog;
pub mod coupon;
pub mod credit_note;
pub mod event;
pub mod ids;
pub mod invoice;
pub mod meter;
pub mod money;
pub mod payment;
pub mod period;
pub mod pricing;
pub mod problem;
pub mod quota;
pub mod series;
pub mod throttle;
pub mod usage_event;

pub use catalog::{Catalog, CatalogError};
pub use event::{CallEvent, Env};
pub use ids::{CreditId, InvoiceId, KeyId, PartnerId, WebhookEndpointId, WebhookMessageId};
pub use invoice::{Invoice, InvoiceLine, InvoiceRecord, InvoiceStatus, LineKind};
pub use meter::{Aggregation, Meter, MeterField, MeterUsage};
pub use money::Currency;
pub use period::{BillingPeriod, PeriodLabel};
pub use usage_event::{UsageEvent, CALL_EVENT_TYPE};
