//! Leases on jobs one billing instance does at a time (automatic finalization): taken or
//! renewed by their holder, taken over once expired.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use super::db::{args, LedgerDb};
use super::ts;
use crate::BillingStoreError;

#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes or renews the lease on `job` for `holder` until `now + ttl`: true when `holder`
    /// holds it now (it did, or no one did, or the last holder's lease expired).
    async fn try_lease(
        &self,
        job: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<bool, BillingStoreError>;
}

#[async_trait]
impl<D: LedgerDb> LeaseStore for D {
    async fn try_lease(
        &self,
        job: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<bool, BillingStoreError> {
        let changed = self
            .sql()
            .execute(
                "INSERT INTO job_leases (job, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE job_leases.holder = excluded.holder OR job_leases.expires_at < $4",
                args![job, holder, ts(now + ttl), ts(now)],
            )
            .await?;
        Ok(changed == 1)
    }
}
