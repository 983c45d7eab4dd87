//! `peage partners erase`: a partner's personal data removed on request, its invoices kept as
//! the law requires, and an audit record of who did it (docs/operations.md, "Erasure").

use chrono::{DateTime, Utc};
use peage_billing_store::{AuditRecord, BillingStore, Erased};
use peage_core::ids::PartnerId;
use peage_usage_store::UsageStore;

use super::ServiceError;

/// Erases in the billing store (one transaction), then the partner's raw events in the usage
/// store, then records it in the audit log. Safe to run again after a failure of the usage
/// store: a partner erased before is refused, but its raw events are deleted again first.
pub async fn erase_partner(
    store: &dyn BillingStore,
    usage: &dyn UsageStore,
    id: &PartnerId,
    by: &str,
    at: DateTime<Utc>,
) -> Result<Erased, ServiceError> {
    let erased = match store.erase_partner(id, at).await {
        Ok(erased) => erased,
        Err(peage_billing_store::BillingStoreError::Conflict(m))
            if m.ends_with(peage_billing_store::erasure::ALREADY_ERASED) =>
        {
            usage.erase_partner_events(id.as_str()).await?;
            return Err(ServiceError::WrongState(format!(
                "{m}; its raw events were deleted again"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    usage.erase_partner_events(id.as_str()).await?;
    store
        .append_audit(&AuditRecord {
            id: format!("aud_{}", uuid::Uuid::now_v7().simple()),
            at,
            actor: by.to_string(),
            action: "peage partners erase".into(),
            target: format!("id={id}"),
            status: 200,
            request_id: format!("cli-{}", uuid::Uuid::now_v7().simple()),
            before: None,
            after: serde_json::to_string(&erased).ok(),
        })
        .await?;
    tracing::info!(partner = %id, by, keys_revoked = erased.keys_revoked, invoices_kept = erased.invoices_kept, "partner erased");
    Ok(erased)
}
