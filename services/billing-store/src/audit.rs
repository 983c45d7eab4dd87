//! The append-only audit log of control-API actions (docs/security.md, "Audit log"), written
//! once for both stores; the schemas refuse UPDATE and DELETE on it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::BillingStoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// `aud_` and a time-ordered UUID.
    pub id: String,
    pub at: DateTime<Utc>,
    /// `admin` (the admin token), `staff:<email>`, `partner:<id>`, `service:<id>:<scope>`, or
    /// `anonymous` (sign-in).
    pub actor: String,
    /// Method and route: `POST /v1/partners/{id}/credits`.
    pub action: String,
    /// The route's parameters: `id=prt_…`, empty when it has none.
    pub target: String,
    pub status: u16,
    pub request_id: String,
    /// What the changed thing was before (JSON, secrets redacted), for actions that change
    /// something that existed; `None` for creations and failed actions.
    pub before: Option<String>,
    /// The answer's JSON, secrets redacted; `None` when it was not JSON or too large.
    pub after: Option<String>,
}

#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), BillingStoreError>;
    /// Records after `after` (a record id; `None`: from the start), oldest first, at most
    /// `limit`.
    async fn audit_records(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, BillingStoreError>;
}

/// Implements [`AuditStore`] for a store with a `pool` field of an sqlx pool type.
macro_rules! audit_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::audit::AuditStore for $store {
            async fn append_audit(
                &self,
                r: &$crate::audit::AuditRecord,
            ) -> Result<(), $crate::BillingStoreError> {
                sqlx::query(
                    "INSERT INTO audit_log (id, at, actor, action, target, status, request_id, before, after) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&r.id)
                .bind($crate::ledger::ts(r.at))
                .bind(&r.actor)
                .bind(&r.action)
                .bind(&r.target)
                .bind(i64::from(r.status))
                .bind(&r.request_id)
                .bind(&r.before)
                .bind(&r.after)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn audit_records(
                &self,
                after: Option<&str>,
                limit: i64,
            ) -> Result<Vec<$crate::audit::AuditRecord>, $crate::BillingStoreError> {
                use sqlx::Row as _;
                let rows = sqlx::query(
                    "SELECT id, at, actor, action, target, status, request_id, before, after FROM audit_log \
                     WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let status: i64 = r.try_get("status")?;
                        Ok($crate::audit::AuditRecord {
                            id: r.try_get("id")?,
                            at: $crate::ledger::parse_time("audit record", &r.try_get::<String, _>("at")?)?,
                            actor: r.try_get("actor")?,
                            action: r.try_get("action")?,
                            target: r.try_get("target")?,
                            status: u16::try_from(status).unwrap_or(0),
                            request_id: r.try_get("request_id")?,
                            before: r.try_get("before")?,
                            after: r.try_get("after")?,
                        })
                    })
                    .collect()
            }
        }
    };
}
pub(crate) use audit_store;
