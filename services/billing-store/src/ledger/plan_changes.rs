//! Scheduled plan changes: a partner moves to another plan at a set time (a period boundary
//! for a change of currency or billing period). At most one is pending per partner; applying
//! one ends the partner's subscription and starts the next in the same transaction that marks
//! it applied (`BillingStore::apply_plan_change`), so two billing instances apply it once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::ids::{PartnerId, PlanChangeId};
use serde::Serialize;

use super::db::{args, LedgerDb, Row};
use super::ts;
use crate::BillingStoreError;

/// Where a scheduled change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlanChangeStatus {
    /// Waiting for its time; can be cancelled.
    Pending,
    /// The partner moved at `at`.
    Applied,
    Cancelled,
    /// It could not be applied (`error` says why); the partner stayed on their plan.
    Failed,
}

impl PlanChangeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanChangeStatus::Pending => "pending",
            PlanChangeStatus::Applied => "applied",
            PlanChangeStatus::Cancelled => "cancelled",
            PlanChangeStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<PlanChangeStatus, BillingStoreError> {
        Ok(match s {
            "pending" => PlanChangeStatus::Pending,
            "applied" => PlanChangeStatus::Applied,
            "cancelled" => PlanChangeStatus::Cancelled,
            "failed" => PlanChangeStatus::Failed,
            other => {
                return Err(BillingStoreError::Corrupt {
                    what: "plan change",
                    reason: format!("status {other:?}"),
                })
            }
        })
    }
}

/// A plan change scheduled for a partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlanChange {
    pub id: PlanChangeId,
    pub partner_id: PartnerId,
    /// The plan the partner moves to (its version in force at `at`).
    pub plan_id: String,
    /// When the partner moves.
    pub at: DateTime<Utc>,
    pub scheduled_at: DateTime<Utc>,
    /// Who scheduled it (`staff:ana@example.com`, `admin`, `cli`).
    pub scheduled_by: String,
    pub status: PlanChangeStatus,
    /// When it was applied, cancelled or failed.
    pub settled_at: Option<DateTime<Utc>>,
    pub settled_by: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

const COLUMNS: &str = "id, partner_id, plan_id, at, scheduled_at, scheduled_by, status, \
                       settled_at, settled_by, error";

fn change_from(r: &Row) -> Result<PlanChange, BillingStoreError> {
    Ok(PlanChange {
        id: r.id("plan change", "id")?,
        partner_id: r.id("plan change", "partner_id")?,
        plan_id: r.text("plan_id")?,
        at: r.time("plan change", "at")?,
        scheduled_at: r.time("plan change", "scheduled_at")?,
        scheduled_by: r.text("scheduled_by")?,
        status: PlanChangeStatus::parse(&r.text("status")?)?,
        settled_at: r.opt_time("plan change", "settled_at")?,
        settled_by: r.opt_text("settled_by")?,
        error: r.opt_text("error")?,
    })
}

/// The statement that marks a pending change applied: the claim of
/// `BillingStore::apply_plan_change`, run in its transaction (no rows: someone else applied
/// or cancelled it first).
pub(crate) const CLAIM_APPLIED: &str = "UPDATE plan_changes SET status = 'applied', \
     settled_at = $1, settled_by = 'schedule' WHERE id = $2 AND status = 'pending'";

#[async_trait]
pub trait PlanChangeStore: Send + Sync + 'static {
    /// Records `change` (pending) and cancels the partner's pending change, if any, in one
    /// transaction; answers the one it replaced.
    async fn schedule_plan_change(
        &self,
        change: &PlanChange,
    ) -> Result<Option<PlanChange>, BillingStoreError>;
    /// The partner's pending change, if any.
    async fn pending_plan_change(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Option<PlanChange>, BillingStoreError>;
    /// Every change of the partner, the latest scheduled first.
    async fn plan_changes(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Vec<PlanChange>, BillingStoreError>;
    /// Pending changes due at `now`, the earliest first.
    async fn due_plan_changes(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<PlanChange>, BillingStoreError>;
    /// Cancels (`Cancelled`) or gives up on (`Failed`, with `error`) a pending change:
    /// `NotFound` for another partner's or an unknown id, `Conflict` once it is not pending.
    async fn settle_plan_change(
        &self,
        partner_id: &PartnerId,
        id: &PlanChangeId,
        status: PlanChangeStatus,
        by: &str,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<PlanChange, BillingStoreError>;
}

async fn one(
    db: &impl LedgerDb,
    id: &PlanChangeId,
) -> Result<Option<PlanChange>, BillingStoreError> {
    db.sql()
        .fetch_optional(
            &format!("SELECT {COLUMNS} FROM plan_changes WHERE id = $1"),
            args![id.as_str()],
        )
        .await?
        .as_ref()
        .map(change_from)
        .transpose()
}

#[async_trait]
impl<D: LedgerDb> PlanChangeStore for D {
    async fn schedule_plan_change(
        &self,
        change: &PlanChange,
    ) -> Result<Option<PlanChange>, BillingStoreError> {
        let mut tx = self.begin().await?;
        let replaced = tx
            .fetch_optional(
                &format!(
                    "SELECT {COLUMNS} FROM plan_changes WHERE partner_id = $1 AND status = 'pending'"
                ),
                args![&change.partner_id],
            )
            .await?
            .as_ref()
            .map(change_from)
            .transpose()?;
        if let Some(old) = &replaced {
            tx.execute(
                "UPDATE plan_changes SET status = 'cancelled', settled_at = $1, settled_by = $2 \
                 WHERE id = $3 AND status = 'pending'",
                args![
                    ts(change.scheduled_at),
                    format!("replaced by {}", change.id),
                    old.id.as_str()
                ],
            )
            .await?;
        }
        tx.execute(
            &format!(
                "INSERT INTO plan_changes ({COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', NULL, NULL, NULL)"
            ),
            args![
                change.id.as_str(),
                &change.partner_id,
                change.plan_id.as_str(),
                ts(change.at),
                ts(change.scheduled_at),
                change.scheduled_by.as_str()
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(replaced.map(|old| PlanChange {
            status: PlanChangeStatus::Cancelled,
            settled_at: Some(change.scheduled_at),
            settled_by: Some(format!("replaced by {}", change.id)),
            ..old
        }))
    }

    async fn pending_plan_change(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Option<PlanChange>, BillingStoreError> {
        self.sql()
            .fetch_optional(
                &format!(
                    "SELECT {COLUMNS} FROM plan_changes WHERE partner_id = $1 AND status = 'pending'"
                ),
                args![partner_id],
            )
            .await?
            .as_ref()
            .map(change_from)
            .transpose()
    }

    async fn plan_changes(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Vec<PlanChange>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(
                &format!(
                    "SELECT {COLUMNS} FROM plan_changes WHERE partner_id = $1 \
                     ORDER BY scheduled_at DESC, id DESC"
                ),
                args![partner_id],
            )
            .await?;
        rows.iter().map(change_from).collect()
    }

    async fn due_plan_changes(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<PlanChange>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(
                &format!(
                    "SELECT {COLUMNS} FROM plan_changes WHERE status = 'pending' AND at <= $1 \
                     ORDER BY at, id"
                ),
                args![ts(now)],
            )
            .await?;
        rows.iter().map(change_from).collect()
    }

    async fn settle_plan_change(
        &self,
        partner_id: &PartnerId,
        id: &PlanChangeId,
        status: PlanChangeStatus,
        by: &str,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<PlanChange, BillingStoreError> {
        let changed = self
            .sql()
            .execute(
                "UPDATE plan_changes SET status = $1, settled_at = $2, settled_by = $3, error = $4 \
                 WHERE id = $5 AND partner_id = $6 AND status = 'pending'",
                args![status.as_str(), ts(at), by, error, id.as_str(), partner_id],
            )
            .await?;
        let found = one(self, id)
            .await?
            .filter(|c| &c.partner_id == partner_id)
            .ok_or_else(|| super::not_found("plan change", id))?;
        if changed == 0 {
            return Err(BillingStoreError::Conflict(format!(
                "plan change {id} is {} already",
                found.status.as_str()
            )));
        }
        Ok(found)
    }
}
