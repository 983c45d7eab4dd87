//! Named staff: the company's people who sign in to the dashboard, each with a role
//! (docs/security.md, "Staff"). The SQL is written once for both stores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::ids::StaffId;
use serde::Serialize;

use crate::BillingStoreError;

/// What a staff member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StaffRole {
    /// Reads everything staff may read; changes nothing.
    Viewer,
    /// Reads, and works partners, invoices, credits and webhooks.
    Finance,
    /// Everything, staff and service tokens included.
    Admin,
}

impl StaffRole {
    pub const ALL: [StaffRole; 3] = [StaffRole::Viewer, StaffRole::Finance, StaffRole::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            StaffRole::Viewer => "viewer",
            StaffRole::Finance => "finance",
            StaffRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<StaffRole> {
        StaffRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StaffMember {
    pub id: StaffId,
    /// Lower case; unique.
    pub email: String,
    pub name: String,
    pub role: StaffRole,
    pub created_at: DateTime<Utc>,
    /// A disabled member cannot sign in; their sessions and unused links ended when it was set.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A change to a staff member; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct StaffChange {
    pub name: Option<String>,
    pub role: Option<StaffRole>,
    /// `Some(true)` disables (at the change's time), `Some(false)` enables again.
    pub disabled: Option<bool>,
}

#[async_trait]
pub trait StaffStore: Send + Sync + 'static {
    /// Adds a member; `Conflict` when the email is taken.
    async fn create_staff(&self, member: &StaffMember) -> Result<(), BillingStoreError>;
    /// Every member, disabled ones included, oldest first.
    async fn staff(&self) -> Result<Vec<StaffMember>, BillingStoreError>;
    /// The member with this id or (lower-cased) email.
    async fn staff_member(
        &self,
        id_or_email: &str,
    ) -> Result<Option<StaffMember>, BillingStoreError>;
    /// Applies `change` and returns the member before and after it. Disabling ends the
    /// member's open sessions and spends their unused sign-in links in the same transaction.
    /// `NotFound` for an unknown id.
    async fn update_staff(
        &self,
        id: &StaffId,
        change: &StaffChange,
        at: DateTime<Utc>,
    ) -> Result<(StaffMember, StaffMember), BillingStoreError>;
}

/// Implements [`StaffStore`] for a store with a `pool` field of an sqlx pool type; `$begin`
/// starts a write transaction (as for the ledger).
macro_rules! staff_store {
    ($store:ty, $db:ty, $begin:literal) => {
        const _: () = {
            use sqlx::Row as _;
            use $crate::ledger::{parse_opt_time, parse_time, ts};
            use $crate::staff::{StaffChange, StaffMember, StaffRole};

            const COLUMNS: &str = "id, email, name, role, created_at, disabled_at";

            fn row(r: &<$db as sqlx::Database>::Row) -> Result<StaffMember, $crate::BillingStoreError> {
                let role: String = r.try_get("role")?;
                Ok(StaffMember {
                    id: $crate::parse_id("staff member", r.try_get("id")?)?,
                    email: r.try_get("email")?,
                    name: r.try_get("name")?,
                    role: StaffRole::parse(&role).ok_or_else(|| $crate::BillingStoreError::Corrupt {
                        what: "staff member",
                        reason: format!("role {role:?}"),
                    })?,
                    created_at: parse_time("staff member", &r.try_get::<String, _>("created_at")?)?,
                    disabled_at: parse_opt_time("staff member", r.try_get("disabled_at")?)?,
                })
            }

            #[async_trait::async_trait]
            impl $crate::staff::StaffStore for $store {
                async fn create_staff(&self, m: &StaffMember) -> Result<(), $crate::BillingStoreError> {
                    let done = sqlx::query(&format!(
                        "INSERT INTO staff ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (email) DO NOTHING"
                    ))
                    .bind(m.id.as_str())
                    .bind(m.email.to_lowercase())
                    .bind(&m.name)
                    .bind(m.role.as_str())
                    .bind(ts(m.created_at))
                    .bind(m.disabled_at.map(ts))
                    .execute(&self.pool)
                    .await?;
                    if done.rows_affected() == 0 {
                        return Err($crate::BillingStoreError::Conflict(format!(
                            "a staff member with email {} exists already",
                            m.email
                        )));
                    }
                    Ok(())
                }

                async fn staff(&self) -> Result<Vec<StaffMember>, $crate::BillingStoreError> {
                    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM staff ORDER BY created_at, id"))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(row).collect()
                }

                async fn staff_member(
                    &self,
                    id_or_email: &str,
                ) -> Result<Option<StaffMember>, $crate::BillingStoreError> {
                    let r = sqlx::query(&format!(
                        "SELECT {COLUMNS} FROM staff WHERE id = $1 OR email = $2"
                    ))
                    .bind(id_or_email)
                    .bind(id_or_email.to_lowercase())
                    .fetch_optional(&self.pool)
                    .await?;
                    r.as_ref().map(row).transpose()
                }

                async fn update_staff(
                    &self,
                    id: &peage_core::ids::StaffId,
                    change: &StaffChange,
                    at: chrono::DateTime<chrono::Utc>,
                ) -> Result<(StaffMember, StaffMember), $crate::BillingStoreError> {
                    let at = parse_time("staff member", &ts(at))?;
                    let mut tx = self.pool.begin_with($begin).await?;
                    let before = sqlx::query(&format!("SELECT {COLUMNS} FROM staff WHERE id = $1"))
                        .bind(id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?
                        .ok_or_else(|| $crate::ledger::not_found("staff member", id))?;
                    let before = row(&before)?;
                    let mut after = before.clone();
                    if let Some(name) = &change.name {
                        after.name = name.clone();
                    }
                    if let Some(role) = change.role {
                        after.role = role;
                    }
                    match change.disabled {
                        Some(true) if before.disabled_at.is_none() => after.disabled_at = Some(at),
                        Some(false) => after.disabled_at = None,
                        _ => {}
                    }
                    sqlx::query("UPDATE staff SET name = $1, role = $2, disabled_at = $3 WHERE id = $4")
                        .bind(&after.name)
                        .bind(after.role.as_str())
                        .bind(after.disabled_at.map(ts))
                        .bind(id.as_str())
                        .execute(&mut *tx)
                        .await?;
                    if after.disabled_at.is_some() {
                        sqlx::query(
                            "UPDATE dashboard_sessions SET ended_at = $1 WHERE staff_id = $2 AND ended_at IS NULL",
                        )
                        .bind(ts(at))
                        .bind(id.as_str())
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "UPDATE dashboard_sign_in_links SET used_at = $1 WHERE staff_id = $2 AND used_at IS NULL",
                        )
                        .bind(ts(at))
                        .bind(id.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok((before, after))
                }
            }
        };
    };
}
pub(crate) use staff_store;
