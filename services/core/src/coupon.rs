//! Coupons: a discount a partner gets for some billing periods (issue 21, "Coupons").
//!
//! A coupon takes a fixed amount or a percentage off an invoice, before tax:
//! - **Which periods**: counted from the billing period the coupon was attached in (index 0):
//!   `once` is that period alone, `periods = N` the N periods from it, `forever` every period
//!   from it. Whether a coupon applies to a period follows from its index alone, so a draft, its
//!   recomputation and the finalized invoice always agree, and nothing is counted down when an
//!   invoice is finalized.
//! - **Which lines**: the period's own lines (base fees, usage, commitment top-up; never the
//!   adjustments of earlier periods), or only the usage lines of `meters` when it names some;
//!   only when the plan at the period's end is one of `plans`, when it names some.
//! - **In which order**: coupons in the order they were attached, each on what the ones before
//!   it left of its lines; a percentage is of that amount, rounded once; a fixed amount takes at
//!   most that amount (what is left over is not carried to the next period). Then tax on the
//!   discounted subtotal, then prepaid credits on the total.
//! - A fixed amount in another currency than the invoice's takes nothing (attaching refuses it
//!   against the partner's plan; a later plan change to another currency makes it inert).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::Currency;
use crate::period::{BillingPeriod, PeriodRule};

/// The most periods counted from an attachment to a period a coupon could apply to.
const MAX_PERIODS: u32 = 10_000;

/// The index of `period` counted in periods of `rule` (in `tz`) from the one holding
/// `attached_at` (0), or `None` beyond 10,000 periods.
pub fn period_index(
    rule: &PeriodRule,
    tz: Tz,
    attached_at: DateTime<Utc>,
    period: &BillingPeriod,
) -> Option<u32> {
    let mut p = rule.containing_in(tz, attached_at);
    let mut index = 0;
    while p.end <= period.start {
        p = rule.containing_in(tz, p.end);
        index += 1;
        if index > MAX_PERIODS {
            return None;
        }
    }
    Some(index)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Coupon {
    /// What finance types and partners see: `LAUNCH20`.
    pub code: String,
    pub name: String,
    pub discount: Discount,
    pub duration: CouponDuration,
    /// Plans it applies on; empty: any.
    #[serde(default)]
    pub plans: Vec<String>,
    /// Meters whose usage lines it discounts; empty: the period's whole own subtotal.
    #[serde(default)]
    pub meters: Vec<String>,
    /// After this it can no longer be attached (partners who have it keep it).
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Discount {
    /// At most this much off each period it applies to.
    Amount {
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        currency: Currency,
    },
    /// This share of the lines it applies to (`0.2` for 20 %).
    Percent {
        #[serde(with = "rust_decimal::serde::str")]
        rate: Decimal,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "every", rename_all = "snake_case")]
pub enum CouponDuration {
    /// The billing period it was attached in.
    Once,
    /// This many billing periods from the one it was attached in.
    Periods {
        count: u32,
    },
    Forever,
}

/// Why a coupon cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    #[error("a coupon code is 1 to 64 letters, digits, '-' or '_', not {0:?}")]
    BadCode(String),
    #[error("a percentage is a fraction above 0 and at most 1 (0.2 for 20 %), not {0}")]
    BadRate(Decimal),
    #[error("a coupon amount is above 0 and at most 10^15, not {0}")]
    BadAmount(Decimal),
    #[error("a coupon for some periods lasts 1 period or more")]
    NoPeriods,
}

impl Coupon {
    /// Checks what a person typed.
    pub fn validate(&self) -> Result<(), CouponError> {
        let code_ok = !self.code.is_empty()
            && self.code.len() <= 64
            && self
                .code
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !code_ok {
            return Err(CouponError::BadCode(self.code.clone()));
        }
        match self.discount {
            Discount::Percent { rate } if rate <= Decimal::ZERO || rate > Decimal::ONE => {
                return Err(CouponError::BadRate(rate))
            }
            Discount::Amount { amount, .. }
                if amount <= Decimal::ZERO || amount > crate::money::MAX_AMOUNT =>
            {
                return Err(CouponError::BadAmount(amount))
            }
            _ => {}
        }
        if self.duration == (CouponDuration::Periods { count: 0 }) {
            return Err(CouponError::NoPeriods);
        }
        Ok(())
    }

    /// Whether it applies to the billing period `index` periods after the one it was
    /// attached in.
    pub fn applies_to_period(&self, index: u32) -> bool {
        match self.duration {
            CouponDuration::Once => index == 0,
            CouponDuration::Periods { count } => index < count,
            CouponDuration::Forever => true,
        }
    }

    /// How it reads on an invoice line: `coupon LAUNCH20 (20 %)`.
    pub fn describe(&self) -> String {
        match &self.discount {
            Discount::Percent { rate } => format!(
                "coupon {} ({} %)",
                self.code,
                (*rate * Decimal::ONE_HUNDRED).normalize()
            ),
            Discount::Amount { amount, currency } => {
                format!(
                    "coupon {} ({} {})",
                    self.code,
                    amount.normalize(),
                    currency.code()
                )
            }
        }
    }
}
