//! Why a billing operation failed, by cause. The HTTP layer maps each cause to a status once
//! (`http::error`); in-process callers (the embedded gateway, the CLI) match on the cause.

use peage_billing_store::BillingStoreError;
use peage_usage_store::UsageStoreError;

use super::intake::SinkRefused;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A value the caller sent breaks a rule; the message names the field and the rule.
    #[error("{0}")]
    Invalid(String),
    /// What the caller named does not exist (another partner's reads the same to a partner).
    #[error("{0}")]
    NotFound(String),
    /// The thing named is not in a state that allows this: a revoked key, an invoice whose
    /// period is not over, a plan change that would split a period.
    #[error("{0}")]
    WrongState(String),
    /// A value that must be unique belongs to something else.
    #[error("{0}")]
    Taken(String),
    /// The caller's role does not reach this.
    #[error("{0}")]
    NotPermitted(String),
    /// Stored state names something the loaded catalog no longer has (a plan, a meter).
    #[error("{0}")]
    CatalogDrift(String),
    /// A new catalog is invalid: every problem, with its file, line and field. The catalog in
    /// force keeps serving.
    #[error("the catalog was not reloaded: {}", .0.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("; "))]
    CatalogRefused(Vec<peage_core::catalog::CatalogIssue>),
    /// More in one request than the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// This server takes no usage events (no event log is configured for them).
    #[error("this server does not take usage events (no event log is configured for them)")]
    EventsOff,
    /// The event log did not take the events: nothing was accepted, the client retries.
    #[error("the event log refused the {what}: {source}")]
    EventLog {
        what: &'static str,
        source: SinkRefused,
    },
    #[error(transparent)]
    Store(#[from] BillingStoreError),
    #[error(transparent)]
    Usage(#[from] UsageStoreError),
    /// Stored or computed data that cannot be used as it is: an unreadable signing key, a
    /// stored plan that does not parse, a balance too large to add up.
    #[error("{0}")]
    Corrupt(String),
}

impl ServiceError {
    /// `"{what} {id} not found"`, the words every lookup uses.
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> ServiceError {
        ServiceError::NotFound(format!("{what} {id} not found"))
    }

    /// A store that could not be reached (billing's database or the usage store), or the
    /// event log: a retry may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ServiceError::Store(e) => e.is_unavailable(),
            ServiceError::Usage(UsageStoreError::Unavailable(_))
            | ServiceError::EventsOff
            | ServiceError::EventLog { .. } => true,
            _ => false,
        }
    }

    /// Whether the caller's request, not the server, is at fault: the same request would fail
    /// the same way (what an embedded gateway reports as a refused lease).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ServiceError::Invalid(_)
                | ServiceError::NotFound(_)
                | ServiceError::WrongState(_)
                | ServiceError::Taken(_)
                | ServiceError::NotPermitted(_)
                | ServiceError::CatalogDrift(_)
                | ServiceError::CatalogRefused(_)
                | ServiceError::TooLarge(_)
        )
    }
}
