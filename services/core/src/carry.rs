//! Meters whose value carries from one period into the next, over usage events: gauges
//! (`weighted_sum`) and recurring meters (`latest` and `unique_count` with `recurring = true`,
//! seats). Each reads the events before its range as well as those in it; these rules are the
//! meters' proration (docs/catalog.md, "Meters that carry over"):
//!
//! - **`weighted_sum`**: each reading holds from its time until the next reading of its group,
//!   and the sum is value × seconds held inside the range (GB·seconds from GB readings; `scale`
//!   turns them into GB·hours). The last reading before the range holds from the range's start;
//!   the last reading in it holds until the range's end, or until now in a range that has not
//!   ended. With `group_by`, every group is its own gauge and the total is the groups' sum.
//! - **recurring `latest`**: the latest reading before the range's end, wherever it falls: a
//!   seat count reported once stays until the next report. Not prorated: a period is billed the
//!   count in force at its end.
//! - **recurring `unique_count`**: a value counts in a range if it was present at any moment of
//!   it: added in the range, or added before and not removed before the range starts. An event
//!   whose data has `operation_type = "remove"` removes its value; any other event adds it. Not
//!   prorated: a seat removed mid-period is billed for that period, not the next.
//!
//! Readings at the same time are ordered by value (the larger last), and a removal comes after
//! an addition at the same time, so that the result never depends on arrival order.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::meter::{
    group_dimensions, scaled, Aggregation, EventSelector, Meter, MeterGroup, MeterUsage, Span,
};
use crate::usage_event::{Properties, UsageEvent};

/// The data property whose value `remove` takes a value out of a recurring `unique_count`.
pub const OPERATION_PROPERTY: &str = "operation_type";
/// See [`OPERATION_PROPERTY`].
pub const REMOVE: &str = "remove";

/// What one matching event tells a meter that carries over.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    time: DateTime<Utc>,
    group: Vec<String>,
    number: Decimal,
    text: String,
    removal: bool,
}

impl Reading {
    /// The reading of a usage event the meter's selector matched; none when the event lacks the
    /// meter's value (a number, or for `unique_count` a text).
    pub(crate) fn of(
        m: &Meter,
        sel: &EventSelector,
        e: &UsageEvent,
        p: &Properties,
    ) -> Option<Reading> {
        let path = sel.value.as_deref()?;
        let (number, text) = match m.aggregation {
            Aggregation::UniqueCount => (Decimal::ZERO, p.text(path)?.to_string()),
            _ => (p.number(path)?, String::new()),
        };
        Some(Reading {
            time: e.time,
            group: sel
                .group_by
                .iter()
                .map(|g| p.text(g).unwrap_or_default().to_string())
                .collect(),
            number,
            text,
            removal: p.text(OPERATION_PROPERTY) == Some(REMOVE),
        })
    }
}

/// A meter that carries over, over the readings of its events before `span.to`.
pub(crate) fn evaluate(m: &Meter, mut readings: Vec<Reading>, span: Span) -> MeterUsage {
    readings.retain(|r| r.time < span.to);
    readings.sort_by(|a, b| {
        (a.time, a.number, a.removal, &a.text).cmp(&(b.time, b.number, b.removal, &b.text))
    });
    let grouped = m.events.as_ref().is_some_and(|s| !s.group_by.is_empty());
    let mut by_group: BTreeMap<Vec<String>, Vec<Reading>> = BTreeMap::new();
    for r in readings {
        by_group.entry(r.group.clone()).or_default().push(r);
    }
    let (total, groups): (Decimal, Vec<(Vec<String>, Decimal)>) = match m.aggregation {
        Aggregation::WeightedSum => {
            let groups: Vec<(Vec<String>, Decimal)> = by_group
                .iter()
                .map(|(k, rs)| (k.clone(), weighted(rs, span)))
                .collect();
            let total = groups
                .iter()
                .fold(Decimal::ZERO, |t, (_, v)| t.saturating_add(*v));
            (total, groups)
        }
        Aggregation::UniqueCount => {
            let mut all = BTreeSet::new();
            let groups = by_group
                .iter()
                .map(|(k, rs)| {
                    let present = present(rs, span);
                    let n = Decimal::from(present.len() as u64);
                    all.extend(present);
                    (k.clone(), n)
                })
                .collect();
            (Decimal::from(all.len() as u64), groups)
        }
        // `latest` (the catalog allows `recurring` on it and on `unique_count` only).
        _ => {
            let last = |rs: &[Reading]| rs.last().map(|r| (r.time, r.number));
            let groups: Vec<(Vec<String>, Decimal)> = by_group
                .iter()
                .filter_map(|(k, rs)| last(rs).map(|(_, v)| (k.clone(), v)))
                .collect();
            let total = by_group
                .values()
                .filter_map(|rs| last(rs))
                .max()
                .map_or(Decimal::ZERO, |(_, v)| v);
            (total, groups)
        }
    };
    MeterUsage {
        amounts: None,
        meter: m.name.clone(),
        quantity: scaled(m, total),
        groups: if grouped {
            groups
                .into_iter()
                .map(|(k, v)| MeterGroup {
                    dimensions: group_dimensions(m, &k),
                    quantity: scaled(m, v),
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Value × seconds held inside the span, of one gauge's readings in order.
fn weighted(readings: &[Reading], span: Span) -> Decimal {
    // The reading in force at the start: the last one before it.
    let first = readings.partition_point(|r| r.time < span.from);
    let start = first.saturating_sub(1);
    let mut micros_weighted = Decimal::ZERO;
    for (i, r) in readings.iter().enumerate().skip(start) {
        let held_from = r.time.max(span.from);
        let held_to = readings
            .get(i + 1)
            .map_or(span.until, |n| n.time)
            .min(span.until);
        let micros = (held_to - held_from).num_microseconds().unwrap_or(0);
        if micros > 0 {
            micros_weighted =
                micros_weighted.saturating_add(r.number.saturating_mul(Decimal::from(micros)));
        }
    }
    // Exact: microseconds to seconds is a shift of six decimal places.
    micros_weighted / Decimal::from(1_000_000)
}

/// The values present at some moment of the span, of one group's readings in order.
fn present(readings: &[Reading], span: Span) -> BTreeSet<String> {
    let mut state: BTreeMap<&str, bool> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for r in readings {
        if r.time < span.from {
            // Present at the start when the last event before it added the value.
            state.insert(&r.text, !r.removal);
        } else if !r.removal {
            out.insert(r.text.clone());
        }
    }
    out.extend(
        state
            .into_iter()
            .filter(|(_, present)| *present)
            .map(|(v, _)| v.to_string()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{evaluate_usage_events, MeterField};
    use crate::usage_event::{parse_cloud_event, TimeWindow};
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, 0, 0, 0).unwrap()
    }

    fn ev(id: &str, time: DateTime<Utc>, data: &str) -> UsageEvent {
        let raw = serde_json::value::RawValue::from_string(format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"gauge","subject":"p","time":"{}","data":{data}}}"#,
            time.to_rfc3339()
        ))
        .unwrap();
        let window = TimeWindow {
            backfill: chrono::TimeDelta::days(3650),
            ahead: chrono::TimeDelta::days(3650),
        };
        parse_cloud_event(&raw)
            .unwrap()
            .into_usage_event("p", time, &window)
            .unwrap()
    }

    fn meter(aggregation: Aggregation, value: &str, group_by: &[&str], recurring: bool) -> Meter {
        Meter {
            name: "m".into(),
            aggregation,
            field: MeterField::Calls,
            scale: None,
            filter: BTreeMap::new(),
            group_by: vec![],
            refusals: Default::default(),
            events: Some(EventSelector {
                event_type: "gauge".into(),
                value: Some(value.into()),
                filter: BTreeMap::new(),
                group_by: group_by.iter().map(|g| g.to_string()).collect(),
                recurring,
            }),
        }
    }

    fn quantity(m: &Meter, events: &[UsageEvent], span: Span) -> Decimal {
        evaluate_usage_events(std::slice::from_ref(m), events, span)[0].quantity
    }

    #[test]
    fn lagos_weighted_sum_example_in_gb_seconds() {
        // Lago, "Weighted sum": 20 GB from 16 March 2022, 30 GB from the 17th, billed for March
        // (2,678,400 s). Lago gives the time-weighted average, 15.1612903226 GB; Péage the
        // GB·seconds it is the average of: 20 × 86,400 + 30 × 1,296,000.
        let m = meter(Aggregation::WeightedSum, "gb", &[], false);
        let events = [
            ev("1", at(2022, 3, 16), r#"{"gb":20}"#),
            ev("2", at(2022, 3, 17), r#"{"gb":30}"#),
        ];
        let march = Span::new(at(2022, 3, 1), at(2022, 4, 1));
        let gb_s = quantity(&m, &events, march);
        assert_eq!(gb_s, Decimal::from(40_608_000));
        assert_eq!(
            (gb_s / Decimal::from(2_678_400)).round_dp(10).to_string(),
            "15.1612903226"
        );
        // April: nothing sent, the 30 GB reading is carried in for all 30 days.
        let april = Span::new(at(2022, 4, 1), at(2022, 5, 1));
        assert_eq!(quantity(&m, &events, april), Decimal::from(30 * 2_592_000));
        // In GB·hours through the meter's scale (1/3600 to 28 digits).
        let hours = Meter {
            scale: Some(Decimal::ONE / Decimal::from(3600)),
            ..m.clone()
        };
        let day = Span::new(at(2022, 3, 16), at(2022, 3, 17));
        assert_eq!(
            quantity(&hours, &events[..1], day).round_dp(9),
            Decimal::from(480)
        );
    }

    #[test]
    fn a_weighted_sum_stops_at_now_and_weighs_each_reading_until_the_next() {
        let m = meter(Aggregation::WeightedSum, "gb", &["region"], false);
        let t0 = at(2026, 11, 1);
        let h = chrono::TimeDelta::hours(1);
        let events = [
            ev("1", t0 - h, r#"{"gb":2,"region":"eu"}"#),
            ev("2", t0 + h, r#"{"gb":0.5,"region":"eu"}"#),
            ev("3", t0 + h * 2, r#"{"gb":10,"region":"us"}"#),
            // Equal times: the larger value is the one that holds, whatever the order.
            ev("4", t0 + h * 3, r#"{"gb":1,"region":"us"}"#),
            ev("5", t0 + h * 3, r#"{"gb":4,"region":"us"}"#),
        ];
        let span = Span::as_of(t0, t0 + h * 24, t0 + h * 4);
        let u = &evaluate_usage_events(std::slice::from_ref(&m), &events, span)[0];
        // eu: 2 GB for the first hour (carried in), 0.5 GB for three; us: 10 GB for one hour,
        // then 4 GB for one.
        let eu = 2 * 3600 + 3 * 1800;
        let us = 10 * 3600 + 4 * 3600;
        assert_eq!(u.quantity, Decimal::from(eu + us));
        let groups: Vec<(String, Decimal)> = u
            .groups
            .iter()
            .map(|g| (g.dimensions["region"].clone(), g.quantity))
            .collect();
        assert_eq!(
            groups,
            [
                ("eu".into(), Decimal::from(eu)),
                ("us".into(), Decimal::from(us))
            ]
        );
        let mut reversed = events.clone();
        reversed.reverse();
        assert_eq!(quantity(&m, &reversed, span), u.quantity);
        // Readings after the range's end count for nothing; a range before every reading is 0.
        assert_eq!(
            quantity(&m, &events, Span::new(t0 - h * 2, t0 - h)),
            Decimal::ZERO
        );
    }

    #[test]
    fn recurring_latest_carries_the_seat_count_until_the_next_report() {
        let seats = meter(Aggregation::Latest, "seats", &[], true);
        let events = [
            ev("1", at(2026, 9, 10), r#"{"seats":5}"#),
            ev("2", at(2026, 9, 20), r#"{"seats":7}"#),
            ev("3", at(2026, 11, 10), r#"{"seats":3}"#),
        ];
        let month = |m: u32| Span::new(at(2026, m, 1), at(2026, m + 1, 1));
        let q: Vec<Decimal> = (9..=11)
            .map(|m| quantity(&seats, &events, month(m)))
            .collect();
        assert_eq!(q, [7, 7, 3].map(Decimal::from));
        // Not recurring, October has no report and counts nothing.
        let metered = meter(Aggregation::Latest, "seats", &[], false);
        assert_eq!(quantity(&metered, &events, month(10)), Decimal::ZERO);
    }

    #[test]
    fn recurring_unique_count_keeps_a_value_until_it_is_removed() {
        let users = meter(Aggregation::UniqueCount, "user", &[], true);
        let events = [
            ev("1", at(2026, 9, 3), r#"{"user":"ann"}"#),
            ev("2", at(2026, 9, 4), r#"{"user":"bob"}"#),
            ev(
                "3",
                at(2026, 10, 10),
                r#"{"user":"bob","operation_type":"remove"}"#,
            ),
            ev("4", at(2026, 11, 5), r#"{"user":"cy"}"#),
            ev(
                "5",
                at(2026, 11, 6),
                r#"{"user":"cy","operation_type":"remove"}"#,
            ),
            // Removed and added again at the same moment: the removal comes last.
            ev("6", at(2026, 11, 7), r#"{"user":"dee"}"#),
            ev(
                "7",
                at(2026, 11, 7),
                r#"{"user":"dee","operation_type":"remove"}"#,
            ),
        ];
        let month = |m: u32| {
            let end = if m == 12 {
                at(2027, 1, 1)
            } else {
                at(2026, m + 1, 1)
            };
            Span::new(at(2026, m, 1), end)
        };
        let q: Vec<Decimal> = (9..=12)
            .map(|m| quantity(&users, &events, month(m)))
            .collect();
        // September: ann, bob. October: both (bob until the 10th). November: ann, and cy and
        // dee, present for a moment. December: ann.
        assert_eq!(q, [2, 2, 3, 1].map(Decimal::from));
        // A cancelled removal never happened: bob stays.
        let mut with_cancel = events.to_vec();
        with_cancel.push(UsageEvent::cancellation_of(&events[2], at(2026, 10, 20)));
        assert_eq!(quantity(&users, &with_cancel, month(11)), Decimal::from(4));
    }
}
