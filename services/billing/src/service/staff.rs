//! Staff: the company's named people who sign in to the dashboard, each with a role
//! (viewer, finance, admin), managed by admins. A member signs in with a link made for them
//! (`POST /v1/sign-in-links` with `staff`, or `peage sign-in-link --staff <email>`); disabling
//! them ends their sessions and unused links at once.

use chrono::Utc;
use peage_billing_store::{BillingStore, StaffChange, StaffMember, StaffRole};
use peage_core::ids::StaffId;
use serde::Deserialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStaffMember {
    /// Their email: how they are named in the audit log and on invoices they finalize.
    pub email: String,
    pub name: String,
    /// `viewer`, `finance` or `admin`.
    pub role: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffUpdate {
    pub name: Option<String>,
    /// `viewer`, `finance` or `admin`.
    pub role: Option<String>,
    /// `true` disables the member (their sessions and unused links end); `false` enables.
    pub disabled: Option<bool>,
}

fn role(s: &str) -> Result<StaffRole, ServiceError> {
    StaffRole::parse(s).ok_or_else(|| {
        ServiceError::Invalid(format!(
            "role must be one of {}, not {s:?}",
            StaffRole::ALL.map(StaffRole::as_str).join(", ")
        ))
    })
}

fn name(s: &str) -> Result<String, ServiceError> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > 100 || s.chars().any(char::is_control) {
        return Err(ServiceError::Invalid(
            "name must be 1 to 100 characters, without control characters".into(),
        ));
    }
    Ok(s.to_string())
}

/// A plain check, not RFC 5322: one `@`, something on each side, no spaces or control
/// characters (`admin@localhost` is fine). Péage does not send mail; the address names a person.
fn email(s: &str) -> Result<String, ServiceError> {
    let s = s.trim().to_lowercase();
    let valid = s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(s)
    } else {
        Err(ServiceError::Invalid(format!(
            "email {s:?} is not an email address"
        )))
    }
}

/// Adds a staff member (what the route, `peage staff add` and `peage up` do).
pub async fn create(
    store: &dyn BillingStore,
    email_address: &str,
    full_name: &str,
    role_name: &str,
) -> Result<StaffMember, ServiceError> {
    let member = StaffMember {
        id: StaffId::from_random(rand::random()),
        email: email(email_address)?,
        name: name(full_name)?,
        role: role(role_name)?,
        created_at: Utc::now(),
        disabled_at: None,
    };
    store.create_staff(&member).await?;
    tracing::info!(id = %member.id, email = %member.email, role = member.role.as_str(), "staff member added");
    Ok(member)
}

/// Changes a staff member, found by id or email: their state before and after.
pub async fn update(
    store: &dyn BillingStore,
    id_or_email: &str,
    change: &StaffUpdate,
) -> Result<(StaffMember, StaffMember), ServiceError> {
    let change = StaffChange {
        name: change.name.as_deref().map(name).transpose()?,
        role: change.role.as_deref().map(role).transpose()?,
        disabled: change.disabled,
    };
    let member = store
        .staff_member(id_or_email.trim())
        .await?
        .ok_or_else(|| ServiceError::not_found("staff member", id_or_email))?;
    let (before, after) = store.update_staff(&member.id, &change, Utc::now()).await?;
    tracing::info!(id = %after.id, email = %after.email, role = after.role.as_str(), disabled = after.disabled_at.is_some(), "staff member changed");
    Ok((before, after))
}

impl Billing {
    pub async fn staff(&self) -> Result<Vec<StaffMember>, ServiceError> {
        Ok(self.store.staff().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "a b@example.com",
            "a@b@c.d",
            "ann@.com",
        ] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
    }
}
