//! Usage over time for dashboards: hourly rollup rows bucketed by local hour or day (in the
//! partner's time zone, DST included) and split by one dimension, every additive meter evaluated
//! per bucket exactly as invoices evaluate it over a whole period.

use std::collections::BTreeMap;

#[cfg(test)]
use chrono::TimeZone;
use chrono::{DateTime, Duration, Timelike, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::meter::{evaluate_rollups, evaluate_usage_events, Meter, RollupRow, Span};
use crate::UsageEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    pub fn parse(raw: &str) -> Option<Granularity> {
        match raw {
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }
}

/// What the series are split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SplitBy {
    /// One series per meter.
    Meter,
    Api,
    Version,
    Operation,
}

impl SplitBy {
    pub fn parse(raw: &str) -> Option<SplitBy> {
        match raw {
            "meter" => Some(SplitBy::Meter),
            "api" => Some(SplitBy::Api),
            "version" => Some(SplitBy::Version),
            "operation" => Some(SplitBy::Operation),
            _ => None,
        }
    }

    fn key(self, r: &RollupRow) -> String {
        match self {
            SplitBy::Meter => String::new(),
            SplitBy::Api => r.api.clone(),
            SplitBy::Version => format!("{} {}", r.api, r.version),
            SplitBy::Operation => format!("{} {} {}", r.api, r.version, r.operation),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Series {
    pub meter: String,
    /// The dimension value (`api`, `api version`, `api version operation`); empty when split by
    /// meter.
    pub key: String,
    /// One value per bucket, in bucket order; exact decimals as strings.
    #[serde(serialize_with = "decimals_as_strings")]
    pub values: Vec<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

fn decimals_as_strings<S: serde::Serializer>(v: &[Decimal], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|d| d.normalize().to_string()))
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UsageSeries {
    pub granularity: Granularity,
    pub split_by: SplitBy,
    pub time_zone: String,
    /// The start of each bucket (UTC instant of the local hour or midnight).
    pub buckets: Vec<DateTime<Utc>>,
    pub series: Vec<Series>,
    /// Meters that cannot be charted from rollups (max, unique count, latest, or filters on
    /// dimensions the rollups do not keep): their totals are in the usage route.
    pub not_charted: Vec<String>,
}

/// The start of the bucket holding `t`.
fn bucket_of(t: DateTime<Utc>, g: Granularity, tz: Tz) -> DateTime<Utc> {
    match g {
        // Every zone's offset is a whole number of minutes and most are whole hours; a local
        // hour starts where UTC's does for all but the half- and quarter-hour zones, whose
        // buckets start at their own local hour.
        Granularity::Hour => {
            let local = t.with_timezone(&tz);
            let start = local
                .with_minute(0)
                .and_then(|l| l.with_second(0))
                .and_then(|l| l.with_nanosecond(0))
                .unwrap_or(local);
            start.with_timezone(&Utc)
        }
        Granularity::Day => crate::period::start_of_day(tz, t.with_timezone(&tz).date_naive()),
    }
}

/// The end of the bucket starting at `start` (the start of the next one).
pub fn bucket_end(start: DateTime<Utc>, g: Granularity, tz: Tz) -> DateTime<Utc> {
    match g {
        Granularity::Hour => start + Duration::hours(1),
        Granularity::Day => {
            let day = start.with_timezone(&tz).date_naive();
            crate::period::start_of_day(tz, day + Duration::days(1))
        }
    }
}

/// The most buckets one series may have (a year of days, or about a month and a half of hours).
pub const MAX_BUCKETS: usize = 1_100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeriesError {
    #[error("from must be before to")]
    EmptyRange,
    #[error(
        "{0} buckets is too many (at most {MAX_BUCKETS}): use day granularity or a shorter range"
    )]
    TooManyBuckets(usize),
}

/// The buckets covering `[from, to)`.
pub fn buckets(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    g: Granularity,
    tz: Tz,
) -> Result<Vec<DateTime<Utc>>, SeriesError> {
    if from >= to {
        return Err(SeriesError::EmptyRange);
    }
    let mut out = Vec::new();
    let mut b = bucket_of(from, g, tz);
    while b < to {
        out.push(b);
        if out.len() > MAX_BUCKETS {
            let approx = match g {
                Granularity::Hour => (to - from).num_hours(),
                Granularity::Day => (to - from).num_days(),
            };
            return Err(SeriesError::TooManyBuckets(approx.max(0) as usize));
        }
        b = bucket_end(b, g, tz);
    }
    Ok(out)
}

/// A meter of usage events per bucket, as it stands at `now`: `edges` are the buckets' starts
/// then the last one's end; each bucket is evaluated on its own. Events outside every bucket
/// are left out, but for a meter that carries over, which reads the events before each bucket
/// and is zero in buckets that have not started.
pub fn event_meter_buckets<'a>(
    meter: &Meter,
    events: impl IntoIterator<Item = &'a UsageEvent>,
    edges: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> Vec<Decimal> {
    let n = edges.len().saturating_sub(1);
    if meter.carries_over() {
        let events: Vec<&UsageEvent> = events.into_iter().collect();
        return edges
            .windows(2)
            .map(|w| {
                if w[0] >= now {
                    return Decimal::ZERO;
                }
                event_meter_quantity(meter, events.iter().copied(), Span::as_of(w[0], w[1], now))
            })
            .collect();
    }
    let mut per_bucket: Vec<Vec<&UsageEvent>> = vec![Vec::new(); n];
    for e in events {
        // The number of edges at or before the event: its bucket is the one starting at the last.
        let i = edges.partition_point(|t| *t <= e.time);
        if (1..=n).contains(&i) {
            per_bucket[i - 1].push(e);
        }
    }
    per_bucket
        .into_iter()
        .zip(edges.windows(2))
        .map(|(evs, w)| event_meter_quantity(meter, evs, Span::as_of(w[0], w[1], now)))
        .collect()
}

/// One meter of usage events over `span` (events of other types left out).
pub fn event_meter_quantity<'a>(
    meter: &Meter,
    events: impl IntoIterator<Item = &'a UsageEvent>,
    span: Span,
) -> Decimal {
    evaluate_usage_events(std::slice::from_ref(meter), events, span)
        .into_iter()
        .next()
        .map_or(Decimal::ZERO, |u| u.quantity)
}

/// Evaluates `meters` per bucket and split key over hourly rollup rows (`hour`, row).
pub fn usage_series(
    meters: &[Meter],
    rows: &[(DateTime<Utc>, RollupRow)],
    buckets: &[DateTime<Utc>],
    g: Granularity,
    split_by: SplitBy,
    tz: Tz,
) -> UsageSeries {
    let charted: Vec<&Meter> = meters.iter().filter(|m| m.rollup_compatible()).collect();
    // Meters of usage events are charted from the raw events, by the caller
    // ([`event_meter_buckets`]).
    let not_charted = meters
        .iter()
        .filter(|m| !m.rollup_compatible() && m.events.is_none())
        .map(|m| m.name.clone())
        .collect();
    // Rows per (split key, bucket index).
    let mut cells: BTreeMap<String, BTreeMap<usize, Vec<RollupRow>>> = BTreeMap::new();
    for (hour, row) in rows {
        let b = bucket_of(*hour, g, tz);
        let Ok(i) = buckets.binary_search(&b) else {
            continue;
        };
        cells
            .entry(split_by.key(row))
            .or_default()
            .entry(i)
            .or_default()
            .push(row.clone());
    }
    let mut series = Vec::new();
    for m in charted {
        for (key, by_bucket) in &cells {
            let mut values = vec![Decimal::ZERO; buckets.len()];
            for (i, rows) in by_bucket {
                if let Some(u) = evaluate_rollups(m, rows) {
                    values[*i] = u.quantity;
                }
            }
            let total: Decimal = values.iter().sum();
            // Split by a dimension, keys the meter's filter leaves out are all zero: drop them.
            if split_by != SplitBy::Meter && total.is_zero() {
                continue;
            }
            series.push(Series {
                meter: m.name.clone(),
                key: key.clone(),
                values,
                total,
            });
        }
        if cells.is_empty() {
            series.push(Series {
                meter: m.name.clone(),
                key: String::new(),
                values: vec![Decimal::ZERO; buckets.len()],
                total: Decimal::ZERO,
            });
        }
    }
    UsageSeries {
        granularity: g,
        split_by,
        time_zone: tz.name().to_string(),
        buckets: buckets.to_vec(),
        series,
        not_charted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{Aggregation, MeterField};

    /// UTC hour `h` of a day of March 2026 (Europe/Paris moves to summer time on the 29th).
    fn at(day: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, h, 0, 0).unwrap()
    }

    fn row(api: &str, op: &str, calls: u64, units: &str) -> RollupRow {
        RollupRow {
            api: api.into(),
            version: "v1".into(),
            operation: op.into(),
            method: "GET".into(),
            status: 200,
            calls,
            units: units.parse().unwrap(),
            request_bytes: 0,
            response_bytes: 0,
            latency_us: 0,
        }
    }

    fn meters() -> Vec<Meter> {
        let m = |name: &str, aggregation, field| Meter {
            name: name.into(),
            aggregation,
            field,
            scale: None,
            filter: Default::default(),
            group_by: vec![],
            refusals: Default::default(),
            events: None,
        };
        vec![
            m("calls", Aggregation::Count, MeterField::Calls),
            m("units", Aggregation::Sum, MeterField::Units),
            m("slowest", Aggregation::Max, MeterField::LatencyMs),
        ]
    }

    #[test]
    fn days_follow_local_midnight_across_a_dst_change() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        // 28 March 00:00 Paris = 27 March 23:00 UTC; 30 March 00:00 Paris = 29 March 22:00 UTC.
        let b = buckets(at(27, 23), at(29, 22), Granularity::Day, tz).unwrap();
        assert_eq!(b, vec![at(27, 23), at(28, 23)]);
        // 23 hours on the 29th: 22:00 UTC is the next local midnight.
        let rows = vec![
            (at(27, 23), row("weather", "GET /a", 2, "1.5")),
            (at(28, 22), row("weather", "GET /a", 1, "0.25")), // still the 28th in Paris
            (at(28, 23), row("weather", "GET /b", 4, "2")),
            (at(29, 21), row("maps", "GET /c", 8, "0.125")),
        ];
        let s = usage_series(&meters(), &rows, &b, Granularity::Day, SplitBy::Meter, tz);
        assert_eq!(s.not_charted, vec!["slowest"]);
        let calls = &s.series[0];
        assert_eq!(
            (calls.meter.as_str(), calls.values.clone()),
            ("calls", vec![3.into(), 12.into()])
        );
        assert_eq!(
            s.series[1].values,
            vec!["1.75".parse().unwrap(), "2.125".parse::<Decimal>().unwrap()]
        );
        assert_eq!(s.series[1].total, "3.875".parse().unwrap());

        let by_api = usage_series(&meters(), &rows, &b, Granularity::Day, SplitBy::Api, tz);
        let keys: Vec<_> = by_api
            .series
            .iter()
            .map(|s| (s.meter.as_str(), s.key.as_str(), s.total))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("calls", "maps", 8.into()),
                ("calls", "weather", 7.into()),
                ("units", "maps", "0.125".parse().unwrap()),
                ("units", "weather", "3.75".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn hours_and_limits() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap(); // +05:30: local hours start at :30 UTC
        let from = Utc.with_ymd_and_hms(2026, 3, 1, 0, 30, 0).unwrap();
        let b = buckets(from, from + Duration::hours(3), Granularity::Hour, tz).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[1], from + Duration::hours(1));
        assert_eq!(
            buckets(from, from, Granularity::Hour, tz),
            Err(SeriesError::EmptyRange)
        );
        assert!(matches!(
            buckets(from, from + Duration::days(400), Granularity::Hour, tz),
            Err(SeriesError::TooManyBuckets(_))
        ));
        // No usage at all still gives each charted meter a zero series.
        let s = usage_series(&meters(), &[], &b, Granularity::Hour, SplitBy::Meter, tz);
        assert_eq!(s.series.len(), 2);
        assert!(s
            .series
            .iter()
            .all(|x| x.total.is_zero() && x.values.len() == 3));
    }
}
