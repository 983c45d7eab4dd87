//! Quota leases (PRODUCT.md §3, "Quota decisions").
//!
//! Billing hands each gateway a *lease*: an amount of a quota'd meter it may spend locally,
//! with no network call per request. For a hard quota, the sum of everything granted in a
//! period never exceeds the limit, whatever the number of gateways, so partners never exceed a
//! hard limit. Near the limit grants shrink to a fair share of what is left, so what sits
//! unspent on other gateways stays small and the partner gets close to the whole limit.
//!
//! [`decide`] is the whole policy; the billing store persists its result atomically.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::Env;
use crate::pricing::{Quota, QuotaKind};

/// `POST /v1/quota/leases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub partner_id: String,
    pub meter: String,
    #[serde(default = "live")]
    pub env: Env,
    pub gateway_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub want: Decimal,
}

fn live() -> Env {
    Env::Live
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaDecision {
    Allow,
    SoftExceeded,
    HardBlocked,
    /// Past a quota in shadow mode: counted and flagged, never refused.
    ShadowExceeded,
}

impl QuotaDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaDecision::Allow => "allow",
            QuotaDecision::SoftExceeded => "soft_exceeded",
            QuotaDecision::HardBlocked => "hard_blocked",
            QuotaDecision::ShadowExceeded => "shadow_exceeded",
        }
    }
}

/// The answer to a [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    pub partner_id: String,
    pub meter: String,
    pub env: Env,
    pub kind: QuotaKind,
    /// The quota is in shadow mode: counted and flagged, never refused.
    #[serde(default)]
    pub shadow: bool,
    /// What this gateway may spend now, on top of what it was granted before.
    #[serde(with = "rust_decimal::serde::str")]
    pub granted: Decimal,
    /// What is left to grant in this period after this lease.
    #[serde(with = "rust_decimal::serde::str")]
    pub remaining: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub limit: Decimal,
    pub period_start: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
    pub decision: QuotaDecision,
}

/// What billing knows about one quota in one period when a lease is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaLedger {
    /// Metered usage of the period (events already stored).
    pub used: Decimal,
    /// Everything granted in the period, to every gateway.
    pub granted: Decimal,
    /// How many gateways hold grants in the period (this one included).
    pub gateways: u32,
}

impl QuotaLedger {
    /// Usage counts as the larger of what was metered and what was granted: grants are spent
    /// before they are metered, and usage can also arrive from other sources.
    pub fn consumed(&self) -> Decimal {
        self.used.max(self.granted)
    }
}

/// The outcome of [`decide`]: what to grant, and the state after granting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: Decimal,
    pub remaining: Decimal,
    pub decision: QuotaDecision,
}

/// How much of `want` to grant.
///
/// - Hard: never more than what remains, and never more than a fair share of it,
///   `remaining / (2 × gateways)` rounded down to a whole unit (at least one unit, or the
///   fraction left), so unspent grants on other gateways stay a small part of the limit.
/// - Soft: everything asked for is granted; the decision says when the limit is passed.
/// - Shadow (either kind): as soft, with `shadow_exceeded` past the limit.
pub fn decide(quota: &Quota, ledger: &QuotaLedger, want: Decimal) -> Grant {
    let want = want.max(Decimal::ZERO);
    let left = (quota.limit - ledger.consumed()).max(Decimal::ZERO);
    let kind = if quota.shadow {
        QuotaKind::Soft
    } else {
        quota.kind
    };
    match kind {
        QuotaKind::Hard => {
            let share = (left / Decimal::from(2 * ledger.gateways.max(1))).floor();
            let cap = if share >= Decimal::ONE {
                share
            } else {
                left.min(Decimal::ONE)
            };
            let granted = want.min(cap);
            let remaining = left - granted;
            let decision = if left.is_zero() {
                QuotaDecision::HardBlocked
            } else {
                QuotaDecision::Allow
            };
            Grant {
                granted,
                remaining,
                decision,
            }
        }
        QuotaKind::Soft => {
            let after = ledger.consumed().saturating_add(want);
            Grant {
                granted: want,
                remaining: (quota.limit - after).max(Decimal::ZERO),
                decision: if after <= quota.limit {
                    QuotaDecision::Allow
                } else if quota.shadow {
                    QuotaDecision::ShadowExceeded
                } else {
                    QuotaDecision::SoftExceeded
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quota(limit: i64, kind: QuotaKind) -> Quota {
        Quota {
            meter: "calls".into(),
            limit: Decimal::from(limit),
            kind,
            shadow: false,
            near_limit: None,
        }
    }

    fn ledger(used: i64, granted: i64, gateways: u32) -> QuotaLedger {
        QuotaLedger {
            used: Decimal::from(used),
            granted: Decimal::from(granted),
            gateways,
        }
    }

    #[test]
    fn hard_grants_shrink_to_a_fair_share_near_the_limit() {
        let q = quota(1000, QuotaKind::Hard);
        let g = decide(&q, &ledger(0, 0, 1), Decimal::from(100));
        assert_eq!(g.granted, Decimal::from(100));
        assert_eq!(g.remaining, Decimal::from(900));
        // 40 left, 2 gateways: at most 10.
        let g = decide(&q, &ledger(0, 960, 2), Decimal::from(100));
        assert_eq!(g.granted, Decimal::from(10));
        // 1 left: one unit even though the share rounds to 0.
        let g = decide(&q, &ledger(999, 990, 3), Decimal::from(100));
        assert_eq!((g.granted, g.remaining), (Decimal::ONE, Decimal::ZERO));
        assert_eq!(g.decision, QuotaDecision::Allow);
        // Nothing left.
        let g = decide(&q, &ledger(1000, 1000, 3), Decimal::from(5));
        assert_eq!(g.granted, Decimal::ZERO);
        assert_eq!(g.decision, QuotaDecision::HardBlocked);
    }

    #[test]
    fn metered_usage_beyond_grants_counts() {
        let q = quota(100, QuotaKind::Hard);
        let g = decide(&q, &ledger(100, 10, 1), Decimal::from(5));
        assert_eq!(g.decision, QuotaDecision::HardBlocked);
    }

    #[test]
    fn a_shadow_quota_grants_everything_and_says_shadow_exceeded() {
        let q = Quota {
            shadow: true,
            ..quota(100, QuotaKind::Hard)
        };
        assert!(!q.enforced());
        let g = decide(&q, &ledger(0, 95, 1), Decimal::from(10));
        assert_eq!(g.granted, Decimal::from(10));
        assert_eq!(g.decision, QuotaDecision::ShadowExceeded);
        let g = decide(&q, &ledger(0, 50, 1), Decimal::from(10));
        assert_eq!(g.decision, QuotaDecision::Allow);
        assert_eq!(q.near_threshold(), Decimal::from(80));
    }

    #[test]
    fn soft_quotas_grant_everything_and_flag_the_excess() {
        let q = quota(100, QuotaKind::Soft);
        let g = decide(&q, &ledger(0, 90, 1), Decimal::from(10));
        assert_eq!(g.decision, QuotaDecision::Allow);
        let g = decide(&q, &ledger(0, 95, 1), Decimal::from(10));
        assert_eq!(g.granted, Decimal::from(10));
        assert_eq!(g.decision, QuotaDecision::SoftExceeded);
    }

    proptest! {
        /// Whatever the order and size of requests from any number of gateways, the grants of
        /// a hard quota never add up past the limit, and asking until refused reaches it.
        #[test]
        fn hard_grants_never_exceed_the_limit(
            limit in 1i64..5000,
            wants in proptest::collection::vec((0u32..5, 1i64..500), 1..200),
        ) {
            let q = quota(limit, QuotaKind::Hard);
            let mut granted = Decimal::ZERO;
            let mut seen = std::collections::BTreeSet::new();
            for (gw, want) in wants {
                seen.insert(gw);
                let l = QuotaLedger { used: Decimal::ZERO, granted, gateways: seen.len() as u32 };
                let g = decide(&q, &l, Decimal::from(want));
                prop_assert!(g.granted >= Decimal::ZERO && g.granted <= Decimal::from(want));
                granted += g.granted;
                prop_assert!(granted <= q.limit);
                prop_assert_eq!(g.remaining, q.limit - granted);
            }
            // Keep asking: the limit is reached exactly, then refused.
            loop {
                let l = QuotaLedger { used: Decimal::ZERO, granted, gateways: seen.len() as u32 };
                let g = decide(&q, &l, Decimal::from(50));
                if g.granted.is_zero() {
                    prop_assert_eq!(g.decision, QuotaDecision::HardBlocked);
                    break;
                }
                granted += g.granted;
            }
            prop_assert_eq!(granted, q.limit);
        }
    }
}
