//! Billing periods: monthly on an anchor day (29–31 clamp to the month's last day) or yearly.
//! All boundaries are midnight UTC for now; per-partner time zones come with the billing issue.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "every", rename_all = "lowercase")]
pub enum PeriodRule {
    Month { anchor_day: u32 },
    Year { anchor_month: u32, anchor_day: u32 },
}

/// A half-open interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map(|d| d.day())
        .unwrap_or(28)
}

/// Midnight UTC of `day` in that month, clamped to the month's last day.
fn anchored(year: i32, month: u32, day: u32) -> DateTime<Utc> {
    let day = day.clamp(1, days_in_month(year, month));
    let date = NaiveDate::from_ymd_opt(year, month, day).expect("clamped date is valid");
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

fn add_months(year: i32, month: u32, delta: i32) -> (i32, u32) {
    let idx = year * 12 + (month as i32 - 1) + delta;
    (idx.div_euclid(12), idx.rem_euclid(12) as u32 + 1)
}

impl PeriodRule {
    /// The period that contains `t`.
    pub fn containing(&self, t: DateTime<Utc>) -> BillingPeriod {
        match *self {
            PeriodRule::Month { anchor_day } => {
                let (y, m) = (t.year(), t.month());
                let this = anchored(y, m, anchor_day);
                let (sy, sm) = if t >= this {
                    (y, m)
                } else {
                    add_months(y, m, -1)
                };
                let (ey, em) = add_months(sy, sm, 1);
                BillingPeriod {
                    start: anchored(sy, sm, anchor_day),
                    end: anchored(ey, em, anchor_day),
                }
            }
            PeriodRule::Year {
                anchor_month,
                anchor_day,
            } => {
                let y = t.year();
                let this = anchored(y, anchor_month, anchor_day);
                let sy = if t >= this { y } else { y - 1 };
                BillingPeriod {
                    start: anchored(sy, anchor_month, anchor_day),
                    end: anchored(sy + 1, anchor_month, anchor_day),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn monthly_on_the_first() {
        let p = PeriodRule::Month { anchor_day: 1 }.containing(at("2026-11-25T12:00:00Z"));
        assert_eq!(p.start, at("2026-11-01T00:00:00Z"));
        assert_eq!(p.end, at("2026-12-01T00:00:00Z"));
    }

    #[test]
    fn december_rolls_into_next_year() {
        let p = PeriodRule::Month { anchor_day: 1 }.containing(at("2026-12-31T23:59:59Z"));
        assert_eq!(p.end, at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn anchor_on_the_31st_clamps_to_short_months() {
        let rule = PeriodRule::Month { anchor_day: 31 };
        let p = rule.containing(at("2026-02-15T00:00:00Z"));
        assert_eq!(p.start, at("2026-01-31T00:00:00Z"));
        assert_eq!(p.end, at("2026-02-28T00:00:00Z"));
        let p = rule.containing(at("2026-03-01T00:00:00Z"));
        assert_eq!(p.start, at("2026-02-28T00:00:00Z"));
        assert_eq!(p.end, at("2026-03-31T00:00:00Z"));
    }

    #[test]
    fn anchor_on_the_29th_in_a_leap_year() {
        let p = PeriodRule::Month { anchor_day: 29 }.containing(at("2028-02-29T00:00:00Z"));
        assert_eq!(p.start, at("2028-02-29T00:00:00Z"));
        assert_eq!(p.end, at("2028-03-29T00:00:00Z"));
    }

    #[test]
    fn period_start_is_inclusive() {
        let p = PeriodRule::Month { anchor_day: 15 }.containing(at("2026-11-15T00:00:00Z"));
        assert_eq!(p.start, at("2026-11-15T00:00:00Z"));
    }

    #[test]
    fn yearly() {
        let rule = PeriodRule::Year {
            anchor_month: 4,
            anchor_day: 1,
        };
        let p = rule.containing(at("2026-03-31T23:00:00Z"));
        assert_eq!(p.start, at("2025-04-01T00:00:00Z"));
        assert_eq!(p.end, at("2026-04-01T00:00:00Z"));
    }
}
