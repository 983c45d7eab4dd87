//! Who is asking, and what they may reach: the admin token, a staff member's session, a
//! partner's session, or a service token of one scope (docs/security.md).

use peage_billing_store::{StaffMember, StaffRole};
use peage_core::ids::ServiceTokenId;
use peage_core::{InvoiceRecord, InvoiceStatus, PartnerId};

use super::error::ServiceError;

/// The caller of a `/v1` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin bearer token.
    AdminToken,
    /// A named staff member's dashboard session, with their role as of this request.
    Staff(StaffMember),
    /// A partner's dashboard session.
    Partner(PartnerId),
    /// A service token (`pst_…`): a role or a script, limited to its scope's routes.
    Service {
        id: ServiceTokenId,
        scope: ServiceScope,
    },
}

/// What a service token may do (docs/security.md, "Service tokens").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceScope {
    /// A gateway: quota leases (and, as they move off the database, key resolution).
    Gateway,
    /// Usage from the company's own services (the events API).
    EventsWrite,
    /// What a finance staff member may do.
    Finance,
    /// Every staff route that only reads.
    ReadOnly,
    /// Everything the admin token may do.
    Admin,
}

/// The routes a gateway token reaches: (method, route as the router names it).
pub const GATEWAY_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/quota/leases"),
    ("GET", "/v1/gateway/keys/{secret_hash}"),
    ("GET", "/v1/gateway/key-ids/{key_id}"),
    ("GET", "/v1/gateway/issuers"),
    ("GET", "/v1/gateway/revocations"),
    ("GET", "/v1/catalog/active"),
];
/// The routes an `events:write` token reaches.
pub const EVENTS_ROUTES: &[(&str, &str)] =
    &[("POST", "/v1/events"), ("POST", "/v1/events/cancellations")];

impl ServiceScope {
    pub const ALL: [ServiceScope; 5] = [
        ServiceScope::Gateway,
        ServiceScope::EventsWrite,
        ServiceScope::Finance,
        ServiceScope::ReadOnly,
        ServiceScope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceScope::Gateway => "gateway",
            ServiceScope::EventsWrite => "events:write",
            ServiceScope::Finance => "finance",
            ServiceScope::ReadOnly => "read-only",
            ServiceScope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<ServiceScope> {
        ServiceScope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether the scope reaches `route` (the router's template, `/v1/keys/{key_id}`) with
    /// `method` (`GET`, `POST`…). Service tokens are managed by admins alone.
    pub fn allows(self, method: &str, route: &str) -> bool {
        let listed =
            |routes: &[(&str, &str)]| routes.iter().any(|(m, r)| *m == method && *r == route);
        let admin_only = route.starts_with("/v1/service-tokens")
            || route.starts_with("/v1/staff")
            || route == "/v1/audit";
        match self {
            ServiceScope::Admin => true,
            ServiceScope::Finance => !admin_only,
            ServiceScope::ReadOnly => matches!(method, "GET" | "HEAD") && !admin_only,
            ServiceScope::Gateway => listed(GATEWAY_ROUTES),
            ServiceScope::EventsWrite => listed(EVENTS_ROUTES),
        }
    }
}

impl From<StaffRole> for ServiceScope {
    /// A staff member reaches the routes of the service scope of their role's name.
    fn from(role: StaffRole) -> ServiceScope {
        match role {
            StaffRole::Viewer => ServiceScope::ReadOnly,
            StaffRole::Finance => ServiceScope::Finance,
            StaffRole::Admin => ServiceScope::Admin,
        }
    }
}

impl Principal {
    /// Who this is, as the audit log and invoices name them: `admin` (the admin token),
    /// `staff:<email>`, `partner:<id>`, `service:<id>:<scope>`.
    pub fn label(&self) -> String {
        match self {
            Principal::AdminToken => "admin".into(),
            Principal::Staff(m) => format!("staff:{}", m.email),
            Principal::Partner(p) => format!("partner:{p}"),
            Principal::Service { id, scope } => format!("service:{id}:{}", scope.as_str()),
        }
    }

    /// Whether the caller may do everything (manage staff, service tokens, read the audit log).
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::AdminToken => true,
            Principal::Staff(m) => m.role == StaffRole::Admin,
            Principal::Service { scope, .. } => *scope == ServiceScope::Admin,
            Principal::Partner(_) => false,
        }
    }

    /// Allows a partner session only on its own partner; another partner's id is "not found",
    /// as an id that does not exist.
    pub fn may_see(&self, partner_id: &str) -> Result<(), ServiceError> {
        match self {
            Principal::AdminToken | Principal::Staff(_) | Principal::Service { .. } => Ok(()),
            Principal::Partner(own) if own.as_str() == partner_id => Ok(()),
            Principal::Partner(_) => Err(ServiceError::not_found("partner", partner_id)),
        }
    }

    /// Whether the caller may see this invoice: staff every one; a partner its own, once
    /// finance has finalized it (drafts are finance's work in progress).
    pub fn may_see_invoice(&self, invoice: &InvoiceRecord) -> bool {
        match self {
            Principal::AdminToken | Principal::Staff(_) | Principal::Service { .. } => true,
            Principal::Partner(own) => {
                *own == invoice.partner_id && invoice.status != InvoiceStatus::Draft
            }
        }
    }

    /// The partner a partner session is limited to; `None` for staff.
    pub fn own_partner(&self) -> Option<&PartnerId> {
        match self {
            Principal::AdminToken | Principal::Staff(_) | Principal::Service { .. } => None,
            Principal::Partner(p) => Some(p),
        }
    }
}
