//! The audit log as admins read it (the HTTP layer records it).

use peage_billing_store::AuditRecord;

use super::billing::Billing;
use super::error::ServiceError;

impl Billing {
    /// Up to `limit` records after the one whose id is `after` (from the start when `None`),
    /// oldest first.
    pub async fn audit_records(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, ServiceError> {
        Ok(self.store.audit_records(after, limit).await?)
    }

    /// Records an action; the HTTP layer calls this for every mutating request.
    pub async fn append_audit(&self, record: &AuditRecord) -> Result<(), ServiceError> {
        Ok(self.store.append_audit(record).await?)
    }
}
