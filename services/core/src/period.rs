//! Billing periods: monthly on an anchor day (29–31 clamp to the month's last day) or yearly,
//! with boundaries at local midnight in the partner's time zone (UTC unless the partner says
//! otherwise). Periods are half-open, `[start, end)`, and stored as UTC instants.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "every", rename_all = "lowercase")]
pub enum PeriodRule {
    Month { anchor_day: u32 },
    Year { anchor_month: u32, anchor_day: u32 },
}

/// A half-open interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BillingPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl BillingPeriod {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }

    /// The part of this period that `[from, to)` covers, if any.
    pub fn overlap(&self, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Option<BillingPeriod> {
        let start = self.start.max(from);
        let end = to.map_or(self.end, |t| t.min(self.end));
        (start < end).then_some(BillingPeriod { start, end })
    }
}

/// A calendar month, `YYYY-MM`: `peage invoice run --period 2026-11` bills, for each partner,
/// the billing period that starts in that month in the partner's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeriodLabel {
    pub year: i32,
    pub month: u32,
}

/// A period label that is not `YYYY-MM` (from 1970 on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("period {0:?} is not YYYY-MM (for example 2026-11)")]
pub struct BadPeriodLabel(pub String);

/// A time zone name that is not an IANA one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {0:?} (use an IANA name such as Europe/Paris)")]
pub struct UnknownTimeZone(pub String);

impl FromStr for PeriodLabel {
    type Err = BadPeriodLabel;
    fn from_str(s: &str) -> Result<Self, BadPeriodLabel> {
        let bad = || BadPeriodLabel(s.to_string());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || year < 1970 {
            return Err(bad());
        }
        Ok(PeriodLabel { year, month })
    }
}

impl fmt::Display for PeriodLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl PeriodLabel {
    /// The month the instant `t` falls in, in `tz`.
    pub fn of(t: DateTime<Utc>, tz: Tz) -> PeriodLabel {
        let local = t.with_timezone(&tz);
        PeriodLabel {
            year: local.year(),
            month: local.month(),
        }
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = add_months(year, month, 1);
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map(|d| d.day())
        .unwrap_or(28)
}

/// The first instant of a local calendar day in `tz`. Where a DST change skips midnight (some
/// zones move their clocks at 00:00), the day starts at the first local time that exists.
pub fn start_of_day(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let mut time = NaiveTime::MIN;
    for _ in 0..48 {
        match tz.from_local_datetime(&date.and_time(time)) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(earliest, _) => return earliest.with_timezone(&Utc),
            LocalResult::None => time += chrono::Duration::minutes(30),
        }
    }
    // No zone skips a whole day's first 24 hours except by skipping the date itself (Samoa
    // 2011-12-30); its day then starts where the next one does.
    match date.checked_add_days(Days::new(1)) {
        Some(next) if next.year() < 10_000 => start_of_day(tz, next),
        _ => Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN)),
    }
}

/// Local midnight of `day` in that month, clamped to the month's last day.
fn anchored(tz: Tz, year: i32, month: u32, day: u32) -> DateTime<Utc> {
    let day = day.clamp(1, days_in_month(year, month));
    let date = NaiveDate::from_ymd_opt(year, month, day).expect("clamped date is valid");
    start_of_day(tz, date)
}

fn add_months(year: i32, month: u32, delta: i32) -> (i32, u32) {
    let idx = year * 12 + (month as i32 - 1) + delta;
    (idx.div_euclid(12), idx.rem_euclid(12) as u32 + 1)
}

impl PeriodRule {
    /// The period that contains `t`, with UTC boundaries.
    pub fn containing(&self, t: DateTime<Utc>) -> BillingPeriod {
        self.containing_in(Tz::UTC, t)
    }

    /// The period that contains `t`, with boundaries at local midnight in `tz`.
    pub fn containing_in(&self, tz: Tz, t: DateTime<Utc>) -> BillingPeriod {
        let local = t.with_timezone(&tz);
        let (y, m) = (local.year(), local.month());
        match *self {
            PeriodRule::Month { anchor_day } => {
                let this = anchored(tz, y, m, anchor_day);
                let (sy, sm) = if t >= this {
                    (y, m)
                } else {
                    add_months(y, m, -1)
                };
                self.month_period(tz, sy, sm, anchor_day)
            }
            PeriodRule::Year {
                anchor_month,
                anchor_day,
            } => {
                let this = anchored(tz, y, anchor_month, anchor_day);
                let sy = if t >= this { y } else { y - 1 };
                BillingPeriod {
                    start: anchored(tz, sy, anchor_month, anchor_day),
                    end: anchored(tz, sy + 1, anchor_month, anchor_day),
                }
            }
        }
    }

    fn month_period(&self, tz: Tz, y: i32, m: u32, anchor_day: u32) -> BillingPeriod {
        let (ey, em) = add_months(y, m, 1);
        BillingPeriod {
            start: anchored(tz, y, m, anchor_day),
            end: anchored(tz, ey, em, anchor_day),
        }
    }

    /// The period that starts in the calendar month `label` (in `tz`), if one does: every month
    /// for monthly plans, only the anchor month for yearly ones.
    pub fn starting_in(&self, tz: Tz, label: PeriodLabel) -> Option<BillingPeriod> {
        match *self {
            PeriodRule::Month { anchor_day } => {
                Some(self.month_period(tz, label.year, label.month, anchor_day))
            }
            PeriodRule::Year {
                anchor_month,
                anchor_day,
            } => (label.month == anchor_month).then(|| BillingPeriod {
                start: anchored(tz, label.year, anchor_month, anchor_day),
                end: anchored(tz, label.year + 1, anchor_month, anchor_day),
            }),
        }
    }
}

impl PeriodRule {
    /// Whether a period of this rule starts at `t` in `tz`.
    pub fn starts_at(&self, tz: Tz, t: DateTime<Utc>) -> bool {
        self.containing_in(tz, t).start == t
    }

    /// `every month` or `every year`.
    pub fn describe(&self) -> &'static str {
        match self {
            PeriodRule::Month { .. } => "every month",
            PeriodRule::Year { .. } => "every year",
        }
    }
}

/// The first instant at or after `from` where a period of `current` ends and a period of
/// `next` starts, both in `tz`: where a partner can move from a plan billed by `current` to one
/// billed by `next` without a period that neither bills. `None` within `horizon_years` years
/// (their anchors never meet, such as a month anchored on the 1st and a year on the 15th).
pub fn first_shared_boundary(
    current: &PeriodRule,
    next: &PeriodRule,
    tz: Tz,
    from: DateTime<Utc>,
    horizon_years: u32,
) -> Option<DateTime<Utc>> {
    let first = current.containing_in(tz, from);
    let mut t = if first.start >= from {
        first.start
    } else {
        first.end
    };
    // A month rule has 12 boundaries a year; a year rule, one.
    for _ in 0..=(horizon_years as usize * 12) {
        if next.starts_at(tz, t) {
            return Some(t);
        }
        t = current.containing_in(tz, t).end;
    }
    None
}

/// Parses an IANA time zone name (`Europe/Paris`), refusing anything else.
pub fn parse_time_zone(name: &str) -> Result<Tz, UnknownTimeZone> {
    name.parse::<Tz>()
        .map_err(|_| UnknownTimeZone(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_and_a_year_meet_where_the_year_starts() {
        let month = PeriodRule::Month { anchor_day: 1 };
        let year = PeriodRule::Year {
            anchor_month: 1,
            anchor_day: 1,
        };
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // From mid-March 2027 the next shared boundary is New Year 2028, Paris midnight.
        assert_eq!(
            first_shared_boundary(&month, &year, paris, at("2027-03-15T10:00:00Z"), 10),
            Some(at("2027-12-31T23:00:00Z"))
        );
        // A boundary itself counts.
        assert_eq!(
            first_shared_boundary(&month, &month, Tz::UTC, at("2027-04-01T00:00:00Z"), 10),
            Some(at("2027-04-01T00:00:00Z"))
        );
        // Month on the 1st, year on the 15th: never.
        let mid = PeriodRule::Year {
            anchor_month: 1,
            anchor_day: 15,
        };
        assert_eq!(
            first_shared_boundary(&month, &mid, Tz::UTC, at("2027-03-15T10:00:00Z"), 10),
            None
        );
        assert!(year.starts_at(paris, at("2027-12-31T23:00:00Z")));
        assert!(!year.starts_at(Tz::UTC, at("2027-12-31T23:00:00Z")));
    }

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
        // Lago #1840: anchors on the 29th–31st.
        let rule = PeriodRule::Month { anchor_day: 31 };
        let p = rule.containing(at("2026-02-15T00:00:00Z"));
        assert_eq!(p.start, at("2026-01-31T00:00:00Z"));
        assert_eq!(p.end, at("2026-02-28T00:00:00Z"));
        let p = rule.containing(at("2026-03-01T00:00:00Z"));
        assert_eq!(p.start, at("2026-02-28T00:00:00Z"));
        assert_eq!(p.end, at("2026-03-31T00:00:00Z"));
        // Twelve consecutive periods tile the year without gaps or overlaps.
        let mut p = rule.containing(at("2026-01-31T00:00:00Z"));
        for _ in 0..12 {
            let next = rule.containing(p.end);
            assert_eq!(next.start, p.end);
            p = next;
        }
        assert_eq!(p.start, at("2027-01-31T00:00:00Z"));
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
        assert_eq!(rule.starting_in(Tz::UTC, "2026-03".parse().unwrap()), None);
        assert_eq!(
            rule.starting_in(Tz::UTC, "2026-04".parse().unwrap())
                .unwrap()
                .start,
            at("2026-04-01T00:00:00Z")
        );
    }

    #[test]
    fn a_partner_in_tokyo_has_periods_from_tokyo_midnight() {
        // Lago #61: periods in the partner's time zone. 2026-11-30T16:00Z is already
        // December 1st in Tokyo (UTC+9).
        let tokyo = parse_time_zone("Asia/Tokyo").unwrap();
        let rule = PeriodRule::Month { anchor_day: 1 };
        let p = rule.containing_in(tokyo, at("2026-11-30T16:00:00Z"));
        assert_eq!(p.start, at("2026-11-30T15:00:00Z"));
        assert_eq!(p.end, at("2026-12-31T15:00:00Z"));
        let p = rule.containing_in(tokyo, at("2026-11-30T14:59:59Z"));
        assert_eq!(p.end, at("2026-11-30T15:00:00Z"));
    }

    #[test]
    fn periods_across_a_dst_change_keep_local_midnight() {
        // Paris leaves summer time on 2026-10-25: October starts at 22:00Z, November at 23:00Z.
        let paris = parse_time_zone("Europe/Paris").unwrap();
        let p = PeriodRule::Month { anchor_day: 1 }
            .starting_in(paris, "2026-10".parse().unwrap())
            .unwrap();
        assert_eq!(p.start, at("2026-09-30T22:00:00Z"));
        assert_eq!(p.end, at("2026-10-31T23:00:00Z"));
    }

    #[test]
    fn a_zone_whose_clocks_skip_midnight_starts_the_day_at_the_first_valid_time() {
        // Santiago moved clocks from 00:00 to 01:00 on 2026-09-06.
        let santiago = parse_time_zone("America/Santiago").unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        let start = start_of_day(santiago, date);
        assert_eq!(start.with_timezone(&santiago).date_naive(), date);
        assert!(start < start_of_day(santiago, date.succ_opt().unwrap()));
    }

    #[test]
    fn labels_parse_strictly() {
        assert_eq!(
            "2026-11".parse::<PeriodLabel>().unwrap().to_string(),
            "2026-11"
        );
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", "", "2026-00"] {
            assert!(bad.parse::<PeriodLabel>().is_err(), "{bad}");
        }
        assert!(parse_time_zone("Mars/Olympus").is_err());
    }
}
