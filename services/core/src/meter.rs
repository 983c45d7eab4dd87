//! Meters are declared data: an aggregation over one event field, with filters and group-by.
//! They are evaluated over raw events, so a new or changed meter applies to past data too.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::CallEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Count,
    Sum,
    Max,
    UniqueCount,
    Latest,
}

/// The event field a meter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterField {
    /// 1 per call.
    Calls,
    RequestBytes,
    ResponseBytes,
    Units,
    LatencyMs,
    /// Identifiers, only meaningful for `unique_count` (e.g. active keys).
    KeyId,
    Operation,
}

impl MeterField {
    pub fn is_numeric(self) -> bool {
        !matches!(self, MeterField::KeyId | MeterField::Operation)
    }

    fn numeric(self, e: &CallEvent) -> Decimal {
        match self {
            MeterField::Calls => Decimal::ONE,
            MeterField::RequestBytes => Decimal::from(e.request_bytes),
            MeterField::ResponseBytes => Decimal::from(e.response_bytes),
            MeterField::Units => e.units,
            // Exact: microseconds / 1000, no float in between.
            MeterField::LatencyMs => Decimal::from(e.latency_us) / Decimal::from(1000),
            MeterField::KeyId | MeterField::Operation => Decimal::ZERO,
        }
    }

    fn identity(self, e: &CallEvent) -> String {
        match self {
            MeterField::KeyId => e.key_id.clone(),
            MeterField::Operation => e.operation.clone(),
            other => other.numeric(e).normalize().to_string(),
        }
    }
}

/// Event dimensions a meter can filter on and group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Api,
    Version,
    Operation,
    Method,
    StatusClass,
    KeyId,
}

impl Dimension {
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Api => "api",
            Dimension::Version => "version",
            Dimension::Operation => "operation",
            Dimension::Method => "method",
            Dimension::StatusClass => "status_class",
            Dimension::KeyId => "key_id",
        }
    }

    pub fn value(self, e: &CallEvent) -> &str {
        match self {
            Dimension::Api => &e.api,
            Dimension::Version => &e.version,
            Dimension::Operation => &e.operation,
            Dimension::Method => &e.method,
            Dimension::StatusClass => e.status_class(),
            Dimension::KeyId => &e.key_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    pub name: String,
    pub aggregation: Aggregation,
    pub field: MeterField,
    /// Multiplies the aggregated value (e.g. `1e-9` turns bytes into GB).
    pub scale: Option<Decimal>,
    /// Every listed dimension must match one of its values.
    pub filter: BTreeMap<Dimension, BTreeSet<String>>,
    pub group_by: Vec<Dimension>,
}

impl Meter {
    pub fn matches(&self, e: &CallEvent) -> bool {
        self.filter
            .iter()
            .all(|(dim, allowed)| allowed.contains(dim.value(e)))
    }

    pub fn accumulator(&self) -> MeterAccumulator<'_> {
        MeterAccumulator {
            meter: self,
            total: Acc::default(),
            groups: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Acc {
    count: u64,
    sum: Decimal,
    max: Option<Decimal>,
    unique: HashSet<String>,
    latest: Option<(DateTime<Utc>, Decimal)>,
}

impl Acc {
    fn add(&mut self, meter: &Meter, e: &CallEvent) {
        match meter.aggregation {
            Aggregation::Count => self.count += 1,
            Aggregation::Sum => self.sum += meter.field.numeric(e),
            Aggregation::Max => {
                let v = meter.field.numeric(e);
                self.max = Some(self.max.map_or(v, |m| m.max(v)));
            }
            Aggregation::UniqueCount => {
                self.unique.insert(meter.field.identity(e));
            }
            Aggregation::Latest => {
                let v = meter.field.numeric(e);
                // Ties on time break towards the larger value so the result is order-independent.
                if self.latest.is_none_or(|(t, lv)| (e.time, v) > (t, lv)) {
                    self.latest = Some((e.time, v));
                }
            }
        }
    }

    fn value(&self, meter: &Meter) -> Decimal {
        let raw = match meter.aggregation {
            Aggregation::Count => Decimal::from(self.count),
            Aggregation::Sum => self.sum,
            Aggregation::Max => self.max.unwrap_or(Decimal::ZERO),
            Aggregation::UniqueCount => Decimal::from(self.unique.len() as u64),
            Aggregation::Latest => self.latest.map_or(Decimal::ZERO, |(_, v)| v),
        };
        match meter.scale {
            Some(s) => (raw * s).normalize(),
            None => raw.normalize(),
        }
    }
}

/// Feeds events through one meter; yields its total and per-group values.
pub struct MeterAccumulator<'m> {
    meter: &'m Meter,
    total: Acc,
    groups: BTreeMap<Vec<String>, Acc>,
}

impl MeterAccumulator<'_> {
    pub fn add(&mut self, e: &CallEvent) {
        if !self.meter.matches(e) {
            return;
        }
        self.total.add(self.meter, e);
        if !self.meter.group_by.is_empty() {
            let key = self
                .meter
                .group_by
                .iter()
                .map(|d| d.value(e).to_string())
                .collect();
            self.groups.entry(key).or_default().add(self.meter, e);
        }
    }

    pub fn finish(self) -> MeterUsage {
        let meter = self.meter;
        MeterUsage {
            meter: meter.name.clone(),
            quantity: self.total.value(meter),
            groups: self
                .groups
                .iter()
                .map(|(key, acc)| MeterGroup {
                    dimensions: meter
                        .group_by
                        .iter()
                        .map(|d| d.name().to_string())
                        .zip(key.iter().cloned())
                        .collect(),
                    quantity: acc.value(meter),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterUsage {
    pub meter: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<MeterGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterGroup {
    pub dimensions: BTreeMap<String, String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
}

/// Evaluates every meter over one pass of events.
pub fn evaluate<'a>(
    meters: &[Meter],
    events: impl IntoIterator<Item = &'a CallEvent>,
) -> Vec<MeterUsage> {
    let mut accs: Vec<_> = meters.iter().map(Meter::accumulator).collect();
    for e in events {
        for a in &mut accs {
            a.add(e);
        }
    }
    accs.into_iter().map(MeterAccumulator::finish).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::sample_event;
    use std::str::FromStr;

    fn meter(aggregation: Aggregation, field: MeterField) -> Meter {
        Meter {
            name: "m".into(),
            aggregation,
            field,
            scale: None,
            filter: BTreeMap::new(),
            group_by: vec![],
        }
    }

    fn events() -> Vec<CallEvent> {
        let mut out = vec![];
        for (i, (status, bytes, key)) in [(200, 100, "a"), (404, 300, "b"), (500, 50, "a")]
            .into_iter()
            .enumerate()
        {
            let mut e = sample_event();
            e.status = status;
            e.response_bytes = bytes;
            e.key_id = key.into();
            e.time += chrono::Duration::seconds(i as i64);
            e.api = if i == 2 {
                "maps".into()
            } else {
                "weather".into()
            };
            out.push(e);
        }
        out
    }

    #[test]
    fn each_aggregation_over_three_events() {
        let ev = events();
        let q = |m: Meter| evaluate(&[m], &ev)[0].quantity;
        assert_eq!(
            q(meter(Aggregation::Count, MeterField::Calls)),
            Decimal::from(3)
        );
        assert_eq!(
            q(meter(Aggregation::Sum, MeterField::ResponseBytes)),
            Decimal::from(450)
        );
        assert_eq!(
            q(meter(Aggregation::Max, MeterField::ResponseBytes)),
            Decimal::from(300)
        );
        assert_eq!(
            q(meter(Aggregation::UniqueCount, MeterField::KeyId)),
            Decimal::from(2)
        );
        assert_eq!(
            q(meter(Aggregation::Latest, MeterField::ResponseBytes)),
            Decimal::from(50)
        );
    }

    #[test]
    fn filter_by_status_class_and_scale() {
        let ev = events();
        let mut m = meter(Aggregation::Sum, MeterField::ResponseBytes);
        m.filter.insert(
            Dimension::StatusClass,
            ["2xx".to_string(), "4xx".to_string()].into(),
        );
        m.scale = Some(Decimal::from_str("1e-3").unwrap());
        assert_eq!(
            evaluate(&[m], &ev)[0].quantity,
            Decimal::from_str("0.4").unwrap()
        );
    }

    #[test]
    fn group_by_api_gives_one_value_per_group() {
        let ev = events();
        let mut m = meter(Aggregation::Count, MeterField::Calls);
        m.group_by = vec![Dimension::Api];
        let u = &evaluate(&[m], &ev)[0];
        assert_eq!(u.groups.len(), 2);
        assert_eq!(u.groups[0].dimensions["api"], "maps");
        assert_eq!(u.groups[0].quantity, Decimal::ONE);
        assert_eq!(u.groups[1].quantity, Decimal::from(2));
    }

    #[test]
    fn no_events_is_zero() {
        let u = evaluate(&[meter(Aggregation::Max, MeterField::Units)], &[]);
        assert_eq!(u[0].quantity, Decimal::ZERO);
    }
}
