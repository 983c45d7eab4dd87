//! Who holds a credential: service tokens, one-time dashboard sign-in links and the sessions
//! they open.
//!
//! Why links rather than a partner admin key: an API key is a long-lived gateway credential
//! that lives in partners' servers; making it a browser password too would let a key leaked from
//! a server rotate keys and read invoices. A link is single-use, expires in 15 minutes, is
//! stored only as a SHA-256, carries its token in the URL fragment (never sent to a server or a
//! log), and needs a click (mail scanners that open links do not use it up). The session it
//! opens lives server-side, so signing out ends it everywhere.

use chrono::{DateTime, Duration, Utc};
use peage_billing_store::{BillingStore, DashboardGrant, DashboardRole, StaffMember};
use peage_core::ids::{PartnerId, ServiceTokenId, StaffId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;
use super::principal::{Principal, ServiceScope};
use super::tokens::{new_token, token_hash, SERVICE_TOKEN_PREFIX};

const LINK_TTL_MINUTES: i64 = 15;
/// How long a dashboard session lasts.
pub const SESSION_TTL_HOURS: i64 = 12;

/// `POST /v1/sign-in-links`: either `partner_id` or `staff` (an id or an email).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSignInLink {
    /// The partner the link signs in as.
    pub partner_id: Option<String>,
    /// The staff member (`stf_…` or their email) the link signs in as; admins only.
    pub staff: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SignInLink {
    /// Shown once; only its SHA-256 is stored.
    pub token: String,
    /// The dashboard address that uses it, relative to the control API's base URL.
    pub path: String,
    /// `staff` or `partner`.
    pub role: String,
    pub partner_id: Option<PartnerId>,
    pub staff_id: Option<StaffId>,
    pub expires_at: DateTime<Utc>,
}

/// Who a session is.
#[derive(Serialize, ToSchema, Default)]
pub struct SessionInfo {
    /// A staff member's role (`viewer`, `finance`, `admin`), `admin` for the admin token,
    /// `service:<scope>` for a service token, or `partner`.
    pub role: String,
    pub partner_id: Option<PartnerId>,
    pub partner_name: Option<String>,
    /// The signed-in staff member.
    pub staff_id: Option<StaffId>,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// What using a sign-in link did.
pub enum SignedIn {
    /// A session was opened: its token (the cookie's value, shown once) and who it is.
    Opened { token: String, info: SessionInfo },
    /// No such link, or it was used or has expired: a wrong credential.
    UnknownLink,
    /// The link was made for a staff member since removed or disabled.
    NoLongerAllowed,
}

/// The staff member with this id or email, refused when unknown or disabled.
pub async fn live_staff(
    store: &dyn BillingStore,
    id_or_email: &str,
) -> Result<StaffMember, ServiceError> {
    let m = store
        .staff_member(id_or_email.trim())
        .await?
        .ok_or_else(|| ServiceError::not_found("staff member", id_or_email))?;
    if m.disabled_at.is_some() {
        return Err(ServiceError::Invalid(format!(
            "staff member {} is disabled",
            m.email
        )));
    }
    Ok(m)
}

/// Creates a one-time sign-in link for `role` (an existing partner or staff member): what
/// `POST /v1/sign-in-links`, `peage up` and `peage sign-in-link` hand out.
pub async fn sign_in_link(
    store: &dyn BillingStore,
    role: DashboardRole,
) -> Result<SignInLink, ServiceError> {
    let (role_name, partner_id, staff_id) = match &role {
        DashboardRole::Partner { partner_id } => ("partner", Some(partner_id.clone()), None),
        DashboardRole::Staff { staff_id } => ("staff", None, Some(staff_id.clone())),
    };
    if let Some(id) = &partner_id {
        if store.partner(id).await?.is_none() {
            return Err(ServiceError::not_found("partner", id));
        }
    }
    if let Some(id) = &staff_id {
        live_staff(store, id.as_str()).await?;
    }
    let now = Utc::now();
    let token = new_token("psl_");
    let grant = DashboardGrant {
        token_hash: token_hash(&token),
        role,
        created_at: now,
        expires_at: now + Duration::minutes(LINK_TTL_MINUTES),
    };
    store.create_sign_in_link(&grant).await?;
    Ok(SignInLink {
        path: format!("/sign-in#token={token}"),
        token,
        role: role_name.to_string(),
        partner_id,
        staff_id,
        expires_at: grant.expires_at,
    })
}

/// The principal a session or link of `role` is now: `None` for a staff member who was
/// removed or disabled since.
async fn of_session(
    store: &dyn BillingStore,
    role: DashboardRole,
) -> Result<Option<Principal>, ServiceError> {
    Ok(match role {
        DashboardRole::Partner { partner_id } => Some(Principal::Partner(partner_id)),
        DashboardRole::Staff { staff_id } => store
            .staff_member(staff_id.as_str())
            .await?
            .filter(|m| m.disabled_at.is_none())
            .map(Principal::Staff),
    })
}

impl Billing {
    /// The live service token `presented` is, with its scope; `None` for anything else.
    pub async fn service_token(
        &self,
        presented: &str,
    ) -> Result<Option<(ServiceTokenId, ServiceScope)>, ServiceError> {
        if !presented.starts_with(SERVICE_TOKEN_PREFIX) {
            return Ok(None);
        }
        let Some(t) = self
            .store
            .service_token_by_hash(&token_hash(presented))
            .await?
        else {
            return Ok(None);
        };
        if t.revoked_at.is_some() {
            return Ok(None);
        }
        let scope = ServiceScope::parse(&t.scope).ok_or_else(|| {
            ServiceError::Corrupt(format!(
                "service token {} has unknown scope {:?}",
                t.id, t.scope
            ))
        })?;
        Ok(Some((t.id, scope)))
    }

    /// The role of the live dashboard session whose token is `token`.
    pub async fn session_role(&self, token: &str) -> Result<Option<DashboardRole>, ServiceError> {
        Ok(self
            .store
            .dashboard_session(&token_hash(token), Utc::now())
            .await?
            .map(|g| g.role))
    }

    /// Who a session of `role` is now: `None` for a staff member removed or disabled since.
    pub async fn session_principal(
        &self,
        role: DashboardRole,
    ) -> Result<Option<Principal>, ServiceError> {
        of_session(self.store.as_ref(), role).await
    }

    /// A sign-in link for a partner, or (admins only: a link is the person's password for 15
    /// minutes, or a finance member could sign in as an admin) for a staff member.
    pub async fn create_sign_in_link(
        &self,
        who: &Principal,
        req: NewSignInLink,
    ) -> Result<SignInLink, ServiceError> {
        let role = match (req.partner_id, req.staff) {
            (Some(raw), None) => DashboardRole::Partner {
                partner_id: PartnerId::parse(&raw)
                    .map_err(|_| ServiceError::not_found("partner", &raw))?,
            },
            (None, Some(staff)) => {
                if !who.is_admin() {
                    return Err(ServiceError::NotPermitted(
                        "only admins create sign-in links for staff".into(),
                    ));
                }
                DashboardRole::Staff {
                    staff_id: live_staff(self.store.as_ref(), &staff).await?.id,
                }
            }
            _ => {
                return Err(ServiceError::Invalid(
                    "give either partner_id or staff (an id or an email), not both".into(),
                ))
            }
        };
        let link = sign_in_link(self.store.as_ref(), role).await?;
        tracing::info!(role = %link.role, partner_id = ?link.partner_id, staff_id = ?link.staff_id, by = %who.label(), "dashboard sign-in link created");
        Ok(link)
    }

    /// Uses the sign-in link whose token is `link` (once) and opens a session.
    pub async fn sign_in(&self, link: &str) -> Result<SignedIn, ServiceError> {
        let now = Utc::now();
        let session = new_token("pss_");
        let Some(grant) = self
            .store
            .redeem_sign_in_link(
                &token_hash(link.trim()),
                now,
                &token_hash(&session),
                now + Duration::hours(SESSION_TTL_HOURS),
            )
            .await?
        else {
            return Ok(SignedIn::UnknownLink);
        };
        let Some(principal) = of_session(self.store.as_ref(), grant.role).await? else {
            return Ok(SignedIn::NoLongerAllowed);
        };
        tracing::info!(principal = %principal.label(), "dashboard session opened");
        Ok(SignedIn::Opened {
            token: session,
            info: self.session_info(&principal).await?,
        })
    }

    /// Ends a session (sign out); ending an unknown or ended one is not an error.
    pub async fn sign_out(&self, token: &str) -> Result<(), ServiceError> {
        Ok(self
            .store
            .end_dashboard_session(&token_hash(token), Utc::now())
            .await?)
    }

    /// Who the caller is, for the dashboard.
    pub async fn session_info(&self, who: &Principal) -> Result<SessionInfo, ServiceError> {
        Ok(match who {
            Principal::AdminToken => SessionInfo {
                role: "admin".into(),
                name: Some("Admin token".into()),
                ..Default::default()
            },
            Principal::Staff(m) => SessionInfo {
                role: m.role.as_str().into(),
                staff_id: Some(m.id.clone()),
                name: Some(m.name.clone()),
                email: Some(m.email.clone()),
                ..Default::default()
            },
            Principal::Service { scope, .. } => SessionInfo {
                role: format!("service:{}", scope.as_str()),
                ..Default::default()
            },
            Principal::Partner(id) => SessionInfo {
                role: "partner".into(),
                partner_id: Some(id.clone()),
                partner_name: self.store.partner(id).await?.map(|p| p.name),
                ..Default::default()
            },
        })
    }
}
