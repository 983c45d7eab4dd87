//! Spend and usage alerts, and where a period is heading (docs/pricing.md, "Alerts").
//!
//! An alert watches one partner's running cost (`spend`, in the invoice's currency) or one
//! meter's usage (`usage`) against a budget, at thresholds given in percent of it (50, 80 and
//! 100 % by default). Each threshold is reported once per billing period, the first time the
//! value reaches it; billing keeps the record and sends `alert.triggered`.
//!
//! A forecast prices the period as it would end at the pace so far: meters that add up over
//! time (`count`, `sum`, `weighted_sum`) grow in proportion to the time left, the others
//! (`max`, `latest`, `unique_count`) stay where they are, and no meter grows past a hard quota,
//! since calls past it are refused.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::{Aggregation, Meter, MeterUsage};
use crate::money::Overflow;
use crate::pricing::{Plan, QuotaKind};

/// The most thresholds an alert may have.
pub const MAX_THRESHOLDS: usize = 10;
/// The highest threshold, in percent of the budget.
pub const MAX_PERCENT: u32 = 1000;
/// The thresholds of an alert that names none.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

/// What an alert watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// The period's running cost, tax included (the upcoming invoice's total), in its currency.
    Spend,
    /// One meter's usage this period (live traffic).
    Usage,
}

impl AlertMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertMetric::Spend => "spend",
            AlertMetric::Usage => "usage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "spend" => Some(AlertMetric::Spend),
            "usage" => Some(AlertMetric::Usage),
            _ => None,
        }
    }
}

/// An alert as asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub metric: AlertMetric,
    /// The meter of a `usage` alert; none for `spend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
    /// The budget: money in the invoice's currency for `spend`, the meter's unit for `usage`.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "100.00")]
    pub budget: Decimal,
    /// Percent of the budget at which to notify, each once per period; 50, 80 and 100 when
    /// left out.
    #[serde(default = "default_thresholds")]
    #[schema(example = json!([50, 80, 100]))]
    pub thresholds: Vec<u32>,
}

fn default_thresholds() -> Vec<u32> {
    DEFAULT_THRESHOLDS.to_vec()
}

/// Why an alert was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("budget must be more than 0, not {0}")]
    Budget(Decimal),
    #[error("a usage alert names its meter")]
    NoMeter,
    #[error("a spend alert watches the running cost and names no meter")]
    MeterOnSpend,
    #[error("no meter {0:?} in the catalog (its meters: {1})")]
    UnknownMeter(String, String),
    #[error("thresholds: give 1 to {MAX_THRESHOLDS} percentages")]
    ThresholdCount,
    #[error("threshold {0} % is not between 1 and {MAX_PERCENT}")]
    ThresholdRange(u32),
    #[error("threshold {0} % is given twice")]
    ThresholdTwice(u32),
}

impl AlertRule {
    /// Checks the rule against the catalog's meters and puts its thresholds in order.
    pub fn checked(mut self, meters: &[Meter]) -> Result<Self, AlertError> {
        if self.budget <= Decimal::ZERO {
            return Err(AlertError::Budget(self.budget));
        }
        match (self.metric, &self.meter) {
            (AlertMetric::Spend, Some(_)) => return Err(AlertError::MeterOnSpend),
            (AlertMetric::Usage, None) => return Err(AlertError::NoMeter),
            (AlertMetric::Usage, Some(m)) if !meters.iter().any(|x| &x.name == m) => {
                let names: Vec<&str> = meters.iter().map(|x| x.name.as_str()).collect();
                return Err(AlertError::UnknownMeter(m.clone(), names.join(", ")));
            }
            _ => {}
        }
        if self.thresholds.is_empty() || self.thresholds.len() > MAX_THRESHOLDS {
            return Err(AlertError::ThresholdCount);
        }
        self.thresholds.sort_unstable();
        for (i, &t) in self.thresholds.iter().enumerate() {
            if t == 0 || t > MAX_PERCENT {
                return Err(AlertError::ThresholdRange(t));
            }
            if i > 0 && self.thresholds[i - 1] == t {
                return Err(AlertError::ThresholdTwice(t));
            }
        }
        Ok(self)
    }

    /// The value at which `percent` of the budget is reached.
    pub fn level(&self, percent: u32) -> Result<Decimal, Overflow> {
        self.budget
            .checked_mul(Decimal::from(percent))
            .and_then(|v| v.checked_div(Decimal::ONE_HUNDRED))
            .ok_or(Overflow)
    }

    /// The thresholds `value` has reached, lowest first.
    pub fn reached(&self, value: Decimal) -> Result<Vec<u32>, Overflow> {
        let mut out = Vec::new();
        for &t in &self.thresholds {
            if value >= self.level(t)? {
                out.push(t);
            }
        }
        Ok(out)
    }
}

/// The usage a period would end with at the pace so far, `elapsed` being the fraction of it
/// gone by (0 < elapsed ≤ 1): additive meters scaled by `1 / elapsed`, the others as they are,
/// none past the hard quota `plan` sets on it. Per-event amounts are repeated in order to the
/// projected number of events.
pub fn project_usage(
    meters: &[Meter],
    plan: &Plan,
    usage: &[MeterUsage],
    elapsed: Decimal,
) -> Result<Vec<MeterUsage>, Overflow> {
    if elapsed <= Decimal::ZERO {
        return Err(Overflow);
    }
    let elapsed = elapsed.min(Decimal::ONE);
    let caps: HashMap<&str, Decimal> = plan
        .quotas
        .iter()
        .filter(|q| q.kind == QuotaKind::Hard && !q.shadow)
        .map(|q| (q.meter.as_str(), q.limit))
        .collect();
    usage
        .iter()
        .map(|u| {
            let Some(meter) = meters.iter().find(|m| m.name == u.meter) else {
                return Ok(u.clone());
            };
            let additive = matches!(
                meter.aggregation,
                Aggregation::Count | Aggregation::Sum | Aggregation::WeightedSum
            );
            if !additive {
                return Ok(u.clone());
            }
            let grow = |q: Decimal| -> Result<Decimal, Overflow> {
                let p = q.checked_div(elapsed).ok_or(Overflow)?;
                Ok(if meter.aggregation == Aggregation::Count {
                    p.round()
                } else {
                    p.round_dp(q.scale().max(6))
                })
            };
            let mut quantity = grow(u.quantity)?;
            // The share of the projection that a hard quota lets through (1 when none binds).
            let mut kept = Decimal::ONE;
            if let Some(&cap) = caps.get(u.meter.as_str()) {
                let ceiling = cap.max(u.quantity);
                if quantity > ceiling {
                    kept = if quantity.is_zero() {
                        Decimal::ONE
                    } else {
                        ceiling.checked_div(quantity).ok_or(Overflow)?
                    };
                    quantity = ceiling;
                }
            }
            let groups = u
                .groups
                .iter()
                .map(|g| {
                    let q = grow(g.quantity)?.checked_mul(kept).ok_or(Overflow)?;
                    Ok(crate::meter::MeterGroup {
                        dimensions: g.dimensions.clone(),
                        quantity: q.round_dp(g.quantity.scale().max(6)),
                    })
                })
                .collect::<Result<Vec<_>, Overflow>>()?;
            let amounts = match &u.amounts {
                Some(a) if !a.is_empty() => {
                    let n = Decimal::from(a.len())
                        .checked_div(elapsed)
                        .and_then(|n| n.checked_mul(kept))
                        .ok_or(Overflow)?
                        .round();
                    let n = usize::try_from(n.mantissa().max(0) as u128).map_err(|_| Overflow)?;
                    Some(a.iter().copied().cycle().take(n.max(a.len())).collect())
                }
                other => other.clone(),
            };
            Ok(MeterUsage {
                meter: u.meter.clone(),
                quantity,
                groups,
                amounts,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn catalog() -> Catalog {
        let text = r#"
[[meter]]
name = "calls"
aggregation = "count"

[[meter]]
name = "seats"
aggregation = "latest"
event_type = "seat.count"
value = "seats"

[[plan]]
id = "capped"
name = "Capped"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.01" }]
quotas = [{ meter = "calls", limit = 1000, kind = "hard" }]
"#;
        Catalog::parse("test.toml", text, &|_| None).unwrap()
    }

    fn used(meter: &str, q: &str) -> MeterUsage {
        MeterUsage {
            meter: meter.into(),
            quantity: d(q),
            groups: vec![],
            amounts: None,
        }
    }

    #[test]
    fn rules_are_checked_and_ordered() {
        let c = catalog();
        let rule = |metric, meter: Option<&str>, budget: &str, t: &[u32]| AlertRule {
            metric,
            meter: meter.map(str::to_string),
            budget: d(budget),
            thresholds: t.to_vec(),
        };
        let ok = rule(AlertMetric::Spend, None, "100", &[100, 50, 80])
            .checked(&c.meters)
            .unwrap();
        assert_eq!(ok.thresholds, [50, 80, 100]);
        assert_eq!(
            rule(AlertMetric::Spend, None, "0", &[50]).checked(&c.meters),
            Err(AlertError::Budget(d("0")))
        );
        assert_eq!(
            rule(AlertMetric::Usage, None, "10", &[50]).checked(&c.meters),
            Err(AlertError::NoMeter)
        );
        assert!(matches!(
            rule(AlertMetric::Usage, Some("tokens"), "10", &[50]).checked(&c.meters),
            Err(AlertError::UnknownMeter(..))
        ));
        assert_eq!(
            rule(AlertMetric::Spend, Some("calls"), "10", &[50]).checked(&c.meters),
            Err(AlertError::MeterOnSpend)
        );
        assert_eq!(
            rule(AlertMetric::Spend, None, "10", &[50, 50]).checked(&c.meters),
            Err(AlertError::ThresholdTwice(50))
        );
        assert_eq!(
            rule(AlertMetric::Spend, None, "10", &[0]).checked(&c.meters),
            Err(AlertError::ThresholdRange(0))
        );
        assert_eq!(
            rule(AlertMetric::Spend, None, "10", &[]).checked(&c.meters),
            Err(AlertError::ThresholdCount)
        );
    }

    #[test]
    fn thresholds_reached_at_their_level_exactly() {
        let rule = AlertRule {
            metric: AlertMetric::Spend,
            meter: None,
            budget: d("100.00"),
            thresholds: vec![50, 80, 100],
        };
        assert_eq!(rule.reached(d("49.99")).unwrap(), Vec::<u32>::new());
        assert_eq!(rule.reached(d("50.00")).unwrap(), [50]);
        assert_eq!(rule.reached(d("80")).unwrap(), [50, 80]);
        assert_eq!(rule.reached(d("250")).unwrap(), [50, 80, 100]);
    }

    #[test]
    fn additive_meters_grow_with_time_left_and_stop_at_a_hard_quota() {
        let c = catalog();
        let plan = c.plan("capped").unwrap();
        let usage = [used("calls", "100"), used("seats", "7")];
        // A quarter of the way: 100 calls become 400; seats stay 7.
        let p = project_usage(&c.meters, plan, &usage, d("0.25")).unwrap();
        assert_eq!(p[0].quantity, d("400"));
        assert_eq!(p[1].quantity, d("7"));
        // A tenth of the way: 1,000 at most, the hard quota.
        let p = project_usage(&c.meters, plan, &usage, d("0.1")).unwrap();
        assert_eq!(p[0].quantity, d("1000"));
        // Already past it (a quota lowered mid-period): never below what was used.
        let p = project_usage(&c.meters, plan, &[used("calls", "1200")], d("0.5")).unwrap();
        assert_eq!(p[0].quantity, d("1200"));
        // The period over: as it is.
        let p = project_usage(&c.meters, plan, &usage, d("1")).unwrap();
        assert_eq!(p[0].quantity, d("100"));
        assert!(project_usage(&c.meters, plan, &usage, d("0")).is_err());
    }

    #[test]
    fn per_event_amounts_repeat_to_the_projected_count() {
        let c = catalog();
        let plan = c.plan("capped").unwrap();
        let mut u = used("calls", "3");
        u.amounts = Some(vec![d("1"), d("2"), d("3")]);
        let p = project_usage(&c.meters, plan, &[u], d("0.5")).unwrap();
        assert_eq!(
            p[0].amounts.as_deref().unwrap(),
            [d("1"), d("2"), d("3"), d("1"), d("2"), d("3")]
        );
    }
}
